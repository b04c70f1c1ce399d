#!/usr/bin/env bash
# Build the waste-bins example's components into examples/waste-bins/build/:
#   bridge.wasm, process.wasm, alert.wasm, summary.wasm, readings.wasm
#   (Python, componentize-py)
#
# Each function has its own world in wit/world.wit, importing only what its
# grants allow (T16). The interfaces come from the host's own WIT
# (crates/runtime/wit: key-value, config, queue producer) and the WASI
# 0.2.12 files of examples/hello/wit/deps, assembled into build/wit. The
# toolchain is installed, pinned, into the git-ignored .tools/ folder at the
# repository root (examples/lib/build-lib.sh). Safe to run again: a
# component is rebuilt only when a fingerprint of its sources and tools has
# changed.
# Needs: python3 (3.11+) with pip, and the registry.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
OUT="$HERE/build"
# shellcheck source=../lib/build-lib.sh
source "$HERE/../lib/build-lib.sh"

PYTHON_FUNCTIONS=(bridge process alert summary readings)

# The world folder: ours, WASI's and the host's interfaces side by side.
assemble_wit() {
    local wit="$OUT/wit" package
    rm -rf "$wit"
    mkdir -p "$wit/deps"
    cp "$HERE/wit/world.wit" "$wit/"
    cp "$ROOT/examples/hello/wit/deps/"*.wit "$wit/deps/"
    for package in keyvalue config queue; do
        mkdir -p "$wit/deps/$package"
        cp "$ROOT/crates/runtime/wit/$package/"*.wit "$wit/deps/$package/"
    done
}

build_python() {
    local name="$1" fp
    local -a inputs
    mapfile -t inputs < <(files "$HERE/python" -name '*.py'; files "$OUT/wit" -name '*.wit')
    fp="$(fingerprint "$name componentize-py $COMPONENTIZE_PY_VERSION $(build_scripts_digest)" "${inputs[@]}")"
    if up_to_date "$name" "$fp"; then
        say "$name: up to date"
        return
    fi
    say "$name: componentize-py (world $name)"
    componentize_python "$name" "$OUT/wit" "$name" "$HERE/python" "$name"
    finish "$name" "$fp" "$OUT/.$name.wasm.tmp"
}

mkdir -p "$OUT"
rm -f "$OUT"/.*.wasm.tmp
say "toolchain (.tools/, git-ignored)"
install_python_tools
say "components (examples/waste-bins/build/)"
assemble_wit
for function in "${PYTHON_FUNCTIONS[@]}"; do build_python "$function"; done
say "done: $(printf 'build/%s.wasm ' "${PYTHON_FUNCTIONS[@]}")"
