//! The data pipeline of a build, three stages connected by bounded channels:
//! 1. the source (caller's thread) reads files and submits chunks in batches;
//! 2. a processor thread hashes and compresses each batch in parallel on all cores (rayon);
//! 3. a committer thread takes processed batches in order: dedup by digest, append to the
//!    blob (hashing it), record a CI entry.
//!
//! Stages overlap, so compression of one batch runs while the previous one is written.
//! Builds are deterministic because commits happen in submission order whatever the thread
//! timing. Memory is bounded: the channels are rendezvous channels, so each stage holds at
//! most one batch (≤ 8 MiB of input, or one chunk if chunks are larger; the compressor stage
//! briefly holds a batch's input and output). Per-chunk bookkeeping (~100 bytes per chunk)
//! grows with the number of chunks, which only matters with small chunks on huge inputs.

use super::blob::BlobWriter;
use crate::codec;
use crate::error::{Error, Result};
use crate::layout::{Compressor, Digester};
use rayon::prelude::*;
use std::collections::HashMap;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::thread::JoinHandle;

/// One distinct chunk stored in the blob.
#[derive(Clone, Debug)]
pub struct StoredChunk {
    pub digest: [u8; 32],
    pub crc32: u32,
    pub compressed_offset: u64,
    pub compressed_size: u32,
    pub uncompressed_offset: u64,
    pub uncompressed_size: u32,
    pub compressed: bool,
}

impl From<&crate::layout::chunk_table::ChunkTableEntry> for StoredChunk {
    /// A chunk another bootstrap already describes (merge, chunk dictionary).
    fn from(t: &crate::layout::chunk_table::ChunkTableEntry) -> Self {
        StoredChunk {
            digest: t.digest,
            crc32: t.crc32,
            compressed_offset: t.compressed_offset,
            compressed_size: t.compressed_size,
            uncompressed_offset: t.uncompressed_offset,
            uncompressed_size: t.uncompressed_size,
            compressed: t.flags & crate::layout::chunk_flags::COMPRESSED != 0,
        }
    }
}

struct Job {
    node: usize,
    index: usize,
    data: Vec<u8>,
}

struct Processed {
    node: usize,
    index: usize,
    digest: [u8; 32],
    crc32: u32,
    /// Uncompressed length.
    len: u32,
    /// What goes into the blob: the compressed bytes, or the raw ones when they did not
    /// shrink (the raw copy is dropped as soon as a smaller one exists).
    stored: Vec<u8>,
    compressed: bool,
}

/// Chunks an earlier image already stores (`--chunk-dict`): a chunk found here by digest
/// and size is referenced where it is instead of being stored again.
pub struct ChunkDict {
    /// The dictionary's blobs, in its blob-table order.
    pub blobs: Vec<crate::layout::superblock::BlobEntry>,
    pub by_digest: HashMap<([u8; 32], u32), crate::layout::chunk_table::ChunkTableEntry>,
}

/// In `ChunkOutput::refs`, a chunk from the dictionary: the low bits index `dict_chunks`.
pub const DICT_REF: u32 = 1 << 31;

/// Result of the data phase.
pub struct ChunkOutput {
    pub chunks: Vec<StoredChunk>,
    /// (node, chunk index in file, CI index, or `DICT_REF | i`) for every submitted chunk.
    pub refs: Vec<(usize, usize, u32)>,
    /// The dictionary chunks the refs use, each once, in first-use order.
    pub dict_chunks: Vec<crate::layout::chunk_table::ChunkTableEntry>,
    pub writer: BlobWriter,
    pub deduped: u64,
    pub bytes_in: u64,
}

struct Committer {
    writer: BlobWriter,
    dedup: HashMap<([u8; 32], u32), u32>,
    dict: Option<std::sync::Arc<ChunkDict>>,
    dict_chunks: Vec<crate::layout::chunk_table::ChunkTableEntry>,
    chunks: Vec<StoredChunk>,
    refs: Vec<(usize, usize, u32)>,
    next_uoff: u64,
    deduped: u64,
    bytes_in: u64,
    progress: Option<indicatif::ProgressBar>,
}

fn process(c: Compressor, d: Digester, batch: Vec<Job>) -> Result<Vec<Processed>> {
    batch
        .into_par_iter()
        .map(|j| {
            let digest = codec::digest(d, &j.data);
            let crc32 = codec::crc32c(&j.data);
            let len = j.data.len() as u32;
            let (stored, compressed) = match codec::compress(c, &j.data)? {
                Some(z) => (z, true),
                None => (j.data, false),
            };
            Ok(Processed { node: j.node, index: j.index, digest, crc32, len, stored, compressed })
        })
        .collect()
}

impl Committer {
    fn commit(&mut self, items: Vec<Processed>) -> Result<()> {
        for p in items {
            let usize_ = p.len;
            self.bytes_in += p.len as u64;
            if let Some(pb) = &self.progress {
                pb.inc(p.len as u64);
            }
            let key = (p.digest, usize_);
            if let Some(&ci) = self.dedup.get(&key) {
                self.deduped += 1;
                self.refs.push((p.node, p.index, ci));
                continue;
            }
            if let Some(t) = self.dict.as_ref().and_then(|d| d.by_digest.get(&key)) {
                let r = DICT_REF | self.dict_chunks.len() as u32;
                self.dict_chunks.push(t.clone());
                self.dedup.insert(key, r);
                self.deduped += 1;
                self.refs.push((p.node, p.index, r));
                continue;
            }
            let ci = self.chunks.len() as u32;
            if ci > crate::layout::MAX_CI_INDEX {
                return Err(Error::Unsupported("more than 2^24 distinct chunks in one blob".into()));
            }
            let stored: &[u8] = &p.stored;
            let c_off = self.writer.write_data(stored)?;
            self.chunks.push(StoredChunk {
                digest: p.digest,
                crc32: p.crc32,
                compressed_offset: c_off,
                compressed_size: stored.len() as u32,
                uncompressed_offset: self.next_uoff,
                uncompressed_size: usize_,
                compressed: p.compressed,
            });
            self.next_uoff += crate::layout::bytes::round_up(usize_ as u64, 4096);
            self.dedup.insert(key, ci);
            self.refs.push((p.node, p.index, ci));
        }
        Ok(())
    }
}

/// Cap on chunks per batch, so many tiny files do not pile up bookkeeping.
const MAX_BATCH_JOBS: usize = 4096;

pub struct Pipeline {
    batch: Vec<Job>,
    batch_bytes: usize,
    batch_limit: usize,
    tx: Option<SyncSender<Vec<Job>>>,
    processor: Option<JoinHandle<()>>,
    committer: Option<JoinHandle<Result<Committer>>>,
    opts: super::BuildOptions,
}

impl Pipeline {
    pub fn new(opts: &super::BuildOptions, writer: BlobWriter, progress: Option<indicatif::ProgressBar>) -> Self {
        let (compressor, digester, chunk_size) = (opts.compressor, opts.digester, opts.chunk_size);
        let threads = rayon::current_num_threads().max(1);
        // Enough chunks to keep every core busy, but never more than ~8 MiB per batch
        // (one chunk if chunks are larger), so RSS stays bounded for any input.
        let batch_limit = (threads * 4 * chunk_size as usize).clamp(chunk_size as usize, (8 << 20).max(chunk_size as usize));
        let (tx, rx) = sync_channel::<Vec<Job>>(0);
        let (done_tx, done_rx) = sync_channel::<Result<Vec<Processed>>>(0);
        let committer = Committer {
            writer,
            dedup: HashMap::new(),
            dict: opts.chunk_dict.clone(),
            dict_chunks: Vec::new(),
            chunks: Vec::new(),
            refs: Vec::new(),
            next_uoff: 0,
            deduped: 0,
            bytes_in: 0,
            progress,
        };
        let processor = std::thread::Builder::new()
            .name("nydus-build-compress".into())
            .spawn(move || run_processor(compressor, digester, rx, done_tx))
            .expect("spawn chunk processor");
        let committer =
            std::thread::Builder::new().name("nydus-build-commit".into()).spawn(move || run_committer(committer, done_rx)).expect("spawn chunk committer");
        Pipeline { batch: Vec::new(), batch_bytes: 0, batch_limit, tx: Some(tx), processor: Some(processor), committer: Some(committer), opts: opts.clone() }
    }

    pub fn submit(&mut self, node: usize, index: usize, data: Vec<u8>) -> Result<()> {
        self.batch_bytes += data.len();
        self.batch.push(Job { node, index, data });
        if self.batch_bytes >= self.batch_limit || self.batch.len() >= MAX_BATCH_JOBS {
            self.flush()?;
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<()> {
        self.opts.check_cancel()?;
        if self.batch.is_empty() {
            return Ok(());
        }
        let batch = std::mem::take(&mut self.batch);
        self.batch_bytes = 0;
        if self.tx.as_ref().unwrap().send(batch).is_err() {
            // A stage stopped early: surface its error.
            return Err(self.join().err().unwrap_or_else(|| Error::invalid("chunk pipeline stopped")));
        }
        Ok(())
    }

    fn join(&mut self) -> Result<Committer> {
        self.tx.take();
        if let Some(h) = self.processor.take() {
            h.join().map_err(|_| Error::invalid("chunk processor panicked"))?;
        }
        match self.committer.take() {
            Some(h) => h.join().map_err(|_| Error::invalid("chunk committer panicked"))?,
            None => Err(Error::invalid("chunk pipeline already joined")),
        }
    }

    pub fn finish(mut self) -> Result<ChunkOutput> {
        self.flush()?;
        let c = self.join()?;
        if let Some(pb) = &c.progress {
            pb.finish_and_clear();
        }
        Ok(ChunkOutput { chunks: c.chunks, refs: c.refs, dict_chunks: c.dict_chunks, writer: c.writer, deduped: c.deduped, bytes_in: c.bytes_in })
    }
}

impl Drop for Pipeline {
    /// On an error path the pipeline is dropped unfinished: stop and join the worker, so
    /// the temporary blob it owns is deleted before `build` returns.
    fn drop(&mut self) {
        let _ = self.join();
    }
}

fn run_processor(c: Compressor, d: Digester, rx: Receiver<Vec<Job>>, tx: SyncSender<Result<Vec<Processed>>>) {
    while let Ok(batch) = rx.recv() {
        let done = process(c, d, batch);
        let failed = done.is_err();
        if tx.send(done).is_err() || failed {
            return;
        }
    }
}

fn run_committer(mut c: Committer, rx: Receiver<Result<Vec<Processed>>>) -> Result<Committer> {
    while let Ok(done) = rx.recv() {
        c.commit(done?)?;
    }
    Ok(c)
}

/// Read `r` in `chunk_size` pieces and submit them as chunks of `node`. `expected` is the
/// declared size: buffers are sized to what is left of it, so small files do not each pin
/// a whole chunk-sized allocation. Returns bytes read (the caller compares with `expected`).
pub fn submit_stream(p: &mut Pipeline, node: usize, r: &mut dyn std::io::Read, chunk_size: usize, expected: u64, what: &dyn Fn() -> String) -> Result<u64> {
    let mut total = 0u64;
    let mut index = 0;
    while total < expected {
        let want = (expected - total).min(chunk_size as u64) as usize;
        let mut buf = vec![0u8; want];
        let mut filled = 0;
        while filled < want {
            match r.read(&mut buf[filled..]) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(Error::io(format!("read {}", what()), e)),
            }
        }
        if filled == 0 {
            break;
        }
        buf.truncate(filled);
        total += filled as u64;
        p.submit(node, index, buf)?;
        index += 1;
        if filled < want {
            break;
        }
    }
    Ok(total)
}
