"""Reading a blob cache directory the way nydusd does (its indexed chunk map), so the tests
check our files against the format and not against our own reader."""

from __future__ import annotations

import struct
from pathlib import Path
from typing import List

HEADER = 4096
MAGIC, VERSION, MAGIC2, ALL_READY = 0x424D4150, 1, 0x434D4150, 0x4D4D4150


def ready_chunks(path: Path, chunks: int) -> List[bool]:
    """Which of `chunks` chunks `<blob_id>.chunk_map` at `path` marks as cached; asserts the
    header and the size nydusd requires."""
    b = path.read_bytes()
    assert len(b) == HEADER + (chunks + 7) // 8, f"{path}: {len(b)} bytes for {chunks} chunks"
    magic, version, magic2, flag = struct.unpack_from("<4I", b)
    assert (magic, version, magic2) == (MAGIC, VERSION, MAGIC2), f"{path}: header {b[:16].hex()}"
    assert flag in (0, ALL_READY) and not any(b[16:HEADER]), f"{path}: header {b[:16].hex()}"
    if flag == ALL_READY:
        return [True] * chunks
    return [bool(b[HEADER + n // 8] & (0x80 >> (n % 8))) for n in range(chunks)]
