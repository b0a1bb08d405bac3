"""Storage-side operations that are not reads: a registry client (manifests and whole
blobs, for image conversion), pushing blobs to a registry, keeping the blob cache within
its limits, and replacing a backend's registry credentials at runtime. Reads go through
``Image.open(..., config=...)``."""

from __future__ import annotations

import json
import os
from typing import TYPE_CHECKING, Any, Dict, Optional, Tuple, Union

from nydus_hybrid import _core

if TYPE_CHECKING:  # TypedDicts: annotations only, kept off the daemon's start path
    from nydus_hybrid.types import GcReport

PathArg = Union[str, "os.PathLike[str]"]


def registry_client(config: Union[str, Dict[str, Any]]) -> _core.RegistryClient:
    """A client of the repository a nydusd ``config`` (registry backend) names: manifests
    in and out, whole blobs fetched to a file (checked as they stream) and pushed from one.
    It keeps its auth token between calls."""
    if isinstance(config, dict):
        config = json.dumps(config)
    return _core.RegistryClient(config)


def push_blob(config: Union[str, Dict[str, Any]], path: PathArg, *, chunk_size: int = 0) -> Tuple[str, bool]:
    """Upload a blob file to the registry named by a nydusd ``config``: one PUT, or PATCHes
    of ``chunk_size`` bytes then a PUT. Returns ``(digest, sent)``; ``sent`` is False when
    the registry already had it."""
    return registry_client(config).push_blob(os.fspath(path), chunk_size)


def cache_gc(work_dir: PathArg, *, max_bytes: Optional[int] = None, max_age_secs: Optional[int] = None) -> GcReport:
    """Remove cached blobs unused for ``max_age_secs``, then the least recently used until
    the cache holds at most ``max_bytes``. Blobs open in any process are never removed.
    Returns ``{"removed", "freed_bytes", "in_use", "kept_bytes"}``."""
    return _core.cache_gc(os.fspath(work_dir), max_bytes, max_age_secs)


def docker_config_auth(host: str) -> Optional[str]:
    """The base64 ``user:password`` for ``host`` in docker's ``config.json``
    (``$DOCKER_CONFIG`` or ``~/.docker``), the one the registry backend falls back to."""
    return _core.docker_config_auth(host)


def set_registry_auth(backend_id: str, auth: str) -> None:
    """Replace the credentials (base64 ``user:password``) of every registry backend opened
    with this ``backend_id`` (``Image.open(..., backend_id=)``); they apply from the next
    request."""
    _core.set_registry_auth(backend_id, auth)
