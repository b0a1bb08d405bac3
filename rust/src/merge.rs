//! `nydus-hybrid merge`: layer bootstraps, lowest first, into the one bootstrap of an image,
//! as `nydus-image merge` makes it. Each layer's tree is laid over the ones below with OCI's
//! rules (a `.wh.NAME` hides NAME below, `.wh..wh..opq` hides everything below in its
//! directory, a non-directory replaces what was there). As in nydus-image's merge, only
//! those names are whiteouts: a 0:0 character device or a `trusted.overlay.opaque` xattr in
//! a layer is content, kept as it is. The blob table lists every
//! layer's blobs in layer order; a layer bootstrap taken from its blob (placeholder id)
//! gets that blob's digest as its id. No file data is read: chunks keep their blob places.

use crate::builder::blob::INLINE_PLACEHOLDER_ID;
use crate::builder::bootstrap::{self, BlobPart, BootstrapOptions, ChunkPlace};
use crate::builder::chunker::StoredChunk;
use crate::builder::tree::{Node, NodeId, Tree, ROOT};
use crate::builder::AtomicFile;
use crate::error::{Error, Result};
use crate::layout::blob_features as bf;
use crate::layout::chunk_table::ChunkTableEntry;
use crate::layout::superblock::BlobEntry;
use crate::layout::{mode, sb_flags};
use crate::reader::Bootstrap;
use std::collections::{HashMap, HashSet};
use std::path::Path;

const WHITEOUT_PREFIX: &[u8] = b".wh.";
const OPAQUE: &[u8] = b".wh..wh..opq";

/// One layer to merge.
pub struct Layer {
    pub bootstrap: Bootstrap,
    /// What names the layer in messages (its file or blob).
    pub label: String,
    /// The digest (sha256 hex) of the blob the bootstrap came from, for its placeholder id.
    pub blob_id: Option<String>,
    /// That blob's size in bytes, for its entry (`--blob-sizes`).
    pub blob_size: Option<u64>,
}

#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct MergeReport {
    pub layers: u64,
    /// Blob ids in blob-table order.
    pub blobs: Vec<String>,
    pub inodes: u64,
    pub files: u64,
    /// Distinct chunks the merged files reference.
    pub chunks: u64,
    pub bootstrap_size: u64,
}

#[derive(Default)]
pub struct MergeOptions {
    /// Image paths for the prefetch table (`--prefetch-policy fs`).
    pub prefetch: Vec<Vec<u8>>,
    /// The root keeps the lowest layer's xattrs: what `nydus-image create
    /// --parent-bootstrap` does (its `merge` gives the root the upper layer's, as any
    /// other directory).
    pub keep_root_xattrs: bool,
}

/// The merged tree and the chunks its files name, built one layer at a time.
struct Merger {
    tree: Tree,
    entries: Vec<BlobEntry>,
    blob_by_id: HashMap<String, u32>,
    chunks: Vec<StoredChunk>,
    places: Vec<ChunkPlace>,
    chunk_pos: HashMap<(u32, u32), u32>,
}

pub fn merge(layers: &[Layer], out: &Path, opts: &MergeOptions) -> Result<MergeReport> {
    let first = layers.first().ok_or_else(|| Error::invalid("merge needs at least one layer bootstrap"))?;
    let chunk_size = first.bootstrap.chunk_size();
    for l in layers {
        if l.bootstrap.chunk_size() != chunk_size {
            return Err(Error::invalid(format!("{}: chunk size {:#x} differs from the first layer's {chunk_size:#x}", l.label, l.bootstrap.chunk_size())));
        }
    }
    // Fail on an unwritable destination before the work.
    let dest = AtomicFile::create(out)?;
    let root = node_of(&first.bootstrap, first.bootstrap.root_nid(), Vec::new(), None)?;
    let mut m =
        Merger { tree: Tree::new(root), entries: Vec::new(), blob_by_id: HashMap::new(), chunks: Vec::new(), places: Vec::new(), chunk_pos: HashMap::new() };
    for (i, l) in layers.iter().enumerate() {
        let blobs = m.add_blobs(l)?;
        m.apply(l, i, &blobs, opts)?;
    }
    m.tree.finish()?;
    m.keep_referenced_chunks();

    let ext = &first.bootstrap.ext;
    let bopts = BootstrapOptions {
        chunk_size: chunk_size as u32,
        compressor: ext.compressor(),
        digester: ext.digester(),
        explicit_uid_gid: layers.iter().any(|l| l.bootstrap.ext.flags & sb_flags::EXPLICIT_UID_GID != 0),
        prefetch: opts.prefetch.clone(),
    };
    let layout = bootstrap::plan(&m.tree, bopts.chunk_size);
    let part = BlobPart { entries: m.entries.clone(), chunks: &m.chunks, places: &m.places };
    let image = bootstrap::write(&m.tree, &layout, &part, &bopts)?;
    dest.commit(&image)?;
    Ok(MergeReport {
        layers: layers.len() as u64,
        blobs: m.entries.iter().map(|e| e.blob_id.clone()).collect(),
        inodes: layout.inos,
        files: m.tree.nodes.iter().filter(|n| n.is_reg() && !n.detached).count() as u64,
        chunks: m.chunks.len() as u64,
        bootstrap_size: image.len() as u64,
    })
}

impl Merger {
    /// Put the layer's blobs in the table (a blob already there keeps its place); returns
    /// the table index of each of the layer's own blob indexes.
    fn add_blobs(&mut self, l: &Layer) -> Result<Vec<u32>> {
        let mut map = Vec::new();
        for e in &l.bootstrap.blobs {
            let mut e = e.clone();
            let placeholder = e.blob_id == INLINE_PLACEHOLDER_ID || (e.has(bf::INLINED_FS_META) && !e.has(bf::SEPARATE) && !e.has(bf::EXTERNAL));
            if placeholder {
                let id = l
                    .blob_id
                    .clone()
                    .ok_or_else(|| Error::invalid(format!("{}: the bootstrap came from a layer blob; give that blob's digest (--blob-digests)", l.label)))?;
                e.blob_id = id;
                e.features &= !bf::INLINED_FS_META;
                if let Some(size) = l.blob_size {
                    e.compressed_size = size;
                }
            }
            if !valid_blob_id(&e.blob_id) {
                return Err(Error::UnsafeInput(format!("{}: blob id {:?} is not a sha256 hex digest", l.label, e.blob_id)));
            }
            let index = match self.blob_by_id.get(&e.blob_id) {
                Some(&i) => i,
                None => {
                    let i = self.entries.len() as u32;
                    if i as usize >= crate::layout::MAX_BLOBS {
                        return Err(Error::Unsupported(format!("more than {} blobs", crate::layout::MAX_BLOBS)));
                    }
                    self.blob_by_id.insert(e.blob_id.clone(), i);
                    self.entries.push(e);
                    i
                }
            };
            map.push(index);
        }
        Ok(map)
    }

    /// Lay layer `li` over the tree: directory by directory from its root, with an explicit
    /// stack; a directory seen twice (a loop in hostile metadata) is refused.
    fn apply(&mut self, l: &Layer, li: usize, blobs: &[u32], opts: &MergeOptions) -> Result<()> {
        let boot = &l.bootstrap;
        let table = boot.chunk_map()?;
        let root_nid = boot.root_nid();
        if li > 0 {
            let mut root = node_of(boot, root_nid, Vec::new(), None)?;
            if opts.keep_root_xattrs {
                root.xattrs = self.tree.nodes[ROOT].xattrs.clone();
            }
            self.take_attrs(ROOT, root);
        }
        let mut seen = HashSet::from([root_nid]);
        let mut stack = vec![(root_nid, ROOT)];
        while let Some((dir_nid, dir)) = stack.pop() {
            let entries: Vec<_> = boot.readdir(dir_nid)?.into_iter().filter(|e| e.name != b"." && e.name != b"..").collect();
            let mut below: HashMap<Vec<u8>, NodeId> =
                self.tree.nodes[dir].children.iter().filter(|&&c| !self.tree.nodes[c].detached).map(|&c| (self.tree.nodes[c].name.clone(), c)).collect();
            // What this layer hides comes first: its own entries of the same names stay.
            if entries.iter().any(|e| e.name == OPAQUE) {
                for (_, c) in below.drain() {
                    self.tree.detach(c);
                }
            }
            let mut kept = Vec::new();
            for e in entries {
                let ino = boot.inode(e.nid)?;
                if !e.name.starts_with(WHITEOUT_PREFIX) {
                    kept.push((e, ino));
                    continue;
                }
                // `.wh..wh.*` other than the opaque marker are aufs bookkeeping: dropped.
                let hidden = (!e.name.starts_with(b".wh..wh.")).then(|| e.name[WHITEOUT_PREFIX.len()..].to_vec());
                if let Some(c) = hidden.and_then(|name| below.remove(&name)) {
                    self.tree.detach(c);
                }
            }
            for (e, ino) in kept {
                let is_dir = ino.mode as u32 & mode::S_IFMT == mode::S_IFDIR;
                let link = (ino.mode as u32 & mode::S_IFMT == mode::S_IFREG && ino.nlink > 1).then_some((li as u64) << 40 | e.nid);
                let mut node = node_of(boot, e.nid, e.name.clone(), link)?;
                if node.is_reg() {
                    node.chunks = self.chunks_of(l, e.nid, &ino, blobs, table)?;
                }
                let id = match below.get(&e.name) {
                    Some(&c) if is_dir && self.tree.nodes[c].is_dir() => {
                        self.take_attrs(c, node);
                        c
                    }
                    other => {
                        if let Some(&c) = other {
                            self.tree.detach(c);
                        }
                        let c = self.tree.add(dir, node);
                        below.insert(e.name.clone(), c);
                        c
                    }
                };
                if is_dir {
                    if !seen.insert(e.nid) {
                        return Err(Error::UnsafeInput(format!("{}: directory nid {} is reached twice (a loop)", l.label, e.nid)));
                    }
                    stack.push((e.nid, id));
                }
            }
        }
        Ok(())
    }

    /// Drop the chunks only hidden or replaced files named, renumbering the rest in order.
    fn keep_referenced_chunks(&mut self) {
        let mut used = vec![false; self.chunks.len()];
        let mut stack = vec![ROOT];
        while let Some(id) = stack.pop() {
            let n = &self.tree.nodes[id];
            for &c in &n.chunks {
                used[c as usize] = true;
            }
            stack.extend(n.children.iter().copied());
        }
        let mut new_pos = vec![u32::MAX; used.len()];
        let (mut chunks, mut places) = (Vec::new(), Vec::new());
        for (i, _) in used.iter().enumerate().filter(|(_, u)| **u) {
            new_pos[i] = chunks.len() as u32;
            chunks.push(self.chunks[i].clone());
            places.push(self.places[i]);
        }
        for n in self.tree.nodes.iter_mut() {
            for c in n.chunks.iter_mut() {
                *c = new_pos[*c as usize];
            }
        }
        (self.chunks, self.places) = (chunks, places);
    }

    /// An upper directory over a lower one keeps the lower's children and takes the upper's
    /// metadata.
    fn take_attrs(&mut self, id: NodeId, upper: Node) {
        let n = &mut self.tree.nodes[id];
        (n.mode, n.uid, n.gid, n.mtime, n.mtime_nsec, n.xattrs) = (upper.mode, upper.uid, upper.gid, upper.mtime, upper.mtime_nsec, upper.xattrs);
    }

    /// A file's chunks as positions in the merged chunk list (each distinct chunk once).
    fn chunks_of(
        &mut self,
        l: &Layer,
        nid: u64,
        ino: &crate::layout::inode::Inode,
        blobs: &[u32],
        table: &HashMap<(u32, u32), ChunkTableEntry>,
    ) -> Result<Vec<u32>> {
        let mut out = Vec::new();
        for a in l.bootstrap.chunk_addrs(nid, ino)? {
            let global = *blobs
                .get(a.blob_index as usize)
                .ok_or_else(|| Error::corrupt(format!("{}: nid {nid} names blob {} of {}", l.label, a.blob_index, blobs.len())))?;
            let pos = match self.chunk_pos.get(&(global, a.ci_index)) {
                Some(&p) => p,
                None => {
                    let t = table.get(&(a.blob_index as u32, a.ci_index)).ok_or_else(|| {
                        Error::corrupt(format!("{}: nid {nid} chunk {} of blob {} is not in the chunk table", l.label, a.ci_index, a.blob_index))
                    })?;
                    let p = self.chunks.len() as u32;
                    self.chunks.push(StoredChunk::from(t));
                    self.places.push(ChunkPlace { blob_index: global, ci_index: a.ci_index, flags: t.flags });
                    self.chunk_pos.insert((global, a.ci_index), p);
                    p
                }
            };
            out.push(pos);
        }
        Ok(out)
    }
}

fn valid_blob_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 64 && id.bytes().all(|b| b.is_ascii_hexdigit())
}

/// The tree node for inode `nid` of a layer (its chunks are filled in by the caller).
fn node_of(boot: &Bootstrap, nid: u64, name: Vec<u8>, link_key: Option<u64>) -> Result<Node> {
    let ino = boot.inode(nid)?;
    let kind = ino.mode as u32 & mode::S_IFMT;
    let mut node = Node {
        name,
        mode: ino.mode as u32,
        uid: ino.uid,
        gid: ino.gid,
        mtime: ino.mtime,
        mtime_nsec: ino.mtime_nsec,
        link_key,
        xattrs: boot.xattrs(nid, &ino)?.into_iter().collect(),
        ..Default::default()
    };
    match kind {
        mode::S_IFREG => node.size = ino.size,
        mode::S_IFLNK => node.symlink = boot.readlink(nid)?,
        mode::S_IFCHR | mode::S_IFBLK | mode::S_IFIFO | mode::S_IFSOCK => node.rdev = ino.i_u,
        _ => {}
    }
    Ok(node)
}

/// A layer from a file: a bootstrap, or a blob carrying one (`image.boot`). A blob's own
/// digest is its id unless `blob_id` says otherwise: its file name when that is a sha256
/// hex digest (blobs are stored under their digest), else the sha256 of its bytes.
pub fn layer_from_file(path: &Path, blob_id: Option<String>, blob_size: Option<u64>) -> Result<Layer> {
    use crate::error::IoContext;
    let label = path.display().to_string();
    let mut f = std::fs::File::open(path).ctx(|| format!("open {label}"))?;
    let mut head = [0u8; 1028];
    let is_bootstrap = std::io::Read::read_exact(&mut f, &mut head).is_ok() && head[1024..1028] == crate::layout::superblock::EROFS_MAGIC.to_le_bytes();
    let digest_name = path.file_name().and_then(|n| n.to_str()).filter(|n| n.len() == 64 && valid_blob_id(n)).map(str::to_string);
    if is_bootstrap {
        // nydus-snapshotter names a layer's extracted bootstrap by the layer's digest.
        return Ok(Layer { bootstrap: Bootstrap::open(path)?, label, blob_id: blob_id.or(digest_name), blob_size });
    }
    let bootstrap = Bootstrap::from_bytes(crate::reader::inline_bootstrap(path)?)?;
    let size = f.metadata().ctx(|| format!("stat {label}"))?.len();
    let id = match blob_id.or(digest_name) {
        Some(id) => id,
        None => hex::encode(sha256_file(path)?),
    };
    Ok(Layer { bootstrap, label, blob_id: Some(id), blob_size: Some(blob_size.unwrap_or(size)) })
}

fn sha256_file(path: &Path) -> Result<[u8; 32]> {
    use crate::error::IoContext;
    use sha2::Digest;
    let mut f = std::fs::File::open(path).ctx(|| format!("open {}", path.display()))?;
    let mut h = sha2::Sha256::new();
    std::io::copy(&mut f, &mut h).ctx(|| format!("read {}", path.display()))?;
    Ok(h.finalize().into())
}
