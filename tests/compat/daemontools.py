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
from pathlib import Path
from typing import Optional

import jsonschema
import yaml

import nydus_hybrid

DAEMON = [sys.executable, "-m", "nydus_hybrid.daemon"]

# --- the OpenAPI document ------------------------------------------------------------------

_SPEC: Optional[dict] = None


def spec() -> dict:
    global _SPEC
    if _SPEC is None:
        text = importlib.resources.files("nydus_hybrid.daemon").joinpath("openapi.yaml").read_text()
        _SPEC = yaml.safe_load(text)
    return _SPEC


def _lookup(ref: str) -> dict:
    assert ref.startswith("#/"), ref
    node = spec()
    for part in ref[2:].split("/"):
        node = node[part]
    return node


def to_json_schema(node):
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
        if "type" in out:
            out["type"] = [out["type"], "null"]
        if "enum" in out:
            out["enum"] = list(out["enum"]) + [None]
    return out


def response_spec(path: str, method: str, status: int) -> dict:
    op = spec()["paths"].get(path, {}).get(method.lower())
    assert op is not None, f"{method} {path} is not in openapi.yaml"
    resp = op["responses"].get(str(status)) or op["responses"].get("default")
    assert resp is not None, f"{method} {path} answered {status}, which openapi.yaml does not list"
    while "$ref" in resp:
        resp = _lookup(resp["$ref"])
    return resp


def validate(path: str, method: str, status: int, content_type: str, raw: bytes):
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

    def __init__(self, sock_path: str, timeout: float = 30.0):
        super().__init__("unix", timeout=timeout)
        self.sock_path = sock_path
        self.connects = 0

    def connect(self):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(self.timeout)
        s.connect(self.sock_path)
        self.sock = s
        self.connects += 1


class Reply:
    def __init__(self, status: int, headers, raw: bytes, body):
        self.status, self.headers, self.raw, self.body = status, headers, raw, body

    def __repr__(self):
        return f"Reply({self.status}, {self.raw[:300]!r})"


class ApiClient:
    """One keep-alive connection reused for every request, like the Go transport. Every
    answer is validated against openapi.yaml (unless `check=False`)."""

    def __init__(self, sock_path: str, timeout: float = 30.0):
        self.conn = UnixHTTPConnection(sock_path, timeout)

    def request(
        self,
        method: str,
        url: str,
        body=None,
        *,
        raw: Optional[bytes] = None,
        headers=None,
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

    def get(self, url, **kw):
        return self.request("GET", url, **kw)

    def put(self, url, body=None, **kw):
        return self.request("PUT", url, body, **kw)

    def post(self, url, body=None, **kw):
        return self.request("POST", url, body, **kw)

    def delete(self, url, **kw):
        return self.request("DELETE", url, **kw)

    def close(self):
        self.conn.close()


# --- images and configs --------------------------------------------------------------------


def make_tree(root: Path, tag: str = "") -> dict:
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
    def __init__(self, base: Path, tag: str = ""):
        self.src = base / "src"
        self.files = make_tree(self.src, tag)
        self.boot = base / "bootstrap"
        self.blobs = base / "blobs"
        nydus_hybrid.build(str(self.src), str(self.boot), str(self.blobs), progress=False)


def v1_config(device_id: str, blobs, cache_dir, **backend) -> dict:
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


def mount_cmd(boot, config: dict) -> dict:
    return {"fs_type": "rafs", "source": str(boot), "config": json.dumps(config)}


# --- the daemon process --------------------------------------------------------------------


def is_mounted(path) -> bool:
    path = os.path.realpath(path)
    with open("/proc/self/mountinfo") as f:
        return any(line.split()[4] == path for line in f)


def lazy_umount(path) -> None:
    if is_mounted(path):
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


class Daemon:
    """A daemon subprocess; `stop()` and `cleanup()` are safe to call more than once."""

    def __init__(self, workdir: Path, *, config: Optional[dict] = None, bootstrap=None, extra=()):
        self.workdir = Path(workdir)
        self.mnt = self.workdir / "mnt"
        self.mnt.mkdir(parents=True, exist_ok=True)
        self.sock = str(self.workdir / "api.sock")
        self.log = self.workdir / "daemon.log"
        argv = DAEMON + ["fuse", "--thread-num", "4"]
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

    def signal(self, sig) -> None:
        if self.alive():
            self.proc.send_signal(sig)

    def wait(self, timeout: float = 15.0) -> int:
        return self.proc.wait(timeout)

    def cleanup(self) -> None:
        stop_process(self.proc)
        self._logf.close()
        lazy_umount(self.mnt)


def stop_process(proc: subprocess.Popen, timeout: float = 10.0) -> None:
    """SIGTERM (a daemon unmounts on it), SIGKILL if it hangs; always reaped."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout)


def read_uncached(path, timeout: float = 20.0) -> subprocess.CompletedProcess:
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
    return subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, timeout=timeout)


def daemon_version_commit() -> str:
    out = subprocess.run(DAEMON + ["--version"], capture_output=True, text=True, timeout=30, check=True).stdout
    for line in out.splitlines():
        if line.startswith("Git Commit:"):
            return line.split(":", 1)[1].strip()
    raise AssertionError(f"no Git Commit line in --version output: {out!r}")


def copy_json(doc):
    return copy.deepcopy(doc)
