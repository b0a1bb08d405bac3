//! The one error type of the core. Every failure a caller can see is one of these variants;
//! the Python bindings map each variant to its own exception class (`nydus_hybrid.errors`).

use std::io;
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The bootstrap or blob violates the RAFS v6 format (untrusted input rejected).
    #[error("corrupt image: {0}")]
    Corrupt(String),
    /// Decoded chunk bytes do not match the recorded digest or CRC.
    #[error("digest mismatch: {0}")]
    DigestMismatch(String),
    /// A chunk could not be decompressed, or decompressed to the wrong size.
    #[error("decompression failed: {0}")]
    Decompress(String),
    /// A path in the image does not exist.
    #[error("not found: {0}")]
    NotFound(String),
    #[error("not a directory: {0}")]
    NotADirectory(String),
    #[error("is a directory: {0}")]
    IsADirectory(String),
    #[error("not a symlink: {0}")]
    NotASymlink(String),
    #[error("no such attribute: {0}")]
    NoAttribute(String),
    /// A caller-supplied argument is out of range or malformed.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// Build input that would escape the image root or is otherwise unsafe.
    #[error("unsafe input: {0}")]
    UnsafeInput(String),
    /// A feature of the format that this implementation does not read or write.
    #[error("unsupported: {0}")]
    Unsupported(String),
    /// A data blob named by the bootstrap is not available.
    #[error("blob {0} not found in {1}")]
    BlobMissing(String, PathBuf),
    /// A configuration document is invalid; the message names the field.
    #[error("invalid config: {0}")]
    Config(String),
    /// A storage backend failed (network, server error, unexpected reply).
    #[error("backend error: {0}")]
    Backend(String),
    /// A storage backend refused our credentials.
    #[error("authentication failed: {0}")]
    Auth(String),
    /// A storage backend did not answer within the configured timeout.
    #[error("timed out: {0}")]
    Timeout(String),
    /// The caller asked to stop (Ctrl-C); partial outputs were removed.
    #[error("cancelled")]
    Cancelled,
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },
}

pub type Result<T> = std::result::Result<T, Error>;

/// One kind per `Error` variant, without its data: what a binding maps to its own exception
/// class (`nydus_hybrid.errors.BY_KIND` is keyed by these names).
#[derive(Clone, Copy, Debug, PartialEq, Eq, strum::EnumIter, strum::IntoStaticStr)]
pub enum ErrorKind {
    Corrupt,
    DigestMismatch,
    Decompress,
    NotFound,
    NotADirectory,
    IsADirectory,
    NotASymlink,
    NoAttribute,
    InvalidArgument,
    UnsafeInput,
    Unsupported,
    BlobMissing,
    Config,
    Backend,
    Auth,
    Timeout,
    Cancelled,
    Io,
}

impl ErrorKind {
    pub fn name(self) -> &'static str {
        self.into()
    }
}

impl Error {
    pub fn corrupt(msg: impl Into<String>) -> Self {
        Error::Corrupt(msg.into())
    }
    pub fn config(msg: impl Into<String>) -> Self {
        Error::Config(msg.into())
    }
    pub fn backend(msg: impl Into<String>) -> Self {
        Error::Backend(msg.into())
    }
    pub fn invalid(msg: impl Into<String>) -> Self {
        Error::InvalidArgument(msg.into())
    }
    /// Prefix the message with where it happened, keeping the kind. Corrupt-image messages
    /// are nested without repeating "corrupt image:".
    pub fn at(self, place: &str) -> Self {
        match self {
            Error::Corrupt(m) => Error::Corrupt(format!("{place}: {m}")),
            Error::DigestMismatch(m) => Error::DigestMismatch(format!("{place}: {m}")),
            Error::Decompress(m) => Error::Decompress(format!("{place}: {m}")),
            other => other,
        }
    }

    /// The errno a syscall would fail with for this error (FUSE replies, Python's `errno`).
    /// Anything that means the image's bytes are wrong, or could not be fetched, is EIO.
    pub fn errno(&self) -> i32 {
        match self {
            Error::Corrupt(_) | Error::DigestMismatch(_) | Error::Decompress(_) | Error::Backend(_) => libc::EIO,
            Error::NotFound(_) | Error::BlobMissing(..) => libc::ENOENT,
            Error::NotADirectory(_) => libc::ENOTDIR,
            Error::IsADirectory(_) => libc::EISDIR,
            Error::NotASymlink(_) | Error::InvalidArgument(_) | Error::UnsafeInput(_) | Error::Config(_) => libc::EINVAL,
            Error::NoAttribute(_) => libc::ENODATA,
            Error::Unsupported(_) => libc::EOPNOTSUPP,
            Error::Auth(_) => libc::EACCES,
            Error::Timeout(_) => libc::ETIMEDOUT,
            Error::Cancelled => libc::EINTR,
            Error::Io { source, .. } => source.raw_os_error().unwrap_or(libc::EIO),
        }
    }

    pub fn io(context: impl Into<String>, source: io::Error) -> Self {
        Error::Io { context: context.into(), source }
    }

    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::Corrupt(_) => ErrorKind::Corrupt,
            Error::DigestMismatch(_) => ErrorKind::DigestMismatch,
            Error::Decompress(_) => ErrorKind::Decompress,
            Error::NotFound(_) => ErrorKind::NotFound,
            Error::NotADirectory(_) => ErrorKind::NotADirectory,
            Error::IsADirectory(_) => ErrorKind::IsADirectory,
            Error::NotASymlink(_) => ErrorKind::NotASymlink,
            Error::NoAttribute(_) => ErrorKind::NoAttribute,
            Error::InvalidArgument(_) => ErrorKind::InvalidArgument,
            Error::UnsafeInput(_) => ErrorKind::UnsafeInput,
            Error::Unsupported(_) => ErrorKind::Unsupported,
            Error::BlobMissing(..) => ErrorKind::BlobMissing,
            Error::Config(_) => ErrorKind::Config,
            Error::Backend(_) => ErrorKind::Backend,
            Error::Auth(_) => ErrorKind::Auth,
            Error::Timeout(_) => ErrorKind::Timeout,
            Error::Cancelled => ErrorKind::Cancelled,
            Error::Io { .. } => ErrorKind::Io,
        }
    }

    /// One error of `kind`, for tests that every kind reaches its own exception class.
    pub fn example(kind: ErrorKind) -> Self {
        let m = || format!("example {} error", kind.name());
        match kind {
            ErrorKind::Corrupt => Error::Corrupt(m()),
            ErrorKind::DigestMismatch => Error::DigestMismatch(m()),
            ErrorKind::Decompress => Error::Decompress(m()),
            ErrorKind::NotFound => Error::NotFound(m()),
            ErrorKind::NotADirectory => Error::NotADirectory(m()),
            ErrorKind::IsADirectory => Error::IsADirectory(m()),
            ErrorKind::NotASymlink => Error::NotASymlink(m()),
            ErrorKind::NoAttribute => Error::NoAttribute(m()),
            ErrorKind::InvalidArgument => Error::InvalidArgument(m()),
            ErrorKind::UnsafeInput => Error::UnsafeInput(m()),
            ErrorKind::Unsupported => Error::Unsupported(m()),
            ErrorKind::BlobMissing => Error::BlobMissing(m(), PathBuf::from("/example")),
            ErrorKind::Config => Error::Config(m()),
            ErrorKind::Backend => Error::Backend(m()),
            ErrorKind::Auth => Error::Auth(m()),
            ErrorKind::Timeout => Error::Timeout(m()),
            ErrorKind::Cancelled => Error::Cancelled,
            ErrorKind::Io => Error::io(m(), io::Error::from_raw_os_error(libc::EPERM)),
        }
    }
}

/// Attach a human context to an `io::Result`.
pub trait IoContext<T> {
    fn ctx(self, context: impl FnOnce() -> String) -> Result<T>;
}

impl<T> IoContext<T> for io::Result<T> {
    fn ctx(self, context: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|e| Error::io(context(), e))
    }
}

/// Fail with `Corrupt` unless `cond` holds.
macro_rules! ensure {
    ($cond:expr, $($fmt:tt)+) => {
        if !($cond) {
            return Err($crate::error::Error::Corrupt(format!($($fmt)+)));
        }
    };
}
pub(crate) use ensure;

#[cfg(test)]
mod tests {
    use super::*;
    use strum::IntoEnumIterator;

    #[test]
    fn every_kind_round_trips_through_its_example() {
        for kind in ErrorKind::iter() {
            assert_eq!(Error::example(kind).kind(), kind);
        }
    }
}
