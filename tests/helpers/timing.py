"""The tests' waits, scaled by NYDUS_TEST_TIME_SCALE for slow hosts (the emulated VM of
tests/vm sets it): a budget that fits here would time out there, where an interpreter
takes seconds to start."""

from __future__ import annotations

import os

SCALE = max(1.0, float(os.environ.get("NYDUS_TEST_TIME_SCALE") or 1))


def scaled(seconds: float) -> float:
    return seconds * SCALE
