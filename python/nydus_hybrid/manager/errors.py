"""Errors of the daemon manager: one base class, one line each."""

from __future__ import annotations


class ManagerError(Exception):
    """A manager operation that could not be done; the message says why."""


class StoreError(ManagerError):
    """The SQLite store cannot be used (damaged, newer schema) or a record conflicts."""


class DaemonStartError(ManagerError):
    """A daemon could not be started (missing binary, bad socket path, never RUNNING)."""
