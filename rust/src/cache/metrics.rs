//! Blob-cache counters in the shape of nydusd's `/api/v1/metrics/blobcache` (spec §8.5).

use serde_json::{json, Value};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

#[derive(Debug, Default)]
pub struct CacheMetrics {
    /// User reads whose chunks were all cached, some cached, and all user reads.
    pub whole_hits: AtomicU64,
    pub partial_hits: AtomicU64,
    pub total: AtomicU64,
    /// Chunk-level figures behind those.
    pub chunk_hits: AtomicU64,
    pub chunk_misses: AtomicU64,
    pub fills: AtomicU64,
    /// Chunks fetched together with a missed one because they were next to it (`amplify_io`).
    pub amplified_chunks: AtomicU64,
    pub validate_failures: AtomicU64,
    pub prefetch_data_amount: AtomicU64,
    pub prefetch_requests_count: AtomicU64,
    pub prefetch_unmerged_chunks: AtomicU64,
    pub prefetch_cumulative_time_millis: AtomicU64,
    pub prefetch_workers: AtomicU64,
    pub prefetch_begin_millis: AtomicU64,
    pub prefetch_end_millis: AtomicU64,
    files: Mutex<Vec<String>>,
}

pub fn now_millis() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

impl CacheMetrics {
    pub fn add_file(&self, name: String) {
        let mut f = self.files.lock().unwrap_or_else(|p| p.into_inner());
        if !f.contains(&name) {
            f.push(name);
        }
    }

    /// Account one user read that needed `hits + misses` chunks.
    pub fn user_read(&self, hits: u64, misses: u64) {
        self.total.fetch_add(1, Relaxed);
        if misses == 0 && hits > 0 {
            self.whole_hits.fetch_add(1, Relaxed);
        } else if hits > 0 {
            self.partial_hits.fetch_add(1, Relaxed);
        }
    }

    pub fn to_json(&self, store_path: &str, data_all_ready: bool) -> Value {
        let g = |a: &AtomicU64| a.load(Relaxed);
        let files = self.files.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let (begin, end) = (g(&self.prefetch_begin_millis), g(&self.prefetch_end_millis));
        json!({
            "underlying_files": files,
            "store_path": store_path,
            "partial_hits": g(&self.partial_hits),
            "whole_hits": g(&self.whole_hits),
            "total": g(&self.total),
            "entries_count": files.len(),
            "prefetch_data_amount": g(&self.prefetch_data_amount),
            "prefetch_requests_count": g(&self.prefetch_requests_count),
            "prefetch_unmerged_chunks": g(&self.prefetch_unmerged_chunks),
            "prefetch_cumulative_time_millis": g(&self.prefetch_cumulative_time_millis),
            "prefetch_workers": g(&self.prefetch_workers),
            "prefetch_begin_time_secs": begin / 1000,
            "prefetch_begin_time_millis": begin % 1000,
            "prefetch_end_time_secs": end / 1000,
            "prefetch_end_time_millis": end % 1000,
            "buffered_backend_size": 0,
            "data_all_ready": data_all_ready,
            "chunk_hits": g(&self.chunk_hits),
            "chunk_misses": g(&self.chunk_misses),
            "fills": g(&self.fills),
            "amplified_chunks": g(&self.amplified_chunks),
            "validate_failures": g(&self.validate_failures),
        })
    }
}
