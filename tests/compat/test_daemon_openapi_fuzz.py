"""Property-based fuzz of the daemon's HTTP API against its own OpenAPI document
(`python/nydus_hybrid/daemon/openapi.yaml`), on the daemon `test_daemon_bad_input` uses too
(the `ctx` fixture of tests/compat/conftest.py: one daemon, the image mounted at `/base`;
and tests/helpers/daemons.py's `assert_healthy`, which reads a file through that live FUSE
mount).

Driver: plain hypothesis. Schemathesis was not used: it sends through `requests` (no
unix-socket transport of its own), pulls in a dozen packages and registers a pytest plugin
for the whole suite. hypothesis-jsonschema was not used either: its last release (0.23.1)
fails on every object schema with the Hypothesis this project runs (`'many' object has no
attribute 'more'`). `from_schema` below covers the JSON Schema subset that openapi.yaml's
request bodies and parameters use, and refuses any other keyword, so a schema change cannot
slip past it. Every request goes through `tests.helpers.daemons.ApiClient`, one keep-alive
connection on the unix socket, the way the Go client talks.

Every operation of the OpenAPI file is fuzzed, except these four bodyless PUTs of the
state machine, whose legitimate effect would end or replace the daemon under test:

* `PUT /api/v1/daemon/exit`: exits the process (spec §2.1 row 6, §3.3).
* `PUT /api/v1/daemon/start`: a state transition (READY -> RUNNING, §3.2); on this RUNNING
  daemon it is a no-op 400, but the state machine is not what this module fuzzes.
* `PUT /api/v1/daemon/fuse/sendfd`: hands the daemon's state and /dev/fuse fd to a
  supervisor (§4.3); this daemon has none.
* `PUT /api/v1/daemon/fuse/takeover`: replaces the running session with a supervisor's
  (§4.5), INIT -> READY.

(Their refusal of a body, before acting, is pinned by `test_daemon_bad_input`.)

Two tests per operation, `[<op>-conforming]` and `[<op>-violating]`, so that a bug of one
kind cannot hide one of the other (Hypothesis stops a test at its first failure):

* conforming: query parameters and bodies drawn from the document's schemas, plus realistic
  mount commands that succeed, optional parameters left out or not, unknown extra fields
  where the schema allows them;
* violating: a missing required query parameter, a malformed `mountpoint` (relative, empty,
  `.`/`..` segments, NUL: the parameter's documented rule), a missing body, a body where
  none belongs, random bytes, malformed or truncated JSON, a JSON value of the wrong type, an
  object without a required field, a field of the wrong type (null, a number for a string,
  numbers in a string list...), unknown fields where the schema forbids them.

Both kinds also carry query noise (unknown, repeated, badly percent-encoded parameters, which
the document does not forbid) and each body goes with the right, a wrong, an empty or a
garbled `Content-Type` (nydusd ignores the header: `curl -d` sends
`application/x-www-form-urlencoded`), so neither makes a request violating. Whether a
request conforms is decided from what is actually sent (the query as the server decodes it,
the body parsed as strict UTF-8 JSON the way serde_json reads it and validated against the
schema), not from what the generator meant; a draw of the wrong kind is discarded.

Mount, remount and umount only ever name mountpoints under `/fz<n>-*`, a namespace of each
example's own (or malformed ones that resolve nowhere), so the fuzz cannot detach `/base`,
and every example starts from the same state: the target, and maybe an instance nested
under it, mounted first or not. After every mount-family request: `/base` is still
attached, every instance listed in the namespace answers its metrics, the global inflight
list still answers, and the namespace can be emptied again. `assert_healthy` (a fresh read
of a 2.5 MB file through `/base`) runs after each test.

Checked for every response:

* its status is listed for the operation in openapi.yaml and its body validates against the
  documented schema (`tests.helpers.daemons.validate`; so a 5xx appears only where documented);
* every 4xx/5xx body is `{"code": "UNDEFINED", "message": str}`, the `Server` header is
  `Nydus API`, and the connection is kept alive (`tests.helpers.daemons.ApiClient`);
* a schema-violating request is refused with a 4xx, never a 2xx or a 5xx, unless it falls
  under one of the named nydusd quirks of `QUIRKS` below (spec reference in each);
* a conforming request to an operation without parameters or body succeeds (2xx).

After the run: the process lives, `GET /api/v1/daemon` says RUNNING with only `/base`
attached, a file read through the mount returns the right bytes, and the whole fuzz used one
connection (no answer closed it).

Budget: `NYDUS_FUZZ_EXAMPLES` requests per operation and kind (default 30, derandomized, so
CI sends the same requests every run: about 20 s here); setting it, e.g.
`NYDUS_FUZZ_EXAMPLES=500`, also randomizes the run. No timing is asserted.
"""

from __future__ import annotations

import dataclasses
import json
import os
import urllib.parse
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, FrozenSet, List, Optional, Set, Tuple

import jsonschema
import pytest
from hypothesis import HealthCheck, assume, event, given, note, settings
from hypothesis import strategies as st

from tests.helpers.daemons import BASE, ApiClient, Ctx, assert_healthy, spec, to_json_schema, validate

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or not os.path.exists("/dev/fuse"), reason="the daemon mounts FUSE: needs root and /dev/fuse"
)

EXAMPLES_ENV = os.environ.get("NYDUS_FUZZ_EXAMPLES")
EXAMPLES = int(EXAMPLES_ENV or "30")

SETTINGS = settings(
    max_examples=EXAMPLES,
    deadline=None,  # no timing assertions
    database=None,  # no .hypothesis/ in the work tree
    derandomize=EXAMPLES_ENV is None,  # CI: the same requests every run
    print_blob=True,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.filter_too_much,
        HealthCheck.data_too_large,
        HealthCheck.large_base_example,
    ],
)

# --- the operations --------------------------------------------------------------------------

EXCLUDED = {
    ("PUT", "/api/v1/daemon/exit"): "exits the daemon (spec §2.1 row 6, §3.3)",
    ("PUT", "/api/v1/daemon/start"): "state transition READY -> RUNNING (spec §2.1 row 5, §3)",
    ("PUT", "/api/v1/daemon/fuse/sendfd"): "hands state and /dev/fuse to a supervisor (spec §4.3)",
    ("PUT", "/api/v1/daemon/fuse/takeover"): "replaces the FUSE session, INIT -> READY (spec §4.4)",
}

MOUNT_PATH = "/api/v1/mount"
POOL = ("/fz-0", "/fz-1", "/fz-2")  # the fuzz's own instances; /base is never named
RUNTIME_KEYS = ("registry_auth", "proxy_url", "dragonfly_scheduler_endpoint")
HTTP_METHODS = ("get", "put", "post", "delete", "patch")


@dataclass
class Op:
    method: str
    path: str
    params: List[Dict[str, Any]]  # resolved OpenAPI parameter objects
    body_schema: Optional[Dict[str, Any]]  # plain JSON Schema of the application/json request body
    validator: Optional[jsonschema.Draft7Validator] = field(default=None, repr=False)

    @property
    def id(self) -> str:
        return f"{self.method} {self.path}"

    @property
    def mounts(self) -> bool:
        """Mount, remount or umount: the operations that must never name /base."""
        return self.path == MOUNT_PATH


def operations() -> List[Op]:
    ops = []
    for path, item in spec()["paths"].items():
        for method, op in item.items():
            if method not in HTTP_METHODS or (method.upper(), path) in EXCLUDED:
                continue
            params = [to_json_schema(p) for p in op.get("parameters", [])]
            body = op.get("requestBody")
            schema = to_json_schema(body["content"]["application/json"]["schema"]) if body else None
            ops.append(Op(method.upper(), path, params, schema, jsonschema.Draft7Validator(schema) if schema else None))
    return ops


OPS = operations()

# --- the rules: what counts as a violation, and the documented exceptions ------------------


def mountpoint_problem(value: str) -> Optional[str]:
    """The `mountpoint` parameter's documented rule: absolute, no `.` or `..` (and no NUL)."""
    if value == "":
        return "empty mountpoint"
    if not value.startswith("/"):
        return "relative mountpoint"
    if "\0" in value:
        return "NUL in mountpoint"
    if any(p in (".", "..") for p in value.split("/")):
        return "'.' or '..' segment in mountpoint"
    return None


def decoded_query(query: str) -> Dict[str, Any]:
    """The query as the server sees it: form-decoded, the first value of a repeated key."""
    out: Dict[str, Any] = {}
    for k, v in urllib.parse.parse_qsl(query, keep_blank_values=True, errors="replace"):
        out.setdefault(k, v)
    return out


class _Malformed(ValueError):
    pass


def _no_constants(name):
    raise _Malformed(f"{name} is not JSON")


def _has_surrogate(doc) -> bool:
    if isinstance(doc, str):
        return any(0xD800 <= ord(c) <= 0xDFFF for c in doc)
    if isinstance(doc, list):
        return any(_has_surrogate(d) for d in doc)
    if isinstance(doc, dict):
        return any(_has_surrogate(k) or _has_surrogate(v) for k, v in doc.items())
    return False


NOT_JSON = object()


def parse_json(raw: bytes):
    """Strict JSON as serde_json reads it: UTF-8, no NaN/Infinity, no lone surrogates."""
    try:
        doc = json.loads(raw.decode("utf-8"), parse_constant=_no_constants)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return NOT_JSON
    return NOT_JSON if _has_surrogate(doc) else doc


def normalize(op: Op, doc):
    """serde's reading of a body, where it is laxer than JSON Schema. nydusd's ApiMountCmd
    has `prefetch_files: Option<Vec<String>>` (spec §2.4, NY api/src/http.rs), so an explicit
    `null` there means "absent" and the request conforms (quirk `prefetch-files-null`)."""
    if op.path == MOUNT_PATH and isinstance(doc, dict) and "prefetch_files" in doc and doc["prefetch_files"] is None:
        doc = {k: v for k, v in doc.items() if k != "prefetch_files"}
    return doc


@dataclass(frozen=True)
class Req:
    method: str
    path: str
    query: str  # the raw, already-encoded query string
    body: Optional[bytes]  # None: no body at all
    ctype: Optional[str]  # Content-Type sent with a body; None: application/json
    intent: str  # what the generator meant; the verdict comes from `violations`

    def url(self) -> str:
        return self.path + ("?" + self.query if self.query else "")

    def __repr__(self) -> str:
        body = "<none>" if self.body is None else repr(self.body[:400]) + ("..." if len(self.body) > 400 else "")
        return f"Req({self.method} {self.url()} content-type={self.ctype!r} body={body} intent={self.intent!r})"


def violations(op: Op, req: Req) -> Tuple[Any, ...]:
    """(list of the ways `req` breaks the document, the parsed body or NOT_JSON)."""
    out = []
    q = decoded_query(req.query)
    for p in op.params:
        if p.get("required") and p["name"] not in q:
            out.append(f"missing required query parameter {p['name']}")
        if p["name"] == "mountpoint" and p["name"] in q:
            problem = mountpoint_problem(q["mountpoint"])
            if problem:
                out.append(problem)
    doc = NOT_JSON
    if op.body_schema is None:
        if req.body:
            out.append("a body where none belongs")
    elif not req.body:
        out.append("missing request body")
    else:
        doc = parse_json(req.body)
        if doc is NOT_JSON:
            out.append("body is not strict UTF-8 JSON")
        else:
            doc = normalize(op, doc)
            assert op.validator is not None  # there is a body schema
            out += [f"body{list(e.absolute_path)}: {e.message[:120]}" for e in op.validator.iter_errors(doc)]
    return out, doc


@dataclass(frozen=True)
class Quirk:
    name: str
    reference: str
    statuses: FrozenSet[Any]
    applies: Callable[[Op, Req, Any], bool]  # (op, req, parsed body or NOT_JSON) -> bool


def _unknown_runtime_key(op: Op, req: Req, doc) -> bool:
    return (
        op.method == "PUT"
        and op.path == "/api/v1/config"
        and isinstance(doc, dict)
        and all(isinstance(v, str) for v in doc.values())
        and any(k not in RUNTIME_KEYS for k in doc)
    )


# Schema-violating requests that may answer a 5xx, on purpose, as nydusd does. Nothing else
# that breaks the document may.
QUIRKS = (
    Quirk(
        "config-unknown-key",
        "spec §2.6 and §2.1 row 19; openapi RuntimeConfig: a string->string object with a key "
        "other than registry_auth/proxy_url/dragonfly_scheduler_endpoint is parsed, then refused "
        "with 500 Configure(ResponsePayloadType). (Non-string values fail the parse first: 400.)",
        frozenset({500}),
        _unknown_runtime_key,
    ),
    Quirk(
        "blob-api-on-fuse-daemon",
        "spec §1.2 (Unsupported: blob API on a fuse daemon) and §2.2; openapi /api/v2/blobs: this "
        "is a fuse daemon, so every /api/v2/blobs request answers 501 whatever its input "
        "(test_daemon_bad_input pins 501 even for malformed bodies).",
        frozenset({501}),
        lambda op, req, doc: op.path == "/api/v2/blobs",
    ),
    # Not a status exception but a reading of the body, applied in `normalize` above:
    # "prefetch-files-null": spec §2.4 (ApiMountCmd.prefetch_files is an Option), so
    # `"prefetch_files": null` is "absent" and such a mount command conforms.
)

# --- strategies --------------------------------------------------------------------------------

JSON_LEAF = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=20),
)
JSON_ANY = st.recursive(
    JSON_LEAF,
    lambda kids: st.one_of(st.lists(kids, max_size=4), st.dictionaries(st.text(max_size=8), kids, max_size=4)),
    max_leaves=8,
)

# The keywords `from_schema` understands; anything else in a request schema is an error.
SCHEMA_KEYWORDS = {
    "type",
    "properties",
    "required",
    "additionalProperties",
    "items",
    "enum",
    "minItems",
    "maxItems",
    "description",
    "default",
}


def from_schema(schema: Dict[str, Any]) -> st.SearchStrategy:
    """Values valid against `schema`, for the JSON Schema subset of openapi.yaml's requests."""
    unknown = set(schema) - SCHEMA_KEYWORDS
    assert not unknown, f"from_schema does not know {sorted(unknown)}: extend it"
    if "enum" in schema:
        return st.sampled_from(schema["enum"])
    kind = schema.get("type")
    if isinstance(kind, list):
        return st.one_of([from_schema(dict(schema, type=k)) for k in kind])
    if kind is None:
        return JSON_ANY
    if kind == "string":
        return st.text(max_size=24)
    if kind == "integer":
        return st.integers(-(2**63), 2**64 - 1)
    if kind == "number":
        return st.floats(allow_nan=False, allow_infinity=False)
    if kind == "boolean":
        return st.booleans()
    if kind == "null":
        return st.none()
    if kind == "array":
        lo = schema.get("minItems", 0)
        return st.lists(from_schema(schema.get("items", {})), min_size=lo, max_size=schema.get("maxItems", lo + 4))
    assert kind == "object", schema
    props = schema.get("properties", {})
    required = set(schema.get("required", []))
    fixed = st.fixed_dictionaries(
        {k: from_schema(v) for k, v in props.items() if k in required},
        optional={k: from_schema(v) for k, v in props.items() if k not in required},
    )
    more = schema.get("additionalProperties", True)
    if more is False:
        return fixed
    values = JSON_ANY if more is True else from_schema(more)
    extra = st.dictionaries(st.text(max_size=10).filter(lambda k: k not in props), values, max_size=3)
    return st.builds(lambda a, b: {**b, **a}, fixed, extra)


SAFE_CHARS = st.characters(exclude_categories=["Cs"], exclude_characters="/\0")

CONTENT_TYPES = [
    "application/json",
    "application/x-www-form-urlencoded",
    "text/plain",
    "application/octet-stream",
    "",
    "application/json; charset=utf-8",
    "multipart/form-data; boundary=xyz",
    "json",
    "application/json;;;charset",
    "*/*",
]


def encode_pairs(pairs) -> st.SearchStrategy:
    """Percent-encode (Go's `/` -> `%2F`, or curl's literal `/`) and join."""
    return st.sampled_from(["", "/"]).map(
        lambda safe: "&".join(f"{urllib.parse.quote(k, safe='')}={urllib.parse.quote(v, safe=safe)}" for k, v in pairs)
    )


QUERY_NOISE = st.sampled_from(
    ["bogus=1", "&&", "=", "x=%zz", "%zz=1", "y=%ff", "z=%c3%28", "+=+", "a", "id2=%2F", "latest=", "verbose=true"]
)


def mount_mountpoints(valid: bool) -> st.SearchStrategy:
    """Mountpoints for mount/remount/umount: valid ones under /fz-*, malformed ones that
    resolve nowhere. Never /base, never /."""
    if valid:
        return st.one_of(
            st.sampled_from(POOL),
            st.sampled_from(POOL).map(lambda p: "/" + p),  # //fz-0: normalized to /fz-0
            st.sampled_from(POOL).map(lambda p: p + "/"),
            st.text(SAFE_CHARS, min_size=1, max_size=12).map(lambda s: "/fz-" + s),
            st.tuples(st.sampled_from(POOL), st.text(SAFE_CHARS, min_size=1, max_size=6)).map(
                lambda t: f"{t[0]}/{t[1]}"
            ),
        )
    return st.one_of(
        st.sampled_from(
            [
                "",
                ".",
                "..",
                "/.",
                "/..",
                "fz-0",
                "fz-rel/x",
                "/fz-0/..",
                "/fz-0/../fz-1",
                "/fz-0/./x",
                "/./fz-0",
                "/fz-\0",
                "\0/fz-0",
                "./fz-0",
            ]
        ),
        st.text(SAFE_CHARS, min_size=1, max_size=10).map(lambda s: "fz-" + s),  # relative
    )


def param_values(op: Op, p: Dict[str, Any]) -> st.SearchStrategy:
    name = p["name"]
    schema_values = from_schema(p.get("schema", {"type": "string"})).filter(lambda v: isinstance(v, str))
    if name == "mountpoint" and op.mounts:
        return mount_mountpoints(valid=True)
    if name == "mountpoint":  # GET /daemon/backend only reads
        return st.one_of(st.sampled_from([BASE, "/", "/fz-0", "/nope", "//base", "/base/"]), schema_values)
    if name == "id":
        return st.one_of(st.sampled_from([BASE, "/", "", "/fz-0", "/nope", "base"]), schema_values)
    if name == "latest":
        return st.one_of(st.sampled_from(["true", "false", "TRUE", "1", ""]), schema_values)
    return schema_values


@st.composite
def queries(draw, op: Op, violate: bool) -> Tuple[Any, ...]:
    """(encoded query, intent). `violate`: drop a required parameter or break `mountpoint`."""
    pairs, intent = [], []
    required = [p["name"] for p in op.params if p.get("required")]
    broken = draw(st.sampled_from(required)) if violate else None
    how = draw(st.sampled_from(["drop", "malformed"] if broken == "mountpoint" else ["drop"])) if broken else None
    for p in op.params:
        name = p["name"]
        if name == broken and how == "drop":
            intent.append(f"without {name}")
            continue
        if not p.get("required") and draw(st.booleans()):
            continue
        if name == broken:
            pairs.append((name, draw(mount_mountpoints(valid=False))))
            intent.append(f"malformed {name}")
        else:
            pairs.append((name, draw(param_values(op, p))))
    if op.mounts and any(k == "mountpoint" for k, _ in pairs) and draw(st.integers(0, 5)) == 0:
        pairs.append(("mountpoint", draw(st.sampled_from(POOL))))  # repeated: the server reads the first
        intent.append("repeated mountpoint")
    text = draw(encode_pairs(pairs))
    noise = draw(st.lists(QUERY_NOISE, max_size=2))
    if noise:
        intent.append("query noise")
        parts = [text, *noise] if text else noise
        text = "&".join(draw(st.permutations(parts)))
    return text, intent


def realistic_mount_cmd(shared: Ctx) -> st.SearchStrategy:
    """Mount commands that mostly succeed, and near misses (conforming, failing: 500)."""
    boot = str(shared.image.boot)
    good = json.dumps(shared.config("/fz"))
    configs = st.one_of(
        st.just(good),
        st.sampled_from(
            [
                json.dumps(dict(shared.config("/fz"), digest_validate=True)),
                json.dumps(dict(shared.config("/fz"), mode="cached")),
                json.dumps({"device": {}, "mode": "direct"}),
                "{}",
                "",
                "{nope",
                "[]",
                "null",
                'version = 2\nid = "x"\n',
            ]
        ),
        st.text(max_size=40),
    )
    prefetch = st.lists(
        st.sampled_from(["/hello.txt", "/dir/big.bin", "/dir", "/", "/nope", "hello.txt", "", "/dir/../hello.txt"]),
        max_size=3,
    )

    @st.composite
    def cmd(draw):
        doc = {
            "source": draw(st.one_of(st.just(boot), st.sampled_from([str(shared.workdir), "/nonexistent", ""]))),
            "config": draw(configs),
        }
        fs_type = draw(st.one_of(st.just("rafs"), st.sampled_from([None, "", "RAFS", "passthrough", "ext4"])))
        if fs_type is not None:
            doc["fs_type"] = fs_type
        if draw(st.booleans()):
            doc["prefetch_files"] = draw(st.one_of(prefetch, st.none()))
        return doc

    exact = st.just({"fs_type": "rafs", "source": boot, "config": good})
    return st.one_of(exact, cmd())


def good_docs(op: Op, shared: Ctx) -> st.SearchStrategy:
    assert op.body_schema is not None  # only operations with a body have body documents
    docs = from_schema(op.body_schema)
    if op.path == MOUNT_PATH:
        return st.one_of(realistic_mount_cmd(shared), docs)
    if op.path.endswith("/daemon") and op.method == "PUT":
        levels = st.sampled_from(["info", "INFO", "Warn", "error", "debug", "off", "trace"])
        return st.one_of(levels.map(lambda lv: {"log_level": lv}), docs)
    if op.path == "/api/v1/config":
        return st.one_of(st.just({"registry_auth": "dXNlcjpwYXNz"}), st.just({"proxy_url": ""}), docs)
    return docs


def _invalid_for(schema: Dict[str, Any]) -> st.SearchStrategy:
    """Values that break `schema`: the usual suspects first (null, a number for a string,
    numbers inside a string list...), then anything."""
    v = jsonschema.Draft7Validator(schema)
    usual: List[Any] = [None, True, 0, -1, 1.5, "", "x", [], ["x"], [None], [1, 2], [True, "x"], [{}], {}, {"k": "v"}]
    return st.one_of(
        st.sampled_from([x for x in usual if not v.is_valid(x)]), JSON_ANY.filter(lambda x: not v.is_valid(x))
    )


@st.composite
def bodies(draw, op: Op, shared: Ctx, violate: bool) -> Tuple[Any, ...]:
    """(body bytes or None, intent). `violate`: a body that breaks the document."""
    if op.body_schema is None:
        kind = draw(st.sampled_from(["json", "bytes"] if violate else ["none", "none", "empty"]))
        if kind == "none":
            return None, "no body"
        if kind == "empty":
            return b"", "empty body"
        if kind == "json":
            return json.dumps(draw(JSON_ANY)).encode(), "a JSON body where none belongs"
        return draw(st.binary(min_size=1, max_size=64)), "random bytes where no body belongs"

    schema = op.body_schema
    props = schema.get("properties", {})
    closed = schema.get("additionalProperties", True) is False
    if violate:
        kinds = ["wrong-type", "wrong-type", "wrong-top-level", "malformed", "bytes", "empty"]
        kinds += ["missing-required"] * bool(schema.get("required")) + ["extra-field"] * closed
    else:
        kinds = ["good", "good"] + ["extra-field"] * (not closed)
    kind = draw(st.sampled_from(kinds))
    if kind == "empty":
        return draw(st.sampled_from([None, b""])), "no body"
    if kind == "bytes":
        return draw(st.binary(max_size=256)), "random bytes"
    if kind == "wrong-top-level":
        doc = draw(JSON_ANY.filter(lambda x: not isinstance(x, dict)))
        return json.dumps(doc).encode(), "JSON of the wrong type"
    doc = dict(draw(good_docs(op, shared)))
    intent = "conforming body"
    if kind == "missing-required":
        name = draw(st.sampled_from(schema["required"]))
        doc.pop(name, None)
        intent = f"without {name}"
    elif kind == "wrong-type":
        name = draw(st.sampled_from(sorted(props)))
        doc[name] = draw(_invalid_for(props[name]))
        intent = f"{name} of the wrong type"
    elif kind == "extra-field":
        extra = draw(
            st.dictionaries(
                st.text(min_size=1, max_size=10).filter(lambda k: k not in props), JSON_ANY, min_size=1, max_size=3
            )
        )
        doc.update(extra)
        intent = "unknown extra fields"
    raw = json.dumps(doc, ensure_ascii=draw(st.booleans())).encode()
    if kind == "malformed":
        how = draw(st.sampled_from(["truncate", "insert", "single-quotes", "trailing"]))
        if how == "truncate":
            raw = raw[: draw(st.integers(1, len(raw) - 1))]
        elif how == "insert":
            at = draw(st.integers(1, len(raw) - 1))
            raw = raw[:at] + draw(st.sampled_from([b"{", b"}", b",", b'"', b"\xff", b"\x00", b":", b"]"])) + raw[at:]
        elif how == "single-quotes":
            raw = raw.replace(b'"', b"'")
        else:
            raw += draw(st.sampled_from([b"x", b",", b"}", b"{}", b"\xff"]))
        intent = f"malformed JSON ({how})"
    return raw, intent


@st.composite
def requests_for(draw, op: Op, shared: Ctx, violating: bool) -> Req:
    """A request meant to conform, or to break the document in its query, its body or both."""
    where = set()
    if violating:
        has_required = any(p.get("required") for p in op.params)
        where = draw(st.sampled_from([{"body"}, {"query"}, {"query", "body"}] if has_required else [{"body"}]))
    query, qintent = draw(queries(op, "query" in where))
    body, bintent = draw(bodies(op, shared, "body" in where))
    ctype = None
    if body:
        ctype = draw(st.one_of(st.just(None), st.sampled_from(CONTENT_TYPES)))
    return Req(op.method, op.path, query, body, ctype, "; ".join([*qintent, bintent]))


# --- running -----------------------------------------------------------------------------------


class Fuzz:
    def __init__(self, shared: Ctx):
        self.ctx = shared
        self.client = ApiClient(shared.daemon.sock, timeout=20)
        self.seen: Dict[str, Any] = {}  # op id -> {"conforming": n, "violating": n, statuses...}
        self.examples = 0
        self.stuck: Set[Any] = set()  # listed instances that could not be detached

    def send(self, req: Req):
        headers = {"Content-Type": req.ctype} if req.body and req.ctype is not None else None
        try:
            # The client checks the error shape, the Server header and keep-alive itself.
            return self.client.request(req.method, req.url(), raw=req.body, headers=headers, check=False)
        except Exception:
            self.client.close()  # a half-read answer must not poison the next example
            raise

    def attached(self) -> List[Any]:
        return sorted(self.client.get("/api/v1/daemon").body["backend_collection"])

    def ensure_mounted(self, mountpoint: str) -> None:
        cmd = {"fs_type": "rafs", "source": str(self.ctx.image.boot), "config": json.dumps(self.ctx.config(mountpoint))}
        r = self.client.post(f"{MOUNT_PATH}?mountpoint={urllib.parse.quote(mountpoint, safe='')}", cmd)
        # 500: already there; 400: it would nest with an instance (refused by design: the Vfs
        # drops a nested instance with its parent)
        assert r.status in (204, 500) or (r.status == 400 and "would nest" in r.body["message"]), r

    def detach_fuzz_instances(self, prefix: str = "/fz") -> None:
        """Detach the fuzz's instances; one that cannot be is reported once, then left."""
        failed = []
        for mp in sorted(self.attached(), reverse=True):  # nested instances before their parents
            if mp != BASE and mp.startswith(prefix) and mp not in self.stuck:
                r = self.client.delete(f"{MOUNT_PATH}?mountpoint={urllib.parse.quote(mp, safe='')}")
                if r.status != 204:
                    self.stuck.add(mp)
                    failed.append(f"cannot detach {mp!r}, which GET /api/v1/daemon lists: {r!r}")
        assert not failed, "; ".join(failed)

    def fresh_namespace(self, req: Req) -> Tuple[Any, ...]:
        """The request with its `/fz-` mountpoints moved to a namespace of their own
        (`/fz<n>-`), so every example starts from the same daemon state and replays alike."""
        self.examples += 1
        return dataclasses.replace(req, query=req.query.replace("fz-", f"fz{self.examples}-")), f"/fz{self.examples}-"

    def inflight_ok(self) -> bool:
        return self.client.get("/api/v1/metrics/inflight", check=False).status in (200, 204)

    def check_instances(self, after: Req, namespace: str, inflight_was_ok: bool) -> None:
        """After a mount-family request: /base is still attached, every instance listed in
        the example's namespace is really there (its metrics answer), the global inflight
        list still works, and the namespace can be emptied again."""
        attached = self.attached()
        assert BASE in attached, f"{after!r} detached {BASE}"
        for mp in [BASE] + [m for m in attached if m.startswith(namespace)]:
            r = self.client.get(f"/api/v1/metrics?id={urllib.parse.quote(mp, safe='')}", check=False)
            assert r.status == 200, f"after {after!r}: {mp!r} is listed but its metrics answer {r!r}"
        if inflight_was_ok:
            r = self.client.get("/api/v1/metrics/inflight", check=False)
            assert r.status in (200, 204), f"after {after!r}: GET /api/v1/metrics/inflight answered {r!r}"
        self.detach_fuzz_instances(namespace)


@pytest.fixture(scope="module")
def fuzz(ctx):
    f = Fuzz(ctx)
    yield f
    f.client.close()


def check(fuzz: Fuzz, op: Op, req: Req, violating: bool) -> None:
    broken, doc = violations(op, req)
    assume(bool(broken) == violating)  # the verdict comes from what is sent, not from the intent
    stats = fuzz.seen.setdefault(op.id, {"conforming": 0, "violating": 0})
    stats["violating" if broken else "conforming"] += 1
    if broken:
        note(f"violations: {broken}")
    reply = fuzz.send(req)
    ctype = reply.headers.get("Content-Type", "")
    note(f"response: {reply.status} {ctype} {reply.raw[:400]!r}")
    event(f"{'violating' if broken else 'conforming'} -> {reply.status}")
    stats[reply.status] = stats.get(reply.status, 0) + 1

    # documented status, and the body matches the documented schema
    validate(op.path, op.method, reply.status, ctype, reply.raw)
    if broken:
        allowed = set(range(400, 500))
        quirks = [q for q in QUIRKS if q.applies(op, req, doc)]
        for q in quirks:
            allowed |= q.statuses
        note(f"quirks that apply: {[q.name for q in quirks]}")
        assert reply.status < 500 or reply.status in allowed, (
            f"schema-violating request answered {reply.status} (no documented quirk): {req!r} -> {reply.raw[:400]!r}"
        )
        assert reply.status in allowed, (
            f"schema-violating request was accepted ({reply.status}): {req!r} violations={broken}"
        )
    elif not op.params and op.body_schema is None and op.path != "/api/v2/blobs":
        # nothing to get wrong: a conforming request to an input-free operation succeeds
        assert 200 <= reply.status < 300, f"input-free operation failed: {req!r} -> {reply!r}" + (
            f" (the daemon still lists instances an earlier test could not detach: {sorted(fuzz.stuck)})"
            if fuzz.stuck
            else ""
        )


@pytest.mark.parametrize("kind", ["conforming", "violating"])
@pytest.mark.parametrize("op", OPS, ids=[o.id for o in OPS])
def test_operation(ctx, fuzz, op, kind):
    """Schema-conforming, or schema-violating, requests for one operation; the daemon stays
    healthy."""
    violating = kind == "violating"

    @SETTINGS
    @given(data=st.data())
    def run(data):
        req = data.draw(requests_for(op, ctx, violating), label="request")
        if not op.mounts:
            check(fuzz, op, req, violating)
            return
        req, namespace = fuzz.fresh_namespace(req)
        note(f"sent as: {req!r}")
        mp = decoded_query(req.query).get("mountpoint")
        premount = "nothing"
        if mp is not None and mountpoint_problem(mp) is None:
            # the target (for PUT/DELETE), and maybe an instance nested under it, exist first
            premount = data.draw(
                st.sampled_from(
                    ["nothing", "target", "target and a child"] if op.method != "POST" else ["nothing", "a child"]
                ),
                label="mounted first",
            )
        assume(bool(violations(op, req)[0]) == violating)
        inflight_was_ok = fuzz.inflight_ok()
        if "target" in premount:
            fuzz.ensure_mounted(mp)
        if "child" in premount:
            assert mp is not None  # premount is drawn for a valid mountpoint only
            fuzz.ensure_mounted(mp.rstrip("/") + "/child")
        check(fuzz, op, req, violating)
        fuzz.check_instances(req, namespace, inflight_was_ok)

    fuzz.seen.pop(op.id, None)
    try:
        run()
    except BaseException as e:
        for problem in tidy(fuzz, op):  # keep the fuzz's own failure first
            if hasattr(e, "add_note"):
                e.add_note(f"and then, tidying up: {problem}")
        raise
    problems = tidy(fuzz, op)
    assert not problems, problems
    assert fuzz.seen.get(op.id, {}).get(kind), f"no {kind} request was sent to {op.id}: {fuzz.seen.get(op.id)}"
    assert_healthy(ctx)


def tidy(fuzz: Fuzz, op: Op) -> List[Any]:
    """Undo what an operation's fuzz may have left: the log level, fuzz instances."""
    problems = []
    try:
        if op.path.endswith("/daemon") and op.method == "PUT":
            assert fuzz.client.put("/api/v1/daemon", {"log_level": "info"}).status == 204
        if op.mounts:
            fuzz.detach_fuzz_instances()
    except AssertionError as e:
        problems.append(str(e))
    return problems


def test_daemon_survived_the_fuzz(ctx, fuzz):
    """After everything: the daemon is alive, RUNNING, with only /base attached; a fresh read
    through the mount is right; and one keep-alive connection carried the whole fuzz."""
    fuzz.detach_fuzz_instances()
    assert ctx.daemon.alive(), ctx.daemon.log_text()
    info = fuzz.client.get("/api/v1/daemon").body
    assert info["state"] == "RUNNING"
    assert sorted(info["backend_collection"]) == [BASE], f"left over: {sorted(info['backend_collection'])}"
    assert_healthy(ctx)
    assert fuzz.client.conn.connects == 1, "an answer closed the keep-alive connection"
