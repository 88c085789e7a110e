#!/usr/bin/env bash
# Side-by-side comparison in ONE run: direct to a replica, nginx (least_conn, upstream keepalive,
# proxy_buffering off, one worker), and the gateway (one worker thread; auth, rate limits,
# metrics and model routing all on). Each phase runs its targets back to back, their order
# rotating each round; ROUNDS rounds, medians, and each round's gateway/nginx pair.
# The load generator runs on core 0; replicas and the proxy under test on core 1 (and, in one
# streaming phase, the replicas on core 0 with the proxy alone on core 1).
# The gateway measured is the build the container image ships: profile-guided (scripts/pgo.sh);
# PGO=0 measures a plain release build instead.
# Writes benches/RESULTS.md. Loopback only; every process is stopped by its PID.
#
#   benches/compare.sh            (ROUNDS=5 SECS=5 STREAMS=1000 BIG_STREAMS=10000 PGO=1 by default)
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS="${ROUNDS:-5}"
SECS="${SECS:-5}"
STREAMS="${STREAMS:-1000}"
BIG_STREAMS="${BIG_STREAMS:-10000}"
PGO="${PGO:-1}"
TARGET_DIR="${CARGO_TARGET_DIR:-target}"
BIN="$TARGET_DIR/release"
. scripts/lib.sh
ulimit -n 200000 2>/dev/null || ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
FD_LIMIT="$(ulimit -n)"
. benches/lib.sh
need_nginx
if [ "$PGO" = 1 ]; then
  GATEWAY_BIN="$(pgo_gateway)"
  BUILD="the profile-guided build, \`scripts/pgo.sh\`"
else
  BUILD="a plain release build, \`PGO=0\`"
fi

start_mocks fast 0 0 16
# Stream replicas stamp each first token with their own time to first token, which loadgen
# takes out: what is left is the time spent outside the replica (network and proxy).
start_mocks stream 50 50 20 --stamp-ttft
# The same replicas on the load generator's core, for a phase with the proxy alone on its core.
MOCK_CORE=0 start_mocks alone 50 50 20 --stamp-ttft


start_nginx fast "${PORTS_fast[@]}"; NGINX_FAST_PORT=$NGINX_PORT; NGINX_FAST_PIDS=$NGINX_PIDS
start_gateway fast "${PORTS_fast[@]}"; GW_FAST_PORT=$GW_PORT; GW_FAST_PID=$GW_PID
# The same gateway without auth and limits (metrics and routing stay): what the features cost.
start_gateway bare "${PORTS_fast[@]}"; GW_BARE_PORT=$GW_PORT; GW_BARE_PID=$GW_PID
start_nginx stream "${PORTS_stream[@]}"; NGINX_STREAM_PORT=$NGINX_PORT; NGINX_STREAM_PIDS=$NGINX_PIDS
start_gateway stream "${PORTS_stream[@]}"; GW_STREAM_PORT=$GW_PORT; GW_STREAM_PID=$GW_PID
start_nginx alone "${PORTS_alone[@]}"; NGINX_ALONE_PORT=$NGINX_PORT; NGINX_ALONE_PIDS=$NGINX_PIDS
start_gateway alone "${PORTS_alone[@]}"; GW_ALONE_PORT=$GW_PORT; GW_ALONE_PID=$GW_PID
sleep 1
IDLE_NGINX=$(rss_kb $NGINX_FAST_PIDS); IDLE_GW=$(rss_kb "$GW_FAST_PID")

field() { python3 -c "import json,sys; d=json.load(open('$1')); v=d$2; print(v if v is not None else 'nan')"; }

run_case() { # case target port pids args...
  local case=$1 target=$2 port=$3 pids=$4; shift 4
  local before after rss_peak=0
  before=$(cpu_ticks $pids)
  local host_before; host_before=$(host_ticks)
  loadgen "$port" "$@" >"$WORK/$case-$target-$round.json" &
  local lg=$!
  while kill -0 $lg 2>/dev/null; do
    local r; r=$(rss_kb $pids); [ "$r" -gt "$rss_peak" ] && rss_peak=$r
    sleep 0.25
  done
  wait $lg || true
  after=$(cpu_ticks $pids)
  echo "$case $target $round $host_before $(host_ticks)" >>"$WORK/steal.txt"
  local ok cpu_us; ok=$(field "$WORK/$case-$target-$round.json" "['ok']")
  cpu_us=$(python3 -c "print(($after-$before)*1e6/$HZ/max($ok,1))")
  echo "$case $target $round $cpu_us $rss_peak" >>"$WORK/cpu.txt"
}

echo "== measuring: $ROUNDS rounds, ${SECS}s per run"
# Each phase measures every target back to back, so the runs compared are seconds apart, not
# a minute: the host's load drifts on that scale. The order rotates each round, so no target is
# always first (after another phase's cleanup) or last.
ports_of() { # target -> P (request/response port), PIDS_T, SP (stream port), SPIDS, AP (alone), APIDS
  case $1 in
    direct) P=${PORTS_fast[0]}; PIDS_T=""; SP=${PORTS_stream[0]}; SPIDS=""; AP=${PORTS_alone[0]}; APIDS="" ;;
    nginx) P=$NGINX_FAST_PORT; PIDS_T=$NGINX_FAST_PIDS; SP=$NGINX_STREAM_PORT; SPIDS=$NGINX_STREAM_PIDS
      AP=$NGINX_ALONE_PORT; APIDS=$NGINX_ALONE_PIDS ;;
    gateway) P=$GW_FAST_PORT; PIDS_T=$GW_FAST_PID; SP=$GW_STREAM_PORT; SPIDS=$GW_STREAM_PID
      AP=$GW_ALONE_PORT; APIDS=$GW_ALONE_PID ;;
    bare) P=$GW_BARE_PORT; PIDS_T=$GW_BARE_PID ;;
  esac
}
for round in $(seq 1 "$ROUNDS"); do
  echo "   round $round"
  for target in $(rotated "$round" direct nginx gateway bare); do
    ports_of "$target"
    run_case max "$target" "$P" "$PIDS_T" --concurrency 64 --duration "$SECS"
  done
  for target in $(rotated "$round" direct nginx gateway); do
    ports_of "$target"
    run_case rate "$target" "$P" "$PIDS_T" --rate 1000 --concurrency 512 --duration "$SECS"
  done
  # Streams of ~1 s: the first 2 s (every connection opened at once) run unmeasured; the
  # first wave is what the 10,000-stream run below shows.
  for target in $(rotated "$round" direct nginx gateway); do
    ports_of "$target"
    run_case streams "$target" "$SP" "$SPIDS" --stream --concurrency "$STREAMS" --duration "$((SECS + 2))" --warmup 2
  done
  # The same number of open streams with arrivals spread out: $STREAMS new streams a second,
  # each about 1 s long (open loop), instead of every client starting in lockstep.
  for target in $(rotated "$round" direct nginx gateway); do
    ports_of "$target"
    run_case spread "$target" "$SP" "$SPIDS" --stream --rate "$STREAMS" --concurrency "$((STREAMS * 3))" --duration "$((SECS + 2))" --warmup 2
  done
  # The spread load again with the proxy alone on core 1 (the replicas on core 0 with the load
  # generator), as in production, where replicas are other machines: on a core it shares with
  # the replicas, the proxy's forwarding queues behind their token writes.
  for target in $(rotated "$round" direct nginx gateway); do
    ports_of "$target"
    run_case alone "$target" "$AP" "$APIDS" --stream --rate "$STREAMS" --concurrency "$((STREAMS * 3))" --duration "$((SECS + 2))" --warmup 2
  done
done
# Many open streams, once per proxy: memory per stream. Streams of 12 tokens, 1 s apart. A
# proxy holds two descriptors per HTTP/1.1 stream: all 10,000 at once need a hard limit on
# open files above 20,000 (the gateway holds what fits and queues the rest in its listen
# queue; nginx fails those it cannot connect upstream). Then the same over HTTP/2.
if [ "$BIG_STREAMS" -gt 0 ]; then
  echo "== $BIG_STREAMS concurrent streams"
  BIG_MOCKS=()
  for i in 1 2 3; do
    port="$(free_port)"
    $SERVE "$BIN/mock-replica" --listen "127.0.0.1:$port" --model bench-model --ttft-ms 100 --itl-ms 1000 \
      --tokens 12 2>/dev/null &
    PIDS+=($!); wait_port "$port"; BIG_MOCKS+=("$port")
  done
  start_nginx big "${BIG_MOCKS[@]}"; start_gateway big "${BIG_MOCKS[@]}"
  sleep 1
  round=1
  run_case big nginx "$NGINX_PORT" "$NGINX_PIDS" --stream --concurrency "$BIG_STREAMS" --requests "$BIG_STREAMS" --duration 60
  run_case big gateway "$GW_PORT" "$GW_PID" --stream --concurrency "$BIG_STREAMS" --requests "$BIG_STREAMS" --duration 60
  # The same streams from HTTP/2 clients, 100 streams to a connection: a proxy then holds one
  # descriptor per stream (its replica connection), and all of them fit under the limit.
  # Fresh proxies, so the HTTP/1.1 run's memory is not counted here.
  NGINX_H2=1 start_nginx big2 "${BIG_MOCKS[@]}"; start_gateway big2 "${BIG_MOCKS[@]}"
  sleep 1
  H2_CONNS=$(( (BIG_STREAMS + 99) / 100 ))
  run_case big2 nginx "$NGINX_PORT" "$NGINX_PIDS" --stream --concurrency "$BIG_STREAMS" --requests "$BIG_STREAMS" --duration 60 --http2 "$H2_CONNS"
  run_case big2 gateway "$GW_PORT" "$GW_PID" --stream --concurrency "$BIG_STREAMS" --requests "$BIG_STREAMS" --duration 60 --http2 "$H2_CONNS"
fi

echo "== writing benches/RESULTS.md"
python3 - "$WORK" "$ROUNDS" "$IDLE_NGINX" "$IDLE_GW" "$STREAMS" "$BIG_STREAMS" "$SECS" "$FD_LIMIT" "$BUILD" <<'PY' 
import json, statistics, sys, os, subprocess, datetime, platform
work, rounds, idle_nginx, idle_gw, streams, big, secs, fd_limit, build = sys.argv[1:10]
rounds = int(rounds)
def load(case, target, r):
    p = f"{work}/{case}-{target}-{r}.json"
    return json.load(open(p)) if os.path.exists(p) else None
def med(case, target, f):
    vals = [f(d) for r in range(1, rounds + 1) if (d := load(case, target, r)) is not None]
    vals = [v for v in vals if v is not None]
    return statistics.median(vals) if vals else float("nan")
pct = lambda key, q: (lambda d: d[key][q] if d.get(key) else None)
tp = lambda d: d["throughput_rps"]
cpu = {}
for line in open(f"{work}/cpu.txt") if os.path.exists(f"{work}/cpu.txt") else []:
    case, target, r, us, rss = line.split()
    cpu.setdefault((case, target), []).append((float(us), int(rss)))
def cpu_med(case, target):
    v = cpu.get((case, target))
    return statistics.median([x[0] for x in v]) if v else float("nan")
def rss_max(case, target):
    v = cpu.get((case, target))
    return max(x[1] for x in v) / 1024 if v else float("nan")
rows = []
def row(name, n, g, unit, fmt="{:.2f}", lower_better=True):
    ratio = g / n if n and n == n and g == g else float("nan")
    rows.append(f"| {name} | {fmt.format(n)} {unit} | {fmt.format(g)} {unit} | {ratio:.2f}× |")
d_tp, n_tp, g_tp = (med("max", t, tp) for t in ("direct", "nginx", "gateway"))
row("non-streaming throughput, 64 connections", n_tp, g_tp, "req/s", "{:.0f}")
for q in ("p50", "p99"):
    row(f"latency at max throughput, {q}", med("max", "nginx", pct("latency_ms", q)), med("max", "gateway", pct("latency_ms", q)), "ms")
direct = lambda case, key, q: med(case, "direct", pct(key, q))
def added(case, key, label):  # each proxy's percentile less direct's, p50 and p99
    for q in ("p50", "p99"):
        d = direct(case, key, q)
        row(f"{label}, {q}", med(case, "nginx", pct(key, q)) - d, med(case, "gateway", pct(key, q)) - d, "ms", "{:.3f}")
added("rate", "latency_ms", "latency added over direct at 1,000 req/s")
row("CPU per request (proxy process, at max throughput)", cpu_med("max", "nginx"), cpu_med("max", "gateway"), "µs", "{:.1f}")
row("CPU per request, gateway without auth and limits", cpu_med("max", "nginx"), cpu_med("max", "bare"), "µs", "{:.1f}")
row("throughput, gateway without auth and limits", n_tp, med("max", "bare", tp), "req/s", "{:.0f}")
row("RSS idle", int(idle_nginx) / 1024, int(idle_gw) / 1024, "MB", "{:.1f}")
row("RSS under load (64 connections)", rss_max("max", "nginx"), rss_max("max", "gateway"), "MB", "{:.1f}")
row(f"RSS with {streams} open streams", rss_max("streams", "nginx"), rss_max("streams", "gateway"), "MB", "{:.1f}")
added("streams", "ttft_ms", f"TTFT added at {streams} concurrent streams in lockstep")
added("spread", "ttft_ms", f"TTFT added at ~{streams} open streams, arrivals spread ({streams} new/s)")
# The same, less each replica's own time to first token (its stamp): the time outside it.
OUT = "ttft_outside_replica_ms"
added("streams", OUT, f"TTFT added outside the replica, {streams} streams in lockstep")
added("spread", OUT, f"TTFT added outside the replica, arrivals spread")
added("alone", "ttft_ms", f"proxy alone on its core, arrivals spread: TTFT added")
added("alone", OUT, f"proxy alone on its core, arrivals spread: TTFT added outside the replica")
row(f"total stream time at {streams} streams, p50", med("streams", "nginx", pct("latency_ms", "p50")), med("streams", "gateway", pct("latency_ms", "p50")), "ms")
def big_rows(case, kind, over):  # the many-streams phase: kind "" or " HTTP/2"
    if int(big) == 0 or not cpu.get((case, "nginx")):
        return
    bn, bg = load(case, "nginx", 1), load(case, "gateway", 1)
    row(f"RSS with {big} open streams{over}", rss_max(case, "nginx"), rss_max(case, "gateway"), "MB", "{:.1f}")
    row(f"memory per stream at {big}{kind} streams (RSS − idle)", (rss_max(case, "nginx") * 1024 - int(idle_nginx)) / int(big), (rss_max(case, "gateway") * 1024 - int(idle_gw)) / int(big), "KB", "{:.1f}")
    rows.append(f"| {big}{kind} streams: failed | {bn['failed'] if bn else 'n/a'} | {bg['failed'] if bg else 'n/a'} | |")
    if bn and bg and bn.get("ttft_ms") and bg.get("ttft_ms"):
        row(f"TTFT at {big}{kind} streams opened at once, p99 (replica: 100 ms)", bn["ttft_ms"]["p99"], bg["ttft_ms"]["p99"], "ms", "{:.0f}")
big_rows("big", "", "")
big_rows("big2", " HTTP/2", " over HTTP/2 (100 to a connection)")
def listed(ratios):  # each round's ratio, then their median: it pairs runs seconds apart, so
    # the host's drift between rounds cancels out of it
    if not ratios:
        return "n/a"
    return ", ".join(f"{x:.2f}×" for x in ratios) + f" (median of the pairs {statistics.median(ratios):.2f}×)"
def paired(case, f):
    pairs = [(load(case, "gateway", r), load(case, "nginx", r)) for r in range(1, rounds + 1)]
    return listed([f(g) / f(n) for g, n in pairs if g and n and f(n)])
def paired_cpu(case):
    g, n = cpu.get((case, "gateway"), []), cpu.get((case, "nginx"), [])
    return listed([a[0] / b[0] for a, b in zip(g, n) if b[0]])
steal = {}  # (case, target) -> [(core 0 %, core 1 %)] of each run
for line in open(f"{work}/steal.txt") if os.path.exists(f"{work}/steal.txt") else []:
    w = line.split()
    b, a = w[3:9], w[9:15]
    share = lambda i: 100 * (int(a[i + 1]) - int(b[i + 1])) / max(int(a[i + 2]) - int(b[i + 2]), 1)
    steal.setdefault((w[0], w[1]), []).append((share(0), share(3)))
def steal_cell(case, target):
    v = steal.get((case, target))
    if not v:
        return "n/a"
    return f"{statistics.median(x[1] for x in v):.1f} % ({max(x[1] for x in v):.1f}) / {statistics.median(x[0] for x in v):.1f} %"
steal_rows = "\n".join(
    f"| {label} | " + " | ".join(steal_cell(case, t) for t in ("direct", "nginx", "gateway")) + " |"
    for case, label in (("max", "throughput, 64 connections"), ("rate", "1,000 req/s"),
                        ("streams", f"{streams} streams in lockstep"), ("spread", "arrivals spread"),
                        ("alone", "arrivals spread, proxy alone on core 1")))
ver = lambda c: subprocess.run(c, shell=True, capture_output=True, text=True).stdout.strip() or subprocess.run(c, shell=True, capture_output=True, text=True).stderr.strip()
cpu_model = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
out = f"""# Gateway vs nginx, measured side by side

Produced by `benches/compare.sh` on {datetime.date.today()} — {os.cpu_count()} cores ({cpu_model}),
Linux {platform.release()}; {ver("nginx -v 2>&1")}; {ver("rustc --version")}. One run, targets
back to back within each phase (their order rotating each round), {rounds} rounds of {secs} s each, medians. The load generator (`loadgen`) runs on
core 0, the replicas and the proxy under test on core 1. nginx: one worker, `least_conn`,
upstream `keepalive`, `proxy_buffering off`, no access log. Gateway ({build}): one worker thread,
`least_inflight`, API-key auth, per-key and per-IP rate limits, metrics, model routing, no
access log. Replicas: the project's mock (request/response: immediate 16-token answers;
streams: 50 ms to first token, 20 tokens 50 ms apart). Direct = one replica, no proxy.
Stream TTFT is measured in steady state: streams started in the first 2 s (when all
{streams} connections are opened at once) run unmeasured. Two shapes of {streams} open streams:
{streams} clients in lockstep (closed loop: they start, and so emit their tokens, together), and
arrivals spread out ({streams} new streams a second, each about 1 s long, open loop). The stream
replicas stamp each first token with their own time to first token (`--stamp-ttft`); "outside
the replica" is the client's time to first token less that stamp: the time spent in the
network and the proxy, without the replicas' timer jitter. "Proxy alone on its core": the
spread load again with the replicas moved to core 0, beside the load generator.
Open-file limit: {fd_limit}.

| measure | nginx | gateway | gateway ÷ nginx |
|---|---|---|---|
""" + "\n".join(rows) + f"""

Each round's pair, gateway ÷ nginx (runs seconds apart): throughput {paired("max", tp)};
CPU per request {paired_cpu("max")}.

Direct to one replica: {d_tp:.0f} req/s at 64 connections; p50 {direct("rate", "latency_ms", "p50"):.3f} ms / p99 {direct("rate", "latency_ms", "p99"):.3f} ms at
1,000 req/s; TTFT p50 {direct("streams", "ttft_ms", "p50"):.2f} ms / p99 {direct("streams", "ttft_ms", "p99"):.2f} ms at {streams} streams; outside the replica,
p50 / p99 {direct("streams", OUT, "p50"):.3f} / {direct("streams", OUT, "p99"):.3f} ms in lockstep,
{direct("spread", OUT, "p50"):.3f} / {direct("spread", OUT, "p99"):.3f} ms spread, {direct("alone", OUT, "p50"):.3f} / {direct("alone", OUT, "p99"):.3f} ms spread with the replicas on core 0.

Time the hypervisor took from this VM's cores during the runs (steal, from `/proc/stat`):
core 1 (the proxy's), median of the rounds (their largest in brackets) / core 0 (the load
generator's). The VM waits for its core while it is stolen, so every request or token in
flight then waits too, for a scheduling slice of the host.

| phase | direct | nginx | gateway |
|---|---|---|---|
{steal_rows}
"""
open("benches/RESULTS.md", "w").write(out)
print(out)
PY
