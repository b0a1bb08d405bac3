"""Lazy reads from a real OCI registry (Debian's docker-registry on 127.0.0.1), with the blob
pushed by our own upload code: anonymous, htpasswd basic auth and the Bearer-token flow,
TLS, caching across processes, and the faults a registry can throw at a reader."""

from __future__ import annotations

import base64
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Dict, List, Type

import pytest

import nydus_hybrid
from nydus_hybrid import errors
from nydus_hybrid.blobs import push_blob
from tests.helpers.blobcache import ready_chunks
from tests.helpers.images import REGISTRY_CHUNK

KiB = 1 << 10
REPO = "nydus/lazy"


def b64auth(user: str, password: str) -> str:
    return base64.b64encode(f"{user}:{password}".encode()).decode()


def registry_backend(reg, *, auth: bool = True, password: str | None = None, **extra) -> Dict[str, Any]:
    cfg = {"scheme": reg.scheme, "host": reg.host, "repo": REPO, "timeout": 5, "connect_timeout": 2}
    if auth and reg.user:
        cfg["auth"] = b64auth(reg.user, reg.password if password is None else password)
    if getattr(reg, "ca_cert_path", None):
        cfg["ca_cert_files"] = [str(reg.ca_cert_path)]
    cfg.update(extra)
    return cfg


def config(
    backend: Dict[str, Any], cache, *, kind: str = "registry", amplify: int = 0, validate: bool = False
) -> Dict[str, Any]:
    return {
        "version": 2,
        "backend": {"type": kind, kind: backend},
        "cache": {"type": "blobcache", "filecache": {"work_dir": str(cache)}, "validate": validate},
        "rafs": {"batch_size": amplify},
    }


def push(reg, image, **backend_extra) -> str:
    root, report, _ = image
    cfg = config(registry_backend(reg, **backend_extra), "/unused")
    digest, sent = push_blob(cfg, root / "blobs" / report.blob_id)
    assert sent and digest == f"sha256:{report.blob_id}"
    return digest


def blob_gets(reg, digest: str) -> int:
    """Successful GETs of the blob the registry logged (polls: the log trails the reply)."""
    time.sleep(0.3)
    return sum(1 for m, path, status in reg.request_log() if m == "GET" and digest in path and status in (200, 206))


def open_image(image, cfg):
    root, _, _ = image
    return nydus_hybrid.Image.open(root / "boot", config=cfg)


def assert_lazy_then_cached(image, reg, digest, cfg):
    """Reading one small file fetches one chunk; every file then reads byte-identical; a
    second pass and a restarted reader process make no backend request at all."""
    root, report, files = image
    im = open_image(image, cfg)
    assert im.read("/small") == files["/small"]
    m = im.metrics()
    assert m["backend"]["backend_type"] == "registry"
    assert m["blobcache"]["chunk_misses"] == 1 and m["blobcache"]["fills"] == 1, m["blobcache"]
    assert m["backend"]["read_amount_total"] < 64 * KiB + report.chunks * 200  # one tiny chunk + blob meta
    for path, data in files.items():
        assert im.read(path) == data, path
    warm = im.metrics()["backend"]["read_count"]
    gets = blob_gets(reg, digest)
    for path, data in files.items():
        assert im.read(path) == data
    assert im.metrics()["backend"]["read_count"] == warm
    del im
    code = (
        "import sys, json, hashlib, nydus_hybrid\n"
        "im = nydus_hybrid.Image.open(sys.argv[1], config=sys.argv[2])\n"
        "sums = {p: hashlib.sha256(im.read(p)).hexdigest() for p in sys.argv[3:]}\n"
        "print(json.dumps({'sums': sums, 'metrics': im.metrics()}))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(root / "boot"), json.dumps(cfg), *files],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    doc = json.loads(out.stdout)
    assert doc["metrics"]["backend"]["read_count"] == 0
    assert doc["metrics"]["backend"]["requests_total"] == 0
    import hashlib

    assert doc["sums"] == {p: hashlib.sha256(d).hexdigest() for p, d in files.items()}
    assert blob_gets(reg, digest) == gets, "the restarted reader went to the registry"


def test_anonymous_registry_lazy_read(registry, image, tmp_path):
    digest = push(registry, image)
    assert_lazy_then_cached(image, registry, digest, config(registry_backend(registry), tmp_path / "cache"))


def test_basic_auth_lazy_read_and_idempotent_push(registry_htpasswd, image, tmp_path):
    reg = registry_htpasswd
    digest = push(reg, image)
    root, report, _ = image
    # the registry has it now: a second push sends nothing
    again = push_blob(config(registry_backend(reg), "/unused"), root / "blobs" / report.blob_id)
    assert again == (digest, False)
    assert_lazy_then_cached(image, reg, digest, config(registry_backend(reg), tmp_path / "cache"))


def test_bearer_token_flow_with_chunked_upload(make_registry, image, tmp_path):
    reg = make_registry(auth="token", token_expires_in=4)
    root, report, files = image
    digest, sent = push_blob(
        config(registry_backend(reg), "/unused"), root / "blobs" / report.blob_id, chunk_size=700 * KiB
    )
    assert sent and digest == f"sha256:{report.blob_id}"
    patches = [p for m, p, s in reg.request_log() if m == "PATCH" and s == 202]
    assert len(patches) >= 2, "the chunked upload did not send PATCH requests"
    issued = reg.token_requests
    assert issued >= 1
    im = open_image(image, config(registry_backend(reg), tmp_path / "cache"))
    assert im.read("/small") == files["/small"]
    # the token expires; the next read fetches a new one instead of failing
    time.sleep(4.5)
    assert im.read("/dir/big3") == files["/dir/big3"]
    assert reg.token_requests > issued + 1
    del im
    assert_lazy_then_cached(image, reg, digest, config(registry_backend(reg), tmp_path / "cache2"))


@pytest.mark.parametrize("auth", ["htpasswd", "token"])
def test_wrong_credentials_give_an_auth_error(make_registry, image, tmp_path, auth):
    reg = make_registry(auth=auth)
    push(reg, image)
    im = open_image(image, config(registry_backend(reg, password="wrong"), tmp_path / "cache"))
    with pytest.raises(errors.AuthError) as e:
        im.read("/small")
    assert reg.host in str(e.value) or "token endpoint" in str(e.value)
    assert e.value.errno == 13  # EACCES
    # no credentials at all: also a clear auth error
    im = open_image(image, config(registry_backend(reg, auth=False), tmp_path / "cache2"))
    with pytest.raises(errors.AuthError):
        im.read("/small")


def test_registry_stopped_mid_read_then_recovers(registry_htpasswd, image, tmp_path):
    reg = registry_htpasswd
    push(reg, image)
    _root, _report, files = image
    im = open_image(image, config(registry_backend(reg, timeout=3, connect_timeout=2), tmp_path / "cache"))
    data = files["/dir/big1"]
    assert im.read("/dir/big1", 0, REGISTRY_CHUNK) == data[:REGISTRY_CHUNK]  # first part of the file arrives
    reg.stop()
    t = time.monotonic()
    with pytest.raises(errors.BackendError) as e:
        im.read("/dir/big1", REGISTRY_CHUNK, len(data))
    assert time.monotonic() - t < 30, "the read hung"
    assert reg.host in str(e.value)
    reg.start()
    assert im.read("/dir/big1") == data


def test_frozen_registry_times_out_then_recovers(registry, image, tmp_path):
    """SIGSTOP keeps the socket open but unanswered: only the read timeout can end it."""
    push(registry, image)
    _, _, files = image
    im = open_image(image, config(registry_backend(registry, timeout=2, connect_timeout=2), tmp_path / "cache"))
    assert im.read("/small") == files["/small"]
    registry.signal(signal.SIGSTOP)
    try:
        t = time.monotonic()
        with pytest.raises(errors.BackendTimeoutError):
            im.read("/dir/big2")
        assert time.monotonic() - t < 30, "the read hung"
    finally:
        registry.signal(signal.SIGCONT)
    assert im.read("/dir/big2") == files["/dir/big2"]


def test_corrupted_blob_gives_digest_error_and_is_not_cached(registry, image, tmp_path):
    digest = push(registry, image)
    _root, report, files = image
    path = registry.blob_path(digest)
    good = path.read_bytes()
    bad = bytearray(good)
    bad[10] ^= 0xFF  # inside the first stored chunk
    path.write_bytes(bytes(bad))
    cache = tmp_path / "cache"
    im = open_image(image, config(registry_backend(registry), cache))
    failed = []
    for p, data in files.items():
        try:
            assert im.read(p) == data, f"wrong bytes for {p}"
        except errors.CorruptImageError:
            failed.append(p)
    assert len(failed) == 1, failed  # exactly the file that owns the damaged chunk
    assert im.metrics()["blobcache"]["fills"] == report.chunks - 1
    assert ready_chunks(cache / f"{report.blob_id}.chunk_map", report.chunks).count(False) == 1
    path.write_bytes(good)
    assert im.read(failed[0]) == files[failed[0]]


def test_tls_with_ca_file_and_skip_verify(registry_tls, image, tmp_path):
    reg = registry_tls
    push(reg, image)
    _, _, files = image
    im = open_image(image, config(registry_backend(reg), tmp_path / "c1"))
    assert im.read("/small") == files["/small"]
    # without the CA the certificate is refused...
    no_ca = registry_backend(reg)
    no_ca.pop("ca_cert_files")
    im = open_image(image, config(no_ca, tmp_path / "c2"))
    with pytest.raises(errors.BackendError) as e:
        im.read("/small")
    assert "certificate" in str(e.value).lower()
    # ...unless verification is skipped on purpose
    im = open_image(image, config({**no_ca, "skip_verify": True}, tmp_path / "c3"))
    assert im.read("/other") == files["/other"]


def test_docker_config_json_credentials(registry_htpasswd, image, tmp_path, monkeypatch):
    reg = registry_htpasswd
    push(reg, image)
    _, _, files = image
    (tmp_path / "docker").mkdir()
    (tmp_path / "docker" / "config.json").write_text(
        json.dumps({"auths": {reg.host: {"auth": b64auth(reg.user, reg.password)}}})
    )
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "docker"))
    im = open_image(image, config(registry_backend(reg, auth=False), tmp_path / "cache"))
    assert im.read("/small") == files["/small"]


def test_mirror_serves_before_the_origin(make_registry, image, tmp_path):
    origin, mirror = make_registry(), make_registry()
    digest = push(origin, image)
    push(mirror, image)
    _, _, files = image
    backend = registry_backend(origin, mirrors=[{"host": mirror.url, "headers": {"X-Test-Mirror": "1"}}])
    im = open_image(image, config(backend, tmp_path / "cache"))
    assert im.read("/dir/big4") == files["/dir/big4"]
    assert blob_gets(mirror, digest) > 0 and blob_gets(origin, digest) == 0
    # the mirror goes away: the origin takes over
    mirror.stop()
    assert im.read("/dir/big5") == files["/dir/big5"]
    assert blob_gets(origin, digest) > 0


def test_forward_proxy_used_when_up_origin_when_down(registry, proxy, image, tmp_path):
    digest = push(registry, image)
    _, _, files = image
    backend = registry_backend(registry, proxy={"url": proxy.url, "fallback": True, "check_interval": 1})
    im = open_image(image, config(backend, tmp_path / "cache"))
    assert im.read("/dir/big0") == files["/dir/big0"]
    through_proxy = [u for m, u in proxy.requests if digest in u]
    assert through_proxy and all(u.startswith(f"http://{registry.host}/") for u in through_proxy)
    direct = blob_gets(registry, digest)
    proxy.stop()
    assert im.read("/dir/big1") == files["/dir/big1"]
    assert blob_gets(registry, digest) > direct
    # without fallback, a dead proxy is an error, not a silent bypass
    strict = registry_backend(registry, proxy={"url": proxy.url, "fallback": False})
    im = open_image(image, config(strict, tmp_path / "cache2"))
    with pytest.raises(errors.BackendError):
        im.read("/dir/big2")


class _Server(ThreadingHTTPServer):
    """A test server and the state its handler uses (set by the test)."""

    auth = ""  # _RedirectingRegistry: the basic credentials it demands
    storage_port = 0  # ... and the port of the storage it redirects to
    blob = b""  # _Storage: the blob it serves
    seen: List[Dict[str, str]]  # ... and the headers of each request it was sent


class _RedirectingRegistry(BaseHTTPRequestHandler):
    """A minimal registry front that demands basic auth and redirects blob reads to a
    separate storage server, as registries backed by object storage do."""

    def log_message(self, *args):
        pass

    def do_GET(self):
        srv = self.server
        assert isinstance(srv, _Server), srv
        if self.headers.get("Authorization") != f"Basic {srv.auth}":
            self.send_response(401)
            self.send_header("WWW-Authenticate", 'Basic realm="test"')
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self.send_response(307)
        self.send_header("Location", f"http://127.0.0.1:{srv.storage_port}/data?sig=abc")
        self.send_header("Content-Length", "0")
        self.end_headers()

    do_HEAD = do_GET


class _Storage(BaseHTTPRequestHandler):
    """Serves the blob with Range support and records the headers it was sent."""

    def log_message(self, *args):
        pass

    def do_GET(self):
        srv = self.server
        assert isinstance(srv, _Server), srv
        srv.seen.append({k.lower(): v for k, v in self.headers.items()})
        rng = self.headers.get("Range")
        data = srv.blob
        if rng:
            lo, hi = (int(x) for x in rng.split("=")[1].split("-"))
            self.send_response(206)
            body = data[lo : hi + 1]
            self.send_header("Content-Range", f"bytes {lo}-{hi}/{len(data)}")
        else:
            self.send_response(200)
            body = data
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command == "GET":
            self.wfile.write(body)

    do_HEAD = do_GET


def _serve(handler: Type[BaseHTTPRequestHandler]) -> _Server:
    srv = _Server(("127.0.0.1", 0), handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv


def test_redirect_is_followed_without_the_registry_credentials(image, tmp_path):
    root, report, files = image
    storage = _serve(_Storage)
    storage.blob, storage.seen = (root / "blobs" / report.blob_id).read_bytes(), []
    front = _serve(_RedirectingRegistry)
    front.auth, front.storage_port = b64auth("u", "p"), storage.server_address[1]
    try:
        backend = {
            "scheme": "http",
            "host": f"127.0.0.1:{front.server_address[1]}",
            "repo": REPO,
            "auth": front.auth,
            "timeout": 5,
        }
        im = open_image(image, config(backend, tmp_path / "cache"))
        assert im.read("/dir/big2") == files["/dir/big2"]
        assert storage.seen, "the redirect was not followed"
        assert not any("authorization" in h for h in storage.seen), "credentials leaked to the storage"
    finally:
        front.shutdown()
        storage.shutdown()


@pytest.mark.slow
def test_kill_9_during_registry_fills_never_serves_wrong_bytes(registry, image, tmp_path):
    push(registry, image)
    root, _, files = image
    cfg = json.dumps(config(registry_backend(registry), tmp_path / "cache", amplify=1 << 20))
    filler = (
        "import sys, nydus_hybrid\n"
        "im = nydus_hybrid.Image.open(sys.argv[1], config=sys.argv[2])\n"
        "for p in sys.argv[3:]:\n"
        "    im.read(p)\n"
    )
    rnd = random.Random(5)
    for round_ in range(int(os.environ.get("NYDUS_KILL_ROUNDS", "20"))):
        if round_ % 5 == 0:
            for f in (tmp_path / "cache").glob("*.chunk_map"):
                f.unlink()
        order = list(files)
        rnd.shuffle(order)
        proc = subprocess.Popen([sys.executable, "-c", filler, str(root / "boot"), cfg, *order])
        time.sleep(rnd.uniform(0.05, 0.5))
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        im = nydus_hybrid.Image.open(root / "boot", config=cfg)
        for p, data in files.items():
            assert im.read(p) == data, f"round {round_}: wrong bytes for {p}"
        del im


def test_cli_push_blob_then_check_through_the_registry(registry_htpasswd, image, tmp_path):
    reg = registry_htpasswd
    root, report, _ = image
    cfg = tmp_path / "cfg.json"
    cfg.write_text(json.dumps(config(registry_backend(reg), tmp_path / "cache")))
    run = [sys.executable, "-m", "nydus_hybrid"]
    out = subprocess.run(
        [*run, "push-blob", "-C", cfg, "--chunk-size", "1M", root / "blobs" / report.blob_id],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == {"digest": f"sha256:{report.blob_id}", "uploaded": True}
    out = subprocess.run([*run, "check", "-B", root / "boot", "-C", cfg], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and f"{report.chunks} chunks verified" in out.stdout, out.stderr


@pytest.mark.parametrize("auth_through", [False, True])
def test_mirror_sees_origin_credentials_only_with_auth_through(image, tmp_path, auth_through):
    root, report, files = image
    mirror = _serve(_Storage)  # answers any blob path with the blob's bytes, recording headers
    mirror.blob, mirror.seen = (root / "blobs" / report.blob_id).read_bytes(), []
    try:
        backend = {
            "scheme": "http",
            "host": "127.0.0.1:9",
            "repo": REPO,
            "registry_token": "origin-secret",
            "timeout": 5,
            "mirrors": [{"host": f"http://127.0.0.1:{mirror.server_address[1]}", "auth_through": auth_through}],
        }
        im = open_image(image, config(backend, tmp_path / "cache"))
        assert im.read("/dir/big0") == files["/dir/big0"]
        sent = [h.get("authorization") for h in mirror.seen]
        assert sent and all(a == ("Bearer origin-secret" if auth_through else None) for a in sent), sent
    finally:
        mirror.shutdown()


def test_concurrent_readers_of_one_file_fetch_each_chunk_once(registry, image, tmp_path):
    digest = push(registry, image)
    _, _, files = image
    im = open_image(image, config(registry_backend(registry), tmp_path / "cache"))
    im.read("/small")  # blob meta loaded; from here on every GET is a chunk
    before = blob_gets(registry, digest)
    data = files["/dir/big5"]
    results = []
    threads = [threading.Thread(target=lambda: results.append(im.read("/dir/big5"))) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [data] * 8
    chunks = len(data) // REGISTRY_CHUNK
    assert im.metrics()["blobcache"]["fills"] == 1 + chunks
    assert blob_gets(registry, digest) - before == chunks
