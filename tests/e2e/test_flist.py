"""Flists as zos mounts them (spec C1-C2), over real parts: a Nydus image whose bootstrap an
HTTP server on 127.0.0.1 publishes with its `.md5`, its blob served by an HTTP server (the
http-proxy backend) or a directory, our daemon's FUSE mount under `ro/`, overlays whose
upper dirs are btrfs subvolumes with qgroup limits on loop devices."""

from __future__ import annotations

import errno
import hashlib
import os
import signal
from pathlib import Path
from typing import Iterator, Tuple

import pytest

import nydus_hybrid
from nydus_hybrid.storage.errors import FlistError, InvalidName
from nydus_hybrid.storage.flist import Flister, MountOptions
from nydus_hybrid.storage.module import StorageModule
from tests.helpers.daemons import make_tree
from tests.helpers.managers import wait_until
from tests.helpers.servers import BlobFileServer
from tests.helpers.storage_disks import storage_module

MiB = 1 << 20


class Published:
    """Images built from small trees, their bootstraps and `.md5` files under one HTTP
    prefix and their blobs under another."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.flists = root / "flists"
        self.blobs = root / "blobs"
        self.flists.mkdir(parents=True)
        self.server = BlobFileServer("flists", self.flists).start()
        self.blob_server = BlobFileServer("blobs", self.blobs).start()
        self.files: dict[str, dict[str, bytes]] = {}

    def add(self, tag: str, md5: bool = True) -> str:
        src = self.root / f"src-{tag}"
        self.files[tag] = make_tree(src, tag)
        boot = self.flists / f"{tag}.flist"
        nydus_hybrid.build(str(src), str(boot), str(self.blobs), progress=False)
        if md5:
            (self.flists / f"{tag}.flist.md5").write_text(hashlib.md5(boot.read_bytes()).hexdigest() + "\n")
        return f"{self.server.addr}/flists/{tag}.flist"

    @property
    def storage(self) -> str:
        return f"{self.blob_server.addr}/blobs"

    def close(self) -> None:
        self.server.close()
        self.blob_server.close()


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Tuple[Flister, StorageModule, Published]]:
    pub = Published(tmp_path / "pub")
    with storage_module(tmp_path / "disks", ssd=1, hdd=0, size=1 << 30) as storage:
        fl = Flister(str(tmp_path / "flist"), storage)
        try:
            yield fl, storage, pub
        finally:
            for m in fl.list():
                fl.unmount(m["name"])
            fl.gc()
            fl.close()
            pub.close()


def daemons(fl: Flister) -> list[int]:
    return sorted(p for p in (fl._pid(h) for h in os.listdir(fl._dir("ro"))) if p)


def write(path: Path, size: int) -> None:
    with open(path, "wb") as f:
        block = os.urandom(MiB)
        for _ in range(size // MiB):
            f.write(block)
        f.flush()
        os.fsync(f.fileno())


def test_three_writable_mounts_share_one_read_only_mount(stack) -> None:
    fl, storage, pub = stack
    url = pub.add("a")
    opts = MountOptions(limit=32 * MiB, storage=pub.storage)
    paths = [Path(fl.mount(n, url, opts)) for n in ("c1", "c2", "c3")]
    assert [p.name for p in paths] == ["c1", "c2", "c3"] and all(p.parent.name == "mountpoint" for p in paths)
    hashes = {m["hash"] for m in fl.list()}
    assert hashes == {hashlib.md5((pub.flists / "a.flist").read_bytes()).hexdigest()}
    assert os.listdir(fl._dir("ro")) == list(hashes) and len(daemons(fl)) == 1
    for p in paths:
        for rel, data in pub.files["a"].items():
            assert (p / rel).read_bytes() == data
    for i, p in enumerate(paths):
        (p / "private").write_text(f"mine {i}")
    assert [(p / "private").read_text() for p in paths] == ["mine 0", "mine 1", "mine 2"]

    # Past the limit, in that mount only; then the resize lets the write through.
    with pytest.raises(OSError) as e:
        write(paths[0] / "big", 48 * MiB)
    assert e.value.errno in (errno.ENOSPC, errno.EDQUOT)
    (paths[0] / "big").unlink()
    write(paths[1] / "fits", 8 * MiB)
    fs = fl.update_mount_size("c1", 128 * MiB)
    assert fs.usage.size == 128 * MiB
    write(paths[0] / "big", 48 * MiB)
    assert (paths[0] / "big").stat().st_size == 48 * MiB
    assert {f.name for f in storage.list_filesystems()} == {"c1", "c2", "c3"}


def test_mount_is_idempotent_and_the_last_umount_collects_the_read_only_mount(stack) -> None:
    fl, storage, pub = stack
    url_a, url_b = pub.add("a"), pub.add("b")
    ro = MountOptions(read_only=True, storage=pub.storage)
    p1 = fl.mount("r1", url_a, ro)
    assert fl.mount("r1", url_a, ro) == p1 and len(fl.list()) == 1
    with pytest.raises(OSError):
        (Path(p1) / "new").write_text("read-only")
    fl.mount("r2", url_a, ro)
    fl.mount("w1", url_b, MountOptions(storage=pub.storage, limit=16 * MiB))
    assert len(os.listdir(fl._dir("ro"))) == 2 and len(daemons(fl)) == 2
    assert fl.hash_from_root_path("r1") == fl.flist_hash(url_a) != fl.hash_from_root_path("w1")
    fl.unmount("r1")
    assert not fl.exists("r1") and fl.exists("r2") and len(os.listdir(fl._dir("ro"))) == 2
    fl.unmount("r2")
    assert os.listdir(fl._dir("ro")) == [fl.hash_from_root_path("w1")] and len(daemons(fl)) == 1
    fl.unmount("w1")
    assert os.listdir(fl._dir("ro")) == [] and daemons(fl) == []
    assert storage.list_filesystems() == [], "the volume went with its mount"


def test_reads_are_lazy_through_the_http_backend(stack) -> None:
    fl, _, pub = stack
    url = pub.add("a")
    p = Path(fl.mount("lazy", url, MountOptions(read_only=True, storage=pub.storage)))
    assert pub.blob_server.paths == [], "mounting reads no data"
    assert (p / "hello.txt").read_bytes() == pub.files["a"]["hello.txt"]
    assert pub.blob_server.paths, "the read came from the backend"


def test_kill_9_of_the_daemon_is_repaired_by_the_next_mount(stack) -> None:
    fl, _, pub = stack
    url = pub.add("a")
    opts = MountOptions(storage=pub.storage, limit=32 * MiB)
    p = Path(fl.mount("k", url, opts))
    (p / "kept").write_text("upper data")
    (pid,) = daemons(fl)
    os.kill(pid, signal.SIGKILL)
    wait_until(lambda: not os.path.exists(f"/proc/{pid}/cmdline") or not fl._cmdline(pid))
    with pytest.raises(OSError):
        (p / "hello.txt").read_bytes()
    assert fl.mount("k", url, opts) == str(p)
    assert (p / "kept").read_text() == "upper data", "the volume survived"
    assert (p / "dir" / "big.bin").read_bytes() == pub.files["a"]["dir/big.bin"]
    assert len(daemons(fl)) == 1 and daemons(fl) != [pid]


def test_a_new_module_finds_the_mounts_in_place(stack, tmp_path: Path) -> None:
    fl, storage, pub = stack
    url = pub.add("a")
    p = fl.mount("again", url, MountOptions(storage=pub.storage, limit=16 * MiB))
    (Path(p) / "x").write_text("1")
    fresh = Flister(fl.root, storage)
    (m,) = fresh.list()
    assert m["name"] == "again" and m["volume"] == "again" and m["alive"]
    assert fresh.mount("again", url, MountOptions(storage=pub.storage)) == p
    assert fresh.hash_from_root_path("again") == fl.flist_hash(url)


def test_a_local_directory_is_a_storage_too(stack) -> None:
    fl, _, pub = stack
    url = pub.add("a")
    p = Path(fl.mount("local", url, MountOptions(read_only=True, storage=f"file://{pub.blobs}")))
    assert (p / "dir" / "nested.txt").read_bytes() == pub.files["a"]["dir/nested.txt"]


def test_bad_input_is_a_clear_error_and_leaves_nothing(stack) -> None:
    fl, storage, pub = stack
    url = pub.add("a")
    (pub.flists / "junk.flist").write_bytes(b"<html>not an image</html>" * 100)
    (pub.flists / "bad.flist").write_bytes(b"x")
    (pub.flists / "bad.flist.md5").write_text("not-a-hash\n")
    corrupt = bytearray((pub.flists / "a.flist").read_bytes())
    corrupt[1024:1028] = b"\0\0\0\0"  # the EROFS magic
    (pub.flists / "corrupt.flist").write_bytes(bytes(corrupt))
    (pub.flists / "other.flist").write_bytes((pub.flists / "a.flist").read_bytes())
    (pub.flists / "other.flist.md5").write_text("0" * 32)
    opts = MountOptions(storage=pub.storage)
    base = pub.server.addr
    cases = [
        (lambda: fl.mount("m", "ftp://x/y", opts), "not an http"),
        (lambda: fl.mount("m", f"{base}/flists/missing.flist", opts), "HTTP 404"),
        (lambda: fl.mount("m", f"{base}/flists/junk.flist", opts), "not a usable image"),
        (lambda: fl.mount("m", f"{base}/flists/corrupt.flist", opts), "not a usable image"),
        (lambda: fl.mount("m", f"{base}/flists/other.flist", opts), "does not match the published"),
        (lambda: fl.mount("m", url, MountOptions(storage=pub.storage, limit=0)), "limit"),
        (lambda: fl.mount("m", url, MountOptions(storage="ftp://nowhere")), "storage"),
        (lambda: fl.flist_hash(f"{base}/flists/junk.flist"), "hash not supported"),
        (lambda: fl.flist_hash(f"{base}/flists/bad.flist"), "32 hex"),
    ]
    for call, text in cases:
        with pytest.raises(FlistError, match=text):
            call()
    for name in ("a/b", "..", ".", ""):
        with pytest.raises(InvalidName):
            fl.mount(name, url, opts)
    assert os.listdir(fl._dir("mountpoint")) == [] and os.listdir(fl._dir("ro")) == []
    assert storage.list_filesystems() == [] and daemons(fl) == []
    assert not [f for f in os.listdir(fl._dir("flist")) if f.startswith(".part")]


def test_the_flist_cli(stack) -> None:
    import json
    import subprocess
    import sys

    fl, storage, pub = stack
    url = pub.add("a")
    common = ["--root", storage.root, "--flist-root", fl.root, "--default-storage", pub.storage, "--json"]
    for path, kind in storage.disks:
        common += ["--disk", f"{path}:{kind.value}"]

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        cmd = [sys.executable, "-m", "nydus_hybrid", "flist", args[0], *common, *args[1:]]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=120)

    p = run("mount", "cli1", url, "--limit", "16M")
    assert p.returncode == 0, p.stderr
    path = json.loads(p.stdout)["path"]
    assert (Path(path) / "hello.txt").read_bytes() == pub.files["a"]["hello.txt"]
    listed = json.loads(run("list").stdout)
    assert [(m["name"], m["volume"]) for m in listed] == [("cli1", "cli1")]
    assert json.loads(run("hash", "--name", "cli1").stdout)["hash"] == fl.flist_hash(url)
    p = run("resize", "cli1", "--limit", "32M")
    assert p.returncode == 0 and json.loads(p.stdout)["usage"]["size"] == 32 * MiB, p.stderr
    p = run("mount", "bad/name", url)
    assert p.returncode == 1 and p.stderr.count("\n") == 1 and "bad/name" in p.stderr
    p = run("umount", "cli1")
    assert p.returncode == 0, p.stderr
    assert not fl.exists("cli1") and daemons(fl) == [] and storage.list_filesystems() == []
