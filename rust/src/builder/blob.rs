//! Writing a data blob (§6.2, "native + blob-toc"): chunk data, then the framed tail
//! sections: TAR(image.blob) · CI array · CI header · TAR(blob.meta) · digests ·
//! TAR(blob.digest) · ToC · TAR(rafs.blob.toc). The blob id is the sha256 of the whole file
//! as written, i.e. the digest under which a registry serves it (see ARCHITECTURE.md).

use super::chunker::StoredChunk;
use crate::codec;
use crate::error::{Error, IoContext, Result};
use crate::layout::blob_features as bf;
use crate::layout::blob_meta::{ChunkInfo, CiHeader};
use crate::layout::superblock::BlobEntry;
use crate::layout::tarhdr;
use crate::layout::toc::TocEntry;
use crate::layout::{Compressor, Digester};
use sha2::{Digest, Sha256};
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

pub const FEATURES: u32 = bf::CAP_TAR_TOC | bf::HAS_TOC | bf::HAS_TAR_HEADER | bf::INLINED_CHUNK_DIGEST | bf::ALIGNED;

/// Appends to a temporary blob file in the output directory, hashing every byte.
pub struct BlobWriter {
    out: BufWriter<File>,
    tmp: tempfile::TempPath,
    dir: PathBuf,
    hasher: Sha256,
    pos: u64,
}

impl BlobWriter {
    pub fn create(dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir).ctx(|| format!("create blob dir {}", dir.display()))?;
        let tmp = tempfile::Builder::new().prefix(".blob-").tempfile_in(dir).ctx(|| format!("create temporary blob in {}", dir.display()))?;
        let (file, tmp) = tmp.into_parts();
        Ok(BlobWriter { out: BufWriter::with_capacity(1 << 20, file), tmp, dir: dir.to_path_buf(), hasher: Sha256::new(), pos: 0 })
    }

    /// Append bytes; returns the offset they start at.
    pub fn write_data(&mut self, data: &[u8]) -> Result<u64> {
        let at = self.pos;
        self.out.write_all(data).ctx(|| "write blob".into())?;
        self.hasher.update(data);
        self.pos += data.len() as u64;
        Ok(at)
    }

    fn write_tar_header(&mut self, name: &str, size: u64) -> Result<()> {
        self.write_data(&tarhdr::encode(name, size)).map(|_| ())
    }
}

/// Blob metadata after finishing, for the bootstrap's blob table and device slot.
pub struct FinishedBlob {
    /// sha256 of the file, its name: the digest a registry serves it under.
    pub id: String,
    pub size: u64,
    /// Its blob-table entry; None for an inline-meta blob without chunks, which no
    /// bootstrap references.
    pub entry: Option<BlobEntry>,
    pub path: PathBuf,
}

fn toc_entry(name: &str, flags: u32, digest: [u8; 32], offset: u64, stored: u64, uncompressed: u64) -> TocEntry {
    TocEntry { flags, name: name.into(), digest, offset, stored_size: stored, uncompressed_size: uncompressed }
}

/// The blob id an inlined bootstrap gives its own blob (§6.7): the real one is the sha256
/// of the finished file, which contains the bootstrap; readers and merge substitute it.
pub const INLINE_PLACEHOLDER_ID: &str = "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx";

/// Writes the bootstrap to inline, given the blob's entry as the bootstrap must describe it
/// (placeholder id, `compressed_size` = where the bootstrap starts), or None for a blob
/// without chunks (the bootstrap then has no blob table).
pub type InlineBootstrap<'a> = &'a dyn Fn(Option<&BlobEntry>) -> Result<Vec<u8>>;

/// Write the tail sections, name the file by its sha256 and return its blob-table entry.
/// With `inline`, the bootstrap goes in as `image.boot` (§6.2 row 4, what nydus-snapshotter's
/// converter makes of each layer); a blob without chunks then holds only the bootstrap and
/// the ToC, as the reference writes it.
pub fn finish(
    mut w: BlobWriter,
    chunks: &[StoredChunk],
    compressor: Compressor,
    digester: Digester,
    chunk_size: u32,
    inline: Option<InlineBootstrap>,
) -> Result<FinishedBlob> {
    let features = FEATURES | if inline.is_some() { bf::INLINED_FS_META } else { 0 };
    let none = TocEntry::flags_for(Compressor::None);
    let mut toc = Vec::new();
    let mut entry = None;
    if !chunks.is_empty() {
        let (e, sections) = write_data_sections(&mut w, chunks, compressor, digester, chunk_size, features)?;
        entry = Some(e);
        toc = sections;
    }
    if let Some(make) = inline {
        let inner =
            entry.as_ref().map(|e| BlobEntry { blob_id: INLINE_PLACEHOLDER_ID.into(), compressed_size: w.pos, toc_size: 0, toc_digest: [0; 32], ..e.clone() });
        let boot = make(inner.as_ref())?;
        let (flags, stored) = match codec::compress(Compressor::Zstd, &boot)? {
            Some(z) => (TocEntry::flags_for(Compressor::Zstd), z),
            None => (none, boot.clone()),
        };
        let at = w.write_data(&stored)?;
        w.write_tar_header("image.boot", stored.len() as u64)?;
        toc.push(toc_entry("image.boot", flags, codec::sha256(&boot), at, stored.len() as u64, boot.len() as u64));
    }
    let mut toc_bytes: Vec<u8> = toc.iter().flat_map(|e| e.encode()).collect();
    toc_bytes.extend_from_slice(&tarhdr::encode(crate::layout::toc::TOC_NAME, (toc.len() * 128) as u64));
    w.write_data(&toc_bytes)?;

    let file = w.out.into_inner().map_err(|e| Error::io("flush blob", e.into_error()))?;
    file.sync_all().ctx(|| "sync blob".into())?;
    let id = hex::encode(w.hasher.finalize());
    let path = w.dir.join(&id);
    w.tmp.persist(&path).map_err(|e| Error::io(format!("rename blob to {}", path.display()), e.error))?;
    super::publish_mode(&path)?;
    let entry =
        entry.map(|e| BlobEntry { blob_id: id.clone(), compressed_size: w.pos, toc_size: toc_bytes.len() as u32, toc_digest: codec::sha256(&toc_bytes), ..e });
    Ok(FinishedBlob { id, size: w.pos, entry, path })
}

/// TAR(image.blob) · CI array · CI header · TAR(blob.meta) · digests · TAR(blob.digest), and
/// the blob entry (without its final id, size and ToC) and ToC entries they make.
fn write_data_sections(
    w: &mut BlobWriter,
    chunks: &[StoredChunk],
    compressor: Compressor,
    digester: Digester,
    chunk_size: u32,
    features: u32,
) -> Result<(BlobEntry, Vec<TocEntry>)> {
    let data_size = w.pos;
    w.write_tar_header("image.blob", data_size)?;
    // HEAD's image.blob digest covers the chunk data and its own tar header (§6.6).
    let image_blob_digest: [u8; 32] = w.hasher.clone().finalize().into();

    let mut ci_plain = Vec::with_capacity(chunks.len() * 16);
    for c in chunks {
        let rec = ChunkInfo {
            compressed_offset: c.compressed_offset,
            compressed_size: c.compressed_size,
            uncompressed_offset: c.uncompressed_offset,
            uncompressed_size: c.uncompressed_size,
            ..Default::default()
        };
        ci_plain.extend_from_slice(&rec.encode_v1());
    }
    let (ci_algo, ci_stored) = match codec::compress(compressor, &ci_plain)? {
        Some(z) => (compressor, z),
        None => (Compressor::None, ci_plain.clone()),
    };
    let ci_offset = w.write_data(&ci_stored)?;
    let header = CiHeader {
        features,
        ci_compressor: ci_algo as u32,
        ci_entries: chunks.len() as u32,
        ci_offset,
        ci_compressed_size: ci_stored.len() as u64,
        ci_uncompressed_size: ci_plain.len() as u64,
        ..Default::default()
    }
    .encode();
    let header_offset = w.write_data(&header)?;
    w.write_tar_header("blob.meta", (ci_stored.len() + header.len()) as u64)?;

    let digests: Vec<u8> = chunks.iter().flat_map(|c| c.digest).collect();
    let digest_offset = w.write_data(&digests)?;
    w.write_tar_header("blob.digest", digests.len() as u64)?;

    let uncompressed_size = chunks.last().map(|c| crate::layout::bytes::round_up(c.uncompressed_offset + c.uncompressed_size as u64, 4096)).unwrap_or(0);
    let none = TocEntry::flags_for(Compressor::None);
    let toc = vec![
        toc_entry("image.blob", none, image_blob_digest, 0, data_size, uncompressed_size),
        toc_entry("blob.meta", TocEntry::flags_for(ci_algo), codec::sha256(&ci_plain), ci_offset, ci_stored.len() as u64, ci_plain.len() as u64),
        toc_entry("blob.meta.header", none, codec::sha256(&header), header_offset, 4096, 4096),
        toc_entry("blob.digest", none, codec::sha256(&digests), digest_offset, digests.len() as u64, digests.len() as u64),
    ];
    let entry = BlobEntry {
        blob_id: String::new(),
        blob_index: 0,
        chunk_size,
        chunk_count: chunks.len() as u32,
        compressor: compressor as u32,
        digester: digester as u32,
        features,
        compressed_size: 0,
        uncompressed_size,
        ci_compressor: ci_algo as u32,
        ci_offset,
        ci_compressed_size: ci_stored.len() as u64,
        ci_uncompressed_size: ci_plain.len() as u64,
        ..Default::default()
    };
    Ok((entry, toc))
}
