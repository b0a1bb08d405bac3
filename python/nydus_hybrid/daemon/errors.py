"""Daemon errors and the one JSON error shape of the API (spec §1.2)."""

from __future__ import annotations

from typing import Any, Dict


class DaemonError(Exception):
    """An API-visible failure; ``status`` is the HTTP status it maps to."""

    status = 500

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message

    def body(self) -> Dict[str, Any]:
        # nydusd's `code` is always the literal UNDEFINED; clients only read `message`.
        return {"code": "UNDEFINED", "message": self.message}


class BadRequest(DaemonError):
    status = 400


class UnexpectedEvent(DaemonError):
    """An illegal state transition: 400, and nothing changes."""

    status = 400


class NoRoute(DaemonError):
    status = 404


class MetricsNotFound(DaemonError):
    status = 404


class NotReady(DaemonError):
    status = 503


class Unsupported(DaemonError):
    status = 501
