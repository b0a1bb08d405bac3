//! nydus-hybrid core: RAFS v6 images (Nydus's EROFS-compatible format), read and built in
//! Rust. The Python package `nydus_hybrid` binds this crate as `nydus_hybrid._core`.

pub mod builder;
pub mod cache;
pub mod check;
pub mod codec;
pub mod config;
pub mod error;
pub mod export;
pub mod fscache;
#[cfg(feature = "fuse")]
pub mod fuse;
pub mod idmap;
pub mod inspect;
pub mod layout;
pub mod merge;
pub mod prefetch;
pub mod reader;
pub mod storage;
pub mod unpack;
pub mod walk;

pub use error::{Error, Result};

#[cfg(feature = "python")]
mod python;
