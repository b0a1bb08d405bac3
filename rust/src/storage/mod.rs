//! Where blob bytes come from. The reader only sees `BlobStore` and `BlobSource`; local
//! files implement them directly, and the network backends (registry, S3, http-proxy)
//! implement `RangeReader`, which `RemoteBlob` turns into a `BlobSource`.

pub mod http;
pub mod httpproxy;
pub mod metrics;
pub mod registry;
pub mod s3;
pub mod sigv4;

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
        self.file.read_exact_at(buf, offset).ctx(|| format!("read blob {} at {offset}", self.path.display()))
    }

    fn size(&self) -> Result<u64> {
        Ok(self.size)
    }
}

/// Finds blobs by id. `open` is called once per blob per reader.
pub trait BlobStore: Send + Sync {
    fn open(&self, blob_id: &str) -> Result<Arc<dyn BlobSource>>;
}

/// A directory of blobs named by their ids (`--blob-dir`), plus fallback directories.
pub struct LocalDir {
    pub dir: PathBuf,
    pub alt_dirs: Vec<PathBuf>,
}

impl LocalDir {
    pub fn new(dir: PathBuf) -> Self {
        LocalDir { dir, alt_dirs: Vec::new() }
    }
}

impl BlobStore for LocalDir {
    fn open(&self, blob_id: &str) -> Result<Arc<dyn BlobSource>> {
        if blob_id.is_empty() || blob_id.contains('/') || blob_id.starts_with('.') {
            return Err(Error::corrupt(format!("blob id {blob_id:?} is not a valid file name")));
        }
        for dir in std::iter::once(&self.dir).chain(&self.alt_dirs) {
            let path = dir.join(blob_id);
            if path.exists() {
                return Ok(Arc::new(LocalBlob::open(&path)?));
            }
        }
        Err(Error::BlobMissing(blob_id.to_string(), self.dir.clone()))
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

/// Ranged reads of whole objects named by blob id: what each network backend provides.
pub trait RangeReader: Send + Sync {
    fn read_range(&self, blob_id: &str, offset: u64, buf: &mut [u8]) -> Result<()>;
    fn object_size(&self, blob_id: &str) -> Result<u64>;
}

/// One blob on a network backend. Opening it costs nothing; the size is asked for (once)
/// only when a bounds check needs it.
pub struct RemoteBlob {
    backend: Arc<dyn RangeReader>,
    id: String,
    size: std::sync::OnceLock<u64>,
}

impl BlobSource for RemoteBlob {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        self.backend.read_range(&self.id, offset, buf)
    }

    fn size(&self) -> Result<u64> {
        if let Some(s) = self.size.get() {
            return Ok(*s);
        }
        let s = self.backend.object_size(&self.id)?;
        Ok(*self.size.get_or_init(|| s))
    }
}

/// A `BlobStore` over a network backend.
pub struct RemoteStore(pub Arc<dyn RangeReader>);

impl BlobStore for RemoteStore {
    fn open(&self, blob_id: &str) -> Result<Arc<dyn BlobSource>> {
        Ok(Arc::new(RemoteBlob { backend: self.0.clone(), id: blob_id.to_string(), size: Default::default() }))
    }
}

/// Counts every data read of the wrapped source into the backend metrics (spec §8.4).
pub struct Metered {
    pub inner: Arc<dyn BlobSource>,
    pub metrics: Arc<metrics::BackendMetrics>,
}

impl BlobSource for Metered {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        let t = std::time::Instant::now();
        let res = self.inner.read_exact_at(buf, offset);
        self.metrics.read(buf.len() as u64, t.elapsed(), res.is_ok());
        res
    }

    fn size(&self) -> Result<u64> {
        self.inner.size()
    }
}

/// The store a backend configuration describes.
pub fn open_store(cfg: &crate::config::BackendConfig, metrics: Arc<metrics::BackendMetrics>) -> Result<Box<dyn BlobStore>> {
    use crate::config::BackendConfig as B;
    metrics.set_type(cfg.metrics_type());
    Ok(match cfg {
        B::LocalFs { blob_file: Some(path), .. } => Box::new(SingleFile { path: path.clone() }),
        B::LocalFs { dir, alt_dirs, .. } => Box::new(LocalDir { dir: dir.clone().unwrap_or_default(), alt_dirs: alt_dirs.clone() }),
        B::Registry(r) => Box::new(RemoteStore(Arc::new(registry::Registry::new(r, metrics)?))),
        B::S3(c) => Box::new(RemoteStore(Arc::new(s3::S3::new(c, metrics)?))),
        B::HttpProxy(c) => Box::new(RemoteStore(Arc::new(httpproxy::HttpProxy::new(c, metrics)?))),
    })
}
