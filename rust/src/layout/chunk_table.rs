//! The bootstrap's chunk-info table (`RafsV5ChunkInfo`, 80 bytes, §1.7).

use super::bytes::*;

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ChunkTableEntry {
    pub digest: [u8; 32],
    pub blob_index: u32,
    pub flags: u32,
    pub compressed_size: u32,
    pub uncompressed_size: u32,
    pub compressed_offset: u64,
    pub uncompressed_offset: u64,
    pub file_offset: u64,
    pub index: u32,
    pub crc32: u32,
}

impl ChunkTableEntry {
    pub const SIZE: usize = 80;

    pub fn decode(b: &[u8]) -> Self {
        ChunkTableEntry {
            digest: b[0..32].try_into().unwrap(),
            blob_index: u32_at(b, 32),
            flags: u32_at(b, 36),
            compressed_size: u32_at(b, 40),
            uncompressed_size: u32_at(b, 44),
            compressed_offset: u64_at(b, 48),
            uncompressed_offset: u64_at(b, 56),
            file_offset: u64_at(b, 64),
            index: u32_at(b, 72),
            crc32: u32_at(b, 76),
        }
    }

    pub fn encode(&self) -> [u8; Self::SIZE] {
        let mut b = [0u8; Self::SIZE];
        b[0..32].copy_from_slice(&self.digest);
        put_u32(&mut b, 32, self.blob_index);
        put_u32(&mut b, 36, self.flags);
        put_u32(&mut b, 40, self.compressed_size);
        put_u32(&mut b, 44, self.uncompressed_size);
        put_u64(&mut b, 48, self.compressed_offset);
        put_u64(&mut b, 56, self.uncompressed_offset);
        put_u64(&mut b, 64, self.file_offset);
        put_u32(&mut b, 72, self.index);
        put_u32(&mut b, 76, self.crc32);
        b
    }
}
