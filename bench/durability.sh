#!/usr/bin/env bash
# What durable acknowledgements cost: the same scenarios against each way of
# storing a message, a few runs each (medians in bench/README.md).
#
#   bench/durability.sh <bin-dir> [runs] [nats-server]
#
# <bin-dir> holds komunikator and bench built with --release. Setups:
#   all        komunikator all, SQLite synced at every commit (synchronous=FULL)
#   r1-default distributed, one NATS server, JetStream's default sync (2 min)
#   r1-always  distributed, one NATS server on deploy/nats/nats.conf (sync always)
#   r3-default distributed, three NATS servers, streams on all three, default sync
#   r3-always  distributed, three NATS servers on deploy/nats/cluster.conf
# Scenarios: acks one at a time and 100 in flight (closed loop), chat 10×10
# at 1,000 msg/s (light) and at 8,000 msg/s (the chat table's rate); and,
# when asked for, max: the highest chat rate at p99 <= 50 ms (max-warm: the
# same after a warm-up).
# KOM_DURABILITY_SCENARIOS: the scenarios to run (default: acks-1 acks-100
# light chat; add max for the ramp).
# KOM_DURABILITY_SETUPS: the setups to run (default: all five);
# KOM_DURABILITY_FIRST_RUN: the number of the first run (default 1).
# nats-server: a current one (default: $KOM_NATS_SERVER, which
# scripts/test.sh installs). Results: $KOM_BENCH_DIR/durability/<setup>__<scenario>__<run>.json
set -euo pipefail
cd "$(dirname "$0")/.."
bin="$(cd "${1:?bin dir, e.g. target/release}" && pwd)"
runs="${2:-3}"
nats_server="${3:-${KOM_NATS_SERVER:-nats-server}}"
export KOM_BENCH_DIR="${KOM_BENCH_DIR:-/tmp/kom-bench}"
out="$KOM_BENCH_DIR/durability"
natsdir="$KOM_BENCH_DIR/nats"
mkdir -p "$out"

stop_nats() {
  pkill -f "nats-server --config $natsdir" 2>/dev/null || true
  for _ in $(seq 1 50); do pgrep -f "nats-server --config $natsdir" >/dev/null || break; sleep 0.1; done
  rm -rf "$natsdir"
}

# start_nats <servers> <always|default>: NATS on 7222.. (client), 7322..
# (cluster), 7422.. (monitor), the shipped configuration with its sync
# setting kept or dropped; sets KOM_BENCH_NATS_URL and _REPLICAS.
start_nats() {
  local n="$1" sync="$2" urls="" routes="" i
  stop_nats
  for i in $(seq 0 $((n - 1))); do routes="$routes    nats://127.0.0.1:$((7322 + i))\n"; done
  for i in $(seq 0 $((n - 1))); do
    local d="$natsdir/n$i"
    mkdir -p "$d"
    sed -e "s|^port: 4222|host: 127.0.0.1\nport: $((7222 + i))|" \
        -e "s|^http_port: 8222|http: \"127.0.0.1:$((7422 + i))\"|" \
        -e "s|\"/data/jetstream\"|\"$d/js\"|" deploy/nats/nats.conf >"$d/nats.conf"
    [ "$sync" = always ] || sed -i 's|^  sync_interval: always|  # default sync interval|' "$d/nats.conf"
    local conf="$d/nats.conf"
    if [ "$n" -gt 1 ]; then
      python3 - "$d/cluster.conf" "$((7322 + i))" "$routes" <<'PY'
import sys
path, port, routes = sys.argv[1], sys.argv[2], sys.argv[3].replace("\\n", "\n")
conf = open("deploy/nats/cluster.conf").read()
conf = conf.replace("  port: 6222", f'  listen: "127.0.0.1:{port}"')
start, end = conf.index("routes: ["), conf.index("]", conf.index("routes: ["))
conf = conf[:start] + "routes: [\n" + routes + "  " + conf[end:]
open(path, "w").write(conf)
PY
      conf="$d/cluster.conf"
    fi
    SERVER_NAME="bench-$i" "$nats_server" --config "$conf" >"$d/log" 2>&1 &
    urls="$urls,nats://127.0.0.1:$((7222 + i))"
  done
  for i in $(seq 0 $((n - 1))); do
    for _ in $(seq 1 100); do (exec 3<>"/dev/tcp/127.0.0.1/$((7222 + i))") 2>/dev/null && break; sleep 0.1; done
  done
  export KOM_BENCH_NATS_URL="${urls#,}" KOM_BENCH_NATS_REPLICAS="$n"
  # JetStream takes streams once its servers say it is healthy (a
  # cluster: once it has elected its meta leader).
  for i in $(seq 0 $((n - 1))); do
    for _ in $(seq 1 300); do
      curl -fs "http://127.0.0.1:$((7422 + i))/healthz" >/dev/null 2>&1 && break
      sleep 0.1
    done
  done
}

scenario() { # <setup> <name> <run> <bench args...>
  local setup="$1" name="$2" run="$3"
  shift 3
  "$bin/bench" "$@" --json "$out/${setup}__${name}__${run}.json" | tail -n 1
}

for run in $(seq "${KOM_DURABILITY_FIRST_RUN:-1}" "$runs"); do
  for setup in ${KOM_DURABILITY_SETUPS:-all r1-default r1-always r3-default r3-always}; do
    case "$setup" in
      all) stop_nats; mode=all ;;
      r1-*) start_nats 1 "${setup#r1-}"; mode=distributed ;;
      r3-*) start_nats 3 "${setup#r3-}"; mode=distributed ;;
    esac
    # shellcheck disable=SC1090
    . "$(bench/cluster.sh start "$bin" "$mode")"
    echo "== $setup, run $run"
    for name in ${KOM_DURABILITY_SCENARIOS:-acks-1 acks-100 light chat}; do
      case "$name" in
        acks-1) scenario "$setup" acks-1 "$run" acks --api "$API" --gateway "$GATEWAY" --in-flight 1 --seconds 5 ;;
        acks-100) scenario "$setup" acks-100 "$run" acks --api "$API" --gateway "$GATEWAY" --in-flight 100 --seconds 5 ;;
        light) scenario "$setup" light "$run" chat --api "$API" --gateways "$GATEWAYS" --rate 1000 --seconds 5 --warmup 2 ;;
        chat) scenario "$setup" chat "$run" chat --api "$API" --gateways "$GATEWAYS" --rate 8000 --seconds 5 --warmup 2 ;;
        # The highest chat rate at p99 <= 50 ms, everything delivered.
        max) scenario "$setup" max "$run" chat --api "$API" --gateways "$GATEWAYS" --rate 2000 --step 1.2 --seconds 5 --max --max-p99-ms 50 ;;
        # The same after 3 s at the first rate: the ramp's first step
        # without it measures the deployment warming up.
        max-warm) scenario "$setup" max-warm "$run" chat --api "$API" --gateways "$GATEWAYS" --rate 2000 --step 1.2 --seconds 5 --warmup 3 --max --max-p99-ms 50 ;;
        *) echo "unknown scenario $name" >&2; exit 1 ;;
      esac
    done
    bench/cluster.sh stop
  done
done
stop_nats
python3 - "$out" <<'PY'
import glob, json, os, statistics, sys
out = sys.argv[1]
rows = {}
for path in glob.glob(os.path.join(out, "*.json")):
    setup, name, _run = os.path.basename(path)[:-5].split("__")
    r = json.load(open(path))
    rows.setdefault((setup, name), []).append(r)
def med(values):
    return statistics.median(values) if values else float("nan")
print("| setup | acks/s, 1 in flight (p99 ms) | acks/s, 100 in flight (p99 ms) | 1,000 msg/s: delivery p99 ms | 8,000 msg/s: delivery p99 ms, delivered | highest msg/s at p99 <= 50 ms |")
print("|---|---|---|---|---|---|")
for setup in ["all", "r1-default", "r1-always", "r3-default", "r3-always"]:
    a1, a100 = rows.get((setup, "acks-1"), []), rows.get((setup, "acks-100"), [])
    light, chat = rows.get((setup, "light"), []), rows.get((setup, "chat"), [])
    cell = lambda rs: f"{med([r['acked_per_second'] for r in rs]):,.0f} ({med([r['ack_ms']['p99'] for r in rs]):.1f})"
    p99 = lambda rs: f"{med([r['latency_ms']['p99'] for r in rs]):.1f}" if rs else "-"
    dl = lambda rs: f"{med([r['delivery_ratio'] for r in rs]) * 100:.1f} %" if rs else "-"
    best = [r.get("best_passing_rate") or 0 for r in rows.get((setup, "max"), [])]
    most = f"{med(best):,.0f} ({min(best):,.0f} – {max(best):,.0f})" if best else "-"
    cell = cell if a1 else (lambda rs: "-")
    print(f"| {setup} | {cell(a1)} | {cell(a100)} | {p99(light)} | {p99(chat)}, {dl(chat)} | {most} |")
PY
