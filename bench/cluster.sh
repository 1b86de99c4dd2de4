#!/usr/bin/env bash
# Starts a Komunikator deployment for the benchmarks on this machine, with a
# fresh database, NATS prefix and secret each time, and stops it again.
#
#   bench/cluster.sh start <bin-dir> [distributed|all|peer]   # prints the env file to source
#   bench/cluster.sh stop
#
# distributed: api :6001, gateways :6002 and :6003, persister :6004,
#              presence :6005, against MariaDB, NATS and Redis on 127.0.0.1.
# all:         one `komunikator all` on :6000 with the embedded adapters.
# peer:        not Komunikator: the Node.js Socket.IO 4 server of bench/peer/
#              (one process on :6000, MariaDB with Komunikator's schema), to
#              compare against; see the top of bench/peer/server.mjs for what
#              it leaves out. Its node modules are installed with `npm ci` in
#              $KOM_PEER_DIR (default ~/.cache/komunikator-peer), only when
#              bench/peer/package-lock.json changed. Its env file also exports
#              KOM_BENCH_PIDS (peer:6000=<pid>,mariadbd=<pid>) for the
#              generator's --pids: it finds only `komunikator` processes itself.
# Logs and the env file go to $KOM_BENCH_DIR (default /tmp/kom-bench).
set -euo pipefail

dir="${KOM_BENCH_DIR:-/tmp/kom-bench}"
cmd="${1:-}"

stop() {
  if [ -f "$dir/pids" ]; then
    # SIGTERM first (graceful shutdown), then make sure.
    xargs -r kill -TERM <"$dir/pids" 2>/dev/null || true
    for _ in $(seq 1 50); do
      alive=0
      while read -r pid; do kill -0 "$pid" 2>/dev/null && alive=1; done <"$dir/pids"
      [ "$alive" = 0 ] && break
      sleep 0.1
    done
    xargs -r kill -KILL <"$dir/pids" 2>/dev/null || true
    rm -f "$dir/pids"
  fi
  if [ -f "$dir/env" ]; then
    # shellcheck disable=SC1091
    . "$dir/env"
    if [ -n "${KOM_BENCH_DB:-}" ]; then
      mariadb -uroot -h127.0.0.1 -e "DROP DATABASE IF EXISTS \`$KOM_BENCH_DB\`" 2>/dev/null || true
    fi
    if [ -n "${KOM_BENCH_DATA:-}" ]; then rm -rf "$KOM_BENCH_DATA"; fi
    rm -f "$dir/env"
  fi
}

# True when GET /readyz on the port answers 200 (bash only: no curl needed).
ready() {
  local rc
  exec 3<>"/dev/tcp/127.0.0.1/$1" || return 1
  printf 'GET /readyz HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n' >&3
  head -n1 <&3 | grep -q ' 200 '
  rc=$?
  exec 3>&-
  return "$rc"
}

wait_ready() {
  for _ in $(seq 1 200); do
    ready "$1" 2>/dev/null && return 0
    sleep 0.1
  done
  echo "service on :$1 not ready; see $dir/*.log" >&2
  return 1
}

# Sources the env file, then creates its database $db with Komunikator's
# schema (the peer uses that schema too).
fresh_database() {
  # shellcheck disable=SC1091
  . "$dir/env"
  mariadb -uroot -h127.0.0.1 -e "CREATE DATABASE \`$db\`"
  "$bin/komunikator" migrate >"$dir/migrate.log" 2>&1
}

case "$cmd" in
  start)
    bin="${2:?bin dir, e.g. target/release}"
    mode="${3:-distributed}"
    bin="$(cd "$bin" && pwd)"
    stop
    mkdir -p "$dir"
    tag="$(head -c4 /dev/urandom | od -An -tx1 | tr -d ' \n')"
    secret="$(head -c32 /dev/urandom | od -An -tx1 | tr -d ' \n')"
    {
      echo "export KOM_BENCH_BIN=$bin KOM_BENCH_MODE=$mode"
      # One load generator on one address stands for many clients: no
      # per-socket message rate, no per-address registration limit.
      echo "export MESSAGE_RATE_LIMIT=0 REGISTRATIONS_PER_ADDRESS=1000000 RUST_LOG=\${RUST_LOG:-warn}"
    } >"$dir/env"
    if [ "$mode" = all ]; then
      data="$dir/data-$tag"
      {
        # Nothing of a distributed deployment sourced before may leak in.
        echo "unset DATABASE_URL JWT_SECRET_KEY KOM_PREFIX NATS_URL REDIS_URL KOM_BENCH_DB KOM_BENCH_PIDS"
        echo "export DATA_DIR=$data KOM_BENCH_DATA=$data"
        echo "export API=http://127.0.0.1:6000 GATEWAYS=http://127.0.0.1:6000 GATEWAY=http://127.0.0.1:6000 PRESENCE=http://127.0.0.1:6000"
      } >>"$dir/env"
      # shellcheck disable=SC1091
      . "$dir/env"
      "$bin/komunikator" all --listen 127.0.0.1:6000 >"$dir/all.log" 2>&1 &
      echo $! >>"$dir/pids"
      wait_ready 6000
    elif [ "$mode" = peer ]; then
      db="kom_bench_$tag"
      {
        echo "unset DATA_DIR KOM_BENCH_DATA KOM_PREFIX NATS_URL REDIS_URL PRESENCE"
        echo "export DATABASE_URL=mysql://root@127.0.0.1:3306/$db KOM_BENCH_DB=$db"
        echo "export JWT_SECRET_KEY=$secret"
        echo "export API=http://127.0.0.1:6000 GATEWAYS=http://127.0.0.1:6000 GATEWAY=http://127.0.0.1:6000"
      } >>"$dir/env"
      fresh_database
      # The peer runs from a copy outside the repository, beside its modules
      # (ES modules resolve packages from the file's own directory).
      src="$(cd "$(dirname "$0")/peer" && pwd)"
      peer="${KOM_PEER_DIR:-$HOME/.cache/komunikator-peer}"
      mkdir -p "$peer"
      if ! cmp -s "$src/package-lock.json" "$peer/package-lock.json" || [ ! -d "$peer/node_modules" ]; then
        cp "$src/package.json" "$src/package-lock.json" "$peer/"
        if ! (cd "$peer" && npm ci --silent --no-audit --no-fund) >"$dir/npm.log" 2>&1; then
          rm -f "$peer/package-lock.json"
          echo "npm ci in $peer failed; see $dir/npm.log" >&2
          exit 1
        fi
      fi
      cp "$src/server.mjs" "$peer/server.mjs"
      LISTEN_ADDR=127.0.0.1:6000 node "$peer/server.mjs" >"$dir/peer-6000.log" 2>&1 &
      echo $! >>"$dir/pids"
      pids="peer:6000=$!"
      mariadbd="$(pgrep -x mariadbd | head -n1 || true)"
      [ -z "$mariadbd" ] || pids="$pids,mariadbd=$mariadbd"
      echo "export KOM_BENCH_PIDS=$pids" >>"$dir/env"
      wait_ready 6000
    else
      db="kom_bench_$tag"
      {
        echo "unset DATA_DIR KOM_BENCH_DATA KOM_BENCH_PIDS"
        echo "export DATABASE_URL=mysql://root@127.0.0.1:3306/$db KOM_BENCH_DB=$db"
        echo "export JWT_SECRET_KEY=$secret KOM_PREFIX=b$tag"
        # KOM_BENCH_NATS_URL / KOM_BENCH_NATS_REPLICAS: another NATS (a
        # cluster, other sync settings: bench/durability.sh).
        echo "export NATS_URL=${KOM_BENCH_NATS_URL:-nats://127.0.0.1:4222} REDIS_URL=redis://127.0.0.1:6379"
        echo "export NATS_STREAM_REPLICAS=${KOM_BENCH_NATS_REPLICAS:-1}"
        echo "export API=http://127.0.0.1:6001 GATEWAYS=http://127.0.0.1:6002,http://127.0.0.1:6003"
        echo "export GATEWAY=http://127.0.0.1:6002 PRESENCE=http://127.0.0.1:6005"
      } >>"$dir/env"
      fresh_database
      start_one() {
        "$bin/komunikator" "$1" --listen "127.0.0.1:$2" >"$dir/$1-$2.log" 2>&1 &
        echo $! >>"$dir/pids"
      }
      start_one api 6001
      start_one gateway 6002
      start_one gateway 6003
      start_one persister 6004
      start_one presence 6005
      for port in 6001 6002 6003 6004 6005; do wait_ready "$port"; done
    fi
    echo "$dir/env"
    ;;
  stop)
    stop
    ;;
  *)
    echo "usage: $0 start <bin-dir> [distributed|all|peer] | stop" >&2
    exit 2
    ;;
esac
