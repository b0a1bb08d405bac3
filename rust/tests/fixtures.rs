//! The Nydus reference fixtures (`../shared/fixtures/nydus-v2.2`) must read correctly.

use nydus_hybrid_core::reader::Rafs;
use std::path::PathBuf;

fn fixtures() -> PathBuf {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/fixtures/nydus-v2.2");
    std::env::var_os("NYDUS_FIXTURES").map(PathBuf::from).unwrap_or(root)
}

const BLOB: &str = "be7d77eeb719f70884758d1aa800ed0fb09d701aaec469964e9d54325f0d5fef";

#[test]
fn reads_v22_bootstrap_and_blob() {
    let dir = fixtures();
    let rafs = Rafs::open(&dir.join("rafs-v6-2.2.boot"), Some(&dir)).unwrap();
    assert_eq!(rafs.boot.root_nid(), 128);
    let names: Vec<_> = rafs.boot.readdir(128).unwrap().into_iter().map(|e| (e.name, e.nid)).collect();
    assert!(names.contains(&(b"lib.rs".to_vec(), 133)));
    assert!(names.contains(&(b"sync_io.rs".to_vec(), 136)));
    for (path, nid, size) in [("/lib.rs", 133, 16931), ("/sync_io.rs", 136, 13400)] {
        assert_eq!(rafs.boot.resolve(path.as_bytes()).unwrap(), nid);
        let data = rafs.read_nid(nid, 0, 1 << 20).unwrap();
        assert_eq!(data.len(), size);
        assert!(std::str::from_utf8(&data).is_ok());
        assert_eq!(rafs.read_nid(nid, 100, 50).unwrap(), data[100..150]);
    }
    let blob = rafs.blob(0).unwrap();
    assert_eq!(blob.entry.blob_id, BLOB);
    assert_eq!(blob.digests.as_ref().unwrap().len(), 2);
    // Both digest stores agree.
    let table = rafs.boot.chunk_map().unwrap();
    for (ci, d) in blob.digests.as_ref().unwrap().iter().enumerate() {
        assert_eq!(&table[&(0, ci as u32)].digest, d);
    }
}

#[test]
fn reads_blob_with_inlined_bootstrap() {
    let dir = fixtures();
    let path = dir.join("2fa78cad554b75ac91a4a125ed148d0ddeb25efa4aaa8bd80e5dc292690a4dca");
    let rafs = Rafs::open_inline_blob(&path).unwrap();
    for (name, size) in [("/error.rs", 2816), ("/lib.rs", 678), ("/logger.rs", 3115)] {
        let nid = rafs.boot.resolve(name.as_bytes()).unwrap();
        let data = rafs.read_nid(nid, 0, 1 << 20).unwrap();
        assert_eq!(data.len(), size, "{name}");
        assert!(std::str::from_utf8(&data).is_ok());
    }
}
