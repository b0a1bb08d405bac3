"""What this build is: the package version and the git commit, build time, profile and
compiler the Rust core was built with (nydusd's ``--version`` and ``GET /api/v1/daemon``
fields)."""

from __future__ import annotations

from typing import Dict

from nydus_hybrid import _core

__version__: str = _core.__version__
GIT_COMMIT: str = _core.GIT_COMMIT


def build_info() -> Dict[str, str]:
    """nydusd's ``BuildTimeInfo`` shape."""
    return {
        "package_ver": __version__,
        "git_commit": GIT_COMMIT,
        "build_time": _core.BUILD_TIME,
        "profile": _core.PROFILE,
        "rustc": _core.RUSTC,
    }
