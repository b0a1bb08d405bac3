//! The fscache server against the device seam's simulated transport, with the test playing
//! the kernel on the other end of a SOCK_SEQPACKET pair: OPEN answered with the object's
//! size, READ filling the anon fd with exactly the blob's uncompressed bytes and always
//! completed, the error replies of spec §5.5, and CLOSE.

use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::Arc;

use nydus_hybrid_core::builder::{build, BuildOptions};
use nydus_hybrid_core::export::export_flat_blob;
use nydus_hybrid_core::fscache::device;
use nydus_hybrid_core::fscache::proto::{encode_close, encode_open, encode_read};
use nydus_hybrid_core::fscache::{BlobRegistry, FscacheServer};
use nydus_hybrid_core::reader::Rafs;

fn seqpacket_pair() -> (OwnedFd, OwnedFd) {
    let mut fds = [0; 2];
    assert_eq!(unsafe { libc::socketpair(libc::AF_UNIX, libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC, 0, fds.as_mut_ptr()) }, 0);
    unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) }
}

/// The next command the server wrote (the "kernel" side of the pair).
fn command(kernel: &OwnedFd) -> String {
    let mut p = libc::pollfd { fd: kernel.as_raw_fd(), events: libc::POLLIN, revents: 0 };
    assert_eq!(unsafe { libc::poll(&mut p, 1, 5000) }, 1, "no command within 5 s");
    let mut buf = [0u8; 256];
    let n = unsafe { libc::recv(kernel.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
    String::from_utf8(buf[..n as usize].to_vec()).unwrap()
}

fn nothing_written(kernel: &OwnedFd) -> bool {
    let mut p = libc::pollfd { fd: kernel.as_raw_fd(), events: libc::POLLIN, revents: 0 };
    unsafe { libc::poll(&mut p, 1, 200) == 0 }
}

struct Setup {
    _tmp: tempfile::TempDir,
    server: Arc<FscacheServer>,
    kernel: OwnedFd,
    flat: Vec<u8>,
    boot: Vec<u8>,
    blob_id: String,
    cache: std::path::PathBuf,
}

fn setup() -> Setup {
    setup_with(false)
}

fn setup_with(prefetch: bool) -> Setup {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    std::fs::create_dir(&src).unwrap();
    let data: Vec<u8> = (0..3 * 1024 * 1024 + 777).map(|i| (i * 7 % 251) as u8).collect();
    std::fs::write(src.join("big"), &data).unwrap();
    std::fs::write(src.join("small"), b"hello").unwrap();
    let (boot, blobs) = (tmp.path().join("boot"), tmp.path().join("blobs"));
    build(&src, Some(&boot), &blobs, &BuildOptions { progress: false, chunk_size: 0x10_0000, ..Default::default() }).unwrap();
    // the expected bytes come from a reader of their own (one that has the blob open would
    // hide a blob that disappears later)
    export_flat_blob(&Rafs::open(&boot, Some(&blobs)).unwrap(), 0, &tmp.path().join("flat")).unwrap();
    let rafs = Arc::new(Rafs::open(&boot, Some(&blobs)).unwrap());
    let blob_id = rafs.boot.blobs[0].blob_id.clone();
    let registry = Arc::new(BlobRegistry::default());
    assert_eq!(registry.add_bootstrap("d", "f1", boot.clone(), rafs.clone(), prefetch, "{}".into()).unwrap(), vec![blob_id.clone()]);
    let (ours, kernel) = seqpacket_pair();
    let server = FscacheServer::new(device::adopt("sim:", ours), registry);
    Setup {
        flat: std::fs::read(tmp.path().join("flat")).unwrap(),
        boot: std::fs::read(&boot).unwrap(),
        cache: tmp.path().join("cache-object"),
        _tmp: tmp,
        server,
        kernel,
        blob_id,
    }
}

/// Where two byte strings first differ (assert_eq! would print megabytes).
fn first_difference(a: &[u8], b: &[u8]) -> Option<usize> {
    if a.len() != b.len() {
        return Some(a.len().min(b.len()));
    }
    a.iter().zip(b).position(|(x, y)| x != y)
}

fn anon(path: &std::path::Path) -> OwnedFd {
    std::fs::OpenOptions::new().create(true).truncate(true).write(true).open(path).unwrap().into()
}

#[test]
fn open_read_close_fill_exactly_the_blob_bytes() {
    let s = setup();
    s.server.handle(&encode_open(1, 7, "d", &s.blob_id, 0), Some(anon(&s.cache)));
    assert_eq!(command(&s.kernel), format!("copen 1,{}", s.flat.len()));
    // the kernel sizes the cache object as the copen said
    std::fs::OpenOptions::new().write(true).open(&s.cache).unwrap().set_len(s.flat.len() as u64).unwrap();
    // a READ in the middle of the second chunk fills that whole chunk, and is completed
    s.server.handle(&encode_read(2, 7, 0x10_0000 + 4096, 8192), None);
    assert_eq!(command(&s.kernel), "cread 2");
    let mut got = Vec::new();
    std::fs::File::open(&s.cache).unwrap().read_to_end(&mut got).unwrap();
    assert_eq!(first_difference(&got[0x10_0000..0x20_0000], &s.flat[0x10_0000..0x20_0000]), None);
    // the rest of the object, in one READ past its end (clipped)
    s.server.handle(&encode_read(3, 7, 0, u32::MAX as u64), None);
    assert_eq!(command(&s.kernel), "cread 3");
    got.clear();
    std::fs::File::open(&s.cache).unwrap().read_to_end(&mut got).unwrap();
    assert_eq!(first_difference(&got, &s.flat), None, "object {} bytes, flat {}", got.len(), s.flat.len());
    s.server.handle(&encode_close(4, 7), None);
    assert!(nothing_written(&s.kernel), "CLOSE expects no reply");
    let m = s.server.metrics_json();
    assert_eq!((m["opens"].as_u64(), m["reads"].as_u64(), m["closes"].as_u64(), m["objects"].as_u64()), (Some(1), Some(2), Some(1), Some(0)));
    assert_eq!(m["read_errors"].as_u64(), Some(0));
}

#[test]
fn the_bootstrap_object_is_the_bootstrap_file() {
    let s = setup();
    s.server.handle(&encode_open(1, 1, "d", "f1", 0), Some(anon(&s.cache)));
    assert_eq!(command(&s.kernel), format!("copen 1,{}", s.boot.len()));
    s.server.handle(&encode_read(2, 1, 0, s.boot.len() as u64), None);
    assert_eq!(command(&s.kernel), "cread 2");
    assert_eq!(first_difference(&std::fs::read(&s.cache).unwrap(), &s.boot), None);
}

#[test]
fn error_replies() {
    let s = setup();
    // unknown cookie, or the right cookie in another domain: ENOENT
    s.server.handle(&encode_open(1, 1, "d", "nobody", 0), Some(anon(&s.cache)));
    assert_eq!(command(&s.kernel), "copen 1,-2");
    s.server.handle(&encode_open(2, 1, "other", "f1", 0), Some(anon(&s.cache)));
    assert_eq!(command(&s.kernel), "copen 2,-2");
    // no anon fd: EBADF; an object opened twice: EALREADY
    s.server.handle(&encode_open(3, 1, "d", "f1", 0), None);
    assert_eq!(command(&s.kernel), "copen 3,-9");
    s.server.handle(&encode_open(4, 1, "d", "f1", 0), Some(anon(&s.cache)));
    assert_eq!(command(&s.kernel), format!("copen 4,{}", s.boot.len()));
    s.server.handle(&encode_open(5, 1, "d", "f1", 0), Some(anon(&s.cache)));
    assert_eq!(command(&s.kernel), "copen 5,-114");
    // an unparsable OPEN is still answered (EINVAL); other garbage is only counted
    let mut bad = encode_open(6, 2, "d", "f1", 0);
    bad[16] = 0xff;
    s.server.handle(&bad, Some(anon(&s.cache)));
    assert_eq!(command(&s.kernel), "copen 6,-22");
    s.server.handle(&[1, 2, 3], None);
    // a READ for an object nobody opened has no fd to complete on
    s.server.handle(&encode_read(7, 99, 0, 4096), None);
    assert!(nothing_written(&s.kernel));
    let m = s.server.metrics_json();
    assert_eq!(m["bad_messages"].as_u64(), Some(2));
    assert_eq!(m["read_errors"].as_u64(), Some(1));
}

#[test]
fn a_failing_backend_still_completes_the_read() {
    let s = setup();
    s.server.handle(&encode_open(1, 7, "d", &s.blob_id, 0), Some(anon(&s.cache)));
    command(&s.kernel);
    // the blob disappears from the backend: the fetch fails, the READ is completed anyway
    for e in std::fs::read_dir(s._tmp.path().join("blobs")).unwrap() {
        std::fs::remove_file(e.unwrap().path()).unwrap();
    }
    s.server.handle(&encode_read(2, 7, 0, 4096), None);
    assert_eq!(command(&s.kernel), "cread 2");
    assert_eq!(s.server.metrics_json()["read_errors"].as_u64(), Some(1));
    assert_eq!(std::fs::metadata(&s.cache).unwrap().len(), 0, "nothing written: the kernel sees a hole (EIO)");
}

#[test]
fn prefetch_fills_the_whole_object_without_reads() {
    let s = setup_with(true);
    s.server.handle(&encode_open(1, 7, "d", &s.blob_id, 0), Some(anon(&s.cache)));
    assert_eq!(command(&s.kernel), format!("copen 1,{}", s.flat.len()));
    std::fs::OpenOptions::new().write(true).open(&s.cache).unwrap().set_len(s.flat.len() as u64).unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while s.server.metrics_json()["prefetch_bytes"].as_u64() < Some(3 * 1024 * 1024 + 777) {
        assert!(std::time::Instant::now() < deadline, "prefetch did not finish: {}", s.server.metrics_json());
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert_eq!(first_difference(&std::fs::read(&s.cache).unwrap(), &s.flat), None);
    let m = s.server.metrics_json();
    assert_eq!((m["reads"].as_u64(), m["prefetch_errors"].as_u64()), (Some(0), Some(0)));
}
