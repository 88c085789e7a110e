// Browser test of the status page: Playwright (playwright-core) driving Debian's chromium.
// Usage: node status-page.test.mjs ADMIN_URL TOKEN CONFIG_PATH OUT_DIR MODEL
import { chromium } from "playwright-core";
import { readFileSync } from "node:fs";
import assert from "node:assert/strict";

const [admin, token, configPath, outDir, model] = process.argv.slice(2);
let checks = 0;
const ok = (cond, what) => { assert.ok(cond, what); checks++; console.log(`ok - ${what}`); };
const apiGet = async path => (await fetch(`${admin}${path}`, { headers: { Authorization: `Bearer ${token}` } })).json();
const canaryWeight = async () => (await apiGet("/admin/models")).models.find(m => m.name === model).canary.weight_percent;

const browser = await chromium.launch({
  executablePath: "/usr/bin/chromium",
  args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run"],
});
const page = await browser.newPage({ viewport: { width: 1280, height: 800 } });
const consoleErrors = [];
page.on("console", m => { if (m.type() === "error") consoleErrors.push(m.text()); });
page.on("pageerror", e => consoleErrors.push(String(e)));
try {
  await page.goto(`${admin}/`);
  ok(page.url().endsWith("/ui/"), "the admin root redirects to the status page");

  // A wrong token shows an error and changes nothing.
  const before = await canaryWeight();
  await page.getByLabel("Admin token").fill("not-the-token");
  await page.getByRole("button", { name: "Connect" }).click();
  await page.waitForFunction(() => document.querySelector("#message").textContent.includes("refused"));
  ok(await page.locator("#message").getAttribute("class") === "error", "a wrong token is shown as an error");
  ok(await page.locator("#app").isHidden(), "nothing is shown with a wrong token");
  ok(await canaryWeight() === before, "a wrong token changes nothing");
  // Chromium logs the refused request itself; from here on the console must stay clean.
  consoleErrors.length = 0;

  // The real token, entered with the keyboard only.
  await page.getByLabel("Admin token").focus();
  await page.keyboard.type(token);
  await page.keyboard.press("Enter");
  const weightNow = page.locator(`.model[data-model="${model}"] [data-testid=weight-now]`);
  await weightNow.waitFor();
  const shown = await weightNow.textContent();
  ok(shown === `${before} %`, `the page shows the configured weight (${shown})`);
  ok((await page.locator("#replicas tbody tr").count()) === 2, "both replicas are listed");

  // Move the canary to 25 % through the UI, confirming the before -> after dialog.
  await page.getByLabel(`Canary weight for ${model} (%)`).fill("25");
  await page.getByRole("button", { name: "Apply weight" }).click();
  const dialog = page.locator("dialog[open]");
  await dialog.waitFor();
  const text = await dialog.textContent();
  ok(text.includes(`${before} % → 25 %`), `the confirmation shows before → after (${text.trim().replace(/\s+/g, " ")})`);
  await page.screenshot({ path: `${outDir}/confirm-dialog.png` });
  await page.locator("#confirm-ok").click();
  await page.waitForFunction(m => document.querySelector(`.model[data-model="${m}"] [data-testid=weight-now]`)?.textContent === "25 %", model);
  ok(await canaryWeight() === 25, "GET /admin/models reports 25 %");
  ok(readFileSync(configPath, "utf8").includes("weight_percent = 25.0"), "the config file was updated");

  // An invalid weight is refused in the page, clearly, and changes nothing.
  await page.getByLabel(`Canary weight for ${model} (%)`).fill("250");
  await page.getByRole("button", { name: "Apply weight" }).click();
  await page.waitForFunction(() => document.querySelector("#message").textContent.includes("Invalid weight"));
  ok(await canaryWeight() === 25, "an invalid weight changes nothing");

  // Drain a replica through the UI.
  const drain = page.getByRole("button", { name: /^Drain replica / }).first();
  const label = await drain.getAttribute("aria-label");
  const id = label.replace("Drain replica ", "");
  await drain.click();
  await page.waitForFunction(i => document.querySelector(`tr[data-id="${i}"] td:nth-child(3)`)?.textContent === "drained", id);
  const replicas = (await apiGet("/admin/replicas")).replicas;
  ok(replicas.find(r => r.id === id).drained === true, `the admin API shows ${id} drained`);

  await page.screenshot({ path: `${outDir}/status-page.png`, fullPage: true });
  // Phone width: readable, no sideways scrolling of the page itself.
  await page.setViewportSize({ width: 390, height: 844 });
  await page.waitForTimeout(300);
  const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
  ok(overflow <= 1, `no horizontal overflow at 390 px (${overflow} px)`);
  await page.screenshot({ path: `${outDir}/status-page-phone.png`, fullPage: true });
  ok(consoleErrors.length === 0, `no console errors (${consoleErrors.join(" | ")})`);
  console.log(`all ${checks} checks passed; screenshots in ${outDir}`);
} finally {
  await browser.close();
}
