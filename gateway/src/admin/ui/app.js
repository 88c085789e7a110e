// The gateway's status page: reads the admin JSON API every 2 s (no data paths of its own)
// and drives the same admin endpoints an operator would call with curl.
"use strict";

const TOKEN_KEY = "gateway-admin-token";
const HISTORY = 60; // samples kept for sparklines (2 minutes at one per 2 s)
const history = new Map(); // "model/version" -> [{rps, err}]
let timer = null;

const $ = (sel, root = document) => root.querySelector(sel);
const el = (tag, attrs = {}, ...children) => {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "text") e.textContent = v;
    else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else if (v !== undefined && v !== null && v !== false) e.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children) if (c !== null && c !== undefined) e.append(c);
  return e;
};

function say(text, kind = "ok") {
  const m = $("#message");
  m.textContent = text;
  m.className = kind;
}

class ApiError extends Error {
  constructor(status, message) { super(message); this.status = status; }
}

async function api(method, path, body) {
  const token = sessionStorage.getItem(TOKEN_KEY) || "";
  const res = await fetch(path, {
    method,
    headers: { "Authorization": `Bearer ${token}`, "Content-Type": "application/json" },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await res.text();
  let json = null;
  try { json = text ? JSON.parse(text) : null; } catch (_) { /* not JSON */ }
  if (!res.ok) {
    const msg = json && json.error ? json.error.message : `${res.status} ${res.statusText}`;
    throw new ApiError(res.status, msg);
  }
  return json;
}

function fmtMs(v) { return v === null || v === undefined ? "–" : `${Math.round(v)} ms`; }
function fmtPct(v) { return `${(v * 100).toFixed(1)} %`; }
function fmtUptime(s) {
  const d = Math.floor(s / 86400), h = Math.floor(s % 86400 / 3600), m = Math.floor(s % 3600 / 60);
  return d ? `${d}d ${h}h` : h ? `${h}h ${m}m` : `${m}m ${s % 60}s`;
}

function sparkline(points, key, color, label) {
  const w = 120, h = 24;
  const vals = points.map(p => p[key]);
  const max = Math.max(...vals, key === "err" ? 0.05 : 1);
  const coords = vals.map((v, i) =>
    `${(i / Math.max(HISTORY - 1, 1)) * w},${h - 2 - (v / max) * (h - 4)}`).join(" ");
  const svg = document.createElementNS("http://www.w3.org/2000/svg", "svg");
  svg.setAttribute("class", "spark");
  svg.setAttribute("viewBox", `0 0 ${w} ${h}`);
  svg.setAttribute("role", "img");
  svg.setAttribute("aria-label", label);
  const line = document.createElementNS("http://www.w3.org/2000/svg", "polyline");
  line.setAttribute("points", coords);
  line.setAttribute("stroke", color);
  svg.append(line);
  return svg;
}

function confirmChange(text) {
  const d = $("#confirm");
  $("#confirm-text").textContent = text;
  d.returnValue = "";
  d.showModal();
  $("#confirm-ok").focus();
  return new Promise(resolve => d.addEventListener("close", () => resolve(d.returnValue === "ok"), { once: true }));
}

// The server's answer, in words.
function summary(a) {
  if (!a) return "";
  if (a.id !== undefined) return `${a.id} is now ${a.drained ? "drained" : "in rotation"}.`;
  if (a.stable !== undefined) {
    const c = a.canary ? `, canary ${a.canary.version} at ${a.canary.weight_percent} %` : ", no canary";
    return `Stable ${a.stable}${c}.`;
  }
  if (a.result !== undefined) {
    const r = a.restart_required && a.restart_required.length
      ? ` Needs a restart: ${a.restart_required.join(", ")}.` : "";
    return `${a.changed ? "Configuration changed." : "No change."}${r}`;
  }
  return JSON.stringify(a);
}

async function act(label, fn) {
  try {
    const answer = await fn();
    say(`${label}: done. ${summary(answer)}`, "ok");
  } catch (e) {
    say(`${label} failed: ${e.message}`, "error");
    if (e.status === 401 || e.status === 403) stop();
  }
  await refresh();
}

// ---- models -------------------------------------------------------------------------------

function modelCard(m) {
  let card = document.querySelector(`.model[data-model="${CSS.escape(m.name)}"]`);
  if (!card) {
    card = el("article", { class: "model", "data-model": m.name, "aria-labelledby": `m-${m.name}` });
    const range = el("input", { type: "range", min: "0", max: "100", step: "1",
      "aria-label": `Canary weight slider for ${m.name}` });
    const number = el("input", { type: "number", min: "0", max: "100", step: "0.1",
      "aria-label": `Canary weight for ${m.name} (%)`, "data-testid": "weight-input" });
    range.addEventListener("input", () => { number.value = range.value; number.dataset.dirty = "1"; });
    number.addEventListener("input", () => { range.value = number.value; number.dataset.dirty = "1"; });
    const apply = el("button", { type: "button", text: "Apply weight" });
    apply.addEventListener("click", async () => {
      const cur = card._model;
      const version = cur.canary && cur.canary.version;
      const before = cur.canary ? cur.canary.weight_percent : 0;
      const after = Number(number.value);
      if (!version) { say(`${m.name} has no canary version configured.`, "error"); return; }
      if (!Number.isFinite(after) || after < 0 || after > 100) {
        say(`Invalid weight "${number.value}": enter a number from 0 to 100.`, "error");
        return;
      }
      if (!(await confirmChange(`${m.name}: canary ${version} weight ${before} % → ${after} %`))) return;
      delete number.dataset.dirty;
      await act(`Set ${m.name} canary to ${after} %`, () =>
        api("PUT", `/admin/models/${encodeURIComponent(m.name)}/canary`, { version, weight_percent: after }));
    });
    const promote = el("button", { type: "button", class: "secondary", text: "Promote" });
    promote.addEventListener("click", async () => {
      const cur = card._model;
      if (!cur.canary) { say(`${m.name} has no canary.`, "error"); return; }
      if (!(await confirmChange(`${m.name}: stable ${cur.stable} → ${cur.canary.version}`))) return;
      await act(`Promote ${m.name}`, () => api("POST", `/admin/models/${encodeURIComponent(m.name)}/promote`));
    });
    const rollback = el("button", { type: "button", class: "secondary", text: "Roll back" });
    rollback.addEventListener("click", async () => {
      const cur = card._model;
      const before = cur.canary ? cur.canary.weight_percent : 0;
      if (!(await confirmChange(`${m.name}: canary weight ${before} % → 0 %`))) return;
      await act(`Roll back ${m.name}`, () => api("POST", `/admin/models/${encodeURIComponent(m.name)}/rollback`));
    });
    card.append(
      el("h3", { id: `m-${m.name}` }),
      el("dl", { class: "facts" }),
      el("div", { class: "canary" }, range, number, apply, promote, rollback),
      el("div", { class: "scroll" }, el("table", { class: "versions" },
        el("thead", {}, el("tr", {},
          el("th", { scope: "col", text: "Version" }), el("th", { scope: "col", text: "Replicas" }),
          el("th", { scope: "col", text: "Requests/s" }), el("th", { scope: "col", text: "Errors" }),
          el("th", { scope: "col", text: "TTFT p50 / p95" }), el("th", { scope: "col", text: "Last 2 min" }))),
        el("tbody"))));
    card._range = range;
    card._number = number;
    $("#models").append(card);
  }
  card._model = m;
  $("h3", card).textContent = m.aliases.length ? `${m.name} (${m.aliases.join(", ")})` : m.name;
  const weight = m.canary ? m.canary.weight_percent : 0;
  const facts = $("dl", card);
  facts.replaceChildren(
    el("dt", { text: "Stable" }), el("dd", { text: m.stable || "–" }),
    ...(m.deploy_dir ? [el("dt", { text: "current link" }), el("dd", { text: `${m.deploy_dir}/current → ${m.stable}` })] : []),
    el("dt", { text: "Canary" }),
    el("dd", {}, m.canary
      ? el("span", {}, `${m.canary.version} at `, el("strong", { "data-testid": "weight-now", text: `${weight} %` }),
          ` (sticky: ${m.canary.sticky})`)
      : el("span", { text: "none" })),
    el("dt", { text: "Guard" }),
    el("dd", { text: m.canary && m.canary.guard
      ? `on: error rate ≤ ${fmtPct(m.canary.guard.max_error_rate)}` +
        (m.canary.guard.max_ttft_p95_ms ? `, TTFT p95 ≤ ${m.canary.guard.max_ttft_p95_ms} ms` : "") +
        ` over ${m.canary.guard.window_seconds} s (≥ ${m.canary.guard.min_requests} requests)` +
        (weight === 0 ? " — canary at 0 %" : " — within budget")
      : "off" }),
    el("dt", { text: "Queue" }), el("dd", { text: String(m.queue ?? 0) }),
  );
  if (!card._number.dataset.dirty && document.activeElement !== card._number
      && document.activeElement !== card._range) {
    card._number.value = weight;
    card._range.value = weight;
  }
  const tbody = $("tbody", card);
  tbody.replaceChildren(...m.versions.map(v => {
    const key = `${m.name}/${v.name}`;
    const lm = v.last_minute;
    const sample = { rps: lm.requests / 60, err: lm.error_rate };
    const h = history.get(key) || [];
    h.push(sample);
    while (h.length > HISTORY) h.shift();
    history.set(key, h);
    const role = v.name === m.stable ? " (stable)" : m.canary && v.name === m.canary.version ? " (canary)" : "";
    return el("tr", {},
      el("th", { scope: "row", text: v.name + role }),
      el("td", { text: v.replicas.join(", ") }),
      el("td", { text: sample.rps.toFixed(2) }),
      el("td", { class: lm.error_rate > 0.05 ? "state-bad" : "", text: fmtPct(lm.error_rate) }),
      el("td", { text: `${fmtMs(lm.ttft_p50_ms)} / ${fmtMs(lm.ttft_p95_ms)}` }),
      el("td", {}, sparkline(h, "rps", "#0b5fff", `requests per second of ${key}`),
        sparkline(h, "err", "#c62828", `error rate of ${key}`)));
  }));
}

// ---- replicas -----------------------------------------------------------------------------

function replicaRow(r) {
  const tbody = $("#replicas tbody");
  let row = tbody.querySelector(`tr[data-id="${CSS.escape(r.id)}"]`);
  if (!row) {
    const button = el("button", { type: "button", class: "secondary" });
    button.addEventListener("click", async () => {
      const cur = row._replica;
      const action = cur.drained ? "enable" : "drain";
      await act(`${action === "drain" ? "Drain" : "Enable"} ${cur.id}`, () =>
        api("POST", `/admin/replicas/${encodeURIComponent(cur.id)}/${action}`));
    });
    row = el("tr", { "data-id": r.id },
      el("th", { scope: "row", text: r.id }), el("td"), el("td"), el("td"), el("td"), el("td"),
      el("td", {}, button));
    row._button = button;
    tbody.append(row);
  }
  row._replica = r;
  const cells = row.children;
  cells[1].textContent = r.models.map(m => `${m.model} ${m.version}`).join(", ");
  const state = r.drained ? ["drained", "state-warn"] : r.ejected ? [`ejected (${Math.ceil(r.ejected_for_seconds)} s)`, "state-bad"]
    : !r.healthy ? ["unhealthy", "state-bad"] : ["healthy", "state-ok"];
  cells[2].textContent = state[0];
  cells[2].className = state[1];
  cells[3].textContent = `${r.inflight} / ${r.max_inflight || "∞"}`;
  cells[4].textContent = fmtMs(r.ewma_ms);
  cells[5].textContent = r.last_error || "–";
  row._button.textContent = r.drained ? "Enable" : "Drain";
  row._button.setAttribute("aria-label", `${r.drained ? "Enable" : "Drain"} replica ${r.id}`);
}

// ---- gateway ------------------------------------------------------------------------------

function renderGateway(status, models) {
  const last = status.last_reload || {};
  const totalRps = models.models.reduce((a, m) =>
    a + m.versions.reduce((b, v) => b + v.last_minute.requests / 60, 0), 0);
  $("#gateway").replaceChildren(
    el("dt", { text: "Uptime" }), el("dd", { text: fmtUptime(status.uptime_seconds) }),
    el("dt", { text: "Config file" }), el("dd", { text: status.config_file || "(built in)" }),
    el("dt", { text: "Last reload" }),
    el("dd", { class: last.trigger ? (last.ok ? "state-ok" : "state-bad") : "",
      text: last.trigger ? `${last.ok ? "ok" : "failed"} (${last.trigger})` +
        (last.errors && last.errors.length ? `: ${last.errors.join("; ")}` : "") +
        (last.restart_required && last.restart_required.length ? ` — restart needed for ${last.restart_required.join(", ")}` : "")
        : "none since start" }),
    el("dt", { text: "Requests/s (last minute)" }), el("dd", { text: totalRps.toFixed(2) }),
    el("dt", { text: "Ready" }), el("dd", { text: status.ready ? "yes" : (status.draining ? "draining" : "no") }),
  );
}

async function refresh() {
  if (!sessionStorage.getItem(TOKEN_KEY)) return;
  try {
    const [status, models, replicas] = await Promise.all([
      api("GET", "/admin/status"), api("GET", "/admin/models"), api("GET", "/admin/replicas")]);
    $("#app").hidden = false;
    renderGateway(status, models);
    models.models.forEach(modelCard);
    replicas.replicas.forEach(replicaRow);
  } catch (e) {
    if (e.status === 401 || e.status === 403) {
      say(`The admin token was refused (${e.message}). Enter a valid token.`, "error");
      stop();
      sessionStorage.removeItem(TOKEN_KEY);
      $("#app").hidden = true;
      $("#logout").hidden = true;
    } else {
      say(`Cannot reach the admin API: ${e.message}`, "error");
    }
  }
}

function start() {
  stop();
  $("#logout").hidden = false;
  refresh();
  timer = setInterval(refresh, 2000);
}

function stop() {
  if (timer) clearInterval(timer);
  timer = null;
}

document.addEventListener("DOMContentLoaded", () => {
  $("#login").addEventListener("submit", async ev => {
    ev.preventDefault();
    sessionStorage.setItem(TOKEN_KEY, $("#token").value);
    $("#token").value = "";
    try {
      await api("GET", "/admin/status");
      say("Connected.", "ok");
      start();
    } catch (e) {
      sessionStorage.removeItem(TOKEN_KEY);
      say(`The admin token was refused (${e.message}).`, "error");
    }
  });
  $("#logout").addEventListener("click", () => {
    sessionStorage.removeItem(TOKEN_KEY);
    stop();
    $("#app").hidden = true;
    $("#logout").hidden = true;
    say("Token forgotten.", "ok");
  });
  $("#reload").addEventListener("click", async () => {
    if (!(await confirmChange("Re-read the configuration file now?"))) return;
    await act("Reload", () => api("POST", "/admin/reload"));
  });
  if (sessionStorage.getItem(TOKEN_KEY)) start();
});
