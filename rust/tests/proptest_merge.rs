//! `merge` against a model of OCI layer application, on random layer stacks: each layer
//! gives every path of a small universe nothing, a file, a whiteout, a directory or an
//! opaque directory; the layers are built as real layer blobs and merged, and the merged
//! tree must be the model's.

use nydus_hybrid_core::builder::{build, BuildOptions, WhiteoutSpec};
use nydus_hybrid_core::merge::{layer_from_file, merge, MergeOptions};
use nydus_hybrid_core::reader::Rafs;
use proptest::prelude::*;
use std::collections::BTreeMap;
use std::path::Path;

/// Paths a layer may touch, parents before children.
const UNIVERSE: [&str; 7] = ["a", "d", "d/a", "d/e", "d/e/a", "x", "x/a"];

#[derive(Clone, Copy, Debug, PartialEq)]
enum Put {
    Nothing,
    File(u8),
    Whiteout,
    Dir,
    Opaque,
}

#[derive(Clone, Debug, PartialEq)]
enum Entry {
    Dir,
    File(u8),
}

fn parent(p: &str) -> Option<&str> {
    p.rsplit_once('/').map(|(d, _)| d)
}

fn can_be_dir(p: &str) -> bool {
    UNIVERSE.iter().any(|q| parent(q) == Some(p))
}

fn put() -> impl Strategy<Value = Put> {
    prop_oneof![3 => Just(Put::Nothing), 3 => (0u8..4).prop_map(Put::File), 2 => Just(Put::Whiteout), 1 => Just(Put::Dir), 1 => Just(Put::Opaque)]
}

/// A layer as a valid tree: nothing below a file or a whiteout; a touched path's parent is
/// a directory of the layer; only paths with children may be directories.
fn normalize(raw: Vec<Put>) -> BTreeMap<&'static str, Put> {
    let mut layer: BTreeMap<&'static str, Put> = BTreeMap::new();
    for (p, mut v) in UNIVERSE.iter().copied().zip(raw) {
        if matches!(v, Put::Dir | Put::Opaque) && !can_be_dir(p) {
            v = Put::File(9);
        }
        let ancestors: Vec<&'static str> = std::iter::successors(parent(p), |d| parent(d)).collect();
        if ancestors.iter().any(|d| matches!(layer.get(d), Some(Put::File(_)) | Some(Put::Whiteout))) {
            v = Put::Nothing;
        }
        if v != Put::Nothing {
            for d in ancestors {
                if layer.get(d) == Some(&Put::Nothing) {
                    layer.insert(d, Put::Dir);
                }
            }
        }
        layer.insert(p, v);
    }
    layer
}

fn under(path: &str, dir: &str) -> bool {
    path.len() > dir.len() && path.starts_with(dir) && path.as_bytes()[dir.len()] == b'/'
}

/// OCI: the layer's opaque directories and whiteouts hide what is below, then its entries
/// replace or join what is there.
fn apply(tree: &mut BTreeMap<String, Entry>, layer: &BTreeMap<&'static str, Put>) {
    for (&p, &v) in layer {
        match v {
            Put::Opaque => tree.retain(|q, _| !under(q, p)),
            Put::Whiteout => tree.retain(|q, _| q != p && !under(q, p)),
            _ => {}
        }
    }
    for (&p, &v) in layer {
        match v {
            Put::Dir | Put::Opaque => {
                tree.insert(p.to_string(), Entry::Dir);
            }
            Put::File(c) => {
                tree.retain(|q, _| !under(q, p));
                tree.insert(p.to_string(), Entry::File(c));
            }
            _ => {}
        }
    }
}

fn content(c: u8) -> Vec<u8> {
    vec![b'0' + c; 10 + c as usize]
}

fn make_layer(root: &Path, layer: &BTreeMap<&'static str, Put>) {
    std::fs::create_dir_all(root).unwrap();
    for (&p, &v) in layer {
        let at = root.join(p);
        match v {
            Put::File(c) => std::fs::write(&at, content(c)).unwrap(),
            Put::Dir => std::fs::create_dir_all(&at).unwrap(),
            Put::Opaque => {
                std::fs::create_dir_all(&at).unwrap();
                std::fs::write(at.join(".wh..wh..opq"), b"").unwrap();
            }
            Put::Whiteout => {
                let (d, name) = p.rsplit_once('/').map_or(("", p), |(d, n)| (d, n));
                std::fs::write(root.join(d).join(format!(".wh.{name}")), b"").unwrap();
            }
            Put::Nothing => {}
        }
    }
}

fn listing(rafs: &Rafs, nid: u64, prefix: &str, out: &mut BTreeMap<String, Entry>) {
    for e in rafs.boot.readdir(nid).unwrap() {
        if e.name == b"." || e.name == b".." {
            continue;
        }
        let path = format!("{prefix}{}", String::from_utf8(e.name).unwrap());
        let ino = rafs.boot.inode(e.nid).unwrap();
        if nydus_hybrid_core::reader::Bootstrap::is_dir(&ino) {
            out.insert(path.clone(), Entry::Dir);
            listing(rafs, e.nid, &format!("{path}/"), out);
        } else {
            let data = rafs.read_nid(e.nid, 0, 64).unwrap();
            let c = data[0] - b'0';
            assert_eq!(data, content(c), "{path}");
            out.insert(path, Entry::File(c));
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn merge_applies_layers_as_oci_does(raw in prop::collection::vec(prop::collection::vec(put(), UNIVERSE.len()), 1..4)) {
        let tmp = tempfile::tempdir().unwrap();
        let layers: Vec<_> = raw.into_iter().map(normalize).collect();
        let opts = BuildOptions { progress: false, inline_bootstrap: true, whiteout_spec: WhiteoutSpec::None, ..Default::default() };
        let mut model = BTreeMap::new();
        let mut sources = Vec::new();
        for (i, layer) in layers.iter().enumerate() {
            apply(&mut model, layer);
            let dir = tmp.path().join(format!("l{i}"));
            make_layer(&dir, layer);
            let blob = build(&dir, None, &tmp.path().join(format!("blobs{i}")), &opts).unwrap().blob_path.unwrap();
            // Every layer's blob in one directory, as a registry's blob store.
            let to = tmp.path().join("blobs").join(blob.file_name().unwrap());
            std::fs::create_dir_all(to.parent().unwrap()).unwrap();
            std::fs::rename(&blob, &to).unwrap();
            sources.push(layer_from_file(&to, None, None).unwrap());
        }
        let out = tmp.path().join("merged");
        merge(&sources, &out, &MergeOptions::default()).unwrap();
        let rafs = Rafs::open(&out, Some(&tmp.path().join("blobs"))).unwrap();
        let mut got = BTreeMap::new();
        listing(&rafs, rafs.boot.root_nid(), "", &mut got);
        prop_assert_eq!(got, model, "layers: {:?}", layers);
    }
}
