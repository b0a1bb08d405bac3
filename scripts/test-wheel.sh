#!/usr/bin/env bash
# Build the release wheel and the sdist, then install the wheel the way a user does
# (`pip install nydus-hybrid`) into a fresh virtual environment with no Rust toolchain on
# its PATH, and use it from outside the checkout: --version (package version and git commit),
# build, check, and a FUSE mount read back against its source. Needs root for the mount.
#
#   bash scripts/test-wheel.sh [OUT_DIR]     # default OUT_DIR: dist/
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
out=${1:-dist}
work=$(mktemp -d /tmp/nydus-wheel-test.XXXXXX)
mnt="$work/mnt"
mount_pid=""
cleanup() {
  if [ -n "$mount_pid" ]; then kill -TERM "$mount_pid" 2>/dev/null || true; wait "$mount_pid" 2>/dev/null || true; fi
  mountpoint -q "$mnt" 2>/dev/null && umount -l "$mnt"
  rm -rf "$work"
}
trap cleanup EXIT
fail() { echo "wheel test: FAILED: $*" >&2; exit 1; }

echo "== wheel and sdist"
rm -rf "$out" && mkdir -p "$out"
python3 -m maturin build --release --out "$out" --auditwheel check
python3 -m maturin sdist --out "$out"
wheel=$(ls "$out"/nydus_hybrid-*.whl)
sdist=$(ls "$out"/nydus_hybrid-*.tar.gz)
case "$(basename "$wheel")" in
  *-cp39-abi3-manylinux_2_*_x86_64.whl|*-cp39-abi3-manylinux_2_*_aarch64.whl) ;;
  *) fail "$(basename "$wheel") is not a cp39-abi3 manylinux wheel" ;;
esac
in_wheel=$(python3 -m zipfile -l "$wheel")
for f in nydus_hybrid/_core.abi3.so nydus_hybrid/_core.pyi nydus_hybrid/py.typed nydus_hybrid/daemon/openapi.yaml; do
  grep -q "^$f " <<<"$in_wheel" || fail "$f is not in the wheel"
done
in_sdist=$(tar -tzf "$sdist")
for f in rust/src/lib.rs rust/build.rs Cargo.lock python/nydus_hybrid/_core.pyi; do
  grep -q "/$f$" <<<"$in_sdist" || fail "$f is not in the sdist"
done
echo "== the sdist compiles (cargo check of its unpacked sources)"
mkdir -p "$work/sdist" && tar -xzf "$sdist" -C "$work/sdist"
CARGO_TARGET_DIR="$repo/target" cargo check -q --manifest-path "$work"/sdist/nydus_hybrid-*/Cargo.toml \
  -p nydus-hybrid-core --features python

echo "== a fresh virtual environment, no Rust toolchain on PATH"
python3 -m venv "$work/venv"
clean_path="$work/venv/bin:/usr/local/sbin:/usr/sbin:/sbin:/usr/bin:/bin"
if env PATH="$clean_path" sh -c 'command -v cargo || command -v rustc' >/dev/null; then
  fail "a Rust toolchain is on the clean PATH"
fi
env PATH="$clean_path" "$work/venv/bin/pip" install -q --disable-pip-version-check "$wheel"

run() { (cd "$work" && env PATH="$clean_path" PYTHONNOUSERSITE=1 "$@"); }
where=$(run python -c 'import nydus_hybrid, os; print(os.path.dirname(nydus_hybrid.__file__))')
case "$where" in "$work/venv/"*) ;; *) fail "nydus_hybrid imported from $where, not the venv" ;; esac

commit=$(git -C "$repo" rev-parse HEAD)
version=$(run nydus-hybrid --version)
echo "$version"
pkg_version=$(python3 -c 'import tomllib; print(tomllib.load(open("pyproject.toml","rb"))["project"]["version"])')
grep -qx "nydus-hybrid $pkg_version" <<<"$version" || fail "--version does not print the package version $pkg_version"
grep -qx "Git Commit: $commit" <<<"$version" || fail "--version does not print the commit $commit"
run python -m nydus_hybrid.daemon --version | grep -q "Git Commit:	$commit" || fail "the daemon's --version lacks the commit"
[ "$(run python -c 'import importlib.metadata as m; print(m.version("nydus-hybrid"))')" = "$pkg_version" ] \
  || fail "installed metadata version differs from $pkg_version"

echo "== build, check and mount from the wheel"
src="$work/src"
mkdir -p "$src/sub"
head -c 3000000 /dev/urandom >"$src/sub/random.bin"
cp /etc/os-release "$src/os-release"
ln -s os-release "$src/link"
run nydus-hybrid build "$src" -B "$work/image.boot" -D "$work/blobs" --no-progress >/dev/null
run nydus-hybrid check -B "$work/image.boot" -D "$work/blobs" | grep -q "^ok:" || fail "check did not pass"
mkdir -p "$mnt"
(cd "$work" && exec env PATH="$clean_path" nydus-hybrid mount -B "$work/image.boot" -D "$work/blobs" "$mnt" >"$work/mount.out" 2>&1) &
mount_pid=$!
for _ in $(seq 100); do grep -q mounted "$work/mount.out" 2>/dev/null && break; sleep 0.1; done
grep -q mounted "$work/mount.out" || { cat "$work/mount.out" >&2; fail "the FUSE mount did not come up"; }
cmp "$src/sub/random.bin" "$mnt/sub/random.bin" || fail "random.bin read back differs"
cmp "$src/os-release" "$mnt/os-release" || fail "os-release read back differs"
[ "$(readlink "$mnt/link")" = "os-release" ] || fail "the symlink target differs"
kill -TERM "$mount_pid"
wait "$mount_pid" || fail "the mount exited with an error"
mount_pid=""
mountpoint -q "$mnt" && fail "SIGTERM did not unmount"
echo "wheel test: ok ($(basename "$wheel"), $(basename "$sdist"))"
