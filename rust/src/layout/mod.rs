//! On-disk structures of RAFS v6 (spec `rafs-v6-format.md` §1–3, §6): constants, and
//! encode/decode of every fixed-size record. Nothing here does I/O.

pub mod blob_meta;
pub mod bytes;
pub mod chunk_table;
pub mod dirent;
pub mod inode;
pub mod superblock;
pub mod tarhdr;
pub mod toc;

pub const BLOCK_SIZE: u64 = 4096;
pub const EROFS_SB_OFFSET: usize = 1024;
pub const EXT_SB_OFFSET: usize = 1152;
pub const DEVSLOT_OFFSET: usize = 1408;
pub const DEVSLOT_SIZE: usize = 128;
pub const BLOB_ENTRY_SIZE: usize = 256;
pub const CHUNK_TABLE_ENTRY_SIZE: usize = 80;
pub const ROOT_NID: u64 = 128;
pub const MIN_CHUNK_SIZE: u32 = 0x1000;
pub const MAX_CHUNK_SIZE: u32 = 0x100_0000;
pub const DEFAULT_CHUNK_SIZE: u32 = 0x10_0000;
pub const MAX_BLOBS: usize = 255;
pub const MAX_CI_INDEX: u32 = 0xFF_FFFE;
pub const MAX_NAME_LEN: usize = 255;
pub const MAX_SYMLINK_LEN: u64 = 4096;

/// Chunk compressors (`compression_algo`, `ci_compressor`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Compressor {
    None = 0,
    Lz4Block = 1,
    Gzip = 2,
    Zstd = 3,
}

impl Compressor {
    pub fn from_u32(v: u32) -> Option<Self> {
        Some(match v {
            0 => Self::None,
            1 => Self::Lz4Block,
            2 => Self::Gzip,
            3 => Self::Zstd,
            _ => return None,
        })
    }
    pub fn name(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Lz4Block => "lz4_block",
            Self::Gzip => "gzip",
            Self::Zstd => "zstd",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "none" => Self::None,
            "lz4_block" | "lz4" => Self::Lz4Block,
            "zstd" => Self::Zstd,
            "gzip" => Self::Gzip,
            _ => return None,
        })
    }
}

/// Chunk digest algorithms (`digest_algo`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Digester {
    Blake3 = 0,
    Sha256 = 1,
}

impl Digester {
    pub fn from_u32(v: u32) -> Option<Self> {
        match v {
            0 => Some(Self::Blake3),
            1 => Some(Self::Sha256),
            _ => None,
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            Self::Blake3 => "blake3",
            Self::Sha256 => "sha256",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "blake3" => Some(Self::Blake3),
            "sha256" => Some(Self::Sha256),
            _ => None,
        }
    }
}

/// `RafsSuperFlags` bits of the extended superblock (§1.3).
pub mod sb_flags {
    pub const COMPRESSION_NONE: u64 = 0x1;
    pub const COMPRESSION_LZ4: u64 = 0x2;
    pub const HASH_BLAKE3: u64 = 0x4;
    pub const HASH_SHA256: u64 = 0x8;
    pub const EXPLICIT_UID_GID: u64 = 0x10;
    pub const HAS_XATTR: u64 = 0x20;
    pub const COMPRESSION_GZIP: u64 = 0x40;
    pub const COMPRESSION_ZSTD: u64 = 0x80;
    pub const INLINED_CHUNK_DIGEST: u64 = 0x100;
    pub const TARTFS_MODE: u64 = 0x200;
    pub const ENCRYPTION_NONE: u64 = 0x0100_0000;
    pub const ENCRYPTION_AES_128_XTS: u64 = 0x0200_0000;
    pub const PRESERVED_COMPAT: u64 = 0xFC00_0000;
    pub const KNOWN: u64 = 0x3FF | ENCRYPTION_NONE | ENCRYPTION_AES_128_XTS | PRESERVED_COMPAT;
    pub const COMPRESSION_MASK: u64 = COMPRESSION_NONE | COMPRESSION_LZ4 | COMPRESSION_GZIP | COMPRESSION_ZSTD;
    pub const HASH_MASK: u64 = HASH_BLAKE3 | HASH_SHA256;
}

/// `BlobFeatures` bits (§6.1).
pub mod blob_features {
    pub const ALIGNED: u32 = 0x1;
    pub const INLINED_FS_META: u32 = 0x2;
    pub const CHUNK_INFO_V2: u32 = 0x4;
    pub const ZRAN: u32 = 0x8;
    pub const SEPARATE: u32 = 0x10;
    pub const INLINED_CHUNK_DIGEST: u32 = 0x20;
    pub const TARFS: u32 = 0x40;
    pub const BATCH: u32 = 0x80;
    pub const ENCRYPTED: u32 = 0x100;
    pub const IS_CHUNKDICT_GENERATED: u32 = 0x200;
    pub const EXTERNAL: u32 = 0x800;
    pub const HAS_TAR_HEADER: u32 = 0x1000_0000;
    pub const HAS_TOC: u32 = 0x2000_0000;
    pub const CAP_TAR_TOC: u32 = 0x4000_0000;
    pub const V5_NO_EXT_BLOB_TABLE: u32 = 0x8000_0000;
}

/// Per-chunk flags in the bootstrap chunk table (§1.7).
pub mod chunk_flags {
    pub const COMPRESSED: u32 = 0x1;
    pub const ENCRYPTED: u32 = 0x4;
    pub const BATCH: u32 = 0x8;
    pub const HAS_CRC32: u32 = 0x10;
}

/// EROFS inode data layouts (i_format bits 1..3).
pub mod inode_layout {
    pub const FLAT_PLAIN: u16 = 0;
    pub const FLAT_INLINE: u16 = 2;
    pub const CHUNK_BASED: u16 = 4;
}

/// Dirent file types (§3.1).
pub mod file_type {
    pub const UNKNOWN: u8 = 0;
    pub const REG: u8 = 1;
    pub const DIR: u8 = 2;
    pub const CHR: u8 = 3;
    pub const BLK: u8 = 4;
    pub const FIFO: u8 = 5;
    pub const SOCK: u8 = 6;
    pub const LNK: u8 = 7;
}

/// POSIX file-type bits of `st_mode`.
pub mod mode {
    pub const S_IFMT: u32 = 0o170000;
    pub const S_IFSOCK: u32 = 0o140000;
    pub const S_IFLNK: u32 = 0o120000;
    pub const S_IFREG: u32 = 0o100000;
    pub const S_IFBLK: u32 = 0o060000;
    pub const S_IFDIR: u32 = 0o040000;
    pub const S_IFCHR: u32 = 0o020000;
    pub const S_IFIFO: u32 = 0o010000;
}

/// The dirent file type that matches a `st_mode`.
pub fn file_type_of_mode(m: u32) -> u8 {
    match m & mode::S_IFMT {
        mode::S_IFREG => file_type::REG,
        mode::S_IFDIR => file_type::DIR,
        mode::S_IFCHR => file_type::CHR,
        mode::S_IFBLK => file_type::BLK,
        mode::S_IFIFO => file_type::FIFO,
        mode::S_IFSOCK => file_type::SOCK,
        mode::S_IFLNK => file_type::LNK,
        _ => file_type::UNKNOWN,
    }
}

/// Linux "new" 32-bit device number encoding used in `i_u` (§2.4); None when the numbers
/// do not fit (major > 4095 or minor > 2^20 - 1).
pub fn encode_rdev(major: u32, minor: u32) -> Option<u32> {
    (major <= 0xfff && minor <= 0xf_ffff).then_some((minor & 0xff) | (major << 8) | ((minor & !0xff) << 12))
}

pub fn decode_rdev(rdev: u32) -> (u32, u32) {
    let major = (rdev >> 8) & 0xfff;
    let minor = (rdev & 0xff) | ((rdev >> 12) & 0xfff00);
    (major, minor)
}
