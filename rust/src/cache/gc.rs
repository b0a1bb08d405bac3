//! Cache garbage collection: drop blobs unused for longer than an age limit, then the least
//! recently used until the cache fits a size limit. A blob whose cache is open anywhere (it
//! holds a shared `flock` on its chunk map) is never removed.

use crate::cache::map_name;
use crate::error::{IoContext, Result};
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::{Duration, SystemTime};

#[derive(Debug, Default)]
pub struct GcReport {
    pub removed: Vec<String>,
    pub freed_bytes: u64,
    pub in_use: Vec<String>,
    pub kept_bytes: u64,
}

struct Entry {
    id: String,
    bytes: u64,
    last_used: SystemTime,
}

/// The cache files of a blob; the map first, because removal goes in this order and a map
/// must never outlive its data.
const SUFFIXES: [&str; 4] = ["chunk_map", "blob.data", "blob.meta", "blob.digest"];

fn files_of(dir: &Path, id: &str) -> Vec<std::path::PathBuf> {
    SUFFIXES.iter().map(|ext| dir.join(format!("{id}.{ext}"))).collect()
}

fn allocated(dir: &Path, id: &str) -> u64 {
    files_of(dir, id).iter().filter_map(|p| std::fs::metadata(p).ok()).map(|m| m.blocks() * 512).sum()
}

pub fn gc(dir: &Path, max_bytes: Option<u64>, max_age: Option<Duration>) -> Result<GcReport> {
    let mut entries = Vec::new();
    let mut ids = std::collections::HashSet::new();
    for e in std::fs::read_dir(dir).ctx(|| format!("read cache dir {}", dir.display()))? {
        let e = e.ctx(|| format!("read cache dir {}", dir.display()))?;
        let name = e.file_name().to_string_lossy().to_string();
        // Any cache file names a blob: leftovers of an interrupted GC are found too.
        let Some(id) = SUFFIXES.iter().find_map(|s| name.strip_suffix(&format!(".{s}"))) else {
            continue;
        };
        if ids.insert(id.to_string()) {
            let last_used = std::fs::metadata(dir.join(map_name(id))).and_then(|m| m.modified()).unwrap_or(SystemTime::UNIX_EPOCH);
            entries.push(Entry { id: id.to_string(), bytes: allocated(dir, id), last_used });
        }
    }
    entries.sort_by_key(|e| e.last_used);
    let mut total: u64 = entries.iter().map(|e| e.bytes).sum();
    let now = SystemTime::now();
    let mut report = GcReport::default();
    for e in entries {
        let too_old = max_age.is_some_and(|age| now.duration_since(e.last_used).unwrap_or_default() > age);
        let too_big = max_bytes.is_some_and(|limit| total > limit);
        if !(too_old || too_big) {
            report.kept_bytes += e.bytes;
            continue;
        }
        if remove_unless_in_use(dir, &e.id)? {
            total -= e.bytes;
            report.freed_bytes += e.bytes;
            report.removed.push(e.id);
        } else {
            report.kept_bytes += e.bytes;
            report.in_use.push(e.id);
        }
    }
    Ok(report)
}

/// Remove a blob's files while holding its map's exclusive lock; false if it is in use.
fn remove_unless_in_use(dir: &Path, id: &str) -> Result<bool> {
    let map_path = dir.join(map_name(id));
    let map = std::fs::File::open(&map_path).ok();
    if let Some(map) = &map {
        // SAFETY: flock on a descriptor we own; released when `map` is closed.
        if unsafe { libc::flock(map.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            return Ok(false);
        }
    }
    // The map goes first: data without a map is only unused space, while a map without its
    // data would claim chunks that are not there (ChunkCache::open also guards that case).
    for p in files_of(dir, id) {
        match std::fs::remove_file(&p) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(crate::error::Error::io(format!("remove {}", p.display()), e)),
            _ => {}
        }
    }
    Ok(true)
}
