#!/usr/bin/env bash
# Rebuild the test kernel (../shared/kernels/README.md) from Debian's linux-source-6.12:
# a minimal VM config from virtme-ng, plus what the real-kernel tests need (cachefiles
# on-demand, EROFS over fscache and file-backed, device-mapper thin pools, FUSE, ...).
#   bash scripts/vm/build-kernel.sh [OUT]      (OUT: default /tmp/nydus-test-kernel/bzImage)
# About 20 minutes on 2 cores (NYDUS_KERNEL_CONFIG_ONLY=1 stops after the checked config). Then: NYDUS_TEST_KERNEL=OUT python3 -m pytest tests/vm
set -euo pipefail
out=${1:-/tmp/nydus-test-kernel/bzImage}
work=${NYDUS_KERNEL_BUILD_DIR:-/tmp/nydus-test-kernel/src}
export DEBIAN_FRONTEND=noninteractive
apt-get install -y -qq --no-install-recommends linux-source-6.12 flex bison bc libelf-dev libssl-dev dwarves \
  cpio build-essential xz-utils >/dev/null
command -v vng >/dev/null || python3 -m pip install -q 'virtme-ng==1.42'
tarball=$(ls /usr/src/linux-source-6.12*.tar.xz | head -1)
mkdir -p "$work"
if [ ! -f "$work/Makefile" ]; then
  tar -xf "$tarball" -C "$work" --strip-components=1
fi
cd "$work"
vng --kconfig
options=(EROFS_FS EROFS_FS_XATTR EROFS_FS_ONDEMAND EROFS_FS_BACKED_BY_FILE EROFS_FS_ZIP EROFS_FS_ZIP_ZSTD
  NETFS_SUPPORT FSCACHE CACHEFILES CACHEFILES_ONDEMAND FUSE_FS OVERLAY_FS BLK_DEV_DM DM_THIN_PROVISIONING
  BLK_DEV_LOOP EXT4_FS XFS_FS BTRFS_FS FANOTIFY FANOTIFY_ACCESS_PERMISSIONS TMPFS_XATTR SQUASHFS)
for o in "${options[@]}"; do
  scripts/config --enable "$o"
done
make olddefconfig >/dev/null
# Every option must have survived olddefconfig (a missing dependency silently drops one).
for o in "${options[@]}"; do
  grep -q "^CONFIG_$o=y" .config || { echo "CONFIG_$o did not stay enabled" >&2; exit 1; }
done
if [ "${NYDUS_KERNEL_CONFIG_ONLY:-}" = 1 ]; then
  echo "config ready in $work/.config"
  exit 0
fi
make -j"$(nproc)" bzImage
mkdir -p "$(dirname "$out")"
cp arch/x86/boot/bzImage "$out"
cp .config "$out.config"
echo "built $out ($(sha256sum "$out" | cut -d' ' -f1))"
