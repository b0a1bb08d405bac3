"""The converted-layer cache: a layer blob is kept under a key made of the source layer's
digest and every option that changes the blob's bytes, so the same layer (in another
image, another platform, or the next run) is not built again. An entry is a directory
made complete elsewhere and renamed in; a hit is checked against its digest before use."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Optional

from nydus_hybrid.convert.layout import verify_file
from nydus_hybrid.errors import NydusError
from nydus_hybrid.version import GIT_COMMIT, __version__


def default_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "nydus-hybrid" / "convert"


@dataclass(frozen=True)
class CachedBlob:
    path: Path
    digest: str
    size: int
    dict_chunks: int  # chunks the blob's bootstrap takes from a chunk dictionary


class LayerCache:
    def __init__(self, root: Path) -> None:
        self.root = root

    @staticmethod
    def key(source_digest: str, options: Dict[str, Any]) -> str:
        doc = {"source": source_digest, "options": options, "version": f"{__version__}+{GIT_COMMIT}"}
        return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()

    def get(self, key: str) -> Optional[CachedBlob]:
        entry = self.root / key[:2] / key
        try:
            meta = json.loads((entry / "meta.json").read_bytes())
            blob = CachedBlob(entry / "blob", str(meta["digest"]), int(meta["size"]), int(meta.get("dict_chunks", 0)))
            verify_file(blob.path, blob.digest, blob.size)
        except (OSError, ValueError, KeyError, TypeError, NydusError):
            shutil.rmtree(entry, ignore_errors=True)  # absent or damaged: build again
            return None
        os.utime(entry)  # for age-based trimming
        return blob

    def put(self, key: str, blob: Path, digest: str, dict_chunks: int = 0) -> None:
        entry = self.root / key[:2] / key
        if entry.exists():
            return
        entry.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=entry.parent))
        try:
            try:
                os.link(blob, tmp / "blob")
            except OSError:
                shutil.copyfile(blob, tmp / "blob")
            meta = {"digest": digest, "size": (tmp / "blob").stat().st_size, "dict_chunks": dict_chunks}
            (tmp / "meta.json").write_text(json.dumps(meta))
            os.rename(tmp, entry)
        except OSError:
            pass  # another run put it first, or the cache is unwritable: caching is best effort
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
