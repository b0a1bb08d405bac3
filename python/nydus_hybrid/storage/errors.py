"""The storage module's errors: one base class, so a caller catches ``StorageError`` and
reads a one-line reason, and typed subclasses for what callers act on (zos's
``ErrNotEnoughSpace`` lets a caller retry with another disk type)."""

from __future__ import annotations

from typing import Optional


class StorageError(Exception):
    """Any failure of the storage module, with a one-line message."""


class NotEnoughSpace(StorageError):
    """No pool of ``disk_type`` has room for the request."""

    def __init__(self, disk_type: str, message: str = "") -> None:
        self.disk_type = disk_type
        super().__init__(message or f"not enough space on {disk_type} pools")


class InvalidDeviceType(StorageError):
    """A disk type that is neither ssd nor hdd."""


class NotFound(StorageError):
    """No volume (or vdisk) of that name."""


class AlreadyExists(StorageError):
    """A volume (or vdisk) of that name exists and cannot be reused as asked."""


class InvalidName(StorageError):
    """A name that cannot be a subvolume or file name, or one the module reserves."""


class InvalidSize(StorageError):
    """A size of 0 or less, or one below what a volume already uses."""


class FlistError(StorageError):
    """A failure of the flist module; ``status`` is the HTTP status when a download failed."""

    def __init__(self, message: str, status: Optional[int] = None) -> None:
        self.status = status
        super().__init__(message)
