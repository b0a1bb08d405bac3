//! Serving images through FUSE, from Rust only: `fs.rs` is one RAFS instance as a
//! `fuse-backend-rs` filesystem, `server.rs` the session, its worker threads and the `Vfs`
//! that places instances at `/` or `/<id>`.

pub mod fs;
pub mod metrics;
pub mod server;

pub use fs::CacheOptions;
pub use metrics::Accounting;
pub use server::FuseServer;
