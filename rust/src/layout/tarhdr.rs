//! The 512-byte GNU tar headers that frame blob sections (§6.5, "reverse tar": the data comes
//! first, its header after it). We emit the exact bytes the reference does, so blobs are
//! valid OCI layers whose sections tools can locate from the end.

use crate::error::{ensure, Result};

pub const TAR_HEADER_SIZE: usize = 512;

pub fn encode(name: &str, size: u64) -> [u8; TAR_HEADER_SIZE] {
    let mut h = [0u8; TAR_HEADER_SIZE];
    h[..name.len()].copy_from_slice(name.as_bytes());
    if size < 1 << 33 {
        h[124..136].copy_from_slice(format!("{size:011o}\0").as_bytes());
    } else {
        // GNU base-256: high bit set, then the value big-endian (sections of 8 GiB and more).
        h[124] = 0x80;
        h[128..136].copy_from_slice(&size.to_be_bytes());
    }
    h[136..148].copy_from_slice(b"00000000000\0");
    h[156] = b'0';
    h[257..265].copy_from_slice(b"ustar  \0");
    h[148..156].fill(b' ');
    let sum: u32 = h.iter().map(|&c| c as u32).sum();
    h[148..156].copy_from_slice(format!("{sum:07o}\0").as_bytes());
    h
}

/// Decode a section header: (name, size). Checks the checksum and the regular-file type.
pub fn decode(h: &[u8]) -> Result<(String, u64)> {
    ensure!(h.len() >= TAR_HEADER_SIZE, "tar header truncated");
    let mut sum: u32 = h[..TAR_HEADER_SIZE].iter().map(|&c| c as u32).sum();
    sum = sum - h[148..156].iter().map(|&c| c as u32).sum::<u32>() + 8 * b' ' as u32;
    let stored = parse_octal(&h[148..156])?;
    ensure!(stored == sum as u64, "tar header checksum mismatch");
    ensure!(h[156] == b'0' || h[156] == 0, "section header is not a regular file");
    let name = super::bytes::padded_str(&h[..100]);
    let name = String::from_utf8_lossy(name).into_owned();
    let size = if h[124] & 0x80 != 0 {
        ensure!(h[124] == 0x80 && h[125..128].iter().all(|&b| b == 0), "tar size field out of range");
        u64::from_be_bytes(h[128..136].try_into().unwrap())
    } else {
        parse_octal(&h[124..136])?
    };
    Ok((name, size))
}

fn parse_octal(field: &[u8]) -> Result<u64> {
    let text: Vec<u8> = field.iter().copied().filter(|c| *c != 0 && *c != b' ').collect();
    ensure!(!text.is_empty() && text.len() <= 16, "bad octal field in tar header");
    let s = std::str::from_utf8(&text).map_err(|_| crate::error::Error::corrupt("bad octal field"))?;
    u64::from_str_radix(s, 8).map_err(|_| crate::error::Error::corrupt("bad octal field in tar header"))
}
