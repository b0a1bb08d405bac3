//! Fuzz the metadata reader: the input is a whole bootstrap. Everything reachable from it is
//! decoded: superblocks, blob table, the tree (readdir, lookup), every inode, xattrs,
//! symlinks, chunk indexes, the chunk and prefetch tables, and the bootstrap-only `check`.
//! No blob is available, so data reads stop at "blob missing" — blob parsing has its own
//! target (`blob_meta`). Any panic, abort, hang or runaway allocation is a finding.

#![no_main]

use libfuzzer_sys::fuzz_target;
use nydus_hybrid_core::layout::mode;
use nydus_hybrid_core::reader::{Bootstrap, Rafs};
use nydus_hybrid_core::storage::{BlobSource, BlobStore};
use nydus_hybrid_core::{Error, Result};
use std::sync::Arc;

/// A store without blobs: every open is "missing".
struct NoBlobs;

impl BlobStore for NoBlobs {
    fn open(&self, blob_id: &str) -> Result<Arc<dyn BlobSource>> {
        Err(Error::BlobMissing(blob_id.to_string(), "/nonexistent".into()))
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(boot) = Bootstrap::from_bytes(data.to_vec()) else { return };
    let rafs = Rafs::new(boot, Box::new(NoBlobs));
    let boot = &rafs.boot;
    let mut budget = 20_000u32;
    let _ = nydus_hybrid_core::walk::walk(boot, |v| {
        budget = budget.checked_sub(1).ok_or_else(|| Error::corrupt("walk budget"))?;
        let ino = boot.inode(v.nid)?;
        let _ = boot.xattrs(v.nid, &ino);
        let _ = rafs.stat_nid(v.nid);
        match ino.mode as u32 & mode::S_IFMT {
            mode::S_IFDIR => {
                if let Ok(ents) = boot.readdir(v.nid) {
                    for e in ents.iter().take(64) {
                        let _ = boot.lookup(v.nid, &e.name);
                    }
                }
            }
            mode::S_IFLNK => {
                let _ = boot.readlink(v.nid);
            }
            mode::S_IFREG => {
                let _ = boot.chunk_addrs(v.nid, &ino);
                let _ = boot.chunk_addr(v.nid, &ino, ino.size / boot.chunk_size().max(1));
                let _ = rafs.read_nid(v.nid, 0, 4096);
            }
            _ => {}
        }
        Ok(())
    });
    for p in [&b"/"[..], b"/a", b"/a/b/c", b"lib.rs", b"/././x"] {
        let _ = boot.resolve(p);
    }
    let _ = boot.chunk_table();
    let _ = boot.chunk_map();
    let _ = boot.prefetch_nids();
    let _ = nydus_hybrid_core::inspect::inspect(boot);
    let _ = nydus_hybrid_core::check::check(&rafs, false);
});
