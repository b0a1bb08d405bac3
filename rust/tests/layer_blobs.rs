//! Per-layer blobs with their bootstrap inside (`--blob-inline-meta`, §6.2 row 4 and §6.7),
//! and the prefetch table (`--prefetch-policy fs`, §1.6).

use nydus_hybrid_core::builder::blob::INLINE_PLACEHOLDER_ID;
use nydus_hybrid_core::builder::{build, BuildOptions, WhiteoutSpec};
use nydus_hybrid_core::layout::bytes::*;
use nydus_hybrid_core::reader::{blob::read_toc, bootstrap::Bootstrap, inline_bootstrap, Rafs};
use nydus_hybrid_core::storage::LocalBlob;
use std::path::Path;

fn layer_opts() -> BuildOptions {
    BuildOptions { progress: false, inline_bootstrap: true, whiteout_spec: WhiteoutSpec::None, ..Default::default() }
}

/// A tarball of `files` (path, bytes); directories are made as needed.
fn tarball(dir: &Path, files: &[(&str, &[u8])]) -> std::path::PathBuf {
    let src = dir.join("layer");
    for (path, data) in files {
        let p = src.join(path);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, data).unwrap();
    }
    let out = dir.join("layer.tar");
    let mut b = tar::Builder::new(std::fs::File::create(&out).unwrap());
    b.append_dir_all(".", &src).unwrap();
    b.finish().unwrap();
    out
}

/// (name, offset, size) of each framed section, walking the tar headers from the end.
fn sections(blob: &[u8]) -> Vec<(String, usize, usize)> {
    let mut out = Vec::new();
    let mut pos = blob.len();
    while pos >= 512 {
        let h = &blob[pos - 512..pos];
        let name = String::from_utf8(h[..100].iter().take_while(|&&b| b != 0).copied().collect()).unwrap();
        let size = usize::from_str_radix(std::str::from_utf8(&h[124..135]).unwrap(), 8).unwrap();
        out.push((name, pos - 512 - size, size));
        pos -= 512 + size;
    }
    out.reverse();
    out
}

#[test]
fn a_layer_blob_carries_its_bootstrap_as_the_converter_packs_it() {
    let tmp = tempfile::tempdir().unwrap();
    let big: Vec<u8> = (0..3 << 20).map(|i: u32| (i * 7 % 251) as u8).collect();
    let tar = tarball(tmp.path(), &[("etc/hosts", b"127.0.0.1 localhost\n"), ("usr/lib/big", &big), ("etc/.wh.gone", b"")]);
    let blobs = tmp.path().join("blobs");
    let r = build(&tar, None, &blobs, &layer_opts()).unwrap();
    assert!(r.inline_bootstrap);
    let path = r.blob_path.clone().unwrap();
    let blob = std::fs::read(&path).unwrap();
    assert_eq!(hex::encode(nydus_hybrid_core::codec::sha256(&blob)), r.blob_id.clone().unwrap(), "named by the layer digest");
    let names: Vec<String> = sections(&blob).into_iter().map(|s| s.0).collect();
    assert_eq!(names, ["image.blob", "blob.meta", "blob.digest", "image.boot", "rafs.blob.toc"]);

    // The bootstrap inside describes the blob as it stood before the bootstrap was added.
    let boot_at = sections(&blob)[3].1 as u64;
    let inner = inline_bootstrap(&path).unwrap();
    let b = Bootstrap::from_bytes(inner.clone()).unwrap();
    assert_eq!(b.blobs.len(), 1);
    let e = &b.blobs[0];
    assert_eq!(e.blob_id, INLINE_PLACEHOLDER_ID);
    assert_eq!(e.features, 0x7000_0023);
    assert_eq!(e.compressed_size, boot_at);
    assert_eq!((e.toc_size, e.toc_digest), (0, [0; 32]));
    assert_eq!(u32_at(&inner, 1408 + 68), 0, "no mapping for an unmerged layer");
    assert_eq!(&inner[1408..1408 + 64], INLINE_PLACEHOLDER_ID.as_bytes());
    // The ToC's image.boot entry is zstd and digests the plain bootstrap.
    let toc = read_toc(&LocalBlob::open(&path).unwrap(), None).unwrap();
    let tb = toc.iter().find(|t| t.name == "image.boot").unwrap();
    assert_eq!((tb.offset, tb.uncompressed_size), (boot_at, inner.len() as u64));
    assert_eq!(tb.digest, nydus_hybrid_core::codec::sha256(&inner));

    // Read back through the blob alone: whiteouts are kept verbatim for merge.
    let rafs = Rafs::open_inline_blob(&path).unwrap();
    let nid = rafs.boot.resolve(b"/usr/lib/big").unwrap();
    assert_eq!(rafs.read_nid(nid, 0, big.len() + 1).unwrap(), big);
    let hosts = rafs.boot.resolve(b"/etc/hosts").unwrap();
    assert_eq!(rafs.read_nid(hosts, 0, 100).unwrap(), b"127.0.0.1 localhost\n");
    assert!(rafs.boot.resolve(b"/etc/.wh.gone").is_ok());
}

#[test]
fn a_layer_without_file_data_is_a_blob_of_bootstrap_and_toc() {
    let tmp = tempfile::tempdir().unwrap();
    let tar = tarball(tmp.path(), &[("d/.wh..wh..opq", b""), ("d/.wh.x", b"")]);
    let r = build(&tar, None, &tmp.path().join("blobs"), &layer_opts()).unwrap();
    assert_eq!(r.chunks, 0);
    let path = r.blob_path.unwrap();
    let blob = std::fs::read(&path).unwrap();
    let names: Vec<String> = sections(&blob).into_iter().map(|s| s.0).collect();
    assert_eq!(names, ["image.boot", "rafs.blob.toc"]);
    let rafs = Rafs::open_inline_blob(&path).unwrap();
    assert!(rafs.boot.blobs.is_empty());
    assert!(rafs.boot.resolve(b"/d/.wh..wh..opq").is_ok());
}

#[test]
fn inline_meta_and_a_bootstrap_file_exclude_each_other() {
    let tmp = tempfile::tempdir().unwrap();
    let tar = tarball(tmp.path(), &[("a", b"a")]);
    let e = build(&tar, Some(&tmp.path().join("boot")), &tmp.path().join("blobs"), &layer_opts()).unwrap_err();
    assert!(e.to_string().contains("give no bootstrap path"), "{e}");
    let e = build(&tar, None, &tmp.path().join("blobs"), &BuildOptions { progress: false, ..Default::default() }).unwrap_err();
    assert!(e.to_string().contains("bootstrap path is required"), "{e}");
    assert!(!tmp.path().join("boot").exists());
}

fn prefetch_of(patterns: &[&str]) -> (Vec<u32>, Bootstrap) {
    let tmp = tempfile::tempdir().unwrap();
    let tar = tarball(tmp.path(), &[("bin/sh", b"#!"), ("etc/hosts", b"h"), ("etc/passwd", b"p")]);
    let boot = tmp.path().join("boot");
    let opts = BuildOptions { progress: false, prefetch: patterns.iter().map(|p| p.as_bytes().to_vec()).collect(), ..Default::default() };
    build(&tar, Some(&boot), &tmp.path().join("blobs"), &opts).unwrap();
    let b = Bootstrap::open(&boot).unwrap();
    (b.prefetch_nids().unwrap(), b)
}

#[test]
fn the_prefetch_table_lists_matched_paths_in_input_order_once() {
    let (nids, b) = prefetch_of(&["/etc/passwd", "/bin", "/etc/passwd", "/nope", "/./etc/hosts"]);
    let want: Vec<u32> = ["/etc/passwd", "/bin", "/etc/hosts"].iter().map(|p| b.resolve(p.as_bytes()).unwrap() as u32).collect();
    assert_eq!(nids, want);
    assert_eq!(prefetch_of(&["/"]).0, [128], "the root means everything");
}

#[test]
fn the_prefetch_table_is_absent_without_patterns_and_zero_when_none_match() {
    let (nids, b) = prefetch_of(&[]);
    assert!(nids.is_empty());
    assert_eq!(b.ext.prefetch_table_size, 0);
    let (_, b) = prefetch_of(&["", ""]);
    assert_eq!(b.ext.prefetch_table_size, 0, "blank lines are no patterns");
    // As nydus-image: patterns given but none matched (a relative path never does) leave
    // one 0 entry, where readers stop.
    let (nids, b) = prefetch_of(&["/missing", "etc/hosts"]);
    assert!(nids.is_empty());
    assert_eq!((b.ext.prefetch_table_offset, b.ext.prefetch_table_size), (4096 + 256, 4));
}
