"""The `http-proxy` backend (nydusd v2 config only): blobs fetched as `<addr>/<path>/<id>`
with Range from a plain HTTP server, over TCP or a unix socket."""

from __future__ import annotations

import pytest

import nydus_hybrid
from nydus_hybrid import errors
from tests.helpers.servers import BlobFileServer


def _config(addr, path, cache):
    return {
        "version": 2,
        "backend": {"type": "http-proxy", "http-proxy": {"addr": addr, "path": path, "timeout": 5}},
        "cache": {"type": "blobcache", "filecache": {"work_dir": str(cache)}},
        "rafs": {"batch_size": 0},
    }


def test_http_proxy_backend_over_tcp(image, tmp_path):
    root, report, files = image
    srv = BlobFileServer("blobs/v1", root / "blobs").start()
    try:
        addr = srv.addr
        im = nydus_hybrid.Image.open(root / "boot", config=_config(addr, "/blobs/v1/", tmp_path / "c"))
        for p, data in files.items():
            assert im.read(p) == data
        assert im.metrics()["backend"]["backend_type"] == "http-proxy"
        assert all(p == f"/blobs/v1/{report.blob_id}" for p in srv.paths)
        # a wrong path prefix is a clear backend error
        im = nydus_hybrid.Image.open(root / "boot", config=_config(addr, "nope", tmp_path / "c2"))
        with pytest.raises(errors.BackendError) as e:
            im.read("/small")
        assert "404" in str(e.value)
    finally:
        srv.close()


def test_http_proxy_backend_over_unix_socket(image, tmp_path):
    root, _report, files = image
    sock = str(tmp_path / "proxy.sock")
    srv = BlobFileServer("p", root / "blobs", unix_socket=sock).start()
    try:
        im = nydus_hybrid.Image.open(root / "boot", config=_config(sock, "p", tmp_path / "c"))
        assert im.read("/dir/big3") == files["/dir/big3"]
        assert srv.paths
    finally:
        srv.close()


def test_http_proxy_addr_must_be_a_url_or_socket(image, tmp_path):
    root, _, _ = image
    with pytest.raises(errors.ConfigError) as e:
        nydus_hybrid.Image.open(root / "boot", config=_config("ftp://x", "", tmp_path))
    assert "http-proxy.addr" in str(e.value)
