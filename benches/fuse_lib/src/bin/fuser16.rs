//! The test filesystem on fuser 0.16 (pure-Rust mount: mount(2) directly when root, no
//! fusermount). 0.16 has no way to serve one session from several threads: `Session::run`
//! is a single read-dispatch loop on one fd, and the Channel type is not public. THREADS
//! is accepted and ignored.

use fuser16 as fuser;
use fuser::consts::FOPEN_KEEP_CACHE;
use fuser::{
    FileAttr, FileType, Filesystem, KernelConfig, MountOption, ReplyAttr, ReplyData, ReplyDirectory, ReplyDirectoryPlus,
    ReplyEntry, ReplyOpen, Request, Session,
};
use fuse_lib_bench::*;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::sync::atomic::Ordering::Relaxed;
use std::time::UNIX_EPOCH;

struct MemFs {
    d: Data,
}

fn fattr(a: &Attr) -> FileAttr {
    FileAttr {
        ino: a.ino,
        size: a.size,
        blocks: a.size.div_ceil(512),
        atime: UNIX_EPOCH,
        mtime: UNIX_EPOCH,
        ctime: UNIX_EPOCH,
        crtime: UNIX_EPOCH,
        kind: ft(a.kind),
        perm: if a.kind == Kind::Dir { 0o555 } else { 0o444 },
        nlink: a.nlink,
        uid: 0,
        gid: 0,
        rdev: 0,
        blksize: 4096,
        flags: 0,
    }
}

fn ft(k: Kind) -> FileType {
    match k {
        Kind::Dir => FileType::Directory,
        Kind::File => FileType::RegularFile,
    }
}

impl Filesystem for MemFs {
    fn init(&mut self, _: &Request<'_>, c: &mut KernelConfig) -> Result<(), libc::c_int> {
        // max_pages follows max(max_write, max_readahead): 1 MiB -> 256 pages.
        let _ = c.set_max_write(MAX_IO);
        let _ = c.set_max_readahead(MAX_IO);
        let _ = c.add_capabilities(
            fuser::consts::FUSE_DO_READDIRPLUS | fuser::consts::FUSE_READDIRPLUS_AUTO | fuser::consts::FUSE_PARALLEL_DIROPS,
        );
        Ok(())
    }

    fn lookup(&mut self, _: &Request<'_>, parent: u64, name: &OsStr, reply: ReplyEntry) {
        STATS.lookup.fetch_add(1, Relaxed);
        match self.d.lookup(parent, name.as_bytes()) {
            Some(a) => reply.entry(&TTL, &fattr(&a), 0),
            None => reply.error(libc::ENOENT),
        }
    }

    fn getattr(&mut self, _: &Request<'_>, ino: u64, _: Option<u64>, reply: ReplyAttr) {
        STATS.getattr.fetch_add(1, Relaxed);
        match self.d.attr(ino) {
            Some(a) => reply.attr(&TTL, &fattr(&a)),
            None => reply.error(libc::ENOENT),
        }
    }

    fn open(&mut self, _: &Request<'_>, _: u64, _: i32, reply: ReplyOpen) {
        STATS.open.fetch_add(1, Relaxed);
        reply.opened(0, FOPEN_KEEP_CACHE);
    }

    fn read(&mut self, _: &Request<'_>, ino: u64, _: u64, off: i64, size: u32, _: i32, _: Option<u64>, reply: ReplyData) {
        match self.d.read(ino, off as u64, size) {
            Some(data) => {
                STATS.on_read(data.len());
                reply.data(data)
            }
            None => reply.error(libc::ENOENT),
        }
    }

    fn opendir(&mut self, _: &Request<'_>, _: u64, _: i32, reply: ReplyOpen) {
        reply.opened(0, fuser::consts::FOPEN_CACHE_DIR | FOPEN_KEEP_CACHE);
    }

    fn readdir(&mut self, _: &Request<'_>, ino: u64, _: u64, off: i64, mut reply: ReplyDirectory) {
        STATS.readdir.fetch_add(1, Relaxed);
        let mut i = off as u64;
        while let Some((e, k, name)) = self.d.dirent(ino, i) {
            if reply.add(e, (i + 1) as i64, ft(k), name) {
                break;
            }
            i += 1;
        }
        reply.ok();
    }

    fn readdirplus(&mut self, _: &Request<'_>, ino: u64, _: u64, off: i64, mut reply: ReplyDirectoryPlus) {
        STATS.readdirplus.fetch_add(1, Relaxed);
        let mut i = off as u64;
        while let Some((e, _, name)) = self.d.dirent(ino, i) {
            let a = self.d.attr(e).unwrap();
            if reply.add(e, (i + 1) as i64, name, &TTL, &fattr(&a), 0) {
                break;
            }
            i += 1;
        }
        reply.ok();
    }
}

fn main() {
    let (mnt, threads) = args();
    let fs = MemFs { d: generate() };
    install_stats_signal();
    let opts = [MountOption::RO, MountOption::FSName("memfs".into()), MountOption::Subtype("fuser16".into())];
    let mut session = Session::new(fs, &mnt, &opts).expect("mount");
    eprintln!("READY fuser16 threads=1 (asked {threads}; 0.16 is single-threaded)");
    session.run().expect("run");
    eprintln!("{}", STATS.line());
}
