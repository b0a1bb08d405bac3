//! The in-memory file tree a build produces before it is laid out as a bootstrap. Sources
//! (directory walk, tar stream) fill it; `finish` sorts children and drops detached nodes.

use crate::error::{Error, Result};
pub use crate::layout::dirent::check_name;
use crate::layout::inode::{xattr_split, xattrs_size, MAX_XATTR_BODY};
use crate::layout::mode;
use std::collections::BTreeMap;

pub type NodeId = usize;
pub const ROOT: NodeId = 0;

#[derive(Clone, Debug, Default)]
pub struct Node {
    pub name: Vec<u8>,
    pub parent: NodeId,
    /// Full `st_mode`: type and permission bits.
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime: u64,
    pub mtime_nsec: u32,
    /// Device number, already in the on-disk 32-bit encoding.
    pub rdev: u32,
    pub size: u64,
    pub xattrs: BTreeMap<Vec<u8>, Vec<u8>>,
    pub symlink: Vec<u8>,
    pub children: Vec<NodeId>,
    /// Regular files that are hard links of one another share a key.
    pub link_key: Option<u64>,
    /// CI index of each chunk of a regular file, in file order.
    pub chunks: Vec<u32>,
    /// Detached by a later tar entry for the same path.
    pub detached: bool,
    /// An overlayfs whiteout converted from an OCI `.wh.` entry. A real entry of the same
    /// name in the same layer wins over it (OCI: whiteouts only hide lower layers).
    pub whiteout: bool,
}

impl Node {
    pub fn kind(&self) -> u32 {
        self.mode & mode::S_IFMT
    }
    pub fn is_dir(&self) -> bool {
        self.kind() == mode::S_IFDIR
    }
    pub fn is_reg(&self) -> bool {
        self.kind() == mode::S_IFREG
    }
}

pub struct Tree {
    pub nodes: Vec<Node>,
}

impl Tree {
    pub fn new(root: Node) -> Self {
        Tree { nodes: vec![root] }
    }

    pub fn add(&mut self, parent: NodeId, node: Node) -> NodeId {
        let id = self.nodes.len();
        self.nodes.push(Node { parent, ..node });
        self.nodes[parent].children.push(id);
        id
    }

    /// Remove `id` from its parent (the node stays in the arena for hard links to it).
    /// Cheap on purpose (a tar may replace the same path many times): `finish` drops
    /// detached nodes from their parent's children.
    pub fn detach(&mut self, id: NodeId) {
        self.nodes[id].detached = true;
    }

    /// Path of a node for messages.
    pub fn path(&self, mut id: NodeId) -> String {
        let mut parts = Vec::new();
        while id != ROOT {
            parts.push(String::from_utf8_lossy(&self.nodes[id].name).into_owned());
            id = self.nodes[id].parent;
        }
        parts.reverse();
        format!("/{}", parts.join("/"))
    }

    /// Sort every directory's children by raw name bytes (§3.3), reject duplicates and
    /// inodes whose xattrs do not fit the inline body.
    pub fn finish(&mut self) -> Result<()> {
        for id in 0..self.nodes.len() {
            if !self.nodes[id].detached && xattrs_size(&self.nodes[id].xattrs) > MAX_XATTR_BODY {
                return Err(Error::Unsupported(format!("{}: xattrs take more than the {MAX_XATTR_BODY} bytes an inode can hold", self.path(id))));
            }
        }
        for id in 0..self.nodes.len() {
            if self.nodes[id].detached || !self.nodes[id].is_dir() {
                continue;
            }
            let mut kids = std::mem::take(&mut self.nodes[id].children);
            kids.retain(|&c| !self.nodes[c].detached);
            kids.sort_by(|&a, &b| self.nodes[a].name.cmp(&self.nodes[b].name).then(self.nodes[a].whiteout.cmp(&self.nodes[b].whiteout)));
            // Same name twice: drop a whiteout that shadows a real entry.
            let mut i = 1;
            while i < kids.len() {
                if self.nodes[kids[i]].name == self.nodes[kids[i - 1]].name && self.nodes[kids[i]].whiteout {
                    self.nodes[kids[i]].detached = true;
                    kids.remove(i);
                } else {
                    i += 1;
                }
            }
            if let Some(w) = kids.windows(2).find(|w| self.nodes[w[0]].name == self.nodes[w[1]].name) {
                return Err(Error::UnsafeInput(format!("duplicate entry {}", self.path(w[0]))));
            }
            self.nodes[id].children = kids;
        }
        Ok(())
    }
}

/// Check that RAFS can store an xattr (§2.6).
pub fn check_xattr(name: &[u8], value: &[u8], context: &str) -> Result<()> {
    let (_, suffix) =
        xattr_split(name).ok_or_else(|| Error::Unsupported(format!("{context}: xattr {:?} has a prefix RAFS cannot store", String::from_utf8_lossy(name))))?;
    if suffix.len() > 255 || value.len() > 65535 {
        return Err(Error::Unsupported(format!("{context}: xattr {:?} is too large", String::from_utf8_lossy(name))));
    }
    Ok(())
}
