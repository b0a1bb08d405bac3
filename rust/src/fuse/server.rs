//! The FUSE server: one `/dev/fuse` session served by N worker threads (each on its own
//! cloned channel), a `Vfs` that holds one RAFS instance at `/` (dedicated mode) or many
//! under `/<id>` (shared mode), mounting without fusermount, dead-mount cleanup, and the
//! session fd plus `Vfs` state that a successor process needs to resume serving.

use super::fs::{CacheOptions, RafsFs};
use super::metrics::{Accounting, FsIoStats};
use crate::error::{Error, Result};
use crate::reader::Rafs;
use fuse_backend_rs::api::server::Server;
use fuse_backend_rs::api::{Vfs, VfsOptions};
use fuse_backend_rs::transport::FuseSession;
use std::fs::File;
use std::os::fd::{AsRawFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

pub struct FuseServer {
    vfs: Arc<Vfs>,
    server: Arc<Server<Arc<Vfs>>>,
    session: Mutex<FuseSession>,
    workers: Mutex<Vec<JoinHandle<()>>>,
    pub mountpoint: PathBuf,
    /// Serving a mount handed over by a predecessor (see `detached_session`).
    resumed: bool,
}

fn session_err(what: &str, e: impl std::fmt::Display) -> Error {
    Error::backend(format!("fuse {what}: {e}"))
}

/// If `path` is a FUSE mount whose daemon died, the kernel answers ENOTCONN for it: detach
/// it (lazily, so open files elsewhere do not block us) so the path can be mounted again.
pub fn clear_dead_mount(path: &Path) -> Result<bool> {
    match std::fs::metadata(path) {
        Err(e) if matches!(e.raw_os_error(), Some(libc::ENOTCONN) | Some(libc::ECONNABORTED)) => {
            let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).map_err(|_| Error::invalid("mountpoint has a NUL byte"))?;
            // SAFETY: umount2 with a valid C string.
            if unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) } != 0 {
                return Err(Error::io(format!("detach dead mount {}", path.display()), std::io::Error::last_os_error()));
            }
            Ok(true)
        }
        _ => Ok(false),
    }
}

/// Which opens reach the daemon. `open`: OPEN and RELEASE (an image that drops its page
/// cache per open needs them). `opendir`: OPENDIR and RELEASEDIR, which a shared mount
/// needs, since its root's listing changes as instances come and go; without them the
/// kernel caches every listing (FOPEN_CACHE_DIR), which one immutable image at the root
/// allows.
fn vfs_options(open: bool, opendir: bool) -> VfsOptions {
    use fuse_backend_rs::api::filesystem::FsOptions;
    let defaults = VfsOptions::default();
    VfsOptions {
        // READDIRPLUS always (not AUTO): attributes come with every listing batch, so a
        // cold `find` + `stat` does not pay one LOOKUP per entry.
        out_opts: defaults.out_opts - FsOptions::READDIRPLUS_AUTO - FsOptions::WRITEBACK_CACHE,
        // Read-only and immutable: no writeback cache. Zero-message opens, as nydusd: the
        // first OPEN is answered ENOSYS and the kernel then sends no OPEN or RELEASE at all
        // (half the requests of a `tar` of a rootfs) and keeps the page cache
        // (FOPEN_KEEP_CACHE is its default then); the mount is MS_RDONLY, so a write open
        // still fails with EROFS. Zero-message opendirs too where allowed (OPENDIR and
        // RELEASEDIR were half the requests of a cold `find`): each READDIR(PLUS) then
        // resumes the listing at its offset, skipping whole blocks by their entry counts.
        no_writeback: true,
        no_open: !open,
        no_opendir: !opendir,
        ..defaults
    }
}

impl FuseServer {
    fn with_session(mountpoint: &Path, session: FuseSession, open: bool, opendir: bool) -> Self {
        let mut vfs = Vfs::new(vfs_options(open, opendir));
        // A detached image's `/<id>` directory disappears, as with nydusd's FUSE umount.
        vfs.set_remove_pseudo_root();
        let vfs = Arc::new(vfs);
        FuseServer {
            server: Arc::new(Server::new(vfs.clone())),
            vfs,
            session: Mutex::new(session),
            workers: Mutex::new(Vec::new()),
            mountpoint: mountpoint.to_path_buf(),
            resumed: false,
        }
    }

    /// Mount a new, empty FUSE filesystem at `mountpoint` (as root: `mount(2)` directly).
    /// `open`, `opendir`: which opens the kernel sends (see `vfs_options`).
    pub fn mount(mountpoint: &Path, fsname: &str, open: bool, opendir: bool) -> Result<Self> {
        clear_dead_mount(mountpoint)?;
        let mut session = FuseSession::new(mountpoint, fsname, "nydus-hybrid", true).map_err(|e| session_err("session", e))?;
        session.set_allow_other(true);
        session.mount().map_err(|e| session_err(&format!("mount {}", mountpoint.display()), e))?;
        let server = Self::with_session(mountpoint, session, open, opendir);
        Ok(server)
    }

    /// Resume a mount from a FUSE fd handed over by a previous daemon, with the `Vfs` state
    /// it saved (`vfs_state`), so no new INIT is expected from the kernel.
    pub fn resume(mountpoint: &Path, fuse_fd: File, vfs_state: &[u8]) -> Result<Self> {
        let mut session = detached_session(mountpoint)?;
        session.set_fuse_file(fuse_fd);
        // The predecessor's saved Vfs options (its open mode) replace these on restore.
        let mut s = Self::with_session(mountpoint, session, false, true);
        s.resumed = true;
        let mut buf = vfs_state.to_vec();
        s.vfs.restore_from_bytes(&mut buf).map_err(|e| Error::corrupt(format!("saved FUSE state: {e:?}")))?;
        Ok(s)
    }

    /// The negotiated FUSE parameters and pseudo-directory layout, for `resume`.
    pub fn save_state(&self) -> Result<Vec<u8>> {
        self.vfs.save_to_bytes().map_err(|e| session_err("save state", format!("{e:?}")))
    }

    /// Put an image at `path` (`/` for dedicated mode, `/<id>` for shared mode). Returns its
    /// index, which fixes the kernel-visible inode numbers of its files.
    pub fn attach(&self, path: &str, rafs: Arc<Rafs>, opts: CacheOptions, accounting: Accounting) -> Result<u8> {
        let fs = Box::new(RafsFs::new(rafs, opts, accounting));
        self.vfs.mount(fs, path).map_err(|e| session_err(&format!("attach {path}"), format!("{e:?}")))
    }

    /// Put an image back at the index it had before an upgrade, so inode numbers the kernel
    /// already holds stay valid.
    pub fn reattach(&self, path: &str, index: u8, rafs: Arc<Rafs>, opts: CacheOptions, accounting: Accounting) -> Result<()> {
        let fs = Box::new(RafsFs::new(rafs, opts, accounting));
        self.vfs.restore_mount(fs, index, path).map_err(|e| session_err(&format!("reattach {path}"), e))
    }

    /// Remove the image at `path`, and tell the kernel to forget its directory entry so the
    /// path vanishes at once instead of after the entry timeout.
    pub fn detach(&self, path: &str) -> Result<()> {
        let (_inode, parent) = self.vfs.umount(path).map_err(|e| match e {
            fuse_backend_rs::api::vfs::VfsError::NotFound(_) => Error::NotFound(format!("no image mounted at {path}")),
            e => session_err(&format!("detach {path}"), format!("{e:?}")),
        })?;
        let name = path.trim_end_matches('/').rsplit('/').next().unwrap_or_default();
        if let Ok(cname) = std::ffi::CString::new(name) {
            let mut session = self.session.lock().unwrap_or_else(|p| p.into_inner());
            let server = self.server.clone();
            // Best effort: ENOENT (the kernel had no such entry cached) is fine.
            session.with_writer(|w| {
                let _ = server.notify_inval_entry(w, parent, &cname);
            });
        }
        Ok(())
    }

    /// FUSE operation counters (spec §8.1) of the image at `path`.
    pub fn fs_stats(&self, path: &str) -> Option<Arc<FsIoStats>> {
        let fs = self.vfs.get_rootfs(path).ok()??;
        fs.as_any().downcast_ref::<RafsFs>().map(|f| f.stats.clone())
    }

    /// The image attached at `path`, if any.
    pub fn rafs_at(&self, path: &str) -> Option<Arc<Rafs>> {
        let fs = self.vfs.get_rootfs(path).ok()??;
        fs.as_any().downcast_ref::<RafsFs>().map(|f| f.rafs.clone())
    }

    /// Serve requests on `threads` workers until `stop`.
    pub fn start(&self, threads: usize) -> Result<()> {
        // Readahead stays at the kernel's 128 KiB, as with nydusd. Wider windows were measured
        // (dd, page cache dropped, 128 KiB / 512 KiB / 1 MiB): a 256 MiB file gains (730 /
        // 851 / 959 MiB/s from an empty blob cache, 1,441 / 1,672 / 1,649 from a full one),
        // but a 6.5 MiB file from a full cache loses about a quarter at 512 KiB, since fewer,
        // larger requests keep fewer reads of the cache file in flight; most image files are
        // small, and the nydusd side-by-side rows follow the small-file case.
        let session = self.session.lock().unwrap_or_else(|p| p.into_inner());
        let mut workers = self.workers.lock().unwrap_or_else(|p| p.into_inner());
        for i in 0..threads.max(1) {
            let mut channel = session.new_channel().map_err(|e| session_err("channel", e))?;
            let server = self.server.clone();
            let worker = std::thread::Builder::new()
                .name(format!("fuse-{i}"))
                .spawn(move || {
                    // Ends when woken by stop(), or when the kernel ended the session (unmounted).
                    while let Ok(Some((reader, writer))) = channel.get_request() {
                        // A failed request has been answered with an errno already; nothing
                        // here may stop the worker.
                        let _ = server.handle_message(reader, writer.into(), None, None);
                    }
                })
                .map_err(|e| Error::io("spawn fuse worker", e))?;
            workers.push(worker);
        }
        Ok(())
    }

    /// Let go of the session without unmounting (a takeover that failed half-way: the
    /// mount belongs to the daemon still serving it). Our duplicate of the fd is closed.
    pub fn abandon(&self) -> Result<()> {
        let fresh = detached_session(&self.mountpoint)?;
        let mut session = self.session.lock().unwrap_or_else(|p| p.into_inner());
        let old = std::mem::replace(&mut *session, fresh);
        if let Some(f) = old.get_fuse_file() {
            // SAFETY: closing the fd the forgotten session owned; nothing else uses it.
            unsafe { libc::close(f.as_raw_fd()) };
        }
        // Dropping it would unmount its path, which for a resumed session is not ours to
        // unmount: forget it instead (a few bytes leak).
        std::mem::forget(old);
        Ok(())
    }

    /// Whether the kernel's FUSE INIT has been answered (only then is there a state worth
    /// handing over: the negotiated options are part of it).
    pub fn initialized(&self) -> bool {
        self.vfs.initialized()
    }

    /// The `/dev/fuse` descriptor of this session, to hand to a successor.
    pub fn fuse_fd(&self) -> Option<RawFd> {
        self.session.lock().unwrap_or_else(|p| p.into_inner()).get_fuse_file().map(|f| f.as_raw_fd())
    }

    /// Stop the workers; with `umount`, also unmount (SIGTERM). Without, the mount stays
    /// and the kernel queues requests until a successor resumes the fd.
    pub fn stop(&self, umount: bool) -> Result<()> {
        let mut session = self.session.lock().unwrap_or_else(|p| p.into_inner());
        session.wake().map_err(|e| session_err("wake workers", e))?;
        for w in self.workers.lock().unwrap_or_else(|p| p.into_inner()).drain(..) {
            let _ = w.join();
        }
        if umount && self.resumed {
            drop(session);
            self.abandon()?; // close our fd first: a synchronous umount could wait on us
            let c = std::ffi::CString::new(self.mountpoint.as_os_str().as_encoded_bytes()).map_err(|_| Error::invalid("mountpoint has a NUL byte"))?;
            // SAFETY: umount2 with a valid C string.
            if unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) } != 0 {
                return Err(Error::io(format!("umount {}", self.mountpoint.display()), std::io::Error::last_os_error()));
            }
        } else if umount {
            session.umount().map_err(|e| session_err(&format!("umount {}", self.mountpoint.display()), e))?;
        }
        Ok(())
    }
}

/// A session for a mount that already exists (a takeover). `FuseSession::new` stats its
/// path, and a stat of the mount itself is a FUSE request nobody can answer while we take
/// over (a deadlock once the root's attributes leave the kernel's cache), so the session is
/// made on the parent directory; `FuseServer` never lets it unmount that path.
fn detached_session(mountpoint: &Path) -> Result<FuseSession> {
    let parent = mountpoint.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("/"));
    FuseSession::new(parent, "rafs", "nydus-hybrid", true).map_err(|e| session_err("session", e))
}

impl Drop for FuseServer {
    fn drop(&mut self) {
        // A resumed session's own Drop would unmount the parent directory it was made on.
        if self.resumed {
            let _ = self.abandon();
        }
    }
}
