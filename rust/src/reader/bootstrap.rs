//! The metadata side of a RAFS v6 image: superblocks, blob table, inodes, directories,
//! xattrs and chunk indexes, read from an mmap of the bootstrap. Every offset taken from the
//! image is bounds-checked before use; a bad image yields `Error::Corrupt`, never a panic.

use crate::error::{ensure, Error, IoContext, Result};
use crate::layout::bytes::u32_at;
use crate::layout::chunk_table::ChunkTableEntry;
use crate::layout::dirent;
use crate::layout::inode::{decode_xattrs, ChunkAddr, Inode, CHUNK_ADDR_SIZE};
use crate::layout::superblock::{BlobEntry, DeviceSlot, ErofsSuper, ExtSuper};
use crate::layout::*;
use std::collections::HashMap;
use std::ops::Deref;
use std::path::Path;
use std::sync::OnceLock;

enum Data {
    Mapped(memmap2::Mmap),
    Owned(Vec<u8>),
}

impl Deref for Data {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            Data::Mapped(m) => m,
            Data::Owned(v) => v,
        }
    }
}

/// One directory entry, owned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DirEntry {
    pub name: Vec<u8>,
    pub nid: u64,
    pub file_type: u8,
}

/// Chunk table entries by (blob index, CI index).
type ChunkMap = HashMap<(u32, u32), ChunkTableEntry>;

pub struct Bootstrap {
    data: Data,
    pub sb: ErofsSuper,
    pub ext: ExtSuper,
    pub blobs: Vec<BlobEntry>,
    pub devices: Vec<DeviceSlot>,
    block_size: u64,
    meta_base: u64,
    /// Built on first use; a failure is kept as its message (errors are not Clone).
    chunk_map: OnceLock<std::result::Result<ChunkMap, String>>,
}

impl Bootstrap {
    pub fn open(path: &Path) -> Result<Self> {
        let file = std::fs::File::open(path).ctx(|| format!("open bootstrap {}", path.display()))?;
        let len = file.metadata().ctx(|| format!("stat bootstrap {}", path.display()))?.len();
        ensure!(len >= 4096, "bootstrap is {len} bytes, smaller than one 4 KiB block");
        // SAFETY: the mapping is read-only; a concurrent truncation of the file by another
        // process is outside what any mmap-based reader can defend against.
        let map = unsafe { memmap2::Mmap::map(&file) }.ctx(|| format!("mmap {}", path.display()))?;
        Self::parse(Data::Mapped(map))
    }

    pub fn from_bytes(bytes: Vec<u8>) -> Result<Self> {
        Self::parse(Data::Owned(bytes))
    }

    fn parse(data: Data) -> Result<Self> {
        let len = data.len() as u64;
        ensure!(len >= 4096, "bootstrap is {len} bytes, smaller than one 4 KiB block");
        if u32_at(&data, 0) == 0x5241_4653 {
            return Err(Error::Unsupported("RAFS v5 bootstraps (only v6 is supported)".into()));
        }
        let sb = ErofsSuper::decode(&data[EROFS_SB_OFFSET..])?;
        let block_size = sb.block_size();
        ensure!(len % block_size == 0, "bootstrap length {len} is not a multiple of the block size");
        if sb.blkszbits != 12 {
            return Err(Error::Unsupported("TARFS images (512-byte blocks)".into()));
        }
        let ext = ExtSuper::decode(&data[EXT_SB_OFFSET..])?;
        if ext.flags & sb_flags::TARTFS_MODE != 0 {
            return Err(Error::Unsupported("TARFS images".into()));
        }
        let meta_base = sb.meta_blkaddr as u64 * block_size;
        ensure!(meta_base <= len, "meta_blkaddr {} is past the end of the bootstrap", sb.meta_blkaddr);

        let table_in_file = |off: u64, size: u64| off.checked_add(size).is_some_and(|e| e <= len);
        let bt_off = ext.blob_table_offset;
        let bt_size = ext.blob_table_size as u64;
        ensure!(bt_off % 4096 == 0 && bt_off >= 4096, "blob table offset {bt_off} is not 4 KiB aligned");
        ensure!(bt_size % BLOB_ENTRY_SIZE as u64 == 0, "blob table size {bt_size} is not a multiple of 256");
        ensure!(table_in_file(bt_off, bt_size), "blob table lies outside the bootstrap");
        let n = (bt_size / BLOB_ENTRY_SIZE as u64) as usize;
        ensure!(n <= MAX_BLOBS, "{n} blobs exceed the limit of {MAX_BLOBS}");
        ensure!(n == sb.extra_devices as usize, "{n} blob entries but {} device slots", sb.extra_devices);
        ensure!(DEVSLOT_OFFSET + n * DEVSLOT_SIZE <= bt_off as usize, "device slots overlap the blob table");

        let (ct_off, ct_size) = (ext.chunk_table_offset, ext.chunk_table_size);
        if ct_size > 0 {
            ensure!(ct_off % 4096 == 0 && ct_off >= 4096, "chunk table offset {ct_off} is not 4 KiB aligned");
            ensure!(ct_size % CHUNK_TABLE_ENTRY_SIZE as u64 == 0, "chunk table size {ct_size} is not a multiple of 80");
            ensure!(table_in_file(ct_off, ct_size), "chunk table lies outside the bootstrap");
            ensure!(ct_off >= bt_off + bt_size || ct_off + ct_size <= bt_off, "chunk table overlaps the blob table");
        }
        let (pt_off, pt_size) = (ext.prefetch_table_offset, ext.prefetch_table_size as u64);
        if pt_size > 0 && pt_off != 0 {
            ensure!(pt_off >= 4096 && pt_off % 8 == 0, "prefetch table offset {pt_off} misaligned");
            ensure!(pt_size % 4 == 0, "prefetch table size {pt_size} is not a multiple of 4");
            ensure!(table_in_file(pt_off, pt_size), "prefetch table lies outside the bootstrap");
            ensure!(pt_off >= bt_off + bt_size || pt_off + pt_size <= bt_off, "prefetch table overlaps the blob table");
            ensure!(ct_size == 0 || pt_off >= ct_off + ct_size || pt_off + pt_size <= ct_off, "prefetch table overlaps the chunk table");
        }

        let mut blobs = Vec::with_capacity(n);
        let mut devices = Vec::with_capacity(n);
        for i in 0..n {
            let off = bt_off as usize + i * BLOB_ENTRY_SIZE;
            let entry = BlobEntry::decode(&data[off..off + BLOB_ENTRY_SIZE])?;
            entry.validate(i, ext.chunk_size, false)?;
            let doff = DEVSLOT_OFFSET + i * DEVSLOT_SIZE;
            let dev = DeviceSlot::decode(&data[doff..doff + DEVSLOT_SIZE])?;
            ensure!(!devices.iter().any(|d: &DeviceSlot| d.blob_id == dev.blob_id), "duplicate device id {}", dev.blob_id);
            blobs.push(entry);
            devices.push(dev);
        }
        let b = Bootstrap { data, sb, ext, blobs, devices, block_size, meta_base, chunk_map: OnceLock::new() };
        let root = b.inode(b.root_nid())?;
        ensure!(root.mode as u32 & mode::S_IFMT == mode::S_IFDIR, "root inode is not a directory");
        Ok(b)
    }

    pub fn bytes(&self) -> &[u8] {
        &self.data
    }

    pub fn block_size(&self) -> u64 {
        self.block_size
    }

    pub fn root_nid(&self) -> u64 {
        self.sb.root_nid as u64
    }

    pub fn chunk_size(&self) -> u64 {
        self.ext.chunk_size as u64
    }

    /// Substitute the real blob id for placeholder ids (bootstraps taken out of a data blob).
    pub fn set_blob_id(&mut self, index: usize, id: &str) {
        self.blobs[index].blob_id = id.to_string();
        self.devices[index].blob_id = id.to_string();
    }

    fn slice(&self, off: u64, len: u64, what: &str) -> Result<&[u8]> {
        let end = off.checked_add(len).filter(|&e| e <= self.data.len() as u64);
        match end {
            Some(end) => Ok(&self.data[off as usize..end as usize]),
            None => Err(Error::corrupt(format!("{what} at {off}+{len} lies outside the bootstrap"))),
        }
    }

    pub fn inode_offset(&self, nid: u64) -> Result<u64> {
        nid.checked_mul(32).and_then(|o| o.checked_add(self.meta_base)).ok_or_else(|| Error::corrupt(format!("nid {nid} overflows")))
    }

    pub fn inode(&self, nid: u64) -> Result<Inode> {
        let off = self.inode_offset(nid)?;
        let avail = (self.data.len() as u64).saturating_sub(off).min(64);
        let raw = self.slice(off, avail, "inode")?;
        Inode::decode(raw).map_err(|e| e.at(&format!("inode {nid}")))
    }

    pub fn xattrs(&self, nid: u64, ino: &Inode) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        if ino.xattr_icount == 0 {
            return Ok(Vec::new());
        }
        let off = self.inode_offset(nid)? + ino.core_size() as u64;
        decode_xattrs(self.slice(off, ino.xattr_size() as u64, "xattrs")?)
    }

    /// The bytes of block `j` of a flat (directory or symlink) inode, and their used length.
    fn flat_block(&self, nid: u64, ino: &Inode, j: u64) -> Result<&[u8]> {
        let b = self.block_size;
        let nblocks = ino.size.div_ceil(b);
        let used = (ino.size - j * b).min(b);
        match ino.layout {
            inode_layout::FLAT_INLINE if j == nblocks - 1 => {
                let off = self.inode_offset(nid)? + ino.inline_offset() as u64;
                ensure!(off % b + used <= b, "inode {nid}: inline data crosses a block boundary");
                self.slice(off, used, "inline data")
            }
            inode_layout::FLAT_INLINE | inode_layout::FLAT_PLAIN => {
                let blk = (ino.i_u as u64).checked_add(j).ok_or_else(|| Error::corrupt("block overflow"))?;
                self.slice(blk * b, used, "data block")
            }
            l => Err(Error::corrupt(format!("inode {nid}: layout {l} is not a flat layout"))),
        }
    }

    pub fn is_dir(ino: &Inode) -> bool {
        ino.mode as u32 & mode::S_IFMT == mode::S_IFDIR
    }

    fn dir_blocks(&self, nid: u64, ino: &Inode) -> Result<u64> {
        if !Self::is_dir(ino) {
            return Err(Error::NotADirectory(format!("nid {nid}")));
        }
        ensure!(ino.size > 0, "directory {nid} is empty (no . or ..)");
        Ok(ino.size.div_ceil(self.block_size))
    }

    fn decode_dir_block(&self, nid: u64, ino: &Inode, j: u64) -> Result<Vec<dirent::Dirent<'_>>> {
        let blk = self.flat_block(nid, ino, j)?;
        let used = blk.len();
        dirent::decode_block(blk, used).map_err(|e| e.at(&format!("directory {nid} block {j}")))
    }

    /// Every entry of a directory, `.` and `..` included, in on-disk (sorted) order.
    pub fn readdir(&self, nid: u64) -> Result<Vec<DirEntry>> {
        let mut out = Vec::new();
        self.readdir_from(nid, 0, |d, _| {
            out.push(DirEntry { name: d.name.to_vec(), nid: d.nid, file_type: d.file_type });
            true
        })?;
        Ok(out)
    }

    /// The entries of a directory from position `from` on, in on-disk order, each with the
    /// position after it, until `visit` says stop. A listing resumed at a position decodes
    /// only the blocks it visits: the blocks before are skipped by their entry counts.
    pub fn readdir_from(&self, nid: u64, from: u64, mut visit: impl FnMut(&dirent::Dirent<'_>, u64) -> bool) -> Result<()> {
        let ino = self.inode(nid)?;
        let nblocks = self.dir_blocks(nid, &ino)?;
        let mut first = 0u64; // position of block j's first entry
        for j in 0..nblocks {
            let blk = self.flat_block(nid, &ino, j)?;
            let count = dirent::entry_count(blk, blk.len()).map_err(|e| e.at(&format!("directory {nid} block {j}")))? as u64;
            if first + count > from {
                for (i, d) in self.decode_dir_block(nid, &ino, j)?.iter().enumerate() {
                    let at = first + i as u64;
                    if at >= from && !visit(d, at + 1) {
                        return Ok(());
                    }
                }
            }
            first += count;
        }
        Ok(())
    }

    /// Binary search for `name` in a directory (names are globally byte-sorted, §3.3).
    pub fn lookup(&self, dir_nid: u64, name: &[u8]) -> Result<Option<DirEntry>> {
        let ino = self.inode(dir_nid)?;
        let nblocks = self.dir_blocks(dir_nid, &ino)?;
        let (mut lo, mut hi) = (0u64, nblocks);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            let ents = self.decode_dir_block(dir_nid, &ino, mid)?;
            let (first, last) = (ents[0].name, ents[ents.len() - 1].name);
            if name < first {
                hi = mid;
            } else if name > last {
                lo = mid + 1;
            } else {
                return Ok(ents.binary_search_by(|d| d.name.cmp(name)).ok().map(|i| DirEntry {
                    name: ents[i].name.to_vec(),
                    nid: ents[i].nid,
                    file_type: ents[i].file_type,
                }));
            }
        }
        Ok(None)
    }

    /// Resolve an absolute or root-relative path to a nid, without following symlinks.
    pub fn resolve(&self, path: &[u8]) -> Result<u64> {
        let mut nid = self.root_nid();
        for comp in path.split(|&c| c == b'/').filter(|c| !c.is_empty() && *c != b".") {
            let ino = self.inode(nid)?;
            if !Self::is_dir(&ino) {
                return Err(Error::NotADirectory(String::from_utf8_lossy(path).into_owned()));
            }
            match self.lookup(nid, comp)? {
                Some(e) => nid = e.nid,
                None => return Err(Error::NotFound(String::from_utf8_lossy(path).into_owned())),
            }
        }
        // "file/" names a directory, as in POSIX path resolution.
        if path.ends_with(b"/") && !Self::is_dir(&self.inode(nid)?) {
            return Err(Error::NotADirectory(String::from_utf8_lossy(path).into_owned()));
        }
        Ok(nid)
    }

    pub fn readlink(&self, nid: u64) -> Result<Vec<u8>> {
        let ino = self.inode(nid)?;
        if ino.mode as u32 & mode::S_IFMT != mode::S_IFLNK {
            return Err(Error::NotASymlink(format!("nid {nid}")));
        }
        ensure!(ino.size > 0 && ino.size <= MAX_SYMLINK_LEN, "symlink {nid} has length {}", ino.size);
        let mut out = Vec::with_capacity(ino.size as usize);
        for j in 0..ino.size.div_ceil(self.block_size) {
            out.extend_from_slice(self.flat_block(nid, &ino, j)?);
        }
        Ok(out)
    }

    /// Chunk addresses of a regular file (count from the superblock chunk size, §4.3).
    pub fn chunk_addrs(&self, nid: u64, ino: &Inode) -> Result<Vec<ChunkAddr>> {
        ensure!(ino.layout == inode_layout::CHUNK_BASED, "regular file {nid} has layout {} (not chunk-based)", ino.layout);
        let count = ino.size.div_ceil(self.chunk_size());
        let off = self.inode_offset(nid)? + ino.chunk_index_offset() as u64;
        let raw = self.slice(off, count.saturating_mul(CHUNK_ADDR_SIZE as u64), "chunk indexes")?;
        raw.chunks_exact(CHUNK_ADDR_SIZE)
            .map(|c| {
                let a = ChunkAddr::decode(c)?;
                ensure!((a.blob_index as usize) < self.blobs.len(), "file {nid} names blob {} of {}", a.blob_index, self.blobs.len());
                Ok(a)
            })
            .collect()
    }

    /// One chunk address of a regular file, without decoding the whole index array.
    pub fn chunk_addr(&self, nid: u64, ino: &Inode, idx: u64) -> Result<ChunkAddr> {
        ensure!(ino.layout == inode_layout::CHUNK_BASED, "regular file {nid} is not chunk-based");
        let off = self.inode_offset(nid)? + ino.chunk_index_offset() as u64 + idx * CHUNK_ADDR_SIZE as u64;
        let a = ChunkAddr::decode(self.slice(off, CHUNK_ADDR_SIZE as u64, "chunk index")?)?;
        ensure!((a.blob_index as usize) < self.blobs.len(), "file {nid} names blob {} of {}", a.blob_index, self.blobs.len());
        Ok(a)
    }

    pub fn chunk_table(&self) -> Result<Vec<ChunkTableEntry>> {
        let raw = self.slice(self.ext.chunk_table_offset, self.ext.chunk_table_size, "chunk table")?;
        Ok(raw.chunks_exact(CHUNK_TABLE_ENTRY_SIZE).map(ChunkTableEntry::decode).collect())
    }

    /// The chunk table keyed by (blob index, CI index), built once.
    pub fn chunk_map(&self) -> Result<&HashMap<(u32, u32), ChunkTableEntry>> {
        let r = self.chunk_map.get_or_init(|| {
            let table = self.chunk_table().map_err(|e| match e {
                Error::Corrupt(m) => m,
                other => other.to_string(),
            })?;
            Ok(table.into_iter().map(|e| ((e.blob_index, e.index), e)).collect())
        });
        r.as_ref().map_err(|m| Error::Corrupt(m.clone()))
    }

    pub fn prefetch_nids(&self) -> Result<Vec<u32>> {
        if self.ext.prefetch_table_size == 0 || self.ext.prefetch_table_offset == 0 {
            return Ok(Vec::new());
        }
        let raw = self.slice(self.ext.prefetch_table_offset, self.ext.prefetch_table_size as u64, "prefetch table")?;
        Ok(raw.chunks_exact(4).map(|c| u32_at(c, 0)).take_while(|&n| n != 0).collect())
    }
}
