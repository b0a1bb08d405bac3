//! `nydus-hybrid inspect`: superblock, blob table and counts as JSON.

use crate::error::Result;
use crate::layout::{file_type, Compressor, Digester};
use crate::reader::Bootstrap;
use crate::walk::walk;
use serde_json::{json, Value};
use std::collections::HashSet;

pub fn inspect(boot: &Bootstrap) -> Result<Value> {
    let (sb, ext) = (&boot.sb, &boot.ext);
    let blobs: Vec<Value> = boot
        .blobs
        .iter()
        .zip(&boot.devices)
        .map(|(b, d)| {
            json!({
                "blob_id": b.blob_id,
                "blob_index": b.blob_index,
                "chunk_size": b.chunk_size,
                "chunk_count": b.chunk_count,
                "compressor": Compressor::from_u32(b.compressor).map(|c| c.name()),
                "digester": Digester::from_u32(b.digester).map(|d| d.name()),
                "features": format!("{:#010x}", b.features),
                "compressed_size": b.compressed_size,
                "uncompressed_size": b.uncompressed_size,
                "ci_compressor": Compressor::from_u32(b.ci_compressor).map(|c| c.name()),
                "ci_offset": b.ci_offset,
                "ci_compressed_size": b.ci_compressed_size,
                "ci_uncompressed_size": b.ci_uncompressed_size,
                "toc_size": b.toc_size,
                "toc_digest": hex::encode(b.toc_digest),
                "device_blocks": d.blocks,
                "mapped_blkaddr": d.mapped_blkaddr,
            })
        })
        .collect();
    let (mut dirs, mut files, mut links, mut special, mut bytes) = (0u64, 0u64, 0u64, 0u64, 0u64);
    let mut seen = HashSet::new();
    walk(boot, |v| {
        if !seen.insert(v.nid) {
            return Ok(());
        }
        match v.file_type {
            file_type::DIR => dirs += 1,
            file_type::REG => {
                files += 1;
                bytes = bytes.saturating_add(boot.inode(v.nid)?.size);
            }
            file_type::LNK => links += 1,
            _ => special += 1,
        }
        Ok(())
    })?;
    Ok(json!({
        "format": "rafs-v6",
        "bootstrap_size": boot.bytes().len(),
        "superblock": {
            "block_size": boot.block_size(),
            "root_nid": sb.root_nid,
            "inodes": sb.inos,
            "blocks": sb.blocks,
            "meta_blkaddr": sb.meta_blkaddr,
            "extra_devices": sb.extra_devices,
            "flags": format!("{:#x}", ext.flags),
            "chunk_size": ext.chunk_size,
            "compressor": ext.compressor().name(),
            "digester": ext.digester().name(),
            "blob_table": [ext.blob_table_offset, ext.blob_table_size],
            "chunk_table": [ext.chunk_table_offset, ext.chunk_table_size],
            "prefetch_table": [ext.prefetch_table_offset, ext.prefetch_table_size],
        },
        "blobs": blobs,
        "counts": {
            "directories": dirs,
            "regular_files": files,
            "symlinks": links,
            "special_files": special,
            "file_bytes": bytes,
            "chunk_table_entries": ext.chunk_table_size / 80,
        },
    }))
}
