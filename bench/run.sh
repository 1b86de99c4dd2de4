#!/usr/bin/env bash
# The benchmark runs behind the table in bench/README.md: each scenario
# RUNS times (default 3) on a fresh deployment, JSON results in
# bench/results/<name>-<n>.json, then the table of medians.
#
#   bench/run.sh <bin-dir> [name ...]     e.g. bench/run.sh target/release chat fanout
#
# Names: rest chat chat-max fanout fanout-max idle presence all-chat all-chat-max (default: all).
set -euo pipefail
cd "$(dirname "$0")/.."

bin="$(cd "${1:?bin dir, e.g. target/release}" && pwd)"
shift
names=("$@")
[ ${#names[@]} -gt 0 ] || names=(rest chat chat-max fanout fanout-max idle presence all-chat all-chat-max)
runs="${RUNS:-3}"
results="${KOM_BENCH_RESULTS:-bench/results}"
mkdir -p "$results"
trap 'bench/cluster.sh stop' EXIT

# The gateway and the generator each hold one descriptor per idle connection.
ulimit -n "$(ulimit -Hn)"

scenario() {
  case "$1" in
    rest) echo "distributed rest --api \$API --rooms 50 --concurrency 32 --seconds 10 --logins 16 --probe-rate 200" ;;
    chat) echo "distributed chat --api \$API --gateways \$GATEWAYS --rooms 10 --users 10 --senders 2 --rate 8000 --seconds 10" ;;
    chat-max) echo "distributed chat --api \$API --gateways \$GATEWAYS --rooms 10 --users 10 --senders 2 --rate 4000 --step 1.2 --seconds 5 --max" ;;
    fanout-max) echo "distributed fanout --api \$API --gateways \$GATEWAYS --users 1000 --senders 1 --rate 100 --step 1.2 --seconds 5 --max" ;;
    fanout) echo "distributed fanout --api \$API --gateways \$GATEWAYS --users 1000 --senders 1 --rate 150 --seconds 10" ;;
    idle) echo "distributed idle --gateway \$GATEWAY --api \$API --presence \$PRESENCE --connections ${IDLE_CONNECTIONS:-19000} --sources 4 --connect-rate 4000 --seconds 20 --check-offline 5000" ;;
    presence) echo "distributed presence --presence \$PRESENCE --users 100000 --seconds 10" ;;
    all-chat) echo "all chat --api \$API --gateways \$GATEWAYS --rooms 10 --users 10 --senders 2 --rate 8000 --seconds 10" ;;
    all-chat-max) echo "all chat --api \$API --gateways \$GATEWAYS --rooms 10 --users 10 --senders 2 --rate 4000 --step 1.2 --seconds 5 --max" ;;
    *) echo "unknown scenario $1" >&2; return 1 ;;
  esac
}

for name in "${names[@]}"; do
  spec="$(scenario "$name")"
  mode="${spec%% *}"
  args="${spec#* }"
  for n in $(seq 1 "$runs"); do
    # A fresh deployment for every run: same starting state, no leftovers.
    # shellcheck disable=SC1090
    . "$(bench/cluster.sh start "$bin" "$mode")"
    echo "== $name run $n: bench $args"
    eval "\"$bin/bench\" $args --json \"$results/$name-$n.json\""
    bench/cluster.sh stop
  done
done
python3 bench/table.py "$results"
