#!/usr/bin/env bash
# System calls and CPU time of `komunikator all` per 1,000 deliveries, in
# the warmed-up fan-out (one room of 1,000 sockets, one sender, 100 msg/s:
# 100,000 deliveries/s). `perf stat` counts the process's system calls
# (raw_syscalls:sys_enter) and CPU time (task-clock) over 8 s of the 10 s
# measured window, after the warm-up; the deliveries of those seconds are
# the generator's rate over the window.
#
#   bench/syscalls.sh <bin-dir> [<bin-dir> ...]   RUNS (default 3) of each,
#                                                 alternating the binaries
# One line per run: bin, deliveries/s, syscalls and CPU ms per 1,000
# deliveries, p99.
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -ge 1 ] || { echo "usage: $0 <bin-dir> ..." >&2; exit 2; }
command -v perf >/dev/null || { echo "perf is required" >&2; exit 2; }
runs="${RUNS:-3}"
trap 'bench/cluster.sh stop' EXIT
window=8
for n in $(seq 1 "$runs"); do
  for dir in "$@"; do
    bin="$(cd "$dir" && pwd)"
    # shellcheck disable=SC1090
    . "$(bench/cluster.sh start "$bin" all)"
    pid="$(pgrep -f "^$bin/komunikator all" | head -1)"
    out="$(mktemp)"
    "$bin/bench" fanout --api "$API" --gateways "$GATEWAYS" --users 1000 --senders 1 \
      --rate 100 --warmup 5 --seconds 10 --json "$out.json" >"$out" 2>&1 &
    gen=$!
    # The measured window starts when the warm-up line is printed.
    until grep -q "warm-up" "$out"; do
      kill -0 "$gen" 2>/dev/null || { cat "$out" >&2; exit 1; }
      sleep 0.1
    done
    sleep 1
    stat="$(perf stat -x, -e raw_syscalls:sys_enter,task-clock -p "$pid" -- sleep "$window" 2>&1 >/dev/null)"
    wait "$gen"
    bench/cluster.sh stop
    python3 - "$bin" "$out.json" "$window" "$n" <<'PY' "$stat"
import json, sys
bin_dir, result, window, run, stat = sys.argv[1], sys.argv[2], float(sys.argv[3]), sys.argv[4], sys.argv[5]
r = json.load(open(result))
counts = {}
for line in stat.splitlines():
    parts = line.split(",")
    if len(parts) > 2 and parts[0].replace(".", "", 1).isdigit():
        counts[parts[2]] = float(parts[0])
rate = r["deliveries_per_second"]
thousands = rate * window / 1000
p99 = r["latency_ms"]["p99"]
print(f"run {run} {bin_dir}: {rate:,.0f} deliveries/s, "
      f"{counts['raw_syscalls:sys_enter'] / thousands:,.0f} syscalls and "
      f"{counts['task-clock'] / thousands:.1f} CPU ms per 1,000 deliveries, p99 {p99} ms")
PY
    rm -f "$out" "$out.json"
  done
done
