//! The test filesystem on fuse-backend-rs 0.12, served the way rust/src/fuse/server.rs does:
//! Vfs (fs at "/") + Server + FuseSession mounted directly (as root), N threads each on
//! its own cloned channel.

use fuse_backend_rs::abi::fuse_abi::{stat64, OpenOptions};
use fuse_backend_rs::api::filesystem::{Context, DirEntry, Entry, FileSystem, FsOptions, ZeroCopyWriter};
use fuse_backend_rs::api::server::Server;
use fuse_backend_rs::api::{BackendFileSystem, Vfs, VfsOptions};
use fuse_backend_rs::transport::FuseSession;
use fuse_lib_bench::*;
use std::any::Any;
use std::ffi::CStr;
use std::io;
use std::sync::Arc;
use std::time::Duration;

struct MemFs {
    d: Data,
}

fn enoent() -> io::Error {
    io::Error::from_raw_os_error(libc::ENOENT)
}

fn st(a: &Attr) -> stat64 {
    // SAFETY: plain data, all-zero is valid.
    let mut s: stat64 = unsafe { std::mem::zeroed() };
    s.st_ino = a.ino;
    s.st_mode = match a.kind {
        Kind::Dir => libc::S_IFDIR | 0o555,
        Kind::File => libc::S_IFREG | 0o444,
    };
    s.st_nlink = a.nlink as _;
    s.st_size = a.size as i64;
    s.st_blksize = 4096;
    s.st_blocks = a.size.div_ceil(512) as i64;
    s
}

fn entry(a: &Attr) -> Entry {
    Entry { inode: a.ino, generation: 0, attr: st(a), attr_flags: 0, attr_timeout: TTL, entry_timeout: TTL }
}

fn dt(k: Kind) -> u32 {
    (match k {
        Kind::Dir => libc::DT_DIR,
        Kind::File => libc::DT_REG,
    }) as u32
}

impl FileSystem for MemFs {
    type Inode = u64;
    type Handle = u64;

    fn init(&self, capable: FsOptions) -> io::Result<FsOptions> {
        Ok(capable
            & (FsOptions::ASYNC_READ
                | FsOptions::PARALLEL_DIROPS
                | FsOptions::DO_READDIRPLUS
                | FsOptions::READDIRPLUS_AUTO
                | FsOptions::MAX_PAGES))
    }

    fn lookup(&self, _: &Context, parent: u64, name: &CStr) -> io::Result<Entry> {
        STATS.lookup.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.d.lookup(parent, name.to_bytes()).map(|a| entry(&a)).ok_or_else(enoent)
    }

    fn getattr(&self, _: &Context, ino: u64, _: Option<u64>) -> io::Result<(stat64, Duration)> {
        STATS.getattr.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.d.attr(ino).map(|a| (st(&a), TTL)).ok_or_else(enoent)
    }

    fn open(&self, _: &Context, ino: u64, _: u32, _: u32) -> io::Result<(Option<u64>, OpenOptions, Option<u32>)> {
        STATS.open.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.d.attr(ino).ok_or_else(enoent)?;
        Ok((None, OpenOptions::KEEP_CACHE, None))
    }

    fn read(&self, _: &Context, ino: u64, _: u64, w: &mut dyn ZeroCopyWriter, size: u32, off: u64, _: Option<u64>, _: u32) -> io::Result<usize> {
        let data = self.d.read(ino, off, size).ok_or_else(enoent)?;
        w.write_all(data)?;
        STATS.on_read(data.len());
        Ok(data.len())
    }

    fn release(&self, _: &Context, _: u64, _: u32, _: u64, _: bool, _: bool, _: Option<u64>) -> io::Result<()> {
        Ok(())
    }

    fn opendir(&self, _: &Context, ino: u64, _: u32) -> io::Result<(Option<u64>, OpenOptions)> {
        self.d.attr(ino).ok_or_else(enoent)?;
        Ok((Some(0), OpenOptions::CACHE_DIR | OpenOptions::KEEP_CACHE))
    }

    fn readdir(&self, _: &Context, ino: u64, _: u64, _: u32, off: u64, add: &mut dyn FnMut(DirEntry) -> io::Result<usize>) -> io::Result<()> {
        STATS.readdir.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut i = off;
        while let Some((e_ino, k, name)) = self.d.dirent(ino, i) {
            if add(DirEntry { ino: e_ino, offset: i + 1, type_: dt(k), name: name.as_bytes() })? == 0 {
                break;
            }
            i += 1;
        }
        Ok(())
    }

    fn readdirplus(&self, _: &Context, ino: u64, _: u64, _: u32, off: u64, add: &mut dyn FnMut(DirEntry, Entry) -> io::Result<usize>) -> io::Result<()> {
        STATS.readdirplus.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut i = off;
        while let Some((e_ino, k, name)) = self.d.dirent(ino, i) {
            let a = self.d.attr(e_ino).ok_or_else(enoent)?;
            if add(DirEntry { ino: e_ino, offset: i + 1, type_: dt(k), name: name.as_bytes() }, entry(&a))? == 0 {
                break;
            }
            i += 1;
        }
        Ok(())
    }

    fn releasedir(&self, _: &Context, _: u64, _: u32, _: u64) -> io::Result<()> {
        Ok(())
    }
}

impl BackendFileSystem for MemFs {
    fn mount(&self) -> io::Result<(Entry, u64)> {
        Ok((entry(&self.d.attr(ROOT).unwrap()), FIRST_SMALL + N_SMALL))
    }
    fn as_any(&self) -> &dyn Any {
        self
    }
}

fn main() {
    let (mnt, threads) = args();
    let fs = MemFs { d: generate() };
    install_stats_signal();

    let vfs = Arc::new(Vfs::new(VfsOptions { no_writeback: true, no_open: false, no_opendir: false, ..VfsOptions::default() }));
    vfs.mount(Box::new(fs), "/").expect("vfs mount");
    let server = Arc::new(Server::new(vfs.clone()));

    let mut session = FuseSession::new(&mnt, "memfs", "fbr", true).expect("session");
    session.mount().expect("mount");
    eprintln!("READY fbr threads={threads}");

    let mut workers = Vec::new();
    for i in 0..threads.max(1) {
        let mut ch = session.new_channel().expect("channel");
        let server = server.clone();
        workers.push(
            std::thread::Builder::new()
                .name(format!("fuse-{i}"))
                .spawn(move || loop {
                    match ch.get_request() {
                        Ok(Some((r, w))) => {
                            let _ = server.handle_message(r, w.into(), None, None);
                        }
                        Ok(None) | Err(_) => break,
                    }
                })
                .unwrap(),
        );
    }
    for w in workers {
        let _ = w.join();
    }
    eprintln!("{}", STATS.line());
}
