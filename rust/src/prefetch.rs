//! Prefetch: background workers fill the blob cache with the chunks of some files (or of
//! whole blobs) before anyone reads them. They yield to on-demand reads (waiting briefly
//! while any is in flight, and only `try_lock`ing chunks, so a chunk being read on demand
//! is never fetched twice), merge adjacent chunks into requests of up to `batch_size`
//! bytes, and share a bandwidth limit.

use crate::cache::metrics::now_millis;
use crate::config::PrefetchConfig;
use crate::error::{Error, Result};
use crate::layout::mode;
use crate::reader::Rafs;
use std::collections::{BTreeSet, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// What to prefetch.
pub enum Target {
    /// Every chunk of every blob.
    All,
    /// These paths; a directory means every file below it.
    Paths(Vec<Vec<u8>>),
    /// The image's own prefetch table (built with `--prefetch-policy fs`).
    ImageTable,
}

/// Longest an on-demand burst can hold prefetch back before it proceeds anyway.
const MAX_YIELD: Duration = Duration::from_millis(50);

/// A shared schedule: each request reserves its share of time at `rate` bytes/s.
struct Limiter {
    rate: u64,
    next_free: Mutex<Instant>,
}

impl Limiter {
    /// Wait for this request's turn; false if cancelled while waiting.
    fn take(&self, bytes: u64, cancel: &AtomicBool) -> bool {
        if self.rate == 0 {
            return true;
        }
        let cost = Duration::from_secs_f64(bytes as f64 / self.rate as f64);
        let start = {
            let mut next = self.next_free.lock().unwrap_or_else(|p| p.into_inner());
            let start = (*next).max(Instant::now());
            *next = start + cost;
            start
        };
        // Sleep in short slices so that cancel() takes effect during a long wait.
        while Instant::now() < start {
            if cancel.load(Relaxed) {
                return false;
            }
            std::thread::sleep((start - Instant::now()).min(Duration::from_millis(20)));
        }
        true
    }
}

/// One unit of work: sorted chunk indexes of one blob.
struct Run {
    blob: usize,
    chunks: Vec<u32>,
}

pub struct Prefetch {
    cancel: Arc<AtomicBool>,
    workers: Vec<JoinHandle<()>>,
    errors: Arc<Mutex<Vec<String>>>,
}

#[derive(Debug, Default)]
pub struct PrefetchReport {
    pub errors: Vec<String>,
}

/// The (blob, chunk) pairs holding the data of the regular files `nids`.
fn chunks_of_files(rafs: &Rafs, nids: &BTreeSet<u64>) -> Result<Vec<Run>> {
    let mut per_blob: Vec<BTreeSet<u32>> = vec![BTreeSet::new(); rafs.boot.blobs.len()];
    let cs = rafs.boot.chunk_size();
    for &nid in nids {
        let ino = rafs.boot.inode(nid)?;
        if ino.mode as u32 & mode::S_IFMT != mode::S_IFREG {
            continue;
        }
        for idx in 0..ino.size.div_ceil(cs) {
            let a = rafs.boot.chunk_addr(nid, &ino, idx)?;
            per_blob.get_mut(a.blob_index as usize).ok_or_else(|| Error::corrupt(format!("file {nid} names blob {}", a.blob_index)))?.insert(a.ci_index);
        }
    }
    Ok(per_blob.into_iter().enumerate().filter(|(_, s)| !s.is_empty()).map(|(blob, s)| Run { blob, chunks: s.into_iter().collect() }).collect())
}

fn resolve(rafs: &Rafs, target: &Target) -> Result<Vec<Run>> {
    match target {
        Target::All => Ok((0..rafs.boot.blobs.len()).map(|blob| Run { blob, chunks: (0..rafs.boot.blobs[blob].chunk_count).collect() }).collect()),
        Target::ImageTable => {
            let table: BTreeSet<u64> = rafs.boot.prefetch_nids()?.into_iter().map(u64::from).collect();
            chunks_of_files(rafs, &files_below(rafs, |nid, _| table.contains(&nid))?)
        }
        Target::Paths(paths) => {
            let roots: Vec<Vec<Vec<u8>>> = paths
                .iter()
                .map(|p| {
                    rafs.boot.resolve(p)?; // a missing path is the caller's error, reported now
                    Ok(p.split(|b| *b == b'/').filter(|c| !c.is_empty()).map(<[u8]>::to_vec).collect())
                })
                .collect::<Result<_>>()?;
            chunks_of_files(rafs, &files_below(rafs, |_, path| roots.iter().any(|r| path.starts_with(r)))?)
        }
    }
}

/// Nids of every entry that `pick` selects, or that lies below a selected directory.
fn files_below(rafs: &Rafs, pick: impl Fn(u64, &[Vec<u8>]) -> bool) -> Result<BTreeSet<u64>> {
    let mut out = BTreeSet::new();
    let mut picked_dirs: Vec<Vec<Vec<u8>>> = Vec::new();
    crate::walk::walk(&rafs.boot, |v| {
        let under = picked_dirs.iter().any(|d| v.path.starts_with(d));
        if under || pick(v.nid, &v.path) {
            out.insert(v.nid);
            if v.file_type == crate::layout::file_type::DIR {
                picked_dirs.push(v.path.clone());
            }
        }
        Ok(())
    })?;
    Ok(out)
}

/// Cut each blob's chunk list into runs of at most `batch` stored bytes, so that workers
/// share a blob instead of one worker taking all of it.
fn split(rafs: &Rafs, runs: Vec<Run>, batch: u64) -> Result<VecDeque<Run>> {
    let mut out = VecDeque::new();
    for run in runs {
        let blob = rafs.blob(run.blob)?;
        let mut cur = Run { blob: run.blob, chunks: Vec::new() };
        let mut size = 0;
        for ci in run.chunks {
            let len = blob.chunk(ci)?.compressed_size as u64;
            if !cur.chunks.is_empty() && size + len > batch {
                out.push_back(std::mem::replace(&mut cur, Run { blob: run.blob, chunks: Vec::new() }));
                size = 0;
            }
            cur.chunks.push(ci);
            size += len;
        }
        if !cur.chunks.is_empty() {
            out.push_back(cur);
        }
    }
    Ok(out)
}

impl Prefetch {
    /// Start `cfg.threads` workers prefetching `target` into `rafs`'s blob cache.
    pub fn start(rafs: Arc<Rafs>, target: Target, cfg: &PrefetchConfig) -> Result<Prefetch> {
        if rafs.cache_dir.is_none() {
            return Err(Error::invalid("prefetch needs a blob cache (cache.type blobcache)"));
        }
        let queue = Arc::new(Mutex::new(split(&rafs, resolve(&rafs, &target)?, cfg.batch_size.max(1))?));
        let limiter = Arc::new(Limiter { rate: cfg.bandwidth_limit, next_free: Mutex::new(Instant::now()) });
        let cancel = Arc::new(AtomicBool::new(false));
        let errors = Arc::new(Mutex::new(Vec::new()));
        let m = &rafs.cache_metrics;
        m.prefetch_workers.store(cfg.threads as u64, Relaxed);
        m.prefetch_begin_millis.store(now_millis(), Relaxed);
        m.prefetch_end_millis.store(0, Relaxed);
        let running = Arc::new(std::sync::atomic::AtomicUsize::new(cfg.threads));
        let workers = (0..cfg.threads)
            .map(|_| {
                let (rafs, queue, limiter, cancel, errors, running) =
                    (rafs.clone(), queue.clone(), limiter.clone(), cancel.clone(), errors.clone(), running.clone());
                let batch = cfg.batch_size.max(1);
                std::thread::spawn(move || {
                    loop {
                        let next = queue.lock().unwrap_or_else(|p| p.into_inner()).pop_front();
                        let Some(run) = next else { break };
                        if cancel.load(Relaxed) {
                            break;
                        }
                        if let Err(e) = fill_run(&rafs, &run, batch, &limiter, &cancel) {
                            errors.lock().unwrap_or_else(|p| p.into_inner()).push(e.to_string());
                        }
                    }
                    if running.fetch_sub(1, Relaxed) == 1 {
                        rafs.cache_metrics.prefetch_end_millis.store(now_millis(), Relaxed);
                    }
                })
            })
            .collect();
        Ok(Prefetch { cancel, workers, errors })
    }

    pub fn is_done(&self) -> bool {
        self.workers.iter().all(|w| w.is_finished())
    }

    pub fn cancel(&self) {
        self.cancel.store(true, Relaxed);
    }

    /// Wait for the workers; failures are reported, not raised: prefetch is best effort
    /// and a chunk it could not fetch is fetched again when read.
    pub fn wait(mut self) -> PrefetchReport {
        for w in std::mem::take(&mut self.workers) {
            let _ = w.join();
        }
        PrefetchReport { errors: std::mem::take(&mut *self.errors.lock().unwrap_or_else(|p| p.into_inner())) }
    }
}

impl Drop for Prefetch {
    fn drop(&mut self) {
        self.cancel();
    }
}

fn fill_run(rafs: &Rafs, run: &Run, batch: u64, limiter: &Limiter, cancel: &AtomicBool) -> Result<()> {
    let blob = rafs.blob(run.blob)?;
    let Some(cache) = &blob.cache else {
        return Ok(());
    };
    let m = &rafs.cache_metrics;
    let expected = |k: u32| rafs.expected_digest(&blob, run.blob as u32, k);
    let mut i = 0;
    while i < run.chunks.len() {
        if cancel.load(Relaxed) {
            return Ok(());
        }
        let yield_start = Instant::now();
        while rafs.demand_inflight.load(Relaxed) > 0 && yield_start.elapsed() < MAX_YIELD {
            std::thread::sleep(Duration::from_millis(1));
        }
        let ci = run.chunks[i];
        blob.chunk(ci)?;
        // Waiting on a chunk's stripe is fine here: an on-demand read holding it fills the
        // chunk, and then it is simply ready. Merged neighbours stay inside the target set.
        let wanted = |k: u32| run.chunks.binary_search(&k).is_ok();
        let Some(claim) = cache.claim(ci, &blob.chunks, batch, &wanted)? else {
            i += 1;
            continue;
        };
        let last = *claim.chunks.last().unwrap();
        let bytes: u64 = claim.chunks.iter().map(|&k| blob.chunks[k as usize].compressed_size as u64).sum();
        if !limiter.take(bytes, cancel) {
            return Ok(());
        }
        let t = Instant::now();
        let results = blob.fetch_run(&claim.chunks, &expected, rafs.verify)?;
        for (&k, r) in claim.chunks.iter().zip(results) {
            if let Ok(data) = r {
                cache.store(k, &blob.chunks[k as usize], &data)?;
            }
        }
        m.prefetch_cumulative_time_millis.fetch_add(t.elapsed().as_millis() as u64, Relaxed);
        m.prefetch_data_amount.fetch_add(bytes, Relaxed);
        m.prefetch_requests_count.fetch_add(1, Relaxed);
        m.prefetch_unmerged_chunks.fetch_add(claim.chunks.len() as u64, Relaxed);
        while i < run.chunks.len() && run.chunks[i] <= last {
            i += 1;
        }
    }
    Ok(())
}
