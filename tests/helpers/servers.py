"""Real servers for the storage-backend tests: a Docker registry (anonymous, htpasswd or
token auth, optional TLS), an S3 server that verifies SigV4 signatures (moto), and an HTTP
forward proxy. Everything binds 127.0.0.1 on a free port, keeps its files in a temp dir
and is stopped by ``close()`` or by leaving the ``with`` block. No mocks: the registry and
S3 server are separate processes; the token endpoint and the proxy are threads here."""

from __future__ import annotations

import base64
import datetime
import hashlib
import http.client
import ipaddress
import json
import math
import os
import re
import selectors
import shutil
import socket
import socketserver
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable, ClassVar, Dict, List, Protocol, Tuple, Type, TypeVar, Union
from urllib.parse import SplitResult, parse_qs, urlencode, urlsplit

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from nydus_hybrid.waits import scaled

LOOPBACK = "127.0.0.1"
REGISTRY_BIN = "/usr/bin/docker-registry"
# A path argument as the tests pass it.
StrPath = Union[str, "os.PathLike[str]"]
READY_TIMEOUT = 15.0


# ---------------------------------------------------------------- small helpers


def free_port() -> int:
    """A port the kernel just handed out (free at the time; servers bind it right after)."""
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        port: int = s.getsockname()[1]
        return port


def require_binary(path: str) -> None:
    """A server binary the test needs: missing, it skips the test on a developer's machine
    and fails it in CI (where .ci/run installs it)."""
    if os.path.exists(path):
        return
    message = f"{path} missing (apt-get install docker-registry apache2-utils)"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


def wait_for_file(path: str, timeout: float = 120.0) -> None:
    """Wait for a file another process (apt, pip) is still installing."""
    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            raise FileNotFoundError(f"{path} did not appear within {timeout:.0f} s")
        time.sleep(0.5)


def _clean_env(*prefixes: str) -> Dict[str, str]:
    """This process's environment minus variables that would reconfigure a server."""
    return {k: v for k, v in os.environ.items() if not k.startswith(prefixes)}


def _stop_process(proc: subprocess.Popen[bytes] | None) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


# Both servers' access logs quote the request line and follow it with the status.
_ACCESS_LINE = re.compile(r'"([A-Z]+) (\S+) HTTP/[\d.]+" (\d{3})')


def _wait_until_answers(
    proc: subprocess.Popen[bytes] | None, log_path: Path, name: str, probe: Callable[[], object], timeout: float
) -> None:
    """Poll `probe` until it stops raising OSError; a server that exits or stays silent past
    `timeout` is an error carrying the end of its log."""
    assert proc is not None, f"{name} was not started"
    deadline = time.monotonic() + scaled(timeout)
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"{name} exited ({proc.returncode}):\n{_tail(log_path)}")
        try:
            probe()
            return
        except OSError as e:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{name} not ready:\n{_tail(log_path)}") from e
            time.sleep(0.05)


def _parse_access_log(path: Path) -> list[tuple[str, str, int]]:
    text = path.read_text(errors="replace") if path.exists() else ""
    return [(m[1], m[2], int(m[3])) for m in _ACCESS_LINE.finditer(text)]


_T_co = TypeVar("_T_co", covariant=True)
_T = TypeVar("_T")


class _Server(Protocol[_T_co]):
    def start(self) -> _T_co: ...

    def close(self) -> None: ...


def _start_or_close(server: _Server[_T]) -> _T:
    """``start()``, releasing what was already started if it fails (``__exit__`` won't run)."""
    try:
        return server.start()
    except BaseException:
        server.close()
        raise


class _TempDir:
    """A caller's directory, or a private one removed on cleanup."""

    def __init__(self, tmpdir: StrPath | None, prefix: str) -> None:
        self._owned = tmpdir is None
        self.path = Path(tempfile.mkdtemp(prefix=prefix) if tmpdir is None else tmpdir)
        self.path.mkdir(parents=True, exist_ok=True)

    def cleanup(self) -> None:
        if self._owned:
            shutil.rmtree(self.path, ignore_errors=True)


# ---------------------------------------------------------------- certificates


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _cert_builder(subject: str, issuer: x509.Name, public_key: ec.EllipticCurvePublicKey) -> x509.CertificateBuilder:
    now = datetime.datetime.now(datetime.timezone.utc)
    return (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=2))
    )


def make_ca(cn: str) -> Tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """A self-signed CA: (key, cert). EC P-256 because it is fast to generate."""
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        _cert_builder(cn, _name(cn), key.public_key())
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(_key_usage(cert_sign=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return key, cert


def make_server_cert(
    ca_key: ec.EllipticCurvePrivateKey, ca_cert: x509.Certificate, ip: str = LOOPBACK
) -> Tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """A leaf for ``ip`` signed by the CA. A separate leaf (not the CA itself) because
    webpki/rustls refuse a CA certificate presented as a server's end-entity."""
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        _cert_builder(ip, ca_cert.subject, key.public_key())
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(cert_sign=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(ip))]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    return key, cert


def _key_usage(cert_sign: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=cert_sign,
        crl_sign=cert_sign,
        encipher_only=False,
        decipher_only=False,
    )


def write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> Path:
    path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    path.chmod(0o600)
    return path


def write_cert(path: Path, cert: x509.Certificate) -> Path:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path


def client_ssl_context(ca_cert_path: StrPath | None) -> ssl.SSLContext:
    assert ca_cert_path is not None, "no CA certificate: the server does not serve TLS"
    return ssl.create_default_context(cafile=str(ca_cert_path))


# ---------------------------------------------------------------- threaded HTTP servers


class _TrackingServer(ThreadingHTTPServer):
    """Remembers open client connections so ``drop_connections`` can cut them: a stopped
    server must not keep answering on keep-alive connections it accepted earlier."""

    daemon_threads = True

    def __init__(self, addr: Tuple[str, int], handler: Type[BaseHTTPRequestHandler], owner: object) -> None:
        self.owner = owner
        self._open: set[socket.socket] = set()
        self._lock = threading.Lock()
        super().__init__(addr, handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._lock:
            self._open.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self._lock:
            self._open.discard(request)
        super().shutdown_request(request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # Clients hanging up mid-response (and stop() cutting them off) are expected here.
        if not isinstance(sys.exc_info()[1], OSError):
            super().handle_error(request, client_address)

    def drop_connections(self) -> None:
        with self._lock:
            sockets = list(self._open)
        for s in sockets:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


class _ThreadedHTTP:
    """Runs one handler class on a fixed port in a background thread; stop/start again."""

    def __init__(
        self,
        handler: Type[BaseHTTPRequestHandler],
        owner: object,
        port: int = 0,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self._handler, self._owner, self._ssl = handler, owner, ssl_context
        self.port = port or free_port()
        self._server: _TrackingServer | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._server is not None:
            return
        server = _TrackingServer((LOOPBACK, self.port), self._handler, self._owner)
        if self._ssl is not None:
            # Handshake in the handler thread, so one stalled client cannot block accept().
            server.socket = self._ssl.wrap_socket(server.socket, server_side=True, do_handshake_on_connect=False)
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        server.drop_connections()
        assert self._thread is not None
        self._thread.join(timeout=5)

    @property
    def running(self) -> bool:
        return self._server is not None


class _QuietHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _owner(self) -> object:
        """The object the server runs for (a TokenServer, a ForwardProxy)."""
        assert isinstance(self.server, _TrackingServer), self.server
        return self.server.owner

    def _reply(self, status: int, body: bytes = b"", headers: Dict[str, str] | None = None) -> None:
        self.send_response(status)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)


# ---------------------------------------------------------------- token server


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _json_b64(obj: object) -> str:
    return _b64url(json.dumps(obj, separators=(",", ":")).encode())


def parse_scopes(values: List[str]) -> List[Dict[str, Any]]:
    """``repository:name:pull,push`` (repeated, or space-separated) → token access entries.
    The name may hold colons (a host:port prefix), so the actions are split off the right."""
    access: List[Dict[str, Any]] = []
    for value in values:
        for scope in value.split():
            kind, _, rest = scope.partition(":")
            name, _, actions = rest.rpartition(":")
            if kind and name:
                access.append({"type": kind, "name": name, "actions": [a for a in actions.split(",") if a]})
    return access


class _TokenHandler(_QuietHandler):
    def do_GET(self) -> None:
        url = urlsplit(self.path)
        if url.path != "/token":
            return self._reply(404)
        owner = self._owner()
        assert isinstance(owner, TokenServer), owner
        user = owner.check_basic(self.headers.get("Authorization", ""))
        if user is None:
            owner.count(rejected=True)
            return self._reply(
                401,
                b'{"errors":[{"code":"UNAUTHORIZED"}]}',
                {"WWW-Authenticate": 'Basic realm="nydus-test-token"', "Content-Type": "application/json"},
            )
        query = parse_qs(url.query)
        service = query.get("service", [owner.service])[0]
        body = owner.issue(user, service, parse_scopes(query.get("scope", [])))
        self._reply(200, json.dumps(body).encode(), {"Content-Type": "application/json"})


class TokenServer:
    """A Docker token-spec endpoint (``GET /token?service=&scope=`` with HTTP Basic) that
    signs ES256 JWTs carrying the signing certificate in ``x5c``. The registry trusts
    the certificate through its ``rootcertbundle``.

    docker-registry 2.8 accepts a token up to 60 s past its ``exp`` (clock-skew leeway), so
    the JWT's ``exp`` is set ``REGISTRY_LEEWAY`` earlier than ``expires_in`` says: the
    registry then stops accepting a token ``expires_in`` (+ < 1 s of rounding) seconds
    after issue, and an expiry test need not wait a minute."""

    REGISTRY_LEEWAY = 60

    def __init__(
        self,
        tmpdir: Path,
        user: str,
        password: str,
        service: str,
        issuer: str = "nydus-test-issuer",
        expires_in: int = 300,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.user, self.password, self.service, self.issuer = user, password, service, issuer
        self.expires_in = expires_in
        self.token_requests = 0  # tokens issued
        self.rejected_requests = 0  # requests refused for missing or wrong credentials
        self._lock = threading.Lock()
        self._key, self._cert = make_ca("nydus-test token signer")
        self.cert_path = write_cert(Path(tmpdir) / "token-signer.pem", self._cert)
        self._x5c = [base64.b64encode(self._cert.public_bytes(serialization.Encoding.DER)).decode()]
        self._http = _ThreadedHTTP(_TokenHandler, self, ssl_context=ssl_context)
        scheme = "https" if ssl_context else "http"
        self.realm = f"{scheme}://{LOOPBACK}:{self._http.port}/token"

    def start(self) -> None:
        self._http.start()

    def stop(self) -> None:
        self._http.stop()

    def count(self, rejected: bool = False) -> None:
        with self._lock:
            if rejected:
                self.rejected_requests += 1
            else:
                self.token_requests += 1

    def check_basic(self, header: str) -> str | None:
        """The user name if ``header`` carries the right Basic credentials."""
        kind, _, encoded = header.partition(" ")
        if kind.lower() != "basic":
            return None
        try:
            user, _, password = base64.b64decode(encoded).decode().partition(":")
        except ValueError:
            return None
        return user if (user, password) == (self.user, self.password) else None

    def sign(self, claims: Dict[str, Any]) -> str:
        header = {"typ": "JWT", "alg": "ES256", "x5c": self._x5c}
        signing_input = f"{_json_b64(header)}.{_json_b64(claims)}"
        der = self._key.sign(signing_input.encode(), ec.ECDSA(hashes.SHA256()))
        # JWS wants the raw r||s pair, not the DER sequence cryptography returns.
        r, s = decode_dss_signature(der)
        return f"{signing_input}.{_b64url(r.to_bytes(32, 'big') + s.to_bytes(32, 'big'))}"

    def issue(self, user: str, service: str, access: List[Dict[str, Any]]) -> Dict[str, Any]:
        now = time.time()
        # Whole seconds in the claims: round exp up so a token never dies early.
        iat, exp = int(now), math.ceil(now) + self.expires_in - self.REGISTRY_LEEWAY
        token = self.sign(
            {
                "iss": self.issuer,
                "sub": user,
                "aud": service,
                "exp": exp,
                "nbf": iat,
                "iat": iat,
                "jti": uuid.uuid4().hex,
                "access": access,
            }
        )
        self.count()
        issued_at = datetime.datetime.fromtimestamp(iat, datetime.timezone.utc)
        return {
            "token": token,
            "access_token": token,
            "expires_in": self.expires_in,
            "issued_at": issued_at.strftime("%Y-%m-%dT%H:%M:%SZ"),
        }


# ---------------------------------------------------------------- docker registry


class Registry:
    """Debian's docker-registry (distribution 2.8) with filesystem storage under ``tmpdir``.

    ``auth``: None (anonymous), ``"htpasswd"`` (bcrypt, Basic) or ``"token"`` (Bearer, via a
    ``TokenServer`` in this process). ``tls=True`` serves HTTPS with a leaf for 127.0.0.1
    signed by a fresh CA at ``ca_cert_path`` (the token endpoint then uses HTTPS too)."""

    SERVICE = "nydus-test-registry"

    def __init__(
        self,
        tmpdir: StrPath | None = None,
        auth: str | None = None,
        tls: bool = False,
        user: str = "nydus",
        password: str = "s3cret-pass",
        token_expires_in: int = 300,
    ) -> None:
        if auth not in (None, "htpasswd", "token"):
            raise ValueError(f"unknown auth mode {auth!r}")
        wait_for_file(REGISTRY_BIN)
        self._dir = _TempDir(tmpdir, "registry-")
        self.dir = self._dir.path
        self.auth, self.tls = auth, tls
        self.user: str | None = user if auth else None
        self.password: str | None = password if auth else None
        self.port = free_port()
        self.host = f"{LOOPBACK}:{self.port}"
        self.scheme = "https" if tls else "http"
        self.root = self.dir / "storage"
        self.log_path = self.dir / "registry.log"
        self.ca_cert_path: Path | None = None
        self.token_server: TokenServer | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        server_ctx = self._make_tls() if tls else None
        if auth == "token":
            self.token_server = TokenServer(
                self.dir, user, password, self.SERVICE, expires_in=token_expires_in, ssl_context=server_ctx
            )
        self.config_path = self.dir / "config.yml"
        self.config_path.write_text(json.dumps(self._config(), indent=2))  # JSON is YAML

    @property
    def url(self) -> str:
        return f"{self.scheme}://{self.host}"

    @property
    def token_requests(self) -> int:
        return self.token_server.token_requests if self.token_server else 0

    def _make_tls(self) -> ssl.SSLContext:
        ca_key, ca_cert = make_ca("nydus-test CA")
        key, cert = make_server_cert(ca_key, ca_cert)
        self.ca_cert_path = write_cert(self.dir / "ca.pem", ca_cert)
        self._tls_cert = write_cert(self.dir / "server.pem", cert)
        self._tls_key = write_key(self.dir / "server.key", key)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(self._tls_cert, self._tls_key)
        return ctx

    def _config(self) -> Dict[str, Any]:
        http_cfg: Dict[str, Any] = {"addr": self.host, "secret": uuid.uuid4().hex}
        if self.tls:
            http_cfg["tls"] = {"certificate": str(self._tls_cert), "key": str(self._tls_key)}
        config: Dict[str, Any] = {
            "version": 0.1,
            "log": {"level": "info", "accesslog": {"disabled": False}},
            "storage": {"filesystem": {"rootdirectory": str(self.root)}, "delete": {"enabled": True}},
            "http": http_cfg,
        }
        if self.auth == "htpasswd":
            config["auth"] = {"htpasswd": {"realm": "nydus-test", "path": str(self._write_htpasswd())}}
        elif self.auth == "token":
            ts = self.token_server
            assert ts is not None
            config["auth"] = {
                "token": {
                    "realm": ts.realm,
                    "service": self.SERVICE,
                    "issuer": ts.issuer,
                    "rootcertbundle": str(ts.cert_path),
                }
            }
        return config

    def _write_htpasswd(self) -> Path:
        wait_for_file("/usr/bin/htpasswd")
        assert self.user is not None and self.password is not None
        line = subprocess.run(
            ["htpasswd", "-Bbn", self.user, self.password], check=True, capture_output=True, text=True
        ).stdout.strip()
        path = self.dir / "htpasswd"
        path.write_text(line + "\n")
        return path

    # -- lifecycle

    def start(self) -> Registry:
        """Start (or restart after ``stop``) on the same port with the same storage."""
        if self.token_server:
            self.token_server.start()
        if self._proc is None or self._proc.poll() is not None:
            log = open(self.log_path, "ab")
            # REGISTRY_* variables would override the config file.
            self._proc = subprocess.Popen(
                [REGISTRY_BIN, "serve", str(self.config_path)],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=_clean_env("REGISTRY_", "OTEL_"),
                cwd=self.dir,
            )
            log.close()
        self.wait_ready()
        return self

    def change_password(self, password: str) -> None:
        """A new htpasswd password, in force once this returns (the registry restarts on
        the same port and storage)."""
        assert self.auth == "htpasswd", "only the htpasswd registry has a password file"
        self.password = password
        self._write_htpasswd()
        self.stop()
        self.start()

    def signal(self, sig: int) -> None:
        """Send a signal to the registry process (SIGSTOP freezes it with sockets open)."""
        assert self._proc is not None and self._proc.poll() is None, "registry is not running"
        self._proc.send_signal(sig)

    def stop(self) -> None:
        """Stop the registry process (the token endpoint keeps running)."""
        _stop_process(self._proc)

    def close(self) -> None:
        self.stop()
        if self.token_server:
            self.token_server.stop()
        self._dir.cleanup()

    def __enter__(self) -> Registry:
        return _start_or_close(self)

    def __exit__(self, *exc: object) -> None:
        self.close()

    def wait_ready(self, timeout: float = READY_TIMEOUT) -> None:
        """Until ``GET /v2/`` answers at all (401 counts: auth is up too)."""
        _wait_until_answers(self._proc, self.log_path, "docker-registry", lambda: self.request("GET", "/v2/"), timeout)

    # -- HTTP helpers (plain http.client, so they do not depend on the code under test)

    def connection(self, timeout: float = 10) -> http.client.HTTPConnection:
        if self.tls:
            return http.client.HTTPSConnection(
                LOOPBACK, self.port, timeout=timeout, context=client_ssl_context(self.ca_cert_path)
            )
        return http.client.HTTPConnection(LOOPBACK, self.port, timeout=timeout)

    def request(
        self, method: str, path: str, body: bytes | None = None, headers: Dict[str, str] | None = None
    ) -> Tuple[int, Dict[str, str], bytes]:
        """One request on a fresh connection: (status, headers, body)."""
        conn = self.connection()
        try:
            conn.request(method, path, body=body, headers=headers or {})
            resp = conn.getresponse()
            return resp.status, dict(resp.getheaders()), resp.read()
        finally:
            conn.close()

    def auth_headers(self, repo: str, actions: str = "pull,push") -> Dict[str, str]:
        """Credentials for ``repo`` in this registry's auth mode."""
        if self.auth is None:
            return {}
        basic = "Basic " + base64.b64encode(f"{self.user}:{self.password}".encode()).decode()
        if self.auth == "htpasswd":
            return {"Authorization": basic}
        return {"Authorization": "Bearer " + self.fetch_token(f"repository:{repo}:{actions}")}

    def fetch_token(self, scope: str) -> str:
        ts = self.token_server
        assert ts is not None, "not a token-auth registry"
        query = urlencode({"service": self.SERVICE, "scope": scope})
        url = urlsplit(ts.realm)
        assert url.hostname is not None, ts.realm
        conn: http.client.HTTPConnection
        if url.scheme == "https":
            conn = http.client.HTTPSConnection(
                url.hostname, url.port, timeout=10, context=client_ssl_context(self.ca_cert_path)
            )
        else:
            conn = http.client.HTTPConnection(url.hostname, url.port, timeout=10)
        try:
            basic = base64.b64encode(f"{self.user}:{self.password}".encode()).decode()
            conn.request("GET", f"{url.path}?{query}", headers={"Authorization": f"Basic {basic}"})
            resp = conn.getresponse()
            body = resp.read()
            if resp.status != 200:
                raise RuntimeError(f"token endpoint answered {resp.status}: {body!r}")
            token: str = json.loads(body)["token"]
            return token
        finally:
            conn.close()

    def push_blob(self, repo: str, data: bytes) -> str:
        """Monolithic upload (POST, then PUT ?digest=); returns ``sha256:<hex>``."""
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        auth = self.auth_headers(repo)
        status, headers, body = self.request("POST", f"/v2/{repo}/blobs/uploads/", b"", auth)
        if status != 202:
            raise RuntimeError(f"upload start: {status} {body!r}")
        location = urlsplit(headers["Location"])
        sep = "&" if location.query else ""
        path = f"{location.path}?{location.query}{sep}{urlencode({'digest': digest})}"
        put_headers = {**auth, "Content-Type": "application/octet-stream"}
        status, _, body = self.request("PUT", path, data, put_headers)
        if status != 201:
            raise RuntimeError(f"upload finish: {status} {body!r}")
        return digest

    # -- storage and logs

    def blob_path(self, digest: str) -> Path:
        """The on-disk data file of a blob, for tests that corrupt it."""
        hexdigest = digest.split(":", 1)[-1]
        return self.root / "docker/registry/v2/blobs/sha256" / hexdigest[:2] / hexdigest / "data"

    def request_log(self) -> list[tuple[str, str, int]]:
        """(method, path, status) per request, from the access log. A line is written after
        its response is sent, so poll briefly when counting right after a request."""
        return _parse_access_log(self.log_path)


# ---------------------------------------------------------------- S3 (moto)


class S3Server:
    """moto's S3 in server mode, in its own process, with IAM auth switched on: every
    request must carry a SigV4 signature that moto recomputes with the secret of an IAM
    access key. Setup runs before auth is enforced (moto's default); then
    ``POST /moto-api/reset-auth`` with ``0`` makes moto authenticate every later request
    (the runtime form of ``INITIAL_NO_AUTH_ACTION_COUNT=0``)."""

    region = "us-east-1"
    ACCOUNT_POLICY: ClassVar[Dict[str, Any]] = {
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}],
    }

    def __init__(self, tmpdir: StrPath | None = None, bucket: str = "nydus-test") -> None:
        self._dir = _TempDir(tmpdir, "s3-")
        self.dir = self._dir.path
        self.bucket = bucket
        self.port = free_port()
        self.endpoint = f"http://{LOOPBACK}:{self.port}"
        self.log_path = self.dir / "moto.log"
        self.access_key_id: str | None = None
        self.secret_access_key: str | None = None
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self) -> S3Server:
        log = open(self.log_path, "ab")
        # AWS_*/MOTO_* from the environment could redirect or reconfigure moto.
        env = _clean_env("AWS_", "MOTO_", "INITIAL_NO_AUTH")
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", LOOPBACK, "-p", str(self.port)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=self.dir,
        )
        log.close()
        self.wait_ready()
        self._provision()
        return self

    def wait_ready(self, timeout: float = READY_TIMEOUT) -> None:
        _wait_until_answers(self._proc, self.log_path, "moto", lambda: self._moto_api("GET", "/moto-api/"), timeout)

    def _moto_api(self, method: str, path: str, body: bytes | None = None) -> tuple[int, bytes]:
        conn = http.client.HTTPConnection(LOOPBACK, self.port, timeout=10)
        try:
            conn.request(method, path, body=body)
            resp = conn.getresponse()
            return resp.status, resp.read()
        finally:
            conn.close()

    def _provision(self) -> None:
        """IAM user + key + s3:* policy and the bucket, then switch signature checks on."""
        iam = self._boto("iam", "provisioning", "provisioning")
        iam.create_user(UserName="nydus-test")
        key = iam.create_access_key(UserName="nydus-test")["AccessKey"]
        iam.put_user_policy(UserName="nydus-test", PolicyName="s3-all", PolicyDocument=json.dumps(self.ACCOUNT_POLICY))
        self.access_key_id, self.secret_access_key = key["AccessKeyId"], key["SecretAccessKey"]
        self._boto("s3", self.access_key_id, self.secret_access_key).create_bucket(Bucket=self.bucket)
        status, body = self._moto_api("POST", "/moto-api/reset-auth", b"0")
        if status != 200:
            raise RuntimeError(f"moto reset-auth: {status} {body!r}")

    def _boto(self, service: str, key_id: str | None, secret: str | None) -> Any:
        import boto3
        from botocore.config import Config

        return boto3.client(
            service,
            endpoint_url=self.endpoint,
            region_name=self.region,
            aws_access_key_id=key_id,
            aws_secret_access_key=secret,
            config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1}),
        )

    def client(self, secret_access_key: str | None = None) -> Any:
        """A boto3 S3 client with the real key id and, unless given, the real secret."""
        return self._boto("s3", self.access_key_id, secret_access_key or self.secret_access_key)

    def put_object(self, key: str, data: bytes) -> None:
        self.client().put_object(Bucket=self.bucket, Key=key, Body=data)

    def request_log(self) -> list[tuple[str, str, int]]:
        """(method, path, status) per request from moto's access log (written after the
        response, so poll briefly when counting right after a request)."""
        return _parse_access_log(self.log_path)

    def stop(self) -> None:
        _stop_process(self._proc)

    def close(self) -> None:
        self.stop()
        self._dir.cleanup()

    def __enter__(self) -> S3Server:
        return _start_or_close(self)

    def __exit__(self, *exc: object) -> None:
        self.close()


# ---------------------------------------------------------------- forward proxy

# Headers that describe one hop, not the message (RFC 9110 §7.6.1), plus proxy credentials.
_HOP_BY_HOP = {
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authorization",
    "proxy-authenticate",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
}
# Expect: 100-continue was already answered by http.server and the body read.
_NOT_FORWARDED = _HOP_BY_HOP | {"expect"}
_CHUNK = 64 * 1024


class _ProxyHandler(_QuietHandler):
    def _forward(self) -> None:
        proxy = self._owner()
        assert isinstance(proxy, ForwardProxy), proxy
        proxy.requests.append((self.command, self.path))
        url = urlsplit(self.path)
        if url.scheme != "http" or not url.hostname:
            return self._reply(400, b"absolute-form http:// request URI expected\n")
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            self.close_connection = True  # the unread body would desync the connection
            return self._reply(411, b"chunked request bodies are not supported\n")
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else None
        origin = http.client.HTTPConnection(url.hostname, url.port or 80, timeout=30)
        try:
            resp = self._send_upstream(origin, url, body)
        except OSError as e:
            origin.close()
            return self._reply(502, f"origin unreachable: {e}\n".encode())
        try:
            self._relay(resp)
        finally:
            origin.close()

    do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = _forward

    def _send_upstream(
        self, origin: http.client.HTTPConnection, url: SplitResult, body: bytes | None
    ) -> http.client.HTTPResponse:
        target = url.path or "/"
        if url.query:
            target += "?" + url.query
        origin.putrequest(self.command, target, skip_host=True, skip_accept_encoding=True)
        for name, value in self.headers.items():  # Range and Host go through unchanged
            if name.lower() not in _NOT_FORWARDED:
                origin.putheader(name, value)
        origin.endheaders(body)
        return origin.getresponse()

    def _relay(self, resp: http.client.HTTPResponse) -> None:
        """Status and end-to-end headers as the origin sent them; the body streamed."""
        self.send_response_only(resp.status, resp.reason)
        has_length = resp.getheader("Content-Length") is not None
        for name, value in resp.getheaders():
            if name.lower() not in _HOP_BY_HOP:
                self.send_header(name, value)
        no_body = self.command == "HEAD" or resp.status in (204, 304) or 100 <= resp.status < 200
        chunked = not has_length and not no_body  # re-frame bodies the origin closed on
        if chunked:
            self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        while not no_body:
            piece = resp.read1(_CHUNK)
            if not piece:
                break
            self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece) if chunked else piece)
        if chunked:
            self.wfile.write(b"0\r\n\r\n")

    def do_CONNECT(self) -> None:
        """A TCP tunnel (for https:// through the proxy), bytes copied both ways."""
        proxy = self._owner()
        assert isinstance(proxy, ForwardProxy), proxy
        proxy.requests.append(("CONNECT", self.path))
        host, _, port = self.path.rpartition(":")
        try:
            upstream = socket.create_connection((host, int(port)), timeout=30)
        except (OSError, ValueError) as e:
            return self._reply(502, f"tunnel failed: {e}\n".encode())
        self.send_response_only(200, "Connection Established")
        self.end_headers()
        self.close_connection = True
        with upstream:
            _pump(self.connection, upstream)


def _pump(a: socket.socket, b: socket.socket) -> None:
    sel = selectors.DefaultSelector()
    sel.register(a, selectors.EVENT_READ, b)
    sel.register(b, selectors.EVENT_READ, a)
    with sel:
        while True:
            for key, _ in sel.select(timeout=30):
                src = key.fileobj
                assert isinstance(src, socket.socket), src
                try:
                    data = src.recv(_CHUNK)
                    if not data:
                        return
                    key.data.sendall(data)
                except OSError:
                    return


class ForwardProxy:
    """A threaded HTTP forward proxy for absolute-form requests (plus CONNECT tunnels).
    ``requests`` lists (method, url) of everything it was asked; ``stop()`` closes the
    listener and every open client connection; ``start()`` listens again on the same port."""

    def __init__(self) -> None:
        self.requests: List[Tuple[str, str]] = []
        self._http = _ThreadedHTTP(_ProxyHandler, self)
        self.port = self._http.port
        self.url = f"http://{LOOPBACK}:{self.port}"

    def start(self) -> ForwardProxy:
        self._http.start()
        return self

    def stop(self) -> None:
        self._http.stop()

    close = stop

    @property
    def running(self) -> bool:
        return self._http.running

    def __enter__(self) -> ForwardProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


# ---------------------------------------------------------------- a failing front


class _FrontHandler(_ProxyHandler):
    def _forward(self) -> None:
        front = self._owner()
        assert isinstance(front, CuttingFront), front
        url = urlsplit(front.upstream + self.path)
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else None
        origin = http.client.HTTPConnection(url.hostname or LOOPBACK, url.port or 80, timeout=30)
        try:
            resp = self._send_upstream(origin, url, body)
            if self.command == "GET" and "/blobs/" in url.path and resp.status == 200:
                return self._cut(resp, front)
            self._relay(resp)
        finally:
            origin.close()

    do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = _forward

    def _cut(self, resp: http.client.HTTPResponse, front: CuttingFront) -> None:
        """Announce the whole blob, send `cut_after` bytes of it, and hang up."""
        self.send_response_only(resp.status, resp.reason)
        for name, value in resp.getheaders():
            if name.lower() not in _HOP_BY_HOP:
                self.send_header(name, value)
        self.end_headers()
        self.wfile.write(resp.read(front.cut_after))
        self.wfile.flush()
        front.cuts += 1
        self.close_connection = True
        self.connection.shutdown(socket.SHUT_RDWR)


class CuttingFront:
    """A reverse proxy in front of a registry that passes everything through, except that
    every blob download stops after ``cut_after`` bytes (a registry failing halfway)."""

    def __init__(self, upstream: str, cut_after: int) -> None:
        self.upstream, self.cut_after, self.cuts = upstream.rstrip("/"), cut_after, 0
        self._http = _ThreadedHTTP(_FrontHandler, self)
        self.host = f"{LOOPBACK}:{self._http.port}"

    def __enter__(self) -> CuttingFront:
        self._http.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._http.stop()


# ---------------------------------------------------------------- blob files over plain HTTP


class _BlobFilesHandler(BaseHTTPRequestHandler):
    """GET/HEAD `/<prefix>/<name>` from the owner's `resolve(name)`, honouring one Range."""

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        owner: BlobFileServer = self.server.owner  # type: ignore[attr-defined]
        owner.paths.append(self.path)
        prefix, _, name = self.path.lstrip("/").rpartition("/")
        path = owner.resolve(name) if prefix == owner.prefix else None
        if path is None or not path.is_file():
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        data = path.read_bytes()
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


class _UnixHTTPServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True


class BlobFileServer:
    """What the `http-proxy` backend reads: blob files by name under a path prefix, over
    TCP on 127.0.0.1 or over a unix socket. `resolve` maps a name to its file (default
    `<root>/<name>`); `paths` lists the request paths in order."""

    def __init__(
        self,
        prefix: str,
        root: StrPath | None = None,
        resolve: Callable[[str], Path | None] | None = None,
        unix_socket: StrPath | None = None,
    ) -> None:
        self.prefix = prefix.strip("/")
        self.resolve: Callable[[str], Path | None] = resolve or (lambda name: Path(str(root)) / name)
        self.unix_socket = unix_socket
        self.paths: List[str] = []
        self._server: socketserver.BaseServer | None = None

    def start(self) -> BlobFileServer:
        server: socketserver.BaseServer
        if self.unix_socket is not None:
            server = _UnixHTTPServer(str(self.unix_socket), _BlobFilesHandler)
        else:
            server = ThreadingHTTPServer((LOOPBACK, 0), _BlobFilesHandler)
        server.owner = self  # type: ignore[union-attr]
        threading.Thread(target=server.serve_forever, daemon=True).start()
        self._server = server
        return self

    @property
    def addr(self) -> str:
        """The backend's `addr`: the URL, or the socket's path."""
        assert self._server is not None
        if self.unix_socket is not None:
            return str(self.unix_socket)
        return f"http://{LOOPBACK}:{self._server.server_address[1]}"  # type: ignore[index]

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
