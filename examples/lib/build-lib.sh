# Shared by the examples' build scripts (sourced, not run): the pinned
# Python and JavaScript component toolchains, installed into the git-ignored
# .tools/ folder at the repository root, and the helpers that rebuild a
# component only when a fingerprint of its sources and tools has changed.
# The caller sets HERE (its example directory) and OUT (its build folder)
# before sourcing. The JavaScript toolchain's npm tree is pinned in full by
# examples/hello/js/package-lock.json, for every example.

# Pinned tool versions. The npm tree is pinned in full by
# examples/hello/js/package-lock.json (its version must match
# COMPONENTIZE_JS_VERSION).
COMPONENTIZE_PY_VERSION=0.25.1
COMPONENTIZE_JS_VERSION=0.23.0
# componentize-js 0.23's engine exports wasi:http/incoming-handler@0.2.10, so
# its world must name that version; see js_world.
STARLINGMONKEY_WASI_VERSION=0.2.10

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
JS_TOOLCHAIN="$ROOT/examples/hello/js"
TOOLS="$ROOT/.tools"
VENV="$TOOLS/venv"
NODE_PREFIX="$TOOLS/node"

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

# The scripts every component's fingerprint includes besides its sources.
build_scripts_digest() {
    cat "$0" "${BASH_SOURCE[0]}" | sha256sum | cut -d' ' -f1
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
    lock_hash="$(cat "$JS_TOOLCHAIN/package.json" "$JS_TOOLCHAIN/package-lock.json" | sha256sum | cut -d' ' -f1)"
    if [[ -f "$installed" && -f "$NODE_PREFIX/.installed" && "$(cat "$NODE_PREFIX/.installed")" == "$lock_hash" ]]; then
        say "componentize-js $COMPONENTIZE_JS_VERSION: already in .tools/node"
        return
    fi
    need node "install Node.js 20 or newer"
    need npm "install npm (it comes with Node.js)"
    say "componentize-js $COMPONENTIZE_JS_VERSION: installing into .tools/node (npm ci, js/package-lock.json)"
    mkdir -p "$NODE_PREFIX"
    cp "$JS_TOOLCHAIN/package.json" "$JS_TOOLCHAIN/package-lock.json" "$NODE_PREFIX/"
    npm ci --prefix "$NODE_PREFIX" --no-audit --no-fund --loglevel=error
    local version
    version="$(node -p "require('$installed').version")"
    [[ "$version" == "$COMPONENTIZE_JS_VERSION" ]] ||
        die "js/package-lock.json installs componentize-js $version, but build.sh pins $COMPONENTIZE_JS_VERSION"
    printf '%s\n' "$lock_hash" >"$NODE_PREFIX/.installed"
}

# js_world SRC DEST: the WIT folder SRC rewritten for componentize-js.
# Its engine's core module exports wasi:http/incoming-handler at exactly
# $STARLINGMONKEY_WASI_VERSION, so it needs a world naming that version: the
# same interfaces as WASI 0.2.12 but for `exit-with-code`, which was still
# unstable in that release. The host serves every 0.2.x version.
js_world() {
    local src="$1" dest="$2" file
    rm -rf "$dest"
    mkdir -p "$dest"
    while IFS= read -r file; do
        mkdir -p "$dest/$(dirname "${file#"$src/"}")"
        sed -e "s/@0\.2\.12\b/@$STARLINGMONKEY_WASI_VERSION/g" \
            -e 's/@since(version = 0\.2\.12)/@unstable(feature = cli-exit-with-code)/' \
            "$file" >"$dest/${file#"$src/"}"
    done < <(find "$src" -name '*.wit' | LC_ALL=C sort)
}

# componentize_js NAME SOURCE WIT WORLD: SOURCE built into build/NAME.wasm.
# Run from SOURCE's folder: componentize-js maps the current directory into
# the snapshotting sandbox and finds the source relative to it.
componentize_js() {
    local name="$1" source="$2" wit="$3" world="$4"
    (cd "$(dirname "$source")" && node "$NODE_PREFIX/node_modules/@bytecodealliance/componentize-js/src/cli.js" \
        "$source" --wit "$wit" --world-name "$world" --out "$OUT/.$name.wasm.tmp")
}

# componentize_python NAME WIT WORLD PYTHON_PATH MODULE: build/NAME.wasm.
componentize_python() {
    local name="$1" wit="$2" world="$3" path="$4" module="$5"
    "$VENV/bin/componentize-py" --quiet --wit-path "$wit" --world "$world" \
        componentize --python-path "$path" "$module" --output "$OUT/.$name.wasm.tmp"
}
