"""Generate a source tree that exercises every kind of entry a RAFS v6 image can hold.

``make_tree(root)`` is deterministic: the same call gives the same names, bytes, modes,
owners, xattrs and mtimes (inode numbers and ctimes aside). It must run as root (device
nodes, ``trusted.*`` xattrs, chown). ``TreeInfo`` records what was made so tests can make
targeted checks without re-deriving it.
"""

from __future__ import annotations

import os
import random
import socket
import stat
import struct
from dataclasses import dataclass, field
from typing import Dict, List, Tuple

MiB = 1 << 20

# Every mtime comes from here: seconds in 2020-2023 and a non-zero nanosecond part.
_BASE_SEC = 1_600_000_000


def _mtime_ns(i: int) -> int:
    return (_BASE_SEC + i * 7919) * 1_000_000_000 + (i * 123_456_789 + 1) % 1_000_000_000


@dataclass
class TreeInfo:
    root: str
    small_files: int
    # paths are relative to root, with a leading "/"
    multi_chunk: List[str] = field(default_factory=list)
    sparse: List[str] = field(default_factory=list)
    dedup_files: List[str] = field(default_factory=list)
    symlinks: Dict[str, str] = field(default_factory=dict)
    hardlink_groups: List[Tuple[str, ...]] = field(default_factory=list)
    devices: Dict[str, Tuple[str, int, int]] = field(default_factory=dict)  # path -> (c|b, major, minor)
    fifos: List[str] = field(default_factory=list)
    sockets: List[str] = field(default_factory=list)
    xattrs: Dict[str, Dict[str, bytes]] = field(default_factory=dict)
    long_names: List[str] = field(default_factory=list)
    deep_file: str = ""
    owners: Dict[str, Tuple[int, int]] = field(default_factory=dict)
    modes: Dict[str, int] = field(default_factory=dict)
    entries: int = 0


def _write(path: str, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)


def _pseudo_random(seed: int, n: int) -> bytes:
    return random.Random(seed).randbytes(n)


def _mixed(seed: int, n: int) -> bytes:
    """Random-ish data that compresses partly: random runs interleaved with repeated text."""
    rng = random.Random(seed)
    out = bytearray()
    while len(out) < n:
        if rng.random() < 0.5:
            out += rng.randbytes(rng.randrange(1, 9000))
        else:
            out += (b"line %d of block %d\n" % (rng.randrange(10**6), seed)) * rng.randrange(1, 400)
    return bytes(out[:n])


def _bind_socket(path: str) -> None:
    # sun_path is limited to 108 bytes, so bind a relative name from inside its directory.
    old = os.getcwd()
    os.chdir(os.path.dirname(path))
    try:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.bind(os.path.basename(path))
        s.close()
    finally:
        os.chdir(old)


def make_tree(root: str, small_files: int = 10000) -> TreeInfo:
    """Populate ``root`` (created if absent, must be empty) and return what was made."""
    os.makedirs(root, exist_ok=True)
    if os.listdir(root):
        raise ValueError(f"{root} is not empty")
    info = TreeInfo(root=root, small_files=small_files)

    def P(rel: str) -> str:
        return os.path.join(root, rel.lstrip("/"))

    def mkdir(rel: str, mode: int = 0o755) -> None:
        os.mkdir(P(rel))
        os.chmod(P(rel), mode)

    # --- regular files -------------------------------------------------------------------
    mkdir("files")
    _write(P("files/empty"), b"")
    _write(P("files/one_byte"), b"x")
    _write(P("files/hello.txt"), b"hello, world\n")
    _write(P("files/block_exact"), _mixed(11, 4096))
    _write(P("files/block_plus_one"), _mixed(12, 4097))
    # exactly one chunk, and one chunk plus a byte
    _write(P("files/chunk_exact"), _mixed(13, MiB))
    _write(P("files/chunk_plus_one"), _mixed(14, MiB + 1))
    # several chunks, poorly compressible
    _write(P("files/multi_random"), _pseudo_random(15, 3 * MiB + 12345))
    _write(P("files/multi_mixed"), _mixed(16, 4 * MiB + 777))
    info.multi_chunk += ["/files/chunk_plus_one", "/files/multi_random", "/files/multi_mixed"]

    # sparse: a leading hole, data in the middle, a trailing hole made by truncate
    with open(P("files/sparse"), "wb") as f:
        f.seek(2 * MiB + 100)
        f.write(_mixed(17, 70000))
        f.truncate(5 * MiB + 3)
    # sparse with a hole in the middle of a chunk only
    with open(P("files/sparse_small"), "wb") as f:
        f.write(b"head")
        f.seek(300000)
        f.write(b"tail")
    # entirely a hole
    with open(P("files/all_hole"), "wb") as f:
        f.truncate(MiB + 5000)
    info.sparse += ["/files/sparse", "/files/sparse_small", "/files/all_hole"]

    # modes
    for name, mode in (
        ("setuid", 0o4755),
        ("setgid", 0o2711),
        ("private", 0o600),
        ("nothing", 0o000),
        ("exec", 0o755),
        ("everything", 0o7777),
    ):
        _write(P(f"files/mode_{name}"), name.encode() * 3)
        os.chmod(P(f"files/mode_{name}"), mode)
        info.modes[f"/files/mode_{name}"] = mode

    # --- dedup-able content ----------------------------------------------------------------
    mkdir("dedup")
    a = _mixed(21, 3 * MiB)
    _write(P("dedup/a"), a)
    _write(P("dedup/a_copy"), a)  # whole-file duplicate
    # chunk-aligned overlap with different neighbours: chunk 0 of b == chunk 2 of a
    _write(P("dedup/b"), a[2 * MiB : 3 * MiB] + _mixed(22, MiB + 99))
    # small identical files in different directories
    mkdir("dedup/sub")
    for i in range(5):
        _write(P(f"dedup/same_{i}"), b"identical small content\n" * 10)
        _write(P(f"dedup/sub/same_{i}"), b"identical small content\n" * 10)
    info.dedup_files += ["/dedup/a", "/dedup/a_copy", "/dedup/b"]

    # --- directories -----------------------------------------------------------------------
    mkdir("dirs")
    mkdir("dirs/empty")
    mkdir("dirs/sticky", 0o1777)
    mkdir("dirs/setgid", 0o2775)
    mkdir("dirs/private", 0o700)
    mkdir("dirs/no_access", 0o000)
    info.modes.update(
        {"/dirs/sticky": 0o1777, "/dirs/setgid": 0o2775, "/dirs/private": 0o700, "/dirs/no_access": 0o000}
    )
    for i in range(3):
        mkdir(f"dirs/nested{i}")
        mkdir(f"dirs/nested{i}/inner")
        _write(P(f"dirs/nested{i}/inner/f"), b"nested %d\n" % i)

    # --- symlinks --------------------------------------------------------------------------
    mkdir("links")
    links = {
        "links/rel": "../files/hello.txt",
        "links/rel_dir": "../dirs",
        "links/abs": "/etc/passwd",
        "links/dangling": "does/not/exist",
        "links/self_dot": ".",
        "links/long_target": "t" * 1000 + "/" + "u" * 3000,
    }
    for rel, target in links.items():
        os.symlink(target, P(rel))
        info.symlinks["/" + rel] = target

    # --- hard links ------------------------------------------------------------------------
    mkdir("hard")
    mkdir("hard/other")
    _write(P("hard/pair_1"), b"pair content\n" * 100)
    os.link(P("hard/pair_1"), P("hard/pair_2"))
    info.hardlink_groups.append(("/hard/pair_1", "/hard/pair_2"))
    _write(P("hard/trio_1"), _mixed(31, MiB + 4321))  # a multi-chunk hard-linked file
    os.link(P("hard/trio_1"), P("hard/trio_2"))
    os.link(P("hard/trio_1"), P("hard/other/trio_3"))
    info.hardlink_groups.append(("/hard/other/trio_3", "/hard/trio_1", "/hard/trio_2"))
    _write(P("hard/empty_1"), b"")
    os.link(P("hard/empty_1"), P("hard/empty_2"))
    info.hardlink_groups.append(("/hard/empty_1", "/hard/empty_2"))

    # --- special files ---------------------------------------------------------------------
    mkdir("special")
    for rel, kind, major, minor, mode in (
        ("special/null", "c", 1, 3, 0o666),
        ("special/loop0", "b", 7, 0, 0o660),
        ("special/big_minor", "c", 259, 70000, 0o600),
        ("special/blk_big", "b", 4095, 1048575, 0o640),
    ):
        fmt = stat.S_IFCHR if kind == "c" else stat.S_IFBLK
        os.mknod(P(rel), fmt | mode, os.makedev(major, minor))
        os.chmod(P(rel), mode)
        info.devices["/" + rel] = (kind, major, minor)
    os.mkfifo(P("special/fifo"), 0o644)
    os.chmod(P("special/fifo"), 0o620)
    info.fifos.append("/special/fifo")
    _bind_socket(P("special/sock"))
    os.chmod(P("special/sock"), 0o755)
    info.sockets.append("/special/sock")

    # --- xattrs ----------------------------------------------------------------------------
    mkdir("xattr")
    _write(P("xattr/file"), b"has xattrs\n")
    mkdir("xattr/dir")
    os.symlink("file", P("xattr/link"))
    _write(P("xattr/many"), b"many xattrs\n")
    xattrs = {
        "/xattr/file": {
            "user.plain": b"value",
            "user.empty": b"",
            "trusted.bin": bytes(range(256)),
            "user.nonutf8": b"\xff\xfe\x00\x01",
        },
        "/xattr/dir": {"user.dir_attr": b"on a directory", "trusted.overlay.opaque": b"y"},
        "/xattr/link": {"trusted.link_attr": b"on a symlink"},
        "/xattr/many": {f"user.k{i:03d}": b"v" * i for i in range(40)},
        "/files/multi_mixed": {"user.big": b"B" * 2000},
        "/hard/pair_1": {"user.shared_by_links": b"1"},
    }
    # identical xattr sets on several inodes (shared xattr candidates)
    for i in range(4):
        _write(P(f"xattr/shared_{i}"), b"%d" % i)
        xattrs[f"/xattr/shared_{i}"] = {"user.common": b"same", "trusted.common": b"same too"}
    for rel, attrs in xattrs.items():
        for k, v in attrs.items():
            os.setxattr(P(rel), k, v, follow_symlinks=False)
    info.xattrs = xattrs
    # the hard link shares its inode's xattrs
    info.xattrs["/hard/pair_2"] = dict(xattrs["/hard/pair_1"])
    # a file capability on a non-root file: chown clears capabilities, so an unpacker must
    # restore the owner before the xattrs (v2 format: CAP_NET_RAW permitted and effective)
    _write(P("xattr/cap"), b"")
    os.chown(P("xattr/cap"), 1000, 1000)
    cap = struct.pack("<IIIII", 0x02000001, 1 << 13, 0, 0, 0)
    os.setxattr(P("xattr/cap"), "security.capability", cap)
    info.xattrs["/xattr/cap"] = {"security.capability": cap}

    # --- long names and a deep chain -------------------------------------------------------
    mkdir("names")
    ascii255 = "n" * 250 + ".long"
    utf8_255 = "é" * 127 + "x"  # 2*127 + 1 = 255 bytes
    assert len(os.fsencode(ascii255)) == 255 and len(os.fsencode(utf8_255)) == 255
    _write(P("names/" + ascii255), b"255-byte name\n")
    mkdir("names/" + "d" * 255)
    _write(P("names/" + "d" * 255 + "/" + utf8_255), b"utf-8 name\n")
    os.symlink(ascii255, P("names/" + "s" * 255))
    for odd in (
        "space name",
        "tab\tname",
        "newline\nname",
        "quote'\"",
        "back\\slash",
        "-dash",
        "~tilde",
        "#hash",
        ".hidden",
        "..dotdot_prefix",
        "\u4e2d\u6587",
        "emoji\U0001f600",
    ):
        _write(P("names/" + odd), odd.encode("utf-8", "surrogateescape"))
    # a name that is not valid UTF-8
    with open(os.path.join(os.fsencode(P("names")), b"latin1_\xe9\xff"), "wb") as f:
        f.write(b"bytes name\n")
    info.long_names += ["/names/" + ascii255, "/names/" + "d" * 255, "/names/" + "d" * 255 + "/" + utf8_255]

    deep = "deep"
    mkdir(deep)
    for level in range(40):
        deep += f"/level_{level:02d}_" + "x" * 50  # 59 bytes a level, ~2.4 KiB in all
        mkdir(deep)
    info.deep_file = "/" + deep + "/bottom.txt"
    _write(P(deep + "/bottom.txt"), b"at the bottom\n")

    # --- many small files ------------------------------------------------------------------
    mkdir("small")
    per_dir = 250
    for d in range((small_files + per_dir - 1) // per_dir):
        mkdir(f"small/d{d:03d}")
    for i in range(small_files):
        # sizes 0..~600; every 10th file repeats another's content (dedup of tiny files)
        body = b"small file %d\n" % (i % 1000 if i % 10 == 0 else i)
        _write(P(f"small/d{i // per_dir:03d}/f{i:05d}"), body * (i % 37))

    # --- owners ----------------------------------------------------------------------------
    owners = {
        "/files/hello.txt": (1000, 1000),
        "/files/mode_setuid": (0, 50),
        "/files/multi_random": (65534, 65534),
        "/dirs/private": (1234, 5678),
        "/links/rel": (42, 43),  # symlink itself
        "/special/null": (7, 8),
        "/special/fifo": (100, 0),
        "/special/sock": (101, 102),
        "/hard/trio_1": (2000, 3000),
        "/xattr/link": (4_000_000, 4_000_001),  # needs the 32-bit owner fields
        "/names/" + ascii255: (9, 9),
    }
    for rel, (uid, gid) in owners.items():
        os.lchown(P(rel), uid, gid)
    info.owners = owners
    # setuid/setgid bits are cleared by chown; restore them
    for rel, mode in info.modes.items():
        if not os.path.islink(P(rel)):
            os.chmod(P(rel), mode)
    os.chmod(root, 0o755)
    os.setxattr(root, "user.root_attr", b"on the root directory")
    info.xattrs["/"] = {"user.root_attr": b"on the root directory"}

    # --- mtimes: nothing is created after this point --------------------------------------
    all_paths: List[str] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for n in sorted(filenames) + dirnames:
            p = os.path.join(dirpath, n)
            if os.path.isdir(p) and not os.path.islink(p):
                continue
            all_paths.append(p)
        all_paths.append(dirpath)
    # utime does not touch the parent's mtime, so the order only has to be deterministic
    for i, p in enumerate(sorted(all_paths)):
        ns = _mtime_ns(i)
        os.utime(p, ns=(ns, ns), follow_symlinks=False)
    # one file with mtime 0 and one far in the future (2100)
    os.utime(P("files/one_byte"), ns=(0, 0))
    os.utime(P("files/empty"), ns=(4_102_444_800_123_456_789,) * 2)
    info.entries = len(all_paths)
    return info
