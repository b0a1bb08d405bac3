"""Self-tests of the test servers (tests/helpers/servers.py), through plain urllib/http.client and
boto3 only: each auth mode of the registry, moto's signature checks, the forward proxy."""

from __future__ import annotations

import base64
import hashlib
import http.client
import json
import re
import time
import urllib.error
import urllib.request
from typing import Dict, List, Tuple
from urllib.parse import urlencode, urlsplit

import pytest

from tests.helpers import servers

REPO = "nydus/test"
DATA = bytes(range(256)) * 64  # 16 KiB


def opener(ca_cert_path=None, proxy_url=None) -> urllib.request.OpenerDirector:
    handlers: List[urllib.request.BaseHandler] = [urllib.request.ProxyHandler({"http": proxy_url} if proxy_url else {})]
    if ca_cert_path:
        handlers.append(urllib.request.HTTPSHandler(context=servers.client_ssl_context(ca_cert_path)))
    return urllib.request.build_opener(*handlers)


def call(op, method, url, data=None, headers=None):
    """(status, headers, body); HTTP errors are answers here, not exceptions."""
    req = urllib.request.Request(url, data=data, headers=headers or {}, method=method)
    try:
        with op.open(req, timeout=10) as resp:
            return resp.status, resp.headers, resp.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers, e.read()


def push(op, base: str, repo: str, data: bytes, headers: Dict[str, str]) -> str:
    """POST /v2/<repo>/blobs/uploads/, then PUT <location>&digest= with the whole blob."""
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    status, hdrs, body = call(op, "POST", f"{base}/v2/{repo}/blobs/uploads/", b"", headers)
    assert status == 202, body
    location = urlsplit(hdrs["Location"])
    sep = "&" if location.query else ""
    url = f"{base}{location.path}?{location.query}{sep}{urlencode({'digest': digest})}"
    status, _, body = call(op, "PUT", url, data, {**headers, "Content-Type": "application/octet-stream"})
    assert status == 201, body
    return digest


def assert_range_get(op, base: str, repo: str, digest: str, headers: Dict[str, str]) -> None:
    status, hdrs, body = call(
        op, "GET", f"{base}/v2/{repo}/blobs/{digest}", headers={**headers, "Range": "bytes=100-299"}
    )
    assert status == 206
    assert hdrs["Content-Range"] == f"bytes 100-299/{len(DATA)}"
    assert body == DATA[100:300]


def basic(user, password) -> Dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def parse_challenge(header: str) -> Tuple[str, Dict[str, str]]:
    scheme, _, params = header.partition(" ")
    return scheme, dict(re.findall(r'(\w+)="([^"]*)"', params))


# ---------------------------------------------------------------- registry


@pytest.mark.parametrize("tls", [False, True], ids=["http", "https"])
def test_registry_anonymous(make_registry, tls):
    reg = make_registry(tls=tls)
    assert reg.scheme == ("https" if tls else "http") and reg.host == f"127.0.0.1:{reg.port}"
    op = opener(reg.ca_cert_path)
    assert call(op, "GET", f"{reg.url}/v2/")[0] == 200
    digest = push(op, reg.url, REPO, DATA, {})
    assert_range_get(op, reg.url, REPO, digest, {})
    assert reg.blob_path(digest).read_bytes() == DATA


def test_registry_https_needs_the_ca(registry_tls):
    with pytest.raises(urllib.error.URLError, match="CERTIFICATE_VERIFY_FAILED"):
        opener().open(f"{registry_tls.url}/v2/", timeout=10)


def test_registry_htpasswd(registry_htpasswd):
    reg, op = registry_htpasswd, opener()
    status, hdrs, _ = call(op, "GET", f"{reg.url}/v2/")
    assert status == 401 and hdrs["WWW-Authenticate"].startswith("Basic ")
    assert call(op, "GET", f"{reg.url}/v2/", headers=basic(reg.user, "wrong"))[0] == 401
    creds = basic(reg.user, reg.password)
    assert call(op, "GET", f"{reg.url}/v2/", headers=creds)[0] == 200
    digest = push(op, reg.url, REPO, DATA, creds)
    assert_range_get(op, reg.url, REPO, digest, creds)


def fetch_token(op, realm: str, service: str, scope: str, headers: Dict[str, str]):
    url = f"{realm}?{urlencode({'service': service, 'scope': scope})}"
    return call(op, "GET", url, headers=headers)


@pytest.mark.parametrize("tls", [False, True], ids=["http", "https"])
def test_registry_token(make_registry, tls):
    reg = make_registry(auth="token", tls=tls)
    op = opener(reg.ca_cert_path)
    digest = "sha256:" + hashlib.sha256(DATA).hexdigest()

    # The registry names the token endpoint, the service and the scope it wants.
    status, hdrs, _ = call(op, "GET", f"{reg.url}/v2/{REPO}/blobs/{digest}")
    assert status == 401
    scheme, challenge = parse_challenge(hdrs["WWW-Authenticate"])
    assert scheme == "Bearer"
    assert challenge["realm"] == reg.token_server.realm
    assert challenge["realm"].startswith("https://" if tls else "http://")
    assert challenge["service"] == reg.SERVICE
    assert challenge["scope"] == f"repository:{REPO}:pull"

    realm, service, scope = challenge["realm"], challenge["service"], f"repository:{REPO}:pull,push"
    assert fetch_token(op, realm, service, scope, {})[0] == 401
    assert fetch_token(op, realm, service, scope, basic(reg.user, "wrong"))[0] == 401
    assert reg.token_requests == 0 and reg.token_server.rejected_requests == 2

    status, _, body = fetch_token(op, realm, service, scope, basic(reg.user, reg.password))
    assert status == 200 and reg.token_requests == 1
    answer = json.loads(body)
    assert answer["token"] == answer["access_token"]
    assert answer["expires_in"] == reg.token_server.expires_in
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", answer["issued_at"])

    bearer = {"Authorization": "Bearer " + answer["token"]}
    pushed = push(op, reg.url, REPO, DATA, bearer)
    assert pushed == digest
    assert_range_get(op, reg.url, REPO, digest, bearer)


def test_registry_token_is_really_checked(registry_token):
    reg, op = registry_token, opener()
    digest = reg.push_blob(REPO, DATA)
    blob_url = f"{reg.url}/v2/{REPO}/blobs/{digest}"
    token = reg.fetch_token(f"repository:{REPO}:pull")
    assert call(op, "GET", blob_url, headers={"Authorization": f"Bearer {token}"})[0] == 200

    head, claims, sig = token.split(".")
    forged = f"{head}.{claims}.{sig[:-4]}{'AAAA' if sig[-4:] != 'AAAA' else 'BBBB'}"
    assert call(op, "GET", blob_url, headers={"Authorization": f"Bearer {forged}"})[0] == 401

    other_repo = reg.fetch_token("repository:nydus/other:pull")
    assert call(op, "GET", blob_url, headers={"Authorization": f"Bearer {other_repo}"})[0] == 401

    pull_only = {"Authorization": f"Bearer {token}"}
    assert call(op, "POST", f"{reg.url}/v2/{REPO}/blobs/uploads/", b"", pull_only)[0] == 401


def test_registry_token_expiry(make_registry):
    reg = make_registry(auth="token", token_expires_in=2)
    digest = reg.push_blob(REPO, DATA)
    issued = time.time()
    token = {"Authorization": "Bearer " + reg.fetch_token(f"repository:{REPO}:pull")}
    blob_url = f"{reg.url}/v2/{REPO}/blobs/{digest}"
    assert call(opener(), "GET", blob_url, headers=token)[0] == 200
    time.sleep(max(0.0, issued + 3.2 - time.time()))  # expires_in, +1 s of rounding
    status, hdrs, _ = call(opener(), "GET", blob_url, headers=token)
    assert status == 401 and 'error="invalid_token"' in hdrs["WWW-Authenticate"]


def test_registry_restart_same_port_and_corruption(registry):
    reg = registry
    digest = reg.push_blob(REPO, DATA)
    port = reg.port
    reg.stop()
    with pytest.raises(ConnectionRefusedError):
        reg.request("GET", "/v2/")
    reg.start()
    assert reg.port == port
    status, _, body = reg.request("GET", f"/v2/{REPO}/blobs/{digest}")
    assert status == 200 and body == DATA

    # The registry serves what is on disk without re-hashing it: tests rely on that.
    path = reg.blob_path(digest)
    path.write_bytes(b"X" + DATA[1:])
    status, _, body = reg.request("GET", f"/v2/{REPO}/blobs/{digest}")
    assert status == 200 and body[:1] == b"X"

    deadline = time.monotonic() + 2
    while ("GET", f"/v2/{REPO}/blobs/{digest}", 200) not in reg.request_log():
        assert time.monotonic() < deadline, reg.request_log()
        time.sleep(0.05)


# ---------------------------------------------------------------- S3


def signed_get(s3, key: str, secret: str, key_id: str | None = None):
    """A GET signed by hand (botocore's SigV4 signer, UNSIGNED-PAYLOAD) and sent by urllib."""
    from botocore.auth import S3SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    url = f"{s3.endpoint}/{s3.bucket}/{key}"
    req = AWSRequest("GET", url, headers={"Range": "bytes=10-19", "X-Amz-Content-SHA256": "UNSIGNED-PAYLOAD"})
    S3SigV4Auth(Credentials(key_id or s3.access_key_id, secret), "s3", s3.region).add_auth(req)
    return call(opener(), "GET", url, headers=dict(req.headers.items()))


def test_s3_verifies_signatures(s3_server):
    from botocore.exceptions import ClientError

    s3 = s3_server
    assert s3.endpoint == f"http://127.0.0.1:{s3.port}" and s3.region == "us-east-1"
    s3.put_object("sig/blob", DATA)
    got = s3.client().get_object(Bucket=s3.bucket, Key="sig/blob", Range="bytes=10-19")
    assert got["ResponseMetadata"]["HTTPStatusCode"] == 206 and got["Body"].read() == DATA[10:20]

    with pytest.raises(ClientError) as bad:
        s3.client("not-the-secret").get_object(Bucket=s3.bucket, Key="sig/blob")
    assert bad.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403
    assert bad.value.response["Error"]["Code"] == "SignatureDoesNotMatch"
    with pytest.raises(ClientError):
        s3.client("not-the-secret").put_object(Bucket=s3.bucket, Key="sig/other", Body=b"x")

    status, hdrs, body = signed_get(s3, "sig/blob", s3.secret_access_key)
    assert status == 206 and body == DATA[10:20] and hdrs["Content-Range"] == f"bytes 10-19/{len(DATA)}"
    status, _, body = signed_get(s3, "sig/blob", "not-the-secret")
    assert status == 403 and b"SignatureDoesNotMatch" in body
    status, _, body = signed_get(s3, "sig/blob", s3.secret_access_key, key_id="AKIAUNKNOWN000000000")
    assert status == 403 and b"InvalidAccessKeyId" in body

    deadline = time.monotonic() + 2
    while sum(1 for m, p, st in s3.request_log() if (m, p, st) == ("GET", f"/{s3.bucket}/sig/blob", 206)) < 2:
        assert time.monotonic() < deadline, s3.request_log()
        time.sleep(0.05)


# ---------------------------------------------------------------- forward proxy


@pytest.fixture
def no_proxy_env(monkeypatch):
    """urllib would bypass the proxy for 127.0.0.1 if no_proxy says so."""
    for name in ("no_proxy", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)


def test_proxy_forwards_range(registry, proxy, no_proxy_env):
    digest = registry.push_blob(REPO, DATA)
    op = opener(proxy_url=proxy.url)
    blob_url = f"{registry.url}/v2/{REPO}/blobs/{digest}"
    assert_range_get(op, registry.url, REPO, digest, {})
    status, hdrs, body = call(op, "HEAD", blob_url)
    assert status == 200 and hdrs["Content-Length"] == str(len(DATA)) and body == b""
    status, _, body = call(op, "GET", f"{registry.url}/v2/{REPO}/blobs/sha256:{'0' * 64}")
    assert status == 404 and b"BLOB_UNKNOWN" in body
    assert proxy.requests[:2] == [("GET", blob_url), ("HEAD", blob_url)]


def test_proxy_stop_and_start(registry, proxy, no_proxy_env):
    op = opener(proxy_url=proxy.url)
    url = f"{registry.url}/v2/"
    keep_alive = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=5)
    keep_alive.request("GET", url)
    assert keep_alive.getresponse().read() is not None

    proxy.stop()
    with pytest.raises(urllib.error.URLError):
        op.open(url, timeout=5)
    with pytest.raises((OSError, http.client.HTTPException)):
        keep_alive.request("GET", url)
        keep_alive.getresponse()
    keep_alive.close()

    proxy.start()
    assert call(op, "GET", url)[0] == 200
    assert proxy.requests.count(("GET", url)) == 2


def test_proxy_connect_tunnel(registry_tls, proxy):
    conn = http.client.HTTPSConnection(
        "127.0.0.1", proxy.port, timeout=10, context=servers.client_ssl_context(registry_tls.ca_cert_path)
    )
    conn.set_tunnel(registry_tls.host)
    conn.request("GET", "/v2/")
    assert conn.getresponse().status == 200
    conn.close()
    assert proxy.requests == [("CONNECT", registry_tls.host)]
