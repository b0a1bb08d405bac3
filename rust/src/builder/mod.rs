//! `nydus-hybrid build`: a directory or OCI layer tarball in, a RAFS v6 bootstrap and one
//! data blob out.

pub mod blob;
pub mod bootstrap;
pub mod chunker;
pub mod source_dir;
pub mod source_tar;
pub mod tarstream;
pub mod tree;
pub mod whiteout;

use crate::error::{Error, IoContext, Result};
use crate::layout::superblock::{self, valid_chunk_size};
use crate::layout::{Compressor, Digester};
use chunker::Pipeline;
use std::collections::HashMap;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use tree::Tree;
pub use whiteout::WhiteoutSpec;

/// Polled during a build; returning true stops it with `Error::Cancelled`.
pub type CancelFn = std::sync::Arc<dyn Fn() -> bool + Send + Sync>;

#[derive(Clone)]
pub struct BuildOptions {
    pub chunk_size: u32,
    pub compressor: Compressor,
    pub digester: Digester,
    /// Store uid/gid (nydus-image default; `--repeatable` clears it).
    pub explicit_uid_gid: bool,
    pub whiteout_spec: WhiteoutSpec,
    /// Draw a progress bar when stderr is a terminal.
    pub progress: bool,
    /// Paths relative to a directory source to leave out (with everything below them).
    pub exclude: Vec<Vec<u8>>,
    /// `--blob-inline-meta`: the bootstrap goes into the blob as `image.boot` (and the
    /// blob is written even without chunks), instead of into a file of its own.
    pub inline_bootstrap: bool,
    /// `--prefetch-policy fs`: image paths for the bootstrap's prefetch table (§1.6).
    pub prefetch: Vec<Vec<u8>>,
    /// `--parent-bootstrap`: the new layer goes over this image (its whiteouts applied by
    /// `merge`), and the bootstrap written is the whole image's.
    pub parent: Option<PathBuf>,
    /// `--chunk-dict`: chunks this image's bootstrap names are referenced, not stored again.
    pub chunk_dict: Option<std::sync::Arc<chunker::ChunkDict>>,
    pub cancel: Option<CancelFn>,
}

impl BuildOptions {
    pub fn check_cancel(&self) -> Result<()> {
        match &self.cancel {
            Some(f) if f() => Err(Error::Cancelled),
            _ => Ok(()),
        }
    }
}

impl Default for BuildOptions {
    fn default() -> Self {
        BuildOptions {
            chunk_size: crate::layout::DEFAULT_CHUNK_SIZE,
            compressor: Compressor::Zstd,
            digester: Digester::Blake3,
            explicit_uid_gid: true,
            whiteout_spec: WhiteoutSpec::Oci,
            progress: true,
            exclude: Vec::new(),
            inline_bootstrap: false,
            prefetch: Vec::new(),
            parent: None,
            chunk_dict: None,
            cancel: None,
        }
    }
}

#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct BuildReport {
    pub blob_id: Option<String>,
    pub blob_path: Option<PathBuf>,
    pub blob_size: u64,
    pub bootstrap_size: u64,
    pub inodes: u64,
    pub files: u64,
    pub bytes_in: u64,
    pub chunks: u64,
    pub deduped_chunks: u64,
    /// Bytes of distinct chunks (what dedup left to store, before compression).
    pub unique_bytes: u64,
    pub uncompressed_size: u64,
    /// The bootstrap is inside the blob (`image.boot`).
    pub inline_bootstrap: bool,
    /// Distinct chunks taken from the chunk dictionary instead of being stored.
    pub dict_chunks: u64,
}

impl chunker::ChunkDict {
    /// The chunks of an image's bootstrap (`--chunk-dict [bootstrap=]PATH`).
    pub fn load(path: &Path) -> Result<Self> {
        let boot = crate::reader::Bootstrap::open(path)?;
        if let Some(e) = boot.blobs.iter().find(|e| e.blob_id == blob::INLINE_PLACEHOLDER_ID) {
            return Err(Error::invalid(format!("chunk dictionary {}: blob {} has no id of its own (merge the layer first)", path.display(), e.blob_index)));
        }
        let by_digest =
            boot.chunk_table()?.into_iter().filter(|t| (t.blob_index as usize) < boot.blobs.len()).map(|t| ((t.digest, t.uncompressed_size), t)).collect();
        Ok(chunker::ChunkDict { blobs: boot.blobs.clone(), by_digest })
    }
}

fn progress_bar(opts: &BuildOptions, total: Option<u64>) -> Option<indicatif::ProgressBar> {
    if !opts.progress || !std::io::stderr().is_terminal() {
        return None;
    }
    let pb = match total {
        Some(t) => indicatif::ProgressBar::new(t).with_style(
            indicatif::ProgressStyle::with_template("{spinner} building [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}")
                .unwrap()
                .progress_chars("=> "),
        ),
        None => {
            indicatif::ProgressBar::new_spinner().with_style(indicatif::ProgressStyle::with_template("{spinner} building {bytes} {bytes_per_sec}").unwrap())
        }
    };
    pb.enable_steady_tick(std::time::Duration::from_millis(120));
    Some(pb)
}

/// A regular file is read as a tarball (its compression is sniffed from its magic bytes);
/// a directory is walked.
fn is_tar(source: &Path) -> bool {
    source.is_file()
}

/// Build `source` into a bootstrap at `bootstrap_path` and a blob in `blob_dir`; with
/// `opts.inline_bootstrap`, into one blob carrying its bootstrap (`bootstrap_path` None).
pub fn build(source: &Path, bootstrap_path: Option<&Path>, blob_dir: &Path, opts: &BuildOptions) -> Result<BuildReport> {
    if !valid_chunk_size(opts.chunk_size) {
        return Err(Error::invalid(format!("chunk size {:#x} must be a power of two from 4 KiB to 16 MiB", opts.chunk_size)));
    }
    if opts.compressor == Compressor::Gzip {
        return Err(Error::invalid("gzip is not a compressor for native builds (use zstd, lz4_block or none)"));
    }
    match (bootstrap_path, opts.inline_bootstrap) {
        (Some(_), true) => return Err(Error::invalid("--blob-inline-meta puts the bootstrap in the blob: give no bootstrap path")),
        (None, false) => return Err(Error::invalid("a bootstrap path is required (or --blob-inline-meta)")),
        _ => {}
    }
    if !source.exists() {
        return Err(Error::invalid(format!("source {} does not exist", source.display())));
    }
    if let Some(d) = &opts.chunk_dict {
        if let Some(e) = d.blobs.iter().find(|e| e.digester != opts.digester as u32) {
            return Err(Error::invalid(format!("the chunk dictionary's blob {} uses another digester than this build's {:?}", e.blob_id, opts.digester)));
        }
    }
    if opts.parent.is_some() && opts.inline_bootstrap {
        return Err(Error::invalid("--parent-bootstrap makes an image's bootstrap, --blob-inline-meta a layer's: choose one"));
    }
    // Over a parent, the layer keeps its OCI whiteouts as entries for the merge to apply.
    let whiteouts = if opts.parent.is_some() { WhiteoutSpec::None } else { opts.whiteout_spec };
    let parent = opts.parent.as_deref().map(|p| crate::merge::layer_from_file(p, None, None)).transpose()?;
    // Open the bootstrap's temporary file first, so an unwritable destination fails before
    // any data is processed and no orphan blob is published.
    let boot_out = bootstrap_path.map(AtomicFile::create).transpose()?;
    let writer = blob::BlobWriter::create(blob_dir)?;
    let (mut tree, out) = if is_tar(source) {
        let mut p = Pipeline::new(opts, writer, progress_bar(opts, None));
        let tree = source_tar::scan(source, &mut p, opts.chunk_size, whiteouts)?;
        (tree, p.finish()?)
    } else {
        let (tree, paths) = source_dir::scan(source, &BuildOptions { whiteout_spec: whiteouts, ..opts.clone() })?;
        let order = bootstrap::plan(&tree, opts.chunk_size).order;
        let total = tree.nodes.iter().filter(|n| n.is_reg()).map(|n| n.size).sum();
        let mut p = Pipeline::new(opts, writer, progress_bar(opts, Some(total)));
        source_dir::feed(&tree, &paths, &order, &mut p, opts)?;
        (tree, p.finish()?)
    };
    // Positions of the bootstrap's chunk list: the new blob's chunks, then the
    // dictionary's that were used; its blob table: the new blob, then the dictionary
    // blobs those live in (in the dictionary's order), as nydus-image lays it out.
    let n_new = out.chunks.len() as u32;
    let refs: Vec<(usize, usize, u32)> =
        out.refs.iter().map(|&(node, idx, ci)| (node, idx, if ci & chunker::DICT_REF != 0 { n_new + (ci & !chunker::DICT_REF) } else { ci })).collect();
    assign_chunks(&mut tree, &refs);
    let mut dict_blobs: Vec<u32> = out.dict_chunks.iter().map(|t| t.blob_index).collect();
    dict_blobs.sort_unstable();
    dict_blobs.dedup();
    let first_dict_index = (n_new > 0) as u32;
    let mut places = bootstrap::single_blob_places(&out.chunks);
    let mut all_chunks = out.chunks.clone();
    for t in &out.dict_chunks {
        let rank = dict_blobs.binary_search(&t.blob_index).expect("collected above") as u32;
        places.push(bootstrap::ChunkPlace { blob_index: first_dict_index + rank, ci_index: t.index, flags: t.flags });
        all_chunks.push(chunker::StoredChunk::from(t));
    }
    let dict_entries: Vec<superblock::BlobEntry> = match &opts.chunk_dict {
        Some(d) => dict_blobs.iter().map(|&i| d.blobs[i as usize].clone()).collect(),
        None => Vec::new(),
    };

    let layout = bootstrap::plan(&tree, opts.chunk_size);
    let bopts = bootstrap::BootstrapOptions {
        chunk_size: opts.chunk_size,
        compressor: opts.compressor,
        digester: opts.digester,
        explicit_uid_gid: opts.explicit_uid_gid,
        prefetch: opts.prefetch.clone(),
    };
    let boot_size = std::cell::Cell::new(0u64);
    let write_boot = |entry: Option<&superblock::BlobEntry>| {
        let entries = entry.into_iter().chain(dict_entries.iter()).cloned().collect();
        let part = bootstrap::BlobPart { entries, chunks: &all_chunks, places: &places };
        let image = bootstrap::write(&tree, &layout, &part, &bopts)?;
        boot_size.set(image.len() as u64);
        Ok(image)
    };
    let finished = if opts.inline_bootstrap {
        Some(blob::finish(out.writer, &out.chunks, opts.compressor, opts.digester, opts.chunk_size, Some(&write_boot))?)
    } else if out.chunks.is_empty() {
        drop(out.writer); // no data: no blob (a zero-chunk blob entry is unloadable)
        None
    } else {
        Some(blob::finish(out.writer, &out.chunks, opts.compressor, opts.digester, opts.chunk_size, None)?)
    };
    let mut inodes = layout.inos;
    if let Some(boot_out) = boot_out {
        let layer = write_boot(finished.as_ref().and_then(|f| f.entry.as_ref()))?;
        match parent {
            None => boot_out.commit(&layer)?,
            Some(parent) => {
                drop(boot_out); // merge writes the file (atomically, as this would have)
                let layer = crate::merge::Layer {
                    bootstrap: crate::reader::Bootstrap::from_bytes(layer)?,
                    label: source.display().to_string(),
                    blob_id: None,
                    blob_size: None,
                };
                let mopts = crate::merge::MergeOptions { prefetch: opts.prefetch.clone(), keep_root_xattrs: true };
                let r = crate::merge::merge(&[parent, layer], bootstrap_path.expect("checked above"), &mopts)?;
                boot_size.set(r.bootstrap_size);
                inodes = r.inodes;
            }
        }
    }

    Ok(BuildReport {
        blob_id: finished.as_ref().map(|f| f.id.clone()),
        blob_path: finished.as_ref().map(|f| f.path.clone()),
        blob_size: finished.as_ref().map(|f| f.size).unwrap_or(0),
        uncompressed_size: finished.as_ref().and_then(|f| f.entry.as_ref()).map(|e| e.uncompressed_size).unwrap_or(0),
        bootstrap_size: boot_size.get(),
        inodes,
        files: tree.nodes.iter().filter(|n| n.is_reg() && !n.detached).count() as u64,
        bytes_in: out.bytes_in,
        chunks: out.chunks.len() as u64,
        deduped_chunks: out.deduped,
        dict_chunks: out.dict_chunks.len() as u64,
        unique_bytes: out.chunks.iter().map(|c| c.uncompressed_size as u64).sum(),
        inline_bootstrap: opts.inline_bootstrap,
    })
}

/// Put each submitted chunk's CI index on its node; hard-link members share their group's.
fn assign_chunks(tree: &mut Tree, refs: &[(usize, usize, u32)]) {
    for &(node, idx, ci) in refs {
        let chunks = &mut tree.nodes[node].chunks;
        if chunks.len() <= idx {
            chunks.resize(idx + 1, 0);
        }
        chunks[idx] = ci;
    }
    let mut by_key: HashMap<u64, Vec<u32>> = HashMap::new();
    for n in &tree.nodes {
        if let (Some(k), false) = (n.link_key, n.chunks.is_empty()) {
            by_key.entry(k).or_insert_with(|| n.chunks.clone());
        }
    }
    for n in tree.nodes.iter_mut() {
        if let Some(chunks) = n.link_key.and_then(|k| by_key.get(&k)) {
            n.chunks = chunks.clone();
        }
    }
}

/// A file written via a temporary sibling and renamed, so readers never see a partial file.
pub struct AtomicFile {
    tmp: tempfile::NamedTempFile,
    path: PathBuf,
}

impl AtomicFile {
    pub fn create(path: &Path) -> Result<Self> {
        let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir).ctx(|| format!("create {}", dir.display()))?;
        if path.is_dir() {
            return Err(Error::invalid(format!("{} is a directory", path.display())));
        }
        let tmp = tempfile::NamedTempFile::new_in(dir).ctx(|| format!("create a file in {}", dir.display()))?;
        Ok(AtomicFile { tmp, path: path.to_path_buf() })
    }

    pub fn commit(mut self, data: &[u8]) -> Result<()> {
        let path = &self.path;
        std::io::Write::write_all(&mut self.tmp, data).ctx(|| format!("write {}", path.display()))?;
        self.tmp.as_file().sync_all().ctx(|| format!("sync {}", path.display()))?;
        self.tmp.persist(path).map_err(|e| Error::io(format!("rename to {}", path.display()), e.error))?;
        publish_mode(path)
    }
}

/// Outputs are world-readable like any image file (temporary files start as 0600).
pub fn publish_mode(path: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o644)).ctx(|| format!("chmod {}", path.display()))
}
