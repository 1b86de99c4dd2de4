#!/usr/bin/env bash
# Runs the published test suites of the vendored crates against the
# vendored copies: engineioxide-core's, engineioxide's (with the `v3`
# feature too) and socketioxide's, each with the other vendored crates
# patched in. The
# vendored crates are outside the workspace, so `cargo test` never builds
# them; run this after changing one (vendor/README.md).
#
#   vendor/test-upstream.sh
#
# Downloads the published crates of the vendored versions from crates.io for
# their tests/ directories, and builds in $KOM_VENDOR_TARGET (default
# ~/.cache/komunikator-vendor-target).
set -euo pipefail
vendor="$(cd "$(dirname "$0")" && pwd)"
root="$(dirname "$vendor")"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
export CARGO_TARGET_DIR="${KOM_VENDOR_TARGET:-$HOME/.cache/komunikator-vendor-target}"

version() { sed -n 's/^version = "\(.*\)"/\1/p' "$vendor/$1/Cargo.toml" | head -1; }

# <crate>: a copy of the vendored crate with the published tests, the
# published manifest's test targets and dev-dependencies (criterion, for
# benches only, left out), and the vendored crates patched in.
prepare() {
  local crate="$1" v
  v="$(version "$crate")"
  curl -sSfL "https://static.crates.io/crates/$crate/$crate-$v.crate" | tar xz -C "$work"
  cp -r "$vendor/$crate" "$work/$crate"
  if [ -d "$work/$crate-$v/tests" ]; then cp -r "$work/$crate-$v/tests" "$work/$crate/"; fi
  python3 - "$work/$crate-$v/Cargo.toml" "$work/$crate/Cargo.toml" "$vendor" <<'PY'
import re, sys
published, target, vendor = sys.argv[1:]
s = open(published).read()
s = re.sub(r'\[dev-dependencies\.criterion\]\n(?:[^\[\n].*\n)*\n?', '', s)
s = re.sub(r'\[\[bench\]\]\n(?:[^\[\n].*\n)*\n?', '', s)
s += '\n[workspace]\n\n[patch.crates-io]\n'
# The vendored crates this one is built on (each depends on the ones before it).
stack = ['engineioxide-core', 'engineioxide', 'socketioxide']
crate = target.split('/')[-2]
for name in stack[:stack.index(crate)]:
    s += f'{name} = {{ path = "{vendor}/{name}" }}\n'
open(target, 'w').write(s)
PY
  cp "$root/Cargo.lock" "$work/$crate/"
}

prepare engineioxide-core
prepare engineioxide
prepare socketioxide
# (Its unit tests compile only with `v3`, as published.)
(cd "$work/engineioxide-core" && cargo test --lib --features v3)
(cd "$work/engineioxide" && cargo test --features tracing,__test_harness --tests)
(cd "$work/engineioxide" && cargo test --features tracing,v3,__test_harness --tests)
(cd "$work/socketioxide" && cargo test --features tracing,__test_harness,extensions,state --tests)
echo "upstream suites passed against the vendored crates"
