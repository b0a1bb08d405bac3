//! Directory blocks (§3): 12-byte dirents followed by packed names.

use super::bytes::*;
use super::MAX_NAME_LEN;
use crate::error::{ensure, Error, Result};

pub const DIRENT_SIZE: usize = 12;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Dirent<'a> {
    pub nid: u64,
    pub file_type: u8,
    pub name: &'a [u8],
}

/// How many entries one directory block holds (its first name offset over the dirent
/// size), checked as `decode_block` checks it, without decoding the names.
pub fn entry_count(block: &[u8], valid_len: usize) -> Result<usize> {
    let valid_len = valid_len.min(block.len());
    ensure!(valid_len >= DIRENT_SIZE, "directory block too short");
    let first_nameoff = u16_at(block, 8) as usize;
    ensure!(first_nameoff % DIRENT_SIZE == 0 && first_nameoff >= DIRENT_SIZE && first_nameoff < valid_len, "bad first nameoff {first_nameoff}");
    Ok(first_nameoff / DIRENT_SIZE)
}

/// Decode every entry of one directory block. `valid_len` bounds the last name (the used
/// length of this block, i.e. `i_size` for the final block): bytes past it belong to
/// something else.
pub fn decode_block(block: &[u8], valid_len: usize) -> Result<Vec<Dirent<'_>>> {
    let valid_len = valid_len.min(block.len());
    let count = entry_count(block, valid_len)?;
    let first_nameoff = count * DIRENT_SIZE;
    let mut out = Vec::with_capacity(count);
    for i in 0..count {
        let d = i * DIRENT_SIZE;
        let nameoff = u16_at(block, d + 8) as usize;
        let end = if i + 1 < count {
            u16_at(block, d + DIRENT_SIZE + 8) as usize
        } else {
            // Last name: ends at the first NUL or at the used length of the block.
            let tail = &block[nameoff.min(valid_len)..valid_len];
            nameoff + tail.iter().position(|&c| c == 0).unwrap_or(tail.len())
        };
        ensure!(nameoff >= first_nameoff && nameoff < end && end <= valid_len, "bad dirent name range {nameoff}..{end}");
        let name = &block[nameoff..end];
        ensure!(!name.contains(&b'/') && !name.contains(&0), "dirent name {:?} contains '/' or NUL", String::from_utf8_lossy(name));
        out.push(Dirent { nid: u64_at(block, d), file_type: block[d + 10], name: &block[nameoff..end] });
    }
    Ok(out)
}

/// Encode one block from (nid, file_type, name) entries; the caller packed them to fit.
pub fn encode_block(entries: &[(u64, u8, &[u8])], out: &mut Vec<u8>) {
    let mut nameoff = entries.len() * DIRENT_SIZE;
    for (nid, ft, name) in entries {
        let mut d = [0u8; DIRENT_SIZE];
        put_u64(&mut d, 0, *nid);
        put_u16(&mut d, 8, nameoff as u16);
        d[10] = *ft;
        out.extend_from_slice(&d);
        nameoff += name.len();
    }
    for (_, _, name) in entries {
        out.extend_from_slice(name);
    }
}

/// Expected number of directory bytes for these names (§3.3 packing rule).
pub fn packed_size(names: &[&[u8]], block: u64) -> u64 {
    let mut size = 0u64;
    for n in names {
        let len = (DIRENT_SIZE + n.len()) as u64;
        if size % block + len > block {
            size = round_up(size, block);
        }
        size += len;
    }
    size
}

/// Check one path component (§7 limits): non-empty, not `.`/`..`, no `/` or NUL, ≤ 255 bytes.
pub fn check_name(name: &[u8], context: &str) -> Result<()> {
    if name.is_empty() || name == b"." || name == b".." || name.contains(&b'/') || name.contains(&0) {
        return Err(Error::UnsafeInput(format!("{context}: invalid file name {:?}", String::from_utf8_lossy(name))));
    }
    if name.len() > MAX_NAME_LEN {
        return Err(Error::UnsafeInput(format!("{context}: file name longer than {MAX_NAME_LEN} bytes")));
    }
    Ok(())
}
