"""Robustness of the reader against corrupted images.

A small golden image is built once; a deterministic corpus of a few hundred corrupted
variants (truncations, bit flips in every header and table, out-of-range field values,
damaged blobs) is derived from it. Every variant is opened, walked, read and checked in a
*worker subprocess*, so that an abort, a segfault or a hang is reported as a failure of that
one case instead of taking pytest down.

The contract for every variant:

* every API call either succeeds or raises a ``nydus_hybrid.errors.NydusError`` subclass
  (never another exception type, never a Rust panic surfacing as ``PanicException``);
* the process neither dies nor hangs (per-case timeout), nor balloons in memory;
* file data that comes back is never wrong. When only a blob was damaged, every successful
  read returns exactly the original bytes. When the bootstrap was damaged, every chunk-sized
  piece of a successful read must still be a genuine chunk of an original file: RAFS metadata
  (i_size, chunk indexes, directory entries) carries no checksum, so damage there can
  legitimately drop whole chunks, reorder valid chunk addresses or lead to another file, but
  chunk bytes are digest-verified and must never be garbage.

(Names, modes, xattr values and symlink targets carry no checksum either; a flipped byte
there is undetectable by design, so those values are only held to the error-type contract.)

Run this file directly with ``--worker GOLDEN_JSON`` to get the worker loop (used internally).
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import select
import shutil
import struct
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

FIXTURES = Path(os.environ.get("NYDUS_FIXTURES") or Path(__file__).resolve().parents[3] / "shared/fixtures/nydus-v2.2")
INLINE_BLOB = FIXTURES / "2fa78cad554b75ac91a4a125ed148d0ddeb25efa4aaa8bd80e5dc292690a4dca"

CHUNK_SIZE = 0x4000
CASE_TIMEOUT = 30.0  # seconds per case before it counts as a hang
MEMORY_LIMIT = 1 << 30  # growth of the worker's peak RSS per case that counts as a blow-up
WALK_LIMIT = 2000  # entries: the golden tree has ~120, so more means a loop


# --------------------------------------------------------------------------------------
# Little helpers shared by the parent and the worker
# --------------------------------------------------------------------------------------


def u16(b, o):
    return struct.unpack_from("<H", b, o)[0]


def u32(b, o):
    return struct.unpack_from("<I", b, o)[0]


def u64(b, o):
    return struct.unpack_from("<Q", b, o)[0]


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def apply_ops(data: bytes, ops) -> bytes:
    """Apply mutation ops: ["trunc", n], ["flip", off, mask], ["put", off, hex], ["extend", n]."""
    b = bytearray(data)
    for op in ops:
        kind = op[0]
        if kind == "trunc":
            del b[op[1] :]
        elif kind == "extend":
            b.extend(b"\0" * op[1])
        elif kind == "flip":
            off, mask = op[1], op[2]
            if off < len(b):
                b[off] ^= mask
        elif kind == "put":
            off, raw = op[1], bytes.fromhex(op[2])
            if off < len(b):
                raw = raw[: len(b) - off]
                b[off : off + len(raw)] = raw
        else:  # pragma: no cover - a bug in this file
            raise ValueError(op)
    return bytes(b)


# --------------------------------------------------------------------------------------
# Worker side: the contract, run on one case
# --------------------------------------------------------------------------------------


class Prober:
    """Runs every read-side API on one image and collects contract violations."""

    def __init__(self, expected: Dict[str, Any], metadata_damaged: bool):
        import nydus_hybrid.errors as errors

        self.metadata_damaged = metadata_damaged
        self.chunk_size = expected["chunk_size"]
        self.chunks = set(expected["chunks"])  # sha of every chunk-sized piece of every file

        self.errors = errors
        self.expected = expected["files"]  # path -> {kind, nid, sha, size}
        self.data = {p: bytes.fromhex(h) for p, h in expected.get("data", {}).items()}
        self.problems: list[str] = []
        self.errors_seen: set[str] = set()
        self.successes = 0

    def guard(self, what, fn, *args, **kwargs):
        """(True, value) on success, (False, exc) on a NydusError; records anything else."""
        try:
            value = fn(*args, **kwargs)
        except (KeyboardInterrupt, SystemExit):
            raise
        except self.errors.NydusError as e:
            self.errors_seen.add(type(e).__name__)
            if not isinstance(e.errno, int) or not str(e):
                self.problems.append(f"{what}: {type(e).__name__} without errno or message")
            return False, e
        except BaseException as e:
            self.problems.append(f"{what}: raised {type(e).__module__}.{type(e).__name__}: {e!s:.300}")
            return False, e
        self.successes += 1
        return True, value

    def check_data(self, path: str, nid, data: bytes, offset: int = 0, whole: bool = True):
        exp = self.expected.get(path)
        same = exp is not None and exp["kind"] == "reg" and exp["nid"] == nid
        if same and not self.metadata_damaged:
            # Only blob bytes were damaged: whatever comes back must be exactly the original.
            orig = self.data[path]
            want = orig if whole else orig[offset : offset + len(data)]
            if data != want:
                self.problems.append(
                    f"wrong bytes: read({path!r}, {offset}) returned {len(data)} bytes "
                    f"(sha {sha(data)[:16]}) != original {len(want)} bytes"
                )
            return
        if not whole:
            return
        # Damaged metadata (i_size, chunk indexes, directory entries) carries no checksum in
        # RAFS, so it can legitimately drop or reorder whole chunks or lead to another file;
        # but every chunk that comes back must be a genuine, digest-verified chunk.
        cs = self.chunk_size
        for k in range(0, len(data), cs):
            piece = data[k : k + cs]
            if sha(piece) not in self.chunks:
                self.problems.append(
                    f"wrong bytes: read({path!r}) via nid {nid} returned {len(data)} bytes whose "
                    f"chunk at {k} ({len(piece)} bytes) is no chunk of any original file"
                )
                return

    def probe_entry(self, img, path: str):
        ok, st = self.guard(f"stat({path!r})", img.stat, path)
        ok_nid, nid = self.guard(f"lookup({path!r})", img.lookup, path)
        nid = nid if ok_nid else None
        okx, names = self.guard(f"listxattr({path!r})", img.listxattr, path)
        if okx:
            for n in names[:16]:
                self.guard(f"getxattr({path!r}, {n!r})", img.getxattr, path, n)
        self.guard(f"getxattr({path!r}, missing)", img.getxattr, path, "user.no-such-attribute")
        if not ok:
            return None
        if st.is_file():
            okr, data = self.guard(f"read({path!r})", img.read, path)
            if okr:
                self.check_data(path, nid, data)
            if st.st_size > 3:
                off = min(st.st_size // 2, (1 << 62))
                okr, data = self.guard(f"read({path!r}, {off}, 7)", img.read, path, off, 7)
                if okr:
                    self.check_data(path, nid, data, off, whole=False)
        elif st.is_symlink():
            self.guard(f"readlink({path!r})", img.readlink, path)
        else:
            # Reading a non-file must be a typed error (or empty data for odd modes).
            self.guard(f"read({path!r}) of a non-file", img.read, path, 0, 16)
        return st

    def run(self, boot: str, blob_dir, inline: bool = False):
        from nydus_hybrid import Image

        if inline:
            ok, img = self.guard("open_blob", Image.open_blob, boot)
        else:
            ok, img = self.guard("open", Image.open, boot, blob_dir)
        if not ok:
            return "open-rejected"
        self.guard("inspect", img.inspect)
        self.guard("blob_ids", lambda: img.blob_ids)

        # 1. The public walk(), bounded: a directory loop must end in an error, not forever.
        count = 0
        gen = img.walk()
        while True:
            ok, item = self.guard("walk()", next, gen, None)
            if not ok or item is None:
                break
            count += 1 + len(item[1]) + len(item[2])
            if count > WALK_LIMIT:
                self.problems.append(
                    f"walk() yielded more than {WALK_LIMIT} entries: a directory cycle is not detected"
                )
                break

        # 2. Our own traversal that keeps going past errors, so damaged subtrees do not hide
        #    the rest of the image; directories are visited once per nid.
        seen = set()
        stack = [("/", 0)]
        visited = 0
        while stack and visited < WALK_LIMIT:
            d, depth = stack.pop()
            visited += 1
            ok_nid, dnid = self.guard(f"lookup({d!r})", img.lookup, d)
            if ok_nid:
                if dnid in seen:
                    continue
                seen.add(dnid)
            self.guard(f"readdir({d!r})", img.readdir, d)
            ok, names = self.guard(f"listdir({d!r})", img.listdir, d)
            if not ok:
                continue
            for name in names[:WALK_LIMIT]:
                p = d.rstrip("/") + "/" + name
                st = self.probe_entry(img, p)
                if st is not None and st.is_dir() and depth < 32:
                    stack.append((p, depth + 1))
        self.probe_entry(img, "/")
        for p in ("/no/such/file", "/big/x", "/a.txt/x"):
            self.guard(f"stat({p!r})", img.stat, p)

        ok, _ = self.guard("check(blobs=True)", img.check, blobs=True)
        return "check-ok" if ok else "check-rejected"


def run_case(case: Dict[str, Any], golden: Dict[str, Any], scratch: Path) -> Dict[str, Any]:
    import resource

    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    img = golden["images"][case.get("image", "main")]
    expected = img["expected"]
    inline = img.get("inline", False)
    work = scratch / "case"
    if work.exists():
        shutil.rmtree(work)
    work.mkdir()
    boot_path = img["boot"]
    blob_dir = img.get("blob_dir")
    if case.get("boot_file"):
        boot_path = case["boot_file"]
    elif case.get("boot_ops"):
        boot_path = str(work / "boot")
        Path(boot_path).write_bytes(apply_ops(Path(img["boot"]).read_bytes(), case["boot_ops"]))
    if case.get("blob_ops"):
        src = Path(img["blob"])
        mutated = apply_ops(src.read_bytes(), case["blob_ops"])
        if inline:
            boot_path = str(work / src.name)
            Path(boot_path).write_bytes(mutated)
        else:
            blob_dir = str(work / "blobs")
            os.mkdir(blob_dir)
            (Path(blob_dir) / src.name).write_bytes(mutated)
    p = Prober(expected, metadata_damaged=bool(case.get("boot_ops") or case.get("boot_file")))
    outcome = p.run(boot_path, blob_dir, inline=inline)
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    if after - before > MEMORY_LIMIT:
        p.problems.append(f"peak RSS grew by {(after - before) >> 20} MiB on this case")
    return {"name": case["name"], "outcome": outcome, "problems": p.problems, "errors": sorted(p.errors_seen)}


def worker_main(golden_json: str) -> None:
    golden = json.loads(Path(golden_json).read_text())
    scratch = Path(tempfile.mkdtemp(prefix="nh-badinput-worker-"))
    out = sys.stdout
    try:
        for line in sys.stdin:
            case = json.loads(line)
            res = run_case(case, golden, scratch)
            out.write(json.dumps(res) + "\n")
            out.flush()
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


# --------------------------------------------------------------------------------------
# Parent side: workers in subprocesses, with crash and hang detection
# --------------------------------------------------------------------------------------


class Worker:
    """A long-lived worker process; restarted after a crash or a hang."""

    def __init__(self, golden_json: str, logdir: Path):
        self.golden_json = golden_json
        self.logdir = logdir
        self.proc: Optional[subprocess.Popen[bytes]] = None
        self.buf = b""
        self.n = 0

    def start(self):
        self.n += 1
        self.errlog = self.logdir / f"worker-{id(self)}-{self.n}.stderr"
        self.errf = open(self.errlog, "wb")
        env = dict(os.environ, RUST_BACKTRACE="1")
        self.proc = subprocess.Popen(
            [sys.executable, "-u", __file__, "--worker", self.golden_json],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.errf,
            env=env,
        )
        self.buf = b""

    def stop(self):
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.kill()
            self.proc.wait()
            for f in (self.proc.stdin, self.proc.stdout):
                try:
                    if f is not None:
                        f.close()
                except OSError:
                    pass
            self.errf.close()
            self.proc = None

    def stderr_tail(self) -> str:
        """What the worker printed to stderr since the current case started."""
        try:
            self.errf.flush()
            with open(self.errlog, "rb") as f:
                f.seek(self.err_mark)
                text = f.read().decode(errors="replace")
        except OSError:
            return ""
        lines = text.splitlines()
        msgs = [ln.strip() for ln in lines if ln.strip() and not ln.startswith(" ") and "RUST_BACKTRACE" not in ln]
        # the innermost frame of our own crate says where it happened
        frames = [ln.strip() for ln in lines if "nydus_hybrid_core::" in ln and "python::" not in ln]
        where = f" [at {frames[0].split(': ', 1)[-1]}]" if frames else ""
        return (" | ".join(dict.fromkeys(msgs[-4:])) + where)[-600:]

    def run(self, case: Dict[str, Any], timeout: float = CASE_TIMEOUT) -> Dict[str, Any]:
        if self.proc is None or self.proc.poll() is not None:
            self.stop()
            self.start()
        self.err_mark = self.errlog.stat().st_size
        proc = self.proc
        assert proc is not None and proc.stdin is not None and proc.stdout is not None
        try:
            proc.stdin.write((json.dumps(case) + "\n").encode())
            proc.stdin.flush()
        except BrokenPipeError:
            pass
        fd = proc.stdout.fileno()
        while b"\n" not in self.buf:
            ready, _, _ = select.select([fd], [], [], timeout)
            if not ready:
                self.stop()
                return {
                    "name": case["name"],
                    "outcome": "hang",
                    "problems": [f"hang: no answer within {timeout:.0f} s"],
                    "errors": [],
                }
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                rc = proc.wait()
                tail = self.stderr_tail()
                self.stop()
                how = f"signal {-rc}" if rc < 0 else f"exit status {rc}"
                return {
                    "name": case["name"],
                    "outcome": "crash",
                    "problems": [f"crash: worker died ({how}): {tail}"],
                    "errors": [],
                }
            self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        result: Dict[str, Any] = json.loads(line)
        return result


def run_cases(golden_json: str, cases: List[Any], logdir: Path, workers: int = 2) -> List[Any]:
    """Run cases on `workers` processes in parallel; results in case order."""
    results: List[Any] = [None] * len(cases)
    lock = threading.Lock()
    next_i = [0]

    def loop():
        w = Worker(golden_json, logdir)
        try:
            while True:
                with lock:
                    i = next_i[0]
                    next_i[0] += 1
                if i >= len(cases):
                    return
                results[i] = w.run(cases[i])
        finally:
            w.stop()

    threads = [threading.Thread(target=loop) for _ in range(max(1, min(workers, len(cases))))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def summarize(results: List[Any]) -> Tuple[Any, ...]:
    bad = [r for r in results if r["problems"]]
    outcomes: Dict[str, int] = {}
    for r in results:
        outcomes[r["outcome"]] = outcomes.get(r["outcome"], 0) + 1
    lines: List[str] = []
    for r in bad:
        lines.append(f"- {r['name']} [{r['outcome']}]: " + "; ".join(r["problems"][:4]))
    return bad, outcomes, "\n".join(lines)


# --------------------------------------------------------------------------------------
# The golden images and their layout
# --------------------------------------------------------------------------------------


class Golden(Dict[str, Any]):
    """The golden images' paths and layouts (short repr: hypothesis prints its arguments)."""

    def __repr__(self):
        return f"Golden({self.get('json')})"


def make_tree(src: Path) -> Dict[str, Any]:
    """A small tree with every kind of entry; returns path -> bytes of its regular files."""
    files = {}

    def put(rel, data):
        p = src / rel.lstrip("/")
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
        files[rel] = data

    put("/a.txt", b"hello world\n")
    big = bytes((i * 7 + (i >> 9) * 13 + 3) % 251 for i in range(3 * CHUNK_SIZE + 1234))
    put("/big", big)
    put("/same1", b"S" * 5000)
    put("/same2", b"S" * 5000)
    put("/empty", b"")
    put("/d/e/f", bytes(range(256)) * 20)
    put("/d/g", b"g" * 4096)  # exactly one block, stored in one chunk
    for i in range(100):
        put(f"/many/entry-{i:03d}-" + "n" * 30, b"same\n" if i % 10 == 0 else b"")
    os.link(src / "big", src / "big-link")
    files["/big-link"] = big
    os.symlink("a.txt", src / "link")
    os.symlink("/etc/passwd", src / "abs-link")
    os.symlink("x" * 300, src / "d" / "long-link")
    os.mkfifo(src / "d" / "fifo")
    os.setxattr(src / "a.txt", "user.k", b"v1")
    os.setxattr(src / "a.txt", "user.longer-name", b"value" * 20)
    os.setxattr(src / "d", "user.dir", b"1")
    os.setxattr(src / "d" / "e" / "f", "trusted.t", b"t")
    return files


def read_expected(boot: str, blob_dir, inline: bool = False) -> Dict[str, Any]:
    """Everything the pristine image says, to compare corrupted variants against."""
    from nydus_hybrid import Image

    img = Image.open_blob(boot) if inline else Image.open(boot, blob_dir)
    report = img.check(blobs=True)
    files: Dict[str, Dict[str, Any]] = {}
    data: Dict[str, str] = {}
    for d, dirs, names in img.walk():
        for n in dirs + names:
            p = d.rstrip("/") + "/" + n
            st = img.stat(p)
            kind = "reg" if st.is_file() else "dir" if st.is_dir() else "lnk" if st.is_symlink() else "other"
            ent: Dict[str, Any] = {"kind": kind, "nid": img.lookup(p), "size": st.st_size}
            if kind == "reg":
                content = img.read(p)
                ent["sha"] = sha(content)
                data[p] = content.hex()
            files[p] = ent
    files["/"] = {"kind": "dir", "nid": img.root_ino, "size": img.stat("/").st_size}
    contents = sorted({e["sha"] for e in files.values() if e["kind"] == "reg"})
    cs = img.inspect()["superblock"]["chunk_size"]
    chunks = sorted({sha(bytes.fromhex(h)[k : k + cs]) for h in data.values() for k in range(0, len(h) // 2, cs)})
    return {"files": files, "contents": contents, "data": data, "check": report, "chunk_size": cs, "chunks": chunks}


def parse_layout(boot: bytes, blob: bytes, expected: Dict[str, Any]) -> Dict[str, Any]:
    """Offsets of every structure of a built image (bootstrap and blob)."""
    lay: Dict[str, Any] = {"len": len(boot), "blob_len": len(blob)}
    meta_base = u32(boot, 1024 + 40) * 4096
    lay["meta_base"] = meta_base
    lay["bt_off"], lay["bt_size"] = u64(boot, 1152 + 8), u32(boot, 1152 + 16)
    lay["ct_off"], lay["ct_size"] = u64(boot, 1152 + 24), u64(boot, 1152 + 32)
    lay["chunk_size"] = u32(boot, 1152 + 20)
    inodes = {}
    for path, e in expected["files"].items():
        off = meta_base + e["nid"] * 32
        fmt, icount = u16(boot, off), u16(boot, off + 2)
        xsize = 0 if icount == 0 else 12 + 4 * (icount - 1)
        ino = {
            "off": off,
            "layout": (fmt >> 1) & 7,
            "xattr_off": off + 64,
            "xattr_size": xsize,
            "inline_off": off + 64 + xsize,
            "chunk_idx_off": (off + 64 + xsize + 7) // 8 * 8,
            "size": u64(boot, off + 8),
            "i_u": u32(boot, off + 16),
            "kind": e["kind"],
        }
        if e["kind"] == "dir":
            blocks = []
            size = ino["size"]
            nblocks = -(-size // 4096)
            for j in range(nblocks):
                used = min(size - j * 4096, 4096)
                if ino["layout"] == 2 and j == nblocks - 1:
                    blocks.append((ino["inline_off"], used))
                else:
                    blocks.append(((ino["i_u"] + j) * 4096, used))
            ino["dir_blocks"] = blocks
        inodes[path] = ino
    lay["inodes"] = inodes
    blob_entry = lay["bt_off"]
    lay["ci_offset"] = u64(boot, blob_entry + 112)
    lay["ci_c"] = u64(boot, blob_entry + 120)
    lay["toc_size"] = u32(boot, blob_entry + 104)
    chunks = []
    for i in range(lay["ct_size"] // 80):
        e = lay["ct_off"] + i * 80
        chunks.append({"off": e, "c_off": u64(boot, e + 48), "c_size": u32(boot, e + 40)})
    lay["chunks"] = chunks
    toc_start = len(blob) - lay["toc_size"]
    toc = []
    for o in range(toc_start, len(blob) - 512, 128):
        name = blob[o + 8 : o + 24].rstrip(b"\0").decode()
        toc.append({"at": o, "name": name, "offset": u64(blob, o + 56), "size": u64(blob, o + 64)})
    lay["toc"] = toc
    return lay


# --------------------------------------------------------------------------------------
# The corpus
# --------------------------------------------------------------------------------------

SB_FIELDS = [
    (0, 4),
    (4, 4),
    (8, 4),
    (12, 1),
    (13, 1),
    (14, 2),
    (16, 8),
    (36, 4),
    (40, 4),
    (44, 4),
    (80, 4),
    (84, 2),
    (86, 2),
    (88, 2),
]
EXT_FIELDS = [(0, 8), (8, 8), (16, 4), (20, 4), (24, 8), (32, 8), (40, 8), (48, 4)]
BLOB_FIELDS = [
    (64, 4),
    (68, 4),
    (72, 4),
    (76, 4),
    (80, 4),
    (84, 4),
    (88, 8),
    (96, 8),
    (104, 4),
    (108, 4),
    (112, 8),
    (120, 8),
    (128, 8),
    (136, 32),
    (168, 32),
    (200, 8),
    (216, 4),
]
CT_FIELDS = [(0, 32), (32, 4), (36, 4), (40, 4), (44, 4), (48, 8), (56, 8), (64, 8), (72, 4), (76, 4)]


def le(value: int, size: int) -> str:
    return (value % (1 << (8 * size))).to_bytes(size, "little").hex()


def field_cases(
    prefix: str, base: int, fields, rng: random.Random, extremes: bool = True, key: str = "boot_ops"
) -> List[Dict[str, Any]]:
    """For each field: flip its lowest and highest bit, a random bit, and (optionally) set it
    to 0, all-ones and a large in-between value."""
    out: List[Dict[str, Any]] = []
    for off, size in fields:
        at = base + off
        out.append({"name": f"{prefix}+{off}:flip-lsb", key: [["flip", at, 0x01]]})
        out.append({"name": f"{prefix}+{off}:flip-msb", key: [["flip", at + size - 1, 0x80]]})
        b = rng.randrange(size * 8)
        out.append({"name": f"{prefix}+{off}:flip-bit{b}", key: [["flip", at + b // 8, 1 << (b % 8)]]})
        if extremes:
            out.append({"name": f"{prefix}+{off}:zero", key: [["put", at, "00" * size]]})
            out.append({"name": f"{prefix}+{off}:ones", key: [["put", at, "ff" * size]]})
            out.append({"name": f"{prefix}+{off}:huge", key: [["put", at, le(1 << (8 * size - 2), size)]]})
    return out


def corpus_truncate(g) -> List[Any]:
    lay = g["layout"]
    n = lay["len"]
    lengths = sorted(
        {
            0,
            1,
            512,
            1023,
            1024,
            1100,
            1151,
            1152,
            1300,
            1407,
            1408,
            2048,
            4095,
            4096,
            4097,
            8191,
            8192,
            8300,
            lay["meta_base"] + 128 * 32 + 40,
            lay["ct_off"],
            lay["ct_off"] + 40,
            n - 4096,
            n - 4095,
            n - 81,
            n - 1,
        }
    )
    out = [{"name": f"boot-truncate-{k}", "boot_ops": [["trunc", k]]} for k in lengths if k < n]
    out += [{"name": f"boot-extend-{k}", "boot_ops": [["extend", k]]} for k in (1, 511, 4096, 65536)]
    return out


def corpus_superblock(g) -> List[Any]:
    rng = random.Random("superblock")
    out = field_cases("sb", 1024, SB_FIELDS, rng)
    for i in range(128):  # every byte of the EROFS superblock, one seeded bit each
        out.append({"name": f"sb-byte{i}", "boot_ops": [["flip", 1024 + i, 1 << rng.randrange(8)]]})
    return out


def corpus_ext_superblock(g) -> List[Any]:
    rng = random.Random("ext-superblock")
    out = field_cases("ext", 1152, EXT_FIELDS, rng)
    for bit in range(32):
        out.append({"name": f"ext-flags-bit{bit}", "boot_ops": [["flip", 1152 + bit // 8, 1 << (bit % 8)]]})
    for i in range(52, 256, 17):  # reserved bytes
        out.append({"name": f"ext-reserved{i}", "boot_ops": [["flip", 1152 + i, 0xFF]]})
    return out


def corpus_devslot_and_blob_table(g) -> List[Any]:
    rng = random.Random("tables")
    lay = g["layout"]
    out = []
    for i in (0, 1, 31, 63):
        out.append({"name": f"devslot-id{i}", "boot_ops": [["flip", 1408 + i, 0x01]]})
        out.append({"name": f"blob-id{i}", "boot_ops": [["flip", lay["bt_off"] + i, 0x02]]})
    out.append({"name": "devslot-id-non-utf8", "boot_ops": [["put", 1408, "ff"]]})
    out.append({"name": "blob-id-non-utf8", "boot_ops": [["put", lay["bt_off"], "c3"]]})
    out.append({"name": "blob-id-slash", "boot_ops": [["put", 1408, "2e2e2f"], ["put", lay["bt_off"], "2e2e2f"]]})
    out.append({"name": "blob-id-empty", "boot_ops": [["put", 1408, "00"], ["put", lay["bt_off"], "00"]]})
    out += field_cases("devslot", 1408, [(64, 4), (68, 4)], rng)
    out += field_cases("blob", lay["bt_off"], BLOB_FIELDS, rng)
    for bit in range(32):
        out.append(
            {"name": f"blob-features-bit{bit}", "boot_ops": [["flip", lay["bt_off"] + 84 + bit // 8, 1 << (bit % 8)]]}
        )
    return out


def corpus_inodes(g) -> List[Any]:
    rng = random.Random("inodes")
    out = []
    for path in (
        "/",
        "/d",
        "/d/e",
        "/many",
        "/a.txt",
        "/big",
        "/big-link",
        "/empty",
        "/link",
        "/d/fifo",
        "/d/long-link",
        "/d/g",
    ):
        ino = g["layout"]["inodes"][path]
        o = ino["off"]
        flips = [
            (0, 0x01),
            (0, 0x02),
            (0, 0x04),
            (0, 0x08),
            (0, 0x10),
            (1, 0x80),
            (2, 0x01),
            (2, 0x02),
            (5, 0x10),
            (5, 0x40),
            (5, 0x80),
            (4, 0x01),
            (8, 0x01),
            (8, 0x08),
            (9, 0x10),
            (9, 0x40),
            (10, 0x10),
            (13, 0x01),
            (15, 0x80),
            (16, 0x01),
            (18, 0x10),
            (44, 0x01),
            (44, 0x02),
        ]
        for at, mask in flips:
            out.append({"name": f"inode{path}+{at}^{mask:#x}", "boot_ops": [["flip", o + at, mask]]})
        for _ in range(3):
            at = rng.randrange(64)
            out.append({"name": f"inode{path}+{at}:rand", "boot_ops": [["put", o + at, f"{rng.randrange(256):02x}"]]})
        # out-of-range values
        for label, at, size, v in (
            ("size-2^40", 8, 8, 1 << 40),
            ("size-max", 8, 8, (1 << 64) - 256),
            ("size-2^32", 8, 8, 1 << 32),
            ("size-0", 8, 8, 0),
            ("icount-max", 2, 2, 0xFFFF),
            ("i_u-max", 16, 4, 0xFFFFFFFF),
            ("nlink-0", 44, 4, 0),
            ("format-compact", 0, 2, ino["layout"] << 1),
        ):
            out.append({"name": f"inode{path}:{label}", "boot_ops": [["put", o + at, le(v, size)]]})
    return out


def corpus_xattrs(g) -> List[Any]:
    out = []
    for path in ("/a.txt", "/d", "/d/e/f"):
        ino = g["layout"]["inodes"][path]
        x, n = ino["xattr_off"], ino["xattr_size"]
        for at in list(range(0, 12, 4)) + list(range(12, n, 3)):
            out.append({"name": f"xattr{path}+{at}", "boot_ops": [["flip", x + at, 0x01 if at % 2 else 0x40]]})
        out.append({"name": f"xattr{path}:shared", "boot_ops": [["put", x + 4, "01"]]})
        out.append({"name": f"xattr{path}:name-index-5", "boot_ops": [["put", x + 13, "05"]]})
        out.append({"name": f"xattr{path}:value-len-max", "boot_ops": [["put", x + 14, "ffff"]]})
        out.append({"name": f"xattr{path}:name-len-max", "boot_ops": [["put", x + 12, "ff"]]})
    return out


def corpus_dirents(g) -> List[Any]:
    rng = random.Random("dirents")
    out = []
    boot = Path(g["boot"]).read_bytes()
    for path in ("/", "/d", "/d/e", "/many"):
        for j, (blk, used) in enumerate(g["layout"]["inodes"][path]["dir_blocks"]):
            count = u16(boot, blk + 8) // 12
            picks = range(count) if count <= 16 else [*sorted(rng.sample(range(count), 8)), 0, count - 1]
            for k in picks:
                d = blk + 12 * k
                tag = f"dirent{path}#{j}.{k}"
                out.append({"name": f"{tag}:nid^1", "boot_ops": [["flip", d, 0x01]]})
                out.append({"name": f"{tag}:nid^2", "boot_ops": [["flip", d, 0x02]]})
                out.append({"name": f"{tag}:nid-hi", "boot_ops": [["flip", d + 7, 0x80]]})
                out.append({"name": f"{tag}:nameoff^1", "boot_ops": [["flip", d + 8, 0x01]]})
                out.append({"name": f"{tag}:nameoff-hi", "boot_ops": [["flip", d + 9, 0x10]]})
                out.append({"name": f"{tag}:type", "boot_ops": [["flip", d + 10, 0x03]]})
                nameoff = u16(boot, d + 8)
                if nameoff < used:
                    out.append({"name": f"{tag}:name", "boot_ops": [["flip", blk + nameoff, 0x01]]})
                    out.append({"name": f"{tag}:name-nul", "boot_ops": [["put", blk + nameoff, "00"]]})
                    out.append({"name": f"{tag}:name-slash", "boot_ops": [["put", blk + nameoff, "2f"]]})
            out.append({"name": f"dirent{path}#{j}:first-nameoff-0", "boot_ops": [["put", blk + 8, "0000"]]})
            out.append({"name": f"dirent{path}#{j}:first-nameoff-max", "boot_ops": [["put", blk + 8, "ffff"]]})
            out.append({"name": f"dirent{path}#{j}:first-nameoff-odd", "boot_ops": [["put", blk + 8, le(13, 2)]]})
    # a directory loop: /d/e's entry "f" made to point back at /d, typed as a directory
    files = g["expected"]["files"]
    for blk, _used in g["layout"]["inodes"]["/d/e"]["dir_blocks"]:
        for k in range(u16(boot, blk + 8) // 12):
            d = blk + 12 * k
            if u64(boot, d) == files["/d/e/f"]["nid"]:
                out.append(
                    {
                        "name": "dirent-cycle-to-parent",
                        "boot_ops": [["put", d, le(files["/d"]["nid"], 8)], ["put", d + 10, "02"]],
                    }
                )
                out.append(
                    {
                        "name": "dirent-cycle-to-root",
                        "boot_ops": [["put", d, le(files["/"]["nid"], 8)], ["put", d + 10, "02"]],
                    }
                )
                out.append({"name": "dirent-nid-huge", "boot_ops": [["put", d, le(1 << 62, 8)]]})
                out.append({"name": "dirent-nid-max", "boot_ops": [["put", d, "ff" * 8]]})
    return out


def corpus_chunk_index(g) -> List[Any]:
    out = []
    lay = g["layout"]
    for path in ("/big", "/d/e/f", "/a.txt", "/same2"):
        ino = lay["inodes"][path]
        n = -(-ino["size"] // lay["chunk_size"])
        for k in range(n):
            c = ino["chunk_idx_off"] + 8 * k
            tag = f"chunkidx{path}#{k}"
            for at, mask in (
                (0, 0x01),
                (0, 0x04),
                (1, 0x80),
                (2, 0x01),
                (2, 0x02),
                (2, 0x80),
                (3, 0x01),
                (4, 0x01),
                (4, 0x04),
                (7, 0x80),
            ):
                out.append({"name": f"{tag}+{at}^{mask:#x}", "boot_ops": [["flip", c + at, mask]]})
            out.append({"name": f"{tag}:hole", "boot_ops": [["put", c + 4, "ffffffff"]]})
            out.append({"name": f"{tag}:device0", "boot_ops": [["put", c + 2, "00"]]})
            out.append({"name": f"{tag}:ci-max", "boot_ops": [["put", c, "ffff"], ["put", c + 3, "ff"]]})
    # swap the first two chunk indexes of /big: every address stays valid, the order is wrong
    c = lay["inodes"]["/big"]["chunk_idx_off"]
    boot = Path(g["boot"]).read_bytes()
    out.append(
        {
            "name": "chunkidx/big:swap01",
            "boot_ops": [["put", c, boot[c + 8 : c + 16].hex()], ["put", c + 8, boot[c : c + 8].hex()]],
        }
    )
    return out


def corpus_chunk_table(g) -> List[Any]:
    rng = random.Random("chunk-table")
    out = []
    for i, ch in enumerate(g["layout"]["chunks"]):
        out += field_cases(f"ct#{i}", ch["off"], CT_FIELDS, rng, extremes=(i == 0))
    return out


def corpus_values(g) -> List[Any]:
    """Out-of-range values for the fields that size or locate things."""
    lay = g["layout"]
    n = lay["len"]
    sb, ext, bt = 1024, 1152, lay["bt_off"]
    cases = {
        "meta_blkaddr-max": [[sb + 40, le(0xFFFFFFFF, 4)]],
        "meta_blkaddr-end": [[sb + 40, le(n // 4096, 4)]],
        "meta_blkaddr-last": [[sb + 40, le(n // 4096 - 1, 4)]],
        "meta_blkaddr-0": [[sb + 40, le(0, 4)]],
        "root_nid-max": [[sb + 14, le(0xFFFF, 2)]],
        "root_nid-0": [[sb + 14, le(0, 2)]],
        "root_nid-file": [[sb + 14, le(g["expected"]["files"]["/big"]["nid"], 2)]],
        "extra_devices-255": [[sb + 86, le(255, 2)]],
        "extra_devices-0": [[sb + 86, le(0, 2)]],
        "blkszbits-9": [[sb + 12, "09"]],
        "blkszbits-63": [[sb + 12, "3f"]],
        "bt-offset-2^63": [[ext + 8, le(1 << 63, 8)]],
        "bt-offset-wrap": [[ext + 8, le((1 << 64) - 4096, 8)]],
        "bt-offset-far": [[ext + 8, le(4096 * 1000, 8)]],
        "bt-offset-end": [[ext + 8, le(n, 8)]],
        "bt-size-0": [[ext + 16, le(0, 4)]],
        "bt-size-max": [[ext + 16, le(0xFFFFFF00, 4)]],
        "bt-size-255": [[ext + 16, le(256 * 255, 4)], [sb + 86, le(255, 2)]],
        "chunk_size-0": [[ext + 20, le(0, 4)]],
        "chunk_size-4k": [[ext + 20, le(0x1000, 4)], [bt + 68, le(0x1000, 4)]],
        "chunk_size-1M": [[ext + 20, le(0x100000, 4)], [bt + 68, le(0x100000, 4)]],
        "chunk_size-16M": [[ext + 20, le(0x1000000, 4)], [bt + 68, le(0x1000000, 4)]],
        "chunk_size-2^31": [[ext + 20, le(1 << 31, 4)], [bt + 68, le(1 << 31, 4)]],
        "chunk_size-odd": [[ext + 20, le(0x3000, 4)], [bt + 68, le(0x3000, 4)]],
        "ct-offset-wrap": [[ext + 24, le((1 << 64) - 4096, 8)]],
        "ct-size-wrap": [[ext + 32, le((1 << 64) - 80, 8)]],
        "ct-size-huge": [[ext + 32, le(80 * (1 << 40), 8)]],
        "ct-on-blob-table": [[ext + 24, le(4096, 8)]],
        "ct-size-0": [[ext + 32, le(0, 8)]],
        "ct-one-entry": [[ext + 32, le(80, 8)]],
        "prefetch-wrap": [[ext + 40, le((1 << 64) - 8, 8)], [ext + 48, le(16, 4)]],
        "prefetch-garbage": [[ext + 40, le(lay["meta_base"], 8)], [ext + 48, le(4096, 4)]],
        "prefetch-huge-nids": [[ext + 40, le(n - 8, 8)], [ext + 48, le(8, 4)], [n - 8, "ffffffff7fffffff"]],
        "blob-chunk_count-0": [[bt + 72, le(0, 4)]],
        "blob-chunk_count-1": [[bt + 72, le(1, 4)]],
        "blob-chunk_count-2^24": [[bt + 72, le(1 << 24, 4)], [bt + 128, le(16 << 24, 8)]],
        "blob-chunk_count-max": [[bt + 72, le(0xFFFFFFFF, 4)]],
        "blob-ci_offset-wrap": [[bt + 112, le((1 << 64) - 10, 8)]],
        "blob-ci_offset-far": [[bt + 112, le(1 << 40, 8)]],
        "blob-ci-sizes-huge": [[bt + 120, le(1 << 40, 8)], [bt + 128, le(1 << 40, 8)]],
        "blob-ci-c-384M": [[bt + 120, le(384 << 20, 8)], [bt + 128, le(1 << 32, 8)]],
        "blob-compressed_size-2^40": [[bt + 88, le(1 << 40, 8)]],
        "blob-uncompressed-2^44": [[bt + 96, le(1 << 44, 8)]],
        "blob-toc_size-0": [[bt + 104, le(0, 4)]],
        "blob-toc_size-512": [[bt + 104, le(512, 4)]],
        "blob-toc_size-max": [[bt + 104, le(0xFFFFFFFF, 4)]],
        "blob-toc_digest-0": [[bt + 136, "00" * 32]],
        "blob-compressor-gzip": [[bt + 76, le(2, 4)]],
        "blob-compressor-none": [[bt + 76, le(0, 4)]],
        "blob-compressor-lz4": [[bt + 76, le(1, 4)]],
        "blob-digester-sha256": [[bt + 80, le(1, 4)]],
        "blob-ci_compressor-none": [[bt + 108, le(0, 4)]],
        "blob-features-v2": [
            [bt + 84, le(u32(Path(g["boot"]).read_bytes(), bt + 84) | 0x4, 4)],
            [bt + 128, le(24 * u32(Path(g["boot"]).read_bytes(), bt + 72), 8)],
        ],
        "blob-features-no-toc": [[bt + 84, le(0x10000021, 4)]],
        "blob-features-no-digest": [[bt + 84, le(0x70000001, 4)]],
        "blob-features-minimal": [[bt + 84, le(0x1, 4)]],
        "blob-features-inlined-meta": [[bt + 84, le(u32(Path(g["boot"]).read_bytes(), bt + 84) | 0x2, 4)]],
        "devslot-blocks-0": [[1408 + 64, le(0, 4)]],
    }
    return [{"name": f"value:{k}", "boot_ops": [["put", o, v] for o, v in puts]} for k, puts in cases.items()]


def corpus_random(g, count=120, seed="random") -> List[Any]:
    rng = random.Random(seed)
    n = g["layout"]["len"]
    out = []
    for i in range(count):
        ops = []
        for _ in range(rng.choice((1, 1, 2, 3, 6))):
            if rng.random() < 0.6:
                # mostly where the metadata lives: superblocks, tables, inodes
                region = rng.choice(((1024, 1536), (4096, 4352), (g["layout"]["meta_base"], n)))
                at = rng.randrange(*region)
            else:
                at = rng.randrange(n)
            if rng.random() < 0.5:
                ops.append(["flip", at, 1 << rng.randrange(8)])
            else:
                ops.append(["put", at, bytes(rng.randrange(256) for _ in range(rng.choice((1, 2, 4, 8)))).hex()])
        out.append({"name": f"{seed}#{i}", "boot_ops": ops})
    return out


def corpus_blob(g, image: str) -> List[Any]:
    """Damage to the data blob: tail sections, chunk data, truncation."""
    rng = random.Random(f"blob-{image}")
    lay = g["layouts"][image]
    L = lay["blob_len"]
    ci, cc = lay["ci_offset"], lay["ci_c"]
    hdr = ci + cc
    out = []

    def add(name, ops):
        out.append({"name": f"blob[{image}]:{name}", "image": image, "blob_ops": ops})

    for k in sorted({0, 1, 511, 512, ci, ci + 1, hdr, hdr + 4095, L - lay["toc_size"], L - 513, L - 512, L - 1}):
        add(f"truncate-{k}", [["trunc", k]])
    add("extend-1", [["extend", 1]])
    for i in range(min(cc, 24)):
        add(f"ci-byte{i}", [["flip", ci + i, 1 << rng.randrange(8)]])
    for at in (0, 3, 4, 8, 12, 16, 24, 32, 40, 56, 4092, 4095):
        add(f"ci-header+{at}", [["flip", hdr + at, 0x01]])
    add("ci-header-entries-max", [["put", hdr + 12, "ffffffff"]])
    for t in lay["toc"]:
        o = t["at"]
        for at, mask in (
            (0, 0x01),
            (0, 0x08),
            (8, 0x01),
            (24, 0x01),
            (56, 0x01),
            (63, 0x80),
            (64, 0x01),
            (72, 0x01),
            (79, 0x80),
        ):
            add(f"toc[{t['name']}]+{at}^{mask:#x}", [["flip", o + at, mask]])
        if t["name"] == "blob.digest":
            for k in range(0, t["size"], 32):
                add(f"digest#{k // 32}", [["flip", t["offset"] + k, 0x01]])
    for at in (0, 100, 124, 148, 156, 257):  # the final tar header
        add(f"toc-tar+{at}", [["flip", L - 512 + at, 0x01]])
    for at in (0, 124, 135, 148):  # the blob.meta tar header
        add(f"meta-tar+{at}", [["flip", hdr + 4096 + at, 0x01]])
    for i, ch in enumerate(lay["chunks"]):
        for where in sorted({0, ch["c_size"] // 2, ch["c_size"] - 1}):
            add(f"chunk#{i}+{where}", [["flip", ch["c_off"] + where, 1 << rng.randrange(8)]])
        add(f"chunk#{i}:zeroed", [["put", ch["c_off"], "00" * min(ch["c_size"], 64)]])
    return out


def corpus_inline(g) -> List[Any]:
    """The reference blob that carries its own bootstrap (open_blob)."""
    rng = random.Random("inline")
    blob = INLINE_BLOB.read_bytes()
    L = len(blob)
    out = []

    def add(name, ops):
        out.append({"name": f"inline:{name}", "image": "inline", "blob_ops": ops})

    for k in (0, 100, 512, L // 2, L - 1024, L - 513, L - 512, L - 1):
        add(f"truncate-{k}", [["trunc", k]])
    # ToC entries and headers (from the end)
    hname, hsize = blob[L - 512 : L - 412].rstrip(b"\0"), int(blob[L - 512 + 124 : L - 512 + 135], 8)
    assert hname == b"rafs.blob.toc"
    start = L - 512 - hsize
    for o in range(start, L - 512, 128):
        for at, mask in ((0, 0x01), (8, 0x01), (24, 0x01), (56, 0x01), (64, 0x01), (66, 0x10), (72, 0x01), (76, 0x01)):
            add(f"toc{(o - start) // 128}+{at}", [["flip", o + at, mask]])
        name = blob[o + 8 : o + 24].rstrip(b"\0")
        if name == b"image.boot":
            off, size = u64(blob, o + 56), u64(blob, o + 64)
            for _ in range(12):
                add(f"image.boot+{rng.randrange(size)}", [["flip", off + rng.randrange(size), 1 << rng.randrange(8)]])
    for at in (124, 148, 156):
        add(f"toc-tar+{at}", [["flip", L - 512 + at, 0x01]])
    for _ in range(16):
        at = rng.randrange(L)
        add(f"random+{at}", [["flip", at, 1 << rng.randrange(8)]])
    return out


def corpus_reference(g) -> List[Any]:
    """The Nydus-built bootstrap (pre-release quirks included), randomly damaged."""
    out = []
    for c in corpus_random({"layout": g["layouts"]["ref"]}, count=40, seed="reference"):
        c["image"] = "ref"
        out.append(c)
    return out


# --------------------------------------------------------------------------------------
# pytest
# --------------------------------------------------------------------------------------

if __name__ != "__main__":
    import pytest

    @pytest.fixture(scope="module")
    def golden(tmp_path_factory):
        import nydus_hybrid

        root = tmp_path_factory.mktemp("bad-input")
        src = root / "src"
        src.mkdir()
        originals = make_tree(src)
        images: Dict[str, Dict[str, Any]] = {}
        layouts: Dict[str, Dict[str, Any]] = {}
        for key, comp, dig in (("main", "zstd", "blake3"), ("none", "none", "sha256"), ("lz4", "lz4_block", "blake3")):
            boot, blobs = root / f"{key}.boot", root / f"{key}-blobs"
            rep = nydus_hybrid.build(
                src, boot, blobs, chunk_size=CHUNK_SIZE, compressor=comp, digester=dig, progress=False
            )
            expected = read_expected(str(boot), str(blobs))
            for path, data in originals.items():  # the golden image itself must be right
                assert bytes.fromhex(expected["data"][path]) == data, path
            assert rep.blob_path is not None
            images[key] = {"boot": str(boot), "blob_dir": str(blobs), "blob": rep.blob_path, "expected": expected}
            layouts[key] = parse_layout(boot.read_bytes(), Path(rep.blob_path).read_bytes(), expected)
        ref_boot = FIXTURES / "rafs-v6-2.2.boot"
        images["ref"] = {
            "boot": str(ref_boot),
            "blob_dir": str(FIXTURES),
            "expected": read_expected(str(ref_boot), str(FIXTURES)),
        }
        layouts["ref"] = {"len": ref_boot.stat().st_size, "meta_base": u32(ref_boot.read_bytes(), 1024 + 40) * 4096}
        images["inline"] = {
            "boot": str(INLINE_BLOB),
            "blob": str(INLINE_BLOB),
            "inline": True,
            "expected": read_expected(str(INLINE_BLOB), None, inline=True),
        }
        path = root / "golden.json"
        path.write_text(json.dumps({"images": images}))
        logs = root / "logs"
        logs.mkdir()
        g = Golden(
            {
                "json": str(path),
                "logs": logs,
                "boot": images["main"]["boot"],
                "layout": layouts["main"],
                "layouts": layouts,
                "expected": images["main"]["expected"],
                "root": root,
            }
        )
        return g

    FAMILIES = {
        "truncate": corpus_truncate,
        "superblock": corpus_superblock,
        "ext-superblock": corpus_ext_superblock,
        "devslot-blob-table": corpus_devslot_and_blob_table,
        "inodes": corpus_inodes,
        "xattrs": corpus_xattrs,
        "dirents": corpus_dirents,
        "chunk-index": corpus_chunk_index,
        "chunk-table": corpus_chunk_table,
        "values": corpus_values,
        "random": corpus_random,
        "blob-zstd": lambda g: corpus_blob(g, "main"),
        "blob-none": lambda g: corpus_blob(g, "none"),
        "blob-lz4": lambda g: corpus_blob(g, "lz4"),
        "inline-blob": corpus_inline,
        "reference": corpus_reference,
    }
    # Families whose damage lies past the superblocks: most variants must still open, or the
    # corpus would only ever exercise the superblock checks.
    DEEP = {"inodes", "xattrs", "dirents", "chunk-index", "chunk-table", "blob-zstd", "blob-none", "blob-lz4"}

    def test_pristine_images_satisfy_the_contract(golden):
        cases = [{"name": f"pristine-{k}", "image": k} for k in ("main", "none", "lz4", "ref", "inline")]
        results = run_cases(golden["json"], cases, golden["logs"])
        for r in results:
            assert r["outcome"] == "check-ok" and not r["problems"], r

    def test_corpus_size(golden):
        total = sum(len(f(golden)) for f in FAMILIES.values())
        assert total >= 400, total

    @pytest.mark.parametrize("family", sorted(FAMILIES))
    def test_corrupted_images(golden, family):
        cases = FAMILIES[family](golden)
        names = [c["name"] for c in cases]
        assert len(names) == len(set(names)), "duplicate case names"
        results = run_cases(golden["json"], cases, golden["logs"])
        bad, outcomes, text = summarize(results)
        print(f"{family}: {len(cases)} cases, outcomes {outcomes}")
        assert not bad, f"{len(bad)} of {len(cases)} corrupted images broke the contract:\n{text}"
        if family in DEEP:
            opened = len(cases) - outcomes.get("open-rejected", 0)
            assert opened >= len(cases) // 3, f"only {opened} of {len(cases)} variants opened: {outcomes}"

    # ----------------------------------------------------------------------------------
    # Single, named regressions (each also appears in the corpus)
    # ----------------------------------------------------------------------------------

    def _one(golden, case):
        (r,) = run_cases(golden["json"], [case], golden["logs"], workers=1)
        return r

    def _inode_put(golden, path, at, value, size):
        o = golden["layout"]["inodes"][path]["off"]
        return [["put", o + at, le(value, size)]]

    def test_huge_file_size_read_is_an_error_not_an_abort(golden):
        """Regression (fixed; reader): Rafs::read_nid pre-allocates `Vec::with_capacity(end - offset)`
        from the untrusted i_size; a 1 TiB i_size aborts the whole process with
        'memory allocation of 1099511627776 bytes failed'."""
        r = _one(golden, {"name": "big-size-2^40", "boot_ops": _inode_put(golden, "/big", 8, 1 << 40, 8)})
        assert not r["problems"], r["problems"]

    def test_absurd_file_size_read_is_an_error_not_a_panic(golden):
        """Regression (fixed; reader): same spot; an i_size near 2^64 panics with 'capacity overflow'
        (surfacing in Python as pyo3_runtime.PanicException, not a NydusError)."""
        r = _one(golden, {"name": "big-size-max", "boot_ops": _inode_put(golden, "/big", 8, (1 << 64) - 256, 8)})
        assert not r["problems"], r["problems"]

    def test_directory_cycle_ends_walk(golden):
        """A directory entry pointing back at an ancestor must not make walk() loop forever."""
        (case,) = [c for c in corpus_dirents(golden) if c["name"] == "dirent-cycle-to-parent"]
        r = _one(golden, case)
        assert not r["problems"], r["problems"]

    def test_unverified_toc_cannot_force_huge_allocation(golden):
        """With the bootstrap's ToC digest cleared, a ToC entry claiming a 4 GiB section must be
        refused before anything that size is allocated or read."""
        lay = golden["layout"]
        meta = next(t for t in lay["toc"] if t["name"] == "blob.meta")
        case = {
            "name": "toc-4GiB",
            "boot_ops": [["put", lay["bt_off"] + 136, "00" * 32]],
            "blob_ops": [["put", meta["at"] + 64, le(0xFFFF_FFFF, 8)], ["put", meta["at"] + 72, le(0xFFFF_FFFF, 8)]],
        }
        r = _one(golden, case)
        assert not r["problems"], r["problems"]

    # ----------------------------------------------------------------------------------
    # Property test: random overwrites of the bootstrap
    # ----------------------------------------------------------------------------------

    try:
        from hypothesis import HealthCheck, given, settings
        from hypothesis import strategies as st

        have_hypothesis = True
    except ImportError:  # pragma: no cover
        have_hypothesis = False

    if have_hypothesis:

        @pytest.fixture(scope="module")
        def hyp_worker(golden):
            w = Worker(golden["json"], golden["logs"])
            yield w
            w.stop()

        def hot_offsets(golden) -> List[Any]:
            """Offsets where a structure field starts: where damage is most interesting."""
            lay = golden["layout"]
            hot = [1024 + o for o, _ in SB_FIELDS] + [1152 + o for o, _ in EXT_FIELDS]
            hot += [lay["bt_off"] + o for o, _ in BLOB_FIELDS] + [1408, 1408 + 64]
            boot = Path(golden["boot"]).read_bytes()
            for ino in lay["inodes"].values():
                hot += [ino["off"] + o for o in (0, 2, 4, 6, 8, 12, 16, 44)]
                if ino["xattr_size"]:
                    hot += [ino["xattr_off"] + o for o in (4, 12, 13, 14)]
                if ino["kind"] == "reg":
                    n = -(-ino["size"] // lay["chunk_size"])
                    hot += [ino["chunk_idx_off"] + 8 * k + o for k in range(n) for o in (0, 2, 4)]
                for blk, _ in ino.get("dir_blocks", []):
                    hot += [blk + 12 * k + o for k in range(u16(boot, blk + 8) // 12) for o in (0, 8, 10)]
            hot += [c["off"] + o for c in lay["chunks"] for o, _ in CT_FIELDS]
            return sorted(set(hot))

        @settings(
            max_examples=400,
            deadline=None,
            database=None,
            derandomize=True,
            suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
        )
        @given(data=st.data())
        def test_random_bootstrap_edits(golden, hyp_worker, data):
            """Flip or overwrite 1-6 spots of the bootstrap, anywhere or at a field start."""
            n = golden["layout"]["len"]
            hot = golden.setdefault("hot", hot_offsets(golden))
            where = st.one_of(st.sampled_from(hot), st.integers(0, n - 1))
            edit = st.tuples(
                st.sampled_from(["flip", "put"]), where, st.integers(1, 255), st.sampled_from([1, 2, 4, 8])
            )
            ops = []
            for kind, at, value, width in data.draw(st.lists(edit, min_size=1, max_size=6), label="edits"):
                if kind == "flip":
                    ops.append(["flip", at, value])
                else:
                    raw = data.draw(st.binary(min_size=width, max_size=width), label="bytes")
                    ops.append(["put", at, raw.hex()])
            r = hyp_worker.run({"name": f"hypothesis:{ops}", "boot_ops": ops})
            assert not r["problems"], (ops, r["problems"])


if __name__ == "__main__" and len(sys.argv) == 3 and sys.argv[1] == "--worker":
    worker_main(sys.argv[2])
