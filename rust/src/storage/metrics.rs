//! Backend counters in the shape of nydusd's `/api/v1/metrics/backend` (spec §8.4).

use serde_json::{json, Value};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

const BUCKETS: usize = 8;

/// Request-size bucket: <1K, 1K–4K, 4K–16K, 16K–64K, 64K–128K, 128K–512K, 512K–1M, ≥1M
/// (the same buckets for backend reads, §8.4, and FUSE reads, §8.1).
pub fn size_bucket(bytes: u64) -> usize {
    const BOUNDS: [u64; 7] = [1 << 10, 4 << 10, 16 << 10, 64 << 10, 128 << 10, 512 << 10, 1 << 20];
    BOUNDS.iter().position(|&b| bytes < b).unwrap_or(BUCKETS - 1)
}

/// Backend latency bucket in milliseconds: ≤1, ≤20, ≤50, ≤100, ≤500, ≤1000, ≤2000, >2000.
fn latency_bucket(ms: u64) -> usize {
    const BOUNDS: [u64; 7] = [1, 20, 50, 100, 500, 1000, 2000];
    BOUNDS.iter().position(|&b| ms <= b).unwrap_or(BUCKETS - 1)
}

#[derive(Default)]
pub struct BackendMetrics {
    backend_type: std::sync::OnceLock<&'static str>,
    read_count: AtomicU64,
    read_errors: AtomicU64,
    read_amount_total: AtomicU64,
    latency_ms_total: AtomicU64,
    latency_ms_by_size: [AtomicU64; BUCKETS],
    count_by_size: [AtomicU64; BUCKETS],
    latency_by_size: [[AtomicU64; BUCKETS]; BUCKETS],
    /// Every request sent to the backend, reads or not (size probes, auth, uploads).
    requests: AtomicU64,
}

impl BackendMetrics {
    pub fn new(backend_type: &'static str) -> Self {
        let m = BackendMetrics::default();
        m.set_type(backend_type);
        m
    }

    /// The first backend to report wins; one image uses one backend type.
    pub fn set_type(&self, backend_type: &'static str) {
        let _ = self.backend_type.set(backend_type);
    }

    /// Record one data read of `bytes` that took `elapsed`.
    pub fn read(&self, bytes: u64, elapsed: Duration, ok: bool) {
        if !ok {
            self.read_errors.fetch_add(1, Relaxed);
            return;
        }
        let ms = elapsed.as_millis() as u64;
        let (s, l) = (size_bucket(bytes), latency_bucket(ms));
        self.read_count.fetch_add(1, Relaxed);
        self.read_amount_total.fetch_add(bytes, Relaxed);
        self.latency_ms_total.fetch_add(ms, Relaxed);
        self.latency_ms_by_size[s].fetch_add(ms, Relaxed);
        self.count_by_size[s].fetch_add(1, Relaxed);
        self.latency_by_size[s][l].fetch_add(1, Relaxed);
    }

    pub fn request(&self) {
        self.requests.fetch_add(1, Relaxed);
    }

    pub fn read_count(&self) -> u64 {
        self.read_count.load(Relaxed)
    }

    pub fn read_amount(&self) -> u64 {
        self.read_amount_total.load(Relaxed)
    }

    pub fn to_json(&self) -> Value {
        let arr = |a: &[AtomicU64; BUCKETS]| a.iter().map(|x| x.load(Relaxed)).collect::<Vec<_>>();
        json!({
            "backend_type": self.backend_type.get().copied().unwrap_or("localfs"),
            "read_count": self.read_count.load(Relaxed),
            "read_errors": self.read_errors.load(Relaxed),
            "read_amount_total": self.read_amount_total.load(Relaxed),
            "read_cumulative_latency_millis_total": self.latency_ms_total.load(Relaxed),
            "read_cumulative_latency_millis_dist": arr(&self.latency_ms_by_size),
            "read_count_block_size_dist": arr(&self.count_by_size),
            "read_latency_sizes_dist": self.latency_by_size.iter().map(arr).collect::<Vec<_>>(),
            "requests_total": self.requests.load(Relaxed),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_have_inclusive_lower_bounds() {
        assert_eq!(size_bucket(0), 0);
        assert_eq!(size_bucket(1023), 0);
        assert_eq!(size_bucket(1024), 1);
        assert_eq!(size_bucket(64 << 10), 4);
        assert_eq!(size_bucket(1 << 20), 7);
        assert_eq!(latency_bucket(1), 0);
        assert_eq!(latency_bucket(2), 1);
        assert_eq!(latency_bucket(2000), 6);
        assert_eq!(latency_bucket(2001), 7);
    }

    #[test]
    fn reads_land_in_their_buckets() {
        let m = BackendMetrics::new("registry");
        m.read(4096, Duration::from_millis(30), true);
        m.read(10, Duration::from_millis(0), false);
        let j = m.to_json();
        assert_eq!(j["read_count"], 1);
        assert_eq!(j["read_errors"], 1);
        assert_eq!(j["read_count_block_size_dist"][2], 1);
        assert_eq!(j["read_latency_sizes_dist"][2][2], 1);
        assert_eq!(j["read_cumulative_latency_millis_dist"][2], 30);
    }
}
