//! Laying out and writing the bootstrap (spec Appendix A): index assignment (A.2), inode
//! placement with the reference's free-space pool (A.3), then inodes, xattrs, directory
//! blocks, chunk indexes, the chunk table and the superblocks (A.4).

use super::chunker::StoredChunk;
use super::tree::{NodeId, Tree, ROOT};
use crate::error::{Error, Result};
use crate::layout::bytes::round_up;
use crate::layout::chunk_table::ChunkTableEntry;
use crate::layout::dirent::{encode_block, DIRENT_SIZE};
use crate::layout::inode::{encode_xattrs, xattrs_size, ChunkAddr, Inode, CHUNK_FORMAT_INDEXES, EXTENDED_SIZE};
use crate::layout::superblock::{BlobEntry, DeviceSlot, ErofsSuper, ExtSuper, FEATURE_COMPAT_RAFS_V6};
use crate::layout::*;
use std::collections::{HashMap, VecDeque};

const B: u64 = BLOCK_SIZE;

pub struct BootstrapOptions {
    pub chunk_size: u32,
    pub compressor: Compressor,
    pub digester: Digester,
    pub explicit_uid_gid: bool,
    /// `--prefetch-policy fs`: the patterns (absolute image paths) for the prefetch table.
    pub prefetch: Vec<Vec<u8>>,
}

/// The prefetch table (§1.6) as nydus-image writes it: the nid of each pattern that names a
/// path, in input order, without repeats; blank patterns are ignored; when patterns were
/// given but none matched, one 0 entry (readers stop there). `nid_of` maps a node.
fn prefetch_table(tree: &Tree, patterns: &[Vec<u8>], nid_of: &dyn Fn(NodeId) -> u64) -> Vec<u32> {
    let mut nids: Vec<u32> = Vec::new();
    let mut given = false;
    for pat in patterns {
        let parts: Vec<&[u8]> = pat.split(|&b| b == b'/').filter(|p| !p.is_empty() && *p != b".").collect();
        if parts.is_empty() && !pat.starts_with(b"/") {
            continue; // blank
        }
        given = true;
        if !pat.starts_with(b"/") {
            continue; // relative: matches nothing
        }
        let mut id = ROOT;
        let found = parts.iter().all(|name| match tree.nodes[id].children.iter().find(|&&c| tree.nodes[c].name == *name) {
            Some(&c) => {
                id = c;
                true
            }
            None => false,
        });
        let nid = nid_of(id) as u32;
        if found && !nids.contains(&nid) {
            nids.push(nid);
        }
    }
    if given && nids.is_empty() {
        nids.push(0);
    }
    nids
}

/// Per-node layout decisions.
#[derive(Clone, Copy, Default)]
struct Placed {
    index: u32,
    off: u64,
    data_off: u64,
    nlink: u32,
    /// The node whose inode this one shares (hard links), or itself.
    primary: NodeId,
}

/// The reference's free-space pool: queues of partly used blocks by free 32-byte units.
struct Pool {
    queues: Vec<VecDeque<u64>>,
}

impl Pool {
    fn new() -> Self {
        Pool { queues: vec![VecDeque::new(); (B / 32) as usize] }
    }
    fn remember(&mut self, pos: u64) {
        if pos % B != 0 {
            let free = B - pos % B;
            self.queues[(free / 32) as usize].push_back(pos - pos % B);
        }
    }
    fn take(&mut self, size: u64) -> Option<u64> {
        if size >= B {
            return None;
        }
        let lo = size.div_ceil(32);
        for f in lo..B.div_ceil(32) {
            if let Some(b) = self.queues[f as usize].pop_front() {
                let r = b + B - 32 * f;
                self.remember(r + 32 * lo);
                return Some(r);
            }
        }
        None
    }
}

/// Directory data bytes (§3.3): entries including `.` and `..`, sorted by name.
fn dir_entries(tree: &Tree, id: NodeId) -> Vec<(&[u8], NodeId)> {
    let n = &tree.nodes[id];
    let parent = if id == ROOT { ROOT } else { n.parent };
    let mut v: Vec<(&[u8], NodeId)> = vec![(b".", id), (b"..", parent)];
    v.extend(n.children.iter().map(|&c| (tree.nodes[c].name.as_slice(), c)));
    v.sort_by(|a, b| a.0.cmp(b.0));
    v
}

fn dir_size(entries: &[(&[u8], NodeId)]) -> u64 {
    let names: Vec<&[u8]> = entries.iter().map(|e| e.0).collect();
    crate::layout::dirent::packed_size(&names, B)
}

pub struct Layout {
    pub order: Vec<NodeId>,
    placed: HashMap<NodeId, Placed>,
    dir_sizes: HashMap<NodeId, u64>,
    end: u64,
    pub inos: u64,
}

fn isz(tree: &Tree, id: NodeId) -> u64 {
    (EXTENDED_SIZE + xattrs_size(&tree.nodes[id].xattrs)) as u64
}

/// A.2 + A.3: assign indexes, hard-link groups, nlink, and pre-shift offsets.
pub fn plan(tree: &Tree, chunk_size: u32) -> Layout {
    let mut placed: HashMap<NodeId, Placed> = HashMap::new();
    let mut order = Vec::with_capacity(tree.nodes.len());
    let mut dir_sizes = HashMap::new();
    let mut groups: HashMap<u64, NodeId> = HashMap::new();
    let mut group_members: HashMap<NodeId, Vec<NodeId>> = HashMap::new();
    let mut pool = Pool::new();
    let mut cur: u64 = 4096;
    let mut next: u32 = 1;

    let place_flat = |cur: &mut u64, pool: &mut Pool, isz: u64, d: u64| -> (u64, u64) {
        let tail = d % B;
        let (off, data_off);
        if tail != 0 && isz + tail <= B {
            let need = isz + tail;
            off = match pool.take(need) {
                Some(o) => o,
                None => {
                    if B - *cur % B < need {
                        pool.remember(*cur);
                        *cur = round_up(*cur, B);
                    }
                    let o = *cur;
                    *cur += need;
                    o
                }
            };
            if d != tail {
                pool.remember(*cur);
                *cur = round_up(*cur, B);
            }
            data_off = *cur;
            *cur += d - tail;
        } else {
            off = match pool.take(isz) {
                Some(o) => o,
                None => {
                    let o = *cur;
                    *cur += isz;
                    o
                }
            };
            pool.remember(*cur);
            *cur = round_up(*cur, B);
            data_off = *cur;
            *cur += d;
            *cur = round_up(*cur, B);
        }
        *cur = round_up(*cur, 32);
        (off, data_off)
    };

    // Depth-first over directories with an explicit stack, so any depth works.
    placed.insert(ROOT, Placed { index: next, primary: ROOT, ..Default::default() });
    next += 1;
    let mut stack = vec![ROOT];
    while let Some(dir) = stack.pop() {
        order.push(dir);
        let ents = dir_entries(tree, dir);
        let d = dir_size(&ents);
        dir_sizes.insert(dir, d);
        let (off, data_off) = place_flat(&mut cur, &mut pool, isz(tree, dir), d);
        let p = placed.get_mut(&dir).unwrap();
        p.off = off;
        p.data_off = data_off;
        p.nlink = 2 + tree.nodes[dir].children.iter().filter(|&&c| tree.nodes[c].is_dir()).count() as u32;

        let mut subdirs = Vec::new();
        for &c in &tree.nodes[dir].children {
            let node = &tree.nodes[c];
            let mut pl = Placed { index: next, primary: c, nlink: 1, ..Default::default() };
            next += 1;
            if node.is_dir() {
                placed.insert(c, pl);
                subdirs.push(c);
                continue;
            }
            order.push(c);
            let size = isz(tree, c);
            if node.is_reg() {
                if let Some(&first) = node.link_key.and_then(|k| groups.get(&k)) {
                    let fp = placed[&first];
                    pl.primary = first;
                    pl.off = fp.off;
                    group_members.get_mut(&first).unwrap().push(c);
                    placed.insert(c, pl);
                    continue;
                }
                if let Some(k) = node.link_key {
                    groups.insert(k, c);
                    group_members.insert(c, vec![c]);
                }
                let count = node.size.div_ceil(chunk_size as u64);
                let need = round_up(size, 8) + 8 * count;
                pl.off = match pool.take(need) {
                    Some(o) => o,
                    None => {
                        let o = cur;
                        cur += need;
                        o
                    }
                };
                cur = round_up(cur, 32);
            } else if node.kind() == mode::S_IFLNK {
                let (off, data_off) = place_flat(&mut cur, &mut pool, size, node.symlink.len() as u64);
                pl.off = off;
                pl.data_off = data_off;
            } else {
                pl.off = cur;
                cur += size;
                cur = round_up(cur, 32);
            }
            placed.insert(c, pl);
        }
        for d in subdirs.into_iter().rev() {
            stack.push(d);
        }
    }
    for (first, members) in group_members {
        let n = members.len() as u32;
        let first_index = placed[&first].index;
        for m in members {
            let p = placed.get_mut(&m).unwrap();
            p.nlink = n;
            p.index = first_index;
        }
    }
    Layout { order, placed, dir_sizes, end: cur, inos: (next - 1) as u64 }
}

/// Everything the writer needs from the data phase: the blob table, and every chunk the
/// tree's files name (`Node::chunks` are positions in `chunks`), with where each lives.
pub struct BlobPart<'a> {
    pub entries: Vec<BlobEntry>,
    pub chunks: &'a [StoredChunk],
    pub places: &'a [ChunkPlace],
}

/// A chunk's blob-table index, CI index in that blob, and chunk-table flags.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ChunkPlace {
    pub blob_index: u32,
    pub ci_index: u32,
    pub flags: u32,
}

/// The places of a one-blob build's chunks: blob 0, in CI order, with a CRC each.
pub fn single_blob_places(chunks: &[StoredChunk]) -> Vec<ChunkPlace> {
    let flags = |c: &StoredChunk| chunk_flags::HAS_CRC32 | if c.compressed { chunk_flags::COMPRESSED } else { 0 };
    chunks.iter().enumerate().map(|(i, c)| ChunkPlace { blob_index: 0, ci_index: i as u32, flags: flags(c) }).collect()
}

/// Write the complete bootstrap image into memory.
pub fn write(tree: &Tree, layout: &Layout, blob: &BlobPart, opts: &BootstrapOptions) -> Result<Vec<u8>> {
    let n_blobs = blob.entries.len() as u64;
    if n_blobs as usize > MAX_BLOBS {
        return Err(Error::Unsupported(format!("{n_blobs} blobs: RAFS v6 holds at most {MAX_BLOBS}")));
    }
    // nids come from pre-shift offsets (§1.8): the inode lives at meta_blkaddr·B + 32·nid.
    let nid_of = |id: NodeId| layout.placed[&layout.placed[&id].primary].off / 32;
    let prefetch = prefetch_table(tree, &opts.prefetch, &nid_of);
    let t = round_up(DEVSLOT_OFFSET as u64 + DEVSLOT_SIZE as u64 * n_blobs, B);
    // The prefetch table follows the blob table; the metadata area starts after both.
    let prefetch_offset = t + BLOB_ENTRY_SIZE as u64 * n_blobs;
    let tables_end = prefetch_offset + 4 * prefetch.len() as u64;
    let shift = if tables_end > t { round_up(tables_end, B) } else { 0 };
    let meta_end = shift + round_up(layout.end, B);
    if (meta_end / B) > u32::MAX as u64 || shift / B > u32::MAX as u64 {
        return Err(Error::Unsupported("metadata area exceeds 2^32 blocks".into()));
    }
    let mut img = vec![0u8; meta_end as usize];
    for (i, nid) in prefetch.iter().enumerate() {
        let at = prefetch_offset as usize + 4 * i;
        img[at..at + 4].copy_from_slice(&nid.to_le_bytes());
    }
    let mut any_xattr = false;
    let cs = opts.chunk_size as u64;

    for &id in &layout.order {
        let node = &tree.nodes[id];
        let p = layout.placed[&id];
        if p.primary != id {
            continue; // hard link: the primary's inode is written once
        }
        any_xattr |= !node.xattrs.is_empty();
        let (xbody, icount) = encode_xattrs(&node.xattrs);
        let isz = EXTENDED_SIZE + xbody.len();
        let at = (p.off + shift) as usize;
        let mut ino = Inode {
            extended: true,
            layout: inode_layout::FLAT_PLAIN,
            xattr_icount: icount,
            mode: node.mode as u16,
            nlink: p.nlink,
            size: 0,
            i_u: 0,
            ino: p.index,
            uid: if opts.explicit_uid_gid { node.uid } else { 0 },
            gid: if opts.explicit_uid_gid { node.gid } else { 0 },
            mtime: node.mtime,
            mtime_nsec: node.mtime_nsec,
        };
        let flat_data: Option<Vec<u8>> = match node.kind() {
            mode::S_IFDIR => {
                let ents = dir_entries(tree, id);
                let mut data = Vec::new();
                let mut block: Vec<(u64, u8, &[u8])> = Vec::new();
                let mut used = 0usize;
                for (name, target) in &ents {
                    let len = DIRENT_SIZE + name.len();
                    if used + len > B as usize {
                        encode_block(&block, &mut data);
                        data.resize(round_up(data.len() as u64, B) as usize, 0);
                        block.clear();
                        used = 0;
                    }
                    block.push((nid_of(*target), file_type_of_mode(tree.nodes[*target].mode), name));
                    used += len;
                }
                encode_block(&block, &mut data);
                debug_assert_eq!(data.len() as u64, layout.dir_sizes[&id]);
                Some(data)
            }
            mode::S_IFLNK => Some(node.symlink.clone()),
            mode::S_IFREG => None,
            _ => {
                ino.i_u = node.rdev;
                None
            }
        };
        if let Some(data) = &flat_data {
            let d = data.len() as u64;
            let tail = d % B;
            ino.size = d;
            ino.i_u = ((p.data_off + shift) / B) as u32;
            let full = (d - tail) as usize;
            if tail != 0 && isz as u64 + tail <= B {
                ino.layout = inode_layout::FLAT_INLINE;
                let ds = (p.data_off + shift) as usize;
                img[ds..ds + full].copy_from_slice(&data[..full]);
                img[at + isz..at + isz + tail as usize].copy_from_slice(&data[full..]);
            } else {
                let ds = (p.data_off + shift) as usize;
                img[ds..ds + data.len()].copy_from_slice(data);
            }
        }
        if node.is_reg() {
            ino.layout = inode_layout::CHUNK_BASED;
            ino.size = node.size;
            let addrs: Vec<(ChunkPlace, u64)> = node.chunks.iter().map(|&i| (blob.places[i as usize], blob.chunks[i as usize].uncompressed_offset)).collect();
            let contiguous = addrs.len() > 1 && addrs.windows(2).all(|w| w[1].1 == w[0].1 + cs && w[1].0.blob_index == w[0].0.blob_index);
            let span = if contiguous { node.size.next_power_of_two() } else { cs };
            let chunkbits = span.trailing_zeros() - B.trailing_zeros();
            ino.i_u = CHUNK_FORMAT_INDEXES | chunkbits;
            let mut pos = at + round_up(isz as u64, 8) as usize;
            for (place, uoff) in addrs {
                let a = ChunkAddr { blob_index: place.blob_index as u8, ci_index: place.ci_index, blkaddr: (uoff / B) as u32 };
                img[pos..pos + 8].copy_from_slice(&a.encode());
                pos += 8;
            }
        }
        img[at..at + EXTENDED_SIZE].copy_from_slice(&ino.encode_extended());
        img[at + EXTENDED_SIZE..at + isz].copy_from_slice(&xbody);
    }

    // Chunk table: one entry per distinct chunk, sorted by (digest, blob index); the file
    // offset is that of the last file chunk referencing it in dump order (§1.7).
    let mut file_offsets = vec![0u64; blob.chunks.len()];
    for &id in &layout.order {
        let node = &tree.nodes[id];
        if node.is_reg() && layout.placed[&id].primary == id {
            for (i, &ci) in node.chunks.iter().enumerate() {
                file_offsets[ci as usize] = i as u64 * cs;
            }
        }
    }
    let mut table: Vec<ChunkTableEntry> = blob
        .chunks
        .iter()
        .enumerate()
        .map(|(i, c)| ChunkTableEntry {
            digest: c.digest,
            blob_index: blob.places[i].blob_index,
            flags: blob.places[i].flags,
            compressed_size: c.compressed_size,
            uncompressed_size: c.uncompressed_size,
            compressed_offset: c.compressed_offset,
            uncompressed_offset: c.uncompressed_offset,
            file_offset: file_offsets[i],
            index: blob.places[i].ci_index,
            crc32: c.crc32,
        })
        .collect();
    table.sort_by_key(|e| (e.digest, e.blob_index));
    let chunk_table_offset = img.len() as u64;
    for e in &table {
        img.extend_from_slice(&e.encode());
    }
    img.resize(round_up(img.len() as u64, B) as usize, 0);
    let boot_len = img.len() as u64;

    // Device slot, blob table, superblocks.
    // Each blob's place if the image were flattened into one disk (§1.4, HEAD's rule).
    let mut total_blocks = 0u64;
    let mut pos = boot_len;
    for (i, entry) in blob.entries.iter().enumerate() {
        let blocks = entry.uncompressed_size / B;
        if blocks > u32::MAX as u64 {
            return Err(Error::Unsupported("blob larger than 16 TiB".into()));
        }
        total_blocks += blocks;
        let mapped = round_up(pos, 0x8_0000) / B;
        pos = (mapped + blocks) * B;
        // A bootstrap inside its own blob is never mounted as it is (it is merged first):
        // no mapping, as the reference writes it.
        let inline = entry.features & crate::layout::blob_features::INLINED_FS_META != 0;
        let slot = DeviceSlot { blob_id: entry.blob_id.clone(), blocks: blocks as u32, mapped_blkaddr: if inline { 0 } else { mapped as u32 } };
        let (ds, bt) = (DEVSLOT_OFFSET + DEVSLOT_SIZE * i, t as usize + BLOB_ENTRY_SIZE * i);
        img[ds..ds + DEVSLOT_SIZE].copy_from_slice(&slot.encode());
        let entry = BlobEntry { blob_index: i as u32, ..entry.clone() };
        img[bt..bt + BLOB_ENTRY_SIZE].copy_from_slice(&entry.encode());
    }
    if total_blocks > u32::MAX as u64 {
        return Err(Error::Unsupported("blobs larger than 16 TiB in all".into()));
    }
    let comp_flag = match opts.compressor {
        Compressor::None => sb_flags::COMPRESSION_NONE,
        Compressor::Lz4Block => sb_flags::COMPRESSION_LZ4,
        Compressor::Gzip => sb_flags::COMPRESSION_GZIP,
        Compressor::Zstd => sb_flags::COMPRESSION_ZSTD,
    };
    let hash_flag = match opts.digester {
        Digester::Blake3 => sb_flags::HASH_BLAKE3,
        Digester::Sha256 => sb_flags::HASH_SHA256,
    };
    let mut flags = comp_flag | hash_flag | sb_flags::ENCRYPTION_NONE;
    // Set when every blob carries its chunk digests (so also for none).
    if blob.entries.iter().all(|e| e.features & crate::layout::blob_features::INLINED_CHUNK_DIGEST != 0) {
        flags |= sb_flags::INLINED_CHUNK_DIGEST;
    }
    if opts.explicit_uid_gid {
        flags |= sb_flags::EXPLICIT_UID_GID;
    }
    if any_xattr {
        flags |= sb_flags::HAS_XATTR;
    }
    let sb = ErofsSuper {
        feature_compat: FEATURE_COMPAT_RAFS_V6,
        blkszbits: 12,
        root_nid: ROOT_NID as u16,
        inos: layout.inos,
        blocks: total_blocks as u32,
        meta_blkaddr: (shift / B) as u32,
        extra_devices: n_blobs as u16,
    };
    let ext = ExtSuper {
        flags,
        blob_table_offset: t,
        blob_table_size: (BLOB_ENTRY_SIZE as u64 * n_blobs) as u32,
        chunk_size: opts.chunk_size,
        chunk_table_offset: if table.is_empty() { 0 } else { chunk_table_offset },
        chunk_table_size: (table.len() * CHUNK_TABLE_ENTRY_SIZE) as u64,
        prefetch_table_offset: if prefetch.is_empty() { 0 } else { prefetch_offset },
        prefetch_table_size: 4 * prefetch.len() as u32,
    };
    img[EROFS_SB_OFFSET..EROFS_SB_OFFSET + ErofsSuper::SIZE].copy_from_slice(&sb.encode());
    img[EXT_SB_OFFSET..EXT_SB_OFFSET + ExtSuper::SIZE].copy_from_slice(&ext.encode());
    Ok(img)
}
