"""Hostile and careless input to a running shared daemon: malformed and mistyped bodies,
missing fields, unknown paths, wrong methods, huge bodies, bad mountpoints, broken
bootstraps and an unreachable backend. Every failure must be a JSON error
`{"code": "UNDEFINED", "message": ...}` with the status of spec §1.2, and after every case
the daemon must still be up and still serving reads through the mount it already had.
The command line's refusals are checked too."""

from __future__ import annotations

import json
import os
import select
import socket
import subprocess
import time

import pytest

from tests.helpers.daemons import (
    BASE,
    DAEMON,
    ApiClient,
    Ctx,
    assert_healthy,
    mount_cmd,
    read_uncached,
    spec,
    v1_config,
)

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or not os.path.exists("/dev/fuse"), reason="the daemon mounts FUSE: needs root and /dev/fuse"
)


@pytest.fixture(autouse=True)
def healthy_after(request):
    yield
    if "ctx" in request.fixturenames:
        assert_healthy(request.getfixturevalue("ctx"))


def expect_error(reply, status, *, contains: str = "") -> None:
    statuses = status if isinstance(status, tuple) else (status,)
    assert reply.status in statuses, reply
    body = json.loads(reply.raw)
    assert set(body) == {"code", "message"} and body["code"] == "UNDEFINED" and isinstance(body["message"], str), body
    assert contains in body["message"], body


def send(ctx: Ctx, method: str, url: str, body=None, *, raw=None, client=None, **kw):
    """Through the module's keep-alive client; answers outside the OpenAPI operations (wrong
    methods, unknown paths) are checked for the error shape only."""
    c = client or ctx.client
    path = url.split("?")[0]
    known = method.lower() in spec()["paths"].get(path, {})
    return c.request(method, "http://unix" + url, body, raw=raw, check=known, **kw)


# --- bodies ----------------------------------------------------------------------------------

BODY_ROUTES = [
    ("PUT", "/api/v1/daemon", 400),
    ("PUT", "/api/v2/daemon", 400),
    ("POST", "/api/v1/mount?mountpoint=%2Fnew", 400),
    ("PUT", "/api/v1/mount?mountpoint=%2Fbase", 400),
    ("PUT", "/api/v1/config?id=%2Fbase", 400),
    ("PUT", "/api/v2/blobs", 400),  # parsed before nydusd finds this is no fscache daemon (then 501)
]
MALFORMED = [
    b"",
    b"{",
    b"not json",
    b'{"log_level": ',
    b"\xff\xfe\x00",
    b"[1, 2]",
    b"null",
    b"42",
    b'"text"',
    b"{'single': 'quotes'}",
]


@pytest.mark.parametrize("method, url, status", BODY_ROUTES, ids=[f"{m} {u}" for m, u, _ in BODY_ROUTES])
@pytest.mark.parametrize("raw", MALFORMED, ids=[repr(m)[:20] for m in MALFORMED])
def test_malformed_json(ctx, method, url, status, raw):
    expect_error(send(ctx, method, url, raw=raw), status)


@pytest.mark.parametrize(
    "body, status",
    [
        ({"log_level": 5}, 400),
        ({"log_level": True}, 400),
        ({"log_level": ["debug"]}, 400),
        ({"log_level": None}, 400),
        ({}, 400),
        ({"level": "debug"}, 400),
        ({"log_level": "loud"}, 500),
        ({"log_level": ""}, 500),
    ],
)
def test_log_level_body(ctx, body, status):
    expect_error(send(ctx, "PUT", "/api/v1/daemon", body), status)


MOUNT_BODIES = [
    ("source-int", lambda c: c.cmd("/new", source=5), 400, ""),
    ("config-object", lambda c: c.cmd("/new", config=c.config("/new")), 400, ""),
    ("config-null", lambda c: c.cmd("/new", config=None), 400, "config"),
    ("fs-type-int", lambda c: c.cmd("/new", fs_type=7), 400, ""),
    ("prefetch-string", lambda c: c.cmd("/new", prefetch_files="/hello.txt"), 400, ""),
    ("prefetch-ints", lambda c: c.cmd("/new", prefetch_files=[1, 2]), (400, 500), ""),
    ("prefetch-relative", lambda c: c.cmd("/new", prefetch_files=["hello.txt"]), (400, 500), ""),
    ("empty", lambda c: {}, 400, "source"),
    ("no-config", lambda c: {"fs_type": "rafs", "source": str(c.image.boot)}, 400, "config"),
    ("no-source", lambda c: {"fs_type": "rafs", "config": json.dumps(c.config("/new"))}, 400, "source"),
    ("no-fs-type", lambda c: {"source": str(c.image.boot), "config": json.dumps(c.config("/new"))}, 500, ""),
    ("fs-type-ext4", lambda c: c.cmd("/new", fs_type="ext4"), 500, ""),
    ("fs-type-passthrough", lambda c: c.cmd("/new", fs_type="passthrough"), 501, ""),
    ("config-not-json", lambda c: c.cmd("/new", config="{nope"), 500, ""),
    ("config-no-backend", lambda c: c.cmd("/new", config=json.dumps({"device": {}, "mode": "direct"})), 500, ""),
    ("config-bad-mode", lambda c: c.cmd("/new", config=json.dumps(dict(c.config("/new"), mode="turbo"))), 500, ""),
    ("bootstrap-missing", lambda c: c.cmd("/new", source=str(c.workdir / "no-such-bootstrap")), 500, ""),
    ("bootstrap-dir", lambda c: c.cmd("/new", source=str(c.workdir)), 500, ""),
]


@pytest.mark.parametrize("make, status, contains", [m[1:] for m in MOUNT_BODIES], ids=[m[0] for m in MOUNT_BODIES])
def test_mount_body(ctx, make, status, contains):
    expect_error(send(ctx, "POST", "/api/v1/mount?mountpoint=%2Fnew", make(ctx)), status, contains=contains)
    assert "/new" not in send(ctx, "GET", "/api/v1/daemon").body["backend_collection"]
    assert not os.path.exists(ctx.daemon.mnt / "new")


@pytest.mark.parametrize("kind", ["random", "empty", "truncated", "flipped-superblock"])
def test_corrupt_bootstrap(ctx, kind, tmp_path):
    good = ctx.image.boot.read_bytes()
    data = {
        "random": os.urandom(64 << 10),
        "empty": b"",
        "truncated": good[:1500],
        "flipped-superblock": good[:1024] + bytes(b ^ 0xFF for b in good[1024:1152]) + good[1152:],
    }[kind]
    boot = tmp_path / "bootstrap"
    boot.write_bytes(data)
    r = send(ctx, "POST", "/api/v1/mount?mountpoint=%2Fbroken", ctx.cmd("/broken", source=str(boot)))
    expect_error(r, 500, contains="Mount")
    assert "/broken" not in send(ctx, "GET", "/api/v1/daemon").body["backend_collection"]


def test_remount_and_umount_of_unknown_instance(ctx):
    expect_error(
        send(ctx, "PUT", "/api/v1/mount?mountpoint=%2Fghost", ctx.cmd("/ghost")), 500, contains="doesn't exist"
    )
    expect_error(send(ctx, "DELETE", "/api/v1/mount?mountpoint=%2Fghost"), 500, contains="doesn't exist")


@pytest.mark.parametrize(
    "body, status",
    [
        ({"registry_auth": 5}, 400),
        ({"registry_auth": None}, 400),
        ({"registry_auth": {"user": "a"}}, 400),
        ({"unknown": "x"}, 500),
        ({"registry_auth": "YTpi", "bogus": "x"}, 500),
    ],
)
def test_config_body(ctx, body, status):
    expect_error(send(ctx, "PUT", "/api/v1/config?id=%2Fbase", body), status)


# --- paths, methods, queries -----------------------------------------------------------------

UNKNOWN_PATHS = [
    ("GET", "/"),
    ("GET", "/api"),
    ("GET", "/api/v1/nope"),
    ("GET", "/api/v3/daemon"),
    ("GET", "/api/v1/daemon/"),
    ("GET", "/API/V1/DAEMON"),
    ("GET", "/api/v1/metrics/nope"),
    ("PUT", "/api/v1/daemon/nope"),
    ("POST", "/api/v1/mount/base"),
    ("GET", "/api/v2/metrics"),
    ("DELETE", "/api/v1/daemon/fuse"),
    ("GET", "/api/v1/daemon%2Fevents"),
]


@pytest.mark.parametrize("method, url", UNKNOWN_PATHS, ids=[f"{m} {u}" for m, u in UNKNOWN_PATHS])
def test_unknown_path(ctx, method, url):
    expect_error(send(ctx, method, url), 404, contains="NoRoute")


WRONG_METHODS = [
    ("POST", "/api/v1/daemon"),
    ("DELETE", "/api/v1/daemon"),
    ("GET", "/api/v1/daemon/start"),
    ("GET", "/api/v1/daemon/exit"),
    ("POST", "/api/v1/daemon/exit"),
    ("DELETE", "/api/v1/daemon/exit"),
    ("POST", "/api/v1/metrics"),
    ("PUT", "/api/v1/metrics/inflight"),
    ("DELETE", "/api/v1/config"),
    ("PATCH", "/api/v1/mount?mountpoint=%2Fbase"),
    ("GET", "/api/v1/mount?mountpoint=%2Fbase"),
    ("POST", "/api/v2/blobs"),
    ("POST", "/api/v2/daemon"),
    ("GET", "/api/v1/daemon/fuse/sendfd"),
]


@pytest.mark.parametrize("method, url", WRONG_METHODS, ids=[f"{m} {u}" for m, u in WRONG_METHODS])
def test_wrong_method(ctx, method, url):
    expect_error(send(ctx, method, url), 400)


BODY_NOT_ALLOWED = [
    ("PUT", "/api/v1/daemon/start"),
    ("PUT", "/api/v1/daemon/exit"),
    ("PUT", "/api/v1/daemon/fuse/sendfd"),
    ("PUT", "/api/v1/daemon/fuse/takeover"),
    ("DELETE", "/api/v1/mount?mountpoint=%2Fbase"),
    ("GET", "/api/v1/daemon"),
    ("GET", "/api/v1/metrics?id=%2Fbase"),
    ("GET", "/api/v1/config"),
]


@pytest.mark.parametrize("method, url", BODY_NOT_ALLOWED, ids=[f"{m} {u}" for m, u in BODY_NOT_ALLOWED])
def test_body_where_none_belongs(ctx, method, url):
    """Bodyless requests refuse a body before acting: exit does not exit, DELETE keeps /base."""
    expect_error(send(ctx, method, url, {"surprise": True}), 400)


HUGE = [
    ("PUT", "/api/v1/config?id=%2Fbase"),
    ("POST", "/api/v1/mount?mountpoint=%2Fhuge"),
    ("PUT", "/api/v1/daemon"),
    ("PUT", "/api/v1/daemon/exit"),
    ("PUT", "/api/v1/daemon/start"),
    ("GET", "/api/v1/daemon"),
    ("GET", "/api/v1/nope"),
    ("DELETE", "/api/v1/mount?mountpoint=%2Fbase"),
]


@pytest.mark.parametrize("method, url", HUGE, ids=[f"{m} {u}" for m, u in HUGE])
def test_ten_megabyte_body(ctx, method, url):
    """The whole 10 MB goes out and a JSON 4xx comes back: no reset, no silent close."""
    body = b'{"registry_auth": "' + b"A" * (10 << 20) + b'"}'
    c = ApiClient(ctx.daemon.sock, timeout=30)
    try:
        r = send(ctx, method, url, raw=body, client=c, keepalive=False)
        assert 400 <= r.status < 500, r
        expect_error(r, r.status)
    finally:
        c.close()


MOUNTPOINTS = [
    "snap",
    "..%2Fx",
    "%2F..",
    "%2F..%2Fbase",
    "%2Fa%2F..%2Fb",
    "%2F.",
    "%2Fa%2F.%2Fb",
    "",
    "%00",
    "%2Fa%00b",
]


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "GET"])
@pytest.mark.parametrize("mp", [*MOUNTPOINTS, None], ids=[repr(m) for m in MOUNTPOINTS] + ["absent"])
def test_bad_mountpoint(ctx, method, mp):
    path = "/api/v1/daemon/backend" if method == "GET" else "/api/v1/mount"
    url = path if mp is None else f"{path}?mountpoint={mp}"
    body = ctx.cmd("/x") if method in ("POST", "PUT") else None
    expect_error(send(ctx, method, url, body), 400)
    assert sorted(send(ctx, "GET", "/api/v1/daemon").body["backend_collection"]) == [BASE]


@pytest.mark.parametrize(
    "url",
    [
        "/api/v1/metrics?id=nope",
        "/api/v1/metrics?id=",
        "/api/v1/metrics?id=base",
        "/api/v1/metrics/backend?id=%2Fnope",
        "/api/v1/metrics/blobcache?id=%2Fnope",
        "/api/v1/metrics/files?id=%2Fnope",
        "/api/v1/metrics/pattern?id=%2Fnope",
    ],
)
def test_unknown_metrics_id(ctx, url):
    expect_error(send(ctx, "GET", url), 404)


def test_one_connection_survived_all_errors(ctx):
    """Every case above used the module's one keep-alive connection (except the 10 MB ones)."""
    assert send(ctx, "GET", "/api/v1/daemon").status == 200
    assert ctx.client.conn.connects == 1


# --- below HTTP ------------------------------------------------------------------------------


def _raw_exchange(sock_path: str, data: bytes, timeout: float = 5.0) -> bytes:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        s.connect(sock_path)
        s.sendall(data)
        reply = b""
        while True:  # every exchange here ends with the server closing
            chunk = s.recv(65536)
            if not chunk:
                return reply
            reply += chunk
    finally:
        s.close()


def test_a_header_that_never_ends_is_refused_while_it_streams(ctx):
    """The parser keeps a header's bytes until its line ends: the server must stop reading
    after its head limit (about 128 KiB) rather than buffer 16 MiB, answer 400 and close."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(10)
    try:
        s.connect(ctx.daemon.sock)
        s.sendall(b"GET /api/v1/daemon HTTP/1.1\r\nX-Endless: ")
        sent = 0
        while sent < 16 << 20 and not select.select([s], [], [], 0)[0]:  # until it answers
            s.sendall(b"a" * 65536)
            sent += 65536
        assert sent < 16 << 20, "the server read a 16 MiB header without refusing it"
        reply = b""
        while chunk := s.recv(65536):
            reply += chunk
    finally:
        s.close()
    assert reply.split()[1] == b"400", reply[:200]
    assert send(ctx, "GET", "/api/v1/daemon").body["state"] == "RUNNING"


def test_an_upgrade_is_ignored_and_the_connection_then_closes(ctx):
    reply = _raw_exchange(
        ctx.daemon.sock, b"GET /api/v1/daemon HTTP/1.1\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n"
    )
    head, _, body = reply.partition(b"\r\n\r\n")
    assert head.split()[1] == b"200" and b"connection: close" in head.lower(), head
    assert json.loads(body)["state"] == "RUNNING"


@pytest.mark.parametrize(
    "data",
    [
        b"GARBAGE\r\n\r\n",
        b"GET / HTTP/9.9\r\n\r\n",
        b"\x00\x01\x02\x03\r\n\r\n",
        b"PUT /api/v1/config HTTP/1.1\r\nContent-Length: -5\r\n\r\n",
        b"GET /api/v1/daemon HTTP/1.1\r\nHost: unix\r\n" + b"X-Long: " + b"a" * 70000 + b"\r\n\r\n",
        b"GET /api/v1/daemon HTTP/1.1\r\n" + b"".join(b"X-%d: v\r\n" % i for i in range(101)) + b"\r\n",
        b"GET //[ HTTP/1.1\r\nHost: unix\r\n\r\n",
    ],
    ids=["garbage", "http-9.9", "binary", "negative-length", "huge-header", "101-headers", "bad-ipv6-url"],
)
def test_protocol_garbage(ctx, data):
    reply = _raw_exchange(ctx.daemon.sock, data)
    # the HTTP parser's refusal, still in the API's JSON error shape; never silence
    assert reply.startswith(b"HTTP/1.") and reply.split()[1] == b"400", reply[:200]
    head, _, body = reply.partition(b"\r\n\r\n")
    assert b"application/json" in head.lower(), head
    doc = json.loads(body)
    assert doc["code"] == "UNDEFINED" and doc["message"], doc
    assert send(ctx, "GET", "/api/v1/daemon").body["state"] == "RUNNING"


@pytest.mark.parametrize(
    "request_line, host",
    [
        (b"GET http://unix/api/v1/daemon HTTP/1.1", b"unix"),  # absolute form
        (b"GET /api/v1/daemon HTTP/1.1", b"localhost"),  # curl --unix-socket S http://localhost/...
        (b"GET /api/v1/daemon?ignored=1 HTTP/1.1", b"whatever.example"),
    ],
)
def test_host_is_ignored(ctx, request_line, host):
    reply = _raw_exchange(ctx.daemon.sock, request_line + b"\r\nHost: " + host + b"\r\nConnection: close\r\n\r\n")
    assert reply.startswith(b"HTTP/1.1 200"), reply[:200]
    assert b'"state": "RUNNING"' in reply


def test_expect_100_continue(ctx):
    """curl's large-body handshake: a 100 Continue (or none), then the real answer."""
    body = json.dumps({"proxy_url": ""}).encode()
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(5)
    try:
        s.connect(ctx.daemon.sock)
        s.sendall(
            b"PUT /api/v1/config?id=%2Fbase HTTP/1.1\r\nHost: unix\r\nContent-Type: application/json\r\n"
            b"Expect: 100-continue\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n"
        )
        s.settimeout(1)
        try:
            first = s.recv(4096)
        except socket.timeout:
            first = b""
        s.settimeout(5)
        s.sendall(body)
        rest = first
        while b"HTTP/1.1 204" not in rest and b"HTTP/1.1 4" not in rest and b"HTTP/1.1 5" not in rest:
            chunk = s.recv(4096)
            assert chunk, rest
            rest += chunk
        assert b"HTTP/1.1 204" in rest, rest
    finally:
        s.close()


# --- an unreachable backend ------------------------------------------------------------------


def test_unreachable_registry_gives_eio_not_a_hang(ctx):
    backend = {
        "type": "registry",
        "config": {
            "host": "127.0.0.1:9",
            "repo": "test/unreachable",
            "scheme": "http",
            "timeout": 2,
            "connect_timeout": 2,
            "retry_limit": 0,
            "proxy": {"fallback": False},
        },
    }
    cfg = v1_config("/reg", ctx.image.blobs, ctx.workdir / "cache-reg", **backend)
    r = send(ctx, "POST", "/api/v1/mount?mountpoint=%2Freg", mount_cmd(ctx.image.boot, cfg))
    if r.status != 204:  # refusing at mount time is fine too, as a JSON error
        expect_error(r, 500)
        return
    try:
        assert sorted(os.listdir(ctx.daemon.mnt / "reg")) == ["dir", "hello.txt"]  # metadata is local
        for rel in ("dir/big.bin", "hello.txt"):
            t0 = time.monotonic()
            res = read_uncached(ctx.daemon.mnt / "reg" / rel, timeout=30)
            assert res.returncode != 0, f"{rel}: read succeeded from an unreachable registry"
            assert b"Input/output error" in res.stderr or b"Errno 5" in res.stderr, res.stderr
            assert time.monotonic() - t0 < 20
        be = send(ctx, "GET", "/api/v1/metrics/backend?id=%2Freg").body
        # nothing was fetched; the failure may come from the blob size probe, which is not
        # a metered data read, so read_errors may stay 0
        assert be["backend_type"] == "registry" and be["read_count"] == 0 and be["read_amount_total"] == 0
    finally:
        assert send(ctx, "DELETE", "/api/v1/mount?mountpoint=%2Freg").status == 204


# --- the command line ------------------------------------------------------------------------


def run_cli(*argv, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run(DAEMON + list(argv), capture_output=True, text=True, timeout=timeout)


def one_line(text: str) -> str:
    lines = [line for line in text.splitlines() if line.strip()]
    assert len(lines) == 1, text
    return lines[0]


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["fuse", "--mountpoint", "/tmp", "--no-such-flag"], "--no-such-flag"),
        (["fuse", "--mountpoint", "/tmp", "--bootstrap", "/tmp/boot"], "--bootstrap"),
        (["fuse", "--mountpoint", "/tmp", "--id", "d1"], "--supervisor"),
        (["fuse", "--mountpoint", "/tmp", "--supervisor", "/tmp/sup.sock"], "--id"),
        (["fuse", "--mountpoint", "/tmp", "--thread-num", "0"], "thread"),
        (["fuse"], "--mountpoint"),
        (["fuse", "--mountpoint", "/tmp", "--log-level", "loud"], "log-level"),
    ],
)
def test_cli_usage_errors_exit_2(argv, needle, tmp_path):
    p = run_cli(*argv)
    assert p.returncode == 2, (p.returncode, p.stderr)
    assert needle in one_line(p.stderr)
    assert p.stdout == ""


def test_cli_singleton_without_a_cachefiles_device_fails_clearly(tmp_path, monkeypatch):
    """This kernel has no /dev/cachefiles: one line that names it, exit 1, no socket."""
    monkeypatch.delenv("NYDUS_HYBRID_CACHEFILES", raising=False)
    p = run_cli("singleton", "--fscache", str(tmp_path), "--apisock", str(tmp_path / "api.sock"))
    assert p.returncode == 1, (p.returncode, p.stderr)
    line = one_line(p.stderr)
    assert "/dev/cachefiles" in line and "CACHEFILES_ONDEMAND" in line
    assert not os.path.exists(tmp_path / "api.sock")


# --- found by the OpenAPI fuzz (test_daemon_openapi_fuzz.py); pinned here -------------------


def test_nested_instances_are_refused(ctx):
    """An instance inside another would vanish with its parent while still listed."""
    assert send(ctx, "POST", "/api/v1/mount?mountpoint=%2Fnest", ctx.cmd("/nest")).status == 204
    try:
        expect_error(
            send(ctx, "POST", "/api/v1/mount?mountpoint=%2Fnest%2Fchild", ctx.cmd("/nest/child")),
            400,
            contains="would nest",
        )
        expect_error(send(ctx, "POST", "/api/v1/mount?mountpoint=%2F", ctx.cmd("/")), 400, contains="would nest")
        assert sorted(send(ctx, "GET", "/api/v1/daemon").body["backend_collection"]) == [BASE, "/nest"]
    finally:
        assert send(ctx, "DELETE", "/api/v1/mount?mountpoint=%2Fnest").status == 204
    assert send(ctx, "GET", "/api/v1/metrics/inflight").status in (200, 204)


@pytest.mark.parametrize(
    "url, body, contains",
    [
        ("/api/v1/mount", {"source": "", "config": ""}, "mountpoint"),  # the query is checked first
        ("/api/v1/mount?mountpoint=rel", {"source": "", "config": "", "fs_type": "ext4"}, "must be absolute"),
        ("/api/v1/mount?mountpoint=%2Fx", {"source": "b", "config": "c", "fs_type": None}, "fs_type"),
        (
            "/api/v1/mount?mountpoint=%2Fx",
            {"source": "b", "config": "c", "fs_type": "rafs", "prefetch_files": [True]},
            "prefetch_files",
        ),
        ("/api/v1/config", {"bogus": 5}, "strings"),  # types before keys, as nydusd parses a string map
    ],
)
def test_checked_in_nydusds_order(ctx, url, body, contains):
    method = "PUT" if url == "/api/v1/config" else "POST"
    expect_error(send(ctx, method, url, body), 400, contains=contains)
