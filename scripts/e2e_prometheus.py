"""Real Prometheus scraping a running gateway, and the deployment artifacts checked against it.

Usage: e2e_prometheus.py GATEWAY_URL ADMIN_URL PROMETHEUS_URL MODEL
Sends 100 streaming and 100 non-streaming requests with the official openai client, then:
- queries Prometheus's HTTP API: ai_requests_total and ai_time_to_first_token_seconds_bucket
  must report exactly what was sent;
- every PromQL expression in docker/grafana/dashboards/gateway.json and docker/alerts.yml must
  name only metrics the gateway exports (as scraped from its /metrics).
"""
import json
import re
import sys

from e2e_check import check, done
import time
import urllib.parse
import urllib.request

import yaml
from openai import OpenAI

gateway, admin, prom, model = sys.argv[1:5]


client = OpenAI(base_url=f"{gateway}/v1", api_key="unused", max_retries=0, timeout=30)
for i in range(100):
    for _ in client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": f"s{i}"}], stream=True, max_tokens=4
    ):
        pass
    client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": f"n{i}"}], max_tokens=4
    )


def query(q):
    url = f"{prom}/api/v1/query?" + urllib.parse.urlencode({"query": q})
    with urllib.request.urlopen(url, timeout=5) as r:
        body = json.load(r)
    assert body["status"] == "success", body
    return body["data"]["result"]


def scalar(q):
    res = query(q)
    return float(res[0]["value"][1]) if res else None


# Wait for a scrape taken after the last request.
deadline = time.time() + 30
total = None
while time.time() < deadline:
    total = scalar(f'sum(ai_requests_total{{model="{model}",status="200"}})')
    if total == 200:
        break
    time.sleep(0.5)
check(total == 200, f"Prometheus reports 200 requests (got {total})")
ttft = scalar(f'sum(ai_time_to_first_token_seconds_count{{model="{model}"}})')
check(ttft == 100, f"Prometheus reports 100 TTFT observations (got {ttft})")
buckets = query(f'ai_time_to_first_token_seconds_bucket{{model="{model}",le="+Inf"}}')
check(buckets and sum(float(b["value"][1]) for b in buckets) == 100, "TTFT +Inf bucket holds 100")
tokens = scalar(f'sum(ai_tokens_total{{model="{model}",type="completion"}})')
check(tokens == 800, f"completion tokens: 200 requests x 4 (got {tokens})")

# What the gateway exports, as scraped directly.
with urllib.request.urlopen(f"{admin}/metrics", timeout=5) as r:
    text = r.read().decode()
exported = set()
for line in text.splitlines():
    if line and not line.startswith("#"):
        exported.add(re.split(r"[{ ]", line, maxsplit=1)[0])
check(len(exported) > 20, f"{len(exported)} series names exported")

exprs = []
dash = json.load(open("docker/grafana/dashboards/gateway.json"))
check(dash["panels"], "dashboard JSON parses and has panels")
for p in dash["panels"]:
    for t in p.get("targets", []):
        exprs.append(("dashboard: " + p["title"], t["expr"]))
rules = yaml.safe_load(open("docker/alerts.yml"))
for g in rules["groups"]:
    for r in g["rules"]:
        exprs.append(("alert: " + r["alert"], r["expr"]))

PROMQL_WORDS = {"sum", "by", "rate", "increase", "deriv", "histogram_quantile", "clamp_min",
                "max", "min", "and", "or", "le", "up", "without", "on", "ignoring"}
for where, expr in exprs:
    # Drop label matchers and strings; what is left that looks like a metric must be exported.
    bare = re.sub(r'\{[^}]*\}', '', expr)
    bare = re.sub(r'"[^"]*"', '', bare)
    names = {n for n in re.findall(r"[a-zA-Z_:][a-zA-Z0-9_:]*", bare)
             if n not in PROMQL_WORDS and (n.startswith("ai_") or n.startswith("gateway_"))}
    missing = sorted(n for n in names if n not in exported)
    check(not missing, f"{where}: metrics exported ({', '.join(sorted(names)) or 'up'})"
          + (f" MISSING {missing}" if missing else ""))

done()
