"""What the core returns matches the types _core.pyi declares (nydus_hybrid.types), key by
key and value by value, on a real image. mypy checks callers against the stubs; this checks
the stubs against the core."""

from __future__ import annotations

import os
import typing
from typing import Any, Dict, List, Optional, Tuple, Union

import pytest

from nydus_hybrid import _core, types


def conforms(value: Any, tp: Any, where: str = "value") -> List[str]:
    """Every way ``value`` differs from the type ``tp`` (TypedDicts exactly: no missing or
    extra keys)."""
    if tp is Any:
        return []
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if typing.is_typeddict(tp):
        if not isinstance(value, dict):
            return [f"{where}: {type(value).__name__}, expected {tp.__name__}"]
        hints = typing.get_type_hints(tp)
        problems = [f"{where}: missing key {k!r}" for k in hints if k not in value]
        problems += [f"{where}: unexpected key {k!r}" for k in value if k not in hints]
        for k, sub in hints.items():
            if k in value:
                problems += conforms(value[k], sub, f"{where}.{k}")
        return problems
    if origin is Union:
        results = [conforms(value, a, where) for a in args]
        return [] if any(not r for r in results) else [f"{where}: {value!r} is none of {args}"]
    if origin in (list, List):
        if not isinstance(value, list):
            return [f"{where}: {type(value).__name__}, expected a list"]
        return [p for i, v in enumerate(value) for p in conforms(v, args[0], f"{where}[{i}]")]
    if origin in (tuple, Tuple):
        if not isinstance(value, tuple) or len(value) != len(args):
            return [f"{where}: {value!r}, expected a {len(args)}-tuple"]
        return [p for i, (v, a) in enumerate(zip(value, args)) for p in conforms(v, a, f"{where}[{i}]")]
    if origin in (dict, Dict):
        return [] if isinstance(value, dict) else [f"{where}: {type(value).__name__}, expected a dict"]
    if tp is type(None):
        return [] if value is None else [f"{where}: {value!r}, expected None"]
    if tp is int:
        return [] if isinstance(value, int) and not isinstance(value, bool) else [f"{where}: {value!r}, expected int"]
    return [] if isinstance(value, tp) else [f"{where}: {type(value).__name__}, expected {tp.__name__}"]


def test_the_checker_itself_finds_differences():
    assert conforms({"entries": 1, "bytes": 2}, types.UnpackReport) == ["value: missing key 'skipped_sockets'"]
    assert conforms({"entries": 1, "bytes": 2, "skipped_sockets": 0, "x": 1}, types.UnpackReport)
    assert conforms({"entries": "1", "bytes": 2, "skipped_sockets": 0}, types.UnpackReport)
    assert conforms(None, Optional[str]) == []
    assert conforms(True, int)


@pytest.fixture(scope="module")
def image(tmp_path_factory):
    src = tmp_path_factory.mktemp("src")
    (src / "dir").mkdir()
    (src / "dir" / "file").write_bytes(os.urandom(300_000))
    (src / "small").write_text("hello\n")
    os.symlink("small", src / "link")
    out = tmp_path_factory.mktemp("out")
    report = _core.build(str(src), str(out / "boot"), str(out / "blobs"), progress=False)
    return report, _core.Image.open(str(out / "boot"), str(out / "blobs")), out


def test_build_report(image):
    report, _, _ = image
    assert conforms(report, types.BuildReportDict) == []


def test_image_reports(image, tmp_path):
    _, img, _ = image
    assert conforms(img.stat(b"/dir/file"), types.StatDict) == []
    assert conforms(img.inspect(), types.InspectReport) == []
    assert conforms(img.check(True), types.CheckReport) == []
    assert conforms(img.unpack_tar(str(tmp_path / "out.tar")), types.UnpackReport) == []
    assert conforms(img.unpack_dir(str(tmp_path / "tree")), types.UnpackReport) == []
    assert conforms(img.readdir(b"/"), List[Tuple[bytes, int, int]]) == []
    metrics = img.metrics()
    assert set(metrics) == {"backend", "blobcache"}


def test_cache_gc_and_config(image):
    _, _, out = image
    cached = _core.Image.open(str(out / "boot"), str(out / "blobs"), True, str(out / "cache"))
    assert cached.read(b"/small", 0, 6) == b"hello\n"
    report = _core.cache_gc(str(out / "cache"), 0)
    assert conforms(report, types.GcReport) == []
    assert report["in_use"], "the open image's blob is in use and kept"
    cfg = _core.parse_config('{"version": 2, "backend": {"type": "localfs", "localfs": {"dir": "/tmp"}}}')
    assert cfg["backend"]["type"] == "localfs" and cfg["version"] == 2
