#!/usr/bin/env bash
# The typed client example of docs/client, as CI checks it: its types are
# generated from docs/openapi.yaml (openapi-typescript) and docs/asyncapi.yaml
# (generate-events.mjs), `tsc --noEmit` type-checks it against them, and the
# compiled script then chats with a `komunikator all` on embedded defaults.
# A REST call, field or event changed in the code and its document but not
# in the example, or in the code alone, fails here.
#   usage: KOM_NODE_DIR=DIR scripts/check-client.sh KOMUNIKATOR_BINARY
# Needs typescript, openapi-typescript, openapi-fetch, socket.io-client,
# @asyncapi/parser and @types/node in DIR/node_modules (scripts/test.sh
# installs them).
set -euo pipefail
binary="$1"
repo="$(cd "$(dirname "$0")/.." && pwd)"
node_dir="${KOM_NODE_DIR:-$HOME/.cache/komunikator-node}"
work="$(mktemp -d)"
server=""
cleanup() {
  if [ -n "$server" ]; then kill "$server" 2>/dev/null || true; wait "$server" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT

cp "$repo"/docs/client/{chat.ts,tsconfig.json,generate-events.mjs,package.json} "$work/"
ln -s "$node_dir/node_modules" "$work/node_modules"
bin="$work/node_modules/.bin"
(cd "$work" && "$bin/openapi-typescript" "$repo/docs/openapi.yaml" -o generated/api.d.ts >/dev/null)
KOM_NODE_DIR="$node_dir" node "$work/generate-events.mjs" "$repo/docs/asyncapi.yaml" "$work/generated/events.ts"
"$bin/tsc" -p "$work" --noEmit
echo "client example: tsc --noEmit passed"
"$bin/tsc" -p "$work"

# A server of its own, on embedded defaults and a free port.
mkdir "$work/data"
env -u DATABASE_URL -u DB_HOST -u NATS_URL -u REDIS_URL -u JWT_SECRET_KEY -u LISTEN_ADDR \
  DATA_DIR="$work/data" LOG_FORMAT=json "$binary" all --listen 127.0.0.1:0 >"$work/server.log" 2>&1 &
server=$!
addr=""
for _ in $(seq 200); do
  addr="$(sed -n 's/.*"message":"listening".*"addr":"\([^"]*\)".*/\1/p' "$work/server.log" | head -n 1)"
  [ -n "$addr" ] && break
  kill -0 "$server" 2>/dev/null || break
  sleep 0.1
done
if [ -z "$addr" ]; then
  echo "client example: the server did not start within 20 s" >&2
  cat "$work/server.log" >&2
  exit 1
fi
if ! timeout 60 node "$work/out/chat.js" "http://$addr" "ts_client" "typed client example"; then
  echo "client example: the script failed against $addr; server log:" >&2
  tail -n 50 "$work/server.log" >&2
  exit 1
fi
