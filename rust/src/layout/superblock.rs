//! EROFS superblock (§1.2), RAFS extended superblock (§1.3), device slots (§1.4) and blob
//! table entries (§1.5). `decode` validates every rule of spec §9 items 2–5 that a single
//! record can check on its own.

use super::bytes::*;
use super::{blob_features as bf, sb_flags, Compressor, Digester};
use super::{MAX_CHUNK_SIZE, MIN_CHUNK_SIZE};
use crate::error::{ensure, Result};

pub const EROFS_MAGIC: u32 = 0xE0F5_E1E2;
pub const FEATURE_COMPAT_RAFS_V6: u32 = 0x4000_0000;
pub const FEATURE_INCOMPAT_RAFS: u32 = 0x0000_000C;
pub const DEVT_SLOTOFF: u16 = 11;

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ErofsSuper {
    pub feature_compat: u32,
    pub blkszbits: u8,
    pub root_nid: u16,
    pub inos: u64,
    pub blocks: u32,
    pub meta_blkaddr: u32,
    pub extra_devices: u16,
}

impl ErofsSuper {
    pub const SIZE: usize = 128;

    pub fn decode(b: &[u8]) -> Result<Self> {
        ensure!(b.len() >= Self::SIZE, "EROFS superblock truncated");
        ensure!(u32_at(b, 0) == EROFS_MAGIC, "bad EROFS magic {:#x}", u32_at(b, 0));
        ensure!(u32_at(b, 4) == 0, "EROFS superblock checksum must be 0");
        let sb = ErofsSuper {
            feature_compat: u32_at(b, 8),
            blkszbits: b[12],
            root_nid: u16_at(b, 14),
            inos: u64_at(b, 16),
            blocks: u32_at(b, 36),
            meta_blkaddr: u32_at(b, 40),
            extra_devices: u16_at(b, 86),
        };
        ensure!(sb.feature_compat & FEATURE_COMPAT_RAFS_V6 != 0, "feature_compat {:#x} lacks the RAFS v6 bit", sb.feature_compat);
        ensure!(sb.blkszbits == 12 || sb.blkszbits == 9, "blkszbits {} not 9 or 12", sb.blkszbits);
        ensure!(b[13] == 0, "sb_extslots must be 0");
        ensure!(sb.inos != 0, "inode count is 0");
        ensure!(u32_at(b, 44) == 0, "shared xattrs (xattr_blkaddr) are not supported by RAFS");
        let incompat = u32_at(b, 80);
        ensure!(incompat == FEATURE_INCOMPAT_RAFS, "feature_incompat {incompat:#x} is not 0xc");
        ensure!(u16_at(b, 84) == 0, "available_compr_algs must be 0");
        ensure!(u16_at(b, 88) == DEVT_SLOTOFF, "devt_slotoff {} is not 11", u16_at(b, 88));
        ensure!(sb.extra_devices != 0 || sb.blocks == 0 || sb.blocks == 4096, "blocks {} with no extra devices", sb.blocks);
        Ok(sb)
    }

    pub fn encode(&self) -> [u8; Self::SIZE] {
        let mut b = [0u8; Self::SIZE];
        put_u32(&mut b, 0, EROFS_MAGIC);
        put_u32(&mut b, 8, self.feature_compat);
        b[12] = self.blkszbits;
        put_u16(&mut b, 14, self.root_nid);
        put_u64(&mut b, 16, self.inos);
        put_u32(&mut b, 36, self.blocks);
        put_u32(&mut b, 40, self.meta_blkaddr);
        put_u32(&mut b, 80, FEATURE_INCOMPAT_RAFS);
        put_u16(&mut b, 86, self.extra_devices);
        put_u16(&mut b, 88, DEVT_SLOTOFF);
        b
    }

    pub fn block_size(&self) -> u64 {
        1u64 << self.blkszbits
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ExtSuper {
    pub flags: u64,
    pub blob_table_offset: u64,
    pub blob_table_size: u32,
    pub chunk_size: u32,
    pub chunk_table_offset: u64,
    pub chunk_table_size: u64,
    pub prefetch_table_offset: u64,
    pub prefetch_table_size: u32,
}

pub fn valid_chunk_size(c: u32) -> bool {
    c.is_power_of_two() && (MIN_CHUNK_SIZE..=MAX_CHUNK_SIZE).contains(&c)
}

impl ExtSuper {
    pub const SIZE: usize = 256;

    pub fn decode(b: &[u8]) -> Result<Self> {
        ensure!(b.len() >= Self::SIZE, "extended superblock truncated");
        let s = ExtSuper {
            flags: u64_at(b, 0),
            blob_table_offset: u64_at(b, 8),
            blob_table_size: u32_at(b, 16),
            chunk_size: u32_at(b, 20),
            chunk_table_offset: u64_at(b, 24),
            chunk_table_size: u64_at(b, 32),
            prefetch_table_offset: u64_at(b, 40),
            prefetch_table_size: u32_at(b, 48),
        };
        ensure!(s.flags & !sb_flags::KNOWN == 0, "unknown superblock flags {:#x}", s.flags);
        ensure!((s.flags & sb_flags::COMPRESSION_MASK).count_ones() == 1, "superblock flags {:#x} must name exactly one compressor", s.flags);
        ensure!((s.flags & sb_flags::HASH_MASK).count_ones() == 1, "superblock flags {:#x} must name exactly one digester", s.flags);
        ensure!(valid_chunk_size(s.chunk_size), "invalid chunk size {:#x}", s.chunk_size);
        Ok(s)
    }

    pub fn encode(&self) -> [u8; Self::SIZE] {
        let mut b = [0u8; Self::SIZE];
        put_u64(&mut b, 0, self.flags);
        put_u64(&mut b, 8, self.blob_table_offset);
        put_u32(&mut b, 16, self.blob_table_size);
        put_u32(&mut b, 20, self.chunk_size);
        put_u64(&mut b, 24, self.chunk_table_offset);
        put_u64(&mut b, 32, self.chunk_table_size);
        put_u64(&mut b, 40, self.prefetch_table_offset);
        put_u32(&mut b, 48, self.prefetch_table_size);
        b
    }

    pub fn digester(&self) -> Digester {
        if self.flags & sb_flags::HASH_SHA256 != 0 {
            Digester::Sha256
        } else {
            Digester::Blake3
        }
    }

    pub fn compressor(&self) -> Compressor {
        let f = self.flags;
        if f & sb_flags::COMPRESSION_ZSTD != 0 {
            Compressor::Zstd
        } else if f & sb_flags::COMPRESSION_LZ4 != 0 {
            Compressor::Lz4Block
        } else if f & sb_flags::COMPRESSION_GZIP != 0 {
            Compressor::Gzip
        } else {
            Compressor::None
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DeviceSlot {
    pub blob_id: String,
    pub blocks: u32,
    pub mapped_blkaddr: u32,
}

impl DeviceSlot {
    pub const SIZE: usize = 128;

    pub fn decode(b: &[u8]) -> Result<Self> {
        let id = std::str::from_utf8(padded_str(&b[..64])).map_err(|_| crate::error::Error::corrupt("device slot id is not UTF-8"))?;
        let s = DeviceSlot { blob_id: id.to_string(), blocks: u32_at(b, 64), mapped_blkaddr: u32_at(b, 68) };
        ensure!(s.blocks != 0, "device slot {id} has 0 blocks");
        Ok(s)
    }

    pub fn encode(&self) -> [u8; Self::SIZE] {
        let mut b = [0u8; Self::SIZE];
        b[..self.blob_id.len()].copy_from_slice(self.blob_id.as_bytes());
        put_u32(&mut b, 64, self.blocks);
        put_u32(&mut b, 68, self.mapped_blkaddr);
        b
    }
}

/// One `RafsV6Blob` record of the blob table.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BlobEntry {
    pub blob_id: String,
    pub blob_index: u32,
    pub chunk_size: u32,
    pub chunk_count: u32,
    pub compressor: u32,
    pub digester: u32,
    pub features: u32,
    pub compressed_size: u64,
    pub uncompressed_size: u64,
    pub toc_size: u32,
    pub ci_compressor: u32,
    pub ci_offset: u64,
    pub ci_compressed_size: u64,
    pub ci_uncompressed_size: u64,
    pub toc_digest: [u8; 32],
    pub meta_digest: [u8; 32],
    pub meta_size: u64,
    pub cipher: u32,
}

impl BlobEntry {
    pub const SIZE: usize = 256;

    pub fn decode(b: &[u8]) -> Result<Self> {
        let id = std::str::from_utf8(padded_str(&b[..64])).map_err(|_| crate::error::Error::corrupt("blob id is not UTF-8"))?;
        Ok(BlobEntry {
            blob_id: id.to_string(),
            blob_index: u32_at(b, 64),
            chunk_size: u32_at(b, 68),
            chunk_count: u32_at(b, 72),
            compressor: u32_at(b, 76),
            digester: u32_at(b, 80),
            features: u32_at(b, 84),
            compressed_size: u64_at(b, 88),
            uncompressed_size: u64_at(b, 96),
            toc_size: u32_at(b, 104),
            ci_compressor: u32_at(b, 108),
            ci_offset: u64_at(b, 112),
            ci_compressed_size: u64_at(b, 120),
            ci_uncompressed_size: u64_at(b, 128),
            toc_digest: b[136..168].try_into().unwrap(),
            meta_digest: b[168..200].try_into().unwrap(),
            meta_size: u64_at(b, 200),
            cipher: u32_at(b, 216),
        })
    }

    /// The per-entry checks of spec §9 item 4.
    pub fn validate(&self, position: usize, sb_chunk_size: u32, tarfs: bool) -> Result<()> {
        let id = &self.blob_id;
        ensure!(self.blob_index as usize == position, "blob {id}: index {} at position {position}", self.blob_index);
        ensure!(
            self.chunk_size == sb_chunk_size && valid_chunk_size(self.chunk_size),
            "blob {id}: chunk size {:#x} differs from the superblock's {sb_chunk_size:#x}",
            self.chunk_size
        );
        ensure!(self.chunk_count <= 1 << 24, "blob {id}: chunk count {} too large", self.chunk_count);
        ensure!(Compressor::from_u32(self.compressor).is_some(), "blob {id}: unknown compressor {}", self.compressor);
        ensure!(Compressor::from_u32(self.ci_compressor).is_some(), "blob {id}: unknown CI compressor {}", self.ci_compressor);
        ensure!(Digester::from_u32(self.digester).is_some(), "blob {id}: unknown digester {}", self.digester);
        ensure!(self.cipher <= 1, "blob {id}: unknown cipher {}", self.cipher);
        ensure!(self.uncompressed_size <= 1 << 44, "blob {id}: uncompressed size too large");
        ensure!(self.compressed_size <= 1 << 40, "blob {id}: compressed size too large");
        let f = self.features;
        ensure!(f & 0xFFFF & !0x0FFF == 0 && f & bf::V5_NO_EXT_BLOB_TABLE == 0, "blob {id}: invalid features {f:#x}");
        ensure!((f & bf::ALIGNED != 0) != tarfs, "blob {id}: ALIGNED must be set exactly when not TARFS");
        ensure!(self.ci_offset.checked_add(self.ci_compressed_size).is_some(), "blob {id}: CI range overflows");
        ensure!(self.ci_compressed_size <= self.ci_uncompressed_size, "blob {id}: CI stored size exceeds its uncompressed size");
        let n = self.chunk_count as u64;
        let v2 = f & bf::CHUNK_INFO_V2 != 0;
        let extended = f & (bf::BATCH | bf::ZRAN | bf::ENCRYPTED) != 0;
        if v2 && extended {
            ensure!(self.ci_uncompressed_size >= 24 * n, "blob {id}: CI region too small");
        } else if v2 {
            ensure!(self.ci_uncompressed_size == 24 * n, "blob {id}: CI size {} != 24 x {n}", self.ci_uncompressed_size);
        } else {
            ensure!(!extended, "blob {id}: BATCH/ZRAN/ENCRYPTED need CHUNK_INFO_V2");
            ensure!(
                tarfs || f & bf::IS_CHUNKDICT_GENERATED != 0 || self.ci_uncompressed_size == 16 * n,
                "blob {id}: CI size {} != 16 x {n}",
                self.ci_uncompressed_size
            );
        }
        Ok(())
    }

    pub fn encode(&self) -> [u8; Self::SIZE] {
        let mut b = [0u8; Self::SIZE];
        b[..self.blob_id.len()].copy_from_slice(self.blob_id.as_bytes());
        put_u32(&mut b, 64, self.blob_index);
        put_u32(&mut b, 68, self.chunk_size);
        put_u32(&mut b, 72, self.chunk_count);
        put_u32(&mut b, 76, self.compressor);
        put_u32(&mut b, 80, self.digester);
        put_u32(&mut b, 84, self.features);
        put_u64(&mut b, 88, self.compressed_size);
        put_u64(&mut b, 96, self.uncompressed_size);
        put_u32(&mut b, 104, self.toc_size);
        put_u32(&mut b, 108, self.ci_compressor);
        put_u64(&mut b, 112, self.ci_offset);
        put_u64(&mut b, 120, self.ci_compressed_size);
        put_u64(&mut b, 128, self.ci_uncompressed_size);
        b[136..168].copy_from_slice(&self.toc_digest);
        b[168..200].copy_from_slice(&self.meta_digest);
        put_u64(&mut b, 200, self.meta_size);
        put_u32(&mut b, 216, self.cipher);
        b
    }

    pub fn compression(&self) -> Compressor {
        Compressor::from_u32(self.compressor).unwrap_or(Compressor::None)
    }

    pub fn digest_algo(&self) -> Digester {
        Digester::from_u32(self.digester).unwrap_or(Digester::Blake3)
    }

    pub fn has(&self, feature: u32) -> bool {
        self.features & feature != 0
    }

    /// Bound for CI records' compressed ranges (spec ERRATA E4).
    pub fn compressed_data_size(&self) -> u64 {
        if self.has(bf::SEPARATE) {
            self.compressed_size
        } else if self.has(bf::CAP_TAR_TOC) {
            if self.has(bf::HAS_TAR_HEADER) {
                self.ci_offset.saturating_sub(512)
            } else {
                self.ci_offset
            }
        } else {
            self.compressed_size
        }
    }
}
