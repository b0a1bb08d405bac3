//! The blob ToC (`rafs.blob.toc`, §6.6): 128-byte entries naming each section of a data blob.

use super::bytes::*;
use super::Compressor;
use crate::error::{ensure, Result};

pub const TOC_ENTRY_SIZE: usize = 128;
pub const TOC_NAME: &str = "rafs.blob.toc";

pub mod toc_flags {
    pub const NONE: u32 = 0x1;
    pub const ZSTD: u32 = 0x2;
    pub const LZ4_BLOCK: u32 = 0x4;
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TocEntry {
    pub flags: u32,
    pub name: String,
    pub digest: [u8; 32],
    pub offset: u64,
    pub stored_size: u64,
    pub uncompressed_size: u64,
}

impl TocEntry {
    pub fn decode(b: &[u8]) -> Result<Self> {
        ensure!(b.len() >= TOC_ENTRY_SIZE, "ToC entry truncated");
        // Bytes 4..8 and 80..128 are not validated: pre-release builders left garbage there.
        Ok(TocEntry {
            flags: u32_at(b, 0),
            name: String::from_utf8_lossy(padded_str(&b[8..24])).into_owned(),
            digest: b[24..56].try_into().unwrap(),
            offset: u64_at(b, 56),
            stored_size: u64_at(b, 64),
            uncompressed_size: u64_at(b, 72),
        })
    }

    pub fn encode(&self) -> [u8; TOC_ENTRY_SIZE] {
        let mut b = [0u8; TOC_ENTRY_SIZE];
        put_u32(&mut b, 0, self.flags);
        b[8..8 + self.name.len()].copy_from_slice(self.name.as_bytes());
        b[24..56].copy_from_slice(&self.digest);
        put_u64(&mut b, 56, self.offset);
        put_u64(&mut b, 64, self.stored_size);
        put_u64(&mut b, 72, self.uncompressed_size);
        b
    }

    pub fn compressor(&self) -> Result<Compressor> {
        Ok(match self.flags & 0xF {
            toc_flags::NONE => Compressor::None,
            toc_flags::ZSTD => Compressor::Zstd,
            toc_flags::LZ4_BLOCK => Compressor::Lz4Block,
            f => return Err(crate::error::Error::corrupt(format!("ToC entry {}: bad flags {f:#x}", self.name))),
        })
    }

    pub fn flags_for(c: Compressor) -> u32 {
        match c {
            Compressor::Zstd => toc_flags::ZSTD,
            Compressor::Lz4Block => toc_flags::LZ4_BLOCK,
            _ => toc_flags::NONE,
        }
    }
}
