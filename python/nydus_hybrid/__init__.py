"""nydus-hybrid: lazy-loading container images in Nydus's RAFS v6 format.

The Rust core (``nydus_hybrid._core``) reads and builds images; this package adds the
command line and orchestration around it.
"""

from nydus_hybrid._core import __version__
from nydus_hybrid.errors import NydusError
from nydus_hybrid.image import BuildReport, Image, StatResult, build

__all__ = ["Image", "StatResult", "BuildReport", "build", "NydusError", "__version__"]
