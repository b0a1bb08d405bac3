"""An image instance's nydusd configuration (spec A8.1 e). It starts from a template: the
nydusd document `[daemon] nydusd_config` names (v1 or v2), else a built-in one. A registry
backend is pointed at the image reference's host and repository, with its credentials,
`skip_ssl_verify`, and the mirrors that `[remote] mirrors_config.dir` lists for that host.
A template whose backend is something else (the `http-proxy` backend, a local directory,
object storage) keeps its backend: the data comes from there. The blob cache is always the
snapshotter's, so Cleanup and Usage see every instance's files.

Mirrors are containerd's `hosts.toml` files (`<dir>/<host>/hosts.toml`, else
`<dir>/_default/hosts.toml`), as nydus-snapshotter reads them. Each `[host."<url>"]` that may
pull becomes a backend mirror, with its `header` table and nydus-snapshotter's
`ping_url`, `health_check_interval` and `failure_limit`. The backend sends reads to a healthy
mirror first and falls back to the origin."""

from __future__ import annotations

import copy
import json
import os
import sys
from typing import Any, Dict, List, Optional

from nydus_hybrid.convert.reference import RegistryRef
from nydus_hybrid.snapshotter.errors import FailedPrecondition

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.9 and 3.10
    import tomli as tomllib

# What nydus-snapshotter's default fusedev template says, with our longer timeouts.
DEFAULT_TEMPLATE: Dict[str, Any] = {
    "device": {
        "backend": {"type": "registry", "config": {"timeout": 30, "connect_timeout": 10, "retry_limit": 2}},
        "cache": {"type": "blobcache", "config": {}},
    },
    "mode": "direct",
    "digest_validate": False,
    "enable_xattr": True,
    "iostats_files": False,
    "fs_prefetch": {"enable": True, "threads_count": 4, "prefetch_all": False},
}
MAX_HOSTS_FILE = 1 << 20


class TemplateError(ValueError):
    pass


def load_template(path: str) -> Dict[str, Any]:
    """A nydusd configuration document used as every instance's template."""
    try:
        with open(path) as f:
            doc = json.load(f)
    except OSError as e:
        raise TemplateError(f"{path}: {e.strerror}") from None
    except ValueError as e:
        raise TemplateError(f"{path}: not JSON ({e})") from None
    if not isinstance(doc, dict):
        raise TemplateError(f"{path}: not a JSON object")
    backend = doc.get("device", {}).get("backend") if "device" in doc else doc.get("backend")
    if not isinstance(backend, dict) or not isinstance(backend.get("type"), str):
        raise TemplateError(f"{path}: names no backend type (device.backend.type in v1, backend.type in v2)")
    if "device" in doc and backend["type"] == "http-proxy":
        raise TemplateError(f"{path}: the http-proxy backend needs a v2 document (version = 2)")
    return doc


def mirrors(mirrors_dir: str, ref: RegistryRef) -> List[Dict[str, Any]]:
    """The backend mirrors `mirrors_dir` gives the image's registry (none without a file)."""
    for name in (ref.host, ref.api_host, "_default"):
        path = os.path.join(mirrors_dir, name, "hosts.toml")
        if os.path.isfile(path):
            return _hosts_file(path)
    return []


def _hosts_file(path: str) -> List[Dict[str, Any]]:
    def bad(why: str) -> FailedPrecondition:
        return FailedPrecondition(f"mirrors_config.dir: {path}: {why}")

    try:
        with open(path, "rb") as f:
            data = f.read(MAX_HOSTS_FILE + 1)
        if len(data) > MAX_HOSTS_FILE:
            raise bad(f"larger than {MAX_HOSTS_FILE} bytes")
        doc = tomllib.loads(data.decode())
    except OSError as e:
        raise bad(e.strerror or str(e)) from None
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
        raise bad(f"not TOML ({e})") from None
    hosts = doc.get("host", {})
    if not isinstance(hosts, dict):
        raise bad('`host` must be a table of [host."<url>"] tables')
    out = []
    for url, h in hosts.items():
        if not isinstance(h, dict):
            raise bad(f"host {url!r}: not a table")
        if "pull" not in h.get("capabilities", ["pull", "resolve"]):
            continue
        out.append(_mirror(url, h, bad))
    return out


def _mirror(url: str, h: Dict[str, Any], bad: Any) -> Dict[str, Any]:
    base = url if "://" in url else f"https://{url}"
    scheme, _, rest = base.partition("://")
    authority, _, path = rest.partition("/")
    if scheme not in ("http", "https") or not authority or path.strip("/") not in ("", "v2"):
        raise bad(f"host {url!r}: expected http[s]://host[:port] (a mirror serves /v2/ at its root)")
    headers = {}
    for k, v in h.get("header", {}).items():
        values = v if isinstance(v, list) else [v]
        if not all(isinstance(x, str) for x in values):
            raise bad(f"host {url!r}: header {k!r} must be a string or a list of strings")
        headers[k] = ", ".join(values)
    m: Dict[str, Any] = {"host": f"{scheme}://{authority}", "headers": headers}
    for key, kind in (("ping_url", str), ("health_check_interval", int), ("failure_limit", int)):
        if key in h:
            if not isinstance(h[key], kind) or isinstance(h[key], bool) or (kind is int and h[key] < 0):
                raise bad(f"host {url!r}: {key} must be a {'string' if kind is str else 'non-negative integer'}")
            m[key] = h[key]
    return m


def backend_type(config: Dict[str, Any]) -> str:
    """The backend type of a v1 or v2 document."""
    b = config.get("device", {}).get("backend", {}) if "device" in config else config.get("backend", {})
    return str(b.get("type", ""))


def instance_config(
    template: Dict[str, Any],
    ref: RegistryRef,
    cache_dir: str,
    *,
    plain_http: bool = False,
    skip_verify: bool = False,
    auth: Optional[Dict[str, str]] = None,
    mirror_list: Optional[List[Dict[str, Any]]] = None,
) -> Dict[str, Any]:
    """The template filled in for one image (a new document; the template is unchanged)."""
    cfg = copy.deepcopy(template)
    registry = {
        "scheme": "http" if plain_http else "https",
        "host": ref.api_host,
        "repo": ref.repo,
        **({"skip_verify": True} if skip_verify else {}),
        **({"mirrors": mirror_list} if mirror_list else {}),
        **(auth or {}),
    }
    if "device" in cfg:  # v1
        device = cfg["device"]
        backend = device.setdefault("backend", {"type": "registry"})
        if backend.get("type") == "registry":
            backend["config"] = {**backend.get("config", {}), **registry}
        cache = device.setdefault("cache", {"type": "blobcache"})
        cache.setdefault("config", {})["work_dir"] = cache_dir
    else:  # v2
        backend = cfg.setdefault("backend", {"type": "registry"})
        if backend.get("type") == "registry":
            backend["registry"] = {**backend.get("registry", {}), **registry}
        cache = cfg.setdefault("cache", {"type": "blobcache"})
        cache.setdefault("filecache", {})["work_dir"] = cache_dir
    return cfg
