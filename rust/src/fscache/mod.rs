//! EROFS over fscache, on demand (spec §5): the kernel asks through `/dev/cachefiles` for
//! ranges of cache objects (a bootstrap or a data blob's uncompressed bytes) and this
//! module fills them from the registered images' backends.
//!
//! `proto` decodes the messages, `device` is the seam to the kernel or its simulator,
//! `blobs` the registered entries, `server` the worker loop.

pub mod blobs;
pub mod device;
pub mod proto;
pub mod server;

pub use blobs::BlobRegistry;
pub use server::FscacheServer;
