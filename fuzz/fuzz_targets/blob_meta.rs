//! Fuzz the blob-side decoders. The input is a data blob followed by its 256-byte
//! `RafsV6Blob` entry from the bootstrap's blob table (so the fuzzer can keep the entry in
//! step with the blob it describes; `make_seeds.py` writes seeds in this shape). Exercised: the record decoders (CI V1/V2, CI header, ToC
//! entries, tar section headers), ToC location and section extraction, loading the CI array
//! (with decompression), and reading/verifying every chunk.

#![no_main]

use libfuzzer_sys::fuzz_target;
use nydus_hybrid_core::layout::blob_meta::{ChunkInfo, CiHeader, CI_HEADER_SIZE};
use nydus_hybrid_core::layout::superblock::BlobEntry;
use nydus_hybrid_core::layout::tarhdr::{self, TAR_HEADER_SIZE};
use nydus_hybrid_core::layout::toc::{TocEntry, TOC_ENTRY_SIZE};
use nydus_hybrid_core::reader::blob::{extract_section, read_toc, BlobReader};
use nydus_hybrid_core::storage::BlobSource;
use nydus_hybrid_core::{Error, Result};
use std::sync::Arc;

struct Mem(Vec<u8>);

impl BlobSource for Mem {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        let end = offset.checked_add(buf.len() as u64).filter(|&e| e <= self.0.len() as u64);
        let end = end.ok_or_else(|| Error::corrupt("read past the end"))?;
        buf.copy_from_slice(&self.0[offset as usize..end as usize]);
        Ok(())
    }
    fn size(&self) -> Result<u64> {
        Ok(self.0.len() as u64)
    }
}

fuzz_target!(|data: &[u8]| {
    // Record decoders over every aligned window.
    for r in data.chunks_exact(16).take(256) {
        let c = ChunkInfo::decode_v1(r);
        let _ = (c.compressed_end(), c.uncompressed_end());
    }
    for r in data.chunks_exact(24).take(256) {
        let c = ChunkInfo::decode_v2(r);
        let _ = (c.compressed_end(), c.uncompressed_end());
    }
    for r in data.chunks(TOC_ENTRY_SIZE).take(64) {
        if let Ok(e) = TocEntry::decode(r) {
            let _ = e.compressor();
        }
    }
    for r in data.chunks(TAR_HEADER_SIZE).take(64) {
        let _ = tarhdr::decode(r);
    }
    if data.len() >= CI_HEADER_SIZE {
        let _ = CiHeader::decode(&data[data.len() - CI_HEADER_SIZE..]);
    }

    // The blob as a whole: ToC, its sections, and the CI array through a blob entry. With
    // enough input, the last 256 bytes are the blob-table entry and the rest is the blob.
    let (blob, entry) =
        if data.len() >= 256 + TAR_HEADER_SIZE { (&data[..data.len() - 256], BlobEntry::decode(&data[data.len() - 256..]).ok()) } else { (data, None) };
    let src: Arc<dyn BlobSource> = Arc::new(Mem(blob.to_vec()));
    if let Ok(toc) = read_toc(src.as_ref(), None) {
        for e in toc.iter().take(16) {
            let _ = extract_section(src.as_ref(), e, 1 << 24);
        }
    }
    let Some(entry) = entry else { return };
    if entry.validate(0, entry.chunk_size, false).is_err() {
        return;
    }
    if let Ok(toc) = read_toc(src.as_ref(), Some(&entry)) {
        for e in toc.iter().take(16) {
            let _ = extract_section(src.as_ref(), e, 1 << 24);
        }
    }
    if let Ok(reader) = BlobReader::load(&entry, src.clone(), None) {
        for ci in 0..reader.chunks.len().min(64) as u32 {
            let _ = reader.read_chunk_direct(ci, None, true);
        }
    }
});
