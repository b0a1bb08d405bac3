//! Per-instance FUSE operation counters in the shape of nydusd's `/api/v1/metrics`
//! (FsIoStats, spec §8.1). Each instance's filesystem records its own operations (the
//! library's request hook sees neither reply status nor size, so it cannot count errors
//! or bytes).

use crate::storage::metrics::size_bucket;
use serde_json::{json, Value};
use std::collections::{BTreeSet, HashMap};
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

/// The per-file switches of nydusd's FS config (`iostats_files`, `access_pattern`,
/// `latest_read_files`). Off by default: each one takes a lock on every operation.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Accounting {
    pub files: bool,
    pub pattern: bool,
    pub latest: bool,
}

/// Counters of one opened file (`/metrics/files`, spec §8.2).
#[derive(Default)]
struct FileStats {
    total_fops: u64,
    data_read: u64,
    block_count_read: [u64; BUCKETS],
    fop_hits: [u64; FOPS],
    fop_errors: [u64; FOPS],
}

/// First read and read count of one file (`/metrics/pattern`, spec §8.3).
struct Access {
    nr_read: u64,
    first: std::time::Duration,
}

fn since_epoch() -> std::time::Duration {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default()
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Inode numbers as nydusd's `latest=true` lists them: runs of consecutive numbers become
/// `[first, last]`, a lone number `[ino]`.
fn collapse_ranges(inos: impl IntoIterator<Item = u64>) -> Vec<Vec<u64>> {
    let mut out: Vec<Vec<u64>> = Vec::new();
    for ino in inos {
        match out.last_mut() {
            Some(r) if r.last().is_some_and(|&l| l.checked_add(1) == Some(ino)) => {
                if r.len() == 2 {
                    r[1] = ino;
                } else {
                    r.push(ino);
                }
            }
            _ => out.push(vec![ino]),
        }
    }
    out
}

#[derive(Default)]
pub struct FsIoStats {
    accounting: Accounting,
    files: Mutex<HashMap<u64, FileStats>>,
    pattern: Mutex<HashMap<u64, Access>>,
    latest: Mutex<BTreeSet<u64>>,
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
    pub fn new(accounting: Accounting) -> Self {
        FsIoStats { accounting, ..Default::default() }
    }

    pub fn accounting(&self) -> Accounting {
        self.accounting
    }

    /// Run one operation, counting it (hit or error), its latency and, for reads, bytes.
    pub fn op<T>(&self, fop: Fop, inode: u64, f: impl FnOnce() -> std::io::Result<T>, bytes: impl Fn(&T) -> u64) -> std::io::Result<T> {
        let start = Instant::now();
        let seq = self.next_seq.fetch_add(1, Relaxed);
        lock(&self.inflight).insert(seq, (inode, fop.opcode(), since_epoch().as_secs()));
        let res = f();
        lock(&self.inflight).remove(&seq);
        let i = fop as usize;
        let read_bytes = match (&res, fop) {
            (Ok(v), Fop::Read) => Some(bytes(v)),
            _ => None,
        };
        self.account_file(fop, inode, res.is_ok(), read_bytes);
        match &res {
            Ok(_) => {
                self.fop_hits[i].fetch_add(1, Relaxed);
                match fop {
                    Fop::Open => {
                        self.nr_opens.fetch_add(1, Relaxed);
                    }
                    Fop::Release => {
                        self.nr_opens.fetch_sub(1, Relaxed);
                    }
                    Fop::Read => {
                        let n = read_bytes.unwrap_or(0);
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

    /// Per-file bookkeeping for the switches that are on. A file gets counters when it is
    /// opened or first read (with zero-message opens the kernel sends no OPEN), so a
    /// lookup storm does not grow the table.
    fn account_file(&self, fop: Fop, inode: u64, ok: bool, read_bytes: Option<u64>) {
        let a = self.accounting;
        if a.files {
            let mut files = lock(&self.files);
            if ok && matches!(fop, Fop::Open | Fop::Read) {
                files.entry(inode).or_default();
            }
            if let Some(f) = files.get_mut(&inode) {
                f.total_fops += 1;
                if ok {
                    f.fop_hits[fop as usize] += 1;
                } else {
                    f.fop_errors[fop as usize] += 1;
                }
                if let Some(n) = read_bytes {
                    f.data_read += n;
                    f.block_count_read[size_bucket(n)] += 1;
                }
            }
        }
        if read_bytes.is_some() {
            if a.pattern {
                lock(&self.pattern).entry(inode).or_insert_with(|| Access { nr_read: 0, first: since_epoch() }).nr_read += 1;
            }
            if a.latest {
                lock(&self.latest).insert(inode);
            }
        }
    }

    /// `/metrics/files` (spec §8.2): counters by inode, or with `latest` the inodes read since
    /// the last such call, as ranges (the set is cleared).
    pub fn files_json(&self, latest: bool) -> Value {
        if latest {
            let set = std::mem::take(&mut *lock(&self.latest));
            return json!(collapse_ranges(set));
        }
        let files = lock(&self.files);
        let map: serde_json::Map<String, Value> = files
            .iter()
            .map(|(ino, f)| {
                let v = json!({"total_fops": f.total_fops, "data_read": f.data_read, "block_count_read": f.block_count_read,
                               "fop_hits": f.fop_hits, "fop_errors": f.fop_errors});
                (ino.to_string(), v)
            })
            .collect();
        Value::Object(map)
    }

    /// `/metrics/pattern` (spec §8.3): every file read so far, oldest first access first.
    pub fn pattern_json(&self) -> Value {
        let pattern = lock(&self.pattern);
        let mut v: Vec<_> = pattern.iter().collect();
        v.sort_by_key(|(ino, a)| (a.first, **ino));
        json!(v
            .into_iter()
            .map(|(ino, a)| json!({"ino": ino, "nr_read": a.nr_read, "first_access_time_secs": a.first.as_secs(),
                                   "first_access_time_nanos": a.first.subsec_nanos()}))
            .collect::<Vec<_>>())
    }

    /// `/metrics/inflight` entries (spec §8.8) of this instance.
    pub fn inflight_json(&self) -> Vec<Value> {
        let map = lock(&self.inflight);
        let mut v: Vec<_> = map.iter().map(|(seq, (ino, op, t))| json!({"inode": ino, "opcode": op, "unique": seq, "timestamp_secs": t})).collect();
        v.sort_by_key(|e| e["unique"].as_u64());
        v
    }

    pub fn to_json(&self, id: &str) -> Value {
        let arr = |a: &[AtomicU64]| a.iter().map(|x| x.load(Relaxed)).collect::<Vec<_>>();
        let a = self.accounting;
        json!({
            "files_account_enabled": a.files,
            "access_pattern_enabled": a.pattern,
            "record_latest_read_files_enabled": a.latest,
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
        let j = s.to_json("/");
        assert_eq!(j["data_read"], 4096);
        assert_eq!(j["block_count_read"][2], 1);
        assert_eq!(j["fop_hits"][4], 1);
        assert_eq!(j["fop_errors"][9], 1);
        assert_eq!(j["nr_opens"], 1);
        assert_eq!(j["read_latency_dist"][0], 4);
        // All switches off: nothing per file.
        assert_eq!(s.files_json(false), json!({}));
        assert_eq!(s.files_json(true), json!([]));
        assert_eq!(s.pattern_json(), json!([]));
    }

    #[test]
    fn per_file_accounting() {
        let s = FsIoStats::new(Accounting { files: true, pattern: true, latest: true });
        s.op(Fop::Getattr, 5, || Ok(()), |_| 0).unwrap(); // not opened or read yet: no counters
        s.op(Fop::Open, 5, || Ok(()), |_| 0).unwrap();
        s.op(Fop::Read, 5, || Ok(4096u64), |n| *n).unwrap();
        s.op(Fop::Read, 5, || Ok(100u64), |n| *n).unwrap();
        let _ = s.op(Fop::Read, 5, || Err::<u64, _>(std::io::Error::from_raw_os_error(5)), |n| *n);
        for ino in [6, 7, 9] {
            s.op(Fop::Read, ino, || Ok(1u64), |n| *n).unwrap();
        }
        let f = s.files_json(false);
        // a first read starts a file's counters too (zero-message opens send no OPEN)
        assert_eq!(f.as_object().unwrap().len(), 4);
        assert_eq!(f["6"]["fop_hits"][4].as_u64(), Some(1));
        let f5 = &f["5"];
        assert_eq!((f5["total_fops"].as_u64(), f5["data_read"].as_u64()), (Some(4), Some(4196)));
        assert_eq!((f5["fop_hits"][4].as_u64(), f5["fop_errors"][4].as_u64()), (Some(2), Some(1)));
        assert_eq!(f5["block_count_read"][2], 1);
        assert_eq!(s.files_json(true), json!([[5, 7], [9]]));
        assert_eq!(s.files_json(true), json!([]), "the latest set is cleared on read");
        let p = s.pattern_json();
        assert_eq!(p.as_array().unwrap().len(), 4);
        let p5 = p.as_array().unwrap().iter().find(|e| e["ino"] == 5).unwrap();
        assert_eq!(p5["nr_read"], 2);
        assert!(p5["first_access_time_secs"].as_u64().unwrap() > 1_600_000_000);
    }

    #[test]
    fn ranges() {
        assert_eq!(collapse_ranges([1, 2, 3, 5, 7, 8, u64::MAX - 1, u64::MAX]), vec![vec![1, 3], vec![5], vec![7, 8], vec![u64::MAX - 1, u64::MAX]]);
        assert!(collapse_ranges([]).is_empty());
    }
}
