//! Per-instance FUSE operation counters in the shape of nydusd's `/api/v1/metrics`
//! (FsIoStats, spec §8.1). Each instance's filesystem records its own operations (the
//! library's request hook sees neither reply status nor size, so it cannot count errors
//! or bytes).

use crate::storage::metrics::size_bucket;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

/// The FOP index of §8.1.
#[derive(Clone, Copy, Debug)]
pub enum Fop {
    Getattr = 0,
    Readlink = 1,
    Open = 2,
    Release = 3,
    Read = 4,
    Statfs = 5,
    Getxattr = 6,
    Listxattr = 7,
    Opendir = 8,
    Lookup = 9,
    Readdir = 10,
    Readdirplus = 11,
    Access = 12,
}

impl Fop {
    /// The FUSE opcode, as `/metrics/inflight` reports it.
    fn opcode(self) -> u32 {
        [3, 5, 14, 18, 15, 17, 22, 23, 27, 1, 28, 44, 34][self as usize]
    }
}

const FOPS: usize = 15;
const BUCKETS: usize = 8;

/// FS latency bucket: ≤200 µs, ≤1 ms, ≤20 ms, ≤50 ms, ≤500 ms, ≤1 s, ≤2 s, >2 s.
fn latency_bucket(us: u64) -> usize {
    const BOUNDS: [u64; 7] = [200, 1_000, 20_000, 50_000, 500_000, 1_000_000, 2_000_000];
    BOUNDS.iter().position(|&b| us <= b).unwrap_or(BUCKETS - 1)
}

#[derive(Default)]
pub struct FsIoStats {
    nr_opens: AtomicI64,
    data_read: AtomicU64,
    block_count_read: [AtomicU64; BUCKETS],
    fop_hits: [AtomicU64; FOPS],
    fop_errors: [AtomicU64; FOPS],
    fop_latency_total: [AtomicU64; FOPS],
    latency_dist: [AtomicU64; BUCKETS],
    /// Operations being served now: sequence number -> (inode, opcode, start in epoch s).
    inflight: Mutex<HashMap<u64, (u64, u32, u64)>>,
    next_seq: AtomicU64,
}

impl FsIoStats {
    /// Run one operation, counting it (hit or error), its latency and, for reads, bytes.
    pub fn op<T>(&self, fop: Fop, inode: u64, f: impl FnOnce() -> std::io::Result<T>, bytes: impl Fn(&T) -> u64) -> std::io::Result<T> {
        let start = Instant::now();
        let seq = self.next_seq.fetch_add(1, Relaxed);
        let epoch = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
        self.inflight.lock().unwrap_or_else(|p| p.into_inner()).insert(seq, (inode, fop.opcode(), epoch));
        let res = f();
        self.inflight.lock().unwrap_or_else(|p| p.into_inner()).remove(&seq);
        let i = fop as usize;
        match &res {
            Ok(v) => {
                self.fop_hits[i].fetch_add(1, Relaxed);
                match fop {
                    Fop::Open => {
                        self.nr_opens.fetch_add(1, Relaxed);
                    }
                    Fop::Release => {
                        self.nr_opens.fetch_sub(1, Relaxed);
                    }
                    Fop::Read => {
                        let n = bytes(v);
                        self.data_read.fetch_add(n, Relaxed);
                        self.block_count_read[size_bucket(n)].fetch_add(1, Relaxed);
                    }
                    _ => {}
                }
            }
            Err(_) => {
                self.fop_errors[i].fetch_add(1, Relaxed);
            }
        }
        let us = start.elapsed().as_micros() as u64;
        self.fop_latency_total[i].fetch_add(us, Relaxed);
        self.latency_dist[latency_bucket(us)].fetch_add(1, Relaxed);
        res
    }

    /// `/metrics/inflight` entries (spec §8.8) of this instance.
    pub fn inflight_json(&self) -> Vec<Value> {
        let map = self.inflight.lock().unwrap_or_else(|p| p.into_inner());
        let mut v: Vec<_> = map.iter().map(|(seq, (ino, op, t))| json!({"inode": ino, "opcode": op, "unique": seq, "timestamp_secs": t})).collect();
        v.sort_by_key(|e| e["unique"].as_u64());
        v
    }

    pub fn to_json(&self, id: &str, files_account: bool, access_pattern: bool, latest_read_files: bool) -> Value {
        let arr = |a: &[AtomicU64]| a.iter().map(|x| x.load(Relaxed)).collect::<Vec<_>>();
        json!({
            "files_account_enabled": files_account,
            "access_pattern_enabled": access_pattern,
            "record_latest_read_files_enabled": latest_read_files,
            "measure_latency": true,
            "id": id,
            "nr_opens": self.nr_opens.load(Relaxed).max(0),
            "data_read": self.data_read.load(Relaxed),
            "block_count_read": arr(&self.block_count_read),
            "fop_hits": arr(&self.fop_hits),
            "fop_errors": arr(&self.fop_errors),
            "fop_cumulative_latency_total": arr(&self.fop_latency_total),
            "read_latency_dist": arr(&self.latency_dist),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets() {
        assert_eq!(latency_bucket(200), 0);
        assert_eq!(latency_bucket(201), 1);
        assert_eq!(latency_bucket(3_000_000), 7);
        assert_eq!(size_bucket(4096), 2);
    }

    #[test]
    fn reads_and_errors_are_counted() {
        let s = FsIoStats::default();
        s.op(Fop::Read, 7, || Ok(4096u64), |n| *n).unwrap();
        let _ = s.op(Fop::Lookup, 1, || Err::<(), _>(std::io::Error::from_raw_os_error(2)), |_| 0);
        s.op(Fop::Open, 7, || Ok(()), |_| 0).unwrap();
        let seen = s.op(Fop::Getattr, 9, || Ok(s.inflight_json()), |_| 0).unwrap();
        assert_eq!(seen.len(), 1);
        assert_eq!((seen[0]["inode"].as_u64(), seen[0]["opcode"].as_u64()), (Some(9), Some(3)));
        assert!(s.inflight_json().is_empty());
        let j = s.to_json("/", false, false, false);
        assert_eq!(j["data_read"], 4096);
        assert_eq!(j["block_count_read"][2], 1);
        assert_eq!(j["fop_hits"][4], 1);
        assert_eq!(j["fop_errors"][9], 1);
        assert_eq!(j["nr_opens"], 1);
        assert_eq!(j["read_latency_dist"][0], 4);
    }
}
