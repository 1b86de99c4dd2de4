#!/usr/bin/env bash
# A few seconds of every scenario at tiny sizes, against a distributed
# deployment, against `komunikator all` and against the Socket.IO peer of
# bench/peer (its Node modules installed by cluster.sh), so that neither the
# generator nor the peer can rot. Each run must finish and its JSON must show complete, correct
# results. Used by scripts/test.sh; not a benchmark.
#
#   bench/smoke.sh <bin-dir>     (holding komunikator and bench)
set -euo pipefail
cd "$(dirname "$0")/.."

bin="$(cd "${1:?bin dir}" && pwd)"
export KOM_BENCH_DIR="${KOM_BENCH_DIR:-$(mktemp -d)}"
out="$KOM_BENCH_DIR/results"
mkdir -p "$out"
trap 'bench/cluster.sh stop' EXIT
passed=0
failed=0

# check <name> <json file> <python expression over r>
check() {
  if python3 - "$2" "$3" <<'EOF'
import json, sys
r = json.load(open(sys.argv[1]))
ok = eval(sys.argv[2], {}, {"r": r})
if not ok:
    print("check failed:", sys.argv[2], file=sys.stderr)
    print(json.dumps(r, indent=1)[:3000], file=sys.stderr)
sys.exit(0 if ok else 1)
EOF
  then
    echo "smoke $1: ok"
    passed=$((passed + 1))
  else
    echo "smoke $1: FAILED"
    failed=$((failed + 1))
  fi
}

# run <name> <check> <bench args...>
run() {
  local name="$1" expr="$2"
  shift 2
  if timeout 120 "$bin/bench" "$@" --json "$out/$name.json"; then
    check "$name" "$out/$name.json" "$expr"
  else
    echo "smoke $name: FAILED (exit $?)"
    failed=$((failed + 1))
  fi
}

complete='r["delivery_ratio"] == 1 and r["errors"] == {} and r["persisted"]["missing"] == 0 and r["acked"] == r["sent"] > 0'

# deploy <mode>: starts a fresh deployment and sources its settings.
deploy() {
  local env_file
  if env_file="$(bench/cluster.sh start "$bin" "$1")"; then
    # shellcheck disable=SC1090
    . "$env_file"
  else
    echo "smoke $1 deployment: FAILED to start"
    tail -n 5 "$KOM_BENCH_DIR"/*.log || true
    failed=$((failed + 1))
    return 1
  fi
}

if deploy distributed; then
run chat "$complete and r['latency_ms']['count'] == r['delivered']" \
  chat --api "$API" --gateways "$GATEWAYS" --rooms 2 --users 4 --senders 2 --rate 100 --seconds 2
run light "$complete and r['delivered'] == r['acked'] * 10" \
  chat --api "$API" --gateways "$GATEWAYS" --rooms 10 --users 10 --senders 2 --rate 400 --seconds 2
run chat-max "$complete and len(r['steps']) == 2 and r['best_passing_rate'] is not None" \
  chat --api "$API" --gateways "$GATEWAYS" --rooms 1 --users 3 --rate 50 --seconds 1 --max --max-steps 2
run fanout "$complete and r['expected'] == r['acked'] * 30" \
  fanout --api "$API" --gateways "$GATEWAYS" --users 30 --rate 20 --seconds 2
run idle 'r["connected"] == 300 and r["presence"]["correct"] and r["heartbeats_per_second"] > 0 and r["gateway_rss_kb_per_connection"] >= 0 and r["errors"] == {}' \
  idle --gateway "$GATEWAY" --api "$API" --presence "$PRESENCE" --connections 300 --sources 3 \
  --seconds 2 --check-offline "${PRESENCE_TIMEOUT_MS:-5000}"
run rejoin 'r["caught_up"] == r["connected"] == 200 and r["errors"] == {}' \
  rejoin --gateway "$GATEWAY" --connections 200 --rooms 10 --behind 3
# The presence storm's shape (bench/run.sh storm), tiny: one room, batched
# presence, heartbeats, probes in and outside the room.
run storm 'r["caught_up"] == r["connected"] == 300 and r["errors"] == {} and r["probe_ms"]["storm_room"]["count"] > 0 and r["probe_ms"]["outside"]["count"] > 0' \
  rejoin --gateway "$GATEWAY" --connections 300 --rooms 1 --plain --batched --heartbeat --probe-rate 20
run presence 'r["processed_ratio"] == 1 and r["came_online"] == r["expected_online"] == 500' \
  presence --presence "$PRESENCE" --users 500 --rate 1000 --seconds 1
run rest 'r["rooms"]["requests"]["ok"] > 0 and r["rooms"]["requests"]["errors"] == {} and r["rooms"]["rooms_listed"] >= 5 and r["login_flood"]["login"]["ok"] > 0 and r["probe_quiet"]["user_rooms"]["ok"] > 0' \
  rest --api "$API" --rooms 5 --concurrency 4 --seconds 1 --logins 2 --probe-rate 50
run persist-lag 'r["lag_ms"]["count"] == 5' \
  persist-lag --api "$API" --gateway "$GATEWAY" --messages 5
run history 'r["quiet"]["reads"]["ok"] > 0 and r["quiet"]["reads"]["errors"] == {} and r["during_chat"]["reads"]["ok"] > 0 and r["during_chat"]["reads"]["errors"] == {} and r["sent_during"] > 0 and r["throughput"]["requests"]["ok"] > 0 and r["throughput"]["requests"]["errors"] == {}' \
  history --api "$API" --gateway "$GATEWAY" --messages 20 --probe-rate 50 --chat-rate 50 --concurrency 2 --seconds 1
fi

if deploy all; then
run all-chat "$complete" \
  chat --api "$API" --gateways "$GATEWAYS" --rooms 2 --users 3 --rate 50 --seconds 2
run all-idle 'r["connected"] == 100 and r["presence"]["correct"]' \
  idle --gateway "$GATEWAY" --presence "$PRESENCE" --connections 100 --seconds 1
run all-rejoin 'r["caught_up"] == r["connected"] == 200 and r["errors"] == {}' \
  rejoin --gateway "$GATEWAY" --connections 200 --rooms 10 --behind 3
fi

# The Socket.IO peer the table compares with (bench/peer): it must still
# speak what the generator needs.
if deploy peer; then
run peer-chat "$complete" \
  chat --api "$API" --gateways "$GATEWAYS" --rooms 2 --users 4 --senders 2 --rate 100 --seconds 2 --pids "$KOM_BENCH_PIDS"
run peer-idle 'r["connected"] == 100 and r["heartbeats_per_second"] > 0 and r["errors"] == {}' \
  idle --gateway "$GATEWAY" --api "$API" --connections 100 --seconds 1 --pids "$KOM_BENCH_PIDS"
fi

echo "bench smoke: $passed passed, $failed failed"
[ "$failed" = 0 ]
