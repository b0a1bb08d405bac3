//! `merge`: layer blobs (built with `--blob-inline-meta --whiteout-spec none`, as the
//! converter packs them) laid over one another with OCI's whiteout rules.

use nydus_hybrid_core::builder::{build, BuildOptions, WhiteoutSpec};
use nydus_hybrid_core::layout::blob_features as bf;
use nydus_hybrid_core::merge::{layer_from_file, merge, MergeOptions};
use nydus_hybrid_core::reader::Rafs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// A layer tarball of the directory `src` made by GNU tar (hard links kept as links).
fn layer_blob(tmp: &Path, name: &str, src: &Path) -> PathBuf {
    let tar = tmp.join(format!("{name}.tar"));
    let ok = std::process::Command::new("tar").arg("-C").arg(src).arg("-cf").arg(&tar).arg(".").status().unwrap().success();
    assert!(ok);
    let opts = BuildOptions { progress: false, inline_bootstrap: true, whiteout_spec: WhiteoutSpec::None, ..Default::default() };
    build(&tar, None, &tmp.join("blobs"), &opts).unwrap().blob_path.unwrap()
}

fn write(root: &Path, rel: &str, data: &[u8]) {
    let p = root.join(rel);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, data).unwrap();
}

fn two_layers(tmp: &Path) -> (PathBuf, PathBuf) {
    let lower = tmp.join("lower");
    write(&lower, "a/keep", b"keep");
    write(&lower, "a/gone", b"gone");
    write(&lower, "dir/x", b"x");
    write(&lower, "dir/sub/y", b"y");
    write(&lower, "rep/inner", b"inner");
    write(&lower, "link1", &vec![7u8; 300_000]);
    std::fs::hard_link(lower.join("link1"), lower.join("link2")).unwrap();
    std::os::unix::fs::symlink("a/keep", lower.join("sym")).unwrap();
    let upper = tmp.join("upper");
    write(&upper, "a/.wh.gone", b"");
    write(&upper, "a/new", b"new");
    std::fs::set_permissions(upper.join("a"), std::fs::Permissions::from_mode(0o700)).unwrap();
    write(&upper, "dir/.wh..wh..opq", b"");
    write(&upper, "dir/z", b"z");
    write(&upper, "rep", b"now a file");
    (layer_blob(tmp, "lower", &lower), layer_blob(tmp, "upper", &upper))
}

fn read(rafs: &Rafs, path: &str) -> Vec<u8> {
    let nid = rafs.boot.resolve(path.as_bytes()).unwrap_or_else(|e| panic!("{path}: {e}"));
    rafs.read_nid(nid, 0, 1 << 20).unwrap()
}

#[test]
fn an_upper_layer_hides_replaces_and_adds() {
    let tmp = tempfile::tempdir().unwrap();
    let (lower, upper) = two_layers(tmp.path());
    let layers = [layer_from_file(&lower, None, None).unwrap(), layer_from_file(&upper, None, None).unwrap()];
    let out = tmp.path().join("merged.boot");
    let r = merge(&layers, &out, &MergeOptions::default()).unwrap();
    let names = |p: &Path| p.file_name().unwrap().to_str().unwrap().to_string();
    assert_eq!(r.blobs, [names(&lower), names(&upper)], "layer order, ids = the blobs' digests");

    let rafs = Rafs::open(&out, Some(&tmp.path().join("blobs"))).unwrap();
    for (i, e) in rafs.boot.blobs.iter().enumerate() {
        assert!(!e.has(bf::INLINED_FS_META));
        let file = if i == 0 { &lower } else { &upper };
        assert_eq!(e.compressed_size, std::fs::metadata(file).unwrap().len());
    }
    assert_eq!(read(&rafs, "/a/keep"), b"keep");
    assert_eq!(read(&rafs, "/a/new"), b"new");
    assert!(rafs.boot.resolve(b"/a/gone").is_err(), "the whiteout hides the lower file");
    assert!(rafs.boot.resolve(b"/a/.wh.gone").is_err(), "whiteouts are consumed");
    let a = rafs.boot.inode(rafs.boot.resolve(b"/a").unwrap()).unwrap();
    assert_eq!(a.mode & 0o777, 0o700, "the upper directory's metadata wins");
    let dir: Vec<Vec<u8>> = rafs.boot.readdir(rafs.boot.resolve(b"/dir").unwrap()).unwrap().into_iter().map(|e| e.name).collect();
    assert_eq!(dir, [b".".to_vec(), b"..".to_vec(), b"z".to_vec()], "opaque: nothing from below");
    assert_eq!(read(&rafs, "/rep"), b"now a file", "a file replaces a directory");
    assert!(rafs.boot.resolve(b"/rep/inner").is_err());
    let (l1, l2) = (rafs.boot.resolve(b"/link1").unwrap(), rafs.boot.resolve(b"/link2").unwrap());
    assert_eq!(l1, l2, "hard links stay one inode");
    assert_eq!(rafs.boot.inode(l1).unwrap().nlink, 2);
    assert_eq!(read(&rafs, "/link2"), vec![7u8; 300_000]);
    assert_eq!(rafs.boot.readlink(rafs.boot.resolve(b"/sym").unwrap()).unwrap(), b"a/keep");
    // Only chunks of files that are still there are in the chunk table.
    let table = rafs.boot.chunk_table().unwrap();
    assert_eq!(table.len() as u64, r.chunks);
    assert!(table.iter().all(|t| t.blob_index < 2));
    assert_eq!(nydus_hybrid_core::check::check(&rafs, true).map(|_| ()).err().map(|e| e.to_string()), None);
}

#[test]
fn an_extracted_bootstrap_needs_its_blobs_digest() {
    let tmp = tempfile::tempdir().unwrap();
    let (lower, _) = two_layers(tmp.path());
    let boot = tmp.path().join("layer.boot");
    std::fs::write(&boot, nydus_hybrid_core::reader::inline_bootstrap(&lower).unwrap()).unwrap();
    let layer = layer_from_file(&boot, None, None).unwrap();
    let e = merge(&[layer], &tmp.path().join("out"), &MergeOptions::default()).unwrap_err();
    assert!(e.to_string().contains("give that blob's digest"), "{e}");
    assert!(!tmp.path().join("out").exists(), "nothing half-made");
    let id = lower.file_name().unwrap().to_str().unwrap().to_string();
    let layer = layer_from_file(&boot, Some(id.clone()), None).unwrap();
    let r = merge(&[layer], &tmp.path().join("out"), &MergeOptions::default()).unwrap();
    assert_eq!(r.blobs, [id]);
}

#[test]
fn layers_with_different_chunk_sizes_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("s");
    write(&src, "f", b"f");
    let mut blobs = Vec::new();
    for cs in [0x10_0000, 0x4_0000] {
        let opts = BuildOptions { progress: false, inline_bootstrap: true, chunk_size: cs, ..Default::default() };
        blobs.push(build(&src, None, &tmp.path().join(format!("b{cs}")), &opts).unwrap().blob_path.unwrap());
    }
    let layers: Vec<_> = blobs.iter().map(|b| layer_from_file(b, None, None).unwrap()).collect();
    let e = merge(&layers, &tmp.path().join("out"), &MergeOptions::default()).unwrap_err();
    assert!(e.to_string().contains("chunk size"), "{e}");
}

#[test]
fn a_build_over_a_parent_bootstrap_is_the_whole_image() {
    let tmp = tempfile::tempdir().unwrap();
    let lower = tmp.path().join("lower");
    write(&lower, "a/keep", b"keep");
    write(&lower, "a/gone", b"gone");
    let blobs = tmp.path().join("blobs");
    let base = tmp.path().join("base.boot");
    let plain = BuildOptions { progress: false, ..Default::default() };
    let b = build(&lower, Some(&base), &blobs, &plain).unwrap();
    let upper = tmp.path().join("upper");
    write(&upper, "a/.wh.gone", b"");
    write(&upper, "b", b"b");
    let out = tmp.path().join("image.boot");
    let u = build(&upper, Some(&out), &blobs, &BuildOptions { parent: Some(base.clone()), ..plain.clone() }).unwrap();
    let rafs = Rafs::open(&out, Some(&blobs)).unwrap();
    let ids: Vec<String> = rafs.boot.blobs.iter().map(|e| e.blob_id.clone()).collect();
    assert_eq!(ids, [b.blob_id.unwrap(), u.blob_id.unwrap()], "the parent's blobs, then the new one");
    assert_eq!(read(&rafs, "/a/keep"), b"keep");
    assert_eq!(read(&rafs, "/b"), b"b");
    assert!(rafs.boot.resolve(b"/a/gone").is_err());
    assert!(rafs.boot.resolve(b"/a/.wh.gone").is_err());
    let inline = BuildOptions { parent: Some(base), inline_bootstrap: true, ..plain };
    assert!(build(&upper, None, &blobs, &inline).unwrap_err().to_string().contains("choose one"));
}

#[test]
fn a_hard_link_whited_out_leaves_the_other_with_one_link() {
    let tmp = tempfile::tempdir().unwrap();
    let lower = tmp.path().join("lower");
    write(&lower, "l1", b"linked");
    std::fs::hard_link(lower.join("l1"), lower.join("l2")).unwrap();
    let upper = tmp.path().join("upper");
    write(&upper, ".wh.l2", b"");
    let layers = [layer_blob(tmp.path(), "lower", &lower), layer_blob(tmp.path(), "upper", &upper)];
    let layers: Vec<_> = layers.iter().map(|b| layer_from_file(b, None, None).unwrap()).collect();
    let out = tmp.path().join("merged.boot");
    merge(&layers, &out, &MergeOptions::default()).unwrap();
    let rafs = Rafs::open(&out, Some(&tmp.path().join("blobs"))).unwrap();
    let nid = rafs.boot.resolve(b"/l1").unwrap();
    assert_eq!(rafs.boot.inode(nid).unwrap().nlink, 1);
    assert_eq!(read(&rafs, "/l1"), b"linked");
    assert!(rafs.boot.resolve(b"/l2").is_err());
}
