//! Inodes (§2): compact and extended forms, inline xattrs (§2.6) and chunk indexes (§4.2).

use super::bytes::*;
use crate::error::{ensure, Result};

pub const COMPACT_SIZE: usize = 32;
pub const EXTENDED_SIZE: usize = 64;
pub const XATTR_HEADER_SIZE: usize = 12;
pub const CHUNK_ADDR_SIZE: usize = 8;
/// `i_u` bit that marks 8-byte chunk indexes.
pub const CHUNK_FORMAT_INDEXES: u32 = 0x20;

/// An inode as decoded from either on-disk form.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Inode {
    pub extended: bool,
    pub layout: u16,
    pub xattr_icount: u16,
    pub mode: u16,
    pub nlink: u32,
    pub size: u64,
    pub i_u: u32,
    pub ino: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime: u64,
    pub mtime_nsec: u32,
}

impl Inode {
    /// Decode the inode at the start of `b` (which may extend past it).
    pub fn decode(b: &[u8]) -> Result<Self> {
        ensure!(b.len() >= COMPACT_SIZE, "inode truncated");
        let format = u16_at(b, 0);
        ensure!(format & !0xF == 0, "invalid i_format {format:#x}");
        let extended = format & 1 == 1;
        let layout = (format >> 1) & 0x7;
        if extended {
            ensure!(b.len() >= EXTENDED_SIZE, "extended inode truncated");
            Ok(Inode {
                extended,
                layout,
                xattr_icount: u16_at(b, 2),
                mode: u16_at(b, 4),
                size: u64_at(b, 8),
                i_u: u32_at(b, 16),
                ino: u32_at(b, 20),
                uid: u32_at(b, 24),
                gid: u32_at(b, 28),
                mtime: u64_at(b, 32),
                mtime_nsec: u32_at(b, 40),
                nlink: u32_at(b, 44),
            })
        } else {
            Ok(Inode {
                extended,
                layout,
                xattr_icount: u16_at(b, 2),
                mode: u16_at(b, 4),
                nlink: u16_at(b, 6) as u32,
                size: u32_at(b, 8) as u64,
                i_u: u32_at(b, 16),
                ino: u32_at(b, 20),
                uid: u16_at(b, 24) as u32,
                gid: u16_at(b, 26) as u32,
                mtime: 0,
                mtime_nsec: 0,
            })
        }
    }

    /// Extended form; the builder always writes this one (§2.1).
    pub fn encode_extended(&self) -> [u8; EXTENDED_SIZE] {
        let mut b = [0u8; EXTENDED_SIZE];
        put_u16(&mut b, 0, 1 | (self.layout << 1));
        put_u16(&mut b, 2, self.xattr_icount);
        put_u16(&mut b, 4, self.mode);
        put_u64(&mut b, 8, self.size);
        put_u32(&mut b, 16, self.i_u);
        put_u32(&mut b, 20, self.ino);
        put_u32(&mut b, 24, self.uid);
        put_u32(&mut b, 28, self.gid);
        put_u64(&mut b, 32, self.mtime);
        put_u32(&mut b, 40, self.mtime_nsec);
        put_u32(&mut b, 44, self.nlink);
        b
    }

    pub fn core_size(&self) -> usize {
        if self.extended {
            EXTENDED_SIZE
        } else {
            COMPACT_SIZE
        }
    }

    pub fn xattr_size(&self) -> usize {
        xattr_ibody_size(self.xattr_icount)
    }

    /// Inode plus inline xattrs: where inline data starts.
    pub fn inline_offset(&self) -> usize {
        self.core_size() + self.xattr_size()
    }

    /// Offset of the chunk index array from the inode start (§2.7).
    pub fn chunk_index_offset(&self) -> usize {
        round_up(self.inline_offset() as u64, 8) as usize
    }
}

/// Largest inline xattr body: `i_xattr_icount` is a u16 counting 4-byte units.
pub const MAX_XATTR_BODY: usize = XATTR_HEADER_SIZE + 4 * (u16::MAX as usize - 1);

pub fn xattr_ibody_size(icount: u16) -> usize {
    if icount == 0 {
        0
    } else {
        XATTR_HEADER_SIZE + 4 * (icount as usize - 1)
    }
}

/// Name-index prefixes of inline xattrs, in encoding preference order (§2.6).
const XATTR_PREFIXES: &[(u8, &[u8], bool)] =
    &[(1, b"user.", false), (2, b"system.posix_acl_access", true), (3, b"system.posix_acl_default", true), (4, b"trusted.", false), (6, b"security.", false)];

fn prefix_of(index: u8) -> Option<&'static [u8]> {
    XATTR_PREFIXES.iter().find(|p| p.0 == index).map(|p| p.1)
}

/// Split a full xattr name into (name index, suffix), or None when RAFS cannot store it.
pub fn xattr_split(name: &[u8]) -> Option<(u8, &[u8])> {
    for &(index, prefix, whole) in XATTR_PREFIXES {
        if whole {
            if name == prefix {
                return Some((index, &name[name.len()..]));
            }
        } else if name.starts_with(prefix) {
            return Some((index, &name[prefix.len()..]));
        }
    }
    None
}

/// Parse the inline xattr body (header + entries) into full-name/value pairs.
pub fn decode_xattrs(body: &[u8]) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
    ensure!(body.len() >= XATTR_HEADER_SIZE, "xattr body truncated");
    ensure!(body[4] == 0, "shared xattrs are not supported by RAFS");
    let mut out = Vec::new();
    let mut pos = XATTR_HEADER_SIZE;
    while pos + 4 <= body.len() {
        let name_len = body[pos] as usize;
        let index = body[pos + 1];
        let value_len = u16_at(body, pos + 2) as usize;
        let entry_len = 4 + name_len + value_len;
        ensure!(pos + entry_len <= body.len(), "xattr entry overruns the inode body");
        let prefix = prefix_of(index).ok_or_else(|| crate::error::Error::corrupt(format!("unknown xattr name index {index}")))?;
        let mut name = prefix.to_vec();
        name.extend_from_slice(&body[pos + 4..pos + 4 + name_len]);
        let value = body[pos + 4 + name_len..pos + entry_len].to_vec();
        out.push((name, value));
        pos += round_up(entry_len as u64, 4) as usize;
    }
    Ok(out)
}

/// Encode xattrs (already validated and sorted) as an inline body; returns (bytes, icount).
pub fn encode_xattrs<'a>(pairs: impl IntoIterator<Item = (&'a Vec<u8>, &'a Vec<u8>)>) -> (Vec<u8>, u16) {
    let mut b = vec![0u8; XATTR_HEADER_SIZE];
    for (name, value) in pairs {
        let (index, suffix) = xattr_split(name).expect("xattr names are validated by the builder");
        b.push(suffix.len() as u8);
        b.push(index);
        b.extend_from_slice(&(value.len() as u16).to_le_bytes());
        b.extend_from_slice(suffix);
        b.extend_from_slice(value);
        b.resize(round_up(b.len() as u64, 4) as usize, 0);
    }
    if b.len() == XATTR_HEADER_SIZE {
        return (Vec::new(), 0);
    }
    let icount = u16::try_from((b.len() - XATTR_HEADER_SIZE) / 4 + 1).expect("xattr body size is checked by the builder");
    (b, icount)
}

/// Aligned inline size of a set of xattrs without encoding them.
pub fn xattrs_size<'a>(pairs: impl IntoIterator<Item = (&'a Vec<u8>, &'a Vec<u8>)>) -> usize {
    let entries: usize = pairs
        .into_iter()
        .map(|(n, v)| {
            let suffix = xattr_split(n).map(|s| s.1.len()).unwrap_or(n.len());
            round_up((4 + suffix + v.len()) as u64, 4) as usize
        })
        .sum();
    if entries == 0 {
        0
    } else {
        XATTR_HEADER_SIZE + entries
    }
}

/// A regular file's chunk address (`RafsV6InodeChunkAddr`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChunkAddr {
    pub blob_index: u8,
    pub ci_index: u32,
    pub blkaddr: u32,
}

impl ChunkAddr {
    pub fn decode(b: &[u8]) -> Result<Self> {
        let lo = u16_at(b, 0) as u32;
        let hi = u16_at(b, 2) as u32;
        let blkaddr = u32_at(b, 4);
        let device = hi & 0xff;
        ensure!(device != 0, "chunk index names device 0 (the bootstrap)");
        ensure!(blkaddr != 0xFFFF_FFFF, "chunk index is a hole (EROFS_NULL_ADDR), which RAFS does not use");
        Ok(ChunkAddr { blob_index: (device - 1) as u8, ci_index: ((hi >> 8) << 16) | lo, blkaddr })
    }

    pub fn encode(&self) -> [u8; CHUNK_ADDR_SIZE] {
        let mut b = [0u8; CHUNK_ADDR_SIZE];
        put_u16(&mut b, 0, (self.ci_index & 0xffff) as u16);
        let hi = ((self.ci_index >> 16) << 8) | (self.blob_index as u32 + 1);
        put_u16(&mut b, 2, hi as u16);
        put_u32(&mut b, 4, self.blkaddr);
        b
    }
}
