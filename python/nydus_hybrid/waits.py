"""How long we wait for another process (a daemon's socket, its state, a takeover): the
snapshotter's budgets, multiplied by NYDUS_HYBRID_WAIT_SCALE (at least 1) on slow hosts
such as an emulated VM, where an interpreter takes seconds to start. The test helpers'
waits use the same scale (tests/vm/guest/boot.sh sets it)."""

from __future__ import annotations

import os

SCALE = max(1.0, float(os.environ.get("NYDUS_HYBRID_WAIT_SCALE") or 1))


def scaled(seconds: float) -> float:
    return seconds * SCALE
