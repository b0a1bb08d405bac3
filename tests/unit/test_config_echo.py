"""The configuration echo (`GET /api/v1/daemon`'s per-instance `config`, and
`nydus_hybrid.config.parse`) has nydusd's shape for every backend and cache: clients such as
`nydusctl info` deserialize it strictly, so a string is never null and every key is there.
Credentials never appear in it."""

from __future__ import annotations

import base64
import json
from typing import Any, Dict, Iterator, List, Tuple

import jsonschema
import pytest

from nydus_hybrid import config as nconfig
from tests.helpers.daemons import spec, to_json_schema

SECRETS = ("s3cr3t-password", "AKIDSECRET", "sk-very-secret", "Bearer mirror-token", "reg-token-1")
CONN = {
    "timeout": 7,
    "proxy": {"url": "http://127.0.0.1:65001", "fallback": False},
    "mirrors": [{"host": "http://127.0.0.1:65002", "headers": {"Authorization": "Bearer mirror-token"}}],
}
AUTH = base64.b64encode(b"user:s3cr3t-password").decode()

DOCS: List[Tuple[str, Dict[str, Any]]] = [
    (
        "v1 localfs blobcache",
        {
            "device": {
                "id": "/snap1",
                "backend": {"type": "localfs", "config": {"dir": "/blobs"}},
                "cache": {"type": "blobcache", "config": {"work_dir": "/cache"}},
            },
            "mode": "direct",
            "fs_prefetch": {"enable": True, "threads_count": 3},
        },
    ),
    ("v2 localfs, no cache", {"version": 2, "backend": {"type": "localfs", "localfs": {"blob_file": "/b"}}}),
    (
        "v2 registry",
        {
            "version": 2,
            "backend": {
                "type": "registry",
                "registry": {
                    "host": "127.0.0.1:5000",
                    "repo": "a/b",
                    "auth": AUTH,
                    "registry_token": "reg-token-1",
                    **CONN,
                },
            },
            "cache": {"type": "filecache", "filecache": {"work_dir": "/c"}, "prefetch": {"enable": False}},
            "rafs": {"mode": "cached", "prefetch": {"enable": True}},
        },
    ),
    (
        "v2 s3",
        {
            "version": 2,
            "id": "img",
            "backend": {
                "type": "s3",
                "s3": {
                    "endpoint": "127.0.0.1:9000",
                    "region": "r",
                    "bucket_name": "b",
                    "access_key_id": "AKIDSECRET",
                    "access_key_secret": "sk-very-secret",
                    **CONN,
                },
            },
            "cache": {"type": "fscache", "fscache": {"work_dir": "/fs"}},
        },
    ),
    ("v2 http-proxy", {"version": 2, "backend": {"type": "http-proxy", "http-proxy": {"addr": "/run/p.sock"}}}),
]


def echo_schema() -> Dict[str, Any]:
    schema: Dict[str, Any] = to_json_schema(spec()["components"]["schemas"]["ConfigEcho"])
    return schema


def nulls(doc: Any, at: str = "") -> Iterator[str]:
    if doc is None:
        yield at
    elif isinstance(doc, dict):
        for k, v in doc.items():
            yield from nulls(v, f"{at}.{k}")
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            yield from nulls(v, f"{at}[{i}]")


# nydusd's Option fields: the sub-structs of the backends and caches not in use, and tokens
NULLABLE = {f".backend.{k}" for k in ("localdisk", "localfs", "oss", "s3", "registry", "http-proxy")} | {
    ".cache.filecache",
    ".cache.fscache",
    ".backend.registry.auth",
    ".backend.registry.registry_token",
}


@pytest.mark.parametrize("name, doc", DOCS, ids=[n for n, _ in DOCS])
def test_echo_has_nydusds_shape_and_no_secrets(name, doc):
    echo = nconfig.parse(doc)
    jsonschema.validate(echo, echo_schema())
    assert set(nulls(echo)) <= NULLABLE, sorted(set(nulls(echo)) - NULLABLE)
    kind = doc["backend"]["type"] if "version" in doc else doc["device"]["backend"]["type"]
    assert echo["backend"][kind] is not None
    in_use = [k for k, v in echo["backend"].items() if k != "type" and v is not None]
    assert in_use == [kind], in_use
    text = json.dumps(echo)
    for secret in (*SECRETS, AUTH):
        assert secret not in text, f"{secret!r} leaked into the echo"


def test_v1_is_echoed_as_v2_with_its_values():
    echo = nconfig.parse(DOCS[0][1])
    assert echo["version"] == 2 and echo["id"] == "/snap1"
    assert echo["cache"]["type"] == "blobcache"
    assert echo["cache"]["filecache"] == {"work_dir": "/cache", "disable_indexed_map": False}
    assert echo["cache"]["fscache"] is None
    assert echo["rafs"]["prefetch"]["enable"] is True and echo["rafs"]["prefetch"]["threads"] == 3
    assert echo["backend"]["localfs"] == {"blob_file": "", "dir": "/blobs", "alt_dirs": []}


def test_network_settings_are_echoed():
    reg = nconfig.parse(DOCS[2][1])["backend"]["registry"]
    assert reg["host"] == "127.0.0.1:5000" and reg["timeout"] == 7 and reg["auth"] is None
    assert reg["proxy"]["url"] == "http://127.0.0.1:65001" and reg["proxy"]["fallback"] is False
    assert reg["mirrors"][0]["host"] == "http://127.0.0.1:65002" and reg["mirrors"][0]["headers"] == {}


def test_the_schema_rejects_a_null_string():
    """The check above can fail: the echo nydusctl crashed on had "blob_file": null."""
    bad = nconfig.parse(DOCS[0][1])
    bad["backend"]["localfs"]["blob_file"] = None
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, echo_schema())
