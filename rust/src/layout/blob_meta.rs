//! Blob meta inside a data blob (§6.3): chunk-info (CI) records V1/V2 and the 4096-byte
//! `BlobCompressionContextHeader`.

use super::bytes::*;
use crate::error::{ensure, Result};

pub const CI_MAGIC: u32 = 0xB10B_B10B;
pub const CI_HEADER_SIZE: usize = 4096;
pub const CI_V1_SIZE: usize = 16;
pub const CI_V2_SIZE: usize = 24;

pub mod ci_v2_flags {
    pub const COMPRESSED: u8 = 0x01;
    pub const ZRAN: u8 = 0x02;
    pub const BATCH: u8 = 0x04;
    pub const ENCRYPTED: u8 = 0x08;
    pub const HAS_CRC32: u8 = 0x10;
}

/// A decoded CI record, independent of its on-disk version.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ChunkInfo {
    pub compressed_offset: u64,
    pub compressed_size: u32,
    pub uncompressed_offset: u64,
    pub uncompressed_size: u32,
    pub compressed: bool,
    /// V2 flags (0 for V1 records).
    pub v2_flags: u8,
    /// V2 `data` word: CRC-32C in lo32 when HAS_CRC32.
    pub data: u64,
}

const SIZE_LO_MASK: u64 = 0xF_FFFF;

impl ChunkInfo {
    pub fn decode_v1(b: &[u8]) -> Self {
        let u = u64_at(b, 0);
        let c = u64_at(b, 8);
        let u_size = (((u >> 8) & 0xf) << 20 | (u >> 44)) + 1;
        let c_size = (((c >> 40) & 0xf) << 20 | (c >> 44)) + 1;
        ChunkInfo {
            compressed_offset: c & 0xFF_FFFF_FFFF,
            compressed_size: c_size as u32,
            uncompressed_offset: u & 0x0000_0FFF_FFFF_F000,
            uncompressed_size: u_size as u32,
            compressed: c_size != u_size,
            v2_flags: 0,
            data: 0,
        }
    }

    pub fn encode_v1(&self) -> [u8; CI_V1_SIZE] {
        let us = (self.uncompressed_size - 1) as u64;
        let cs = (self.compressed_size - 1) as u64;
        let u = (self.uncompressed_offset & 0x0000_0FFF_FFFF_F000) | ((us >> 20) & 0xf) << 8 | (us & SIZE_LO_MASK) << 44;
        let c = (self.compressed_offset & 0xFF_FFFF_FFFF) | ((cs >> 20) & 0xf) << 40 | (cs & SIZE_LO_MASK) << 44;
        let mut b = [0u8; CI_V1_SIZE];
        put_u64(&mut b, 0, u);
        put_u64(&mut b, 8, c);
        b
    }

    pub fn decode_v2(b: &[u8]) -> Self {
        let u = u64_at(b, 0);
        let c = u64_at(b, 8);
        let flags = (u >> 56) as u8;
        ChunkInfo {
            compressed_offset: c & 0xFF_FFFF_FFFF,
            compressed_size: (c >> 40) as u32,
            uncompressed_offset: (u & 0xFFFF_FFFF) << 12,
            uncompressed_size: (((u >> 32) & 0xFF_FFFF) + 1) as u32,
            compressed: flags & ci_v2_flags::COMPRESSED != 0,
            v2_flags: flags,
            data: u64_at(b, 16),
        }
    }

    pub fn uncompressed_end(&self) -> u64 {
        self.uncompressed_offset + self.uncompressed_size as u64
    }

    pub fn compressed_end(&self) -> u64 {
        self.compressed_offset + self.compressed_size as u64
    }
}

/// `BlobCompressionContextHeader` (§6.3.5).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CiHeader {
    pub features: u32,
    pub ci_compressor: u32,
    pub ci_entries: u32,
    pub ci_offset: u64,
    pub ci_compressed_size: u64,
    pub ci_uncompressed_size: u64,
    pub zran_offset: u64,
    pub zran_size: u64,
    pub zran_count: u32,
}

impl CiHeader {
    pub fn decode(b: &[u8]) -> Result<Self> {
        ensure!(b.len() >= CI_HEADER_SIZE, "blob meta header truncated");
        ensure!(u32_at(b, 0) == CI_MAGIC && u32_at(b, 4092) == CI_MAGIC, "bad blob meta header magic");
        Ok(CiHeader {
            features: u32_at(b, 4),
            ci_compressor: u32_at(b, 8),
            ci_entries: u32_at(b, 12),
            ci_offset: u64_at(b, 16),
            ci_compressed_size: u64_at(b, 24),
            ci_uncompressed_size: u64_at(b, 32),
            zran_offset: u64_at(b, 40),
            zran_size: u64_at(b, 48),
            zran_count: u32_at(b, 56),
        })
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut b = vec![0u8; CI_HEADER_SIZE];
        put_u32(&mut b, 0, CI_MAGIC);
        put_u32(&mut b, 4, self.features);
        put_u32(&mut b, 8, self.ci_compressor);
        put_u32(&mut b, 12, self.ci_entries);
        put_u64(&mut b, 16, self.ci_offset);
        put_u64(&mut b, 24, self.ci_compressed_size);
        put_u64(&mut b, 32, self.ci_uncompressed_size);
        put_u64(&mut b, 40, self.zran_offset);
        put_u64(&mut b, 48, self.zran_size);
        put_u32(&mut b, 56, self.zran_count);
        put_u32(&mut b, 4092, CI_MAGIC);
        b
    }
}
