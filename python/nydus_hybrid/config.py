"""nydusd configuration documents: v2 (JSON or TOML) and v1 JSON, validated by the Rust core
with the same rules the daemon applies. Errors raise ``ConfigError`` naming the field."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any, Dict, Union

from nydus_hybrid import _core

if TYPE_CHECKING:  # TypedDicts: annotations only, kept off the daemon's start path
    from nydus_hybrid.types import NormalizedConfig


def parse(doc: Union[str, bytes, Dict[str, Any]]) -> NormalizedConfig:
    """Validate a document and return its normalised v2 form (secrets left out)."""
    if isinstance(doc, dict):
        doc = json.dumps(doc)
    elif isinstance(doc, bytes):
        doc = doc.decode()
    return _core.parse_config(doc)
