"""The core's one error enum reaches Python as one class per variant (errors.BY_KIND)."""

from __future__ import annotations

import errno

import pytest

from nydus_hybrid import _core, errors

# The errno each kind carries (rust/src/error.rs, Error::errno); Io's example is EPERM.
EXPECTED_ERRNO = {
    "Corrupt": errno.EIO,
    "DigestMismatch": errno.EIO,
    "Decompress": errno.EIO,
    "NotFound": errno.ENOENT,
    "NotADirectory": errno.ENOTDIR,
    "IsADirectory": errno.EISDIR,
    "NotASymlink": errno.EINVAL,
    "NoAttribute": errno.ENODATA,
    "InvalidArgument": errno.EINVAL,
    "UnsafeInput": errno.EINVAL,
    "Unsupported": errno.EOPNOTSUPP,
    "BlobMissing": errno.ENOENT,
    "Config": errno.EINVAL,
    "Backend": errno.EIO,
    "Auth": errno.EACCES,
    "Timeout": errno.ETIMEDOUT,
    "Cancelled": errno.EINTR,
    "Io": errno.EPERM,
}


def test_every_kind_has_its_own_class():
    kinds = _core.error_kinds()
    assert sorted(kinds) == sorted(errors.BY_KIND), "the core's kinds and errors.BY_KIND differ"
    classes = [errors.BY_KIND[k] for k in kinds]
    assert len(set(classes)) == len(classes), "two kinds share a class"


@pytest.mark.parametrize("kind", _core.error_kinds())
def test_each_kind_is_raised_as_its_class(kind):
    with pytest.raises(BaseException) as info:
        _core.raise_error_example(kind)
    exc = info.value
    assert type(exc) is errors.BY_KIND[kind]
    assert isinstance(exc, (errors.NydusError, errors.Interrupted))
    assert exc.errno == EXPECTED_ERRNO[kind]
    # Cancelled carries no message of its own (Ctrl-C); every other kind keeps the core's.
    assert ("cancelled" if kind == "Cancelled" else f"example {kind} error") in str(exc)


def test_families_keep_their_builtin_bases():
    """`except FileNotFoundError` and friends keep working on core errors."""
    assert issubclass(errors.BY_KIND["NotFound"], FileNotFoundError)
    assert issubclass(errors.BY_KIND["BlobMissing"], errors.NotFoundError)
    assert issubclass(errors.BY_KIND["DigestMismatch"], errors.CorruptImageError)
    assert issubclass(errors.BY_KIND["Timeout"], TimeoutError)
    assert issubclass(errors.BY_KIND["Auth"], PermissionError)
    assert issubclass(errors.BY_KIND["Cancelled"], KeyboardInterrupt)
    assert not issubclass(errors.BY_KIND["Cancelled"], errors.NydusError), "Ctrl-C must not be caught as an error"
    assert all(issubclass(c, errors.NydusError) for k, c in errors.BY_KIND.items() if k != "Cancelled")


def test_unknown_kind_is_refused():
    with pytest.raises(ValueError, match="unknown error kind"):
        _core.raise_error_example("NoSuchKind")


def test_a_real_error_comes_through_the_same_mapping(tmp_path):
    """Not only the examples: a missing bootstrap is the class BY_KIND names for Io."""
    with pytest.raises(errors.NydusIOError) as info:
        _core.Image.open(str(tmp_path / "missing.boot"), str(tmp_path))
    assert info.value.errno == errno.ENOENT
