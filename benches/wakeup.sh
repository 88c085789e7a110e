#!/usr/bin/env bash
# Time to first token outside the replica, with the proxy alone on its core, while the VM's
# cores may halt when idle and while they are kept awake. On a virtual machine an idle core
# halts and the hypervisor takes it back; a packet for the proxy then waits until the host
# runs the core again. The load generator's core never idles under this load, the proxy's
# does, so that wait lands on the proxied runs only. "Awake" starts a busy loop at the lowest
# priority (SCHED_IDLE) on each core: it runs only when nothing else wants the core, gives it
# up at once, and keeps the core from halting (what a guest's `haltpoll` idle driver or
# `idle=poll` do at boot).
# Streams arrive spread out at RATE new streams a second (the stream replicas of compare.sh:
# 50 ms to first token, 20 tokens 50 ms apart, each stamping its own time to first token);
# the replicas and the load generator on core 0, the proxy alone on core 1. ROUNDS rounds of
# SECS seconds (after 2 s unmeasured) per target and mode, targets in an order rotating each
# round, modes alternating; medians of the rounds. Prints a markdown table. Loopback only;
# every process is stopped by its PID. Installs Debian's nginx-light when missing.
#
#   benches/wakeup.sh            (RATE=200 ROUNDS=3 SECS=5 by default)
set -euo pipefail
cd "$(dirname "$0")/.."
RATE="${RATE:-200}"
ROUNDS="${ROUNDS:-3}"
SECS="${SECS:-5}"
TARGET_DIR="${CARGO_TARGET_DIR:-target}"
BIN="$TARGET_DIR/release"
. scripts/lib.sh
. benches/lib.sh
need_nginx

MOCK_CORE=0 start_mocks alone 50 50 20 --stamp-ttft
declare -A port
port[direct]=${PORTS_alone[0]}
start_nginx alone "${PORTS_alone[@]}"; port[nginx]=$NGINX_PORT
start_gateway alone "${PORTS_alone[@]}"; port[gateway]=$GW_PORT
sleep 1

SPINNERS=()
awake() { # keeps both cores from halting until asleep
  for core in 0 1; do
    chrt --idle 0 taskset -c "$core" sh -c 'while :; do :; done' &
    PIDS+=($!); SPINNERS+=($!)
  done
}
asleep() {
  for p in "${SPINNERS[@]}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
  SPINNERS=()
}

echo "== $ROUNDS rounds of ${SECS}s at $RATE new streams a second" >&2
for round in $(seq 1 "$ROUNDS"); do
  for mode in halting awake; do
    [ "$mode" = awake ] && awake
    for target in $(rotated "$round" direct nginx gateway); do
      # Core 1's stolen and total ticks, before and after.
      read -r _ _ _ _ s0 t0 < <(host_ticks)
      loadgen "${port[$target]}" --stream --rate "$RATE" --concurrency "$((RATE * 3))" \
        --duration "$((SECS + 2))" --warmup 2 >"$WORK/$mode-$target-$round.json"
      read -r _ _ _ _ s1 t1 < <(host_ticks)
      echo "$mode $target $round $((s1 - s0)) $((t1 - t0))" >>"$WORK/steal.txt"
    done
    asleep
  done
done

python3 - "$WORK" "$ROUNDS" "$RATE" <<'PY'
import json, statistics, sys
work, rounds, rate = sys.argv[1], int(sys.argv[2]), sys.argv[3]
def med(mode, target, q):
    vals = []
    for r in range(1, rounds + 1):
        d = json.load(open(f"{work}/{mode}-{target}-{r}.json"))
        if d.get("ttft_outside_replica_ms"):
            vals.append(d["ttft_outside_replica_ms"][q])
    return statistics.median(vals) if vals else float("nan")
steal = {}
for line in open(f"{work}/steal.txt"):
    mode, target, _, s, t = line.split()
    steal.setdefault((mode, target), []).append(100 * int(s) / max(int(t), 1))
print(f"Time to first token outside the replica, {rate} new streams a second, proxy alone on core 1,")
print(f"medians of {rounds} rounds (ms); steal: the share of core 1 the hypervisor took.\n")
print("| cores | target | p50 | p99 | added p50 | added p99 | steal, core 1 |")
print("|---|---|---|---|---|---|---|")
for mode in ("halting", "awake"):
    for target in ("direct", "nginx", "gateway"):
        p50, p99 = med(mode, target, "p50"), med(mode, target, "p99")
        if target == "direct":
            added = "", ""
        else:
            added = (f"{p50 - med(mode, 'direct', 'p50'):.3f}", f"{p99 - med(mode, 'direct', 'p99'):.3f}")
        st = statistics.median(steal[(mode, target)])
        print(f"| {mode} | {target} | {p50:.3f} | {p99:.3f} | {added[0]} | {added[1]} | {st:.1f} % |")
PY
