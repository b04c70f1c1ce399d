#!/usr/bin/env bash
# Build the conference example's components into examples/conference/build/:
#   register.wasm, rate.wasm, mydata.wasm   Python, componentize-py
#   talks.wasm, badge.wasm                  JavaScript, componentize-js
#
# Each function has its own world in wit/world.wit, importing only what its
# grants allow (T16). The interfaces come from the host's own WIT
# (crates/runtime/wit: key-value, config, SQL) and the WASI 0.2.12 files of
# examples/hello/wit/deps, assembled into build/wit. The toolchains are
# installed, pinned, into the git-ignored .tools/ folder at the repository
# root (examples/lib/build-lib.sh). Safe to run again: a component is rebuilt
# only when a fingerprint of its sources and tools has changed.
# Needs: python3 (3.11+) with pip, node (20+) and npm, and the registries.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
OUT="$HERE/build"
# shellcheck source=../lib/build-lib.sh
source "$HERE/../lib/build-lib.sh"

PYTHON_FUNCTIONS=(register rate mydata)
JS_FUNCTIONS=(talks badge)

# The world folder: ours, WASI's and the host's interfaces side by side.
assemble_wit() {
    local wit="$OUT/wit" package
    rm -rf "$wit"
    mkdir -p "$wit/deps"
    cp "$HERE/wit/world.wit" "$wit/"
    cp "$ROOT/examples/hello/wit/deps/"*.wit "$wit/deps/"
    for package in keyvalue config sql; do
        mkdir -p "$wit/deps/$package"
        cp "$ROOT/crates/runtime/wit/$package/"*.wit "$wit/deps/$package/"
    done
    js_world "$wit" "$OUT/wit-js"
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

build_js() {
    local name="$1" fp
    local -a inputs
    mapfile -t inputs < <(printf '%s\n' "$HERE/js/$name.js"; files "$OUT/wit-js" -name '*.wit')
    fp="$(fingerprint "$name componentize-js $COMPONENTIZE_JS_VERSION $(build_scripts_digest)" "${inputs[@]}")"
    if up_to_date "$name" "$fp"; then
        say "$name: up to date"
        return
    fi
    say "$name: componentize-js (world $name, wasi:http@$STARLINGMONKEY_WASI_VERSION)"
    componentize_js "$name" "$HERE/js/$name.js" "$OUT/wit-js" "$name"
    finish "$name" "$fp" "$OUT/.$name.wasm.tmp"
}

mkdir -p "$OUT"
rm -f "$OUT"/.*.wasm.tmp
say "toolchains (.tools/, git-ignored)"
install_python_tools
install_js_tools
say "components (examples/conference/build/)"
assemble_wit
for function in "${PYTHON_FUNCTIONS[@]}"; do build_python "$function"; done
for function in "${JS_FUNCTIONS[@]}"; do build_js "$function"; done
say "done: $(printf 'build/%s.wasm ' "${PYTHON_FUNCTIONS[@]}" "${JS_FUNCTIONS[@]}")"
