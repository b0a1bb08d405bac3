//! Property tests for every on-disk decoder and for whole-image reading.
//!
//! * Decoding arbitrary bytes never panics (fixed-size records get inputs of their size;
//!   decoders that take a slice of any length get any length).
//! * encode/decode round-trips for the records the builder writes.
//! * `Bootstrap::from_bytes` plus a full walk, every read, `inspect`, `check` and `unpack_tar`
//!   over randomly damaged valid images (ours and the Nydus-built fixture) return `Ok` or
//!   `Err`, never panic; damaged blobs likewise.
//!
//! Deterministic by default (fixed seed); `PROPTEST_RNG_SEED=n` and `PROPTEST_CASES=n`
//! explore further. Run: `cargo test --test proptest_parsers`.

use nydus_hybrid_core::builder::{build, BuildOptions};
use nydus_hybrid_core::check::check;
use nydus_hybrid_core::error::Result as NResult;
use nydus_hybrid_core::inspect::inspect;
use nydus_hybrid_core::layout::blob_meta::{ChunkInfo, CiHeader, CI_HEADER_SIZE, CI_MAGIC};
use nydus_hybrid_core::layout::chunk_table::ChunkTableEntry;
use nydus_hybrid_core::layout::dirent::{decode_block, encode_block, entry_count};
use nydus_hybrid_core::layout::inode::{decode_xattrs, encode_xattrs, ChunkAddr, Inode};
use nydus_hybrid_core::layout::superblock::{BlobEntry, DeviceSlot, ErofsSuper, ExtSuper};
use nydus_hybrid_core::layout::toc::TocEntry;
use nydus_hybrid_core::layout::{mode, tarhdr, Compressor, Digester};
use nydus_hybrid_core::reader::{Bootstrap, Rafs};
use nydus_hybrid_core::storage::{BlobSource, BlobStore, LocalDir};
use nydus_hybrid_core::walk::walk;
use proptest::prelude::*;
use proptest::test_runner::{Config, RngSeed};
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

fn config(default_cases: u32) -> Config {
    let cases = std::env::var("PROPTEST_CASES").ok().and_then(|s| s.parse().ok()).unwrap_or(default_cases);
    let seed = std::env::var("PROPTEST_RNG_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(0x6e79_6475_735f_7074);
    Config { cases, rng_seed: RngSeed::Fixed(seed), failure_persistence: None, ..Config::default() }
}

fn bytes(len: std::ops::Range<usize>) -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(any::<u8>(), len)
}

fn fixed<const N: usize>() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(any::<u8>(), N)
}

/// Random bytes with a few fields forced, so decoding gets past its first magic check.
fn with_fields(mut b: Vec<u8>, fields: &[(usize, &[u8])], keep: &[bool]) -> Vec<u8> {
    for ((off, v), &k) in fields.iter().zip(keep) {
        if k && b.len() >= off + v.len() {
            b[*off..off + v.len()].copy_from_slice(v);
        }
    }
    b
}

// ---------------------------------------------------------------------------------------
// 1. Decoders never panic
// ---------------------------------------------------------------------------------------

proptest! {
    #![proptest_config(config(2048))]

    #[test]
    fn ci_v1_any_record(b in fixed::<16>()) {
        let c = ChunkInfo::decode_v1(&b);
        prop_assert!(c.uncompressed_size >= 1 && c.uncompressed_size <= 1 << 24);
        prop_assert!(c.compressed_size >= 1 && c.compressed_size <= 1 << 24);
        prop_assert_eq!(c.uncompressed_offset % 4096, 0);
        let _ = (c.compressed_end(), c.uncompressed_end());
    }

    #[test]
    fn ci_v2_any_record(b in fixed::<24>()) {
        let c = ChunkInfo::decode_v2(&b);
        prop_assert!(c.uncompressed_size >= 1);
        let _ = (c.compressed_end(), c.uncompressed_end());
    }

    #[test]
    fn ci_header_any_bytes(b in bytes(0..4200), magic in any::<(bool, bool)>()) {
        let m = CI_MAGIC.to_le_bytes();
        let b = with_fields(b, &[(0, &m), (4092, &m)], &[magic.0, magic.1]);
        let r = CiHeader::decode(&b);
        prop_assert_eq!(r.is_ok(), b.len() >= CI_HEADER_SIZE && b[..4] == m && b[4092..4096] == m);
    }

    #[test]
    fn tar_header_any_bytes(b in bytes(0..600)) {
        let _ = tarhdr::decode(&b);
    }

    #[test]
    fn tar_header_damaged(name in "[a-z.]{1,20}", size in 0u64..(1 << 33), edits in prop::collection::vec((0usize..512, any::<u8>()), 1..6)) {
        let mut h = tarhdr::encode(&name, size).to_vec();
        for (at, v) in edits {
            h[at] = v;
        }
        let _ = tarhdr::decode(&h);
    }

    #[test]
    fn toc_entry_any_bytes(b in bytes(0..300)) {
        if let Ok(e) = TocEntry::decode(&b) {
            let _ = e.compressor();
        }
    }

    #[test]
    fn dirent_block_any_bytes(b in bytes(0..4200), valid in 0usize..5000) {
        if let Ok(ents) = decode_block(&b, valid) {
            prop_assert!(!ents.is_empty());
            for e in ents {
                prop_assert!(!e.name.is_empty());
            }
        }
    }

    #[test]
    fn dirent_entry_count_agrees_with_decode(b in bytes(0..4200), valid in 0usize..5000) {
        // A listing resumed at an offset skips blocks by entry_count: it must accept exactly
        // what decode_block accepts the header of, and count what decode_block returns.
        match decode_block(&b, valid) {
            Ok(ents) => prop_assert_eq!(entry_count(&b, valid).ok(), Some(ents.len())),
            Err(_) => {
                if let Ok(n) = entry_count(&b, valid) {
                    prop_assert!(n >= 1);
                }
            }
        }
    }

    #[test]
    fn dirent_block_damaged(names in prop::collection::btree_set("[a-z]{1,30}", 1..40), edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8)) {
        let names: Vec<Vec<u8>> = names.into_iter().map(String::into_bytes).collect();
        let ents: Vec<(u64, u8, &[u8])> = names.iter().enumerate().map(|(i, n)| (i as u64 * 2, 1u8, n.as_slice())).collect();
        let mut blk = Vec::new();
        encode_block(&ents, &mut blk);
        let used = blk.len();
        for (at, v) in edits {
            let i = at.index(blk.len());
            blk[i] = v;
        }
        blk.resize(4096, 0);
        let _ = decode_block(&blk, used);
        let _ = decode_block(&blk, 4096);
    }

    #[test]
    fn inode_any_bytes(b in bytes(0..100)) {
        if let Ok(i) = Inode::decode(&b) {
            let _ = (i.core_size(), i.xattr_size(), i.inline_offset(), i.chunk_index_offset());
        }
    }

    #[test]
    fn xattrs_any_bytes(b in bytes(0..400)) {
        let _ = decode_xattrs(&b);
    }

    #[test]
    fn chunk_addr_any(b in fixed::<8>()) {
        if let Ok(a) = ChunkAddr::decode(&b) {
            prop_assert!(a.ci_index < 1 << 24);
        }
    }

    #[test]
    fn erofs_super_any_bytes(b in bytes(0..200), magic in any::<bool>()) {
        let b = with_fields(b, &[(0, &0xE0F5_E1E2u32.to_le_bytes()), (4, &[0, 0, 0, 0])], &[magic, magic]);
        let _ = ErofsSuper::decode(&b);
    }

    #[test]
    fn ext_super_any_bytes(b in bytes(0..300)) {
        if let Ok(e) = ExtSuper::decode(&b) {
            let _ = (e.digester(), e.compressor());
        }
    }

    #[test]
    fn device_slot_any(b in fixed::<128>()) {
        let _ = DeviceSlot::decode(&b);
    }

    #[test]
    fn blob_entry_any(b in fixed::<256>(), pos in 0usize..3, cs in any::<u32>(), tarfs in any::<bool>()) {
        if let Ok(e) = BlobEntry::decode(&b) {
            let _ = e.validate(pos, cs, tarfs);
            let _ = (e.compression(), e.digest_algo(), e.compressed_data_size());
        }
    }

    #[test]
    fn chunk_table_entry_any(b in fixed::<80>()) {
        let e = ChunkTableEntry::decode(&b);
        prop_assert_eq!(&e.encode()[..], &b[..]);
    }
}

// ---------------------------------------------------------------------------------------
// 2. Round trips
// ---------------------------------------------------------------------------------------

fn blob_id() -> impl Strategy<Value = String> {
    "[0-9a-zA-Z._-]{0,64}"
}

prop_compose! {
    fn chunk_info_v1()(c_off in 0u64..(1 << 40), c_size in 1u32..=(1 << 24), u_blk in 0u64..(1 << 32), u_size in 1u32..=(1 << 24)) -> ChunkInfo {
        ChunkInfo {
            compressed_offset: c_off,
            compressed_size: c_size,
            uncompressed_offset: u_blk << 12,
            uncompressed_size: u_size,
            compressed: c_size != u_size,
            v2_flags: 0,
            data: 0,
        }
    }
}

prop_compose! {
    fn blob_entry()(blob_id in blob_id(), ints in prop::array::uniform12(any::<u32>()), longs in prop::array::uniform6(any::<u64>()),
                    toc_digest in prop::array::uniform32(any::<u8>()), meta_digest in prop::array::uniform32(any::<u8>())) -> BlobEntry {
        BlobEntry {
            blob_id,
            blob_index: ints[0],
            chunk_size: ints[1],
            chunk_count: ints[2],
            compressor: ints[3],
            digester: ints[4],
            features: ints[5],
            compressed_size: longs[0],
            uncompressed_size: longs[1],
            toc_size: ints[6],
            ci_compressor: ints[7],
            ci_offset: longs[2],
            ci_compressed_size: longs[3],
            ci_uncompressed_size: longs[4],
            toc_digest,
            meta_digest,
            meta_size: longs[5],
            cipher: ints[8],
        }
    }
}

prop_compose! {
    fn ext_super()(comp in prop::sample::select(vec![0x1u64, 0x2, 0x40, 0x80]), hash in prop::sample::select(vec![0x4u64, 0x8]),
                   extra in any::<u64>(), shift in 12u32..=24, v in prop::array::uniform6(any::<u64>()), w in any::<(u32, u32)>()) -> ExtSuper {
        let optional = 0x10 | 0x20 | 0x100 | 0x200 | 0x0100_0000 | 0x0200_0000 | 0xFC00_0000u64;
        ExtSuper {
            flags: comp | hash | (extra & optional),
            blob_table_offset: v[0],
            blob_table_size: w.0,
            chunk_size: 1 << shift,
            chunk_table_offset: v[1],
            chunk_table_size: v[2],
            prefetch_table_offset: v[3],
            prefetch_table_size: w.1,
        }
    }
}

proptest! {
    #![proptest_config(config(2048))]

    #[test]
    fn ci_v1_round_trip(c in chunk_info_v1()) {
        prop_assert_eq!(ChunkInfo::decode_v1(&c.encode_v1()), c);
    }

    #[test]
    fn chunk_addr_round_trip(blob_index in 0u8..255, ci_index in 0u32..(1 << 24), blkaddr in 0u32..u32::MAX) {
        let a = ChunkAddr { blob_index, ci_index, blkaddr };
        prop_assert_eq!(ChunkAddr::decode(&a.encode()).unwrap(), a);
    }

    #[test]
    fn device_slot_round_trip(blob_id in blob_id(), blocks in 1u32..=u32::MAX, mapped in any::<u32>()) {
        let d = DeviceSlot { blob_id, blocks, mapped_blkaddr: mapped };
        prop_assert_eq!(DeviceSlot::decode(&d.encode()).unwrap(), d);
    }

    #[test]
    fn blob_entry_round_trip(e in blob_entry()) {
        prop_assert_eq!(BlobEntry::decode(&e.encode()).unwrap(), e);
    }

    #[test]
    fn ext_super_round_trip(e in ext_super()) {
        prop_assert_eq!(ExtSuper::decode(&e.encode()).unwrap(), e);
    }

    #[test]
    fn erofs_super_round_trip(blk in prop::sample::select(vec![9u8, 12]), root in any::<u16>(), inos in 1u64..=u64::MAX,
                              blocks in any::<u32>(), meta in any::<u32>(), devs in 1u16..=u16::MAX, compat in any::<u32>()) {
        let s = ErofsSuper { feature_compat: compat | 0x4000_0000, blkszbits: blk, root_nid: root, inos, blocks, meta_blkaddr: meta, extra_devices: devs };
        prop_assert_eq!(ErofsSuper::decode(&s.encode()).unwrap(), s);
    }

    #[test]
    fn toc_entry_round_trip(name in "[a-z.]{0,16}", flags in any::<u32>(), digest in prop::array::uniform32(any::<u8>()), v in any::<(u64, u64, u64)>()) {
        let e = TocEntry { flags, name, digest, offset: v.0, stored_size: v.1, uncompressed_size: v.2 };
        prop_assert_eq!(TocEntry::decode(&e.encode()).unwrap(), e);
    }

    #[test]
    fn tar_header_round_trip(name in "[a-z][a-z.]{0,99}", size in 0u64..(1 << 33)) {
        prop_assert_eq!(tarhdr::decode(&tarhdr::encode(&name, size)).unwrap(), (name, size));
    }

    #[test]
    fn ci_header_round_trip(v in prop::array::uniform4(any::<u32>()), w in prop::array::uniform5(any::<u64>())) {
        let h = CiHeader { features: v[0], ci_compressor: v[1], ci_entries: v[2], ci_offset: w[0], ci_compressed_size: w[1],
                           ci_uncompressed_size: w[2], zran_offset: w[3], zran_size: w[4], zran_count: v[3] };
        prop_assert_eq!(CiHeader::decode(&h.encode()).unwrap(), h);
    }

    #[test]
    fn inode_round_trip(layout in 0u16..8, icount in any::<u16>(), mode in any::<u16>(), size in any::<u64>(), v in prop::array::uniform6(any::<u32>()), mtime in any::<u64>()) {
        let i = Inode { extended: true, layout, xattr_icount: icount, mode, nlink: v[0], size, i_u: v[1], ino: v[2], uid: v[3], gid: v[4], mtime, mtime_nsec: v[5] };
        prop_assert_eq!(Inode::decode(&i.encode_extended()).unwrap(), i);
    }

    #[test]
    fn xattrs_round_trip(pairs in prop::collection::btree_map(
        "(user\\.|trusted\\.|security\\.)[a-z]{1,20}", prop::collection::vec(any::<u8>(), 0..40), 1..6)) {
        let pairs: Vec<(Vec<u8>, Vec<u8>)> = pairs.into_iter().map(|(k, v)| (k.into_bytes(), v)).collect();
        let (body, _icount) = encode_xattrs(pairs.iter().map(|(k, v)| (k, v)));
        let mut got = decode_xattrs(&body).unwrap();
        got.sort();
        prop_assert_eq!(got, pairs);
    }

    #[test]
    fn dirent_round_trip(names in prop::collection::btree_set("[a-zA-Z0-9._-]{1,40}", 1..50)) {
        let names: Vec<Vec<u8>> = names.into_iter().map(String::into_bytes).collect();
        let ents: Vec<(u64, u8, &[u8])> = names.iter().enumerate().map(|(i, n)| (i as u64 + 7, (i % 7) as u8 + 1, n.as_slice())).collect();
        let mut blk = Vec::new();
        encode_block(&ents, &mut blk);
        prop_assume!(blk.len() <= 4096);
        let got = decode_block(&blk, blk.len()).unwrap();
        let got: Vec<(u64, u8, &[u8])> = got.iter().map(|d| (d.nid, d.file_type, d.name)).collect();
        prop_assert_eq!(got, ents);
    }
}

/// Regression (fixed; builder): `tarhdr::encode` formats the size as `{:011o}\0` into the 12-byte
/// field; from 8 GiB on that is 13 bytes and `copy_from_slice` panics. The builder frames a
/// blob's chunk data with `encode("image.blob", data_size)`, so any build whose stored chunk
/// data reaches 8 GiB panics at the very end. GNU tar writes such sizes in base-256.
#[test]
fn tar_header_encodes_sizes_of_8_gib_and_more() {
    for size in [(1u64 << 33) - 1, 1 << 33, 100 << 30, 1 << 40] {
        let h = std::panic::catch_unwind(|| tarhdr::encode("image.blob", size));
        let h = h.unwrap_or_else(|_| panic!("tarhdr::encode panicked for a {size}-byte section"));
        assert_eq!(tarhdr::decode(&h).unwrap(), ("image.blob".to_string(), size));
    }
}

// ---------------------------------------------------------------------------------------
// 3. Whole images, damaged
// ---------------------------------------------------------------------------------------

struct Golden {
    boot: Vec<u8>,
    blob_dir: PathBuf,
    blob_id: String,
    blob: Vec<u8>,
    paths: Vec<&'static [u8]>,
}

/// A tar with directories, a multi-chunk file, a hard link, a symlink, xattrs and a device.
fn golden_tar(path: &Path) {
    let f = std::fs::File::create(path).unwrap();
    let mut b = tar::Builder::new(f);
    let mut add = |name: &str, kind: tar::EntryType, data: &[u8], link: Option<&str>, xattrs: &[(&str, &[u8])]| {
        if !xattrs.is_empty() {
            let recs: Vec<(String, &[u8])> = xattrs.iter().map(|(k, v)| (format!("SCHILY.xattr.{k}"), *v)).collect();
            b.append_pax_extensions(recs.iter().map(|(k, v)| (k.as_str(), *v))).unwrap();
        }
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_mode(if kind == tar::EntryType::Directory { 0o755 } else { 0o644 });
        h.set_mtime(1_700_000_000);
        h.set_uid(0);
        h.set_gid(0);
        h.set_size(data.len() as u64);
        if kind == tar::EntryType::Char {
            h.set_device_major(1).unwrap();
            h.set_device_minor(3).unwrap();
        }
        match link {
            Some(l) => b.append_link(&mut h, name, l).unwrap(),
            None => b.append_data(&mut h, name, data).unwrap(),
        }
    };
    let big: Vec<u8> = (0..3 * 4096 * 4 + 777u32).map(|i| (i * 31 % 253) as u8).collect();
    add("d/", tar::EntryType::Directory, b"", None, &[("user.dir", b"1")]);
    add("d/e/", tar::EntryType::Directory, b"", None, &[]);
    add("d/e/f", tar::EntryType::Regular, &[7u8; 5000], None, &[("trusted.t", b"tv")]);
    add("a.txt", tar::EntryType::Regular, b"hello world\n", None, &[("user.k", b"v1"), ("user.longer", &[b'x'; 100])]);
    add("big", tar::EntryType::Regular, &big, None, &[]);
    add("big-link", tar::EntryType::Link, b"", Some("big"), &[]);
    add("link", tar::EntryType::Symlink, b"", Some("a.txt"), &[]);
    add("d/long-link", tar::EntryType::Symlink, b"", Some(&"y".repeat(300)), &[]);
    add("dev-null", tar::EntryType::Char, b"", None, &[]);
    add("empty", tar::EntryType::Regular, b"", None, &[]);
    for i in 0..60 {
        add(&format!("many/entry-{i:03}-{}", "n".repeat(40)), tar::EntryType::Regular, if i % 7 == 0 { b"same\n" } else { b"" }, None, &[]);
    }
    b.finish().unwrap();
}

fn golden() -> &'static Golden {
    static G: OnceLock<Golden> = OnceLock::new();
    G.get_or_init(|| {
        let dir = tempfile::Builder::new().prefix("nh-proptest-").tempdir().unwrap().keep();
        let src = dir.join("layer.tar");
        golden_tar(&src);
        let boot = dir.join("image.boot");
        let blobs = dir.join("blobs");
        let opts = BuildOptions { chunk_size: 0x4000, progress: false, ..Default::default() };
        let r = build(&src, Some(&boot), &blobs, &opts).unwrap();
        let rafs = Rafs::open(&boot, Some(&blobs)).unwrap();
        check(&rafs, true).unwrap();
        let blob_id = r.blob_id.unwrap();
        Golden {
            boot: std::fs::read(&boot).unwrap(),
            blob: std::fs::read(blobs.join(&blob_id)).unwrap(),
            blob_dir: blobs,
            blob_id,
            paths: vec![b"/", b"/a.txt", b"/big", b"/big-link", b"/link", b"/d/e/f", b"/d/long-link", b"/many", b"/dev-null", b"/empty", b"/nope"],
        }
    })
}

fn reference() -> Option<(Vec<u8>, PathBuf)> {
    let dir = std::env::var_os("NYDUS_FIXTURES")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/fixtures/nydus-v2.2"));
    std::fs::read(dir.join("rafs-v6-2.2.boot")).ok().map(|b| (b, dir))
}

/// A blob held in memory (so damaged blobs need no files).
struct MemBlob(Vec<u8>);

impl BlobSource for MemBlob {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> NResult<()> {
        let end = offset.checked_add(buf.len() as u64).filter(|&e| e <= self.0.len() as u64);
        match end {
            Some(end) => {
                buf.copy_from_slice(&self.0[offset as usize..end as usize]);
                Ok(())
            }
            None => Err(nydus_hybrid_core::Error::corrupt("read past the end of the blob")),
        }
    }
    fn size(&self) -> NResult<u64> {
        Ok(self.0.len() as u64)
    }
}

struct MemStore(Arc<MemBlob>);

impl BlobStore for MemStore {
    fn open(&self, _id: &str) -> NResult<Arc<dyn BlobSource>> {
        Ok(self.0.clone())
    }
}

/// Every read-side operation; results are ignored, only panics matter (and hangs: the
/// walk must terminate, which the test harness would notice).
fn exercise(rafs: &Rafs, paths: &[&[u8]]) {
    let boot = &rafs.boot;
    let _ = inspect(boot);
    let mut visits = 0u32;
    let _ = walk(boot, |v| {
        visits += 1;
        assert!(visits < 100_000, "walk does not terminate");
        let ino = boot.inode(v.nid)?;
        let _ = boot.xattrs(v.nid, &ino);
        match ino.mode as u32 & mode::S_IFMT {
            mode::S_IFLNK => {
                let _ = boot.readlink(v.nid);
            }
            mode::S_IFREG => {
                let _ = boot.chunk_addrs(v.nid, &ino);
                let _ = rafs.read_nid(v.nid, 0, 1 << 20);
                let _ = rafs.read_nid(v.nid, ino.size / 2, 100);
                let _ = rafs.read_nid(v.nid, u64::MAX - 5, usize::MAX);
            }
            mode::S_IFDIR => {
                let _ = boot.readdir(v.nid);
            }
            _ => {}
        }
        Ok(())
    });
    for p in paths {
        if let Ok(nid) = boot.resolve(p) {
            let _ = rafs.stat_nid(nid);
            let _ = rafs.read_nid(nid, 0, usize::MAX);
            let _ = boot.readlink(nid);
            let _ = boot.readdir(nid);
            let _ = boot.lookup(nid, b"zzz");
        }
    }
    for nid in [0u64, 1, 127, 128, 129, 1 << 20, u64::MAX / 32, u64::MAX] {
        let _ = boot.inode(nid);
        let _ = rafs.read_nid(nid, 0, 64);
        let _ = boot.readdir(nid);
    }
    let _ = boot.prefetch_nids();
    let _ = check(rafs, true);
    let _ = nydus_hybrid_core::unpack::unpack_tar(rafs, &mut std::io::sink());
}

#[derive(Clone, Debug)]
enum Edit {
    Flip(usize, u8),
    Put(usize, Vec<u8>),
    Truncate(usize),
}

fn edits(hot: Vec<usize>) -> impl Strategy<Value = Vec<Edit>> {
    let at = prop_oneof![prop::sample::select(hot), any::<usize>()];
    let edit = prop_oneof![
        6 => (at.clone(), 1u8..=255).prop_map(|(a, m)| Edit::Flip(a, m)),
        6 => (at, prop::sample::select(vec![1usize, 2, 4, 8])).prop_flat_map(|(a, n)| bytes(n..n + 1).prop_map(move |v| Edit::Put(a, v))),
        1 => any::<usize>().prop_map(Edit::Truncate),
    ];
    prop::collection::vec(edit, 1..8)
}

fn apply(data: &[u8], edits: &[Edit]) -> Vec<u8> {
    let mut b = data.to_vec();
    for e in edits {
        if b.is_empty() {
            break;
        }
        match e {
            Edit::Flip(a, m) => {
                let i = a % b.len();
                b[i] ^= m;
            }
            Edit::Put(a, v) => {
                let i = a % b.len();
                let n = v.len().min(b.len() - i);
                b[i..i + n].copy_from_slice(&v[..n]);
            }
            Edit::Truncate(a) => {
                let n = a % (b.len() + 1);
                b.truncate(n);
            }
        }
    }
    b
}

/// Offsets of header fields and the metadata area: where a flip is most likely to matter.
fn hot_offsets(boot: &[u8]) -> Vec<usize> {
    let mut hot: Vec<usize> = (1024..1208).step_by(2).collect();
    hot.extend((4096..4352).step_by(4));
    let meta = u32::from_le_bytes(boot[1064..1068].try_into().unwrap()) as usize * 4096;
    hot.extend((meta..boot.len()).step_by(4));
    hot
}

proptest! {
    #![proptest_config(config(1500))]

    #[test]
    fn damaged_bootstrap_never_panics(e in edits(hot_offsets(&golden().boot))) {
        let g = golden();
        let data = apply(&g.boot, &e);
        if let Ok(boot) = Bootstrap::from_bytes(data) {
            let rafs = Rafs::new(boot, Box::new(LocalDir::new(g.blob_dir.clone())));
            exercise(&rafs, &g.paths);
        }
    }

    #[test]
    fn damaged_reference_bootstrap_never_panics(e in edits((1024..1208).chain(12288..16384).collect())) {
        let Some((boot, dir)) = reference() else { return Ok(()) };
        if let Ok(b) = Bootstrap::from_bytes(apply(&boot, &e)) {
            let rafs = Rafs::new(b, Box::new(LocalDir::new(dir)));
            exercise(&rafs, &[b"/", b"/lib.rs", b"/sync_io.rs"]);
        }
    }

    #[test]
    fn damaged_blob_never_panics(e in edits({
        let n = golden().blob.len();
        (0..n).step_by(3).chain(n.saturating_sub(1536)..n).collect()
    })) {
        let g = golden();
        let blob = apply(&g.blob, &e);
        let boot = Bootstrap::from_bytes(g.boot.clone()).unwrap();
        let rafs = Rafs::new(boot, Box::new(MemStore(Arc::new(MemBlob(blob)))));
        exercise(&rafs, &g.paths);
        // Blob damage can never change what a successful read returns.
        let clean = Rafs::new(Bootstrap::from_bytes(g.boot.clone()).unwrap(), Box::new(LocalDir::new(g.blob_dir.clone())));
        for p in [&b"/big"[..], b"/a.txt", b"/d/e/f"] {
            let nid = rafs.boot.resolve(p).unwrap();
            if let Ok(got) = rafs.read_nid(nid, 0, 1 << 20) {
                prop_assert_eq!(got, clean.read_nid(nid, 0, 1 << 20).unwrap(), "wrong bytes for {:?} from a damaged blob", String::from_utf8_lossy(p));
            }
        }
        let _ = &g.blob_id;
    }

    #[test]
    fn random_bootstrap_bytes_never_panic(b in bytes(4096..4097), valid_sb in any::<bool>()) {
        // A block of noise, optionally behind a valid-looking superblock pair.
        let mut data = b;
        data.resize(8192, 0);
        if valid_sb {
            let g = golden();
            data[1024..1408].copy_from_slice(&g.boot[1024..1408]);
        }
        if let Ok(boot) = Bootstrap::from_bytes(data) {
            let rafs = Rafs::new(boot, Box::new(MemStore(Arc::new(MemBlob(golden().blob.clone())))));
            exercise(&rafs, &[b"/", b"/x"]);
        }
    }
}

/// Regression (fixed; inspect): `inspect` sums file sizes with `+=`; two regular files whose i_size
/// is 2^63 overflow it: a panic in debug builds ("attempt to add with overflow", found by
/// `damaged_bootstrap_never_panics`), a silently wrong `file_bytes` in release builds.
#[test]
fn inspect_survives_huge_file_sizes() {
    let g = golden();
    let mut data = g.boot.clone();
    let probe = Bootstrap::from_bytes(data.clone()).unwrap();
    let meta = probe.sb.meta_blkaddr as usize * 4096;
    for p in [&b"/a.txt"[..], b"/d/e/f"] {
        let nid = probe.resolve(p).unwrap();
        let off = meta + nid as usize * 32 + 8;
        data[off..off + 8].copy_from_slice(&(1u64 << 63).to_le_bytes());
    }
    let boot = Bootstrap::from_bytes(data).unwrap();
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| inspect(&boot).map(|v| v.to_string())));
    assert!(r.is_ok(), "inspect panicked on two files of 2^63 bytes");
}

// ---------------------------------------------------------------------------------------
// 4. Tar streams (build input): the framing parser and the whole tar build path
// ---------------------------------------------------------------------------------------

fn pax_record(key: &str, value: &[u8]) -> Vec<u8> {
    let body_len = key.len() + value.len() + 3; // ' ' + '=' + '\n'
    let mut len = body_len + 1;
    while len != body_len + len.to_string().len() {
        len = body_len + len.to_string().len();
    }
    let mut r = format!("{len} {key}=").into_bytes();
    r.extend_from_slice(value);
    r.push(b'\n');
    r
}

/// A small layer: PAX records, GNU long names, links, devices, whiteouts.
fn seed_layer() -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    let hdr = |kind: tar::EntryType, size: u64| {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_mode(0o644);
        h.set_uid(1);
        h.set_gid(2);
        h.set_mtime(1_700_000_000);
        h.set_size(size);
        h
    };
    b.append_data(&mut hdr(tar::EntryType::Directory, 0), "d/", &b""[..]).unwrap();
    b.append_pax_extensions([("SCHILY.xattr.user.bin", &b"a\nb\0c"[..]), ("mtime", b"1600000000.25")]).unwrap();
    b.append_data(&mut hdr(tar::EntryType::Regular, 3000), "d/f", &[5u8; 3000][..]).unwrap();
    b.append_data(&mut hdr(tar::EntryType::Regular, 5), format!("d/{}", "l".repeat(150)), &b"long!"[..]).unwrap();
    b.append_link(&mut hdr(tar::EntryType::Link, 0), "hl", "d/f").unwrap();
    b.append_link(&mut hdr(tar::EntryType::Symlink, 0), "sl", "/etc/passwd").unwrap();
    let mut dev = hdr(tar::EntryType::Char, 0);
    dev.set_device_major(1).unwrap();
    dev.set_device_minor(5).unwrap();
    b.append_data(&mut dev, "dev", &b""[..]).unwrap();
    b.append_data(&mut hdr(tar::EntryType::Regular, 0), "d/.wh..wh..opq", &b""[..]).unwrap();
    b.append_data(&mut hdr(tar::EntryType::Regular, 0), ".wh.gone", &b""[..]).unwrap();
    b.into_inner().unwrap()
}

fn build_tar(data: &[u8]) -> NResult<()> {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("layer.tar");
    std::fs::write(&src, data).unwrap();
    let opts = BuildOptions { chunk_size: 0x1000, progress: false, ..Default::default() };
    let boot = dir.path().join("boot");
    build(&src, Some(&boot), &dir.path().join("blobs"), &opts)?;
    // whatever was accepted must read back
    let rafs = Rafs::open(&boot, Some(&dir.path().join("blobs")))?;
    check(&rafs, true)?;
    Ok(())
}

/// Regression (tarstream): "-S.F" becomes `(secs - 1, 1e9 - nsec)`; for S = 2^63 that
/// subtraction overflowed (a panic in debug builds, a wrapped mtime in release).
#[test]
fn pax_mtime_before_i64_min_is_refused() {
    let data = tar_with_pax("mtime", b"-9223372036854775808.5", b"x");
    let r = std::panic::catch_unwind(|| build_tar(&data));
    assert!(r.is_ok(), "building a layer with PAX mtime -9223372036854775808.5 panicked");
    assert!(r.unwrap().is_err(), "a PAX mtime before -2^63 s was accepted");
}

#[test]
fn seed_layer_builds() {
    build_tar(&seed_layer()).unwrap();
}

proptest! {
    #![proptest_config(config(400))]

    #[test]
    fn pax_records_any_bytes(b in bytes(0..600)) {
        let _ = nydus_hybrid_core::builder::tarstream::parse_pax(&b);
    }

    #[test]
    fn pax_records_round_trip(recs in prop::collection::vec(("[a-zA-Z.]{1,30}", bytes(0..200)), 0..8)) {
        let mut data = Vec::new();
        for (k, v) in &recs {
            data.extend(pax_record(k, v));
        }
        let got = nydus_hybrid_core::builder::tarstream::parse_pax(&data).unwrap();
        let got: Vec<(String, Vec<u8>)> = got.into_iter().map(|(k, v)| (String::from_utf8(k.to_vec()).unwrap(), v.to_vec())).collect();
        prop_assert_eq!(got, recs);
    }

    #[test]
    fn tar_stream_any_bytes(b in bytes(0..3000)) {
        let mut ts = nydus_hybrid_core::builder::tarstream::TarStream::new(std::io::Cursor::new(b));
        for _ in 0..64 {
            match ts.next_member() {
                Ok(Some(_)) => {
                    let _ = std::io::copy(&mut ts, &mut std::io::sink());
                }
                _ => break,
            }
        }
    }

    #[test]
    fn damaged_layer_builds_or_fails_cleanly(e in edits({
        let n = seed_layer().len();
        (0..n.min(4096)).collect()
    })) {
        let _ = build_tar(&apply(&seed_layer(), &e));
    }

    #[test]
    fn layer_with_odd_pax_values(key in prop::sample::select(vec!["mtime", "size", "uid", "gid", "path", "linkpath", "SCHILY.xattr.user.x", "SCHILY.xattr.bogus"]),
                                 value in prop_oneof![
                                     "-?[0-9]{1,25}(\\.[0-9]{0,12})?",
                                     Just("-9223372036854775808.5".to_string()),
                                     Just("18446744073709551615".to_string()),
                                     "[ -~]{0,40}",
                                 ]) {
        let _ = build_tar(&tar_with_pax(key, value.as_bytes(), b"data"));
    }
}

#[test]
fn codecs_reject_garbage_without_panicking() {
    use nydus_hybrid_core::codec::decompress;
    let mut runner = proptest::test_runner::TestRunner::new(config(512));
    runner
        .run(&(bytes(0..2000), 0usize..(1 << 20), 0u32..4), |(data, size, algo)| {
            let _ = decompress(Compressor::from_u32(algo).unwrap(), &data, size);
            Ok(())
        })
        .unwrap();
    let _ = Digester::Blake3;
}

/// A one-member tar: a PAX record `key=value`, then a regular file "f" holding `data`.
fn tar_with_pax(key: &str, value: &[u8], data: &[u8]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    b.append_pax_extensions([(key, value)]).unwrap();
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Regular);
    h.set_mode(0o644);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(0);
    h.set_size(data.len() as u64);
    b.append_data(&mut h, "f", data).unwrap();
    b.into_inner().unwrap()
}

mod auth_challenges {
    use nydus_hybrid_core::storage::registry::Challenge;
    use proptest::prelude::*;

    fn quote(v: &str) -> String {
        format!("\"{}\"", v.replace('\\', "\\\\").replace('"', "\\\""))
    }

    proptest! {
        /// Any header parses without panicking.
        #[test]
        fn any_header_is_handled(s in ".{0,200}") {
            let _ = Challenge::parse(&s);
        }

        /// Quoted parameters (with commas, quotes and backslashes inside) come back intact.
        #[test]
        fn quoted_params_round_trip(scheme in "[A-Za-z]{1,10}",
                                    params in proptest::collection::vec(("[a-z]{1,8}", "[ -~]{0,30}"), 0..5)) {
            let body: Vec<String> = params.iter().map(|(k, v)| format!("{k}={}", quote(v))).collect();
            let c = Challenge::parse(&format!("{scheme} {}", body.join(","))).unwrap();
            prop_assert_eq!(c.scheme, scheme.to_ascii_lowercase());
            prop_assert_eq!(c.params, params);
        }
    }
}

mod configs {
    use nydus_hybrid_core::config::Config;
    use proptest::prelude::*;

    proptest! {
        /// Arbitrary text never panics the config parser.
        #[test]
        fn any_text_is_handled(s in ".{0,300}") {
            let _ = Config::parse(&s);
        }

        /// A valid document survives normalisation: parse(to_v2_json(parse(doc))) == parse(doc).
        #[test]
        fn normalisation_is_stable(batch in 0u64..=(256 << 20), threads in 1u64..=1024, validate: bool,
                                   dir in "/[a-z]{1,10}", kind in prop::sample::select(vec!["blobcache", "filecache", ""])) {
            let doc = serde_json::json!({"version": 2, "id": "x",
                "backend": {"type": "localfs", "localfs": {"dir": dir}},
                "cache": {"type": kind, "filecache": {"work_dir": dir}, "validate": validate,
                          "prefetch": {"enable": true, "threads": threads}},
                "rafs": {"batch_size": batch}});
            let a = Config::parse(&doc.to_string()).unwrap();
            let b = Config::parse(&a.to_v2_json().to_string()).unwrap();
            prop_assert_eq!(a, b);
        }
    }
}
