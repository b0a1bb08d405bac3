//! Persistent blob cache (first part of the storage milestone): one file per blob holding
//! *uncompressed* chunk data at each chunk's uncompressed offset (the layout fscache and the
//! kernel read), and beside it a map with one byte per chunk saying which are ready.
//!
//! Crash safety: a chunk's data is written (and verified before that) strictly before its
//! ready byte, each with `pwrite`; after a kill -9 the page cache keeps both writes in that
//! order, so a ready byte always names complete, verified data. Concurrent readers of one
//! chunk are serialised on a lock stripe, so a chunk is fetched from the backend once.

use crate::error::{IoContext, Result};
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

const STRIPES: usize = 64;
const READY: u8 = 1;

/// Counters behind the blobcache/backend metrics (spec §8.4, §8.5).
#[derive(Debug, Default)]
pub struct CacheMetrics {
    pub hits: AtomicU64,
    pub misses: AtomicU64,
    pub backend_reads: AtomicU64,
    pub backend_bytes: AtomicU64,
    pub fills: AtomicU64,
}

impl CacheMetrics {
    pub fn snapshot(&self) -> [(&'static str, u64); 5] {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        [
            ("hits", g(&self.hits)),
            ("misses", g(&self.misses)),
            ("backend_reads", g(&self.backend_reads)),
            ("backend_bytes", g(&self.backend_bytes)),
            ("fills", g(&self.fills)),
        ]
    }
}

pub struct ChunkCache {
    data: File,
    map: File,
    stripes: Vec<Mutex<()>>,
    pub metrics: Arc<CacheMetrics>,
}

impl ChunkCache {
    /// Open (or create) the cache files of one blob in `dir`.
    pub fn open(dir: &Path, blob_id: &str, chunk_count: u32, uncompressed_size: u64, metrics: Arc<CacheMetrics>) -> Result<Self> {
        std::fs::create_dir_all(dir).ctx(|| format!("create cache dir {}", dir.display()))?;
        let open = |name: String| {
            let path = dir.join(name);
            OpenOptions::new().read(true).write(true).create(true).truncate(false).open(&path).ctx(|| format!("open cache file {}", path.display()))
        };
        let data = open(format!("{blob_id}.blob.data"))?;
        let map = open(format!("{blob_id}.chunk_map"))?;
        // A map of the wrong size belongs to some other blob layout: start over.
        if map.metadata().ctx(|| "stat chunk map".into())?.len() != chunk_count as u64 {
            map.set_len(0).ctx(|| "reset chunk map".into())?;
            map.set_len(chunk_count as u64).ctx(|| "size chunk map".into())?;
        }
        if data.metadata().ctx(|| "stat cache data".into())?.len() != uncompressed_size {
            data.set_len(uncompressed_size).ctx(|| "size cache data".into())?;
        }
        Ok(ChunkCache { data, map, stripes: (0..STRIPES).map(|_| Mutex::new(())).collect(), metrics })
    }

    fn is_ready(&self, ci: u32) -> Result<bool> {
        let mut b = [0u8; 1];
        self.map.read_exact_at(&mut b, ci as u64).ctx(|| "read chunk map".into())?;
        Ok(b[0] == READY)
    }

    /// The chunk's uncompressed bytes: from the cache when ready, else from `fetch` (which
    /// returns verified data), stored before it is returned.
    pub fn get(&self, ci: u32, offset: u64, len: usize, fetch: impl FnOnce() -> Result<Vec<u8>>) -> Result<Vec<u8>> {
        let read_cached = || -> Result<Vec<u8>> {
            let mut buf = vec![0u8; len];
            self.data.read_exact_at(&mut buf, offset).ctx(|| "read cache data".into())?;
            Ok(buf)
        };
        if self.is_ready(ci)? {
            self.metrics.hits.fetch_add(1, Ordering::Relaxed);
            return read_cached();
        }
        let _guard = self.stripes[ci as usize % STRIPES].lock().unwrap_or_else(|p| p.into_inner());
        if self.is_ready(ci)? {
            // Filled by a concurrent reader while we waited.
            self.metrics.hits.fetch_add(1, Ordering::Relaxed);
            return read_cached();
        }
        self.metrics.misses.fetch_add(1, Ordering::Relaxed);
        let data = fetch()?;
        self.data.write_all_at(&data, offset).ctx(|| "write cache data".into())?;
        self.map.write_all_at(&[READY], ci as u64).ctx(|| "write chunk map".into())?;
        self.metrics.fills.fetch_add(1, Ordering::Relaxed);
        Ok(data)
    }

    /// Number of chunks marked ready.
    pub fn ready_count(&self) -> Result<u64> {
        let len = self.map.metadata().ctx(|| "stat chunk map".into())?.len();
        let mut buf = vec![0u8; len as usize];
        self.map.read_exact_at(&mut buf, 0).ctx(|| "read chunk map".into())?;
        Ok(buf.iter().filter(|&&b| b == READY).count() as u64)
    }
}

impl std::fmt::Debug for ChunkCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ChunkCache")
    }
}
