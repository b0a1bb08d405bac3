//! Where blob bytes come from. The reader only sees `BlobSource`; the local directory is the
//! first implementation, and remote backends plug in behind the same trait.

use crate::error::{Error, IoContext, Result};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Random access to one data blob.
pub trait BlobSource: Send + Sync {
    /// Fill `buf` from `offset`; a short read is an error.
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> Result<()>;
    /// Size of the stored object in bytes.
    fn size(&self) -> Result<u64>;
    /// Read `len` bytes at `offset` into a new buffer. The range is checked against the
    /// object size before allocating, so a hostile length cannot exhaust memory.
    fn read_vec(&self, offset: u64, len: usize) -> Result<Vec<u8>> {
        let size = self.size()?;
        if offset.checked_add(len as u64).is_none_or(|end| end > size) {
            return Err(Error::corrupt(format!("read of {len} bytes at {offset} is past the end of a {size}-byte blob")));
        }
        let mut buf = vec![0u8; len];
        self.read_exact_at(&mut buf, offset)?;
        Ok(buf)
    }
}

/// A blob stored as a local file.
pub struct LocalBlob {
    file: File,
    path: PathBuf,
    size: u64,
}

impl LocalBlob {
    pub fn open(path: &Path) -> Result<Self> {
        let file = File::open(path).ctx(|| format!("open blob {}", path.display()))?;
        let size = file.metadata().ctx(|| format!("stat blob {}", path.display()))?.len();
        Ok(LocalBlob { file, path: path.to_path_buf(), size })
    }
}

impl BlobSource for LocalBlob {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        let end = offset.checked_add(buf.len() as u64);
        if end.is_none_or(|e| e > self.size) {
            return Err(Error::corrupt(format!(
                "read of {} bytes at {offset} is past the end of blob {} ({} bytes)",
                buf.len(),
                self.path.display(),
                self.size
            )));
        }
        self.file
            .read_exact_at(buf, offset)
            .ctx(|| format!("read blob {} at {offset}", self.path.display()))
    }

    fn size(&self) -> Result<u64> {
        Ok(self.size)
    }
}

/// Finds blobs by id. `open` is called once per blob per reader.
pub trait BlobStore: Send + Sync {
    fn open(&self, blob_id: &str) -> Result<Arc<dyn BlobSource>>;
}

/// A directory of blobs named by their ids (`--blob-dir`).
pub struct LocalDir {
    pub dir: PathBuf,
}

impl BlobStore for LocalDir {
    fn open(&self, blob_id: &str) -> Result<Arc<dyn BlobSource>> {
        if blob_id.is_empty() || blob_id.contains('/') || blob_id.starts_with('.') {
            return Err(Error::corrupt(format!("blob id {blob_id:?} is not a valid file name")));
        }
        let path = self.dir.join(blob_id);
        if !path.exists() {
            return Err(Error::BlobMissing(blob_id.to_string(), self.dir.clone()));
        }
        Ok(Arc::new(LocalBlob::open(&path)?))
    }
}

/// One explicit file, whatever the id (used for blobs that carry their own bootstrap).
pub struct SingleFile {
    pub path: PathBuf,
}

impl BlobStore for SingleFile {
    fn open(&self, _blob_id: &str) -> Result<Arc<dyn BlobSource>> {
        Ok(Arc::new(LocalBlob::open(&self.path)?))
    }
}
