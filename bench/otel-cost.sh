#!/usr/bin/env bash
# What exporting traces costs: the chat scenarios on the distributed
# deployment with tracing off, then exported at 1 % sampling to a local
# OTLP/HTTP sink (bench/otlp_sink.py), alternating run by run. JSON in
# $KOM_BENCH_RESULTS/{off,on}/, then the tables of medians.
#
#   bench/otel-cost.sh <bin-dir> [name ...]   e.g. bench/otel-cost.sh target/release chat chat-max-fine
set -euo pipefail
cd "$(dirname "$0")/.."

bin="${1:?bin dir, e.g. target/release}"
shift
names=("$@")
[ ${#names[@]} -gt 0 ] || names=(chat chat-max-fine)
runs="${RUNS:-3}"
results="${KOM_BENCH_RESULTS:-bench/results/otel}"
sink_port="${OTLP_SINK_PORT:-4318}"
mkdir -p "$results/off" "$results/on"

python3 bench/otlp_sink.py "$sink_port" >"$results/sink.log" 2>&1 &
sink=$!
trap 'kill $sink 2>/dev/null || true' EXIT

for n in $(seq 1 "$runs"); do
  for name in "${names[@]}"; do
    RUNS=1 KOM_BENCH_RESULTS="$results/off/$n" bench/run.sh "$bin" "$name" >/dev/null
    mv "$results/off/$n/$name-1.json" "$results/off/$name-$n.json"
    OTEL_EXPORTER_OTLP_ENDPOINT="http://127.0.0.1:$sink_port" \
      OTEL_TRACES_SAMPLER=parentbased_traceidratio OTEL_TRACES_SAMPLER_ARG=0.01 \
      RUNS=1 KOM_BENCH_RESULTS="$results/on/$n" bench/run.sh "$bin" "$name" >/dev/null
    mv "$results/on/$n/$name-1.json" "$results/on/$name-$n.json"
    rmdir "$results/off/$n" "$results/on/$n" 2>/dev/null || true
  done
done
echo "== tracing off"
python3 bench/table.py "$results/off"
echo "== traces exported, 1 % sampled"
python3 bench/table.py "$results/on"
echo "== sink: $(tail -1 "$results/sink.log")"
