"""nydus-hybrid: lazy-loading container images in Nydus's RAFS v6 format.

The Rust core (``nydus_hybrid._core``) reads and builds images; this package adds the
command line and orchestration around it. ``ARCHITECTURE.md`` maps the subpackages.
"""

from nydus_hybrid.errors import NydusError
from nydus_hybrid.image import BuildReport, Image, StatResult, build
from nydus_hybrid.version import GIT_COMMIT, __version__

__all__ = ["GIT_COMMIT", "BuildReport", "Image", "NydusError", "StatResult", "__version__", "build"]
