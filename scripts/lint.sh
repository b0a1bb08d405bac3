#!/usr/bin/env bash
# Every static check CI runs, in order of cost, each failing the run:
#   bash scripts/lint.sh source   # formatters, linters, clippy, feature combinations (no install needed)
#   bash scripts/lint.sh types    # mypy and stubtest (needs the package installed)
#   bash scripts/lint.sh          # both
set -euo pipefail
cd "$(dirname "$0")/.."
what=${1:-all}
step() { echo "-- $*"; "$@"; }

if [ "$what" = source ] || [ "$what" = all ]; then
  step ruff check python tests benches
  step ruff format --check python tests benches
  step cargo fmt --all -- --check
  step cargo clippy --workspace --all-targets --features python -q -- -D warnings
  # Every feature combination we keep: the library alone, with the FUSE server (default),
  # the bindings without FUSE, and both (what the wheel builds).
  for features in "--no-default-features" "" "--no-default-features --features python" "--features python"; do
    # shellcheck disable=SC2086
    step cargo check -p nydus-hybrid-core --lib -q $features
  done
fi
if [ "$what" = types ] || [ "$what" = all ]; then
  step mypy python/nydus_hybrid
  step mypy tests
  # The stubs against the compiled module: names, signatures and defaults.
  step python3 -m mypy.stubtest nydus_hybrid._core
fi
