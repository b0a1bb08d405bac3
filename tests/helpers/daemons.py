"""Helpers for the daemon API tests: start `python -m nydus_hybrid.daemon` the way
nydus-snapshotter does, talk HTTP/1.1 to its unix socket the way the Go client does (one
keep-alive connection, `http://unix/api/...`, bodyless PUTs with `Content-Length: 0`), and
check every JSON answer against the daemon's own `openapi.yaml`."""

from __future__ import annotations

import copy
import http.client
import importlib.resources
import json
import os
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any, Dict, Optional, Sequence, Union

import jsonschema
import yaml

import nydus_hybrid
from nydus_hybrid.waits import scaled
from tests.helpers.mounts import is_mounted as is_mounted  # re-exported: the daemon tests use it from here

# A path argument as the tests pass it.
StrPath = Union[str, "os.PathLike[str]"]

DAEMON = [sys.executable, "-m", "nydus_hybrid.daemon"]

# --- the OpenAPI document ------------------------------------------------------------------

_SPEC: Optional[Dict[str, Any]] = None


def spec() -> Dict[str, Any]:
    global _SPEC
    if _SPEC is None:
        text = importlib.resources.files("nydus_hybrid.daemon").joinpath("openapi.yaml").read_text()
        _SPEC = yaml.safe_load(text)
        assert isinstance(_SPEC, dict), "openapi.yaml is not a mapping"
    return _SPEC


def _lookup(ref: str) -> Dict[str, Any]:
    assert ref.startswith("#/"), ref
    node = spec()
    for part in ref[2:].split("/"):
        node = node[part]
    return node


def to_json_schema(node: Any) -> Any:
    """An OpenAPI 3.0 schema object as plain JSON Schema: $refs inlined, `nullable` turned
    into a "null" type (jsonschema knows neither)."""
    if isinstance(node, list):
        return [to_json_schema(n) for n in node]
    if not isinstance(node, dict):
        return node
    if "$ref" in node:
        return to_json_schema(_lookup(node["$ref"]))
    out = {k: to_json_schema(v) for k, v in node.items() if k not in ("nullable", "example", "deprecated")}
    if node.get("nullable"):
        if "type" not in out:  # e.g. a nullable allOf/$ref wrapper
            return {"anyOf": [out, {"type": "null"}]}
        out["type"] = [out["type"], "null"]
        if "enum" in out:
            out["enum"] = [*out["enum"], None]
    return out


def response_spec(path: str, method: str, status: int) -> Dict[str, Any]:
    op = spec()["paths"].get(path, {}).get(method.lower())
    assert op is not None, f"{method} {path} is not in openapi.yaml"
    resp = op["responses"].get(str(status)) or op["responses"].get("default")
    assert resp is not None, f"{method} {path} answered {status}, which openapi.yaml does not list"
    while "$ref" in resp:
        resp = _lookup(resp["$ref"])
    assert isinstance(resp, dict), resp
    return resp


def validate(path: str, method: str, status: int, content_type: str, raw: bytes) -> Any:
    """Check one response against openapi.yaml; returns the decoded body (None for 204)."""
    resp = response_spec(path, method, status)
    content = resp.get("content")
    if status == 204 or not content:
        assert raw == b"", f"{method} {path} {status}: expected no body, got {raw[:200]!r}"
        return None
    media = content_type.split(";")[0].strip()
    assert media in content, f"{method} {path} {status}: content type {content_type!r} not in {list(content)}"
    if media != "application/json":
        return raw.decode()
    doc = json.loads(raw)
    schema = to_json_schema(content[media]["schema"])
    jsonschema.Draft7Validator(schema).validate(doc)
    return doc


# --- HTTP/1.1 over the unix socket ---------------------------------------------------------


class UnixHTTPConnection(http.client.HTTPConnection):
    """http.client over AF_UNIX; the host ("unix") only fills the Host header, as in Go."""

    def __init__(self, sock_path: str, timeout: float = 30.0) -> None:
        super().__init__("unix", timeout=timeout)
        self.sock_path = sock_path
        self.connects = 0

    def connect(self) -> None:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(self.timeout)
        s.connect(self.sock_path)
        self.sock = s
        self.connects += 1


class Reply:
    def __init__(self, status: int, headers: http.client.HTTPMessage, raw: bytes, body: Any) -> None:
        self.status, self.headers, self.raw, self.body = status, headers, raw, body

    def __repr__(self) -> str:
        return f"Reply({self.status}, {self.raw[:300]!r})"


class ApiClient:
    """One keep-alive connection reused for every request, like the Go transport. Every
    answer is validated against openapi.yaml (unless `check=False`)."""

    def __init__(self, sock_path: str, timeout: float = 30.0) -> None:
        self.conn = UnixHTTPConnection(sock_path, timeout)

    def request(
        self,
        method: str,
        url: str,
        body: Any = None,
        *,
        raw: Optional[bytes] = None,
        headers: Optional[Dict[str, str]] = None,
        check: bool = True,
        keepalive: bool = True,
    ) -> Reply:
        """`body` is JSON-encoded, `raw` sent as is. Like Go's net/http: the request target is
        the path (Host: unix), bodyless PUT/POST carry `Content-Length: 0`, bodyless GET and
        DELETE no Content-Length at all."""
        data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
        hdrs = {"Accept": "application/json"}
        if data:
            hdrs["Content-Type"] = "application/json"
        elif method in ("PUT", "POST", "PATCH"):
            hdrs["Content-Length"] = "0"
            data = None
        hdrs.update(headers or {})
        target = url[len("http://unix") :] if url.startswith("http://unix") else url
        self.conn.request(method, target, body=data, headers=hdrs)
        resp = self.conn.getresponse()
        payload = resp.read()
        if keepalive:
            assert not resp.will_close, f"{method} {url}: the server asked to close the connection"
        path = target.split("?")[0]
        ctype = resp.getheader("Content-Type", "")
        doc: Any
        if check:
            doc = validate(path, method, resp.status, ctype, payload)
        else:
            doc = json.loads(payload) if payload and ctype.startswith("application/json") else payload
        if resp.status >= 400:
            assert ctype.startswith("application/json"), (resp.status, ctype, payload[:200])
            err = json.loads(payload)
            assert set(err) == {"code", "message"} and err["code"] == "UNDEFINED" and isinstance(err["message"], str), (
                err
            )
        assert resp.getheader("Server") == "Nydus API", (resp.status, resp.getheader("Server"))
        return Reply(resp.status, resp.headers, payload, doc)

    def get(self, url: str, **kw: Any) -> Reply:
        return self.request("GET", url, **kw)

    def put(self, url: str, body: Any = None, **kw: Any) -> Reply:
        return self.request("PUT", url, body, **kw)

    def post(self, url: str, body: Any = None, **kw: Any) -> Reply:
        return self.request("POST", url, body, **kw)

    def delete(self, url: str, **kw: Any) -> Reply:
        return self.request("DELETE", url, **kw)

    def close(self) -> None:
        self.conn.close()


# --- images and configs --------------------------------------------------------------------


def make_tree(root: Path, tag: str = "") -> Dict[str, bytes]:
    """A small tree; returns {relative path: bytes}. The big file spans three 1 MiB chunks."""
    files = {
        "hello.txt": f"hello from the daemon test {tag}\n".encode(),
        "dir/nested.txt": b"nested\n" * 100,
        "dir/big.bin": os.urandom(2_500_000),
    }
    for rel, data in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
    return files


class BuiltImage:
    def __init__(self, base: Path, tag: str = "") -> None:
        self.src = base / "src"
        self.files = make_tree(self.src, tag)
        self.boot = base / "bootstrap"
        self.blobs = base / "blobs"
        nydus_hybrid.build(str(self.src), str(self.boot), str(self.blobs), progress=False)


def v1_config(device_id: str, blobs: StrPath, cache_dir: StrPath, **backend: Any) -> Dict[str, Any]:
    """The v1 config the snapshotter writes for fuse daemons (localfs unless `backend`)."""
    be = backend or {"type": "localfs", "config": {"dir": str(blobs)}}
    return {
        "device": {
            "id": device_id,
            "backend": be,
            "cache": {"type": "blobcache", "config": {"work_dir": str(cache_dir)}},
        },
        "mode": "direct",
        "digest_validate": False,
    }


def mount_cmd(boot: StrPath, config: Dict[str, Any]) -> Dict[str, Any]:
    return {"fs_type": "rafs", "source": str(boot), "config": json.dumps(config)}


# --- the daemon process --------------------------------------------------------------------


def lazy_umount(path: StrPath) -> None:
    if is_mounted(path):
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


class Daemon:
    """A daemon subprocess; `stop()` and `cleanup()` are safe to call more than once."""

    def __init__(
        self,
        workdir: StrPath,
        *,
        config: Optional[Dict[str, Any]] = None,
        bootstrap: Optional[StrPath] = None,
        extra: Sequence[str] = (),
    ) -> None:
        self.workdir = Path(workdir)
        self.mnt = self.workdir / "mnt"
        self.mnt.mkdir(parents=True, exist_ok=True)
        self.sock = str(self.workdir / "api.sock")
        self.log = self.workdir / "daemon.log"
        argv = [*DAEMON, "fuse", "--thread-num", "4"]
        if config is not None:
            cfg = self.workdir / "config.json"
            cfg.write_text(json.dumps(config))
            argv += ["--config", str(cfg)]
        if bootstrap is not None:
            argv += ["--bootstrap", str(bootstrap)]
        argv += [
            "--mountpoint",
            str(self.mnt),
            "--apisock",
            self.sock,
            "--log-level",
            "info",
            "--failover-policy",
            "resend",
            *extra,
        ]
        self.argv = argv
        self._logf = open(self.log, "wb")
        self.proc = subprocess.Popen(argv, stdout=self._logf, stderr=subprocess.STDOUT)
        self._wait_running()

    def _wait_running(self, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"daemon exited with {self.proc.returncode}: {self.log_text()}")
            if os.path.exists(self.sock):
                c = ApiClient(self.sock, timeout=5)
                try:
                    if c.get("/api/v1/daemon", check=False).body["state"] == "RUNNING":
                        return
                except OSError:
                    pass
                finally:
                    c.close()
            time.sleep(0.05)
        raise AssertionError(f"daemon not RUNNING after {timeout}s: {self.log_text()}")

    def log_text(self) -> str:
        try:
            return self.log.read_text(errors="replace")[-4000:]
        except OSError:
            return ""

    def client(self) -> ApiClient:
        return ApiClient(self.sock)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def signal(self, sig: int) -> None:
        if self.alive():
            self.proc.send_signal(sig)

    def wait(self, timeout: float = 15.0) -> int:
        return self.proc.wait(timeout)

    def cleanup(self) -> None:
        stop_process(self.proc)
        self._logf.close()
        lazy_umount(self.mnt)


def stop_process(proc: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    """SIGTERM (a daemon unmounts on it), SIGKILL if it hangs; always reaped."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout)


def read_uncached(path: StrPath, timeout: float = 20.0) -> subprocess.CompletedProcess[bytes]:
    """Read a file in a child process (a hang cannot stall the test run) after dropping its
    page cache, so the bytes really come from the daemon."""
    code = (
        "import os,sys\n"
        "fd=os.open(sys.argv[1],os.O_RDONLY)\n"
        "os.posix_fadvise(fd,0,0,os.POSIX_FADV_DONTNEED)\n"
        "data=b''\n"
        "while True:\n"
        "    b=os.read(fd,1<<20)\n"
        "    if not b: break\n"
        "    data+=b\n"
        "sys.stdout.buffer.write(data)\n"
    )
    return subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, timeout=scaled(timeout))


def daemon_version_commit() -> str:
    out = subprocess.run([*DAEMON, "--version"], capture_output=True, text=True, timeout=30, check=True).stdout
    for line in out.splitlines():
        if line.startswith("Git Commit:"):
            return line.split(":", 1)[1].strip()
    raise AssertionError(f"no Git Commit line in --version output: {out!r}")


def copy_json(doc: Any) -> Any:
    return copy.deepcopy(doc)


# --- one shared daemon with an image mounted at /base (tests/compat/conftest.py `ctx`) -------
# The bad-input tests and the OpenAPI fuzz send their cases to it, and check after each that
# it still serves reads.

BASE = "/base"


class Ctx:
    """The module's daemon, the image mounted at /base, and one keep-alive client."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.image = BuiltImage(workdir / "image")
        self.daemon = Daemon(workdir / "daemon")
        self.client = self.daemon.client()
        r = self.client.post("http://unix/api/v1/mount?mountpoint=%2Fbase", self.cmd("/base"))
        assert r.status == 204, r
        self.big = self.daemon.mnt / "base" / "dir" / "big.bin"

    def config(self, device_id: str) -> Dict[str, Any]:
        return v1_config(device_id, self.image.blobs, self.workdir / "cache")

    def cmd(self, device_id: str, **overrides: Any) -> Dict[str, Any]:
        doc = mount_cmd(self.image.boot, self.config(device_id))
        doc.update(overrides)
        return doc


def assert_healthy(ctx: Ctx) -> None:
    """The daemon lives, answers, and serves fresh reads of the existing /base mount."""
    d = ctx.daemon
    assert d.alive(), f"the daemon died: {d.log_text()}"
    c = ApiClient(d.sock, timeout=10)
    try:
        info = c.get("http://unix/api/v1/daemon").body
        assert info["state"] == "RUNNING"
        assert BASE in info["backend_collection"]
        before = c.get("http://unix/api/v1/metrics?id=%2Fbase").body["data_read"]
        r = read_uncached(ctx.big)
        assert r.returncode == 0, r.stderr.decode()
        assert r.stdout == ctx.image.files["dir/big.bin"]
        after = c.get("http://unix/api/v1/metrics?id=%2Fbase").body["data_read"]
        assert after > before, "the read was not served by the daemon"
        # a lookup the kernel cannot have cached
        assert not os.path.exists(d.mnt / "base" / f"missing-{uuid.uuid4().hex}")
    finally:
        c.close()
