#!/usr/bin/env bash
# The benchmark runs behind the table in bench/README.md: each scenario
# RUNS times (default 3) on a fresh deployment, JSON results in
# bench/results/<name>-<n>.json, then the table of medians.
#
#   bench/run.sh <bin-dir> [name ...]     e.g. bench/run.sh target/release chat fanout
#
# Names: rest light-400 light-1000 chat chat-6000 chat-max chat-max-fine fanout fanout-cold fanout-cold-10k fanout-max
# idle presence, each also as all-<name> and peer-<name> (rest and presence:
# Komunikator only). Default: the comparison table (COMPARED) and the rest.
set -euo pipefail
cd "$(dirname "$0")/.."

bin="$(cd "${1:?bin dir, e.g. target/release}" && pwd)"
shift
names=("$@")
compared=(light-400 light-1000 chat-max fanout fanout-cold fanout-max idle)
if [ ${#names[@]} -eq 0 ]; then
  names=(rest chat presence)
  for name in "${compared[@]}"; do names+=("$name" "all-$name" "peer-$name"); done
fi
runs="${RUNS:-3}"
results="${KOM_BENCH_RESULTS:-bench/results}"
mkdir -p "$results"
trap 'bench/cluster.sh stop' EXIT

# The gateway and the generator each hold one descriptor per idle connection.
ulimit -n "$(ulimit -Hn)"

# <mode> <bench arguments>; the modes are bench/cluster.sh's. The same
# scenario runs against each system: "" (distributed Komunikator), "all-"
# (`komunikator all`) and "peer-" (the Socket.IO 4 Node peer in bench/peer).
scenario() {
  local name="$1" mode=distributed
  case "$name" in
    all-*) mode=all; name="${name#all-}" ;;
    peer-*) mode=peer; name="${name#peer-}" ;;
  esac
  local chat="chat --api \$API --gateways \$GATEWAYS --rooms 10 --users 10 --senders 2"
  local fanout="fanout --api \$API --gateways \$GATEWAYS --users 1000 --senders 1"
  local args
  case "$name" in
    rest) args="rest --api \$API --rooms 50 --concurrency 32 --seconds 10 --logins 16 --probe-rate 200" ;;
    light-400) args="$chat --rate 400 --seconds 10" ;;
    light-1000) args="$chat --rate 1000 --seconds 10" ;;
    chat) args="$chat --rate 8000 --seconds 10" ;;
    chat-6000) args="$chat --rate 6000 --seconds 10" ;;
    chat-max) args="$chat --rate 2000 --step 1.2 --seconds 5 --max --max-p99-ms 50" ;;
    # Finer steps near the distributed deployment's limit (tracing's cost).
    chat-max-fine) args="$chat --rate 6000 --step 1.05 --seconds 5 --max --max-p99-ms 50" ;;
    fanout) args="$fanout --rate 100 --warmup 5 --seconds 10" ;;
    fanout-cold) args="$fanout --rate 100 --seconds 10" ;;
    # Ten times the members, a tenth of the rate: the same 100k deliveries/s,
    # the users written to the store (registering 10,000 takes minutes).
    fanout-cold-10k) args="fanout --api \$API --gateways \$GATEWAYS --users 10000 --senders 1 --seed-direct --rate 10 --seconds 10" ;;
    # The same with the web client's batched presence.
    fanout-cold-batched) args="$fanout --rate 100 --seconds 10 --batched" ;;
    fanout-max) args="$fanout --rate 100 --step 1.2 --warmup 5 --seconds 5 --max" ;;
    idle) args="idle --gateway \$GATEWAY --api \$API \${PRESENCE:+--presence \$PRESENCE} --connections ${IDLE_CONNECTIONS:-19000} --sources 4 --connect-rate 4000 --seconds 20 --check-offline 5000" ;;
    presence) args="presence --presence \$PRESENCE --users 100000 --seconds 10" ;;
    # A mass reconnect into one room: 10,000 sockets (batched presence,
    # heartbeating) join it at once while probes chat in it and outside it.
    storm) args="rejoin --gateway \$GATEWAY --connections ${STORM_CONNECTIONS:-10000} --rooms 1 --plain --batched --heartbeat --probe-rate 2 --within 60" ;;
    *) echo "unknown scenario $1" >&2; return 1 ;;
  esac
  echo "$mode $args"
}

# Run n of every scenario before run n+1 of any: the systems compared
# alternate, so a noisy minute of the machine does not favour one of them.
for n in $(seq 1 "$runs"); do
  for name in "${names[@]}"; do
    spec="$(scenario "$name")"
    mode="${spec%% *}"
    args="${spec#* }"
    # A fresh deployment for every run: same starting state, no leftovers.
    # shellcheck disable=SC1090
    . "$(bench/cluster.sh start "$bin" "$mode")"
    echo "== $name run $n: bench $args"
    # The peer is not a `komunikator` process: cluster.sh names its PIDs.
    eval "\"$bin/bench\" $args ${KOM_BENCH_PIDS:+--pids $KOM_BENCH_PIDS} --json \"$results/$name-$n.json\""
    bench/cluster.sh stop
  done
done
python3 bench/table.py "$results"
