//! OCI layer tarball source (`.tar`, `.tar.gz`, `.tar.zst`), streamed: file data goes to the
//! chunk pipeline while the archive is parsed, nothing is extracted to disk. Entries are
//! untrusted: `..` components, non-directory parents, dangling hard links, oversized
//! entries and truncated streams are errors that name the entry.

use super::chunker::{submit_stream, Pipeline};
use super::tarstream::TarStream;
use super::tree::{check_name, check_xattr, Node, NodeId, Tree, ROOT};
use super::whiteout::{apply_whiteout, WhiteoutSpec, OPAQUE_XATTR};
use crate::error::{Error, IoContext, Result};
use crate::layout::{encode_rdev, mode};
use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read};
use std::path::Path;

/// Largest regular file we accept from a tar header (the blob address space is 2^44).
const MAX_ENTRY_SIZE: u64 = 1 << 40;

/// Open a tar stream, undoing gzip or zstd by sniffing magic bytes.
pub fn open_stream(path: &Path) -> Result<Box<dyn Read + Send>> {
    let f = std::fs::File::open(path).ctx(|| format!("open {}", path.display()))?;
    let mut r = BufReader::with_capacity(1 << 20, f);
    let head = r.fill_buf().ctx(|| format!("read {}", path.display()))?.to_vec();
    Ok(if head.starts_with(&[0x1f, 0x8b]) {
        Box::new(flate2::read::MultiGzDecoder::new(r))
    } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Box::new(zstd::stream::read::Decoder::with_buffer(r).ctx(|| "start zstd decoder".into())?)
    } else {
        Box::new(r)
    })
}

/// Split a tar path into checked components. Leading `/` and `./` are dropped (as tar
/// does); `..` anywhere is refused rather than resolved.
fn components(raw: &[u8]) -> Result<Vec<Vec<u8>>> {
    let mut out = Vec::new();
    for c in raw.split(|&b| b == b'/') {
        match c {
            b"" | b"." => {}
            b".." => return Err(Error::UnsafeInput(format!("tar entry {:?} contains '..' and would escape the image root", String::from_utf8_lossy(raw)))),
            _ => {
                check_name(c, &format!("tar entry {:?}", String::from_utf8_lossy(raw)))?;
                out.push(c.to_vec());
            }
        }
    }
    Ok(out)
}

fn implicit_dir(name: Vec<u8>) -> Node {
    Node { name, mode: mode::S_IFDIR | 0o755, ..Default::default() }
}

struct TarTree {
    tree: Tree,
    by_path: HashMap<Vec<Vec<u8>>, NodeId>,
}

impl TarTree {
    /// The directory holding `comps`, creating missing parents; errors if a parent exists
    /// but is not a directory (we never follow a symlink out of the tree).
    fn parent_dir(&mut self, comps: &[Vec<u8>]) -> Result<NodeId> {
        let mut cur = ROOT;
        for i in 0..comps.len().saturating_sub(1) {
            let key = comps[..=i].to_vec();
            cur = match self.by_path.get(&key) {
                Some(&id) if self.tree.nodes[id].is_dir() => id,
                Some(_) => return Err(Error::UnsafeInput(format!("tar entry parent /{} is not a directory", String::from_utf8_lossy(&key.join(&b'/'))))),
                None => {
                    let id = self.tree.add(cur, implicit_dir(comps[i].clone()));
                    self.by_path.insert(key, id);
                    id
                }
            };
        }
        Ok(cur)
    }

    /// A later entry for an existing directory replaces its attributes and xattrs, but an
    /// opaque marker (`.wh..wh..opq`) seen before it still applies.
    fn update_dir(&mut self, id: NodeId, node: Node) {
        let o = &mut self.tree.nodes[id];
        let opaque = o.xattrs.get(OPAQUE_XATTR).cloned();
        (o.mode, o.uid, o.gid, o.mtime, o.mtime_nsec) = (node.mode, node.uid, node.gid, node.mtime, node.mtime_nsec);
        o.xattrs = node.xattrs;
        if let Some(v) = opaque {
            o.xattrs.insert(OPAQUE_XATTR.to_vec(), v);
        }
    }

    /// Insert (or replace, last entry wins) the node at `comps`.
    fn put(&mut self, comps: Vec<Vec<u8>>, mut node: Node, whiteouts: WhiteoutSpec) -> Result<Option<NodeId>> {
        if comps.is_empty() {
            if node.is_dir() {
                self.update_dir(ROOT, node);
                return Ok(Some(ROOT));
            }
            return Err(Error::UnsafeInput("tar entry for the root is not a directory".into()));
        }
        let dir = self.parent_dir(&comps)?;
        node.name = comps.last().unwrap().clone();
        if apply_whiteout(&mut self.tree, dir, &mut node, whiteouts)? {
            return Ok(None);
        }
        let mut key = comps;
        *key.last_mut().unwrap() = node.name.clone();
        if let Some(&old) = self.by_path.get(&key) {
            if node.whiteout && !self.tree.nodes[old].whiteout {
                return Ok(None); // a whiteout never hides an entry of its own layer
            }
            if self.tree.nodes[old].is_dir() && node.is_dir() {
                self.update_dir(old, node);
                return Ok(Some(old));
            }
            let was_dir = self.tree.nodes[old].is_dir();
            self.tree.detach(old);
            if was_dir {
                // Forget everything below a replaced directory.
                self.by_path.retain(|k, _| !(k.len() > key.len() && k.starts_with(&key)));
            }
        }
        let id = self.tree.add(dir, node);
        self.by_path.insert(key, id);
        Ok(Some(id))
    }
}

/// Parse the archive, streaming file data into `p`.
pub fn scan(path: &Path, p: &mut Pipeline, chunk_size: u32, whiteouts: WhiteoutSpec) -> Result<Tree> {
    let mut stream = TarStream::new(open_stream(path)?);
    let mut t = TarTree { tree: Tree::new(implicit_dir(Vec::new())), by_path: HashMap::new() };
    let mut next_link_key = 1u64;
    let mut link_keys: HashMap<NodeId, u64> = HashMap::new();
    while let Some(m) = stream.next_member()? {
        let label = String::from_utf8_lossy(&m.path).into_owned();
        let comps = components(&m.path)?;
        let h = &m.header;
        let bad = |e: std::io::Error| Error::UnsafeInput(format!("tar entry {label:?}: {e}"));
        let perm = h.mode().map_err(bad)? & 0o7777;
        let mut node = Node {
            uid: u32::try_from(m.uid).map_err(|_| Error::UnsafeInput(format!("tar entry {label:?}: uid out of range")))?,
            gid: u32::try_from(m.gid).map_err(|_| Error::UnsafeInput(format!("tar entry {label:?}: gid out of range")))?,
            mtime: m.mtime as u64,
            mtime_nsec: m.mtime_nsec,
            ..Default::default()
        };
        for (name, value) in &m.xattrs {
            check_xattr(name, value, &format!("tar entry {label:?}"))?;
            node.xattrs.insert(name.clone(), value.clone());
        }
        match h.entry_type().as_byte() {
            b'1' => {
                let target_raw = m.link.clone().ok_or_else(|| Error::UnsafeInput(format!("hard link {label:?} has no target")))?;
                let target = components(&target_raw)?;
                let &tid = t.by_path.get(&target).ok_or_else(|| {
                    Error::UnsafeInput(format!(
                        "hard link {label:?} points to {:?}, which is not in the archive before it",
                        String::from_utf8_lossy(&target_raw)
                    ))
                })?;
                let tn = t.tree.nodes[tid].clone();
                if !tn.is_reg() {
                    return Err(Error::UnsafeInput(format!("hard link {label:?} points to a non-regular file")));
                }
                let key = *link_keys.entry(tid).or_insert_with(|| {
                    next_link_key += 1;
                    next_link_key
                });
                t.tree.nodes[tid].link_key = Some(key);
                let linked = Node { link_key: Some(key), children: Vec::new(), detached: false, whiteout: false, ..tn };
                if let Some(id) = t.put(comps, linked, WhiteoutSpec::None)? {
                    link_keys.insert(id, key);
                }
            }
            b'2' => {
                node.mode = mode::S_IFLNK | 0o777;
                node.symlink = m.link.clone().unwrap_or_default();
                if node.symlink.is_empty() || node.symlink.len() > 4095 {
                    return Err(Error::UnsafeInput(format!("symlink {label:?} has an empty or over-long target")));
                }
                t.put(comps, node, whiteouts)?;
            }
            b'3' | b'4' => {
                let major = h.device_major().map_err(bad)?.unwrap_or(0);
                let minor = h.device_minor().map_err(bad)?.unwrap_or(0);
                node.mode = if h.entry_type().as_byte() == b'3' { mode::S_IFCHR } else { mode::S_IFBLK } | perm;
                node.rdev = encode_rdev(major, minor)
                    .ok_or_else(|| Error::UnsafeInput(format!("tar entry {label:?}: device number {major}:{minor} does not fit RAFS's 32-bit encoding")))?;
                t.put(comps, node, whiteouts)?;
            }
            b'5' => {
                node.mode = mode::S_IFDIR | perm;
                t.put(comps, node, whiteouts)?;
            }
            b'6' => {
                node.mode = mode::S_IFIFO | perm;
                t.put(comps, node, whiteouts)?;
            }
            b'0' | b'\0' | b'7' => {
                node.mode = mode::S_IFREG | perm;
                let size = m.size;
                if size > MAX_ENTRY_SIZE {
                    return Err(Error::UnsafeInput(format!("tar entry {label:?} declares {size} bytes, over the {MAX_ENTRY_SIZE}-byte limit")));
                }
                node.size = size;
                let Some(id) = t.put(comps, node, whiteouts)? else {
                    continue;
                };
                if t.tree.nodes[id].whiteout {
                    continue; // a .wh. file's (empty) data is not file content
                }
                // Read errors of the stream are bad input; pipeline errors (disk full, ...)
                // keep their own kind.
                let n = submit_stream(p, id, &mut stream, chunk_size as usize, size, &|| format!("tar entry {label:?}")).map_err(|e| match e {
                    Error::Io { context, source } if context.starts_with("read ") => Error::UnsafeInput(format!("{context}: {source}")),
                    other => other,
                })?;
                if n != size {
                    return Err(Error::UnsafeInput(format!("tar stream truncated inside entry {label:?} ({n} of {size} bytes)")));
                }
            }
            other => {
                return Err(Error::Unsupported(format!("tar entry {label:?} has unsupported type {:?}", other as char)));
            }
        }
    }
    stream.drain()?;
    t.tree.finish()?;
    Ok(t.tree)
}
