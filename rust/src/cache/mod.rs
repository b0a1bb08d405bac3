//! Persistent blob cache (`blobcache`): one file per blob holding *uncompressed* chunk data at
//! each chunk's uncompressed offset (the layout fscache and the kernel read), and beside it a
//! bitmap of the chunks that are ready, in nydusd's format (`chunk_map.rs`), so either daemon
//! can serve from a cache the other filled. The blob's CI array and digests are
//! kept there too (`meta.rs`), so a warm restart needs no backend request at all.
//!
//! Crash safety: a chunk's data is written (and verified before that) with `pwrite` strictly
//! before its ready bit is set in the shared mapping; after a kill -9 the page cache keeps
//! both in that order, so a ready bit always names complete, verified data. (A power cut can reorder
//! them; the `validate` option re-checks every read for that case.)
//!
//! Concurrency: chunks are guarded by lock stripes. An on-demand read blocks on its chunk's
//! stripe, so concurrent readers of one chunk fetch it once; neighbours it merges into the
//! same request (`amplify_io`) and prefetch workers only `try_lock`, so they never wait on
//! (or deadlock with) anyone.

pub mod chunk_map;
pub mod gc;
pub mod meta;
pub mod metrics;

pub use metrics::CacheMetrics;

use crate::error::{IoContext, Result};
use crate::layout::blob_meta::ChunkInfo;
use chunk_map::ChunkMap;
use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex, MutexGuard};

// Enough stripes that concurrent claims on one blob (readers, prefetch workers) rarely share
// one by accident; a claim spans at most this many chunks.
const STRIPES: usize = 1024;

pub fn data_name(blob_id: &str) -> String {
    format!("{blob_id}.blob.data")
}

pub fn map_name(blob_id: &str) -> String {
    format!("{blob_id}.chunk_map")
}

pub struct ChunkCache {
    data: File,
    /// Kept open for its shared lock (see `lock_shared`) and its mtime.
    map_file: File,
    map: ChunkMap,
    pub data_path: PathBuf,
    stripes: Vec<Mutex<()>>,
    pub metrics: Arc<CacheMetrics>,
}

/// Chunks claimed for one fetch: their stripe locks are held until it is dropped.
pub struct Claim<'a> {
    pub chunks: Vec<u32>,
    _guards: Vec<MutexGuard<'a, ()>>,
}

/// Take a shared lock on the map for as long as the cache is open, so GC (which needs the
/// exclusive lock) never removes a blob in use, in this process or another.
fn lock_shared(f: &File) -> std::io::Result<()> {
    // SAFETY: flock on a descriptor we own.
    if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_SH) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

fn touch(f: &File) {
    let _ = f.set_modified(std::time::SystemTime::now());
}

impl ChunkCache {
    /// Open (or create) the cache files of one blob in `dir`.
    pub fn open(dir: &Path, blob_id: &str, chunk_count: u32, uncompressed_size: u64, metrics: Arc<CacheMetrics>) -> Result<Self> {
        std::fs::create_dir_all(dir).ctx(|| format!("create cache dir {}", dir.display()))?;
        let open = |path: &Path| {
            OpenOptions::new().read(true).write(true).create(true).truncate(false).open(path).ctx(|| format!("open cache file {}", path.display()))
        };
        let map_path = dir.join(map_name(blob_id));
        // GC may unlink the files between our open and our lock: retry on the new ones.
        let map = loop {
            let map = open(&map_path)?;
            lock_shared(&map).ctx(|| format!("lock {}", map_path.display()))?;
            let same = std::fs::metadata(&map_path).ok().map(|m| std::os::unix::fs::MetadataExt::ino(&m));
            if same == Some(std::os::unix::fs::MetadataExt::ino(&map.metadata().ctx(|| "stat chunk map".into())?)) {
                break map;
            }
        };
        let data_path = dir.join(data_name(blob_id));
        let data = open(&data_path)?;
        // A map of the wrong size belongs to some other blob layout, and a data file of the
        // wrong size (new, or cut short) cannot hold what the map says is ready: in both
        // cases the map starts over, so nothing is ever served from missing data.
        let data_ok = data.metadata().ctx(|| "stat cache data".into())?.len() == uncompressed_size;
        let chunk_map = ChunkMap::open(&map, chunk_count, !data_ok)?;
        if !data_ok {
            data.set_len(uncompressed_size).ctx(|| "size cache data".into())?;
        }
        touch(&map);
        metrics.add_file(data_name(blob_id));
        Ok(ChunkCache { data, map_file: map, map: chunk_map, data_path, stripes: (0..STRIPES).map(|_| Mutex::new(())).collect(), metrics })
    }

    pub fn is_ready(&self, ci: u32) -> Result<bool> {
        self.map.is_ready(ci)
    }

    /// Forget a chunk whose cached bytes failed validation, so it is fetched again.
    pub fn mark_unready(&self, ci: u32) -> Result<()> {
        self.map.set_unready(ci)
    }

    /// The cache data file: ready chunks are at their uncompressed offsets.
    pub fn data_file(&self) -> &File {
        &self.data
    }

    pub fn read_cached(&self, c: &ChunkInfo) -> Result<Vec<u8>> {
        let mut buf = vec![0u8; c.uncompressed_size as usize];
        self.data.read_exact_at(&mut buf, c.uncompressed_offset).ctx(|| "read cache data".into())?;
        Ok(buf)
    }

    /// Store verified bytes: data first, then the ready byte (see the module comment).
    pub fn store(&self, ci: u32, c: &ChunkInfo, data: &[u8]) -> Result<()> {
        self.data.write_all_at(data, c.uncompressed_offset).ctx(|| "write cache data".into())?;
        self.map.set_ready(ci)?;
        self.metrics.fills.fetch_add(1, Relaxed);
        Ok(())
    }

    fn stripe(&self, ci: u32) -> &Mutex<()> {
        &self.stripes[ci as usize % STRIPES]
    }

    /// Claim `first` (waiting for its stripe) plus the missing chunks stored right after it
    /// that `wanted` accepts, while the whole run stays within `budget` stored bytes. Only
    /// `first` is waited for; neighbours are taken with `try_lock`, so a claim never blocks
    /// while holding a lock. Returns `None` when `first` is already ready.
    pub fn claim(&self, first: u32, chunks: &[ChunkInfo], budget: u64, wanted: &dyn Fn(u32) -> bool) -> Result<Option<Claim<'_>>> {
        let guard = self.stripe(first).lock().unwrap_or_else(|p| p.into_inner());
        if self.is_ready(first)? {
            return Ok(None);
        }
        let mut claim = Claim { chunks: vec![first], _guards: vec![guard] };
        let mut end = chunks[first as usize].compressed_end();
        let mut size = chunks[first as usize].compressed_size as u64;
        for next in first + 1..chunks.len() as u32 {
            let c = &chunks[next as usize];
            // Distinct stripes only, so a claim never tries to lock a stripe it holds.
            let fits = (next - first) < STRIPES as u32 && c.compressed_offset == end && size + c.compressed_size as u64 <= budget;
            if !fits || !wanted(next) {
                break;
            }
            // Lock, then look: a chunk filled by someone else just before is not fetched again.
            match self.stripe(next).try_lock() {
                Ok(g) if !self.is_ready(next)? => claim._guards.push(g),
                _ => break,
            }
            claim.chunks.push(next);
            end = c.compressed_end();
            size += c.compressed_size as u64;
        }
        Ok(Some(claim))
    }

    /// Number of chunks marked ready.
    pub fn ready_count(&self) -> Result<u64> {
        Ok(self.map.ready_count())
    }

    pub fn chunk_count(&self) -> u64 {
        self.map.chunks() as u64
    }
}

impl Drop for ChunkCache {
    fn drop(&mut self) {
        // The map's mtime is the blob's last use, which GC's age limit reads.
        touch(&self.map_file);
    }
}

impl std::fmt::Debug for ChunkCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ChunkCache({})", self.data_path.display())
    }
}
