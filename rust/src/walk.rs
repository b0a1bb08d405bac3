//! Depth-first walk over an image's tree, shared by check, inspect, unpack and export.
//! Uses an explicit stack (any depth) and refuses directory cycles.

use crate::error::{ensure, Result};
use crate::layout::file_type;
use crate::reader::Bootstrap;
use std::collections::HashSet;

/// One visited entry: its path components from the root, nid, parent nid and dirent type.
pub struct Visit {
    pub path: Vec<Vec<u8>>,
    pub nid: u64,
    pub parent: u64,
    pub file_type: u8,
}

/// Visit every entry (root first, then each directory's children before descending).
pub fn walk(boot: &Bootstrap, mut f: impl FnMut(&Visit) -> Result<()>) -> Result<()> {
    let root = boot.root_nid();
    let mut seen_dirs = HashSet::new();
    let mut stack = vec![Visit { path: Vec::new(), nid: root, parent: root, file_type: file_type::DIR }];
    while let Some(v) = stack.pop() {
        f(&v)?;
        if v.file_type != file_type::DIR {
            continue;
        }
        ensure!(seen_dirs.insert(v.nid), "directory nid {} is reachable twice (cycle or duplicate link)", v.nid);
        let mut subdirs = Vec::new();
        for e in boot.readdir(v.nid)? {
            if e.name == b"." || e.name == b".." {
                continue;
            }
            let mut path = v.path.clone();
            path.push(e.name);
            let child = Visit { path, nid: e.nid, parent: v.nid, file_type: e.file_type };
            if e.file_type == file_type::DIR {
                subdirs.push(child);
            } else {
                f(&child)?;
            }
        }
        stack.extend(subdirs.into_iter().rev());
    }
    Ok(())
}

pub fn join(path: &[Vec<u8>]) -> Vec<u8> {
    let mut out = Vec::new();
    for c in path {
        out.push(b'/');
        out.extend_from_slice(c);
    }
    if out.is_empty() {
        out.push(b'/');
    }
    out
}
