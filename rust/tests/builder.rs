//! Builder output against the spec's worked example (§10) and a read-back round trip.

use nydus_hybrid_core::builder::{build, BuildOptions};
use nydus_hybrid_core::layout::bytes::*;
use nydus_hybrid_core::reader::Rafs;
use std::os::unix::fs::symlink;

#[test]
fn worked_example_geometry() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    std::fs::create_dir(&src).unwrap();
    std::fs::write(src.join("hello.txt"), b"0123456789").unwrap();
    symlink("hello.txt", src.join("link")).unwrap();
    let boot = tmp.path().join("boot");
    let blobs = tmp.path().join("blobs");
    let opts = BuildOptions { progress: false, ..Default::default() };
    let r = build(&src, Some(&boot), &blobs, &opts).unwrap();
    let img = std::fs::read(&boot).unwrap();
    assert_eq!(img.len(), 20480);
    assert_eq!(u32_at(&img, 1024), 0xE0F5_E1E2);
    assert_eq!(u16_at(&img, 1038), 128); // root nid
    assert_eq!(u64_at(&img, 1040), 3); // inos
    assert_eq!(u32_at(&img, 1064), 2); // meta_blkaddr
    assert_eq!(u64_at(&img, 1152), 0x0100_0194); // flags incl. INLINED_CHUNK_DIGEST
    assert_eq!(u64_at(&img, 1176), 16384); // chunk table
    assert_eq!(u64_at(&img, 1184), 80);
    // root inode at 12288: inline dir, size 64, i_u 3, nlink 2
    assert_eq!(u16_at(&img, 12288), 0x5);
    assert_eq!(u64_at(&img, 12288 + 8), 64);
    assert_eq!(u32_at(&img, 12288 + 16), 3);
    assert_eq!(u32_at(&img, 12288 + 44), 2);
    assert_eq!(&img[12400..12416], b"...hello.txtlink");
    // hello.txt at nid 132 (abs 12416), chunk index at 12480
    assert_eq!(u16_at(&img, 12416), 0x9);
    assert_eq!(u32_at(&img, 12416 + 16), 0x28);
    assert_eq!(&img[12480..12488], &[0, 0, 1, 0, 0, 0, 0, 0]);
    // link at nid 135 (abs 12512), inline target
    assert_eq!(u16_at(&img, 12512), 0x5);
    assert_eq!(&img[12576..12585], b"hello.txt");
    // chunk table entry
    assert_eq!(u32_at(&img, 16384 + 36), 0x10); // HAS_CRC32, stored raw
    assert_eq!(u32_at(&img, 16384 + 76), 0x280C_069E);
    // blob: the blob-toc variant is 6714 bytes, named by the sha256 of the whole file
    assert_eq!(r.blob_size, 6714);
    let blob = std::fs::read(r.blob_path.as_ref().unwrap()).unwrap();
    assert_eq!(blob.len(), 6714);
    assert_eq!(hex::encode(nydus_hybrid_core::codec::sha256(&blob)), r.blob_id.clone().unwrap());
    assert_eq!(u64_at(&img, 4096 + 112), 522); // ci_offset
    assert_eq!(u32_at(&img, 4096 + 84), 0x7000_0021);
    assert_eq!(u32_at(&img, 4096 + 104), 1024);
    // mapped_blkaddr = round_up(20480, 512K) / 4096
    assert_eq!(u32_at(&img, 1408 + 68), 128);

    let rafs = Rafs::open(&boot, Some(&blobs)).unwrap();
    let nid = rafs.boot.resolve(b"/hello.txt").unwrap();
    assert_eq!(nid, 132);
    assert_eq!(rafs.read_nid(nid, 0, 100).unwrap(), b"0123456789");
    assert_eq!(rafs.boot.readlink(135).unwrap(), b"hello.txt");
}

#[test]
fn build_is_deterministic_and_dedups() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    std::fs::create_dir_all(src.join("d/e")).unwrap();
    let big: Vec<u8> = (0..3_000_000u32).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8).collect();
    std::fs::write(src.join("big"), &big).unwrap();
    std::fs::write(src.join("d/big2"), &big).unwrap();
    std::fs::write(src.join("d/e/small"), b"x").unwrap();
    let opts = BuildOptions { progress: false, chunk_size: 0x10_0000, ..Default::default() };
    let r1 = build(&src, Some(&tmp.path().join("b1")), &tmp.path().join("o1"), &opts).unwrap();
    let r2 = build(&src, Some(&tmp.path().join("b2")), &tmp.path().join("o2"), &opts).unwrap();
    assert_eq!(std::fs::read(tmp.path().join("b1")).unwrap(), std::fs::read(tmp.path().join("b2")).unwrap());
    assert_eq!(r1.blob_id, r2.blob_id);
    assert_eq!(r1.chunks, 4); // 3 chunks of big + small; big2 deduped
    assert_eq!(r1.deduped_chunks, 3);
    let rafs = Rafs::open(&tmp.path().join("b1"), Some(&tmp.path().join("o1"))).unwrap();
    for p in ["/big", "/d/big2"] {
        let nid = rafs.boot.resolve(p.as_bytes()).unwrap();
        assert_eq!(rafs.read_nid(nid, 0, 4 << 20).unwrap(), big);
        assert_eq!(rafs.read_nid(nid, 1_048_570, 20).unwrap(), &big[1_048_570..1_048_590]);
    }
}

#[test]
fn a_listing_resumes_at_every_position() {
    // 700 entries span several directory blocks; every resume point, block edges included,
    // must give exactly the tail of the whole listing, and a stop must stop.
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    std::fs::create_dir(&src).unwrap();
    for i in 0..700 {
        std::fs::write(src.join(format!("entry-with-a-longish-name-{i:04}")), b"").unwrap();
    }
    let (boot, blobs) = (tmp.path().join("boot"), tmp.path().join("blobs"));
    build(&src, Some(&boot), &blobs, &BuildOptions { progress: false, ..Default::default() }).unwrap();
    let rafs = Rafs::open(&boot, Some(&blobs)).unwrap();
    let root = rafs.boot.root_nid();
    let all: Vec<Vec<u8>> = rafs.boot.readdir(root).unwrap().into_iter().map(|e| e.name).collect();
    assert_eq!(all.len(), 702); // with . and ..
    for from in 0..all.len() as u64 + 3 {
        let mut seen = Vec::new();
        rafs.boot
            .readdir_from(root, from, |e, next| {
                assert_eq!(next, from + seen.len() as u64 + 1);
                seen.push(e.name.to_vec());
                true
            })
            .unwrap();
        assert_eq!(seen, all[(from as usize).min(all.len())..], "resumed at {from}");
        let mut taken = 0;
        rafs.boot
            .readdir_from(root, from, |_, _| {
                taken += 1;
                taken < 5
            })
            .unwrap();
        assert_eq!(taken, 5.min(all.len().saturating_sub(from as usize)));
    }
}
