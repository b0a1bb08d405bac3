//! `nydus-hybrid unpack`: an image back to a tar stream or a directory tree. Names come from
//! the image, so each component is re-checked before use, and files are created with
//! O_EXCL|O_NOFOLLOW inside a fresh directory: nothing is written outside the output.

use crate::error::{Error, IoContext, Result};
use crate::layout::dirent::check_name;
use crate::layout::{file_type, mode};
use crate::reader::{stat_of, Rafs, Stat};
use crate::walk::{join, walk};
use std::collections::HashMap;
use std::ffi::CString;
use std::io::{Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct UnpackReport {
    pub entries: u64,
    pub bytes: u64,
    /// Sockets cannot be stored in a tar stream; they are counted and left out.
    pub skipped_sockets: u64,
}

/// A directory's path, attributes and xattrs, applied after its contents are written.
type DirMeta = (PathBuf, Stat, Vec<(Vec<u8>, Vec<u8>)>);

/// Streams a regular file chunk by chunk.
struct FileReader<'a> {
    rafs: &'a Rafs,
    nid: u64,
    pos: u64,
    size: u64,
    buf: Vec<u8>,
    buf_pos: usize,
}

impl Read for FileReader<'_> {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        if self.buf_pos >= self.buf.len() {
            if self.pos >= self.size {
                return Ok(0);
            }
            let cs = self.rafs.boot.chunk_size();
            self.buf = self.rafs.read_nid(self.nid, self.pos, cs as usize).map_err(std::io::Error::other)?;
            self.buf_pos = 0;
            self.pos += self.buf.len() as u64;
            if self.buf.is_empty() {
                return Ok(0);
            }
        }
        let n = out.len().min(self.buf.len() - self.buf_pos);
        out[..n].copy_from_slice(&self.buf[self.buf_pos..self.buf_pos + n]);
        self.buf_pos += n;
        Ok(n)
    }
}

fn tar_path(path: &[Vec<u8>], dir: bool) -> Vec<u8> {
    let mut p = path.join(&b'/');
    if dir {
        p.push(b'/');
    }
    if p.is_empty() || p == b"/" {
        p = b"./".to_vec();
    }
    p
}

/// A PAX decimal time for (seconds, nanoseconds): (-2, 0.5 s) is "-1.500000000".
fn pax_time(secs: i64, nsec: u32) -> String {
    let nsec = nsec.min(999_999_999); // a corrupt inode may hold more
    if secs < 0 && nsec > 0 {
        format!("-{}.{:09}", -(secs + 1), 1_000_000_000 - nsec)
    } else {
        format!("{secs}.{nsec:09}")
    }
}

fn header_for(st: &Stat, kind: tar::EntryType) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(st.mode & 0o7777);
    h.set_uid(st.uid as u64);
    h.set_gid(st.gid as u64);
    h.set_mtime(st.mtime.max(0) as u64);
    h.set_size(0);
    h
}

/// Write the image as a tar stream (GNU format; xattrs as PAX `SCHILY.xattr.*` records).
pub fn unpack_tar(rafs: &Rafs, out: &mut dyn Write) -> Result<UnpackReport> {
    let mut rep = UnpackReport::default();
    let mut builder = tar::Builder::new(out);
    let mut first_path: HashMap<u64, Vec<u8>> = HashMap::new();
    let boot = &rafs.boot;
    let io = |e: std::io::Error| Error::io("write tar", e);
    walk(boot, |v| {
        let ino = boot.inode(v.nid)?;
        let st = stat_of(v.nid, &ino);
        if st.mode & mode::S_IFMT == mode::S_IFSOCK {
            // Before any PAX record: an orphan record would apply to the next member.
            rep.skipped_sockets += 1;
            return Ok(());
        }
        let xattrs = boot.xattrs(v.nid, &ino)?;
        let mut recs: Vec<(String, Vec<u8>)> = Vec::new();
        for (k, val) in &xattrs {
            // PAX keys are UTF-8; a raw name cannot be carried faithfully, so refuse it.
            let k = std::str::from_utf8(k).map_err(|_| {
                Error::Unsupported(format!(
                    "{}: xattr name {:?} is not UTF-8 and cannot be stored in tar",
                    String::from_utf8_lossy(&join(&v.path)),
                    String::from_utf8_lossy(k)
                ))
            })?;
            recs.push((format!("SCHILY.xattr.{k}"), val.clone()));
        }
        if st.mtime < 0 || st.mtime_nsec != 0 {
            // ustar holds whole non-negative seconds; PAX holds the exact time.
            recs.push(("mtime".into(), pax_time(st.mtime, st.mtime_nsec).into_bytes()));
        }
        if !recs.is_empty() {
            builder.append_pax_extensions(recs.iter().map(|(k, v)| (k.as_str(), v.as_slice()))).map_err(io)?;
        }
        rep.entries += 1;
        let path = tar_path(&v.path, v.file_type == file_type::DIR);
        let path = std::ffi::OsStr::from_bytes(&path);
        match st.mode & mode::S_IFMT {
            mode::S_IFDIR => {
                let mut h = header_for(&st, tar::EntryType::Directory);
                builder.append_data(&mut h, path, std::io::empty()).map_err(io)?;
            }
            mode::S_IFREG => {
                if st.nlink > 1 {
                    if let Some(first) = first_path.get(&v.nid) {
                        let mut h = header_for(&st, tar::EntryType::Link);
                        builder.append_link(&mut h, path, std::ffi::OsStr::from_bytes(first)).map_err(io)?;
                        return Ok(());
                    }
                    first_path.insert(v.nid, tar_path(&v.path, false));
                }
                let mut h = header_for(&st, tar::EntryType::Regular);
                h.set_size(st.size);
                let r = FileReader { rafs, nid: v.nid, pos: 0, size: st.size, buf: Vec::new(), buf_pos: 0 };
                builder.append_data(&mut h, path, r).map_err(io)?;
                rep.bytes += st.size;
            }
            mode::S_IFLNK => {
                let mut h = header_for(&st, tar::EntryType::Symlink);
                let target = boot.readlink(v.nid)?;
                builder.append_link(&mut h, path, std::ffi::OsStr::from_bytes(&target)).map_err(io)?;
            }
            mode::S_IFCHR | mode::S_IFBLK => {
                let kind = if st.mode & mode::S_IFMT == mode::S_IFCHR { tar::EntryType::Char } else { tar::EntryType::Block };
                let mut h = header_for(&st, kind);
                h.set_device_major(st.rdev_major).map_err(io)?;
                h.set_device_minor(st.rdev_minor).map_err(io)?;
                builder.append_data(&mut h, path, std::io::empty()).map_err(io)?;
            }
            mode::S_IFIFO => {
                let mut h = header_for(&st, tar::EntryType::Fifo);
                builder.append_data(&mut h, path, std::io::empty()).map_err(io)?;
            }
            other => return Err(Error::corrupt(format!("{}: unknown file type {other:o}", String::from_utf8_lossy(&join(&v.path))))),
        }
        Ok(())
    })?;
    builder.finish().map_err(io)?;
    Ok(rep)
}

fn cpath(p: &Path) -> Result<CString> {
    CString::new(p.as_os_str().as_bytes()).map_err(|_| Error::invalid("path contains NUL"))
}

fn errno(what: String) -> Error {
    Error::io(what, std::io::Error::last_os_error())
}

/// Owner, mode, xattrs and times, without following symlinks. The order matters: chown
/// clears setuid bits and file capabilities, so it comes first and xattrs after chmod.
fn apply_meta(path: &Path, st: &Stat, xattrs: &[(Vec<u8>, Vec<u8>)], is_link: bool) -> Result<()> {
    let c = cpath(path)?;
    // SAFETY: c is a valid NUL-terminated path; the libc calls do not retain it.
    unsafe {
        if libc::lchown(c.as_ptr(), st.uid, st.gid) != 0 {
            return Err(errno(format!("chown {}", path.display())));
        }
    }
    if !is_link {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(st.mode & 0o7777)).ctx(|| format!("chmod {}", path.display()))?;
    }
    for (k, v) in xattrs {
        let name = std::ffi::OsStr::from_bytes(k);
        xattr::set(path, name, v).ctx(|| format!("set xattr {} on {}", String::from_utf8_lossy(k), path.display()))?;
    }
    // SAFETY: as above.
    unsafe {
        let t = libc::timespec { tv_sec: st.mtime as libc::time_t, tv_nsec: st.mtime_nsec as libc::c_long };
        let times = [t, t];
        if libc::utimensat(libc::AT_FDCWD, c.as_ptr(), times.as_ptr(), libc::AT_SYMLINK_NOFOLLOW) != 0 {
            return Err(errno(format!("set times of {}", path.display())));
        }
    }
    Ok(())
}

/// Extract the image into `out`, which must not exist or be an empty directory.
pub fn unpack_dir(rafs: &Rafs, out: &Path) -> Result<UnpackReport> {
    if out.exists() {
        let mut it = std::fs::read_dir(out).ctx(|| format!("read {}", out.display()))?;
        if it.next().is_some() {
            return Err(Error::invalid(format!("output directory {} is not empty", out.display())));
        }
    } else {
        std::fs::create_dir(out).ctx(|| format!("create {}", out.display()))?;
    }
    let mut rep = UnpackReport::default();
    let mut first_path: HashMap<u64, PathBuf> = HashMap::new();
    let mut dirs: Vec<DirMeta> = Vec::new();
    let boot = &rafs.boot;
    walk(boot, |v| {
        let mut path = out.to_path_buf();
        for c in &v.path {
            check_name(c, "image entry")?;
            path.push(std::ffi::OsStr::from_bytes(c));
        }
        let ino = boot.inode(v.nid)?;
        let st = stat_of(v.nid, &ino);
        let xattrs = boot.xattrs(v.nid, &ino)?;
        rep.entries += 1;
        let c = cpath(&path)?;
        match st.mode & mode::S_IFMT {
            mode::S_IFDIR => {
                if !v.path.is_empty() {
                    std::fs::create_dir(&path).ctx(|| format!("create {}", path.display()))?;
                }
                dirs.push((path, st, xattrs));
                return Ok(());
            }
            mode::S_IFREG => {
                if let Some(first) = first_path.get(&v.nid) {
                    std::fs::hard_link(first, &path).ctx(|| format!("link {}", path.display()))?;
                    return Ok(());
                }
                let mut f = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .custom_flags(libc::O_NOFOLLOW)
                    .open(&path)
                    .ctx(|| format!("create {}", path.display()))?;
                let mut r = FileReader { rafs, nid: v.nid, pos: 0, size: st.size, buf: Vec::new(), buf_pos: 0 };
                rep.bytes += std::io::copy(&mut r, &mut f).ctx(|| format!("write {}", path.display()))?;
                if st.nlink > 1 {
                    first_path.insert(v.nid, path.clone());
                }
            }
            mode::S_IFLNK => {
                let target = boot.readlink(v.nid)?;
                std::os::unix::fs::symlink(std::ffi::OsStr::from_bytes(&target), &path).ctx(|| format!("symlink {}", path.display()))?;
            }
            kind => {
                let dev = libc::makedev(st.rdev_major, st.rdev_minor);
                // SAFETY: valid C path; mknod does not retain it.
                if unsafe { libc::mknod(c.as_ptr(), kind | (st.mode & 0o7777), dev) } != 0 {
                    return Err(errno(format!("mknod {}", path.display())));
                }
            }
        }
        apply_meta(&path, &st, &xattrs, st.mode & mode::S_IFMT == mode::S_IFLNK)
    })?;
    // Directories last and deepest first, so creating children does not touch their times.
    for (path, st, xattrs) in dirs.iter().rev() {
        apply_meta(path, st, xattrs, false)?;
    }
    Ok(rep)
}
