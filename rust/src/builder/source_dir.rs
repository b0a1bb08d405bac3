//! Directory source: walk a local tree with lstat/readlink/llistxattr, then feed regular
//! file data to the pipeline in the reference's dump order (A.5).

use super::chunker::{submit_stream, Pipeline};
use super::tree::{check_name, check_xattr, Node, NodeId, Tree, ROOT};
use super::whiteout::apply_whiteout;
use super::BuildOptions;
use crate::error::{Error, IoContext, Result};
use crate::layout::{encode_rdev, mode};
use std::collections::HashMap;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

fn node_from_meta(name: Vec<u8>, md: &std::fs::Metadata, path: &Path) -> Result<Node> {
    let rdev = md.rdev();
    let is_dev = matches!(md.mode() & mode::S_IFMT, mode::S_IFCHR | mode::S_IFBLK);
    let rdev = if is_dev {
        encode_rdev(libc::major(rdev), libc::minor(rdev)).ok_or_else(|| {
            Error::Unsupported(format!("{}: device number {}:{} does not fit RAFS's 32-bit encoding", path.display(), libc::major(rdev), libc::minor(rdev)))
        })?
    } else {
        0 // fifos and sockets have no device number on disk
    };
    Ok(Node {
        name,
        mode: md.mode(),
        uid: md.uid(),
        gid: md.gid(),
        // Seconds are stored as two's complement, which the kernel reads back as signed.
        mtime: md.mtime() as u64,
        mtime_nsec: md.mtime_nsec() as u32,
        rdev,
        size: if md.is_file() { md.len() } else { 0 },
        ..Default::default()
    })
}

fn read_xattrs(path: &Path, node: &mut Node) -> Result<()> {
    let names = match xattr::list(path) {
        Ok(n) => n,
        Err(e) if e.raw_os_error() == Some(libc::ENOTSUP) => return Ok(()),
        Err(e) => return Err(Error::io(format!("list xattrs of {}", path.display()), e)),
    };
    for name in names {
        let value = xattr::get(path, &name).ctx(|| format!("read xattr of {}", path.display()))?.unwrap_or_default();
        let name = name.into_vec();
        check_xattr(&name, &value, &path.display().to_string())?;
        node.xattrs.insert(name, value);
    }
    Ok(())
}

/// Walk `root` into a tree. Returns the tree and the source path of each node.
pub fn scan(root: &Path, opts: &BuildOptions) -> Result<(Tree, HashMap<NodeId, PathBuf>)> {
    let whiteouts = opts.whiteout_spec;
    let mut link_keys: HashMap<(u64, u64), u64> = HashMap::new();
    let exclude: Vec<PathBuf> = opts.exclude.iter().map(|e| root.join(std::ffi::OsStr::from_bytes(e.strip_prefix(b"/").unwrap_or(e)))).collect();
    let md = std::fs::symlink_metadata(root).ctx(|| format!("stat {}", root.display()))?;
    if !md.is_dir() {
        return Err(Error::invalid(format!("{} is not a directory", root.display())));
    }
    let mut rootnode = node_from_meta(Vec::new(), &md, root)?;
    // The reference zeroes the root's mtime for directory builds, so that the same tree
    // checked out at different times builds the same bootstrap.
    (rootnode.mtime, rootnode.mtime_nsec) = (0, 0);
    read_xattrs(root, &mut rootnode)?;
    let mut tree = Tree::new(rootnode);
    let mut paths = HashMap::new();
    paths.insert(ROOT, root.to_path_buf());
    let mut stack = vec![ROOT];
    while let Some(dir) = stack.pop() {
        opts.check_cancel()?;
        let dpath = paths[&dir].clone();
        let mut entries: Vec<_> = std::fs::read_dir(&dpath)
            .ctx(|| format!("read directory {}", dpath.display()))?
            .collect::<std::io::Result<Vec<_>>>()
            .ctx(|| format!("read directory {}", dpath.display()))?;
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            let name = e.file_name().as_bytes().to_vec();
            let path = e.path();
            if exclude.contains(&path) {
                continue;
            }
            check_name(&name, &path.display().to_string())?;
            let md = std::fs::symlink_metadata(&path).ctx(|| format!("stat {}", path.display()))?;
            let mut node = node_from_meta(name, &md, &path)?;
            read_xattrs(&path, &mut node)?;
            let ft = md.mode() & mode::S_IFMT;
            if ft == mode::S_IFLNK {
                node.symlink = std::fs::read_link(&path).ctx(|| format!("readlink {}", path.display()))?.into_os_string().into_vec();
            } else if ft == mode::S_IFREG && md.nlink() > 1 {
                let next = link_keys.len() as u64 + 1;
                node.link_key = Some(*link_keys.entry((md.dev(), md.ino())).or_insert(next));
            }
            if apply_whiteout(&mut tree, dir, &mut node, whiteouts)? {
                continue;
            }
            let is_dir = node.is_dir();
            let id = tree.add(dir, node);
            paths.insert(id, path);
            if is_dir {
                stack.push(id);
            }
        }
    }
    tree.finish()?;
    Ok((tree, paths))
}

/// Feed every regular file's data, in dump order, to the pipeline.
pub fn feed(tree: &Tree, paths: &HashMap<NodeId, PathBuf>, order: &[NodeId], p: &mut Pipeline, opts: &BuildOptions) -> Result<()> {
    let chunk_size = opts.chunk_size;
    let mut seen_links = std::collections::HashSet::new();
    for &id in order {
        let node = &tree.nodes[id];
        if !node.is_reg() || node.size == 0 {
            continue;
        }
        if let Some(k) = node.link_key {
            if !seen_links.insert(k) {
                continue;
            }
        }
        opts.check_cancel()?;
        let path = &paths[&id];
        // A file swapped for a symlink or a fifo since the scan must not be followed or
        // block the build.
        let mut f =
            std::fs::OpenOptions::new().read(true).custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK).open(path).ctx(|| format!("open {}", path.display()))?;
        if !f.metadata().ctx(|| format!("stat {}", path.display()))?.is_file() {
            return Err(Error::invalid(format!("{} is no longer a regular file", path.display())));
        }
        let n = submit_stream(p, id, &mut f, chunk_size as usize, node.size, &|| path.display().to_string())?;
        let grew = std::io::Read::read(&mut f, &mut [0u8; 1]).ctx(|| format!("read {}", path.display()))? > 0;
        if n != node.size || grew {
            return Err(Error::invalid(format!("{} changed size during the build ({} -> {n})", path.display(), node.size)));
        }
    }
    Ok(())
}
