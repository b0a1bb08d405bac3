"""The `http-proxy` backend (nydusd v2 config only): blobs fetched as `<addr>/<path>/<id>`
with Range from a plain HTTP server, over TCP or a unix socket."""

from __future__ import annotations

import os
import socketserver
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import List, TypeVar

import pytest

import nydus_hybrid
from nydus_hybrid import errors


class _BlobState:
    """What `_BlobFiles` serves from (set by `_start`) and the paths it was asked for."""

    root: str
    prefix: str
    paths: List[str]


class _TCPServer(_BlobState, ThreadingHTTPServer):
    pass


class _BlobFiles(BaseHTTPRequestHandler):
    """Serves `<root>/<name>` for GET/HEAD `/<prefix>/<name>`, honouring one Range."""

    def log_message(self, *args):
        pass

    def do_GET(self):
        srv = self.server
        assert isinstance(srv, _BlobState), srv
        srv.paths.append(self.path)
        prefix, _, name = self.path.lstrip("/").rpartition("/")
        path = os.path.join(srv.root, name)
        if prefix != srv.prefix or not os.path.isfile(path):
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        data = open(path, "rb").read()
        rng = self.headers.get("Range")
        if rng:
            lo, hi = (int(x) for x in rng.split("=")[1].split("-"))
            body = data[lo : hi + 1]
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {lo}-{hi}/{len(data)}")
        else:
            body = data
            self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command == "GET":
            self.wfile.write(body)

    do_HEAD = do_GET


class _UnixHTTPServer(_BlobState, socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True


_S = TypeVar("_S", _TCPServer, _UnixHTTPServer)


def _start(server: _S, root: str, prefix: str) -> _S:
    server.root, server.prefix, server.paths = root, prefix, []
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def _config(addr, path, cache):
    return {
        "version": 2,
        "backend": {"type": "http-proxy", "http-proxy": {"addr": addr, "path": path, "timeout": 5}},
        "cache": {"type": "blobcache", "filecache": {"work_dir": str(cache)}},
        "rafs": {"batch_size": 0},
    }


def test_http_proxy_backend_over_tcp(image, tmp_path):
    root, report, files = image
    srv = _start(_TCPServer(("127.0.0.1", 0), _BlobFiles), str(root / "blobs"), "blobs/v1")
    try:
        addr = f"http://127.0.0.1:{srv.server_address[1]}"
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
        srv.shutdown()


def test_http_proxy_backend_over_unix_socket(image, tmp_path):
    root, _report, files = image
    sock = str(tmp_path / "proxy.sock")
    srv = _start(_UnixHTTPServer(sock, _BlobFiles), str(root / "blobs"), "p")
    try:
        im = nydus_hybrid.Image.open(root / "boot", config=_config(sock, "p", tmp_path / "c"))
        assert im.read("/dir/big3") == files["/dir/big3"]
        assert srv.paths
    finally:
        srv.shutdown()


def test_http_proxy_addr_must_be_a_url_or_socket(image, tmp_path):
    root, _, _ = image
    with pytest.raises(errors.ConfigError) as e:
        nydus_hybrid.Image.open(root / "boot", config=_config("ftp://x", "", tmp_path))
    assert "http-proxy.addr" in str(e.value)
