#!/usr/bin/env bash
# In the test-kernel VM: give the tests a writable ext4 (the guest's root is the host's files,
# read-only over 9p, where no unix socket can be bound and cachefiles refuses a cache
# directory), then run tests/vm/guest with its junit report at $1 (a host /tmp path).
set -euo pipefail
cd "$(dirname "$0")/../../.."
junit=$1
shift
mount -t tmpfs none /mnt
truncate -s 1536M /mnt/ext4.img
mkfs.ext4 -q /mnt/ext4.img
mkdir /mnt/w
mount -o loop /mnt/ext4.img /mnt/w
# Under emulation an interpreter takes seconds to start: stretch the waits (the daemon's, the manager's
# and the tests': nydus_hybrid.waits), not the work.
export NYDUS_IN_VM=1 TMPDIR=/mnt/w NYDUS_HYBRID_WAIT_SCALE=8
exec python3 -m pytest tests/vm/guest -q -rA -p no:cacheprovider --basetemp=/mnt/w/pytest --junitxml="$junit" "$@"
