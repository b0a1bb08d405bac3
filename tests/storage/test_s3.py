"""Lazy reads from S3-compatible storage: moto's server (PyPI `moto[server]`) on 127.0.0.1,
with IAM authentication on, so every request our SigV4 signer makes is checked."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from typing import Any, Dict

import pytest

import nydus_hybrid
from nydus_hybrid import errors


def s3_config(s3, cache, *, secret=None, prefix="layers/", amplify=0) -> Dict[str, Any]:
    host = s3.endpoint.split("://", 1)[1]
    return {
        "version": 2,
        "backend": {
            "type": "s3",
            "s3": {
                "scheme": "http",
                "endpoint": host,
                "region": s3.region,
                "bucket_name": s3.bucket,
                "object_prefix": prefix,
                "access_key_id": s3.access_key_id,
                "access_key_secret": s3.secret_access_key if secret is None else secret,
                "timeout": 5,
            },
        },
        "cache": {"type": "blobcache", "filecache": {"work_dir": str(cache)}},
        "rafs": {"batch_size": amplify},
    }


@pytest.fixture(scope="module")
def uploaded(s3_server, image):
    root, report, _ = image
    s3_server.put_object(f"layers/{report.blob_id}", (root / "blobs" / report.blob_id).read_bytes())
    return s3_server


def test_s3_lazy_read_then_cached_across_processes(uploaded, image, tmp_path):
    root, _report, files = image
    cfg = s3_config(uploaded, tmp_path / "cache")
    im = nydus_hybrid.Image.open(root / "boot", config=cfg)
    assert im.read("/small") == files["/small"]
    m = im.metrics()
    assert m["backend"]["backend_type"] == "oss"  # nydusd reports S3 as oss
    assert m["blobcache"]["chunk_misses"] == 1
    for p, data in files.items():
        assert im.read(p) == data
    del im
    code = (
        "import sys, json, hashlib, nydus_hybrid\n"
        "im = nydus_hybrid.Image.open(sys.argv[1], config=sys.argv[2])\n"
        "sums = {p: hashlib.sha256(im.read(p)).hexdigest() for p in sys.argv[3:]}\n"
        "print(json.dumps({'sums': sums, 'backend': im.metrics()['backend']}))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(root / "boot"), json.dumps(cfg), *files],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    doc = json.loads(out.stdout)
    assert doc["backend"]["requests_total"] == 0
    assert doc["sums"] == {p: hashlib.sha256(d).hexdigest() for p, d in files.items()}


def test_s3_wrong_secret_is_an_auth_error(uploaded, image, tmp_path):
    root, _, _ = image
    im = nydus_hybrid.Image.open(root / "boot", config=s3_config(uploaded, tmp_path / "c", secret="not-the-secret"))
    with pytest.raises(errors.AuthError) as e:
        im.read("/small")
    assert "403" in str(e.value) and "s3 127.0.0.1" in str(e.value)


def test_s3_missing_object_is_a_backend_error(uploaded, image, tmp_path):
    root, _, _ = image
    im = nydus_hybrid.Image.open(root / "boot", config=s3_config(uploaded, tmp_path / "c", prefix="elsewhere/"))
    with pytest.raises(errors.BackendError) as e:
        im.read("/small")
    assert "not found" in str(e.value)


def test_s3_amplified_reads_stay_correct(uploaded, image, tmp_path):
    root, report, files = image
    im = nydus_hybrid.Image.open(root / "boot", config=s3_config(uploaded, tmp_path / "c", amplify=4 << 20))
    for p, data in files.items():
        assert im.read(p) == data
    m = im.metrics()["blobcache"]
    assert m["fills"] == report.chunks
    assert m["amplified_chunks"] > 0 and m["chunk_misses"] < report.chunks
