"""`nydus_hybrid.convert.flatten`: OCI whiteouts and opaque directories applied layer by
layer, and hostile whiteouts (climbing out with `..`, or through a symlink a lower layer
planted) refused without touching anything outside the root."""

from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path
from typing import List, Tuple

import pytest

from nydus_hybrid import errors
from nydus_hybrid.convert.flatten import flatten


def layer(path: Path, entries: List[Tuple[str, str, bytes]]) -> Path:
    """A layer tarball of (kind, name, data): kind is "f" (file), "d" (dir) or "l" (symlink
    to `data`)."""
    with tarfile.open(path, "w") as t:
        for kind, name, data in entries:
            info = tarfile.TarInfo(name)
            if kind == "d":
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                t.addfile(info)
            elif kind == "l":
                info.type, info.linkname = tarfile.SYMTYPE, data.decode()
                t.addfile(info)
            else:
                info.size = len(data)
                t.addfile(info, io.BytesIO(data))
    return path


def test_whiteouts_and_opaque_directories_apply_to_the_layers_below(tmp_path):
    lower = layer(
        tmp_path / "1.tar",
        [("d", "etc", b""), ("f", "etc/a", b"a"), ("f", "etc/b", b"b"), ("d", "doc", b""), ("f", "doc/old", b"o")],
    )
    upper = layer(
        tmp_path / "2.tar",
        [("f", "etc/.wh.a", b""), ("d", "doc", b""), ("f", "doc/new", b"n"), ("f", "doc/.wh..wh..opq", b"")],
    )
    root = tmp_path / "root"
    flatten([lower, upper], root)
    assert sorted(os.listdir(root / "etc")) == ["b"]
    assert sorted(os.listdir(root / "doc")) == ["new"], "the opaque marker empties only the lower layers' part"


@pytest.mark.parametrize(
    "entries",
    [
        [("f", "../.wh.victim", b"")],
        [("f", "esc/.wh.victim", b"")],
    ],
)
def test_a_whiteout_never_removes_anything_outside_the_root(tmp_path, entries):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "victim").write_bytes(b"keep me")
    (tmp_path / ".wh.victim").write_bytes(b"")  # what the `..` case would name
    lower = layer(tmp_path / "1.tar", [("l", "esc", str(outside).encode())])
    upper = layer(tmp_path / "2.tar", entries)
    with pytest.raises(errors.UnsafeInputError):
        flatten([lower, upper], tmp_path / "root")
    assert (outside / "victim").read_bytes() == b"keep me"
