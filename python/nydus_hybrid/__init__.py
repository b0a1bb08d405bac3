"""nydus-hybrid: lazy-loading container images in Nydus's RAFS v6 format.

The Rust core (``nydus_hybrid._core``) reads and builds images; this package adds the
command line and orchestration around it. ``ARCHITECTURE.md`` maps the subpackages.

The names below load on first use (PEP 562), so that a process which needs only part of
the package, such as the daemon on its way to a mounted image, does not import the rest.
"""

from __future__ import annotations

import importlib

TYPE_CHECKING = False  # not typing's: the daemon's early mount imports this package, not typing
if TYPE_CHECKING:
    from typing import Any

    from nydus_hybrid.builder import BuildReport, build
    from nydus_hybrid.errors import NydusError
    from nydus_hybrid.image import Image, StatResult
    from nydus_hybrid.version import GIT_COMMIT, __version__

_WHERE = {
    "NydusError": "nydus_hybrid.errors",
    "BuildReport": "nydus_hybrid.builder",
    "Image": "nydus_hybrid.image",
    "StatResult": "nydus_hybrid.image",
    "build": "nydus_hybrid.builder",
    "GIT_COMMIT": "nydus_hybrid.version",
    "__version__": "nydus_hybrid.version",
}

__all__ = ["GIT_COMMIT", "BuildReport", "Image", "NydusError", "StatResult", "__version__", "build"]


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'nydus_hybrid' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
