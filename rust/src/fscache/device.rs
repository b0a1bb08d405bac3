//! The device seam. `Cachefiles` drives the kernel's `/dev/cachefiles`; `Simulated` speaks
//! the same messages and commands over a unix SOCK_SEQPACKET socket to the simulator
//! (`python -m nydus_hybrid.sim.cachefiles`, docs/fscache-simulator.md), for kernels
//! without cachefiles on-demand. Three differences, all forced by the transport: the anon
//! fd of an OPEN arrives by SCM_RIGHTS, the READ_COMPLETE ioctl is sent as
//! `cread <msg_id>`, and `inuse`/`cull` names go resolved against our cwd.

use std::fs::OpenOptions;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use crate::error::{Error, IoContext, Result};
use crate::fscache::proto::{self, OP_OPEN};

pub const REAL_DEVICE: &str = "/dev/cachefiles";
const SIM_PREFIX: &str = "sim:";

/// One received message: its bytes (in the caller's buffer) and, for OPEN, the anon fd.
pub struct Received {
    pub len: usize,
    pub anon_fd: Option<OwnedFd>,
}

pub trait Device: Send + Sync {
    /// Wait up to `timeout_ms` for one message. `Ok(None)`: nothing pending.
    fn recv(&self, buf: &mut [u8], timeout_ms: i32) -> io::Result<Option<Received>>;
    /// Write one command (`dir`, `bind ondemand`, `copen`, `restore`, ...).
    fn command(&self, cmd: &str) -> io::Result<()>;
    /// CACHEFILES_IOC_READ_COMPLETE on `anon_fd`.
    fn read_complete(&self, anon_fd: RawFd, msg_id: u32) -> io::Result<()>;
    /// The fd to hand to a supervisor (a successor adopts it with `adopt`).
    fn raw_fd(&self) -> RawFd;
}

/// Open the device named by `spec`: `/dev/cachefiles` (or a path to another such device),
/// or `sim:<socket>` for the simulator.
pub fn open(spec: &str) -> Result<Box<dyn Device>> {
    match spec.strip_prefix(SIM_PREFIX) {
        Some(sock) => Ok(Box::new(Simulated::connect(Path::new(sock))?)),
        None => Ok(Box::new(Cachefiles::open(Path::new(spec))?)),
    }
}

/// Rebuild the device around an fd received from the supervisor (takeover).
pub fn adopt(spec: &str, fd: OwnedFd) -> Box<dyn Device> {
    if spec.starts_with(SIM_PREFIX) {
        Box::new(Simulated { fd })
    } else {
        Box::new(Cachefiles { fd })
    }
}

fn poll_in(fd: RawFd, timeout_ms: i32) -> io::Result<bool> {
    let mut p = libc::pollfd { fd, events: libc::POLLIN, revents: 0 };
    let n = unsafe { libc::poll(&mut p, 1, timeout_ms) };
    match n {
        n if n < 0 => {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                Ok(false)
            } else {
                Err(e)
            }
        }
        0 => Ok(false),
        _ => Ok(true),
    }
}

pub struct Cachefiles {
    fd: OwnedFd,
}

impl Cachefiles {
    fn open(path: &Path) -> Result<Self> {
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_CLOEXEC | libc::O_NONBLOCK)
            .open(path)
            .ctx(|| format!("open {} (needs CAP_SYS_ADMIN, a kernel with CONFIG_CACHEFILES_ONDEMAND, and no other user)", path.display()))?;
        Ok(Cachefiles { fd: f.into() })
    }
}

impl Device for Cachefiles {
    fn recv(&self, buf: &mut [u8], timeout_ms: i32) -> io::Result<Option<Received>> {
        if !poll_in(self.fd.as_raw_fd(), timeout_ms)? {
            return Ok(None);
        }
        let n = unsafe { libc::read(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        if n < 0 {
            let e = io::Error::last_os_error();
            return match e.kind() {
                io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted => Ok(None),
                _ => Err(e),
            };
        }
        let len = n as usize;
        if len == 0 {
            return Ok(None); // no pending request: like EAGAIN
        }
        // The kernel installed the anon fd in this process and wrote its number into OPEN.
        let anon_fd = if len >= proto::HEADER_LEN + 12 && u32::from_le_bytes(buf[4..8].try_into().unwrap()) == OP_OPEN {
            let fd = u32::from_le_bytes(buf[24..28].try_into().unwrap()) as RawFd;
            (fd >= 0 && unsafe { libc::fcntl(fd, libc::F_GETFD) } >= 0).then(|| unsafe { OwnedFd::from_raw_fd(fd) })
        } else {
            None
        };
        Ok(Some(Received { len, anon_fd }))
    }

    fn command(&self, cmd: &str) -> io::Result<()> {
        write_all_once(self.fd.as_raw_fd(), cmd.as_bytes())
    }

    fn read_complete(&self, anon_fd: RawFd, msg_id: u32) -> io::Result<()> {
        let rc = unsafe { libc::ioctl(anon_fd, proto::IOC_READ_COMPLETE as _, msg_id as libc::c_ulong) };
        if rc < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(())
        }
    }

    fn raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

/// One `write()` per command: the device parses each write as a whole command.
fn write_all_once(fd: RawFd, bytes: &[u8]) -> io::Result<()> {
    let n = unsafe { libc::write(fd, bytes.as_ptr().cast(), bytes.len()) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    if n as usize != bytes.len() {
        return Err(io::Error::new(io::ErrorKind::WriteZero, "short command write"));
    }
    Ok(())
}

pub struct Simulated {
    fd: OwnedFd,
}

impl Simulated {
    fn connect(path: &Path) -> Result<Self> {
        let raw = unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC, 0) };
        if raw < 0 {
            return Err(Error::io("socket(AF_UNIX, SOCK_SEQPACKET)", io::Error::last_os_error()));
        }
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
        addr.sun_family = libc::AF_UNIX as _;
        let bytes = path.as_os_str().as_encoded_bytes();
        if bytes.len() >= addr.sun_path.len() {
            return Err(Error::invalid(format!("simulator socket path is too long: {}", path.display())));
        }
        for (d, s) in addr.sun_path.iter_mut().zip(bytes) {
            *d = *s as libc::c_char;
        }
        let rc = unsafe { libc::connect(raw, (&addr as *const libc::sockaddr_un).cast(), std::mem::size_of::<libc::sockaddr_un>() as u32) };
        if rc < 0 {
            return Err(Error::io(format!("connect to the cachefiles simulator at {}", path.display()), io::Error::last_os_error()));
        }
        // The hello says whether the "device" could be opened (it is exclusive, like the real one).
        let sim = Simulated { fd };
        let mut hello = [0u8; 16];
        let n = unsafe { libc::recv(raw, hello.as_mut_ptr().cast(), hello.len(), 0) };
        match &hello[..n.max(0) as usize] {
            b"ok" => Ok(sim),
            b"EBUSY" => Err(Error::io(format!("open {}", path.display()), io::Error::from_raw_os_error(libc::EBUSY))),
            other => Err(Error::backend(format!("cachefiles simulator: unexpected hello {:?}", String::from_utf8_lossy(other)))),
        }
    }
}

impl Device for Simulated {
    fn recv(&self, buf: &mut [u8], timeout_ms: i32) -> io::Result<Option<Received>> {
        if !poll_in(self.fd.as_raw_fd(), timeout_ms)? {
            return Ok(None);
        }
        let mut iov = libc::iovec { iov_base: buf.as_mut_ptr().cast(), iov_len: buf.len() };
        let mut cbuf = [0u64; 8]; // room for one SCM_RIGHTS fd, aligned
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = cbuf.as_mut_ptr().cast();
        msg.msg_controllen = std::mem::size_of_val(&cbuf) as _;
        let n = unsafe { libc::recvmsg(self.fd.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC | libc::MSG_DONTWAIT) };
        if n < 0 {
            let e = io::Error::last_os_error();
            return match e.kind() {
                io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted => Ok(None),
                _ => Err(e),
            };
        }
        if n == 0 {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "the cachefiles simulator closed the device"));
        }
        let mut anon_fd = None;
        let mut cmsg = unsafe { libc::CMSG_FIRSTHDR(&msg) };
        while !cmsg.is_null() {
            let c = unsafe { &*cmsg };
            if c.cmsg_level == libc::SOL_SOCKET && c.cmsg_type == libc::SCM_RIGHTS {
                let count = (c.cmsg_len as usize - unsafe { libc::CMSG_LEN(0) } as usize) / std::mem::size_of::<RawFd>();
                let fds = unsafe { std::slice::from_raw_parts(libc::CMSG_DATA(cmsg) as *const RawFd, count) };
                for &fd in fds {
                    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
                    if anon_fd.is_none() {
                        anon_fd = Some(owned); // any extra fd is closed here
                    }
                }
            }
            cmsg = unsafe { libc::CMSG_NXTHDR(&msg, cmsg) };
        }
        let len = n as usize;
        // Put the received fd's number where the kernel would have written it.
        if let Some(fd) = &anon_fd {
            if len >= proto::HEADER_LEN + 12 {
                buf[24..28].copy_from_slice(&(fd.as_raw_fd() as u32).to_le_bytes());
            }
        }
        Ok(Some(Received { len, anon_fd }))
    }

    fn command(&self, cmd: &str) -> io::Result<()> {
        // The kernel resolves `inuse`/`cull` names against the caller's cwd, which the
        // simulator cannot see: send the path resolved here instead.
        let resolved;
        let cmd = match cmd.split_once(' ') {
            Some((word @ ("inuse" | "cull"), name)) if !name.starts_with('/') => {
                resolved = format!("{word} {}", std::env::current_dir()?.join(name).display());
                resolved.as_str()
            }
            _ => cmd,
        };
        let n = unsafe { libc::send(self.fd.as_raw_fd(), cmd.as_ptr().cast(), cmd.len(), libc::MSG_NOSIGNAL) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    fn read_complete(&self, _anon_fd: RawFd, msg_id: u32) -> io::Result<()> {
        self.command(&format!("cread {msg_id}"))
    }

    fn raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}
