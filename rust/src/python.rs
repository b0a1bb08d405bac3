//! PyO3 bindings: `nydus_hybrid._core`. Thin: every call converts arguments, releases the GIL
//! and runs the Rust code. Results are Python objects (reports and metrics as dicts, typed in
//! `nydus_hybrid.types` and `_core.pyi`); errors become the exception class that
//! `nydus_hybrid.errors.BY_KIND` names for their kind.

use crate::builder::{self, BuildOptions, WhiteoutSpec};
use crate::config::{BackendConfig, Config, PrefetchConfig};
use crate::error::{Error, ErrorKind};
use crate::layout::{Compressor, Digester};
use crate::prefetch::{Prefetch, Target};
use crate::reader::{stat_of, Rafs};
use pyo3::exceptions::{PyImportError, PyValueError};
use pyo3::prelude::*;
use pyo3::sync::GILOnceCell;
use pyo3::types::{PyBytes, PyDict};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use strum::IntoEnumIterator;

/// The exception class of each `ErrorKind`, in declaration order, read from
/// `nydus_hybrid.errors.BY_KIND` when the module is imported.
static ERROR_CLASSES: GILOnceCell<Vec<Py<PyAny>>> = GILOnceCell::new();

fn error_classes(py: Python<'_>) -> PyResult<&Vec<Py<PyAny>>> {
    ERROR_CLASSES.get_or_try_init(py, || {
        let by_kind = py.import("nydus_hybrid.errors")?.getattr("BY_KIND")?;
        ErrorKind::iter()
            .map(|kind| {
                by_kind
                    .get_item(kind.name())
                    .map(Bound::unbind)
                    .map_err(|_| PyImportError::new_err(format!("nydus_hybrid.errors.BY_KIND has no class for the core's {} error", kind.name())))
            })
            .collect()
    })
}

/// Raise the class `nydus_hybrid.errors.BY_KIND` names for this error's kind.
fn to_py(e: Error) -> PyErr {
    let (kind, errno, msg) = (e.kind(), e.errno(), e.to_string());
    Python::with_gil(|py| {
        let made = error_classes(py).and_then(|classes| classes[kind as usize].bind(py).call1((errno, msg)));
        match made {
            Ok(exc) => PyErr::from_value(exc),
            Err(err) => err,
        }
    })
}

type R<T> = Result<T, PyErr>;

/// A report or metrics document as Python objects (dicts, lists, ints, strings).
fn to_object<'py, T: serde::Serialize + ?Sized>(py: Python<'py>, value: &T) -> R<Bound<'py, PyAny>> {
    pythonize::pythonize(py, value).map_err(PyErr::from)
}

/// An entry kept as JSON text by the core, back as Python objects.
fn json_object<'py>(py: Python<'py>, text: &str) -> R<Bound<'py, PyAny>> {
    let value: serde_json::Value = serde_json::from_str(text).map_err(|e| PyValueError::new_err(format!("stored entry is not JSON: {e}")))?;
    to_object(py, &value)
}

fn stat_dict<'py>(py: Python<'py>, s: &crate::reader::Stat) -> R<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    d.set_item("st_ino", s.ino)?;
    d.set_item("st_mode", s.mode)?;
    d.set_item("st_nlink", s.nlink)?;
    d.set_item("st_uid", s.uid)?;
    d.set_item("st_gid", s.gid)?;
    d.set_item("st_size", s.size)?;
    d.set_item("st_mtime", s.mtime)?;
    d.set_item("st_mtime_nsec", s.mtime_nsec)?;
    d.set_item("rdev_major", s.rdev_major)?;
    d.set_item("rdev_minor", s.rdev_minor)?;
    d.set_item("st_blocks", s.blocks)?;
    Ok(d)
}

/// An opened RAFS v6 image. Paths are bytes (the Python wrapper encodes str).
#[pyclass(module = "nydus_hybrid._core", frozen)]
struct Image {
    rafs: Arc<Rafs>,
}

impl Image {
    fn nid(&self, path: &[u8]) -> R<u64> {
        self.rafs.boot.resolve(path).map_err(to_py)
    }
}

#[pymethods]
impl Image {
    /// Open a bootstrap with a directory of blobs, or with a nydusd configuration document
    /// (v1/v2 JSON or TOML) naming the backend and blob cache. `cache_dir` overrides the
    /// configuration's cache directory.
    #[staticmethod]
    #[pyo3(signature = (bootstrap, blob_dir=None, verify=true, cache_dir=None, config=None, backend_id=None))]
    fn open(
        py: Python<'_>,
        bootstrap: PathBuf,
        blob_dir: Option<PathBuf>,
        verify: bool,
        cache_dir: Option<PathBuf>,
        config: Option<String>,
        backend_id: Option<String>,
    ) -> R<Self> {
        let mut rafs = py
            .allow_threads(|| match &config {
                Some(text) => {
                    let mut cfg = Config::parse(text)?;
                    if let Some(id) = &backend_id {
                        cfg.set_backend_id(id);
                    }
                    Rafs::open_with_config(&bootstrap, &cfg)
                }
                None => Rafs::open(&bootstrap, blob_dir.as_deref()),
            })
            .map_err(to_py)?;
        rafs.verify = verify;
        if cache_dir.is_some() {
            rafs.cache_dir = cache_dir;
        }
        Ok(Image { rafs: Arc::new(rafs) })
    }

    /// Open a data blob that carries its own bootstrap (an `image.boot` section).
    #[staticmethod]
    #[pyo3(signature = (blob, verify=true))]
    fn open_blob(py: Python<'_>, blob: PathBuf, verify: bool) -> R<Self> {
        let mut rafs = py.allow_threads(|| Rafs::open_inline_blob(&blob)).map_err(to_py)?;
        rafs.verify = verify;
        Ok(Image { rafs: Arc::new(rafs) })
    }

    fn lookup(&self, path: &[u8]) -> R<u64> {
        self.nid(path)
    }

    fn stat<'py>(&self, py: Python<'py>, path: &[u8]) -> R<Bound<'py, PyDict>> {
        let nid = self.nid(path)?;
        let ino = self.rafs.boot.inode(nid).map_err(to_py)?;
        stat_dict(py, &stat_of(nid, &ino))
    }

    /// Names in a directory, without `.` and `..`.
    fn listdir<'py>(&self, py: Python<'py>, path: &[u8]) -> R<Vec<Bound<'py, PyBytes>>> {
        let nid = self.nid(path)?;
        let ents = self.rafs.boot.readdir(nid).map_err(to_py)?;
        Ok(ents.iter().filter(|e| e.name != b"." && e.name != b"..").map(|e| PyBytes::new(py, &e.name)).collect())
    }

    /// (name, nid, dirent type) of every entry, `.` and `..` included.
    fn readdir<'py>(&self, py: Python<'py>, path: &[u8]) -> R<Vec<(Bound<'py, PyBytes>, u64, u8)>> {
        let nid = self.nid(path)?;
        let ents = self.rafs.boot.readdir(nid).map_err(to_py)?;
        Ok(ents.iter().map(|e| (PyBytes::new(py, &e.name), e.nid, e.file_type)).collect())
    }

    fn readlink<'py>(&self, py: Python<'py>, path: &[u8]) -> R<Bound<'py, PyBytes>> {
        let nid = self.nid(path)?;
        Ok(PyBytes::new(py, &self.rafs.boot.readlink(nid).map_err(to_py)?))
    }

    fn listxattr<'py>(&self, py: Python<'py>, path: &[u8]) -> R<Vec<Bound<'py, PyBytes>>> {
        let nid = self.nid(path)?;
        let ino = self.rafs.boot.inode(nid).map_err(to_py)?;
        let x = self.rafs.boot.xattrs(nid, &ino).map_err(to_py)?;
        Ok(x.iter().map(|(k, _)| PyBytes::new(py, k)).collect())
    }

    fn getxattr<'py>(&self, py: Python<'py>, path: &[u8], name: &[u8]) -> R<Bound<'py, PyBytes>> {
        let nid = self.nid(path)?;
        let ino = self.rafs.boot.inode(nid).map_err(to_py)?;
        let x = self.rafs.boot.xattrs(nid, &ino).map_err(to_py)?;
        match x.iter().find(|(k, _)| k == name) {
            Some((_, v)) => Ok(PyBytes::new(py, v)),
            None => Err(to_py(Error::NoAttribute(String::from_utf8_lossy(name).into_owned()))),
        }
    }

    /// Read up to `size` bytes at `offset`; the chunk work runs without the GIL.
    fn read<'py>(&self, py: Python<'py>, path: &[u8], offset: u64, size: usize) -> R<Bound<'py, PyBytes>> {
        let nid = self.nid(path)?;
        let data = py
            .allow_threads(|| self.rafs.read_nid(nid, offset, size))
            .map_err(|e| match e {
                Error::IsADirectory(_) => Error::IsADirectory(String::from_utf8_lossy(path).into_owned()),
                other => other,
            })
            .map_err(to_py)?;
        Ok(PyBytes::new(py, &data))
    }

    /// Superblock, blob table and counts.
    fn inspect<'py>(&self, py: Python<'py>) -> R<Bound<'py, PyAny>> {
        let v = py.allow_threads(|| crate::inspect::inspect(&self.rafs.boot)).map_err(to_py)?;
        to_object(py, &v)
    }

    /// Validate every invariant; with `blobs`, decode and verify every chunk.
    #[pyo3(signature = (blobs=true))]
    fn check<'py>(&self, py: Python<'py>, blobs: bool) -> R<Bound<'py, PyAny>> {
        let r = py.allow_threads(|| crate::check::check(&self.rafs, blobs)).map_err(to_py)?;
        to_object(py, &r)
    }

    fn unpack_tar<'py>(&self, py: Python<'py>, output: PathBuf) -> R<Bound<'py, PyAny>> {
        let r = py
            .allow_threads(|| -> crate::Result<_> {
                let f = std::fs::File::create(&output).map_err(|e| Error::io(format!("create {}", output.display()), e))?;
                let mut w = std::io::BufWriter::new(f);
                let r = crate::unpack::unpack_tar(&self.rafs, &mut w)?;
                std::io::Write::flush(&mut w).map_err(|e| Error::io("flush tar", e))?;
                Ok(r)
            })
            .map_err(to_py)?;
        to_object(py, &r)
    }

    fn unpack_dir<'py>(&self, py: Python<'py>, output: PathBuf) -> R<Bound<'py, PyAny>> {
        let r = py.allow_threads(|| crate::unpack::unpack_dir(&self.rafs, &output)).map_err(to_py)?;
        to_object(py, &r)
    }

    fn export_block(&self, py: Python<'_>, output: PathBuf) -> R<u64> {
        py.allow_threads(|| crate::export::export_block(&self.rafs, &output)).map_err(to_py)
    }

    fn export_flat_blob(&self, py: Python<'_>, index: usize, output: PathBuf) -> R<u64> {
        py.allow_threads(|| crate::export::export_flat_blob(&self.rafs, index, &output)).map_err(to_py)
    }

    /// Backend and blob-cache counters: `{"backend": §8.4, "blobcache": §8.5}`.
    fn metrics<'py>(&self, py: Python<'py>) -> R<Bound<'py, PyAny>> {
        to_object(py, &self.rafs.metrics_json())
    }

    /// Start prefetching `paths` (files or directories), the whole image (`all`), or, with
    /// neither, the image's own prefetch table. Runs in background threads.
    #[pyo3(signature = (paths=None, all=false, threads=8, batch_size=1<<20, bandwidth_limit=0))]
    fn prefetch(&self, py: Python<'_>, paths: Option<Vec<Vec<u8>>>, all: bool, threads: usize, batch_size: u64, bandwidth_limit: u64) -> R<PrefetchJob> {
        let target = match (all, paths) {
            (true, _) => Target::All,
            (false, Some(p)) => Target::Paths(p),
            (false, None) => Target::ImageTable,
        };
        if !(1..=1024).contains(&threads) {
            return Err(to_py(Error::invalid(format!("threads must be between 1 and 1024, got {threads}"))));
        }
        let cfg = PrefetchConfig { enable: true, threads, batch_size, bandwidth_limit, prefetch_all: all };
        let rafs = self.rafs.clone();
        let job = py.allow_threads(|| Prefetch::start(rafs, target, &cfg)).map_err(to_py)?;
        Ok(PrefetchJob { job: Mutex::new(Some(job)) })
    }

    /// How many inodes the image's prefetch table lists.
    #[getter]
    fn prefetch_entries(&self) -> R<usize> {
        Ok(self.rafs.boot.prefetch_nids().map_err(to_py)?.len())
    }

    fn blob_ids(&self) -> Vec<String> {
        self.rafs.boot.blobs.iter().map(|b| b.blob_id.clone()).collect()
    }

    #[getter]
    fn root_ino(&self) -> u64 {
        self.rafs.boot.root_nid()
    }
}

/// A FUSE mount served by Rust worker threads; images are attached at `/` (dedicated) or
/// `/<id>` (shared). Python only manages it; no request touches Python.
#[cfg(feature = "fuse")]
#[pyclass(module = "nydus_hybrid._core", frozen)]
struct FuseMount {
    server: crate::fuse::FuseServer,
}

#[cfg(feature = "fuse")]
fn accounting_of((files, pattern, latest): (bool, bool, bool)) -> crate::fuse::Accounting {
    crate::fuse::Accounting { files, pattern, latest }
}

#[cfg(feature = "fuse")]
fn cache_opts(entry_timeout: f64, attr_timeout: f64, keep_cache: bool) -> R<crate::fuse::CacheOptions> {
    let secs = |v: f64, what: &str| {
        if v.is_finite() && (0.0..=86400.0 * 365.0).contains(&v) {
            Ok(std::time::Duration::from_secs_f64(v))
        } else {
            Err(to_py(Error::invalid(format!("{what} must be between 0 and one year, got {v}"))))
        }
    };
    Ok(crate::fuse::CacheOptions { entry_timeout: secs(entry_timeout, "entry_timeout")?, attr_timeout: secs(attr_timeout, "attr_timeout")?, keep_cache })
}

#[cfg(feature = "fuse")]
impl FuseMount {
    fn stats(&self, path: &str) -> R<Arc<crate::fuse::metrics::FsIoStats>> {
        self.server.fs_stats(path).ok_or_else(|| to_py(Error::NotFound(format!("no image mounted at {path}"))))
    }
}

#[cfg(feature = "fuse")]
#[pymethods]
impl FuseMount {
    /// Mount an empty read-only FUSE filesystem (a dead mount at the path is detached first).
    /// `open`: the kernel sends OPEN (needed for `keep_cache=False`); `opendir`: it sends
    /// OPENDIR (needed where the root's listing changes: shared mode).
    #[staticmethod]
    #[pyo3(signature = (mountpoint, fsname="rafs", open=false, opendir=true))]
    fn mount(py: Python<'_>, mountpoint: PathBuf, fsname: &str, open: bool, opendir: bool) -> R<Self> {
        let server = py.allow_threads(|| crate::fuse::FuseServer::mount(&mountpoint, fsname, open, opendir)).map_err(to_py)?;
        Ok(FuseMount { server })
    }

    /// Take over a live mount: `fd` is its `/dev/fuse` descriptor (this object keeps a
    /// duplicate), `state` what `save_state` returned in the previous server.
    #[staticmethod]
    fn resume(py: Python<'_>, mountpoint: PathBuf, fd: i32, state: Vec<u8>) -> R<Self> {
        // SAFETY: dup of a descriptor the caller owns; we own the duplicate.
        let dup = unsafe { libc::dup(fd) };
        if dup < 0 {
            return Err(to_py(Error::io("dup fuse fd", std::io::Error::last_os_error())));
        }
        // SAFETY: `dup` is a fresh descriptor owned by nothing else.
        let file = unsafe { <std::fs::File as std::os::fd::FromRawFd>::from_raw_fd(dup) };
        let server = py.allow_threads(|| crate::fuse::FuseServer::resume(&mountpoint, file, &state)).map_err(to_py)?;
        Ok(FuseMount { server })
    }

    /// Place `image` at `path`; `accounting` is (iostats_files, access_pattern, latest_read_files).
    #[pyo3(signature = (path, image, entry_timeout=60.0, attr_timeout=60.0, keep_cache=true, accounting=(false, false, false)))]
    fn attach(&self, path: &str, image: &Image, entry_timeout: f64, attr_timeout: f64, keep_cache: bool, accounting: (bool, bool, bool)) -> R<u8> {
        self.server.attach(path, image.rafs.clone(), cache_opts(entry_timeout, attr_timeout, keep_cache)?, accounting_of(accounting)).map_err(to_py)
    }

    #[pyo3(signature = (path, index, image, entry_timeout=60.0, attr_timeout=60.0, keep_cache=true, accounting=(false, false, false)))]
    #[allow(clippy::too_many_arguments)]
    fn reattach(&self, path: &str, index: u8, image: &Image, entry_timeout: f64, attr_timeout: f64, keep_cache: bool, accounting: (bool, bool, bool)) -> R<()> {
        self.server.reattach(path, index, image.rafs.clone(), cache_opts(entry_timeout, attr_timeout, keep_cache)?, accounting_of(accounting)).map_err(to_py)
    }

    fn detach(&self, py: Python<'_>, path: &str) -> R<()> {
        py.allow_threads(|| self.server.detach(path)).map_err(to_py)
    }

    #[pyo3(signature = (threads=4))]
    fn start(&self, threads: usize) -> R<()> {
        if !(1..=1024).contains(&threads) {
            return Err(to_py(Error::invalid(format!("threads must be between 1 and 1024, got {threads}"))));
        }
        self.server.start(threads).map_err(to_py)
    }

    /// Stop serving; with `umount`, also unmount.
    #[pyo3(signature = (umount=true))]
    fn stop(&self, py: Python<'_>, umount: bool) -> R<()> {
        py.allow_threads(|| self.server.stop(umount)).map_err(to_py)
    }

    /// Let go of a resumed session without unmounting (a failed takeover).
    fn abandon(&self) -> R<()> {
        self.server.abandon().map_err(to_py)
    }

    #[getter]
    fn initialized(&self) -> bool {
        self.server.initialized()
    }

    fn fuse_fd(&self) -> Option<i32> {
        self.server.fuse_fd()
    }

    /// FsIoStats (spec §8.1) of the image at `path`; `id` is the name it reports.
    #[pyo3(signature = (path, id=None))]
    fn fs_metrics<'py>(&self, py: Python<'py>, path: &str, id: Option<&str>) -> R<Bound<'py, PyAny>> {
        to_object(py, &self.stats(path)?.to_json(id.unwrap_or(path)))
    }

    /// Per-file counters (spec §8.2) of the image at `path`; with `latest`, the inodes read
    /// since the last such call, as ranges.
    #[pyo3(signature = (path, latest=false))]
    fn files_metrics<'py>(&self, py: Python<'py>, path: &str, latest: bool) -> R<Bound<'py, PyAny>> {
        to_object(py, &self.stats(path)?.files_json(latest))
    }

    /// The access pattern (spec §8.3) of the image at `path`.
    fn access_pattern<'py>(&self, py: Python<'py>, path: &str) -> R<Bound<'py, PyAny>> {
        to_object(py, &self.stats(path)?.pattern_json())
    }

    /// Operations being served now for the image at `path` (spec §8.8).
    fn inflight<'py>(&self, py: Python<'py>, path: &str) -> R<Bound<'py, PyAny>> {
        to_object(py, &serde_json::Value::from(self.stats(path)?.inflight_json()))
    }

    fn save_state<'py>(&self, py: Python<'py>) -> R<Bound<'py, PyBytes>> {
        Ok(PyBytes::new(py, &self.server.save_state().map_err(to_py)?))
    }

    #[getter]
    fn mountpoint(&self) -> PathBuf {
        self.server.mountpoint.clone()
    }
}

/// A running prefetch.
#[pyclass(module = "nydus_hybrid._core", frozen)]
struct PrefetchJob {
    job: Mutex<Option<Prefetch>>,
}

#[pymethods]
impl PrefetchJob {
    /// Wait for it to finish; returns the errors it met (prefetch is best effort).
    fn wait(&self, py: Python<'_>) -> Vec<String> {
        let job = self.job.lock().unwrap_or_else(|p| p.into_inner()).take();
        match job {
            Some(j) => py.allow_threads(|| j.wait()).errors,
            None => Vec::new(),
        }
    }

    fn cancel(&self) {
        if let Some(j) = self.job.lock().unwrap_or_else(|p| p.into_inner()).as_ref() {
            j.cancel();
        }
    }

    #[getter]
    fn done(&self) -> bool {
        self.job.lock().unwrap_or_else(|p| p.into_inner()).as_ref().is_none_or(|j| j.is_done())
    }
}

/// Replace the registry credentials (base64 `user:password`) of every registry backend
/// opened with this `backend_id`; they apply from the next request.
/// `inside:host:size` (a containerd id-mapping label) as its three numbers; the one parser.
#[pyfunction]
fn parse_id_mapping(text: &str, what: &str) -> R<(u32, u32, u32)> {
    let r = crate::idmap::IdRange::parse(text, what).map_err(to_py)?;
    Ok((r.inside, r.host, r.size))
}

/// Bind `source` at `target` as an idmapped mount shifting owners by the two
/// `inside:host:size` mappings (the snapshotter's remap-ids for overlay lower layers).
#[pyfunction]
#[pyo3(signature = (source, target, uid_mapping, gid_mapping, readonly=true))]
fn idmapped_bind(py: Python<'_>, source: PathBuf, target: PathBuf, uid_mapping: &str, gid_mapping: &str, readonly: bool) -> R<()> {
    use crate::idmap::{IdMap, IdRange};
    let map = IdMap { uid: IdRange::parse(uid_mapping, "uid mapping").map_err(to_py)?, gid: IdRange::parse(gid_mapping, "gid mapping").map_err(to_py)? };
    py.allow_threads(|| crate::idmap::idmapped_bind(&source, &target, &map, readonly)).map_err(to_py)
}

#[pyfunction]
fn set_registry_auth(backend_id: &str, auth: &str) {
    crate::storage::registry::set_registry_auth(backend_id, auth);
}

/// The base64 `user:password` docker's `config.json` holds for `host`, as the registry
/// backend reads it.
#[pyfunction]
fn docker_config_auth(host: &str) -> Option<String> {
    crate::storage::registry::docker_config_auth(host)
}

/// Validate a nydusd configuration document; returns its normalised v2 form.
#[pyfunction]
fn parse_config<'py>(py: Python<'py>, text: &str) -> R<Bound<'py, PyAny>> {
    to_object(py, &Config::parse(text).map_err(to_py)?.to_v2_json())
}

/// Remove cached blobs unused for `max_age_secs`, then least recently used ones until the
/// cache fits `max_bytes`; blobs open anywhere are kept.
#[pyfunction]
#[pyo3(signature = (work_dir, max_bytes=None, max_age_secs=None))]
fn cache_gc<'py>(py: Python<'py>, work_dir: PathBuf, max_bytes: Option<u64>, max_age_secs: Option<u64>) -> R<Bound<'py, PyAny>> {
    let r = py.allow_threads(|| crate::cache::gc::gc(&work_dir, max_bytes, max_age_secs.map(std::time::Duration::from_secs))).map_err(to_py)?;
    to_object(py, &serde_json::json!({"removed": r.removed, "freed_bytes": r.freed_bytes, "in_use": r.in_use, "kept_bytes": r.kept_bytes}))
}

/// One registry repository, named by a nydusd configuration with a registry backend: the
/// calls image conversion makes (manifests, whole blobs in and out). It keeps its auth
/// token between calls.
#[pyclass(module = "nydus_hybrid._core", frozen)]
struct RegistryClient {
    registry: crate::storage::registry::Registry,
}

#[pymethods]
impl RegistryClient {
    #[new]
    fn new(config: &str) -> R<Self> {
        let cfg = Config::parse(config).map_err(to_py)?;
        let Some(BackendConfig::Registry(r)) = &cfg.backend else {
            return Err(to_py(Error::config("backend.type: a registry client needs a registry backend")));
        };
        let metrics = Arc::new(crate::storage::metrics::BackendMetrics::new("registry"));
        Ok(RegistryClient { registry: crate::storage::registry::Registry::new(r, metrics).map_err(to_py)? })
    }

    /// (media type, digest, bytes) of the manifest or index at a tag or digest.
    #[pyo3(signature = (reference, accept, max_size=4 << 20))]
    fn get_manifest<'py>(&self, py: Python<'py>, reference: &str, accept: Vec<String>, max_size: u64) -> R<(String, String, Bound<'py, pyo3::types::PyBytes>)> {
        let (mt, digest, body) = py.allow_threads(|| self.registry.get_manifest(reference, &accept, max_size)).map_err(to_py)?;
        Ok((mt, digest, pyo3::types::PyBytes::new(py, &body)))
    }

    /// Store a manifest or index under a tag or its digest; returns its digest.
    fn put_manifest(&self, py: Python<'_>, reference: &str, media_type: &str, body: Vec<u8>) -> R<String> {
        py.allow_threads(|| self.registry.put_manifest(reference, media_type, body)).map_err(to_py)
    }

    /// Download a blob into `dest`, checked against its digest and `size` as it streams.
    #[pyo3(signature = (digest, dest, size=None, max_size=u64::MAX))]
    fn fetch_blob(&self, py: Python<'_>, digest: &str, dest: PathBuf, size: Option<u64>, max_size: u64) -> R<u64> {
        py.allow_threads(|| self.registry.fetch_blob(digest, &dest, size, max_size)).map_err(to_py)
    }

    fn blob_exists(&self, py: Python<'_>, digest: &str) -> R<bool> {
        py.allow_threads(|| self.registry.blob_exists(digest)).map_err(to_py)
    }

    /// The blob's size in the registry, or None when it is not there.
    fn blob_size(&self, py: Python<'_>, digest: &str) -> R<Option<u64>> {
        py.allow_threads(|| self.registry.blob_size(digest)).map_err(to_py)
    }

    /// Upload a blob file, streamed from disk; one PUT, or PATCHes of `chunk_size` bytes.
    /// Returns (digest, whether it was sent: false when the registry had it).
    #[pyo3(signature = (path, chunk_size=0))]
    fn push_blob(&self, py: Python<'_>, path: PathBuf, chunk_size: usize) -> R<(String, bool)> {
        py.allow_threads(|| self.registry.push_blob(&path, (chunk_size > 0).then_some(chunk_size))).map_err(to_py)
    }
}

/// The bootstrap inlined in a data blob (`image.boot`), decompressed and digest-checked.
#[pyfunction]
fn inline_bootstrap<'py>(py: Python<'py>, blob: PathBuf) -> R<Bound<'py, pyo3::types::PyBytes>> {
    let bytes = py.allow_threads(|| crate::reader::inline_bootstrap(&blob)).map_err(to_py)?;
    Ok(pyo3::types::PyBytes::new(py, &bytes))
}

/// Merge layer bootstraps (files, or blobs carrying one), lowest first, into `bootstrap`;
/// returns the merge report.
#[pyfunction]
#[pyo3(signature = (sources, bootstrap, blob_digests=None, blob_sizes=None, prefetch=Vec::new()))]
fn merge<'py>(
    py: Python<'py>,
    sources: Vec<PathBuf>,
    bootstrap: PathBuf,
    blob_digests: Option<Vec<String>>,
    blob_sizes: Option<Vec<u64>>,
    prefetch: Vec<Vec<u8>>,
) -> R<Bound<'py, PyAny>> {
    for (what, n) in [("blob digests", blob_digests.as_ref().map(Vec::len)), ("blob sizes", blob_sizes.as_ref().map(Vec::len))] {
        if let Some(n) = n.filter(|&n| n != sources.len()) {
            return Err(to_py(Error::invalid(format!("{n} {what} for {} sources", sources.len()))));
        }
    }
    let r = py
        .allow_threads(|| -> crate::Result<_> {
            let mut layers = Vec::with_capacity(sources.len());
            for (i, s) in sources.iter().enumerate() {
                let id = blob_digests.as_ref().map(|d| d[i].trim_start_matches("sha256:").to_string());
                layers.push(crate::merge::layer_from_file(s, id, blob_sizes.as_ref().map(|z| z[i]))?);
            }
            crate::merge::merge(&layers, &bootstrap, &crate::merge::MergeOptions { prefetch, keep_root_xattrs: false })
        })
        .map_err(to_py)?;
    to_object(py, &r)
}

/// Build a RAFS v6 image; returns the build report.
#[pyfunction]
#[pyo3(signature = (source, bootstrap, blob_dir, chunk_size=0x100000, compressor="zstd", digester="blake3", explicit_uid_gid=true, whiteout_spec="oci", progress=true, exclude=Vec::new(), inline_bootstrap=false, prefetch=Vec::new(), parent=None, chunk_dict=None))]
#[allow(clippy::too_many_arguments)]
fn build<'py>(
    py: Python<'py>,
    source: PathBuf,
    bootstrap: Option<PathBuf>,
    blob_dir: PathBuf,
    chunk_size: u32,
    compressor: &str,
    digester: &str,
    explicit_uid_gid: bool,
    whiteout_spec: &str,
    progress: bool,
    exclude: Vec<Vec<u8>>,
    inline_bootstrap: bool,
    prefetch: Vec<Vec<u8>>,
    parent: Option<PathBuf>,
    chunk_dict: Option<PathBuf>,
) -> R<Bound<'py, PyAny>> {
    let bad = |what: &str, v: &str| to_py(Error::invalid(format!("unknown {what} {v:?}")));
    let opts = BuildOptions {
        chunk_size,
        compressor: Compressor::parse(compressor).ok_or_else(|| bad("compressor", compressor))?,
        digester: Digester::parse(digester).ok_or_else(|| bad("digester", digester))?,
        explicit_uid_gid,
        whiteout_spec: WhiteoutSpec::parse(whiteout_spec).ok_or_else(|| bad("whiteout spec", whiteout_spec))?,
        progress,
        exclude,
        inline_bootstrap,
        prefetch,
        parent,
        chunk_dict: match chunk_dict {
            Some(p) => Some(std::sync::Arc::new(py.allow_threads(|| builder::chunker::ChunkDict::load(&p)).map_err(to_py)?)),
            None => None,
        },
        // Ctrl-C: the build polls this between batches and stops, removing its temporaries.
        cancel: Some(std::sync::Arc::new(|| Python::with_gil(|py| py.check_signals().is_err()))),
    };
    let r = py.allow_threads(|| builder::build(&source, bootstrap.as_deref(), &blob_dir, &opts)).map_err(to_py)?;
    to_object(py, &r)
}

/// The fscache on-demand server of a `singleton` daemon: the device, the registered blob
/// entries and the workers. Python drives its lifecycle; every message is served in Rust.
#[pyclass(module = "nydus_hybrid._core", frozen)]
struct FscacheService {
    server: Arc<crate::fscache::FscacheServer>,
}

fn dup_fd(fd: i32) -> R<std::os::fd::OwnedFd> {
    let dup = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 0) };
    if dup < 0 {
        return Err(to_py(Error::io(format!("dup fd {fd}"), std::io::Error::last_os_error())));
    }
    Ok(unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(dup) })
}

#[pymethods]
impl FscacheService {
    /// Open the device (`/dev/cachefiles` or `sim:<socket>`) and bind it fresh:
    /// `dir`, optionally `tag`, then `bind ondemand`.
    #[staticmethod]
    #[pyo3(signature = (device, cache_dir, tag=None))]
    fn bind(py: Python<'_>, device: &str, cache_dir: &str, tag: Option<&str>) -> R<Self> {
        let server = py
            .allow_threads(|| -> crate::Result<_> {
                let dev = crate::fscache::device::open(device)?;
                let server = crate::fscache::FscacheServer::new(dev, Default::default());
                server.command(&format!("dir {cache_dir}"))?;
                if let Some(t) = tag {
                    server.command(&format!("tag {t}"))?;
                }
                server.command("bind ondemand")?;
                Ok(server)
            })
            .map_err(to_py)?;
        Ok(FscacheService { server })
    }

    /// Adopt a device fd received from the supervisor (this object keeps a duplicate) and
    /// send `restore`: the cache is already bound, and the kernel re-sends what is pending.
    #[staticmethod]
    fn restore(py: Python<'_>, device: &str, fd: i32) -> R<Self> {
        let owned = dup_fd(fd)?;
        let server = py
            .allow_threads(|| -> crate::Result<_> {
                let server = crate::fscache::FscacheServer::new(crate::fscache::device::adopt(device, owned), Default::default());
                server.command("restore")?;
                Ok(server)
            })
            .map_err(to_py)?;
        Ok(FscacheService { server })
    }

    /// Register a bootstrap (opened as `image`) and its data blobs; returns the blob ids.
    /// With `prefetch`, each data blob is filled in the background once it is opened.
    /// `entry` (the BlobCacheEntry) is kept and listed back by `entries`.
    #[allow(clippy::too_many_arguments)]
    fn add_bootstrap(&self, domain: &str, id: &str, bootstrap: PathBuf, image: &Image, prefetch: bool, entry: &Bound<'_, PyAny>) -> R<Vec<String>> {
        let value: serde_json::Value = pythonize::depythonize(entry).map_err(PyErr::from)?;
        self.server.registry.add_bootstrap(domain, id, bootstrap, image.rafs.clone(), prefetch, value.to_string()).map_err(to_py)
    }

    fn remove(&self, domain: &str, blob_id: &str) -> R<()> {
        self.server.registry.remove(domain, blob_id).map_err(to_py)
    }

    fn remove_domain(&self, domain: &str) {
        self.server.registry.remove_domain(domain)
    }

    /// `[(key, entry)]` of the bootstraps whose key starts with `prefix`.
    #[pyo3(signature = (prefix=""))]
    fn entries<'py>(&self, py: Python<'py>, prefix: &str) -> R<Vec<(String, Bound<'py, PyAny>)>> {
        self.server.registry.entries(prefix).into_iter().map(|(key, text)| Ok((key, json_object(py, &text)?))).collect()
    }

    fn data_refs(&self) -> Vec<(String, u32)> {
        self.server.registry.data_refs()
    }

    fn start(&self, threads: usize) -> R<()> {
        self.server.start(threads).map_err(to_py)
    }

    fn stop(&self, py: Python<'_>) {
        py.allow_threads(|| self.server.stop())
    }

    fn running(&self) -> bool {
        self.server.running()
    }

    /// One command to the device (`inuse`, `cull`).
    fn command(&self, py: Python<'_>, cmd: &str) -> R<()> {
        py.allow_threads(|| self.server.command(cmd)).map_err(to_py)
    }

    /// The device fd, for the supervisor (the caller sends it; this object keeps it open).
    fn device_fd(&self) -> i32 {
        self.server.device_fd()
    }

    fn metrics<'py>(&self, py: Python<'py>) -> R<Bound<'py, PyAny>> {
        to_object(py, &self.server.metrics_json())
    }
}

/// The name of every error kind the core raises (the keys of `nydus_hybrid.errors.BY_KIND`).
#[pyfunction]
fn error_kinds() -> Vec<&'static str> {
    ErrorKind::iter().map(ErrorKind::name).collect()
}

/// Raise an example error of `kind`, as the core raises it (tests of the error mapping).
#[pyfunction]
fn raise_error_example(kind: &str) -> R<()> {
    match ErrorKind::iter().find(|k| k.name() == kind) {
        Some(k) => Err(to_py(Error::example(k))),
        None => Err(PyValueError::new_err(format!("unknown error kind {kind:?}"))),
    }
}

#[pymodule]
fn _core(m: &Bound<'_, PyModule>) -> PyResult<()> {
    // Every error kind must have its class before anything can raise one.
    error_classes(m.py())?;
    m.add_class::<Image>()?;
    m.add_class::<PrefetchJob>()?;
    m.add_class::<RegistryClient>()?;
    m.add_class::<FscacheService>()?;
    #[cfg(feature = "fuse")]
    m.add_class::<FuseMount>()?;
    m.add_function(wrap_pyfunction!(build, m)?)?;
    m.add_function(wrap_pyfunction!(inline_bootstrap, m)?)?;
    m.add_function(wrap_pyfunction!(idmapped_bind, m)?)?;
    m.add_function(wrap_pyfunction!(parse_id_mapping, m)?)?;
    m.add_function(wrap_pyfunction!(merge, m)?)?;
    m.add_function(wrap_pyfunction!(parse_config, m)?)?;
    m.add_function(wrap_pyfunction!(set_registry_auth, m)?)?;
    m.add_function(wrap_pyfunction!(docker_config_auth, m)?)?;
    m.add_function(wrap_pyfunction!(cache_gc, m)?)?;
    m.add_function(wrap_pyfunction!(error_kinds, m)?)?;
    m.add_function(wrap_pyfunction!(raise_error_example, m)?)?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add("GIT_COMMIT", env!("NYDUS_HYBRID_GIT_COMMIT"))?;
    m.add("BUILD_TIME", env!("NYDUS_HYBRID_BUILD_TIME"))?;
    m.add("PROFILE", env!("NYDUS_HYBRID_PROFILE"))?;
    m.add("RUSTC", env!("NYDUS_HYBRID_RUSTC"))?;
    Ok(())
}
