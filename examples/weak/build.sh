#!/usr/bin/env bash
# The weak example reuses the hello example's components (what they do does
# not matter here; what the manifest grants them does): `register` is the
# Python hello (it imports outbound HTTP by habit), `admin` the Rust one.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
HELLO="$HERE/../hello"
if [ ! -f "$HELLO/build/hello-rust.wasm" ] || [ ! -f "$HELLO/build/hello-python.wasm" ]; then
    "$HELLO/build.sh"
fi
mkdir -p "$HERE/build"
cp "$HELLO/build/hello-python.wasm" "$HERE/build/register.wasm"
cp "$HELLO/build/hello-rust.wasm" "$HERE/build/admin.wasm"
echo "==> examples/weak/build: register.wasm, admin.wasm"
