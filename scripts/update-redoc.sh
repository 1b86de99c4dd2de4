#!/usr/bin/env bash
# Replaces the Redoc bundle the API serves at /api/docs (api/web/redoc/,
# compiled into the binary) with a release from npm: `npm pack` checks the
# tarball against the registry's integrity hash.
#   usage: scripts/update-redoc.sh VERSION   (e.g. 2.5.4)
# Then update REDOC_VERSION in api/src/web.rs and the hash in
# api/web/redoc/README.md, and look at /api/docs in a browser.
set -euo pipefail
version="$1"
repo="$(cd "$(dirname "$0")/.." && pwd)"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
(cd "$work" && npm pack --silent "redoc@$version" >/dev/null)
tar -xzf "$work/redoc-$version.tgz" -C "$work" package/LICENSE \
  package/bundles/redoc.standalone.js package/bundles/redoc.standalone.js.LICENSE.txt
cp "$work/package/LICENSE" "$repo/api/web/redoc/LICENSE"
cp "$work/package/bundles/redoc.standalone.js" "$work/package/bundles/redoc.standalone.js.LICENSE.txt" \
  "$repo/api/web/redoc/"
sha256sum "$repo/api/web/redoc/redoc.standalone.js"
