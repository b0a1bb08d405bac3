//! `--chunk-dict`: a build references the chunks an earlier image stores instead of storing
//! them again; its blob table is the new blob, then the dictionary blobs it uses.

use nydus_hybrid_core::builder::chunker::ChunkDict;
use nydus_hybrid_core::builder::{build, BuildOptions};
use nydus_hybrid_core::reader::Rafs;
use std::sync::Arc;

fn noise(n: usize, seed: u32) -> Vec<u8> {
    let mut x = seed.wrapping_mul(2654435761) | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

#[test]
fn shared_chunks_are_referenced_in_the_dictionary_blob() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b, blobs) = (tmp.path().join("a"), tmp.path().join("b"), tmp.path().join("blobs"));
    std::fs::create_dir_all(&a).unwrap();
    std::fs::create_dir_all(&b).unwrap();
    let shared = noise(3 << 20, 1);
    std::fs::write(a.join("shared"), &shared).unwrap();
    std::fs::write(a.join("only-a"), noise(100_000, 2)).unwrap();
    std::fs::write(b.join("shared"), &shared).unwrap();
    std::fs::write(b.join("only-b"), noise(200_000, 3)).unwrap();
    let plain = BuildOptions { progress: false, ..Default::default() };
    let ra = build(&a, Some(&tmp.path().join("a.boot")), &blobs, &plain).unwrap();
    let without = build(&b, Some(&tmp.path().join("b0.boot")), &tmp.path().join("b0"), &plain).unwrap();

    let dict = Arc::new(ChunkDict::load(&tmp.path().join("a.boot")).unwrap());
    let opts = BuildOptions { chunk_dict: Some(dict), ..plain };
    let boot = tmp.path().join("b.boot");
    let rb = build(&b, Some(&boot), &blobs, &opts).unwrap();
    assert_eq!(rb.dict_chunks, 3, "the three chunks of the shared file");
    assert_eq!(rb.chunks, 1, "only the new file's chunk is stored");
    assert!(rb.blob_size * 5 < without.blob_size, "{} vs {}", rb.blob_size, without.blob_size);

    let rafs = Rafs::open(&boot, Some(&blobs)).unwrap();
    let ids: Vec<String> = rafs.boot.blobs.iter().map(|e| e.blob_id.clone()).collect();
    assert_eq!(ids, [rb.blob_id.clone().unwrap(), ra.blob_id.clone().unwrap()]);
    let nid = rafs.boot.resolve(b"/shared").unwrap();
    assert_eq!(rafs.read_nid(nid, 0, 4 << 20).unwrap(), shared);
    assert!(rafs.boot.chunk_addrs(nid, &rafs.boot.inode(nid).unwrap()).unwrap().iter().all(|c| c.blob_index == 1));
    let nid = rafs.boot.resolve(b"/only-b").unwrap();
    assert_eq!(rafs.read_nid(nid, 0, 1 << 20).unwrap(), noise(200_000, 3));
    nydus_hybrid_core::check::check(&rafs, true).unwrap();
}

#[test]
fn a_dictionary_with_another_digester_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let a = tmp.path().join("a");
    std::fs::create_dir_all(&a).unwrap();
    std::fs::write(a.join("f"), b"f").unwrap();
    let sha = BuildOptions { progress: false, digester: nydus_hybrid_core::layout::Digester::Sha256, ..Default::default() };
    build(&a, Some(&tmp.path().join("a.boot")), &tmp.path().join("blobs"), &sha).unwrap();
    let dict = Arc::new(ChunkDict::load(&tmp.path().join("a.boot")).unwrap());
    let opts = BuildOptions { progress: false, chunk_dict: Some(dict), ..Default::default() };
    let e = build(&a, Some(&tmp.path().join("b.boot")), &tmp.path().join("blobs"), &opts).unwrap_err();
    assert!(e.to_string().contains("digester"), "{e}");
}
