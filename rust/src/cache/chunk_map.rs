//! `<blob_id>.chunk_map`: which chunks of a blob the cache holds, in the layout nydusd's
//! blob cache uses (its indexed chunk map), so that either daemon can take over a cache
//! directory the other filled:
//!
//! * a 4096-byte header: `u32` magic `0x424D4150`, `u32` version 1, `u32` second magic
//!   `0x434D4150`, `u32` all-ready flag (`0x4D4D4150` once every chunk is cached, else 0),
//!   the rest zero; little-endian;
//! * then one bit per chunk, numbered by the chunk's index in its blob: chunk `n` is the bit
//!   `0x80 >> (n % 8)` of byte `4096 + n / 8`; the bits past the last chunk stay zero. The
//!   file is exactly `4096 + ceil(chunks / 8)` bytes.
//!
//! The file is mapped shared and bits are set with atomic byte operations, so threads (and
//! a second process on the same files) never lose each other's updates, and asking whether
//! a chunk is ready costs no system call.

use crate::error::{Error, IoContext, Result};
use memmap2::MmapMut;
use std::fs::File;
use std::sync::atomic::Ordering::{AcqRel, Acquire, Release};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU8};

pub const HEADER_SIZE: u64 = 4096;
const MAGIC: u32 = 0x424D_4150;
const VERSION: u32 = 1;
const MAGIC2: u32 = 0x434D_4150;
const ALL_READY: u32 = 0x4D4D_4150;

/// The map's file size for `chunks` chunks.
pub fn file_size(chunks: u32) -> u64 {
    HEADER_SIZE + (chunks as u64).div_ceil(8)
}

pub struct ChunkMap {
    map: MmapMut,
    chunks: u32,
    /// The header's all-ready flag is set: every chunk counts as cached.
    all_ready: AtomicBool,
}

/// What the file holds, read before it is trusted.
enum Found {
    Usable {
        all_ready: bool,
    },
    /// Empty, all zeros (a writer died before its header), or not a map of this layout.
    Fresh,
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}

fn inspect(map: &[u8]) -> Found {
    let (magic, version, magic2, ready) = (u32_at(map, 0), u32_at(map, 4), u32_at(map, 8), u32_at(map, 12));
    // Version 0 maps (the first magic only) have the same bitmap and no flag.
    if magic == MAGIC && (version == 0 || (version == VERSION && magic2 == MAGIC2)) {
        return Found::Usable { all_ready: version >= 1 && ready == ALL_READY };
    }
    Found::Fresh
}

impl ChunkMap {
    /// Map `file` for a blob of `chunks` chunks. With `reset`, or when the file is not a
    /// usable map of exactly that size, it starts over with no chunk cached.
    pub fn open(file: &File, chunks: u32, reset: bool) -> Result<ChunkMap> {
        let size = file_size(chunks);
        let len = file.metadata().ctx(|| "stat chunk map".into())?.len();
        if len != size {
            file.set_len(0).ctx(|| "reset chunk map".into())?;
            file.set_len(size).ctx(|| "size chunk map".into())?;
        }
        // SAFETY: the mapping is only read and written through atomics (bitmap) or while
        // no other thread of ours holds it (header, here); another process changing the
        // file concurrently can at worst make a bit look unset, which costs a refetch.
        let mut map = unsafe { MmapMut::map_mut(file) }.ctx(|| "map chunk map".into())?;
        let found = if reset || len != size { Found::Fresh } else { inspect(&map) };
        let all_ready = match found {
            Found::Usable { all_ready } => all_ready,
            Found::Fresh => {
                map[HEADER_SIZE as usize..].fill(0);
                map[..HEADER_SIZE as usize].fill(0);
                map[0..4].copy_from_slice(&MAGIC.to_le_bytes());
                map[4..8].copy_from_slice(&VERSION.to_le_bytes());
                map[8..12].copy_from_slice(&MAGIC2.to_le_bytes());
                map.flush().ctx(|| "write chunk map header".into())?;
                false
            }
        };
        let m = ChunkMap { map, chunks, all_ready: AtomicBool::new(all_ready) };
        if !all_ready && chunks > 0 && m.ready_count() == chunks as u64 {
            m.flag().store(ALL_READY.to_le(), Release); // as nydusd does when it opens a complete map
            m.all_ready.store(true, Release);
        }
        Ok(m)
    }

    fn flag(&self) -> &AtomicU32 {
        // SAFETY: bytes 12..16 of a page-aligned mapping: in bounds and 4-byte aligned.
        unsafe { &*(self.map.as_ptr().add(12) as *const AtomicU32) }
    }

    fn byte(&self, ci: u32) -> Result<(&AtomicU8, u8)> {
        if ci >= self.chunks {
            return Err(Error::corrupt(format!("chunk {ci} is past the {} chunks of the blob", self.chunks)));
        }
        let at = HEADER_SIZE as usize + (ci / 8) as usize;
        let p = &self.map[at] as *const u8 as *const AtomicU8;
        // SAFETY: `at` is inside the mapping (its size is checked at open), AtomicU8 has the
        // layout of u8, and the mapping lives as long as `self`.
        Ok((unsafe { &*p }, 0x80 >> (ci % 8)))
    }

    pub fn is_ready(&self, ci: u32) -> Result<bool> {
        let (b, mask) = self.byte(ci)?;
        Ok(self.all_ready.load(Acquire) || b.load(Acquire) & mask != 0)
    }

    pub fn set_ready(&self, ci: u32) -> Result<()> {
        let (b, mask) = self.byte(ci)?;
        b.fetch_or(mask, AcqRel);
        Ok(())
    }

    /// Forget a chunk (its cached bytes failed validation). An all-ready map first becomes
    /// an ordinary one with every bit set, so no other chunk is forgotten with it.
    pub fn set_unready(&self, ci: u32) -> Result<()> {
        let (b, mask) = self.byte(ci)?;
        if self.all_ready.load(Acquire) {
            for n in 0..self.chunks {
                self.set_ready(n)?;
            }
            self.flag().store(0, Release);
            self.all_ready.store(false, Release);
        }
        b.fetch_and(!mask, AcqRel);
        Ok(())
    }

    pub fn ready_count(&self) -> u64 {
        if self.all_ready.load(Acquire) {
            return self.chunks as u64;
        }
        let bits = &self.map[HEADER_SIZE as usize..];
        let full = (self.chunks / 8) as usize;
        let mut n: u64 = bits[..full].iter().map(|b| b.count_ones() as u64).sum();
        if self.chunks % 8 != 0 {
            let keep = 0xFFu8 << (8 - self.chunks % 8); // padding bits never count
            n += (bits[full] & keep).count_ones() as u64;
        }
        n
    }

    pub fn chunks(&self) -> u32 {
        self.chunks
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp(name: &str) -> (std::path::PathBuf, File) {
        let p = std::env::temp_dir().join(format!("chunkmap-{}-{name}", std::process::id()));
        let f = std::fs::OpenOptions::new().read(true).write(true).create(true).truncate(true).open(&p).unwrap();
        (p, f)
    }

    #[test]
    fn layout_is_nydusds() {
        let (p, f) = temp("layout");
        let m = ChunkMap::open(&f, 11, false).unwrap();
        m.set_ready(0).unwrap();
        m.set_ready(9).unwrap();
        drop(m);
        let b = std::fs::read(&p).unwrap();
        assert_eq!(b.len(), 4096 + 2);
        assert_eq!(&b[0..4], &0x424D_4150u32.to_le_bytes());
        assert_eq!(u32_at(&b, 4), 1);
        assert_eq!(u32_at(&b, 8), 0x434D_4150);
        assert_eq!(u32_at(&b, 12), 0);
        assert!(b[16..4096].iter().all(|&x| x == 0));
        assert_eq!(b[4096], 0x80);
        assert_eq!(b[4097], 0x40);
        std::fs::remove_file(p).unwrap();
    }

    #[test]
    fn reopen_keeps_bits_and_completes() {
        let (p, f) = temp("reopen");
        let m = ChunkMap::open(&f, 3, false).unwrap();
        for ci in 0..3 {
            assert!(!m.is_ready(ci).unwrap());
            m.set_ready(ci).unwrap();
        }
        assert!(m.set_ready(3).is_err());
        drop(m);
        let m = ChunkMap::open(&f, 3, false).unwrap();
        assert_eq!(m.ready_count(), 3);
        assert_eq!(u32_at(&std::fs::read(&p).unwrap(), 12), ALL_READY);
        drop(m);
        let m = ChunkMap::open(&f, 3, false).unwrap();
        m.set_unready(1).unwrap();
        assert_eq!(m.ready_count(), 2);
        assert!(!m.is_ready(1).unwrap() && m.is_ready(2).unwrap());
        std::fs::remove_file(p).unwrap();
    }

    #[test]
    fn bad_files_start_over() {
        let (p, f) = temp("bad");
        // the old one-byte-per-chunk format, a wrong size and a wrong magic
        std::fs::write(&p, [1u8; 8]).unwrap();
        assert_eq!(ChunkMap::open(&f, 8, false).unwrap().ready_count(), 0);
        let mut junk = vec![0xFFu8; file_size(8) as usize];
        junk[0] = 0;
        std::fs::write(&p, &junk).unwrap();
        assert_eq!(ChunkMap::open(&f, 8, false).unwrap().ready_count(), 0);
        assert_eq!(std::fs::read(&p).unwrap().len() as u64, file_size(8));
        std::fs::remove_file(p).unwrap();
    }

    #[test]
    fn padding_bits_do_not_count() {
        let (p, f) = temp("pad");
        drop(ChunkMap::open(&f, 3, false).unwrap());
        let mut b = std::fs::read(&p).unwrap();
        b[4096] = 0xFF; // three chunks and five stray padding bits
        std::fs::write(&p, &b).unwrap();
        let m = ChunkMap::open(&f, 3, false).unwrap();
        assert_eq!(m.ready_count(), 3);
        drop(m);
        std::fs::remove_file(p).unwrap();
    }
}
