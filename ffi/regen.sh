#!/bin/sh
# Regenerates ffi/src/generated/vfio.rs from the system's <linux/vfio.h> with bindgen.
# Needs bindgen-cli (`cargo install bindgen-cli`) and libclang (Debian: libclang-dev) plus
# the kernel uapi headers (linux-libc-dev).
# Usage: ffi/regen.sh          -- check: exits 1 when the committed file differs
#        ffi/regen.sh --write  -- rewrite the committed file
set -eu
here=$(cd "$(dirname "$0")" && pwd)
out="$here/src/generated/vfio.rs"
tmp=$(mktemp)
trap 'rm -f "$tmp"' EXIT
bindgen /usr/include/linux/vfio.h \
    --allowlist-type 'vfio_.*' \
    --allowlist-var 'VFIO_.*' \
    --no-layout-tests \
    --no-doc-comments \
    --use-core \
    --with-derive-default \
    --output "$tmp"
if [ "${1:-}" = "--write" ]; then
    cp "$tmp" "$out"
    echo "wrote $out"
elif ! cmp -s "$tmp" "$out"; then
    echo "ffi/src/generated/vfio.rs is out of date with <linux/vfio.h>; run ffi/regen.sh --write" >&2
    diff -u "$out" "$tmp" | head -40 >&2 || true
    exit 1
else
    echo "generated bindings up to date"
fi
