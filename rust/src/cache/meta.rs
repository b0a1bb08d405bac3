//! Local copies of a blob's metadata (the stored CI array with its header, and the chunk
//! digest array) next to its cache files, so reopening a cached blob reads nothing from the
//! backend. Files are replaced atomically; a copy of the wrong size is ignored.

use std::path::{Path, PathBuf};

pub fn meta_path(dir: &Path, blob_id: &str) -> PathBuf {
    dir.join(format!("{blob_id}.blob.meta"))
}

pub fn digest_path(dir: &Path, blob_id: &str) -> PathBuf {
    dir.join(format!("{blob_id}.blob.digest"))
}

/// The local copy at `path`, if it has exactly `len` bytes.
pub fn load(path: &Path, len: usize) -> Option<Vec<u8>> {
    std::fs::read(path).ok().filter(|b| b.len() == len)
}

/// Save a copy (atomically; best effort, since a failure only costs a fetch later). Call
/// it only once the bytes have been validated, so a bad copy is never kept.
pub fn save(path: &Path, bytes: &[u8]) {
    if let Some(dir) = path.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    if std::fs::write(&tmp, bytes).is_err() || std::fs::rename(&tmp, path).is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
}
