"""A small OCI distribution registry for the demo, where Debian's `docker-registry` is not
installed: the standard library's threaded HTTP server on 127.0.0.1, content-addressed
blobs on disk, manifests by tag and digest, and ranged blob reads (what a lazy daemon asks
for). Uploads are verified against their digest before they are stored. It writes an
access log line per request in the common log format, with the bytes sent, as
docker-registry does. It is not a production registry: no auth, no deletes, no catalog."""

from __future__ import annotations

import hashlib
import os
import re
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Optional, Tuple

_NAME = r"[a-z0-9]+(?:[._/-][a-z0-9]+)*"
_BLOB = re.compile(rf"^/v2/({_NAME})/blobs/(sha256:[0-9a-f]{{64}})$")
_MANIFEST = re.compile(rf"^/v2/({_NAME})/manifests/([A-Za-z0-9_.:-]{{1,128}})$")
_UPLOADS = re.compile(rf"^/v2/({_NAME})/blobs/uploads/$")
_UPLOAD = re.compile(rf"^/v2/({_NAME})/blobs/uploads/([0-9a-f]{{32}})$")
_RANGE = re.compile(r"^bytes=(\d+)-(\d*)$")
MAX_MANIFEST = 4 << 20


class EmbeddedRegistry:
    def __init__(self, root: str, port: int, access_log: str) -> None:
        self.root = root
        for d in ("blobs", "manifests", "uploads"):
            os.makedirs(os.path.join(root, d), exist_ok=True)
        self.log_path = access_log
        self.log_lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", port), _Handler)
        self.server.daemon_threads = True
        self.server.registry = self  # type: ignore[attr-defined]
        self.thread = threading.Thread(target=self.server.serve_forever, name="registry", daemon=True)

    def start(self) -> EmbeddedRegistry:
        self.thread.start()
        return self

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def blob_path(self, digest: str) -> str:
        return os.path.join(self.root, "blobs", digest.replace(":", "-"))

    def manifest_path(self, repo: str, ref: str) -> str:
        return os.path.join(self.root, "manifests", hashlib.sha256(f"{repo}@{ref}".encode()).hexdigest())


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    @property
    def reg(self) -> EmbeddedRegistry:
        registry: EmbeddedRegistry = self.server.registry  # type: ignore[attr-defined]
        return registry

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def log_request(self, code: Any = "-", size: Any = "-") -> None:
        pass  # logged by _log once the body is sent, with its size

    def _log(self, status: int, sent: int) -> None:
        line = f'127.0.0.1 - - [-] "{self.requestline}" {status} {sent}\n'
        with self.reg.log_lock, open(self.reg.log_path, "a") as f:
            f.write(line)

    def _reply(self, status: int, body: bytes = b"", headers: Optional[dict[str, str]] = None) -> None:
        self.send_response(status)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Docker-Distribution-API-Version", "registry/2.0")
        self.end_headers()
        sent = 0
        if self.command != "HEAD":
            self.wfile.write(body)
            sent = len(body)
        self._log(status, sent)

    def _error(self, status: int, code: str, message: str) -> None:
        body = f'{{"errors":[{{"code":"{code}","message":"{message}"}}]}}'.encode()
        self._reply(status, body, {"Content-Type": "application/json"})

    def _body(self, limit: int) -> Optional[bytes]:
        n = int(self.headers.get("Content-Length") or 0)
        if n > limit:
            self._error(413, "SIZE_INVALID", "request body too large")
            return None
        return self.rfile.read(n)

    # -- reads

    def do_GET(self) -> None:
        if self.path == "/v2/":
            return self._reply(200, b"{}", {"Content-Type": "application/json"})
        if m := _BLOB.match(self.path):
            return self._blob(m[2])
        if m := _MANIFEST.match(self.path):
            return self._manifest(m[1], m[2])
        self._error(404, "NAME_UNKNOWN", "not found")

    do_HEAD = do_GET

    def _blob(self, digest: str) -> None:
        path = self.reg.blob_path(digest)
        try:
            size = os.path.getsize(path)
        except FileNotFoundError:
            return self._error(404, "BLOB_UNKNOWN", "blob unknown")
        span = _range(self.headers.get("Range"), size)
        if span is None:
            return self._error(416, "RANGE_INVALID", "bad range")
        start, end = span
        with open(path, "rb") as f:
            f.seek(start)
            data = f.read(end - start) if self.command != "HEAD" else b""
        headers = {"Content-Type": "application/octet-stream", "Docker-Content-Digest": digest}
        if self.headers.get("Range"):
            headers["Content-Range"] = f"bytes {start}-{end - 1}/{size}"
            status = 206
        else:
            status = 200
        if self.command == "HEAD":
            self.send_response(status)
            for k, v in headers.items():
                self.send_header(k, v)
            self.send_header("Content-Length", str(end - start))
            self.end_headers()
            self._log(status, 0)
            return
        self._reply(status, data, headers)

    def _manifest(self, repo: str, ref: str) -> None:
        try:
            with open(self.reg.manifest_path(repo, ref), "rb") as f:
                media_type, _, body = f.read().partition(b"\n")
        except FileNotFoundError:
            return self._error(404, "MANIFEST_UNKNOWN", "manifest unknown")
        digest = "sha256:" + hashlib.sha256(body).hexdigest()
        self._reply(200, body, {"Content-Type": media_type.decode(), "Docker-Content-Digest": digest})

    # -- writes

    def do_POST(self) -> None:
        m = _UPLOADS.match(self.path.split("?")[0])
        if not m:
            return self._error(404, "NAME_UNKNOWN", "not found")
        self._body(0)
        upload = uuid.uuid4().hex
        open(os.path.join(self.reg.root, "uploads", upload), "wb").close()
        self._reply(202, b"", {"Location": f"/v2/{m[1]}/blobs/uploads/{upload}", "Range": "0-0"})

    def do_PATCH(self) -> None:
        m = _UPLOAD.match(self.path.split("?")[0])
        if not m:
            return self._error(404, "BLOB_UPLOAD_UNKNOWN", "upload unknown")
        path = os.path.join(self.reg.root, "uploads", m[2])
        if not os.path.exists(path):
            return self._error(404, "BLOB_UPLOAD_UNKNOWN", "upload unknown")
        self._append(path)
        size = os.path.getsize(path)
        self._reply(202, b"", {"Location": f"/v2/{m[1]}/blobs/uploads/{m[2]}", "Range": f"0-{max(0, size - 1)}"})

    def _append(self, path: str) -> None:
        left = int(self.headers.get("Content-Length") or 0)
        with open(path, "ab") as f:
            while left > 0:
                block = self.rfile.read(min(left, 1 << 20))
                if not block:
                    break
                f.write(block)
                left -= len(block)

    def do_PUT(self) -> None:
        path, _, query = self.path.partition("?")
        if m := _UPLOAD.match(path):
            return self._finish_upload(m[1], m[2], query)
        if m := _MANIFEST.match(path):
            body = self._body(MAX_MANIFEST)
            if body is None:
                return
            media_type = self.headers.get("Content-Type", "application/vnd.oci.image.manifest.v1+json")
            digest = "sha256:" + hashlib.sha256(body).hexdigest()
            for ref in {m[2], digest}:
                _atomic(self.reg.manifest_path(m[1], ref), media_type.encode() + b"\n" + body)
            return self._reply(
                201, b"", {"Location": f"/v2/{m[1]}/manifests/{digest}", "Docker-Content-Digest": digest}
            )
        self._error(404, "NAME_UNKNOWN", "not found")

    def _finish_upload(self, repo: str, upload: str, query: str) -> None:
        part = os.path.join(self.reg.root, "uploads", upload)
        want = next((v for k, _, v in (q.partition("=") for q in query.split("&")) if k == "digest"), "")
        want = want.replace("%3A", ":").replace("%3a", ":")
        if not os.path.exists(part):
            return self._error(404, "BLOB_UPLOAD_UNKNOWN", "upload unknown")
        self._append(part)
        h = hashlib.sha256()
        with open(part, "rb") as f:
            while block := f.read(1 << 20):
                h.update(block)
        got = "sha256:" + h.hexdigest()
        if got != want:
            os.unlink(part)
            return self._error(400, "DIGEST_INVALID", f"content is {got}, not {want}")
        os.replace(part, self.reg.blob_path(got))
        self._reply(201, b"", {"Location": f"/v2/{repo}/blobs/{got}", "Docker-Content-Digest": got})


def _range(header: Optional[str], size: int) -> Optional[Tuple[int, int]]:
    """[start, end) of a `Range: bytes=a-b` header, the whole blob without one."""
    if not header:
        return 0, size
    m = _RANGE.match(header.strip())
    if not m:
        return None
    start = int(m[1])
    end = min(size, int(m[2]) + 1) if m[2] else size
    if start >= size or end <= start:
        return None
    return start, end


def _atomic(path: str, data: bytes) -> None:
    tmp = f"{path}.{uuid.uuid4().hex}"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)
