"""Exception classes raised by the Rust core, one per variant of its ``Error`` enum
(``rust/src/error.rs``). ``BY_KIND`` is the mapping: the core reads it when it is imported
and refuses to load if any variant has no class, so the two cannot drift apart
(``tests/unit/test_errors.py`` raises every variant and checks its class).

Each class also derives from the closest built-in exception, so ``except FileNotFoundError``
and friends keep working, and carries ``errno`` for callers that map errors to syscalls
(EIO for anything that means the image's bytes are wrong).
"""

from __future__ import annotations

TYPE_CHECKING = False  # not typing's: the core imports this module on the daemon's early mount
if TYPE_CHECKING:
    from typing import Dict, Type


class NydusError(Exception):
    """Base class of every nydus-hybrid error."""

    # Always set. OSError declares `errno` as Optional[int], so each class below that also
    # derives from OSError declares it again, for the type checker.
    errno: int

    def __init__(self, errno: int, message: str):
        super().__init__(message)
        self.errno = errno
        self.message = message

    def __str__(self) -> str:
        return self.message


class CorruptImageError(NydusError, ValueError):
    """The bootstrap or a blob violates the RAFS v6 format."""


class DigestMismatchError(CorruptImageError):
    """Chunk bytes do not match their recorded digest or CRC."""


class DecompressError(CorruptImageError):
    """A chunk failed to decompress, or decompressed to the wrong size."""


class NotFoundError(NydusError, FileNotFoundError):
    """A path does not exist in the image."""

    errno: int

    def __init__(self, errno: int, message: str):
        NydusError.__init__(self, errno, message)


class BlobMissingError(NotFoundError):
    """A data blob named by the bootstrap is not available."""


class NotADirectoryError_(NydusError, NotADirectoryError):
    """A path component is not a directory."""

    errno: int

    def __init__(self, errno: int, message: str):
        NydusError.__init__(self, errno, message)


class IsADirectoryError_(NydusError, IsADirectoryError):
    """File data was asked of a directory."""

    errno: int

    def __init__(self, errno: int, message: str):
        NydusError.__init__(self, errno, message)


class InvalidArgumentError(NydusError, ValueError):
    """An argument is malformed or out of range."""


class NotASymlinkError(InvalidArgumentError):
    """readlink on something that is not a symlink."""


class NoAttributeError(NydusError, OSError):
    """getxattr of an attribute the inode does not have (ENODATA)."""

    errno: int

    def __init__(self, errno: int, message: str):
        NydusError.__init__(self, errno, message)


class UnsafeInputError(NydusError, ValueError):
    """Build input that is malformed or would escape the image root."""


class UnsupportedError(NydusError, NotImplementedError):
    """A valid format feature this implementation does not handle."""


class ConfigError(NydusError, ValueError):
    """A nydusd configuration document is invalid; the message names the field."""


class BackendError(NydusError, OSError):
    """A storage backend (registry, S3, proxy) failed or answered unexpectedly."""

    errno: int

    def __init__(self, errno: int, message: str):
        NydusError.__init__(self, errno, message)


class AuthError(BackendError, PermissionError):
    """A storage backend refused our credentials."""

    errno: int


class BackendTimeoutError(BackendError, TimeoutError):
    """A storage backend did not answer within the configured timeout."""

    errno: int


class NydusIOError(NydusError, OSError):
    """An operating-system error while reading or writing files."""

    errno: int

    def __init__(self, errno: int, message: str):
        NydusError.__init__(self, errno, message)


class Interrupted(KeyboardInterrupt):
    """Ctrl-C stopped a long operation (a build); its partial outputs were removed. A
    ``KeyboardInterrupt``, so it ends a program the way Ctrl-C does."""

    def __init__(self, errno: int, message: str):
        super().__init__(message)
        self.errno = errno
        self.message = message


#: ``Error`` variant name (``ErrorKind`` in Rust) -> the class raised for it.
BY_KIND: Dict[str, Type[BaseException]] = {
    "Corrupt": CorruptImageError,
    "DigestMismatch": DigestMismatchError,
    "Decompress": DecompressError,
    "NotFound": NotFoundError,
    "NotADirectory": NotADirectoryError_,
    "IsADirectory": IsADirectoryError_,
    "NotASymlink": NotASymlinkError,
    "NoAttribute": NoAttributeError,
    "InvalidArgument": InvalidArgumentError,
    "UnsafeInput": UnsafeInputError,
    "Unsupported": UnsupportedError,
    "BlobMissing": BlobMissingError,
    "Config": ConfigError,
    "Backend": BackendError,
    "Auth": AuthError,
    "Timeout": BackendTimeoutError,
    "Cancelled": Interrupted,
    "Io": NydusIOError,
}
