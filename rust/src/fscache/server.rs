//! The on-demand loop (spec §5.5, §5.6, §5.9): workers share the device, answer every OPEN
//! with `copen`, fill READ ranges through the object's anon fd, and drop objects on CLOSE.
//! A READ is always completed, even when the fetch failed: the kernel then finds the data
//! missing and fails only that read with EIO.

use std::collections::HashMap;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::JoinHandle;

use serde_json::json;

use crate::error::{Error, IoContext, Result};
use crate::fscache::blobs::{BlobRegistry, Target};
use crate::fscache::device::Device;
use crate::fscache::proto::{self, Message, Request};

/// How long a worker waits on the device before checking whether it should stop.
const POLL_MS: i32 = 200;
/// Bootstrap bytes copied per pwrite.
const COPY_STEP: u64 = 1 << 20;
/// The cache file behind an anon fd is written with direct I/O, so the offset, the length
/// and the buffer's address must be multiples of its block size; 4 KiB covers every block
/// size a cache file system uses.
const DIO_ALIGN: u64 = 4096;

struct Object {
    anon: OwnedFd,
    target: Target,
    /// Set on CLOSE: a background prefetch of this object stops.
    closed: AtomicBool,
    /// Data blobs: `(uncompressed offset, size, chunk index)` sorted by offset, built on the
    /// first READ (loading the blob meta may need the backend).
    chunks: OnceLock<Vec<(u64, u32, u32)>>,
}

#[derive(Default)]
pub struct Counters {
    pub opens: AtomicU64,
    pub open_errors: AtomicU64,
    pub reads: AtomicU64,
    pub read_bytes: AtomicU64,
    pub read_errors: AtomicU64,
    pub closes: AtomicU64,
    pub bad_messages: AtomicU64,
    pub prefetch_bytes: AtomicU64,
    pub prefetch_errors: AtomicU64,
}

pub struct FscacheServer {
    dev: Box<dyn Device>,
    pub registry: Arc<BlobRegistry>,
    objects: Mutex<HashMap<u32, Arc<Object>>>,
    stop: AtomicBool,
    device_lost: AtomicBool,
    workers: Mutex<Vec<JoinHandle<()>>>,
    pub counters: Counters,
}

fn event(name: &str, fields: serde_json::Value) {
    let mut doc = json!({"event": name, "component": "fscache"});
    if let (Some(d), Some(f)) = (doc.as_object_mut(), fields.as_object()) {
        d.extend(f.clone());
    }
    eprintln!("{doc}");
}

impl FscacheServer {
    pub fn new(dev: Box<dyn Device>, registry: Arc<BlobRegistry>) -> Arc<Self> {
        Arc::new(FscacheServer {
            dev,
            registry,
            objects: Default::default(),
            stop: AtomicBool::new(false),
            device_lost: AtomicBool::new(false),
            workers: Default::default(),
            counters: Default::default(),
        })
    }

    pub fn device_fd(&self) -> RawFd {
        self.dev.raw_fd()
    }

    pub fn command(&self, cmd: &str) -> Result<()> {
        self.dev.command(cmd).ctx(|| format!("cachefiles command {:?}", cmd.split(' ').next().unwrap_or("")))
    }

    /// Spawn `threads` workers on the device.
    pub fn start(self: &Arc<Self>, threads: usize) -> Result<()> {
        let mut workers = self.workers.lock().unwrap_or_else(|p| p.into_inner());
        if !workers.is_empty() {
            return Ok(());
        }
        self.stop.store(false, Relaxed);
        for i in 0..threads.max(1) {
            let me = self.clone();
            let h = std::thread::Builder::new().name(format!("fscache-{i}")).spawn(move || me.work()).ctx(|| "spawn an fscache worker".into())?;
            workers.push(h);
        }
        Ok(())
    }

    /// Stop the workers and wait for them (each notices within one poll interval).
    pub fn stop(&self) {
        self.stop.store(true, Relaxed);
        let handles: Vec<_> = self.workers.lock().unwrap_or_else(|p| p.into_inner()).drain(..).collect();
        for h in handles {
            let _ = h.join();
        }
    }

    pub fn running(&self) -> bool {
        !self.workers.lock().unwrap_or_else(|p| p.into_inner()).is_empty() && !self.stop.load(Relaxed)
    }

    pub fn device_lost(&self) -> bool {
        self.device_lost.load(Relaxed)
    }

    fn work(self: &Arc<Self>) {
        let mut buf = vec![0u8; proto::MSG_MAX];
        while !self.stop.load(Relaxed) && !self.device_lost.load(Relaxed) {
            match self.dev.recv(&mut buf, POLL_MS) {
                Ok(None) => {}
                Ok(Some(r)) => self.handle(&buf[..r.len], r.anon_fd),
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                    event("fscache_device_lost", json!({"error": e.to_string()}));
                    self.device_lost.store(true, Relaxed);
                }
                Err(e) => {
                    event("fscache_recv_failed", json!({"error": e.to_string()}));
                    std::thread::sleep(std::time::Duration::from_millis(100));
                }
            }
        }
    }

    /// Serve one message as read from the device.
    pub fn handle(self: &Arc<Self>, bytes: &[u8], anon_fd: Option<OwnedFd>) {
        let msg = match proto::decode(bytes) {
            Ok(m) => m,
            Err(e) => {
                self.counters.bad_messages.fetch_add(1, Relaxed);
                event("fscache_bad_message", json!({"error": e.to_string()}));
                if let (Some(id), Some(proto::OP_OPEN)) = (e.msg_id, e.opcode) {
                    self.reply_open(id, -(libc::EINVAL as i64)); // the fd, if any, closes on drop
                }
                return;
            }
        };
        match &msg.request {
            Request::Open { domain, cookie, .. } => self.serve_open(&msg, domain, cookie, anon_fd),
            Request::Read { off, len } => self.serve_read(&msg, *off, *len),
            Request::Close => {
                self.counters.closes.fetch_add(1, Relaxed);
                if let Some(obj) = self.lock_objects().remove(&msg.object_id) {
                    obj.closed.store(true, Relaxed);
                }
            }
        }
    }

    fn lock_objects(&self) -> std::sync::MutexGuard<'_, HashMap<u32, Arc<Object>>> {
        self.objects.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn reply_open(&self, msg_id: u32, size_or_errno: i64) {
        if size_or_errno < 0 {
            self.counters.open_errors.fetch_add(1, Relaxed);
        }
        if let Err(e) = self.dev.command(&proto::copen(msg_id, size_or_errno)) {
            event("fscache_copen_failed", json!({"msg_id": msg_id, "error": e.to_string()}));
        }
    }

    fn serve_open(self: &Arc<Self>, msg: &Message, domain: &str, cookie: &str, anon_fd: Option<OwnedFd>) {
        self.counters.opens.fetch_add(1, Relaxed);
        let Some(anon) = anon_fd else {
            event("fscache_open_without_fd", json!({"msg_id": msg.msg_id}));
            return self.reply_open(msg.msg_id, -(libc::EBADF as i64));
        };
        let Some(target) = self.registry.lookup(domain, cookie) else {
            event("fscache_open_unknown", json!({"domain": domain, "cookie": cookie}));
            return self.reply_open(msg.msg_id, -(libc::ENOENT as i64));
        };
        let size = target.size();
        let prefetch = matches!(target, Target::Data { prefetch: true, .. });
        let obj = Arc::new(Object { anon, target, closed: AtomicBool::new(false), chunks: OnceLock::new() });
        {
            let mut objects = self.lock_objects();
            if objects.contains_key(&msg.object_id) {
                drop(objects);
                return self.reply_open(msg.msg_id, -(libc::EALREADY as i64));
            }
            objects.insert(msg.object_id, obj.clone());
        }
        self.reply_open(msg.msg_id, size as i64);
        if prefetch {
            let me = self.clone();
            let spawned = std::thread::Builder::new().name("fscache-prefetch".into()).spawn(move || me.prefetch(&obj));
            if let Err(e) = spawned {
                event("fscache_prefetch_failed", json!({"error": e.to_string()}));
            }
        }
    }

    /// Fill every chunk of a data object that is not in the cache file yet (a restarted
    /// daemon finds what an earlier one wrote by its holes), until it is closed.
    fn prefetch(&self, obj: &Object) {
        let result = (|| -> Result<()> {
            let (rafs, index) = match &obj.target {
                Target::Data { rafs, index, .. } => (rafs, *index),
                Target::Bootstrap { .. } => return Ok(()),
            };
            let blob = rafs.blob(index)?;
            for &(off, size, ci) in chunk_index(obj, &blob) {
                if obj.closed.load(Relaxed) || self.stop.load(Relaxed) {
                    break;
                }
                if has_data(obj.anon.as_raw_fd(), off, size as u64) {
                    continue;
                }
                let (data, _) = rafs.read_blob_chunk(&blob, index as u32, ci)?;
                write_object(obj.anon.as_raw_fd(), &data, off)?;
                self.counters.prefetch_bytes.fetch_add(data.len() as u64, Relaxed);
            }
            Ok(())
        })();
        if let Err(e) = result {
            self.counters.prefetch_errors.fetch_add(1, Relaxed);
            event("fscache_prefetch_failed", json!({"error": e.to_string()}));
        }
    }

    fn serve_read(&self, msg: &Message, off: u64, len: u64) {
        self.counters.reads.fetch_add(1, Relaxed);
        let Some(obj) = self.lock_objects().get(&msg.object_id).cloned() else {
            // nydusd leaves this unanswered; the kernel caller would wait forever. There is
            // no fd to complete it on, so all we can do is say so.
            self.counters.read_errors.fetch_add(1, Relaxed);
            event("fscache_read_unknown_object", json!({"object_id": msg.object_id, "msg_id": msg.msg_id}));
            return;
        };
        match fill(&obj, off, len) {
            Ok(n) => {
                self.counters.read_bytes.fetch_add(n, Relaxed);
            }
            Err(e) => {
                self.counters.read_errors.fetch_add(1, Relaxed);
                event("fscache_read_failed", json!({"object_id": msg.object_id, "off": off, "len": len, "error": e.to_string()}));
            }
        }
        if let Err(e) = self.dev.read_complete(obj.anon.as_raw_fd(), msg.msg_id) {
            event("fscache_complete_failed", json!({"msg_id": msg.msg_id, "error": e.to_string()}));
        }
    }

    /// Whether at least one data object is open and every open one is complete in its
    /// cache file (`data_all_ready` of the blob-cache metrics).
    pub fn data_all_ready(&self) -> bool {
        let objects = self.lock_objects();
        let mut data = objects.values().filter(|o| matches!(o.target, Target::Data { .. })).peekable();
        data.peek().is_some() && data.all(|o| has_data(o.anon.as_raw_fd(), 0, o.target.size()))
    }

    pub fn metrics_json(&self) -> serde_json::Value {
        let c = &self.counters;
        json!({
            "opens": c.opens.load(Relaxed), "open_errors": c.open_errors.load(Relaxed),
            "reads": c.reads.load(Relaxed), "read_bytes": c.read_bytes.load(Relaxed),
            "read_errors": c.read_errors.load(Relaxed), "closes": c.closes.load(Relaxed),
            "bad_messages": c.bad_messages.load(Relaxed), "objects": self.lock_objects().len(),
            "prefetch_bytes": c.prefetch_bytes.load(Relaxed), "prefetch_errors": c.prefetch_errors.load(Relaxed),
            "device_lost": self.device_lost(), "data_all_ready": self.data_all_ready(),
        })
    }
}

/// Make `[off, off+len)` of the object present through its anon fd; returns bytes written.
fn fill(obj: &Object, off: u64, len: u64) -> Result<u64> {
    let end = off.saturating_add(len).min(obj.target.size());
    if off >= end {
        return Ok(0);
    }
    let anon = obj.anon.as_raw_fd();
    match &obj.target {
        Target::Bootstrap { path, file: f, .. } => {
            let start = off / DIO_ALIGN * DIO_ALIGN;
            let mut buf = vec![0u8; COPY_STEP.min(end - start) as usize];
            let mut at = start;
            while at < end {
                let n = (end - at).min(COPY_STEP) as usize;
                f.read_exact_at(&mut buf[..n], at).ctx(|| format!("read {} at {at}", path.display()))?;
                write_object(anon, &buf[..n], at)?;
                at += n as u64;
            }
            Ok(end - off)
        }
        Target::Data { rafs, index, .. } => {
            let blob = rafs.blob(*index)?;
            let chunks = chunk_index(obj, &blob);
            // The first chunk that ends after `off`; chunks do not overlap.
            let first = chunks.partition_point(|&(o, s, _)| o + s as u64 <= off);
            let budget = rafs.amplify_budget();
            let expected = |k: u32| rafs.expected_digest(&blob, *index as u32, k);
            let mut written = 0;
            let mut i = first;
            while i < chunks.len() && chunks[i].0 < end {
                let (o, s, _) = chunks[i];
                if has_data(anon, o, s as u64) {
                    i += 1;
                    continue;
                }
                // One request for this missing chunk, the missing ones after it that the read
                // needs, and (amplification) missing neighbours after those, up to `budget`
                // bytes, as long as they follow each other in the blob.
                let mut j = i + 1;
                let mut bytes = blob.chunks[chunks[i].2 as usize].compressed_size as u64;
                while j < chunks.len() {
                    let (oj, sj, cj) = chunks[j];
                    let (prev, c) = (&blob.chunks[chunks[j - 1].2 as usize], &blob.chunks[cj as usize]);
                    let fits = oj < end || bytes + c.compressed_size as u64 <= budget;
                    if !fits || c.compressed_offset != prev.compressed_end() || has_data(anon, oj, sj as u64) {
                        break;
                    }
                    bytes += c.compressed_size as u64;
                    j += 1;
                }
                let run: Vec<u32> = chunks[i..j].iter().map(|&(_, _, ci)| ci).collect();
                let started = std::time::Instant::now();
                let results = blob.fetch_run(&run, &expected, rafs.verify)?;
                rafs.link.record(bytes, started.elapsed().as_secs_f64());
                for (&(o, _, _), r) in chunks[i..j].iter().zip(results) {
                    match r {
                        Ok(data) => {
                            write_object(anon, &data, o)?;
                            if o < end {
                                written += data.len() as u64;
                            }
                        }
                        Err(e) if o < end => return Err(e),
                        Err(_) => {} // a bad neighbour stays a hole; its own read reports it
                    }
                }
                i = j;
            }
            Ok(written)
        }
    }
}

/// `(uncompressed offset, size, chunk index)` of the object's blob, sorted by offset.
fn chunk_index<'a>(obj: &'a Object, blob: &crate::reader::blob::BlobReader) -> &'a [(u64, u32, u32)] {
    obj.chunks.get_or_init(|| {
        let mut v: Vec<_> = blob.chunks.iter().enumerate().map(|(i, c)| (c.uncompressed_offset, c.uncompressed_size, i as u32)).collect();
        v.sort_unstable();
        v
    })
}

/// Whether `[off, off+len)` of the cache file holds data (no hole in it).
fn has_data(fd: RawFd, off: u64, len: u64) -> bool {
    let hole = unsafe { libc::lseek(fd, off as libc::off_t, libc::SEEK_HOLE) };
    hole >= 0 && hole as u64 >= off + len
}

/// A zero-filled buffer at a `DIO_ALIGN`-aligned address.
struct AlignedBuf {
    ptr: std::ptr::NonNull<u8>,
    layout: std::alloc::Layout,
}

impl AlignedBuf {
    fn zeroed(len: usize) -> Result<AlignedBuf> {
        let layout = std::alloc::Layout::from_size_align(len.max(1), DIO_ALIGN as usize)
            .map_err(|_| Error::io("allocate a write buffer", std::io::Error::from_raw_os_error(libc::ENOMEM)))?;
        // SAFETY: the layout has a non-zero size.
        let ptr = std::ptr::NonNull::new(unsafe { std::alloc::alloc_zeroed(layout) })
            .ok_or_else(|| Error::io("allocate a write buffer", std::io::Error::from_raw_os_error(libc::ENOMEM)))?;
        Ok(AlignedBuf { ptr, layout })
    }

    fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: `layout.size()` initialised (zeroed) bytes owned by this buffer.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.layout.size()) }
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        // SAFETY: allocated with this layout in `zeroed`.
        unsafe { std::alloc::dealloc(self.ptr.as_ptr(), self.layout) }
    }
}

/// Write `data` at `at` (a multiple of `DIO_ALIGN`, as chunk offsets are) through an anon fd:
/// from an aligned buffer, the tail zero-padded to a whole block, as direct I/O requires.
fn write_object(fd: RawFd, data: &[u8], at: u64) -> Result<()> {
    if at % DIO_ALIGN != 0 {
        return Err(Error::io(format!("write the cache object at {at}"), std::io::Error::from_raw_os_error(libc::EINVAL)));
    }
    let len = (data.len() as u64).div_ceil(DIO_ALIGN) * DIO_ALIGN;
    if data.as_ptr() as u64 % DIO_ALIGN == 0 && data.len() as u64 == len {
        return pwrite_all(fd, data, at);
    }
    let mut buf = AlignedBuf::zeroed(len as usize)?;
    let b = buf.as_mut_slice();
    b[..data.len()].copy_from_slice(data);
    pwrite_all(fd, b, at)
}

fn pwrite_all(fd: RawFd, mut data: &[u8], mut at: u64) -> Result<()> {
    while !data.is_empty() {
        let n = unsafe { libc::pwrite(fd, data.as_ptr().cast(), data.len(), at as libc::off_t) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(Error::io(format!("write the cache object at {at}"), e));
        }
        if n == 0 {
            return Err(Error::io("write the cache object", std::io::Error::from_raw_os_error(libc::ENOSPC)));
        }
        data = &data[n as usize..];
        at += n as u64;
    }
    Ok(())
}
