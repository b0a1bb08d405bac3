//! The test filesystem on fuser 0.18 (latest; pure-Rust mount, no fusermount as root),
//! served by `Config { n_threads, clone_fd: true }`: N event-loop threads, each with its own
//! /dev/fuse fd cloned with FUSE_DEV_IOC_CLONE (added in fuser 0.17).

use fuse_lib_bench::*;
use fuser::{
    Config, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, InitFlags,
    KernelConfig, LockOwner, MountOption, OpenFlags, ReplyAttr, ReplyData, ReplyDirectory, ReplyDirectoryPlus,
    ReplyEntry, ReplyOpen, Request, Session,
};
use fuser18 as fuser;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::sync::atomic::Ordering::Relaxed;
use std::time::UNIX_EPOCH;

struct MemFs {
    d: Data,
}

fn fattr(a: &Attr) -> FileAttr {
    FileAttr {
        ino: INodeNo(a.ino),
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
    fn init(&mut self, _: &Request, c: &mut KernelConfig) -> std::io::Result<()> {
        let _ = c.set_max_write(MAX_IO);
        let _ = c.set_max_readahead(MAX_IO);
        let _ = c.add_capabilities(
            InitFlags::FUSE_DO_READDIRPLUS | InitFlags::FUSE_READDIRPLUS_AUTO | InitFlags::FUSE_PARALLEL_DIROPS,
        );
        Ok(())
    }

    fn lookup(&self, _: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        STATS.lookup.fetch_add(1, Relaxed);
        match self.d.lookup(parent.0, name.as_bytes()) {
            Some(a) => reply.entry(&TTL, &fattr(&a), Generation(0)),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn getattr(&self, _: &Request, ino: INodeNo, _: Option<FileHandle>, reply: ReplyAttr) {
        STATS.getattr.fetch_add(1, Relaxed);
        match self.d.attr(ino.0) {
            Some(a) => reply.attr(&TTL, &fattr(&a)),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn open(&self, _: &Request, _: INodeNo, _: OpenFlags, reply: ReplyOpen) {
        STATS.open.fetch_add(1, Relaxed);
        reply.opened(FileHandle(0), FopenFlags::FOPEN_KEEP_CACHE);
    }

    fn read(&self, _: &Request, ino: INodeNo, _: FileHandle, off: u64, size: u32, _: OpenFlags, _: Option<LockOwner>, reply: ReplyData) {
        match self.d.read(ino.0, off, size) {
            Some(data) => {
                STATS.on_read(data.len());
                reply.data(data)
            }
            None => reply.error(Errno::ENOENT),
        }
    }

    fn opendir(&self, _: &Request, _: INodeNo, _: OpenFlags, reply: ReplyOpen) {
        reply.opened(FileHandle(0), FopenFlags::FOPEN_CACHE_DIR | FopenFlags::FOPEN_KEEP_CACHE);
    }

    fn readdir(&self, _: &Request, ino: INodeNo, _: FileHandle, off: u64, mut reply: ReplyDirectory) {
        STATS.readdir.fetch_add(1, Relaxed);
        let mut i = off;
        while let Some((e, k, name)) = self.d.dirent(ino.0, i) {
            if reply.add(INodeNo(e), i + 1, ft(k), name) {
                break;
            }
            i += 1;
        }
        reply.ok();
    }

    fn readdirplus(&self, _: &Request, ino: INodeNo, _: FileHandle, off: u64, mut reply: ReplyDirectoryPlus) {
        STATS.readdirplus.fetch_add(1, Relaxed);
        let mut i = off;
        while let Some((e, _, name)) = self.d.dirent(ino.0, i) {
            let a = self.d.attr(e).unwrap();
            if reply.add(INodeNo(e), i + 1, name, &TTL, &fattr(&a), Generation(0)) {
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
    let mut cfg = Config::default();
    cfg.mount_options = vec![MountOption::RO, MountOption::FSName("memfs".into()), MountOption::Subtype("fuser18".into())];
    cfg.n_threads = Some(threads.max(1));
    cfg.clone_fd = true;
    let session = Session::new(fs, &mnt, &cfg).expect("mount");
    eprintln!("READY fuser18 threads={threads} clone_fd");
    session.run().expect("run");
    eprintln!("{}", STATS.line());
}
