//! A mounted-in-memory RAFS image: the bootstrap plus access to its blobs. This is what every
//! consumer (Python API, check, unpack, export, and later FUSE) reads through.

pub mod blob;
pub mod bootstrap;
pub mod link;

use crate::cache::CacheMetrics;
use crate::config::{CacheKind, Config};
use crate::error::{ensure, Error, Result};
use crate::layout::blob_features as bf;
use crate::layout::inode::Inode;
use crate::layout::{decode_rdev, inode_layout, mode};
use crate::storage::metrics::BackendMetrics;
use crate::storage::{BlobStore, LocalBlob, LocalDir, Metered, SingleFile};
use blob::BlobReader;
pub use bootstrap::{Bootstrap, DirEntry};
use std::path::Path;
use std::sync::{Arc, Mutex};

/// Largest inlined bootstrap we extract from a blob.
const MAX_INLINE_BOOTSTRAP: u64 = 1 << 30;

/// `stat` data of one inode, as the kernel would report it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stat {
    pub ino: u64,
    pub mode: u32,
    pub nlink: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    /// Seconds since the epoch; negative before 1970 (stored as two's complement).
    pub mtime: i64,
    pub mtime_nsec: u32,
    pub rdev_major: u32,
    pub rdev_minor: u32,
    pub blocks: u64,
}

/// Decoded chunks kept in memory, so small sequential reads do not decode a chunk again.
const RECENT_CHUNKS: usize = 8;
/// Lock stripes that make concurrent fetches of one chunk wait for each other.
const FETCH_STRIPES: usize = 64;

/// A recently decoded chunk, by (blob index, CI index).
type RecentChunk = ((u8, u32), Arc<Vec<u8>>);

pub struct Rafs {
    pub boot: Bootstrap,
    store: Box<dyn BlobStore>,
    blobs: Vec<Mutex<Option<Arc<BlobReader>>>>,
    recent: Mutex<std::collections::VecDeque<RecentChunk>>,
    fetching: Vec<Mutex<()>>,
    /// Verify chunk digests when chunks come from the backend (on by default).
    pub verify: bool,
    /// Verify again on every read from the cache (`cache.validate` / `rafs.validate`).
    pub validate: bool,
    /// `amplify_io`: bytes of adjacent missing chunks fetched along with a missed one (the
    /// most, when `adaptive_amplify`).
    pub amplify_io: u64,
    /// Amplify by the link's bandwidth-delay product, up to `amplify_io` (`link`).
    pub adaptive_amplify: bool,
    pub link: link::LinkEstimate,
    /// Directory of the persistent chunk cache, if any.
    pub cache_dir: Option<std::path::PathBuf>,
    pub cache_metrics: Arc<CacheMetrics>,
    pub backend_metrics: Arc<BackendMetrics>,
    /// On-demand reads in progress; prefetch workers yield to them.
    pub demand_inflight: std::sync::atomic::AtomicUsize,
    /// Owners a FUSE mount of this instance reports shifted (config `id_mapping`).
    pub id_map: Option<crate::idmap::IdMap>,
}

impl Rafs {
    pub fn new(boot: Bootstrap, store: Box<dyn BlobStore>) -> Self {
        let blobs = boot.blobs.iter().map(|_| Mutex::new(None)).collect();
        Rafs {
            boot,
            store,
            blobs,
            recent: Mutex::new(Default::default()),
            fetching: (0..FETCH_STRIPES).map(|_| Mutex::new(())).collect(),
            verify: true,
            validate: false,
            amplify_io: 1 << 20,
            adaptive_amplify: true,
            link: Default::default(),
            cache_dir: None,
            cache_metrics: Default::default(),
            backend_metrics: Arc::new(BackendMetrics::new("localfs")),
            demand_inflight: Default::default(),
            id_map: None,
        }
    }

    /// A bootstrap served the way a nydusd configuration says: its backend, its blob cache
    /// (`cache.type` blobcache, in `work_dir`), `amplify_io` and validation switches.
    pub fn open_with_config(bootstrap: &Path, cfg: &Config) -> Result<Self> {
        let boot = Bootstrap::open(bootstrap)?;
        let backend = cfg.backend.as_ref().ok_or_else(|| Error::config("backend: required to read file data"))?;
        let metrics = Arc::new(BackendMetrics::new(backend.metrics_type()));
        let store = crate::storage::open_store(backend, metrics.clone())?;
        let mut rafs = Self::new(boot, store);
        rafs.backend_metrics = metrics;
        rafs.validate = cfg.validate_on_read();
        rafs.amplify_io = cfg.rafs.batch_size;
        rafs.adaptive_amplify = cfg.rafs.adaptive_amplify;
        rafs.id_map = cfg.rafs.id_mapping;
        match cfg.cache.kind {
            CacheKind::BlobCache => rafs.cache_dir = Some(cfg.cache.work_dir.clone()),
            CacheKind::FsCache => return Err(Error::Unsupported("cache.type fscache: served by the fscache daemon, not a FUSE reader".into())),
            CacheKind::None => {}
        }
        Ok(rafs)
    }

    /// A bootstrap file plus a directory of blobs named by id.
    pub fn open(bootstrap: &Path, blob_dir: Option<&Path>) -> Result<Self> {
        let boot = Bootstrap::open(bootstrap)?;
        let dir = blob_dir.map(Path::to_path_buf).unwrap_or_else(|| bootstrap.parent().map(Path::to_path_buf).unwrap_or_default());
        Ok(Self::new(boot, Box::new(LocalDir::new(dir))))
    }

    /// A data blob that carries its own bootstrap (`image.boot` section, nydus-snapshotter
    /// layers). The blob's file name is its id; placeholder ids are replaced by it (ERRATA E5).
    pub fn open_inline_blob(blob_path: &Path) -> Result<Self> {
        let mut boot = Bootstrap::from_bytes(inline_bootstrap(blob_path)?)?;
        let id = blob_path.file_name().and_then(|n| n.to_str()).unwrap_or_default().to_string();
        // A layer without file data (only directories, links, whiteouts) has no blob entry.
        ensure!(boot.blobs.len() <= 1, "an inlined bootstrap must reference only its own blob");
        if let Some(e) = boot.blobs.first() {
            let placeholder = (e.has(bf::INLINED_FS_META) && !e.has(bf::SEPARATE) && !e.has(bf::EXTERNAL)) || !e.has(bf::CAP_TAR_TOC);
            if placeholder {
                boot.set_blob_id(0, &id);
            }
        }
        Ok(Self::new(boot, Box::new(SingleFile { path: blob_path.to_path_buf() })))
    }

    /// The loaded blob with this index, loading its blob meta on first use.
    pub fn blob(&self, index: usize) -> Result<Arc<BlobReader>> {
        let slot = self.blobs.get(index).ok_or_else(|| Error::corrupt(format!("no blob {index}")))?;
        let mut guard = slot.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(b) = guard.as_ref() {
            return Ok(b.clone());
        }
        let entry = &self.boot.blobs[index];
        let src = Arc::new(Metered { inner: self.store.open(&entry.blob_id)?, metrics: self.backend_metrics.clone() });
        let mut b = BlobReader::load(entry, src, self.cache_dir.as_deref())?;
        if let Some(dir) = &self.cache_dir {
            b.cache = Some(crate::cache::ChunkCache::open(dir, &entry.blob_id, entry.chunk_count, entry.uncompressed_size, self.cache_metrics.clone())?);
        }
        let b = Arc::new(b);
        *guard = Some(b.clone());
        Ok(b)
    }

    /// Backend and blob-cache counters, in nydusd's JSON shapes (spec §8.4, §8.5).
    pub fn metrics_json(&self) -> serde_json::Value {
        let store = self.cache_dir.as_ref().map(|d| d.display().to_string()).unwrap_or_default();
        serde_json::json!({
            "backend": self.backend_metrics.to_json(),
            "blobcache": self.cache_metrics.to_json(&store, self.cache_all_ready()),
        })
    }

    /// Whether every chunk of every blob is in the cache (blobs not opened yet count as not).
    pub fn cache_all_ready(&self) -> bool {
        self.blobs.iter().all(|slot| {
            let guard = slot.lock().unwrap_or_else(|p| p.into_inner());
            guard.as_ref().and_then(|b| b.cache.as_ref()).is_some_and(|c| c.ready_count().is_ok_and(|n| n == c.chunk_count()))
        })
    }

    pub fn stat_nid(&self, nid: u64) -> Result<Stat> {
        let i = self.boot.inode(nid)?;
        Ok(stat_of(nid, &i))
    }

    pub fn inode(&self, nid: u64) -> Result<Inode> {
        self.boot.inode(nid)
    }

    /// The digest chunk `ci` of blob `blob_index` must have, from the bootstrap chunk table,
    /// for blobs that carry no digest array of their own.
    pub(crate) fn expected_digest(&self, blob: &BlobReader, blob_index: u32, ci: u32) -> Option<[u8; 32]> {
        if !self.verify || blob.digests.is_some() {
            return None;
        }
        self.boot.chunk_map().ok()?.get(&(blob_index, ci)).map(|e| e.digest)
    }

    /// Decoded, verified bytes of chunk `ci` of blob `blob_index`, through the cache, and
    /// whether they were a cache hit.
    pub fn read_blob_chunk(&self, blob: &BlobReader, blob_index: u32, ci: u32) -> Result<(Vec<u8>, bool)> {
        let expected = |k: u32| self.expected_digest(blob, blob_index, k);
        blob.read_chunk(ci, &expected, self.verify, self.validate, self.amplify_budget(), Some(&self.link))
    }

    /// Bytes of missing neighbours to fetch along with a missed chunk: `amplify_io`, or
    /// with `adaptive_amplify` the link's bandwidth-delay product up to it.
    pub fn amplify_budget(&self) -> u64 {
        if self.adaptive_amplify {
            self.link.amplify(self.amplify_io)
        } else {
            self.amplify_io
        }
    }

    /// Decoded, verified bytes of chunk `idx` of a regular file, and whether it was a hit
    /// (in memory or in the cache).
    pub fn read_file_chunk(&self, nid: u64, ino: &Inode, idx: u64) -> Result<(Arc<Vec<u8>>, bool)> {
        let addr = self.boot.chunk_addr(nid, ino, idx)?;
        let key = (addr.blob_index, addr.ci_index);
        let cs = self.boot.chunk_size();
        let want_len = (ino.size - idx * cs).min(cs);
        let recent_hit = || {
            let recent = self.recent.lock().unwrap_or_else(|p| p.into_inner());
            recent.iter().find(|(k, d)| *k == key && d.len() as u64 == want_len).map(|(_, d)| d.clone())
        };
        if let Some(d) = recent_hit() {
            return Ok((d, true));
        }
        // One fetch per chunk at a time: concurrent readers of the same chunk (FUSE workers
        // serving one stream's readahead) wait for the first and then find it in `recent`.
        let stripe = (addr.blob_index as usize * 31 + addr.ci_index as usize) % FETCH_STRIPES;
        let _fetching = self.fetching[stripe].lock().unwrap_or_else(|p| p.into_inner());
        if let Some(d) = recent_hit() {
            return Ok((d, true));
        }
        let (data, hit) = self.fetch_chunk(nid, idx, addr, want_len)?;
        let data = Arc::new(data);
        let mut recent = self.recent.lock().unwrap_or_else(|p| p.into_inner());
        if recent.len() == RECENT_CHUNKS {
            recent.pop_front();
        }
        recent.push_back((key, data.clone()));
        Ok((data, hit))
    }

    fn fetch_chunk(&self, nid: u64, idx: u64, addr: crate::layout::inode::ChunkAddr, want_len: u64) -> Result<(Vec<u8>, bool)> {
        let blob = self.checked_blob(nid, idx, addr, want_len)?;
        self.read_blob_chunk(&blob, addr.blob_index as u32, addr.ci_index)
    }

    /// The blob holding a file's chunk, once its blob meta agrees with the inode's address.
    fn checked_blob(&self, nid: u64, idx: u64, addr: crate::layout::inode::ChunkAddr, want_len: u64) -> Result<Arc<BlobReader>> {
        let blob = self.blob(addr.blob_index as usize)?;
        let c = blob.chunk(addr.ci_index)?;
        ensure!(
            c.uncompressed_offset == addr.blkaddr as u64 * self.boot.block_size(),
            "file {nid} chunk {idx}: block address {} disagrees with blob meta offset {}",
            addr.blkaddr,
            c.uncompressed_offset
        );
        ensure!(c.uncompressed_size as u64 == want_len, "file {nid} chunk {idx}: blob meta size {} != expected {want_len}", c.uncompressed_size);
        Ok(blob)
    }

    /// Where chunk `idx` of a file already is in the blob cache, decoded and verified when it
    /// was stored: (the blob, the chunk's offset in the blob's cache file). None when it is
    /// not ready, or when cached bytes must be checked again on every read (`validate`).
    fn cached_chunk(&self, nid: u64, ino: &Inode, idx: u64) -> Result<Option<(Arc<BlobReader>, u64)>> {
        if self.validate {
            return Ok(None);
        }
        let addr = self.boot.chunk_addr(nid, ino, idx)?;
        let cs = self.boot.chunk_size();
        let blob = self.checked_blob(nid, idx, addr, (ino.size - idx * cs).min(cs))?;
        let ready = match &blob.cache {
            Some(cache) => cache.is_ready(addr.ci_index)?,
            None => false,
        };
        let offset = blob.chunk(addr.ci_index)?.uncompressed_offset;
        Ok(ready.then_some((blob, offset)))
    }

    /// Read up to `size` bytes at `offset` of a regular file.
    pub fn read_nid(&self, nid: u64, offset: u64, size: usize) -> Result<Vec<u8>> {
        let mut out = Vec::new();
        self.read_nid_into(nid, offset, size, &mut |piece| {
            out.extend_from_slice(piece);
            Ok(())
        })?;
        Ok(out)
    }

    /// Read up to `size` bytes at `offset` of a regular file, handing each chunk's slice to
    /// `sink` as it arrives (FUSE writes them straight into its reply). Returns the length.
    pub fn read_nid_into(&self, nid: u64, offset: u64, size: usize, sink: &mut dyn FnMut(&[u8]) -> Result<()>) -> Result<usize> {
        self.read_nid_to(nid, offset, size, &mut BytesSink(sink))
    }

    /// `read_nid_into` for a sink that can take cached ranges as (file, offset, length):
    /// a FUSE reply reads those straight into its buffer, without a decoded copy first.
    pub fn read_nid_to(&self, nid: u64, offset: u64, size: usize, sink: &mut dyn ReadSink) -> Result<usize> {
        let ino = self.boot.inode(nid)?;
        match ino.mode as u32 & mode::S_IFMT {
            mode::S_IFREG => {}
            mode::S_IFDIR => return Err(Error::IsADirectory(format!("nid {nid}"))),
            _ => return Err(Error::invalid(format!("nid {nid} is not a regular file"))),
        }
        if offset >= ino.size || size == 0 {
            return Ok(0);
        }
        let end = ino.size.min(offset.saturating_add(size as u64));
        let cs = self.boot.chunk_size();
        let mut pos = offset;
        let _demand = InflightGuard::new(&self.demand_inflight);
        let (mut hits, mut misses) = (0, 0);
        while pos < end {
            let idx = pos / cs;
            let from = (pos - idx * cs) as usize;
            if let Some((blob, at)) = self.cached_chunk(nid, &ino, idx)? {
                let to = ((end - idx * cs) as usize).min((ino.size - idx * cs).min(cs) as usize);
                let cache = blob.cache.as_ref().expect("cached_chunk found a cache");
                sink.cached(cache.data_file(), at + from as u64, to - from)?;
                cache.metrics.chunk_hits.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                hits += 1;
                pos = idx * cs + to as u64;
                continue;
            }
            let (chunk, hit) = self.read_file_chunk(nid, &ino, idx)?;
            if hit {
                hits += 1;
            } else {
                misses += 1;
            }
            let to = ((end - idx * cs) as usize).min(chunk.len());
            ensure!(to > from, "file {nid} chunk {idx} is shorter than its inode says");
            sink.bytes(&chunk[from..to])?;
            pos = idx * cs + to as u64;
        }
        self.cache_metrics.user_read(hits, misses);
        Ok((end - offset) as usize)
    }
}

/// The bootstrap a blob carries as `image.boot` (found through its ToC), decompressed and
/// digest-checked, not yet parsed.
pub fn inline_bootstrap(blob_path: &Path) -> Result<Vec<u8>> {
    let src = LocalBlob::open(blob_path)?;
    let toc = blob::read_toc(&src, None)?;
    let entry = toc.iter().find(|e| e.name == "image.boot").ok_or_else(|| Error::corrupt("blob has no image.boot section"))?;
    blob::extract_section(&src, entry, MAX_INLINE_BOOTSTRAP)
}

/// Where `Rafs::read_nid_to` puts a file's bytes, in order.
pub trait ReadSink {
    /// Decoded bytes.
    fn bytes(&mut self, piece: &[u8]) -> Result<()>;

    /// `len` bytes that the blob cache file `file` holds, decoded and verified, at `offset`.
    /// The default reads them into a buffer for `bytes`.
    fn cached(&mut self, file: &std::fs::File, offset: u64, len: usize) -> Result<()> {
        use std::os::unix::fs::FileExt;
        let mut buf = vec![0u8; len];
        file.read_exact_at(&mut buf, offset).map_err(|e| Error::io("read cache data", e))?;
        self.bytes(&buf)
    }
}

struct BytesSink<'a>(&'a mut dyn FnMut(&[u8]) -> Result<()>);

impl ReadSink for BytesSink<'_> {
    fn bytes(&mut self, piece: &[u8]) -> Result<()> {
        (self.0)(piece)
    }
}

/// Counts an on-demand read as in flight for as long as it lives.
struct InflightGuard<'a>(&'a std::sync::atomic::AtomicUsize);

impl<'a> InflightGuard<'a> {
    fn new(n: &'a std::sync::atomic::AtomicUsize) -> Self {
        n.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        InflightGuard(n)
    }
}

impl Drop for InflightGuard<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

pub fn stat_of(nid: u64, i: &Inode) -> Stat {
    let m = i.mode as u32;
    let is_dev = matches!(m & mode::S_IFMT, mode::S_IFCHR | mode::S_IFBLK);
    let (rdev_major, rdev_minor) = if is_dev && i.layout == inode_layout::FLAT_PLAIN { decode_rdev(i.i_u) } else { (0, 0) };
    Stat {
        ino: nid,
        mode: m,
        nlink: i.nlink,
        uid: i.uid,
        gid: i.gid,
        size: i.size,
        mtime: i.mtime as i64,
        mtime_nsec: i.mtime_nsec,
        rdev_major,
        rdev_minor,
        blocks: i.size.div_ceil(512),
    }
}
