#!/usr/bin/env bash
# Build the hello example's three components into examples/hello/build/:
#   hello-rust.wasm    Rust, wasip2 crate, cargo --target wasm32-wasip2
#   hello-python.wasm  Python, componentize-py
#   hello-js.wasm      JavaScript, componentize-js (StarlingMonkey)
#
# The Python and JavaScript toolchains are installed, pinned, into the
# git-ignored .tools/ folder at the repository root. Safe to run again from
# any directory: a toolchain already installed is kept, and a component is
# rebuilt only when a fingerprint of its sources and tools has changed.
# Needs: cargo (with rustup, or the wasm32-wasip2 target already there),
# python3 (3.11+) with pip, node (20+) and npm, and the package registries.
set -euo pipefail

# Pinned tool versions. The npm tree is pinned in full by js/package-lock.json
# (the version there must match COMPONENTIZE_JS_VERSION).
COMPONENTIZE_PY_VERSION=0.25.1
COMPONENTIZE_JS_VERSION=0.23.0
# componentize-js 0.23's engine exports wasi:http/incoming-handler@0.2.10, so
# its world must name that version; see build_js.
STARLINGMONKEY_WASI_VERSION=0.2.10

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
TOOLS="$ROOT/.tools"
VENV="$TOOLS/venv"
NODE_PREFIX="$TOOLS/node"
OUT="$HERE/build"
WIT="$HERE/wit"

say() { printf '==> %s\n' "$*"; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }
need() { command -v "$1" >/dev/null 2>&1 || die "\`$1\` is not installed; $2"; }

# fingerprint LABEL FILE...: a hash of the label and every file's path and content.
fingerprint() {
    local label="$1" file
    shift
    {
        printf '%s\n' "$label"
        for file in "$@"; do
            printf '%s  ' "${file#"$HERE/"}"
            sha256sum <"$file"
        done
    } | sha256sum | cut -d' ' -f1
}

# files DIR TEST...: the regular files under DIR that pass the find TESTs, sorted.
files() {
    local dir="$1"
    shift
    find "$dir" -type f \( "$@" \) -not -path '*/__pycache__/*' -not -path '*/node_modules/*' |
        LC_ALL=C sort
}

# up_to_date NAME FINGERPRINT: true when build/NAME.wasm was built from FINGERPRINT.
up_to_date() {
    [[ -f "$OUT/$1.wasm" && -f "$OUT/.$1.stamp" && "$(cat "$OUT/.$1.stamp")" == "$2" ]]
}

# finish NAME FINGERPRINT TMPFILE: move the new component in place, then stamp it.
finish() {
    [[ -s "$3" ]] || die "$1: the build produced no component"
    mv -f "$3" "$OUT/$1.wasm"
    printf '%s\n' "$2" >"$OUT/.$1.stamp"
    say "$1: built build/$1.wasm ($(du -h "$OUT/$1.wasm" | cut -f1))"
}

# --- toolchains -------------------------------------------------------------

install_python_tools() {
    if [[ -x "$VENV/bin/componentize-py" ]] &&
        [[ "$("$VENV/bin/componentize-py" --version 2>/dev/null)" == "componentize-py $COMPONENTIZE_PY_VERSION" ]]; then
        say "componentize-py $COMPONENTIZE_PY_VERSION: already in .tools/venv"
        return
    fi
    need python3 "install Python 3.11 or newer"
    say "componentize-py $COMPONENTIZE_PY_VERSION: installing into .tools/venv"
    mkdir -p "$TOOLS"
    if [[ ! -x "$VENV/bin/python" ]]; then
        rm -rf "$VENV"
        # Debian's python3 lacks ensurepip unless python3-venv is installed:
        # then make the venv without pip and use the system pip to fill it.
        if ! python3 -m venv "$VENV" >/dev/null 2>&1; then
            rm -rf "$VENV"
            python3 -m venv --without-pip "$VENV"
        fi
    fi
    if [[ -x "$VENV/bin/pip" ]]; then
        "$VENV/bin/pip" install --quiet --disable-pip-version-check "componentize-py==$COMPONENTIZE_PY_VERSION"
    else
        python3 -m pip --python "$VENV/bin/python" install --quiet --disable-pip-version-check \
            "componentize-py==$COMPONENTIZE_PY_VERSION"
    fi
    "$VENV/bin/componentize-py" --version
}

install_js_tools() {
    local lock_hash installed="$NODE_PREFIX/node_modules/@bytecodealliance/componentize-js/package.json"
    lock_hash="$(cat "$HERE/js/package.json" "$HERE/js/package-lock.json" | sha256sum | cut -d' ' -f1)"
    if [[ -f "$installed" && -f "$NODE_PREFIX/.installed" && "$(cat "$NODE_PREFIX/.installed")" == "$lock_hash" ]]; then
        say "componentize-js $COMPONENTIZE_JS_VERSION: already in .tools/node"
        return
    fi
    need node "install Node.js 20 or newer"
    need npm "install npm (it comes with Node.js)"
    say "componentize-js $COMPONENTIZE_JS_VERSION: installing into .tools/node (npm ci, js/package-lock.json)"
    mkdir -p "$NODE_PREFIX"
    cp "$HERE/js/package.json" "$HERE/js/package-lock.json" "$NODE_PREFIX/"
    npm ci --prefix "$NODE_PREFIX" --no-audit --no-fund --loglevel=error
    local version
    version="$(node -p "require('$installed').version")"
    [[ "$version" == "$COMPONENTIZE_JS_VERSION" ]] ||
        die "js/package-lock.json installs componentize-js $version, but build.sh pins $COMPONENTIZE_JS_VERSION"
    printf '%s\n' "$lock_hash" >"$NODE_PREFIX/.installed"
}

# --- components -------------------------------------------------------------

build_rust() {
    local name=hello-rust fp
    need cargo "install Rust with rustup"
    local -a inputs
    mapfile -t inputs < <(printf '%s\n' "$HERE/rust/Cargo.toml" "$HERE/rust/Cargo.lock"; files "$HERE/rust/src" -name '*.rs')
    fp="$(fingerprint "$name $(rustc --version) $(sha256sum <"$HERE/build.sh")" "${inputs[@]}")"
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
    fp="$(fingerprint "$name componentize-py $COMPONENTIZE_PY_VERSION $(sha256sum <"$HERE/build.sh")" "${inputs[@]}")"
    if up_to_date "$name" "$fp"; then
        say "$name: up to date"
        return
    fi
    say "$name: componentize-py (world hello in wit/)"
    "$VENV/bin/componentize-py" --quiet --wit-path "$WIT" --world hello \
        componentize --python-path "$HERE/python" app --output "$OUT/.$name.wasm.tmp"
    finish "$name" "$fp" "$OUT/.$name.wasm.tmp"
}

build_js() {
    local name=hello-js fp file
    local -a inputs
    mapfile -t inputs < <(files "$HERE/js" -name '*.js' -o -name 'package*.json'; files "$WIT" -name '*.wit')
    fp="$(fingerprint "$name componentize-js $COMPONENTIZE_JS_VERSION $(sha256sum <"$HERE/build.sh")" "${inputs[@]}")"
    if up_to_date "$name" "$fp"; then
        say "$name: up to date"
        return
    fi
    # The engine's core module exports wasi:http/incoming-handler at exactly
    # $STARLINGMONKEY_WASI_VERSION, so it needs a world naming that version:
    # derive one from wit/ (0.2.12), the same interfaces but for
    # `exit-with-code`, which was still unstable in that release. The host
    # serves every 0.2.x version.
    local wit_js="$OUT/wit-js"
    rm -rf "$wit_js"
    mkdir -p "$wit_js/deps"
    for file in "$WIT"/*.wit "$WIT"/deps/*.wit; do
        sed -e "s/@0\.2\.12\b/@$STARLINGMONKEY_WASI_VERSION/g" \
            -e 's/@since(version = 0\.2\.12)/@unstable(feature = cli-exit-with-code)/' \
            "$file" >"$wit_js/${file#"$WIT/"}"
    done
    say "$name: componentize-js (world hello, wasi:http@$STARLINGMONKEY_WASI_VERSION)"
    # Run from js/: componentize-js maps the current directory into the
    # snapshotting sandbox and finds the source relative to it.
    (cd "$HERE/js" && node "$NODE_PREFIX/node_modules/@bytecodealliance/componentize-js/src/cli.js" \
        "$HERE/js/app.js" --wit "$wit_js" --world-name hello --out "$OUT/.$name.wasm.tmp")
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
