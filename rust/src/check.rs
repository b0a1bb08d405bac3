//! `nydus-hybrid check`: every invariant of spec §9 over the bootstrap, and with blobs, every
//! chunk digest. Returns counts on success, or the first violation as `Error::Corrupt`.

use crate::error::{ensure, Result};
use crate::layout::bytes::round_up;
use crate::layout::inode::xattr_ibody_size;
use crate::layout::*;
use crate::reader::blob::{extract_section, read_toc};
use crate::reader::{Bootstrap, Rafs};
use crate::walk::{join, walk};
use std::collections::HashMap;

#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct CheckReport {
    pub inodes: u64,
    pub directories: u64,
    pub regular_files: u64,
    pub symlinks: u64,
    pub special_files: u64,
    pub chunk_refs: u64,
    pub blobs_checked: u64,
    pub chunks_verified: u64,
    pub bytes_verified: u64,
}

fn loc(path: &[Vec<u8>]) -> String {
    String::from_utf8_lossy(&join(path)).into_owned()
}

/// Check the bootstrap alone (and, if `with_blobs`, every blob it references).
pub fn check(rafs: &Rafs, with_blobs: bool) -> Result<CheckReport> {
    let boot = &rafs.boot;
    let mut rep = CheckReport::default();
    check_tables(boot)?;
    let chunk_map = boot.chunk_map()?;
    let mut dirent_links: HashMap<u64, u32> = HashMap::new();
    let mut nlinks: HashMap<u64, u32> = HashMap::new();
    let b = boot.block_size();

    walk(boot, |v| {
        let at = loc(&v.path);
        let ino = boot.inode(v.nid).map_err(|e| e.at(&at))?;
        ensure!(file_type_of_mode(ino.mode as u32) == v.file_type, "{at}: dirent type {} disagrees with inode mode {:o}", v.file_type, ino.mode);
        let _ = boot.xattrs(v.nid, &ino).map_err(|e| e.at(&at))?;
        *dirent_links.entry(v.nid).or_default() += 1;
        nlinks.insert(v.nid, ino.nlink);
        let isz = ino.core_size() as u64 + xattr_ibody_size(ino.xattr_icount) as u64;
        let first_visit = dirent_links[&v.nid] == 1;
        match ino.mode as u32 & mode::S_IFMT {
            mode::S_IFDIR => {
                rep.directories += 1;
                let ents = boot.readdir(v.nid).map_err(|e| e.at(&at))?;
                let names: Vec<&[u8]> = ents.iter().map(|e| e.name.as_slice()).collect();
                ensure!(names.windows(2).all(|w| w[0] < w[1]), "{at}: directory entries are not strictly sorted");
                let dot: Vec<_> = ents.iter().filter(|e| e.name == b".").collect();
                let dotdot: Vec<_> = ents.iter().filter(|e| e.name == b"..").collect();
                ensure!(dot.len() == 1 && dot[0].nid == v.nid, "{at}: '.' missing or not the directory itself");
                ensure!(dotdot.len() == 1 && dotdot[0].nid == v.parent, "{at}: '..' missing or not the parent");
                for e in &ents {
                    if e.name != b"." && e.name != b".." {
                        crate::layout::dirent::check_name(&e.name, &at)?;
                    }
                }
                ensure!(ino.size == crate::layout::dirent::packed_size(&names, b), "{at}: directory size {} does not match its entries", ino.size);
                let tail = ino.size % b;
                let inline = tail != 0 && isz + tail <= b;
                ensure!((ino.layout == inode_layout::FLAT_INLINE) == inline, "{at}: directory layout {} is not the one its size implies", ino.layout);
                let subdirs = ents.iter().filter(|e| e.file_type == file_type::DIR && e.name != b"." && e.name != b"..").count() as u32;
                ensure!(ino.nlink == 2 + subdirs, "{at}: nlink {} != 2 + {subdirs} subdirectories", ino.nlink);
            }
            mode::S_IFREG => {
                if first_visit {
                    rep.regular_files += 1;
                }
                let addrs = boot.chunk_addrs(v.nid, &ino).map_err(|e| e.at(&at))?;
                let cs = boot.chunk_size();
                for (i, a) in addrs.iter().enumerate() {
                    rep.chunk_refs += 1;
                    let blob = &boot.blobs[a.blob_index as usize];
                    ensure!(a.ci_index < blob.chunk_count, "{at}: chunk {i} index {} >= chunk count {}", a.ci_index, blob.chunk_count);
                    if !chunk_map.is_empty() {
                        let e = chunk_map.get(&(a.blob_index as u32, a.ci_index));
                        ensure!(e.is_some(), "{at}: chunk {i} is not in the chunk table");
                        let e = e.unwrap();
                        ensure!(e.uncompressed_offset == a.blkaddr as u64 * b, "{at}: chunk {i} block address disagrees with the chunk table");
                        let want = (ino.size - i as u64 * cs).min(cs);
                        ensure!(e.uncompressed_size as u64 == want, "{at}: chunk {i} size {} != {want}", e.uncompressed_size);
                    }
                }
            }
            mode::S_IFLNK => {
                rep.symlinks += 1;
                ensure!(ino.size > 0 && ino.size <= MAX_SYMLINK_LEN, "{at}: symlink length {}", ino.size);
                boot.readlink(v.nid).map_err(|e| e.at(&at))?;
            }
            _ => {
                rep.special_files += 1;
                ensure!(ino.layout == inode_layout::FLAT_PLAIN, "{at}: special file with a data layout");
            }
        }
        if first_visit {
            rep.inodes += 1;
        }
        Ok(())
    })?;
    for (nid, count) in &dirent_links {
        let ino = boot.inode(*nid)?;
        if ino.mode as u32 & mode::S_IFMT == mode::S_IFREG {
            ensure!(nlinks[nid] == *count, "nid {nid}: nlink {} but {count} directory entries", nlinks[nid]);
        } else if ino.mode as u32 & mode::S_IFMT != mode::S_IFDIR {
            ensure!(*count == 1, "nid {nid}: non-regular inode linked {count} times");
        }
    }
    let entries: u64 = dirent_links.values().map(|&c| c as u64).sum();
    ensure!(boot.sb.inos == entries, "superblock counts {} inodes, the tree has {entries} entries", boot.sb.inos);
    for nid in boot.prefetch_nids()? {
        boot.inode(nid as u64)?;
    }
    if with_blobs {
        check_blobs(rafs, &mut rep)?;
    }
    Ok(rep)
}

/// Cross-table invariants: device slots vs blob table, block counts, chunk-table order.
fn check_tables(boot: &Bootstrap) -> Result<()> {
    let b = boot.block_size();
    let mut blocks = 0u64;
    for (i, (blob, dev)) in boot.blobs.iter().zip(&boot.devices).enumerate() {
        ensure!(blob.blob_id == dev.blob_id, "blob {i}: device slot id {} != blob table id {}", dev.blob_id, blob.blob_id);
        ensure!(blob.uncompressed_size % b == 0, "blob {i}: uncompressed size is not block aligned");
        ensure!(dev.blocks as u64 == blob.uncompressed_size / b, "blob {i}: device blocks {} != size / block", dev.blocks);
        blocks += dev.blocks as u64;
    }
    ensure!(boot.sb.blocks as u64 == blocks || boot.blobs.is_empty(), "superblock blocks {} != sum of device blocks {blocks}", boot.sb.blocks);
    let table = boot.chunk_table()?;
    ensure!(table.windows(2).all(|w| (w[0].digest, w[0].blob_index) <= (w[1].digest, w[1].blob_index)), "chunk table is not sorted by (digest, blob)");
    for e in &table {
        ensure!((e.blob_index as usize) < boot.blobs.len(), "chunk table names blob {}", e.blob_index);
        ensure!(e.index < boot.blobs[e.blob_index as usize].chunk_count, "chunk table index {} out of range", e.index);
    }
    Ok(())
}

fn check_blobs(rafs: &Rafs, rep: &mut CheckReport) -> Result<()> {
    let boot = &rafs.boot;
    let map = boot.chunk_map()?;
    for (bi, entry) in boot.blobs.iter().enumerate() {
        let blob = rafs.blob(bi)?;
        let id = &entry.blob_id;
        if entry.has(blob_features::HAS_TOC) {
            for e in read_toc(blob.src.as_ref(), Some(entry))? {
                // image.blob's digest and offset differ between builder generations (ERRATA E3).
                if e.name != "image.blob" {
                    extract_section(blob.src.as_ref(), &e, 1 << 32)?;
                }
            }
        }
        let mut expect_uoff = 0u64;
        for (ci, c) in blob.chunks.iter().enumerate() {
            let ci = ci as u32;
            ensure!(c.uncompressed_offset == expect_uoff || ci == 0 && c.uncompressed_offset == 0, "blob {id}: chunk {ci} is not packed after its predecessor");
            expect_uoff = round_up(c.uncompressed_end(), 4096);
            let table = map.get(&(bi as u32, ci));
            if let Some(t) = table {
                ensure!(
                    t.compressed_offset == c.compressed_offset
                        && t.compressed_size == c.compressed_size
                        && t.uncompressed_offset == c.uncompressed_offset
                        && t.uncompressed_size == c.uncompressed_size,
                    "blob {id}: chunk {ci} disagrees between the chunk table and blob meta"
                );
                if let Some(d) = &blob.digests {
                    ensure!(d[ci as usize] == t.digest, "blob {id}: chunk {ci} digest differs between blob.digest and the chunk table");
                }
            }
            let data = blob.read_chunk_direct(ci, table.map(|t| &t.digest), true)?;
            // A zero CRC with the flag set: nydus-image 2.2's merge keeps a layer's flags but
            // has no CRC field, so it writes 0 (the digest above still covers the chunk).
            if let Some(t) = table.filter(|t| t.flags & chunk_flags::HAS_CRC32 != 0 && t.crc32 != 0) {
                ensure!(crate::codec::crc32c(&data) == t.crc32, "blob {id}: chunk {ci} CRC-32C mismatch");
            }
            rep.chunks_verified += 1;
            rep.bytes_verified += data.len() as u64;
        }
        ensure!(expect_uoff == entry.uncompressed_size, "blob {id}: uncompressed size {} != end of last chunk {expect_uoff}", entry.uncompressed_size);
        rep.blobs_checked += 1;
    }
    Ok(())
}
