#!/usr/bin/env bash
# Build the hello example's three components into examples/hello/build/:
#   hello-rust.wasm    Rust, wasip2 crate, cargo --target wasm32-wasip2
#   hello-python.wasm  Python, componentize-py
#   hello-js.wasm      JavaScript, componentize-js (StarlingMonkey)
#
# The Python and JavaScript toolchains are installed, pinned, into the
# git-ignored .tools/ folder at the repository root (examples/lib/build-lib.sh). Safe to run again from
# any directory: a toolchain already installed is kept, and a component is
# rebuilt only when a fingerprint of its sources and tools has changed.
# Needs: cargo (with rustup, or the wasm32-wasip2 target already there),
# python3 (3.11+) with pip, node (20+) and npm, and the package registries.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
OUT="$HERE/build"
WIT="$HERE/wit"
# shellcheck source=../lib/build-lib.sh
source "$HERE/../lib/build-lib.sh"

# --- components -------------------------------------------------------------

build_rust() {
    local name=hello-rust fp
    need cargo "install Rust with rustup"
    local -a inputs
    mapfile -t inputs < <(printf '%s\n' "$HERE/rust/Cargo.toml" "$HERE/rust/Cargo.lock"; files "$HERE/rust/src" -name '*.rs')
    fp="$(fingerprint "$name $(rustc --version) $(build_scripts_digest)" "${inputs[@]}")"
    if up_to_date "$name" "$fp"; then
        say "$name: up to date"
        return
    fi
    if command -v rustup >/dev/null 2>&1 &&
        ! grep -qx wasm32-wasip2 <<<"$(rustup target list --installed)"; then
        say "$name: adding the wasm32-wasip2 Rust target"
        rustup target add wasm32-wasip2
    fi
    say "$name: cargo build --release --target wasm32-wasip2"
    (cd "$HERE/rust" && cargo build --quiet --release --locked --target wasm32-wasip2)
    cp "$HERE/rust/target/wasm32-wasip2/release/hello_rust.wasm" "$OUT/.$name.wasm.tmp"
    finish "$name" "$fp" "$OUT/.$name.wasm.tmp"
}

build_python() {
    local name=hello-python fp
    local -a inputs
    mapfile -t inputs < <(files "$HERE/python" -name '*.py'; files "$WIT" -name '*.wit')
    fp="$(fingerprint "$name componentize-py $COMPONENTIZE_PY_VERSION $(build_scripts_digest)" "${inputs[@]}")"
    if up_to_date "$name" "$fp"; then
        say "$name: up to date"
        return
    fi
    say "$name: componentize-py (world hello in wit/)"
    componentize_python "$name" "$WIT" hello "$HERE/python" app
    finish "$name" "$fp" "$OUT/.$name.wasm.tmp"
}

build_js() {
    local name=hello-js fp
    local -a inputs
    mapfile -t inputs < <(files "$HERE/js" -name '*.js' -o -name 'package*.json'; files "$WIT" -name '*.wit')
    fp="$(fingerprint "$name componentize-js $COMPONENTIZE_JS_VERSION $(build_scripts_digest)" "${inputs[@]}")"
    if up_to_date "$name" "$fp"; then
        say "$name: up to date"
        return
    fi
    local wit_js="$OUT/wit-js"
    js_world "$WIT" "$wit_js"
    say "$name: componentize-js (world hello, wasi:http@$STARLINGMONKEY_WASI_VERSION)"
    componentize_js "$name" "$HERE/js/app.js" "$wit_js" hello
    finish "$name" "$fp" "$OUT/.$name.wasm.tmp"
}

mkdir -p "$OUT"
rm -f "$OUT"/.*.wasm.tmp
say "toolchains (.tools/, git-ignored)"
install_python_tools
install_js_tools
say "components (examples/hello/build/)"
build_rust
build_python
build_js
say "done: build/hello-rust.wasm, build/hello-python.wasm, build/hello-js.wasm"
