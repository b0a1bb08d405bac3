#!/usr/bin/env bash
# Build the reference Nydus tools (nydus-image, nydusd, nydusctl v2.2.0) from crates.io, for the
# compatibility tests in tests/compat/test_nydus_reference.py. Installs into
# $NYDUS_REF_ROOT (default ~/.cache/nydus-hybrid/nydus-ref); a second run is a no-op.
set -euo pipefail
root="${NYDUS_REF_ROOT:-$HOME/.cache/nydus-hybrid/nydus-ref}"
if [ -x "$root/bin/nydus-image" ] && [ -x "$root/bin/nydusd" ] && [ -x "$root/bin/nydusctl" ]; then
  echo "reference nydus tools already in $root/bin"
  exit 0
fi
# libz-sys in nydus-rs 2.2.0 builds zlib-ng with cmake.
command -v cmake >/dev/null || { apt-get update -qq && apt-get install -y -qq --no-install-recommends cmake >/dev/null; }
CARGO_TARGET_DIR="${TMPDIR:-/tmp}/nydus-ref-target" \
  cargo install nydus-rs --version 2.2.0 --locked --root "$root" --quiet
rm -rf "${TMPDIR:-/tmp}/nydus-ref-target"
echo "reference nydus tools installed in $root/bin"
