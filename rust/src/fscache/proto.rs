//! The `/dev/cachefiles` on-demand messages (spec §5.3): what the kernel asks, decoded with
//! every length checked, and the commands we answer with. Messages are host-endian; this
//! crate only targets little-endian hosts, as nydusd does in practice.

use std::fmt;

/// `CACHEFILES_MSG_MAX_SIZE`: a read buffer must hold this much.
pub const MSG_MAX: usize = 1024;
pub const HEADER_LEN: usize = 16;
const OPEN_FIXED_LEN: usize = 16;
const READ_LEN: usize = 16;

pub const OP_OPEN: u32 = 0;
pub const OP_CLOSE: u32 = 1;
pub const OP_READ: u32 = 2;

/// `_IOW(0x98, 1, int)`: completes a READ on its anonymous fd; the argument is the msg_id.
pub const IOC_READ_COMPLETE: u64 = 0x4004_9801;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Request {
    /// A cache object is being opened: `domain` is the volume key with `erofs,` and the NULs
    /// removed; `cookie` is the fsid (bootstrap) or a device tag (data blob id).
    Open {
        domain: String,
        cookie: String,
        fd: u32,
        flags: u32,
    },
    Close,
    /// Make `[off, off+len)` of the object's uncompressed bytes present.
    Read {
        off: u64,
        len: u64,
    },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    pub msg_id: u32,
    pub object_id: u32,
    pub request: Request,
}

/// A message we cannot use. `msg_id` and `opcode` are kept when the header was readable, so
/// an unparsable OPEN can still be answered (an unanswered OPEN blocks the kernel caller).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DecodeError {
    pub msg_id: Option<u32>,
    pub opcode: Option<u32>,
    pub reason: String,
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.reason)?;
        if let Some(id) = self.msg_id {
            write!(f, " (msg_id {id})")?;
        }
        Ok(())
    }
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
}

/// Decode exactly the bytes one `read()` returned.
pub fn decode(buf: &[u8]) -> Result<Message, DecodeError> {
    let fail = |msg_id, opcode, reason: String| DecodeError { msg_id, opcode, reason };
    if buf.len() < HEADER_LEN {
        return Err(fail(None, None, format!("message of {} bytes is shorter than its header", buf.len())));
    }
    let (msg_id, opcode, len, object_id) = (u32_at(buf, 0), u32_at(buf, 4), u32_at(buf, 8), u32_at(buf, 12));
    let (id, op) = (Some(msg_id), Some(opcode));
    if len as usize != buf.len() {
        return Err(fail(id, op, format!("header says {len} bytes, the read returned {}", buf.len())));
    }
    let body = &buf[HEADER_LEN..];
    let request = match opcode {
        OP_OPEN => {
            if body.len() < OPEN_FIXED_LEN {
                return Err(fail(id, op, "OPEN payload is too short".into()));
            }
            let (vsize, csize) = (u32_at(body, 0) as usize, u32_at(body, 4) as usize);
            let keys = &body[OPEN_FIXED_LEN..];
            if vsize.checked_add(csize) != Some(keys.len()) {
                return Err(fail(id, op, format!("OPEN keys of {vsize}+{csize} bytes in a {}-byte payload", keys.len())));
            }
            let text = |b: &[u8], what: &str| std::str::from_utf8(b).map(str::to_owned).map_err(|_| fail(id, op, format!("OPEN {what} key is not UTF-8")));
            let volume = text(&keys[..vsize], "volume")?;
            let volume = volume.trim_end_matches('\0');
            let domain = volume.strip_prefix("erofs,").unwrap_or(volume).to_string();
            let cookie = text(&keys[vsize..], "cookie")?;
            Request::Open { domain, cookie, fd: u32_at(body, 8), flags: u32_at(body, 12) }
        }
        OP_CLOSE => {
            if !body.is_empty() {
                return Err(fail(id, op, "CLOSE carries a payload".into()));
            }
            Request::Close
        }
        OP_READ => {
            if body.len() != READ_LEN {
                return Err(fail(id, op, format!("READ payload of {} bytes", body.len())));
            }
            let (off, len) = (u64_at(body, 0), u64_at(body, 8));
            if off.checked_add(len).is_none() {
                return Err(fail(id, op, format!("READ range {off}+{len} overflows")));
            }
            Request::Read { off, len }
        }
        other => return Err(fail(id, op, format!("unknown opcode {other}"))),
    };
    Ok(Message { msg_id, object_id, request })
}

fn header(msg_id: u32, opcode: u32, total: usize, object_id: u32) -> Vec<u8> {
    let mut b = Vec::with_capacity(total);
    for v in [msg_id, opcode, total as u32, object_id] {
        b.extend_from_slice(&v.to_le_bytes());
    }
    b
}

/// The kernel's side of an OPEN, for tests and the simulator's peers. The volume key gets
/// the `erofs,` prefix and a trailing NUL, as EROFS builds it.
pub fn encode_open(msg_id: u32, object_id: u32, domain: &str, cookie: &str, fd: u32) -> Vec<u8> {
    let volume = format!("erofs,{domain}\0");
    let total = HEADER_LEN + OPEN_FIXED_LEN + volume.len() + cookie.len();
    let mut b = header(msg_id, OP_OPEN, total, object_id);
    for v in [volume.len() as u32, cookie.len() as u32, fd, 0] {
        b.extend_from_slice(&v.to_le_bytes());
    }
    b.extend_from_slice(volume.as_bytes());
    b.extend_from_slice(cookie.as_bytes());
    b
}

pub fn encode_read(msg_id: u32, object_id: u32, off: u64, len: u64) -> Vec<u8> {
    let mut b = header(msg_id, OP_READ, HEADER_LEN + READ_LEN, object_id);
    b.extend_from_slice(&off.to_le_bytes());
    b.extend_from_slice(&len.to_le_bytes());
    b
}

pub fn encode_close(msg_id: u32, object_id: u32) -> Vec<u8> {
    header(msg_id, OP_CLOSE, HEADER_LEN, object_id)
}

/// Our answer to an OPEN: the object's size, or `-errno` to fail it.
pub fn copen(msg_id: u32, size_or_errno: i64) -> String {
    format!("copen {msg_id},{size_or_errno}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn open_keys_are_trimmed_and_split() {
        let m = decode(&encode_open(7, 3, "dom", "abc", 42)).unwrap();
        assert_eq!(m.msg_id, 7);
        assert_eq!(m.object_id, 3);
        assert_eq!(m.request, Request::Open { domain: "dom".into(), cookie: "abc".into(), fd: 42, flags: 0 });
    }

    #[test]
    fn bad_messages_keep_the_header_for_a_reply() {
        let mut b = encode_open(9, 1, "d", "c", 5);
        b[16] = 200; // volume size beyond the payload
        let e = decode(&b).unwrap_err();
        assert_eq!((e.msg_id, e.opcode), (Some(9), Some(OP_OPEN)));
        assert!(decode(&[0; 8]).unwrap_err().msg_id.is_none());
        let mut r = encode_read(1, 1, u64::MAX, 2);
        assert!(decode(&r).unwrap_err().reason.contains("overflows"));
        r.pop();
        assert!(decode(&r).unwrap_err().reason.contains("header says"));
        assert!(decode(&header(1, 77, 16, 1)).unwrap_err().reason.contains("unknown opcode"));
    }

    proptest! {
        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = decode(&bytes);
        }

        #[test]
        fn open_round_trips(id in any::<u32>(), obj in any::<u32>(), dom in "[a-z0-9]{0,64}", cookie in "[a-f0-9]{1,64}", fd in any::<u32>()) {
            let m = decode(&encode_open(id, obj, &dom, &cookie, fd)).unwrap();
            prop_assert_eq!(m.request, Request::Open { domain: dom, cookie, fd, flags: 0 });
        }

        #[test]
        fn read_round_trips(id in any::<u32>(), off in 0u64..(1 << 50), len in 0u64..(1 << 40)) {
            let m = decode(&encode_read(id, 1, off, len)).unwrap();
            prop_assert_eq!(m.request, Request::Read { off, len });
        }
    }
}
