"""Images for the tests: the Nydus v2.2 fixtures (pre-release v2.2 builds), the small-file
count of the generated tree (tests/helpers/treegen.py), building an image into a
directory, and the storage tests' image."""

from __future__ import annotations

import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Tuple, Union

import nydus_hybrid

FIXTURES = Path(os.environ.get("NYDUS_FIXTURES") or Path(__file__).resolve().parents[3] / "shared/fixtures/nydus-v2.2")
FIXTURE_BOOT = FIXTURES / "rafs-v6-2.2.boot"
FIXTURE_BLOB_ID = "be7d77eeb719f70884758d1aa800ed0fb09d701aaec469964e9d54325f0d5fef"
FIXTURE_INLINE_ID = "2fa78cad554b75ac91a4a125ed148d0ddeb25efa4aaa8bd80e5dc292690a4dca"
FIXTURE_TAR = FIXTURES / "all-entry-type.tar"

# How many small files the generated tree holds (CI uses the default).
SMALL_FILES = int(os.environ.get("NYDUS_TEST_SMALL_FILES", "10000"))


@dataclass
class Built:
    bootstrap: Path
    blob_dir: Path
    report: nydus_hybrid.BuildReport

    def open(self) -> nydus_hybrid.Image:
        return nydus_hybrid.Image.open(self.bootstrap, self.blob_dir)


def build_into(source: Union[str, os.PathLike[str]], out: Path, **kw: Any) -> Built:
    out.mkdir(parents=True, exist_ok=True)
    kw.setdefault("progress", False)
    report = nydus_hybrid.build(source, out / "bootstrap", out / "blobs", **kw)
    return Built(out / "bootstrap", out / "blobs", report)


# --- the storage tests' image (tests/storage/conftest.py `image`) ---------------------------

REGISTRY_CHUNK = 0x40000  # 256 KiB chunks: many chunks from a few MiB of data

# (its directory: src/, boot, blobs/; the build report; path in the image -> content)
RegistryImage = Tuple[Path, nydus_hybrid.BuildReport, Dict[str, bytes]]


def build_registry_image(root: Path) -> RegistryImage:
    """An image of 6 incompressible 1 MiB files, two small ones and a directory."""
    src = root / "src"
    (src / "dir").mkdir(parents=True)
    rnd = random.Random(3)
    files = {}
    for i in range(6):
        data = rnd.randbytes(1 << 20)
        (src / "dir" / f"big{i}").write_bytes(data)
        files[f"/dir/big{i}"] = data
    for name, data in {"small": b"hello registry\n", "other": b"x" * 5000}.items():
        (src / name).write_bytes(data)
        files[f"/{name}"] = data
    report = nydus_hybrid.build(src, root / "boot", root / "blobs", chunk_size=REGISTRY_CHUNK, progress=False)
    return root, report, files
