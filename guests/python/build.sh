#!/usr/bin/env bash
# Build the Python test guests into guests/target/python/ with componentize-py:
#   state-python.wasm  guests/python/state (tests/isolation_python.rs)
#
# Uses the componentize-py that examples/hello/build.sh pins and installs in
# the git-ignored .tools/venv (scripts/test runs that script first), and the
# examples' wit/ (the wasi:http proxy world). Rebuilds only when the sources,
# the world or this script change.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
VENV="$ROOT/.tools/venv"
WIT="$ROOT/examples/hello/wit"
OUT="$ROOT/guests/target/python"

die() { printf 'error: %s\n' "$*" >&2; exit 1; }

[[ -x "$VENV/bin/componentize-py" ]] ||
    die "componentize-py is not in .tools/venv: run examples/hello/build.sh first (it installs the pinned version)"
mkdir -p "$OUT"

for guest in state; do
    src="$HERE/$guest"
    fp="$({
        "$VENV/bin/componentize-py" --version
        sha256sum <"$HERE/build.sh"
        find "$src" "$WIT" -type f \( -name '*.py' -o -name '*.wit' \) -not -path '*/__pycache__/*' |
            LC_ALL=C sort | xargs sha256sum
    } | sha256sum | cut -d' ' -f1)"
    if [[ -f "$OUT/$guest-python.wasm" && "$(cat "$OUT/.$guest-python.stamp" 2>/dev/null)" == "$fp" ]]; then
        continue
    fi
    "$VENV/bin/componentize-py" --quiet --wit-path "$WIT" --world hello \
        componentize --python-path "$src" app --output "$OUT/.$guest-python.wasm.tmp"
    [[ -s "$OUT/.$guest-python.wasm.tmp" ]] || die "$guest: componentize-py produced no component"
    mv -f "$OUT/.$guest-python.wasm.tmp" "$OUT/$guest-python.wasm"
    printf '%s\n' "$fp" >"$OUT/.$guest-python.stamp"
    printf '==> %s: built guests/target/python/%s-python.wasm\n' "$guest" "$guest"
done
