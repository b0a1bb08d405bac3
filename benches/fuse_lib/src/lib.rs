//! The filesystem both libraries serve, independent of either: a root directory with
//! `big` (512 MiB of pseudo-random bytes) and `many/` (20,000 files of 1 KiB, each a slice
//! of `big`), plus request counters printed on SIGUSR1 and at exit.
//!
//! Inodes: 1 = root, 2 = `big`, 3 = `many`, 4.. = `many/fNNNNN`.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::time::Duration;

pub const BIG_SIZE: u64 = 512 << 20;
pub const SMALL_SIZE: u64 = 1024;
pub const N_SMALL: u64 = 20_000;
pub const ROOT: u64 = 1;
pub const BIG: u64 = 2;
pub const MANY: u64 = 3;
pub const FIRST_SMALL: u64 = 4;
pub const TTL: Duration = Duration::from_secs(60);
pub const MAX_IO: u32 = 1 << 20;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Kind {
    Dir,
    File,
}

#[derive(Clone, Copy, Debug)]
pub struct Attr {
    pub ino: u64,
    pub kind: Kind,
    pub size: u64,
    pub nlink: u32,
}

pub struct Data {
    pub big: Vec<u8>,
}

/// splitmix64 over the whole buffer: fast, deterministic, incompressible.
pub fn generate() -> Data {
    let mut big = vec![0u8; BIG_SIZE as usize];
    let mut s: u64 = 0x9E37_79B9_7F4A_7C15;
    for chunk in big.chunks_exact_mut(8) {
        s = s.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = s;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        chunk.copy_from_slice(&(z ^ (z >> 31)).to_le_bytes());
    }
    Data { big }
}

pub fn small_name(i: u64) -> String {
    format!("f{i:05}")
}

impl Data {
    pub fn attr(&self, ino: u64) -> Option<Attr> {
        match ino {
            ROOT => Some(Attr { ino, kind: Kind::Dir, size: 4096, nlink: 3 }),
            MANY => Some(Attr { ino, kind: Kind::Dir, size: 4096, nlink: 2 }),
            BIG => Some(Attr { ino, kind: Kind::File, size: BIG_SIZE, nlink: 1 }),
            i if (FIRST_SMALL..FIRST_SMALL + N_SMALL).contains(&i) => Some(Attr { ino, kind: Kind::File, size: SMALL_SIZE, nlink: 1 }),
            _ => None,
        }
    }

    pub fn lookup(&self, parent: u64, name: &[u8]) -> Option<Attr> {
        match parent {
            ROOT => match name {
                b"big" => self.attr(BIG),
                b"many" => self.attr(MANY),
                _ => None,
            },
            MANY => {
                // f00000 .. f19999
                if name.len() != 6 || name[0] != b'f' || !name[1..].iter().all(u8::is_ascii_digit) {
                    return None;
                }
                let i: u64 = std::str::from_utf8(&name[1..]).ok()?.parse().ok()?;
                (i < N_SMALL).then(|| self.attr(FIRST_SMALL + i)).flatten()
            }
            _ => None,
        }
    }

    /// Directory entry `idx` (0-based) of `dir`: (ino, kind, name). No "." / "..".
    pub fn dirent(&self, dir: u64, idx: u64) -> Option<(u64, Kind, String)> {
        match (dir, idx) {
            (ROOT, 0) => Some((BIG, Kind::File, "big".into())),
            (ROOT, 1) => Some((MANY, Kind::Dir, "many".into())),
            (MANY, i) if i < N_SMALL => Some((FIRST_SMALL + i, Kind::File, small_name(i))),
            _ => None,
        }
    }

    pub fn read(&self, ino: u64, off: u64, size: u32) -> Option<&[u8]> {
        let (base, len) = match ino {
            BIG => (0, BIG_SIZE),
            i if (FIRST_SMALL..FIRST_SMALL + N_SMALL).contains(&i) => ((i - FIRST_SMALL) * SMALL_SIZE, SMALL_SIZE),
            _ => return None,
        };
        let start = off.min(len);
        let end = (off.saturating_add(size as u64)).min(len);
        Some(&self.big[(base + start) as usize..(base + end) as usize])
    }
}

// ---- request counters ----

pub struct Stats {
    pub lookup: AtomicU64,
    pub getattr: AtomicU64,
    pub open: AtomicU64,
    pub read: AtomicU64,
    pub read_bytes: AtomicU64,
    pub read_max: AtomicU64,
    pub readdir: AtomicU64,
    pub readdirplus: AtomicU64,
}

pub static STATS: Stats = Stats {
    lookup: AtomicU64::new(0),
    getattr: AtomicU64::new(0),
    open: AtomicU64::new(0),
    read: AtomicU64::new(0),
    read_bytes: AtomicU64::new(0),
    read_max: AtomicU64::new(0),
    readdir: AtomicU64::new(0),
    readdirplus: AtomicU64::new(0),
};

impl Stats {
    pub fn on_read(&self, n: usize) {
        self.read.fetch_add(1, Relaxed);
        self.read_bytes.fetch_add(n as u64, Relaxed);
        self.read_max.fetch_max(n as u64, Relaxed);
    }
    pub fn line(&self) -> String {
        let r = self.read.load(Relaxed);
        let b = self.read_bytes.load(Relaxed);
        format!(
            "STATS lookup={} getattr={} open={} read={} read_bytes={} read_avg={} read_max={} readdir={} readdirplus={}",
            self.lookup.load(Relaxed),
            self.getattr.load(Relaxed),
            self.open.load(Relaxed),
            r,
            b,
            if r > 0 { b / r } else { 0 },
            self.read_max.load(Relaxed),
            self.readdir.load(Relaxed),
            self.readdirplus.load(Relaxed),
        )
    }
}

static DUMP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_usr1(_: libc::c_int) {
    DUMP.store(true, Relaxed);
}

/// SIGUSR1 prints the counters to stderr (from a helper thread, not the handler).
pub fn install_stats_signal() {
    // SAFETY: the handler only stores to an atomic.
    unsafe { libc::signal(libc::SIGUSR1, on_usr1 as *const () as libc::sighandler_t) };
    std::thread::spawn(|| loop {
        std::thread::sleep(Duration::from_millis(20));
        if DUMP.swap(false, Relaxed) {
            eprintln!("{}", STATS.line());
        }
    });
}

/// `<bin> MOUNTPOINT [THREADS]`
pub fn args() -> (std::path::PathBuf, usize) {
    let mut a = std::env::args().skip(1);
    let mnt = a.next().expect("usage: BIN MOUNTPOINT [THREADS]").into();
    let threads = a.next().map(|t| t.parse().expect("THREADS")).unwrap_or(4);
    (mnt, threads)
}
