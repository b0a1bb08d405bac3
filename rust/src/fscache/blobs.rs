//! The blob cache entries of an fscache daemon (spec §5.7): bootstraps registered through
//! PUT /api/v2/blobs under `"<domain>/<id>"`, and the data blobs they name under
//! `"<domain>/<blob_id>"`, reference-counted because images in one domain share layers.
//! A kernel OPEN is looked up here by `(domain, cookie)`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use crate::error::{Error, Result};
use crate::reader::Rafs;

/// What a cache object is backed by.
#[derive(Clone)]
pub enum Target {
    /// The bootstrap file itself: the kernel reads it as EROFS metadata, byte for byte.
    Bootstrap { path: PathBuf, file: Arc<std::fs::File>, size: u64 },
    /// A data blob, served as its uncompressed address space. With `prefetch`, the whole
    /// blob is filled in the background once the kernel opens it (`cache.prefetch.enable`).
    Data { rafs: Arc<Rafs>, index: usize, size: u64, prefetch: bool },
}

impl Target {
    pub fn size(&self) -> u64 {
        match self {
            Target::Bootstrap { size, .. } | Target::Data { size, .. } => *size,
        }
    }
}

struct Meta {
    target: Target,
    blob_keys: Vec<String>,
    /// The registered entry as received (for the handover state and GET /api/v2/blobs).
    entry_json: String,
}

struct Data {
    target: Target,
    refs: u32,
}

#[derive(Default)]
pub struct BlobRegistry {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    metas: BTreeMap<String, Meta>,
    datas: BTreeMap<String, Data>,
}

pub fn key(domain: &str, id: &str) -> String {
    if domain.is_empty() {
        id.to_string()
    } else {
        format!("{domain}/{id}")
    }
}

fn check_id(what: &str, v: &str) -> Result<()> {
    if v.contains('/') || v.contains('\0') {
        return Err(Error::invalid(format!("{what} {v:?} must not contain '/'")));
    }
    Ok(())
}

impl BlobRegistry {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Register a bootstrap and every data blob it names; returns the data blob ids.
    pub fn add_bootstrap(&self, domain: &str, id: &str, bootstrap: PathBuf, rafs: Arc<Rafs>, prefetch: bool, entry_json: String) -> Result<Vec<String>> {
        check_id("id", id)?;
        check_id("domain_id", domain)?;
        if id.is_empty() {
            return Err(Error::invalid("id: must not be empty"));
        }
        let file = std::fs::File::open(&bootstrap).map_err(|e| Error::io(format!("open {}", bootstrap.display()), e))?;
        let size = file.metadata().map_err(|e| Error::io(format!("stat {}", bootstrap.display()), e))?.len();
        let mut inner = self.lock();
        let meta_key = key(domain, id);
        if inner.metas.contains_key(&meta_key) {
            return Err(Error::invalid("blob_cache: bootstrap blob already exists"));
        }
        let mut blob_keys = Vec::new();
        for b in &rafs.boot.blobs {
            check_id("blob id", &b.blob_id)?;
            let k = key(domain, &b.blob_id);
            if blob_keys.contains(&k) || k == meta_key {
                return Err(Error::corrupt(format!("bootstrap names blob {} twice, or as its own id", b.blob_id)));
            }
            blob_keys.push(k);
        }
        for (index, k) in blob_keys.iter().enumerate() {
            let size = rafs.boot.blobs[index].uncompressed_size;
            let target = || Target::Data { rafs: rafs.clone(), index, size, prefetch };
            inner.datas.entry(k.clone()).or_insert_with(|| Data { target: target(), refs: 0 }).refs += 1;
        }
        let ids = rafs.boot.blobs.iter().map(|b| b.blob_id.clone()).collect();
        inner.metas.insert(meta_key, Meta { target: Target::Bootstrap { path: bootstrap, file: Arc::new(file), size }, blob_keys, entry_json });
        Ok(ids)
    }

    /// DELETE with `domain_id` and `blob_id`: a bootstrap drops its data blobs' references;
    /// a data blob just loses one.
    pub fn remove(&self, domain: &str, blob_id: &str) -> Result<()> {
        let k = key(domain, blob_id);
        let mut inner = self.lock();
        if let Some(meta) = inner.metas.remove(&k) {
            for bk in meta.blob_keys {
                release(&mut inner.datas, &bk);
            }
            return Ok(());
        }
        if inner.datas.contains_key(&k) {
            release(&mut inner.datas, &k);
            return Ok(());
        }
        Err(Error::NotFound(format!("blob cache entry {k}")))
    }

    /// DELETE with `domain_id` alone: every entry of the domain.
    pub fn remove_domain(&self, domain: &str) {
        let prefix = format!("{domain}/");
        let mut inner = self.lock();
        inner.metas.retain(|k, _| !k.starts_with(&prefix) && k != domain);
        inner.datas.retain(|k, _| !k.starts_with(&prefix));
    }

    /// The object behind a kernel OPEN.
    pub fn lookup(&self, domain: &str, cookie: &str) -> Option<Target> {
        let k = key(domain, cookie);
        let inner = self.lock();
        inner.metas.get(&k).map(|m| m.target.clone()).or_else(|| inner.datas.get(&k).map(|d| d.target.clone()))
    }

    /// `(key, entry JSON)` of every bootstrap whose key starts with `prefix`.
    pub fn entries(&self, prefix: &str) -> Vec<(String, String)> {
        self.lock().metas.iter().filter(|(k, _)| k.starts_with(prefix)).map(|(k, m)| (k.clone(), m.entry_json.clone())).collect()
    }

    /// Data blob keys and their reference counts.
    pub fn data_refs(&self) -> Vec<(String, u32)> {
        self.lock().datas.iter().map(|(k, d)| (k.clone(), d.refs)).collect()
    }
}

fn release(datas: &mut BTreeMap<String, Data>, k: &str) {
    if let Some(d) = datas.get_mut(k) {
        d.refs -= 1;
        if d.refs == 0 {
            datas.remove(k);
        }
    }
}
