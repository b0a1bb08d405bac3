"""The daemon state machine of spec §3: reported states INIT, READY, RUNNING, STOPPED.

Each event names the states it may start from; any other pair is refused with
``UnexpectedEvent`` (HTTP 400) and changes nothing. The action runs before the state
moves, so a failed action leaves the state as it was (a failed takeover stays INIT and may
be retried, unlike nydusd's quirk)."""

from __future__ import annotations

import threading
from typing import Callable, Optional

from nydus_hybrid.daemon.errors import UnexpectedEvent

INIT, READY, RUNNING, STOPPED = "INIT", "READY", "RUNNING", "STOPPED"

# event -> {from state: to state}
TRANSITIONS = {
    "takeover": {INIT: READY},
    "start": {READY: RUNNING},
    "stop": {RUNNING: READY, READY: STOPPED, INIT: STOPPED},
    "exit": {READY: STOPPED},
}


class StateMachine:
    def __init__(self, state: str = INIT, on_change: Optional[Callable[[str, str, str], None]] = None):
        self._state = state
        self._lock = threading.RLock()
        self._on_change = on_change

    @property
    def state(self) -> str:
        return self._state

    def force(self, state: str) -> None:
        """Set the state at start-up (a normal start reaches RUNNING before the API opens)."""
        self._state = state

    def fire(self, event: str, action: Optional[Callable[[], None]] = None) -> str:
        with self._lock:
            target = TRANSITIONS.get(event, {}).get(self._state)
            if target is None:
                raise UnexpectedEvent(f'UnexpectedEvent("{event}") in state {self._state}')
            if action is not None:
                action()
            before, self._state = self._state, target
            if self._on_change:
                self._on_change(event, before, target)
            return target
