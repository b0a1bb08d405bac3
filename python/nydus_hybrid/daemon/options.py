"""The values nydusd's command line allows, shared by ``args`` (the parser) and ``early``
(which reads a few options before the parser is loaded, and must not accept what it refuses)."""

MODES = ("fuse", "singleton")
LOG_LEVELS = ("trace", "debug", "info", "warn", "warning", "error", "off")
FAILOVER_POLICIES = ("none", "resend", "flush")
MAX_THREADS = 1024
DEFAULT_THREADS = 4


def thread_count(text: str) -> int:
    """A worker count, or 0 if ``text`` is not one in 1..=MAX_THREADS."""
    try:
        n = int(text)
    except ValueError:
        return 0
    return n if 1 <= n <= MAX_THREADS else 0
