"""The root filesystem an OCI image's layers make, the way containerd unpacks them: for each
layer, lowest first, its whiteouts (`.wh.NAME` removes NAME, `.wh..wh..opq` empties the
directory) are applied to the layers below, then its entries are extracted. GNU tar does
the extracting, because it restores what Python's `tarfile` does not (xattrs, symlink
times, nanosecond times); it also refuses member names that climb out with `..`.

A directory that a layer declares again takes that layer's metadata whole, xattrs too, as
`nydus-image merge` has it (containerd would keep the lower directory's xattrs)."""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import tarfile
from pathlib import Path
from typing import IO, Iterator, Sequence

from nydus_hybrid.errors import InvalidArgumentError, UnsafeInputError

_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"


def _members(layer: Path) -> Iterator[tarfile.TarInfo]:
    """The headers of a layer tarball (plain, gzip or zstd), streamed."""
    with open(layer, "rb") as f:
        zstd = f.read(4) == _ZSTD_MAGIC
    proc = subprocess.Popen(["zstd", "-dcq", str(layer)], stdout=subprocess.PIPE) if zstd else None
    stream: IO[bytes] = proc.stdout if proc and proc.stdout else open(layer, "rb")
    try:
        with tarfile.open(fileobj=stream, mode="r|*") as tf:
            yield from tf
    except tarfile.TarError as e:
        raise InvalidArgumentError(errno.EINVAL, f"{layer}: not a layer tarball ({e})") from None
    finally:
        stream.close()
        if proc:
            proc.wait()


def _inside(root: Path, rel: str) -> Path:
    """`root/rel`, refused when `rel` or a symlink on the way would leave `root`."""
    norm = os.path.normpath("/" + rel).lstrip("/")
    if norm in ("", ".") or ".." in Path(rel).parts:
        raise UnsafeInputError(errno.EPERM, f"whiteout {rel!r} climbs out of the root")
    parent = os.path.realpath(root / os.path.dirname(norm))
    if os.path.commonpath([parent, os.path.realpath(root)]) != os.path.realpath(root):
        raise UnsafeInputError(errno.EPERM, f"whiteout {rel!r} goes through a symlink out of the root")
    return Path(parent) / os.path.basename(norm)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def apply_layer(layer: Path, root: Path) -> None:
    for m in _members(layer):
        d, base = os.path.split(m.name.rstrip("/"))
        if base == ".wh..wh..opq":
            target = _inside(root, d) if d not in ("", ".") else root
            if target.is_dir() and not target.is_symlink():
                for child in target.iterdir():
                    _remove(child)
        elif base.startswith(".wh."):
            _remove(_inside(root, os.path.join(d, base[4:])))
        elif m.isdir():
            target = _inside(root, m.name) if m.name.strip("./") else root
            if target.is_dir() and not target.is_symlink():
                for x in os.listxattr(target, follow_symlinks=False):
                    os.removexattr(target, x, follow_symlinks=False)
    p = subprocess.run(
        [
            *("tar", "-C", str(root), "--xattrs", "--xattrs-include=*", "--numeric-owner"),
            *("-xpf", str(layer), "--exclude=.wh.*"),
        ],
        capture_output=True,
        text=True,
    )
    if p.returncode != 0:
        last = (p.stderr.strip().splitlines() or ["failed"])[-1]
        raise InvalidArgumentError(errno.EINVAL, f"{layer}: tar could not extract it: {last}")


def flatten(layers: Sequence[Path], root: Path) -> None:
    """Unpack `layers` (lowest first) into `root`, which must not exist yet."""
    root.mkdir()
    for layer in layers:
        apply_layer(layer, root)
