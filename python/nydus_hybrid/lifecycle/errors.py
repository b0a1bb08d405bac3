"""Errors of the handover between daemons: one base class, one line each."""

from __future__ import annotations


class LifecycleError(Exception):
    """A handover, upgrade or failover step that could not be done; the message says why."""


class SupervisorError(LifecycleError):
    """A failed exchange: nothing listening, no fd, a peer that went silent, too much data."""


class UpgradeError(LifecycleError):
    """A sequence that could not complete; the message says at which step."""


class StateError(LifecycleError):
    """A state that cannot be taken over: truncated, corrupt, or from a newer daemon. The
    message is in nydusd's ``Upgrade(Restore(...))`` form and the daemon's API answers it
    with ``status``."""

    status = 500

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message
