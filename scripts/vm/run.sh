#!/usr/bin/env bash
# Run a command as root inside a VM on the test kernel (../shared/kernels/README.md), with
# this machine's files visible read-only and /tmp writable:
#   bash scripts/vm/run.sh python3 scripts/vm/fscache_smoke.py
# Kernel: $NYDUS_TEST_KERNEL, default ../shared/kernels/bzImage-6.12.118-test. Needs qemu
# (Debian's qemu-system-x86) and virtme-ng (PyPI). The command's output goes to stdout; the
# exit status is the command's (vng itself reports the console fallback's 255).
# NYDUS_VM_MEMORY (default 2G) and NYDUS_VM_TIMEOUT (seconds, default 900) size the run.
set -euo pipefail
cd "$(dirname "$0")/../.."
kernel=${NYDUS_TEST_KERNEL:-$(pwd)/../shared/kernels/bzImage-6.12.118-test}
[ -f "$kernel" ] || { echo "no test kernel at $kernel (set NYDUS_TEST_KERNEL)" >&2; exit 2; }
out=$(mktemp -d /tmp/vm-run.XXXXXX)
py=$(command -v python3)
cmd="cd $(pwd) && PATH=$(dirname "$py"):\$PATH $* > $out/out 2>&1; echo \$? > $out/rc"
timeout "${NYDUS_VM_TIMEOUT:-900}" vng --run "$kernel" --user root --memory "${NYDUS_VM_MEMORY:-2G}" --cpus 2 --force-9p --disable-kvm --rwdir /tmp -- "$cmd" \
  > "$out/vng.log" 2>&1 || true
cat "$out/out" 2>/dev/null || true
rc=$(cat "$out/rc" 2>/dev/null || echo 125)
[ "$rc" = 125 ] && { echo "the VM did not run the command; vng said:" >&2; tail -20 "$out/vng.log" >&2; }
rm -rf "$out"
exit "$rc"
