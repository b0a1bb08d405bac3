"""Helpers shared by the tests that read through mounts (FUSE server, fusepy shim)."""

from __future__ import annotations

import hashlib
import os
import shutil
import threading
from pathlib import Path
from typing import Dict, List, Tuple, Union

from tests.helpers.images import Built


def is_mounted(path: Union[str, os.PathLike[str]]) -> bool:
    real = os.path.realpath(path)
    with open("/proc/self/mountinfo") as f:
        return any(line.split()[4] == real for line in f)


def sha256_file(path: Union[str, os.PathLike[str]]) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def read_concurrently(
    root: str, expected: Dict[str, str], readers: int, rounds: int = 1
) -> List[Tuple[str, Union[str, OSError]]]:
    """`readers` threads each hash every file under `root` (relative names in `expected`,
    each starting at a different file) `rounds` times; returns the problems seen."""
    problems: List[Tuple[str, Union[str, OSError]]] = []
    names = sorted(expected)

    def reader(start: int) -> None:
        order = names[start:] + names[:start]
        for _ in range(rounds):
            for rel in order:
                try:
                    if sha256_file(os.path.join(root, rel.lstrip("/"))) != expected[rel]:
                        problems.append((rel, "wrong bytes"))
                except OSError as e:
                    problems.append((rel, e))

    threads = [threading.Thread(target=reader, args=(i * 7 % max(len(names), 1),)) for i in range(readers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return problems


def blobs_with_damaged_chunk(built: Built, out_dir: Union[str, os.PathLike[str]], path: str, offset: int) -> Path:
    """A copy of `built`'s blob directory in which the stored chunk holding `path` at
    `offset` has one flipped byte. The file must be incompressible (stored raw), so its
    bytes can be found in the blob."""
    blobs = Path(out_dir) / "blobs"
    shutil.copytree(built.blob_dir, blobs)
    assert built.report.blob_id is not None, "the image has no blob"
    blob = blobs / built.report.blob_id
    data = bytearray(blob.read_bytes())
    off = bytes(data).find(built.open().read(path, offset, 4096))
    assert off > 0, f"could not locate {path}@{offset} in the blob"
    data[off + 10] ^= 0xFF
    blob.write_bytes(bytes(data))
    return blobs
