//! One RAFS instance as a read-only FUSE filesystem (`fuse-backend-rs`'s `FileSystem`), so it
//! can sit at the root of a mount (dedicated mode) or under `/<id>` of a shared `Vfs`.
//! Inode numbers are nids + 1 (0 is not a valid FUSE inode); they never change, so hard
//! links share one, and nothing needs lookup counting.

use super::metrics::{Accounting, Fop, FsIoStats};
use crate::error::Error;
use crate::layout::dirent::Dirent;
use crate::layout::{file_type, mode};
use crate::reader::{Rafs, ReadSink, Stat};
use fuse_backend_rs::abi::fuse_abi::{stat64, statvfs64, OpenOptions};
use fuse_backend_rs::api::filesystem::{Context, DirEntry, Entry, FileSystem, FsOptions, GetxattrReply, ListxattrReply, ZeroCopyWriter};
use fuse_backend_rs::api::BackendFileSystem;
use std::any::Any;
use std::collections::HashMap;
use std::ffi::CStr;
use std::fs::File;
use std::io;
use std::mem::ManuallyDrop;
use std::os::fd::{AsRawFd, FromRawFd};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Kernel caching of one mount (nydusd's `attr_timeout`, `entry_timeout`, page cache).
#[derive(Clone, Copy, Debug)]
pub struct CacheOptions {
    pub entry_timeout: Duration,
    pub attr_timeout: Duration,
    /// Keep file pages across opens (the image never changes under a mount).
    pub keep_cache: bool,
}

impl Default for CacheOptions {
    fn default() -> Self {
        // An image is immutable, so the kernel may keep what it learned for a long time.
        CacheOptions { entry_timeout: Duration::from_secs(60), attr_timeout: Duration::from_secs(60), keep_cache: true }
    }
}

/// A directory handle: the directory's nid and its decoded entries.
type DirListing = (u64, Arc<Vec<crate::reader::DirEntry>>);

pub struct RafsFs {
    pub rafs: Arc<Rafs>,
    /// This instance's operation counters (spec §8.1).
    pub stats: Arc<FsIoStats>,
    opts: CacheOptions,
    /// Entries of each open directory, so a large directory is decoded once per opendir
    /// rather than once per readdir call.
    dirs: Mutex<HashMap<u64, DirListing>>,
    next_handle: AtomicU64,
}

/// The errno a FUSE reply carries. A backend that timed out or refused credentials is, to a
/// program reading a file, an I/O error like any other failed fetch (as with nydusd).
fn errno(e: Error) -> io::Error {
    let code = match e {
        Error::Timeout(_) | Error::Auth(_) => libc::EIO,
        e => e.errno(),
    };
    io::Error::from_raw_os_error(code)
}

/// xattr replies: the needed size when asked with size 0, ERANGE when the caller's buffer
/// is too small, else the bytes.
fn sized_reply<T>(bytes: Vec<u8>, size: u32, count: fn(u32) -> T, value: fn(Vec<u8>) -> T) -> io::Result<T> {
    match size {
        0 => Ok(count(bytes.len() as u32)),
        n if (n as usize) < bytes.len() => Err(io::Error::from_raw_os_error(libc::ERANGE)),
        _ => Ok(value(bytes)),
    }
}

fn nid_of(ino: u64) -> io::Result<u64> {
    ino.checked_sub(1).ok_or_else(|| io::Error::from_raw_os_error(libc::ENOENT))
}

fn stat64_of(s: &Stat, ino: u64) -> stat64 {
    // SAFETY: stat64 is plain data; all-zero is a valid value.
    let mut st: stat64 = unsafe { std::mem::zeroed() };
    st.st_ino = ino;
    st.st_mode = s.mode;
    st.st_nlink = s.nlink as _;
    st.st_uid = s.uid;
    st.st_gid = s.gid;
    st.st_size = s.size as i64;
    st.st_mtime = s.mtime;
    st.st_mtime_nsec = s.mtime_nsec as i64;
    st.st_ctime = s.mtime;
    st.st_ctime_nsec = s.mtime_nsec as i64;
    st.st_atime = s.mtime;
    st.st_atime_nsec = s.mtime_nsec as i64;
    st.st_rdev = libc::makedev(s.rdev_major, s.rdev_minor);
    st.st_blksize = 4096;
    st.st_blocks = s.blocks as i64;
    st
}

fn dt_of(ft: u8) -> u32 {
    (match ft {
        file_type::REG => libc::DT_REG,
        file_type::DIR => libc::DT_DIR,
        file_type::CHR => libc::DT_CHR,
        file_type::BLK => libc::DT_BLK,
        file_type::FIFO => libc::DT_FIFO,
        file_type::SOCK => libc::DT_SOCK,
        file_type::LNK => libc::DT_LNK,
        _ => libc::DT_UNKNOWN,
    }) as u32
}

impl RafsFs {
    pub fn new(rafs: Arc<Rafs>, opts: CacheOptions, accounting: Accounting) -> Self {
        RafsFs { rafs, stats: Arc::new(FsIoStats::new(accounting)), opts, dirs: Mutex::new(HashMap::new()), next_handle: AtomicU64::new(1) }
    }

    /// An inode's stat as this mount reports it: owners shifted by the instance's id
    /// mapping, if it has one.
    fn stat(&self, nid: u64) -> io::Result<Stat> {
        let mut s = self.rafs.stat_nid(nid).map_err(errno)?;
        if let Some(m) = &self.rafs.id_map {
            (s.uid, s.gid) = (m.uid.to_host(s.uid), m.gid.to_host(s.gid));
        }
        Ok(s)
    }

    fn entry(&self, nid: u64) -> io::Result<Entry> {
        let s = self.stat(nid)?;
        Ok(Entry {
            inode: nid + 1,
            generation: 0,
            attr: stat64_of(&s, nid + 1),
            attr_flags: 0,
            attr_timeout: self.opts.attr_timeout,
            entry_timeout: self.opts.entry_timeout,
        })
    }

    fn xattrs(&self, inode: u64) -> io::Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let nid = nid_of(inode)?;
        let ino = self.rafs.inode(nid).map_err(errno)?;
        self.rafs.boot.xattrs(nid, &ino).map_err(errno)
    }

    /// Entries from `offset` on, as (entry, next offset): offsets are positions + 1. Mounts
    /// are zero-message opendir, so a listing is decoded per call from where it resumes;
    /// a handle opened by a predecessor that did open directories keeps its own listing.
    fn list(&self, ino: u64, handle: u64, offset: u64, mut add: impl FnMut(&Dirent<'_>, u64) -> io::Result<usize>) -> io::Result<()> {
        let opened = self.dirs.lock().unwrap_or_else(|p| p.into_inner()).get(&handle).cloned();
        // A handle from a previous daemon may equal one of ours for another directory:
        // only trust it for the directory it was opened on.
        if let Some((_, ents)) = opened.filter(|(owner, _)| *owner == ino) {
            for (i, e) in ents.iter().enumerate().skip(offset as usize) {
                if add(&Dirent { nid: e.nid, file_type: e.file_type, name: &e.name }, i as u64 + 1)? == 0 {
                    break; // the reply buffer is full
                }
            }
            return Ok(());
        }
        let mut failed = None;
        let walked = self.rafs.boot.readdir_from(nid_of(ino)?, offset, |e, next| match add(e, next) {
            Ok(0) => false, // the reply buffer is full
            Ok(_) => true,
            Err(err) => {
                failed = Some(err);
                false
            }
        });
        match failed {
            Some(err) => Err(err),
            None => walked.map_err(errno),
        }
    }
}

impl FileSystem for RafsFs {
    type Inode = u64;
    type Handle = u64;

    fn init(&self, capable: FsOptions) -> io::Result<FsOptions> {
        Ok(capable & (FsOptions::ASYNC_READ | FsOptions::PARALLEL_DIROPS | FsOptions::DO_READDIRPLUS | FsOptions::CACHE_SYMLINKS | FsOptions::MAX_PAGES))
    }

    fn lookup(&self, _ctx: &Context, parent: u64, name: &CStr) -> io::Result<Entry> {
        self.stats.op(
            Fop::Lookup,
            parent,
            || {
                let dir = nid_of(parent)?;
                match self.rafs.boot.lookup(dir, name.to_bytes()).map_err(errno)? {
                    Some(e) => self.entry(e.nid),
                    None => Err(io::Error::from_raw_os_error(libc::ENOENT)),
                }
            },
            |_| 0,
        )
    }

    fn getattr(&self, _ctx: &Context, inode: u64, _handle: Option<u64>) -> io::Result<(stat64, Duration)> {
        self.stats.op(
            Fop::Getattr,
            inode,
            || {
                let s = self.stat(nid_of(inode)?)?;
                Ok((stat64_of(&s, inode), self.opts.attr_timeout))
            },
            |_| 0,
        )
    }

    fn readlink(&self, _ctx: &Context, inode: u64) -> io::Result<Vec<u8>> {
        self.stats.op(Fop::Readlink, inode, || self.rafs.boot.readlink(nid_of(inode)?).map_err(errno), |_| 0)
    }

    fn open(&self, _ctx: &Context, inode: u64, flags: u32, _fuse_flags: u32) -> io::Result<(Option<u64>, OpenOptions, Option<u32>)> {
        self.stats.op(
            Fop::Open,
            inode,
            || {
                if flags as i32 & libc::O_ACCMODE != libc::O_RDONLY {
                    return Err(io::Error::from_raw_os_error(libc::EROFS));
                }
                let s = self.rafs.stat_nid(nid_of(inode)?).map_err(errno)?;
                if s.mode & mode::S_IFMT == mode::S_IFDIR {
                    return Err(io::Error::from_raw_os_error(libc::EISDIR));
                }
                let opts = if self.opts.keep_cache { OpenOptions::KEEP_CACHE } else { OpenOptions::empty() };
                Ok((None, opts, None))
            },
            |_| 0,
        )
    }

    fn read(
        &self,
        _ctx: &Context,
        inode: u64,
        _handle: u64,
        w: &mut dyn ZeroCopyWriter,
        size: u32,
        offset: u64,
        _lock_owner: Option<u64>,
        _flags: u32,
    ) -> io::Result<usize> {
        self.stats.op(Fop::Read, inode, || self.rafs.read_nid_to(nid_of(inode)?, offset, size as usize, &mut ReplySink(w)).map_err(errno), |n| *n as u64)
    }

    fn release(&self, _ctx: &Context, _inode: u64, _flags: u32, _handle: u64, _flush: bool, _flock_release: bool, _lock_owner: Option<u64>) -> io::Result<()> {
        self.stats.op(Fop::Release, _inode, || Ok(()), |_| 0)
    }

    fn statfs(&self, _ctx: &Context, _inode: u64) -> io::Result<statvfs64> {
        self.stats.op(
            Fop::Statfs,
            _inode,
            || {
                // SAFETY: statvfs64 is plain data; all-zero is a valid value.
                let mut st: statvfs64 = unsafe { std::mem::zeroed() };
                let bs = self.rafs.boot.block_size();
                st.f_bsize = bs;
                st.f_frsize = bs;
                st.f_blocks = self.rafs.boot.bytes().len() as u64 / bs + self.rafs.boot.blobs.iter().map(|b| b.uncompressed_size.div_ceil(bs)).sum::<u64>();
                st.f_files = self.rafs.boot.sb.inos;
                st.f_namemax = 255;
                Ok(st)
            },
            |_| 0,
        )
    }

    fn getxattr(&self, _ctx: &Context, inode: u64, name: &CStr, size: u32) -> io::Result<GetxattrReply> {
        self.stats.op(
            Fop::Getxattr,
            inode,
            || {
                let value = self
                    .xattrs(inode)?
                    .into_iter()
                    .find(|(k, _)| k.as_slice() == name.to_bytes())
                    .map(|(_, v)| v)
                    .ok_or_else(|| io::Error::from_raw_os_error(libc::ENODATA))?;
                sized_reply(value, size, GetxattrReply::Count, GetxattrReply::Value)
            },
            |_| 0,
        )
    }

    fn listxattr(&self, _ctx: &Context, inode: u64, size: u32) -> io::Result<ListxattrReply> {
        self.stats.op(
            Fop::Listxattr,
            inode,
            || {
                let mut names = Vec::new();
                for (k, _) in self.xattrs(inode)? {
                    names.extend_from_slice(&k);
                    names.push(0);
                }
                sized_reply(names, size, ListxattrReply::Count, ListxattrReply::Names)
            },
            |_| 0,
        )
    }

    fn opendir(&self, _ctx: &Context, inode: u64, _flags: u32) -> io::Result<(Option<u64>, OpenOptions)> {
        self.stats.op(
            Fop::Opendir,
            inode,
            || {
                let ents = self.rafs.boot.readdir(nid_of(inode)?).map_err(errno)?;
                let h = self.next_handle.fetch_add(1, Relaxed);
                self.dirs.lock().unwrap_or_else(|p| p.into_inner()).insert(h, (inode, Arc::new(ents)));
                let opts = if self.opts.keep_cache { OpenOptions::CACHE_DIR | OpenOptions::KEEP_CACHE } else { OpenOptions::empty() };
                Ok((Some(h), opts))
            },
            |_| 0,
        )
    }

    fn readdir(
        &self,
        _ctx: &Context,
        inode: u64,
        handle: u64,
        _size: u32,
        offset: u64,
        add_entry: &mut dyn FnMut(DirEntry) -> io::Result<usize>,
    ) -> io::Result<()> {
        self.stats.op(
            Fop::Readdir,
            inode,
            || self.list(inode, handle, offset, |e, next| add_entry(DirEntry { ino: e.nid + 1, offset: next, type_: dt_of(e.file_type), name: e.name })),
            |_| 0,
        )
    }

    fn readdirplus(
        &self,
        _ctx: &Context,
        inode: u64,
        handle: u64,
        _size: u32,
        offset: u64,
        add_entry: &mut dyn FnMut(DirEntry, Entry) -> io::Result<usize>,
    ) -> io::Result<()> {
        self.stats.op(
            Fop::Readdirplus,
            inode,
            || {
                self.list(inode, handle, offset, |e, next| {
                    let entry = self.entry(e.nid)?;
                    add_entry(DirEntry { ino: e.nid + 1, offset: next, type_: dt_of(e.file_type), name: e.name }, entry)
                })
            },
            |_| 0,
        )
    }

    fn releasedir(&self, _ctx: &Context, inode: u64, _flags: u32, handle: u64) -> io::Result<()> {
        let mut dirs = self.dirs.lock().unwrap_or_else(|p| p.into_inner());
        if dirs.get(&handle).is_some_and(|(owner, _)| *owner == inode) {
            dirs.remove(&handle);
        }
        Ok(())
    }

    fn access(&self, ctx: &Context, inode: u64, mask: u32) -> io::Result<()> {
        self.stats.op(
            Fop::Access,
            inode,
            || {
                let s = self.stat(nid_of(inode)?)?;
                if mask as i32 & libc::W_OK != 0 {
                    return Err(io::Error::from_raw_os_error(libc::EROFS));
                }
                if ctx.uid == 0 || mask as i32 == libc::F_OK {
                    return Ok(());
                }
                let bits = if ctx.uid == s.uid {
                    (s.mode >> 6) & 7
                } else if ctx.gid == s.gid {
                    (s.mode >> 3) & 7
                } else {
                    s.mode & 7
                };
                if mask & !bits & 7 != 0 {
                    return Err(io::Error::from_raw_os_error(libc::EACCES));
                }
                Ok(())
            },
            |_| 0,
        )
    }
}

impl BackendFileSystem for RafsFs {
    fn mount(&self) -> io::Result<(Entry, u64)> {
        let root = self.rafs.boot.root_nid();
        // The largest inode number: nids are bounded by the metadata area's size.
        let max_ino = self.rafs.boot.bytes().len() as u64 / 32 + 1;
        Ok((self.entry(root)?, max_ino))
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}

/// A FUSE READ's reply as a `ReadSink`: ranges already in the blob cache are read from its
/// file straight into the reply buffer (one copy, as nydusd does), not through a decoded
/// buffer first.
struct ReplySink<'a>(&'a mut dyn ZeroCopyWriter);

impl ReadSink for ReplySink<'_> {
    fn bytes(&mut self, piece: &[u8]) -> crate::error::Result<()> {
        self.0.write_all(piece).map_err(|e| Error::io("write FUSE reply", e))
    }

    fn cached(&mut self, file: &File, offset: u64, len: usize) -> crate::error::Result<()> {
        // SAFETY: a second File over the cache's open fd, never dropped (ManuallyDrop), so it
        // never closes the fd; `file` is borrowed for this whole call, so the fd stays open.
        let mut alias = ManuallyDrop::new(unsafe { File::from_raw_fd(file.as_raw_fd()) });
        self.0.write_all_from(&mut *alias, len, offset).map_err(|e| Error::io("read cache data into the FUSE reply", e))
    }
}
