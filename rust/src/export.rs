//! Export an image for the kernel: a flattened blob (the uncompressed chunk data at each
//! chunk's uncompressed offset, i.e. the blob-cache layout EROFS reads as a device), or one
//! raw EROFS disk: the bootstrap followed by every flattened blob at its `mapped_blkaddr`
//! (spec §1.4), which the kernel mounts with no extra devices.

use crate::error::{Error, IoContext, Result};
use crate::layout::bytes::round_up;
use crate::layout::superblock::DeviceSlot;
use crate::layout::{BLOCK_SIZE, DEVSLOT_OFFSET, DEVSLOT_SIZE};
use crate::reader::Rafs;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

/// HEAD's segment alignment for flattened blobs.
const SEGMENT_ALIGN: u64 = 0x8_0000;

fn write_blob_at(rafs: &Rafs, index: usize, out: &File, base: u64) -> Result<u64> {
    let blob = rafs.blob(index)?;
    let mut bytes = 0u64;
    for (ci, c) in blob.chunks.iter().enumerate() {
        let (data, _) = rafs.read_blob_chunk(&blob, index as u32, ci as u32)?;
        out.write_all_at(&data, base + c.uncompressed_offset).ctx(|| "write export".into())?;
        bytes += data.len() as u64;
    }
    Ok(bytes)
}

/// Write blob `index` flattened to `out` (sparse where there are no chunks).
pub fn export_flat_blob(rafs: &Rafs, index: usize, out: &Path) -> Result<u64> {
    let entry = rafs.boot.blobs.get(index).ok_or_else(|| Error::invalid(format!("image has no blob {index}")))?;
    let f = File::create(out).ctx(|| format!("create {}", out.display()))?;
    f.set_len(entry.uncompressed_size).ctx(|| format!("size {}", out.display()))?;
    let n = write_blob_at(rafs, index, &f, 0)?;
    f.sync_all().ctx(|| format!("sync {}", out.display()))?;
    Ok(n)
}

/// Write a single raw EROFS disk image. The device slots of the copied bootstrap are
/// rewritten with the `mapped_blkaddr` actually used, so older images (which store 0) work.
pub fn export_block(rafs: &Rafs, out: &Path) -> Result<u64> {
    let mut boot = rafs.boot.bytes().to_vec();
    let mut pos = boot.len() as u64;
    let mut placements = Vec::new();
    for (i, dev) in rafs.boot.devices.iter().enumerate() {
        let mapped = round_up(pos, SEGMENT_ALIGN) / BLOCK_SIZE;
        if mapped > u32::MAX as u64 {
            return Err(Error::Unsupported("flattened image exceeds 2^32 blocks".into()));
        }
        let slot = DeviceSlot { mapped_blkaddr: mapped as u32, ..dev.clone() };
        let off = DEVSLOT_OFFSET + i * DEVSLOT_SIZE;
        boot[off..off + DEVSLOT_SIZE].copy_from_slice(&slot.encode());
        placements.push(mapped * BLOCK_SIZE);
        pos = (mapped + dev.blocks as u64) * BLOCK_SIZE;
    }
    let f = File::create(out).ctx(|| format!("create {}", out.display()))?;
    f.set_len(pos).ctx(|| format!("size {}", out.display()))?;
    f.write_all_at(&boot, 0).ctx(|| format!("write {}", out.display()))?;
    let mut total = boot.len() as u64;
    for (i, base) in placements.into_iter().enumerate() {
        total += write_blob_at(rafs, i, &f, base)?;
    }
    f.sync_all().ctx(|| format!("sync {}", out.display()))?;
    Ok(total)
}
