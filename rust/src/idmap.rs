//! User-namespace id mapping of a FUSE mount (the snapshotter's `remap-ids`): a container
//! in a user namespace whose root is host uid H sees its image's files owned by its own ids
//! only if the mount reports owner `H + id`. The daemon does that shift in its replies, as
//! nydus-snapshotter asks nydusd to through `id_mapping` (which nydusd ignores).

use crate::error::{Error, Result};

/// The kernel's overflow id: what an id outside the mapping is reported as.
pub const OVERFLOW_ID: u32 = 65534;

/// Ids `inside .. inside + size` of the image appear as `host .. host + size`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IdRange {
    pub inside: u32,
    pub host: u32,
    pub size: u32,
}

impl IdRange {
    /// `inside:host:size`, as containerd's `containerd.io/snapshot/uidmapping` label.
    pub fn parse(text: &str, what: &str) -> Result<IdRange> {
        let bad = |why: &str| Error::config(format!("{what}: {text:?} {why}"));
        let parts: Vec<&str> = text.split(':').collect();
        let [inside, host, size] = parts[..] else { return Err(bad("is not inside:host:size")) };
        let num = |s: &str| s.parse::<u32>().map_err(|_| bad("has a part that is not a 32-bit unsigned number"));
        let r = IdRange { inside: num(inside)?, host: num(host)?, size: num(size)? };
        if r.size == 0 {
            return Err(bad("maps no ids (size 0)"));
        }
        if r.inside.checked_add(r.size - 1).is_none() || r.host.checked_add(r.size - 1).is_none() {
            return Err(bad("runs past the largest 32-bit id"));
        }
        Ok(r)
    }

    pub fn to_host(&self, id: u32) -> u32 {
        match id.checked_sub(self.inside) {
            Some(k) if k < self.size => self.host + k,
            _ => OVERFLOW_ID,
        }
    }

    pub fn text(&self) -> String {
        format!("{}:{}:{}", self.inside, self.host, self.size)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IdMap {
    pub uid: IdRange,
    pub gid: IdRange,
}

/// Bind `source` at `target` as an idmapped mount (Linux 5.12+): a file owned by `id` on
/// disk is seen owned by `map.uid.to_host(id)` through the mount, which is how an overlay's
/// lower layers are shifted for a container in a user namespace (containerd 1.6 does not do
/// it for us). `readonly` also makes the mount read-only.
pub fn idmapped_bind(source: &std::path::Path, target: &std::path::Path, map: &IdMap, readonly: bool) -> Result<()> {
    use std::ffi::CString;
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    use std::os::unix::ffi::OsStrExt;
    // The mount API's flags (linux/mount.h); the libc crate lacks some of them.
    const OPEN_TREE_CLONE: libc::c_uint = 1;
    const MOUNT_ATTR_RDONLY: u64 = 0x1;
    const MOUNT_ATTR_IDMAP: u64 = 0x0010_0000;
    const MOVE_MOUNT_F_EMPTY_PATH: libc::c_uint = 0x4;
    #[repr(C)]
    struct MountAttr {
        attr_set: u64,
        attr_clr: u64,
        propagation: u64,
        userns_fd: u64,
    }
    let os_err = |what: &str, path: &std::path::Path| Error::io(format!("{what} {}", path.display()), std::io::Error::last_os_error());
    let c = |p: &std::path::Path| CString::new(p.as_os_str().as_bytes()).map_err(|_| Error::invalid(format!("{}: contains a NUL byte", p.display())));
    let (src, dst) = (c(source)?, c(target)?);
    let userns = user_namespace(map)?;
    // SAFETY: plain syscalls on NUL-terminated paths and a stack struct of the kernel's layout.
    unsafe {
        let tree = libc::syscall(libc::SYS_open_tree, libc::AT_FDCWD, src.as_ptr(), OPEN_TREE_CLONE | libc::O_CLOEXEC as libc::c_uint);
        if tree < 0 {
            return Err(os_err("open_tree", source));
        }
        let tree = OwnedFd::from_raw_fd(tree as i32);
        let attr = MountAttr {
            attr_set: MOUNT_ATTR_IDMAP | if readonly { MOUNT_ATTR_RDONLY } else { 0 },
            attr_clr: 0,
            propagation: 0,
            userns_fd: userns.as_raw_fd() as u64,
        };
        let empty = c"";
        if libc::syscall(
            libc::SYS_mount_setattr,
            tree.as_raw_fd(),
            empty.as_ptr(),
            libc::AT_EMPTY_PATH,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        ) != 0
        {
            return Err(os_err("idmapping the mount of", source));
        }
        if libc::syscall(libc::SYS_move_mount, tree.as_raw_fd(), empty.as_ptr(), libc::AT_FDCWD, dst.as_ptr(), MOVE_MOUNT_F_EMPTY_PATH) != 0 {
            return Err(os_err("move_mount to", target));
        }
    }
    Ok(())
}

/// A user namespace with `map` as its uid and gid maps, held by an fd: a child process is
/// cloned into a new one, the parent writes its maps and opens it, and the child exits.
fn user_namespace(map: &IdMap) -> Result<std::os::fd::OwnedFd> {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    let mut fds = [0; 2];
    // SAFETY: pipe2 fills two fds we then own.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(Error::io("pipe2", std::io::Error::last_os_error()));
    }
    // SAFETY: both fds are fresh and ours.
    let (done_r, done_w) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    // The raw clone, not fork(3): a fork runs the process's atfork handlers, and gRPC's
    // restart its threads in the child, where a threaded process may not make a user
    // namespace. The child is born in the new namespace and runs only raw syscalls.
    // SAFETY: with no new stack the child continues on a copy of ours, like fork.
    let pid = unsafe { libc::syscall(libc::SYS_clone, (libc::CLONE_NEWUSER | libc::SIGCHLD) as libc::c_ulong, 0usize, 0usize, 0usize, 0usize) };
    if pid < 0 {
        return Err(Error::io("clone(CLONE_NEWUSER)", std::io::Error::last_os_error()));
    }
    if pid == 0 {
        // SAFETY: the child waits for the parent to close its end, then exits at once.
        unsafe {
            libc::close(done_w.as_raw_fd());
            let mut b = 0u8;
            libc::read(done_r.as_raw_fd(), &mut b as *mut u8 as *mut libc::c_void, 1);
            libc::syscall(libc::SYS_exit, 0);
        }
    }
    let pid = pid as libc::pid_t;
    drop(done_r);
    let line = |r: &IdRange| format!("{} {} {}\n", r.inside, r.host, r.size);
    let proc = format!("/proc/{pid}");
    let result = std::fs::write(format!("{proc}/uid_map"), line(&map.uid))
        .and_then(|_| std::fs::write(format!("{proc}/gid_map"), line(&map.gid)))
        .and_then(|_| std::fs::File::open(format!("{proc}/ns/user")))
        .map(OwnedFd::from)
        .map_err(|e| Error::io(format!("writing the id maps of a user namespace ({} / {})", map.uid.text(), map.gid.text()), e));
    drop(done_w); // the child's read returns: it exits
    let mut status = 0;
    // SAFETY: reaping the child we cloned.
    unsafe { libc::waitpid(pid, &mut status, 0) };
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn shifts_ids_inside_the_range_and_overflows_the_rest() {
        let r = IdRange::parse("0:100000:65536", "uid").unwrap();
        assert_eq!((r.to_host(0), r.to_host(1000), r.to_host(65535)), (100000, 101000, 165535));
        assert_eq!(r.to_host(65536), OVERFLOW_ID);
        let r = IdRange::parse("1000:5000:10", "uid").unwrap();
        assert_eq!((r.to_host(999), r.to_host(1000), r.to_host(1009), r.to_host(1010)), (OVERFLOW_ID, 5000, 5009, OVERFLOW_ID));
    }

    #[test]
    fn rejects_bad_mappings_with_their_text() {
        for bad in ["", "0:1", "0:1:2:3", "a:1:2", "-1:0:5", "0:0:0", "0:4294967295:2", "4294967295:0:2", "0:1:4294967296"] {
            let e = IdRange::parse(bad, "uidmapping").unwrap_err().to_string();
            assert!(e.contains("uidmapping"), "{bad}: {e}");
        }
        assert!(IdRange::parse("0:4294967295:1", "uid").is_ok());
    }

    proptest! {
        #[test]
        fn parse_never_panics_and_round_trips(s in "[0-9:a-z-]{0,24}") {
            if let Ok(r) = IdRange::parse(&s, "uid") {
                prop_assert_eq!(IdRange::parse(&r.text(), "uid").unwrap(), r);
            }
        }

        #[test]
        fn mapping_stays_in_the_host_range(inside in 0u32..1 << 20, host in 0u32..1 << 30, size in 1u32..1 << 20, id: u32) {
            let r = IdRange { inside, host, size };
            let h = r.to_host(id);
            prop_assert!(h == OVERFLOW_ID || (host..=host + (size - 1)).contains(&h));
        }
    }
}
