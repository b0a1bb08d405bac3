//! nydus-hybrid core: RAFS v6 images (Nydus's EROFS-compatible format), read and built in
//! Rust. The Python package `nydus_hybrid` binds this crate as `nydus_hybrid._core`.

pub mod builder;
pub mod codec;
pub mod error;
pub mod layout;
pub mod reader;
pub mod storage;

pub use error::{Error, Result};
