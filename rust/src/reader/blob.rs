//! The data side of one blob: its ToC, CI array (blob meta), chunk digests, and decoding a
//! chunk from stored bytes to verified uncompressed bytes.

use crate::cache::{meta, ChunkCache};
use crate::codec;
use crate::error::{ensure, Error, Result};
use crate::layout::blob_features as bf;
use crate::layout::blob_meta::{ci_v2_flags, ChunkInfo, CiHeader, CI_HEADER_SIZE, CI_V1_SIZE, CI_V2_SIZE};
use crate::layout::superblock::BlobEntry;
use crate::layout::tarhdr::{self, TAR_HEADER_SIZE};
use crate::layout::toc::{TocEntry, TOC_ENTRY_SIZE, TOC_NAME};
use crate::layout::{bytes::round_up, Compressor};
use crate::reader::link::LinkEstimate;
use crate::storage::BlobSource;
use std::path::Path;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

/// Upper bound on a CI array we are willing to load (the reference's V2 limit).
const MAX_CI_BYTES: u64 = 384 << 20;
const MAX_TOC_BYTES: u64 = 64 << 10;

/// Read the ToC at the end of a blob: located by `toc_size`/`toc_digest` from the blob entry
/// when known, otherwise detected from the final tar header.
pub fn read_toc(src: &dyn BlobSource, entry: Option<&BlobEntry>) -> Result<Vec<TocEntry>> {
    let size = src.size()?;
    ensure!(size >= TAR_HEADER_SIZE as u64, "blob is too small to hold a ToC");
    let known = entry.filter(|e| e.toc_size != 0);
    let toc_size = match known {
        Some(e) => e.toc_size as u64,
        None => {
            let hdr = src.read_vec(size - TAR_HEADER_SIZE as u64, TAR_HEADER_SIZE)?;
            let (name, len) = tarhdr::decode(&hdr)?;
            ensure!(name == TOC_NAME, "blob ends with section {name:?}, not a ToC");
            len + TAR_HEADER_SIZE as u64
        }
    };
    ensure!(
        toc_size >= (TAR_HEADER_SIZE + TOC_ENTRY_SIZE) as u64
            && toc_size <= MAX_TOC_BYTES
            && (toc_size - TAR_HEADER_SIZE as u64) % TOC_ENTRY_SIZE as u64 == 0
            && toc_size <= size,
        "invalid ToC size {toc_size}"
    );
    let raw = src.read_vec(size - toc_size, toc_size as usize)?;
    if let Some(e) = known {
        if e.toc_digest != [0u8; 32] {
            ensure!(codec::sha256(&raw) == e.toc_digest, "ToC digest does not match the blob table");
        }
    }
    let (name, len) = tarhdr::decode(&raw[raw.len() - TAR_HEADER_SIZE..])?;
    ensure!(name == TOC_NAME && len == toc_size - TAR_HEADER_SIZE as u64, "ToC tar header does not describe the ToC");
    raw[..raw.len() - TAR_HEADER_SIZE].chunks_exact(TOC_ENTRY_SIZE).map(TocEntry::decode).collect()
}

/// Extract and verify one ToC section (decompressed to its uncompressed size).
pub fn extract_section(src: &dyn BlobSource, e: &TocEntry, limit: u64) -> Result<Vec<u8>> {
    ensure!(e.uncompressed_size <= limit && e.stored_size <= limit, "section {} is too large", e.name);
    let stored = src.read_vec(e.offset, e.stored_size as usize)?;
    let data = codec::decompress(e.compressor()?, &stored, e.uncompressed_size as usize)?;
    ensure!(codec::sha256(&data) == e.digest, "section {} does not match its ToC digest", e.name);
    Ok(data)
}

/// A loaded blob: the entry from the bootstrap, decoded CI records and optional digests.
pub struct BlobReader {
    pub entry: BlobEntry,
    pub src: Arc<dyn BlobSource>,
    pub chunks: Vec<ChunkInfo>,
    /// The `blob.digest` array, when the blob carries one.
    pub digests: Option<Vec<[u8; 32]>>,
    /// Local cache of uncompressed chunks, when the image was opened with one.
    pub cache: Option<ChunkCache>,
}

impl BlobReader {
    /// Load a blob's metadata. With `meta_dir`, the CI array and digests are taken from (or
    /// saved to) local copies there, so a cached blob reopens without backend reads.
    pub fn load(entry: &BlobEntry, src: Arc<dyn BlobSource>, meta_dir: Option<&Path>) -> Result<Self> {
        let id = &entry.blob_id;
        for (flag, what) in [
            (bf::ENCRYPTED, "encrypted"),
            (bf::ZRAN, "ZRAN"),
            (bf::BATCH, "batch"),
            (bf::SEPARATE, "separate-data"),
            (bf::TARFS, "TARFS"),
            (bf::EXTERNAL, "external"),
        ] {
            if entry.has(flag) {
                return Err(Error::Unsupported(format!("blob {id}: {what} blobs")));
            }
        }
        // Every chunk takes at least one stored byte and one 4 KiB block of the uncompressed
        // space, so a count beyond that is a lie that would only cost us memory.
        let n = entry.chunk_count as u64;
        ensure!(n <= entry.compressed_data_size(), "blob {id}: {n} chunks cannot fit in {} bytes of chunk data", entry.compressed_data_size());
        ensure!(n <= round_up(entry.uncompressed_size, 4096) / 4096, "blob {id}: {n} chunks cannot fit in {} uncompressed bytes", entry.uncompressed_size);
        let v2 = entry.has(bf::CHUNK_INFO_V2);
        let rec = if v2 { CI_V2_SIZE } else { CI_V1_SIZE } as u64;
        ensure!(entry.ci_uncompressed_size == n * rec, "blob {id}: CI size {} != {n} records", entry.ci_uncompressed_size);
        ensure!(entry.ci_compressed_size <= MAX_CI_BYTES, "blob {id}: CI array is too large");
        let ci_len = entry.ci_compressed_size as usize + CI_HEADER_SIZE;
        // The local copy has nydusd's cache layout: the plain CI array padded to 4 KiB, then
        // the header as stored in the blob; a copy of any other size is not used.
        let plain_len = entry.ci_uncompressed_size as usize;
        let copy_len = round_up(entry.ci_uncompressed_size, 4096) as usize + CI_HEADER_SIZE;
        let meta_copy = meta_dir.map(|d| meta::meta_path(d, id));
        let cached = meta_copy.as_deref().and_then(|p| meta::load(p, copy_len));
        let fetched = cached.is_none();
        // (the plain array from the copy, or the stored one from the blob; the header)
        let (ci, header) = match cached {
            Some(mut b) => {
                let header = b.split_off(copy_len - CI_HEADER_SIZE);
                b.truncate(plain_len);
                (Ok(b), header)
            }
            None => {
                let mut raw = src.read_vec(entry.ci_offset, ci_len)?;
                let header = raw.split_off(entry.ci_compressed_size as usize);
                (Err(raw), header)
            }
        };
        let h = CiHeader::decode(&header).map_err(|e| Error::corrupt(format!("blob {id}: {e}")))?;
        ensure!(
            h.ci_entries == entry.chunk_count
                && h.ci_compressor == entry.ci_compressor
                && h.ci_offset == entry.ci_offset
                && h.ci_compressed_size == entry.ci_compressed_size
                && h.ci_uncompressed_size == entry.ci_uncompressed_size,
            "blob {id}: blob meta header disagrees with the blob table"
        );
        let ci_algo = Compressor::from_u32(entry.ci_compressor).ok_or_else(|| Error::corrupt("bad CI compressor"))?;
        let plain = match ci {
            Ok(plain) => plain,
            Err(stored) if entry.ci_compressed_size == entry.ci_uncompressed_size => stored,
            Err(stored) => codec::decompress(ci_algo, &stored, plain_len)?,
        };
        let chunks: Vec<ChunkInfo> = plain.chunks_exact(rec as usize).map(|r| if v2 { ChunkInfo::decode_v2(r) } else { ChunkInfo::decode_v1(r) }).collect();
        let data_end = entry.compressed_data_size();
        let u_end = round_up(entry.uncompressed_size, 4096);
        for (i, c) in chunks.iter().enumerate() {
            ensure!(c.uncompressed_size > 0, "blob {id}: chunk {i} has size 0");
            ensure!(c.compressed_size > 0, "blob {id}: chunk {i} has stored size 0");
            ensure!(c.compressed_end() <= data_end, "blob {id}: chunk {i} data ends past the chunk area");
            ensure!(c.uncompressed_end() <= u_end, "blob {id}: chunk {i} ends past the uncompressed size");
            ensure!(c.compressed || c.compressed_size == c.uncompressed_size, "blob {id}: uncompressed chunk {i} has differing sizes");
            ensure!(c.v2_flags & ci_v2_flags::HAS_CRC32 == 0 || c.data as u32 != 0, "blob {id}: chunk {i} has a zero CRC");
        }
        let digests = if entry.has(bf::INLINED_CHUNK_DIGEST) {
            let copy = meta_dir.map(|d| meta::digest_path(d, id));
            let raw = match copy.as_deref().and_then(|p| meta::load(p, entry.chunk_count as usize * 32)) {
                Some(b) => b,
                None => {
                    let b = Self::load_digests(entry, src.as_ref())?;
                    if let Some(p) = &copy {
                        meta::save(p, &b);
                    }
                    b
                }
            };
            Some(raw.chunks_exact(32).map(|c| c.try_into().unwrap()).collect())
        } else {
            None
        };
        if let (true, Some(p)) = (fetched, &meta_copy) {
            let mut copy = plain.clone();
            copy.resize(copy_len - CI_HEADER_SIZE, 0);
            copy.extend_from_slice(&header);
            meta::save(p, &copy);
        }
        Ok(BlobReader { entry: entry.clone(), src, chunks, digests, cache: None })
    }

    fn load_digests(entry: &BlobEntry, src: &dyn BlobSource) -> Result<Vec<u8>> {
        let len = entry.chunk_count as u64 * 32;
        let from_toc = if entry.has(bf::HAS_TOC) { read_toc(src, Some(entry))?.into_iter().find(|e| e.name == "blob.digest") } else { None };
        let raw = match from_toc {
            Some(e) => {
                ensure!(e.uncompressed_size == len, "blob.digest holds {} bytes, expected {len}", e.uncompressed_size);
                extract_section(src, &e, len)?
            }
            None => {
                ensure!(entry.has(bf::HAS_TAR_HEADER), "blob {}: chunk digests without a ToC or tar headers", entry.blob_id);
                let off = entry.ci_offset + entry.ci_compressed_size + (CI_HEADER_SIZE + TAR_HEADER_SIZE) as u64;
                src.read_vec(off, len as usize)?
            }
        };
        Ok(raw)
    }

    pub fn chunk(&self, ci: u32) -> Result<&ChunkInfo> {
        self.chunks.get(ci as usize).ok_or_else(|| Error::corrupt(format!("blob {}: chunk index {ci} out of {}", self.entry.blob_id, self.chunks.len())))
    }

    /// Fetch, decompress and verify chunk `ci` from the backend, bypassing any cache.
    pub fn read_chunk_direct(&self, ci: u32, expected: Option<&[u8; 32]>, verify: bool) -> Result<Vec<u8>> {
        let c = *self.chunk(ci)?;
        let stored = self.src.read_vec(c.compressed_offset, c.compressed_size as usize)?;
        self.decode_chunk(ci, &c, &stored, expected, verify)
    }

    /// Fetch the consecutive chunks `cis` with one ranged read and decode each. The outer
    /// error is the fetch; each chunk then has its own verdict.
    pub fn fetch_run(&self, cis: &[u32], expected: &dyn Fn(u32) -> Option<[u8; 32]>, verify: bool) -> Result<Vec<Result<Vec<u8>>>> {
        let first = *self.chunk(cis[0])?;
        let last = *self.chunk(*cis.last().unwrap())?;
        let stored = self.src.read_vec(first.compressed_offset, (last.compressed_end() - first.compressed_offset) as usize)?;
        Ok(cis
            .iter()
            .map(|&ci| {
                let c = self.chunks[ci as usize];
                let from = (c.compressed_offset - first.compressed_offset) as usize;
                let want = expected(ci);
                self.decode_chunk(ci, &c, &stored[from..from + c.compressed_size as usize], want.as_ref(), verify)
            })
            .collect())
    }

    /// Chunk `ci` through the cache when there is one: served from it when ready (checked
    /// again when `validate`), else fetched together with up to `amplify` bytes of missing
    /// neighbours, verified, and stored. Returns the bytes and whether they were a cache hit.
    /// With `link`, each fetch's size and time go to the link estimate.
    pub fn read_chunk(
        &self,
        ci: u32,
        expected: &dyn Fn(u32) -> Option<[u8; 32]>,
        verify: bool,
        validate: bool,
        amplify: u64,
        link: Option<&LinkEstimate>,
    ) -> Result<(Vec<u8>, bool)> {
        let c = *self.chunk(ci)?;
        let Some(cache) = &self.cache else {
            return Ok((self.read_chunk_direct(ci, expected(ci).as_ref(), verify)?, false));
        };
        loop {
            if cache.is_ready(ci)? {
                let data = cache.read_cached(&c)?;
                if !validate || self.check_chunk(ci, &c, &data, expected(ci).as_ref()).is_ok() {
                    cache.metrics.chunk_hits.fetch_add(1, Relaxed);
                    return Ok((data, true));
                }
                // Cached bytes went bad (disk, power cut): fetch them again.
                cache.metrics.validate_failures.fetch_add(1, Relaxed);
                cache.mark_unready(ci)?;
            }
            let Some(claim) = cache.claim(ci, &self.chunks, amplify.max(c.compressed_size as u64), &|_| true)? else {
                continue; // filled by a concurrent reader while we waited
            };
            cache.metrics.chunk_misses.fetch_add(1, Relaxed);
            cache.metrics.amplified_chunks.fetch_add(claim.chunks.len() as u64 - 1, Relaxed);
            let started = std::time::Instant::now();
            let results = self.fetch_run(&claim.chunks, expected, verify)?;
            if let Some(link) = link {
                let bytes = claim.chunks.iter().map(|&k| self.chunks[k as usize].compressed_size as u64).sum();
                link.record(bytes, started.elapsed().as_secs_f64());
            }
            let mut mine = None;
            for (&k, r) in claim.chunks.iter().zip(results) {
                match r {
                    Ok(data) => {
                        cache.store(k, &self.chunks[k as usize], &data)?;
                        if k == ci {
                            mine = Some(Ok(data));
                        }
                    }
                    Err(e) if k == ci => mine = Some(Err(e)),
                    Err(_) => {} // a bad neighbour stays missing; its own read will report it
                }
            }
            return mine.expect("the claim starts with ci").map(|d| (d, false));
        }
    }

    /// Verify decoded bytes against the CRC and digest of chunk `ci`.
    pub fn check_chunk(&self, ci: u32, c: &ChunkInfo, data: &[u8], expected: Option<&[u8; 32]>) -> Result<()> {
        let id = &self.entry.blob_id;
        if c.v2_flags & ci_v2_flags::HAS_CRC32 != 0 {
            let crc = codec::crc32c(data);
            if crc != c.data as u32 {
                return Err(Error::DigestMismatch(format!("blob {id} chunk {ci}: CRC-32C {crc:#x} != {:#x}", c.data as u32)));
            }
        }
        let want = self.digests.as_ref().and_then(|d| d.get(ci as usize)).or(expected);
        if let Some(want) = want {
            let got = codec::digest(self.entry.digest_algo(), data);
            if &got != want {
                return Err(Error::DigestMismatch(format!(
                    "blob {id} chunk {ci}: {} {} != recorded {}",
                    self.entry.digest_algo().name(),
                    hex::encode(got),
                    hex::encode(want)
                )));
            }
        }
        Ok(())
    }

    /// Decode stored chunk bytes (already fetched); with `verify`, check CRC and digest.
    pub fn decode_chunk(&self, ci: u32, c: &ChunkInfo, stored: &[u8], expected: Option<&[u8; 32]>, verify: bool) -> Result<Vec<u8>> {
        let id = &self.entry.blob_id;
        let data = if c.compressed {
            codec::decompress(self.entry.compression(), stored, c.uncompressed_size as usize)
                .map_err(|e| Error::Decompress(format!("blob {id} chunk {ci}: {e}")))?
        } else {
            stored.to_vec()
        };
        if verify {
            self.check_chunk(ci, c, &data, expected)?;
        }
        Ok(data)
    }
}
