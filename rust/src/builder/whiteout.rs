//! OCI whiteouts (`.wh.NAME`, `.wh..wh..opq`) and their overlayfs form (§5): a char device
//! 0/0 for a removal, `trusted.overlay.opaque=y` on a directory for opacity.

use super::tree::{Node, NodeId, Tree};
use crate::error::Result;
use crate::layout::mode;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WhiteoutSpec {
    /// Convert OCI whiteouts to overlayfs whiteouts (the default).
    Oci,
    /// Keep every entry verbatim.
    None,
}

impl WhiteoutSpec {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "oci" => Some(Self::Oci),
            "none" | "overlayfs" => Some(Self::None),
            _ => None,
        }
    }
}

pub const OPAQUE_MARKER: &[u8] = b".wh..wh..opq";
pub const WHITEOUT_PREFIX: &[u8] = b".wh.";
pub const OPAQUE_XATTR: &[u8] = b"trusted.overlay.opaque";

/// Rewrite `node` (about to be added under `dir`) if it is an OCI whiteout. Returns true
/// when the entry is consumed (the opaque marker) and must not be added.
pub fn apply_whiteout(tree: &mut Tree, dir: NodeId, node: &mut Node, spec: WhiteoutSpec) -> Result<bool> {
    if spec == WhiteoutSpec::None || !node.name.starts_with(WHITEOUT_PREFIX) {
        return Ok(false);
    }
    if node.name == OPAQUE_MARKER {
        tree.nodes[dir].xattrs.insert(OPAQUE_XATTR.to_vec(), b"y".to_vec());
        return Ok(true);
    }
    let target = node.name[WHITEOUT_PREFIX.len()..].to_vec();
    super::tree::check_name(&target, "whiteout")?;
    *node = Node {
        name: target,
        mode: mode::S_IFCHR | (node.mode & 0o7777),
        uid: node.uid,
        gid: node.gid,
        mtime: node.mtime,
        mtime_nsec: node.mtime_nsec,
        whiteout: true,
        ..Default::default()
    };
    Ok(false)
}
