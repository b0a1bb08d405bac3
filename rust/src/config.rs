//! nydusd configuration documents (spec §7): a v2 document (JSON or TOML), or a v1 JSON
//! document converted to v2. Unknown fields are ignored, as nydusd does, because the
//! snapshotter sends fields that do not belong; a wrong type or a missing required field is
//! an error that names the field.

use crate::error::{Error, Result};
use crate::idmap::{IdMap, IdRange};
use serde_json::{json, Map, Value};
use std::path::PathBuf;
use std::time::Duration;

/// Largest user I/O batch and prefetch merge size nydusd accepts.
const MAX_BATCH: u64 = 256 << 20;

#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    pub id: String,
    pub backend: Option<BackendConfig>,
    pub cache: CacheConfig,
    pub rafs: RafsConfig,
}

#[derive(Clone, Debug, PartialEq)]
pub enum BackendConfig {
    LocalFs { blob_file: Option<PathBuf>, dir: Option<PathBuf>, alt_dirs: Vec<PathBuf> },
    Registry(RegistryConfig),
    S3(S3Config),
    HttpProxy(HttpProxyConfig),
}

impl BackendConfig {
    /// The name §8.4 reports (`backend_type`); S3 reports `oss` there, as nydusd does.
    pub fn metrics_type(&self) -> &'static str {
        match self {
            BackendConfig::LocalFs { .. } => "localfs",
            BackendConfig::Registry(_) => "registry",
            BackendConfig::S3(_) => "oss",
            BackendConfig::HttpProxy(_) => "http-proxy",
        }
    }
}

/// Connection settings shared by the network backends.
#[derive(Clone, Debug, PartialEq)]
pub struct ConnConfig {
    pub skip_verify: bool,
    pub ca_cert_files: Vec<PathBuf>,
    pub timeout: Duration,
    pub connect_timeout: Duration,
    pub retry_limit: u32,
    pub proxy: ProxyConfig,
    pub mirrors: Vec<MirrorConfig>,
}

/// A Dragonfly-style forward proxy in front of the origin.
#[derive(Clone, Debug, PartialEq)]
pub struct ProxyConfig {
    pub url: String,
    pub ping_url: String,
    pub fallback: bool,
    pub check_interval: Duration,
    pub use_http: bool,
}

#[derive(Clone, Debug, PartialEq)]
pub struct MirrorConfig {
    /// `scheme://host[:port]` replacing the origin's.
    pub host: String,
    pub headers: Vec<(String, String)>,
    /// Send the origin's credentials to the mirror too (off: mirrors never see them).
    pub auth_through: bool,
    pub ping_url: String,
    pub health_check_interval: Duration,
    pub failure_limit: u32,
}

#[derive(Clone, Debug, PartialEq)]
pub struct RegistryConfig {
    pub scheme: String,
    pub host: String,
    pub repo: String,
    /// base64 of `user:password`.
    pub auth: Option<String>,
    pub registry_token: Option<String>,
    pub conn: ConnConfig,
    /// Key of runtime credential updates (the daemon sets it to the RAFS mountpoint).
    pub backend_id: Option<String>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct S3Config {
    pub scheme: String,
    pub endpoint: String,
    pub region: String,
    pub bucket_name: String,
    pub object_prefix: String,
    pub access_key_id: String,
    pub access_key_secret: String,
    pub conn: ConnConfig,
}

#[derive(Clone, Debug, PartialEq)]
pub struct HttpProxyConfig {
    /// `http://…`, `https://…` or an absolute unix-socket path.
    pub addr: String,
    pub path: String,
    pub conn: ConnConfig,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CacheKind {
    None,
    BlobCache,
    FsCache,
}

#[derive(Clone, Debug, PartialEq)]
pub struct CacheConfig {
    pub kind: CacheKind,
    pub work_dir: PathBuf,
    /// Accepted for compatibility; the cache always holds uncompressed chunks.
    pub compressed: bool,
    /// Verify chunk digests on every cache read, not only when a chunk is filled.
    pub validate: bool,
    pub prefetch: PrefetchConfig,
}

#[derive(Clone, Debug, PartialEq)]
pub struct PrefetchConfig {
    pub enable: bool,
    pub threads: usize,
    /// Merge adjacent chunks into requests of up to this many bytes.
    pub batch_size: u64,
    /// Bytes per second, 0 for unlimited.
    pub bandwidth_limit: u64,
    pub prefetch_all: bool,
}

impl Default for PrefetchConfig {
    fn default() -> Self {
        PrefetchConfig { enable: false, threads: 8, batch_size: 1 << 20, bandwidth_limit: 0, prefetch_all: false }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct RafsConfig {
    pub mode: String,
    /// `amplify_io`: missing chunks next to the one read are fetched with it, up to this size.
    pub batch_size: u64,
    pub validate: bool,
    pub enable_xattr: bool,
    pub iostats_files: bool,
    pub access_pattern: bool,
    pub latest_read_files: bool,
    pub prefetch: PrefetchConfig,
    /// Our extension: `id_mapping` `{"uid": "i:h:n", "gid": "i:h:n"}` shifts the owners a
    /// FUSE mount reports (for a container in a user namespace).
    pub id_mapping: Option<IdMap>,
    /// Our extension: `adaptive_amplify` (default true) amplifies by the link's
    /// bandwidth-delay product, up to `batch_size`; false amplifies by `batch_size` always.
    pub adaptive_amplify: bool,
}

impl Default for RafsConfig {
    fn default() -> Self {
        RafsConfig {
            mode: "direct".into(),
            batch_size: 1 << 20,
            validate: false,
            enable_xattr: false,
            iostats_files: false,
            access_pattern: false,
            latest_read_files: false,
            prefetch: PrefetchConfig::default(),
            id_mapping: None,
            adaptive_amplify: true,
        }
    }
}

impl Config {
    /// Parse a document in any of the forms nydusd accepts.
    pub fn parse(text: &str) -> Result<Config> {
        let doc: Value = match serde_json::from_str(text) {
            Ok(v) => v,
            Err(json_err) => match toml::from_str::<Value>(text) {
                Ok(v) => v,
                Err(_) => return Err(Error::config(format!("not a JSON or TOML document: {json_err}"))),
            },
        };
        Self::from_value(&doc)
    }

    pub fn from_value(doc: &Value) -> Result<Config> {
        let root = Obj::root(doc)?;
        if root.has("version") {
            let v = root.u64_or("version", 0)?;
            if v != 2 {
                return Err(Error::config(format!("version: must be 2, got {v}")));
            }
            parse_v2(&root)
        } else if root.has("device") {
            parse_v1(&root)
        } else {
            Err(Error::config("neither a v2 document (\"version\": 2) nor a v1 document (\"device\")"))
        }
    }

    /// Name this configuration's backend for runtime credential updates.
    pub fn set_backend_id(&mut self, id: &str) {
        if let Some(BackendConfig::Registry(r)) = &mut self.backend {
            r.backend_id = Some(id.to_string());
        }
    }

    /// Whether chunks read from the cache are checked again (either switch turns it on).
    pub fn validate_on_read(&self) -> bool {
        self.cache.validate || self.rafs.validate
    }

    /// The prefetch settings in force: `cache.prefetch` when enabled, else `rafs.prefetch`.
    pub fn prefetch(&self) -> &PrefetchConfig {
        if self.cache.prefetch.enable {
            &self.cache.prefetch
        } else {
            &self.rafs.prefetch
        }
    }

    /// The configuration in force, in the shape nydusd echoes it (`GET /api/v1/daemon`):
    /// every key present, `""` for an empty string, `null` only for the sub-structs of the
    /// backends and caches not in use. Clients deserialize it strictly (`nydusctl info`
    /// fails on a `null` where a string belongs). Secrets are left out: keys as `""`, tokens
    /// as `null`, mirror headers empty.
    pub fn to_v2_json(&self) -> Value {
        let prefetch = |p: &PrefetchConfig| {
            json!({"enable": p.enable, "threads": p.threads, "batch_size": p.batch_size,
                   "bandwidth_limit": p.bandwidth_limit, "prefetch_all": p.prefetch_all})
        };
        let path = |p: &Option<PathBuf>| p.as_ref().map(|p| p.display().to_string()).unwrap_or_default();
        let conn = |c: &ConnConfig, fields: Value| {
            let mut m = match fields {
                Value::Object(m) => m,
                _ => Map::new(),
            };
            m.insert("skip_verify".into(), json!(c.skip_verify));
            m.insert("timeout".into(), json!(c.timeout.as_secs()));
            m.insert("connect_timeout".into(), json!(c.connect_timeout.as_secs()));
            m.insert("retry_limit".into(), json!(c.retry_limit));
            m.insert(
                "proxy".into(),
                json!({"url": c.proxy.url, "ping_url": c.proxy.ping_url, "fallback": c.proxy.fallback,
                       "check_interval": c.proxy.check_interval.as_secs(), "use_http": c.proxy.use_http}),
            );
            let mirrors: Vec<Value> = c
                .mirrors
                .iter()
                .map(|m| {
                    json!({"host": m.host, "ping_url": m.ping_url, "headers": {}, "auth_through": m.auth_through,
                           "health_check_interval": m.health_check_interval.as_secs(), "failure_limit": m.failure_limit})
                })
                .collect();
            m.insert("mirrors".into(), Value::Array(mirrors));
            Value::Object(m)
        };
        let backend = self.backend.as_ref().map(|b| {
            let (kind, sub) = match b {
                BackendConfig::LocalFs { blob_file, dir, alt_dirs } => {
                    let alt: Vec<String> = alt_dirs.iter().map(|d| d.display().to_string()).collect();
                    ("localfs", json!({"blob_file": path(blob_file), "dir": path(dir), "alt_dirs": alt}))
                }
                BackendConfig::Registry(r) => (
                    "registry",
                    conn(
                        &r.conn,
                        json!({"scheme": r.scheme, "host": r.host, "repo": r.repo, "auth": null, "registry_token": null,
                               "blob_url_scheme": "", "blob_redirected_host": ""}),
                    ),
                ),
                BackendConfig::S3(s) => (
                    "s3",
                    conn(
                        &s.conn,
                        json!({"scheme": s.scheme, "endpoint": s.endpoint, "region": s.region, "bucket_name": s.bucket_name,
                               "object_prefix": s.object_prefix, "access_key_id": "", "access_key_secret": ""}),
                    ),
                ),
                BackendConfig::HttpProxy(h) => ("http-proxy", conn(&h.conn, json!({"addr": h.addr, "path": h.path}))),
            };
            let mut m = Map::new();
            m.insert("type".into(), json!(kind));
            for name in ["localdisk", "localfs", "oss", "s3", "registry", "http-proxy"] {
                m.insert(name.into(), if name == kind { sub.clone() } else { Value::Null });
            }
            Value::Object(m)
        });
        let work_dir = self.cache.work_dir.display().to_string();
        let (cache_type, filecache, fscache) = match self.cache.kind {
            CacheKind::None => ("", Value::Null, Value::Null),
            CacheKind::BlobCache => ("blobcache", json!({"work_dir": work_dir, "disable_indexed_map": false}), Value::Null),
            CacheKind::FsCache => ("fscache", Value::Null, json!({"work_dir": work_dir})),
        };
        let mut doc = json!({
            "version": 2,
            "id": self.id,
            "backend": backend,
            "cache": {"type": cache_type, "compressed": self.cache.compressed, "validate": self.cache.validate,
                      "prefetch": prefetch(&self.cache.prefetch), "filecache": filecache, "fscache": fscache},
            "rafs": {"mode": self.rafs.mode, "batch_size": self.rafs.batch_size, "validate": self.rafs.validate,
                     "enable_xattr": self.rafs.enable_xattr, "iostats_files": self.rafs.iostats_files,
                     "access_pattern": self.rafs.access_pattern, "latest_read_files": self.rafs.latest_read_files,
                     "prefetch": prefetch(&self.rafs.prefetch)},
        });
        // Our extension, shown only when set: an echo otherwise has exactly nydusd's fields.
        if let Some(m) = self.rafs.id_mapping {
            doc["rafs"]["id_mapping"] = json!({"uid": m.uid.text(), "gid": m.gid.text()});
        }
        if !self.rafs.adaptive_amplify {
            doc["rafs"]["adaptive_amplify"] = json!(false);
        }
        doc
    }
}

fn parse_v2(root: &Obj) -> Result<Config> {
    let backend = match root.obj("backend")? {
        Some(b) => {
            let kind = backend_kind(&b)?;
            let sub = b.obj(&kind)?.ok_or_else(|| Error::config(format!("backend.{kind}: required for backend type {kind:?}")))?;
            Some(parse_backend(&kind, &sub)?)
        }
        None => None,
    };
    let cache = match root.obj("cache")? {
        Some(c) => {
            let kind = parse_cache_kind(&c.str_or("type", "")?, &c.path("type"))?;
            let work_dir = match kind {
                CacheKind::BlobCache => c.obj("filecache")?.map(|f| f.str_or("work_dir", ".")).transpose()?,
                CacheKind::FsCache => c.obj("fscache")?.map(|f| f.str_or("work_dir", ".")).transpose()?,
                CacheKind::None => None,
            };
            if kind != CacheKind::None && work_dir.is_none() {
                let sub = if kind == CacheKind::FsCache { "fscache" } else { "filecache" };
                return Err(Error::config(format!("cache.{sub}: required for cache type {:?}", c.str_or("type", "")?)));
            }
            CacheConfig {
                kind,
                work_dir: PathBuf::from(work_dir.unwrap_or_else(|| ".".into())),
                compressed: c.bool_or("compressed", false)?,
                validate: c.bool_or("validate", false)?,
                prefetch: c.obj("prefetch")?.map(|p| parse_prefetch_v2(&p)).transpose()?.unwrap_or_default(),
            }
        }
        None => CacheConfig { kind: CacheKind::None, work_dir: ".".into(), compressed: false, validate: false, prefetch: Default::default() },
    };
    let rafs = match root.obj("rafs")? {
        Some(r) => RafsConfig {
            mode: parse_mode(&r)?,
            batch_size: r.bounded("batch_size", 1 << 20, MAX_BATCH)?,
            validate: r.bool_or("validate", false)?,
            enable_xattr: r.bool_or("enable_xattr", false)?,
            iostats_files: r.bool_or("iostats_files", false)?,
            access_pattern: r.bool_or("access_pattern", false)?,
            latest_read_files: r.bool_or("latest_read_files", false)?,
            prefetch: r.obj("prefetch")?.map(|p| parse_prefetch_v2(&p)).transpose()?.unwrap_or_default(),
            id_mapping: parse_id_mapping(&r)?.or(parse_id_mapping(root)?),
            adaptive_amplify: r.bool_or("adaptive_amplify", true)?,
        },
        None => RafsConfig { id_mapping: parse_id_mapping(root)?, ..RafsConfig::default() },
    };
    Ok(Config { id: root.str_or("id", "")?, backend, cache, rafs })
}

fn parse_v1(root: &Obj) -> Result<Config> {
    let device = root.obj("device")?.ok_or_else(|| Error::config("device: required"))?;
    let b = device.obj("backend")?.ok_or_else(|| Error::config("device.backend: required"))?;
    let kind = backend_kind(&b)?;
    if kind == "http-proxy" {
        return Err(Error::config("device.backend.type: http-proxy is only accepted in a v2 document"));
    }
    let sub = b.obj("config")?.ok_or_else(|| Error::config("device.backend.config: required"))?;
    let backend = parse_backend(&kind, &sub)?;
    let (kind_c, work_dir, compressed, validate) = match device.obj("cache")? {
        Some(c) => {
            let kind = parse_cache_kind(&c.str_or("type", "")?, &c.path("type"))?;
            let work_dir = c.obj("config")?.map(|f| f.str_or("work_dir", ".")).transpose()?.unwrap_or_else(|| ".".into());
            // Without a cache the work dir means nothing; normalise it as the v2 parser does.
            let work_dir = if kind == CacheKind::None { ".".into() } else { work_dir };
            (kind, work_dir, c.bool_or("compressed", false)?, c.bool_or("validate", false)?)
        }
        None => (CacheKind::None, ".".into(), false, false),
    };
    if !root.has("mode") {
        return Err(Error::config("mode: required (\"direct\" or \"cached\")"));
    }
    let mode = parse_mode(root)?;
    let prefetch = match root.obj("fs_prefetch")? {
        Some(p) => PrefetchConfig {
            enable: p.bool_or("enable", false)?,
            threads: p.threads("threads_count")?,
            batch_size: p.bounded("merging_size", 1 << 20, MAX_BATCH)?,
            bandwidth_limit: p.u64_or("bandwidth_rate", 0)?,
            prefetch_all: p.bool_or("prefetch_all", true)?,
        },
        None => PrefetchConfig::default(),
    };
    let cache_prefetch = if prefetch.enable { prefetch.clone() } else { PrefetchConfig::default() };
    Ok(Config {
        id: device.str_or("id", "")?,
        backend: Some(backend),
        cache: CacheConfig { kind: kind_c, work_dir: PathBuf::from(work_dir), compressed, validate, prefetch: cache_prefetch },
        rafs: RafsConfig {
            mode,
            batch_size: root.bounded("amplify_io", 1 << 20, MAX_BATCH)?,
            validate: root.bool_or("digest_validate", false)?,
            enable_xattr: root.bool_or("enable_xattr", false)?,
            iostats_files: root.bool_or("iostats_files", false)?,
            access_pattern: root.bool_or("access_pattern", false)?,
            latest_read_files: root.bool_or("latest_read_files", false)?,
            prefetch,
            id_mapping: parse_id_mapping(root)?,
            adaptive_amplify: root.bool_or("adaptive_amplify", true)?,
        },
    })
}

/// `id_mapping`: our object with both `uid` and `gid` as `inside:host:size`. Absent or
/// `null` is no mapping, and so is an array: nydus-snapshotter sends one, and nydusd
/// ignores it, so a document written for nydusd reads the same here.
fn parse_id_mapping(o: &Obj) -> Result<Option<IdMap>> {
    match o.get("id_mapping") {
        None => Ok(None),
        Some(Value::Array(_)) => Ok(None),
        Some(Value::Object(_)) => {
            let m = o.obj("id_mapping")?.expect("an object");
            let range = |k: &str| IdRange::parse(&m.req_str(k)?, &m.path(k));
            Ok(Some(IdMap { uid: range("uid")?, gid: range("gid")? }))
        }
        Some(_) => Err(o.wrong("id_mapping", "an object {\"uid\": \"inside:host:size\", \"gid\": …}")),
    }
}

const BACKENDS: [&str; 6] = ["localfs", "localdisk", "oss", "s3", "registry", "http-proxy"];

/// `backend.type`, checked against the known backends so the error names its path.
fn backend_kind(b: &Obj) -> Result<String> {
    let kind = b.req_str("type")?;
    if !BACKENDS.contains(&kind.as_str()) {
        return Err(Error::config(format!("{}: unknown backend {kind:?} (one of {})", b.path("type"), BACKENDS.join(", "))));
    }
    Ok(kind)
}

fn parse_mode(o: &Obj) -> Result<String> {
    let mode = o.str_or("mode", "direct")?;
    if mode != "direct" && mode != "cached" {
        return Err(Error::config(format!("{}: must be \"direct\" or \"cached\", got {mode:?}", o.path("mode"))));
    }
    Ok(mode)
}

fn parse_cache_kind(kind: &str, path: &str) -> Result<CacheKind> {
    match kind {
        "" | "dummycache" => Ok(CacheKind::None),
        "blobcache" | "filecache" => Ok(CacheKind::BlobCache),
        "fscache" => Ok(CacheKind::FsCache),
        other => Err(Error::config(format!("{path}: unknown cache type {other:?}"))),
    }
}

fn parse_prefetch_v2(p: &Obj) -> Result<PrefetchConfig> {
    if !p.has("enable") {
        return Err(Error::config(format!("{}: required", p.path("enable"))));
    }
    Ok(PrefetchConfig {
        enable: p.bool_or("enable", false)?,
        threads: p.threads("threads")?,
        batch_size: p.bounded("batch_size", 1 << 20, MAX_BATCH)?,
        bandwidth_limit: p.u64_or("bandwidth_limit", 0)?,
        prefetch_all: p.bool_or("prefetch_all", false)?,
    })
}

fn parse_backend(kind: &str, o: &Obj) -> Result<BackendConfig> {
    match kind {
        "localfs" => {
            let blob_file = o.opt_str("blob_file")?.filter(|s| !s.is_empty()).map(PathBuf::from);
            let dir = o.opt_str("dir")?.filter(|s| !s.is_empty()).map(PathBuf::from);
            if blob_file.is_none() && dir.is_none() {
                return Err(Error::config(format!("{}: one of blob_file or dir is required", o.path_str())));
            }
            let alt_dirs = o.str_list("alt_dirs")?.into_iter().map(PathBuf::from).collect();
            Ok(BackendConfig::LocalFs { blob_file, dir, alt_dirs })
        }
        "registry" => {
            let auth = o.opt_str("auth")?.filter(|s| !s.is_empty());
            if let Some(a) = &auth {
                use base64::Engine;
                let plain = base64::engine::general_purpose::STANDARD.decode(a.trim()).map_err(|_| Error::config(format!("{}: not base64", o.path("auth"))))?;
                if !plain.contains(&b':') {
                    return Err(Error::config(format!("{}: must encode \"user:password\"", o.path("auth"))));
                }
            }
            Ok(BackendConfig::Registry(RegistryConfig {
                scheme: scheme_of(o)?,
                host: o.req_str("host")?,
                repo: o.req_str("repo")?,
                auth,
                registry_token: o.opt_str("registry_token")?.filter(|s| !s.is_empty()),
                conn: parse_conn(o)?,
                backend_id: None,
            }))
        }
        "s3" | "oss" => {
            if kind == "oss" {
                return Err(Error::Unsupported(format!("{}: the oss backend (use s3 for S3-compatible stores)", o.path_str())));
            }
            Ok(BackendConfig::S3(S3Config {
                scheme: scheme_of(o)?,
                endpoint: o.req_str("endpoint")?,
                region: o.req_str("region")?,
                bucket_name: o.req_str("bucket_name")?,
                object_prefix: o.str_or("object_prefix", "")?,
                access_key_id: o.str_or("access_key_id", "")?,
                access_key_secret: o.str_or("access_key_secret", "")?,
                conn: parse_conn(o)?,
            }))
        }
        "http-proxy" => {
            let addr = o.req_str("addr")?;
            let ok = addr.starts_with("http://") || addr.starts_with("https://") || addr.starts_with('/');
            if !ok {
                return Err(Error::config(format!("{}: must be an http(s) URL or an absolute unix socket path", o.path("addr"))));
            }
            Ok(BackendConfig::HttpProxy(HttpProxyConfig { addr, path: o.str_or("path", "")?, conn: parse_conn(o)? }))
        }
        "localdisk" => Err(Error::Unsupported(format!("{}: the localdisk backend", o.path_str()))),
        other => Err(Error::config(format!("{}: unknown backend {other:?}", o.path_str()))),
    }
}

fn scheme_of(o: &Obj) -> Result<String> {
    // nydusd: only "http" selects plain HTTP; anything else (or nothing) means https.
    Ok(if o.str_or("scheme", "https")? == "http" { "http".into() } else { "https".into() })
}

fn parse_conn(o: &Obj) -> Result<ConnConfig> {
    let proxy = match o.obj("proxy")? {
        Some(p) => ProxyConfig {
            url: p.str_or("url", "")?,
            ping_url: p.str_or("ping_url", "")?,
            fallback: p.bool_or("fallback", true)?,
            check_interval: Duration::from_secs(p.u64_or("check_interval", 5)?),
            use_http: p.bool_or("use_http", false)?,
        },
        None => ProxyConfig { url: String::new(), ping_url: String::new(), fallback: true, check_interval: Duration::from_secs(5), use_http: false },
    };
    let mut mirrors = Vec::new();
    for (i, m) in o.obj_list("mirrors")?.iter().enumerate() {
        let host = m.req_str("host")?;
        if !(host.starts_with("http://") || host.starts_with("https://")) {
            return Err(Error::config(format!("{}.mirrors[{i}].host: must start with http:// or https://", o.path_str())));
        }
        let headers = match m.obj("headers")? {
            Some(h) => h
                .map
                .iter()
                .map(|(k, v)| Ok((k.clone(), v.as_str().ok_or_else(|| Error::config(format!("{}: must be a string", h.path(k))))?.to_string())))
                .collect::<Result<_>>()?,
            None => Vec::new(),
        };
        mirrors.push(MirrorConfig {
            host: host.trim_end_matches('/').to_string(),
            headers,
            auth_through: m.bool_or("auth_through", false)?,
            ping_url: m.str_or("ping_url", "")?,
            health_check_interval: Duration::from_secs(m.u64_or("health_check_interval", 5)?),
            failure_limit: m.u64_or("failure_limit", 5)? as u32,
        });
    }
    let secs = |k: &str| -> Result<Duration> {
        let v = o.u64_or(k, 5)?;
        if v == 0 || v > 3600 {
            return Err(Error::config(format!("{}: must be between 1 and 3600 seconds", o.path(k))));
        }
        Ok(Duration::from_secs(v))
    };
    Ok(ConnConfig {
        skip_verify: o.bool_or("skip_verify", false)?,
        ca_cert_files: o.str_list("ca_cert_files")?.into_iter().map(PathBuf::from).collect(),
        timeout: secs("timeout")?,
        connect_timeout: secs("connect_timeout")?,
        retry_limit: o.bounded("retry_limit", 0, 100)? as u32,
        proxy,
        mirrors,
    })
}

/// A JSON object plus its dotted path, so every error can name the field.
struct Obj<'a> {
    map: &'a Map<String, Value>,
    at: String,
}

impl<'a> Obj<'a> {
    fn root(v: &'a Value) -> Result<Self> {
        v.as_object().map(|map| Obj { map, at: String::new() }).ok_or_else(|| Error::config("the document must be an object"))
    }
    fn path(&self, key: &str) -> String {
        if self.at.is_empty() {
            key.to_string()
        } else {
            format!("{}.{key}", self.at)
        }
    }
    fn path_str(&self) -> &str {
        if self.at.is_empty() {
            "(root)"
        } else {
            &self.at
        }
    }
    fn has(&self, key: &str) -> bool {
        self.map.get(key).is_some_and(|v| !v.is_null())
    }
    fn get(&self, key: &str) -> Option<&'a Value> {
        self.map.get(key).filter(|v| !v.is_null())
    }
    fn wrong(&self, key: &str, want: &str) -> Error {
        let got = match self.map.get(key) {
            Some(Value::Bool(_)) => "a boolean",
            Some(Value::Number(_)) => "a number",
            Some(Value::String(_)) => "a string",
            Some(Value::Array(_)) => "an array",
            Some(Value::Object(_)) => "an object",
            _ => "nothing",
        };
        Error::config(format!("{}: expected {want}, got {got}", self.path(key)))
    }
    fn obj(&self, key: &str) -> Result<Option<Obj<'a>>> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Object(map)) => Ok(Some(Obj { map, at: self.path(key) })),
            Some(_) => Err(self.wrong(key, "an object")),
        }
    }
    fn opt_str(&self, key: &str) -> Result<Option<String>> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(_) => Err(self.wrong(key, "a string")),
        }
    }
    fn str_or(&self, key: &str, default: &str) -> Result<String> {
        Ok(self.opt_str(key)?.unwrap_or_else(|| default.to_string()))
    }
    fn req_str(&self, key: &str) -> Result<String> {
        match self.opt_str(key)? {
            Some(s) if !s.is_empty() => Ok(s),
            _ => Err(Error::config(format!("{}: required", self.path(key)))),
        }
    }
    fn bool_or(&self, key: &str, default: bool) -> Result<bool> {
        match self.get(key) {
            None => Ok(default),
            Some(Value::Bool(b)) => Ok(*b),
            Some(_) => Err(self.wrong(key, "a boolean")),
        }
    }
    fn u64_or(&self, key: &str, default: u64) -> Result<u64> {
        match self.get(key) {
            None => Ok(default),
            Some(v) => v.as_u64().ok_or_else(|| self.wrong(key, "an unsigned integer")),
        }
    }
    fn bounded(&self, key: &str, default: u64, max: u64) -> Result<u64> {
        let v = self.u64_or(key, default)?;
        if v > max {
            return Err(Error::config(format!("{}: {v} is above the limit {max}", self.path(key))));
        }
        Ok(v)
    }
    fn threads(&self, key: &str) -> Result<usize> {
        let v = self.u64_or(key, 8)?;
        if !(1..=1024).contains(&v) {
            return Err(Error::config(format!("{}: must be between 1 and 1024, got {v}", self.path(key))));
        }
        Ok(v as usize)
    }
    fn list(&self, key: &str) -> Result<&'a [Value]> {
        match self.get(key) {
            None => Ok(&[]),
            Some(Value::Array(a)) => Ok(a),
            Some(_) => Err(self.wrong(key, "an array")),
        }
    }
    fn str_list(&self, key: &str) -> Result<Vec<String>> {
        self.list(key)?
            .iter()
            .enumerate()
            .map(|(i, v)| v.as_str().map(str::to_string).ok_or_else(|| Error::config(format!("{}[{i}]: expected a string", self.path(key)))))
            .collect()
    }
    fn obj_list(&self, key: &str) -> Result<Vec<Obj<'a>>> {
        self.list(key)?
            .iter()
            .enumerate()
            .map(|(i, v)| {
                let at = format!("{}[{i}]", self.path(key));
                v.as_object().map(|map| Obj { map, at: at.clone() }).ok_or_else(|| Error::config(format!("{at}: expected an object")))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v1_snapshotter_document() {
        let c = Config::parse(
            r#"{"device":{"id":"/snap1","backend":{"type":"registry","config":{"readahead":false,
            "host":"127.0.0.1:5000","repo":"lib/app","auth":"dXNlcjpwYXNz","scheme":"http","proxy":{"fallback":false}}},
            "cache":{"type":"blobcache","config":{"work_dir":"/var/cache"}}},"mode":"direct","digest_validate":false,
            "iostats_files":true,"fs_prefetch":{"enable":true,"threads_count":4},"amplify_io":2097152,"id_mapping":[]}"#,
        )
        .unwrap();
        assert_eq!(c.id, "/snap1");
        let BackendConfig::Registry(r) = c.backend.as_ref().unwrap() else { panic!() };
        assert_eq!((r.scheme.as_str(), r.host.as_str(), r.repo.as_str()), ("http", "127.0.0.1:5000", "lib/app"));
        assert!(!r.conn.proxy.fallback);
        assert_eq!(c.cache.kind, CacheKind::BlobCache);
        assert_eq!(c.cache.work_dir, PathBuf::from("/var/cache"));
        assert_eq!(c.rafs.batch_size, 2 << 20);
        assert!(c.prefetch().enable && c.prefetch().prefetch_all && c.prefetch().threads == 4);
        assert_eq!(c.rafs.id_mapping, None, "the snapshotter's id_mapping list is ignored, as by nydusd");
        assert!(c.rafs.adaptive_amplify, "on unless switched off");
        assert!(c.to_v2_json()["rafs"].get("adaptive_amplify").is_none(), "the default echoes nydusd's fields only");
    }

    #[test]
    fn adaptive_amplify_can_be_switched_off_in_either_version() {
        let v1 = Config::parse(r#"{"device":{"backend":{"type":"localfs","config":{"dir":"/b"}}},"mode":"direct","adaptive_amplify":false}"#).unwrap();
        let v2 = Config::parse(r#"{"version":2,"backend":{"type":"localfs","localfs":{"dir":"/b"}},"rafs":{"adaptive_amplify":false}}"#).unwrap();
        for c in [v1, v2] {
            assert!(!c.rafs.adaptive_amplify);
            assert_eq!(c.to_v2_json()["rafs"]["adaptive_amplify"], json!(false));
            assert!(!Config::parse(&c.to_v2_json().to_string()).unwrap().rafs.adaptive_amplify, "the echo parses back");
        }
        assert!(Config::parse(r#"{"version":2,"backend":{"type":"localfs","localfs":{"dir":"/b"}},"rafs":{"adaptive_amplify":"no"}}"#).is_err());
    }

    #[test]
    fn v2_errors_name_the_field() {
        let err = |t: &str| Config::parse(t).unwrap_err().to_string();
        assert!(err(r#"{"version":3}"#).contains("version: must be 2"));
        assert!(err(r#"{"version":2,"backend":{"type":"registry","registry":{"repo":"x"}}}"#).contains("backend.registry.host: required"));
        assert!(err(r#"{"version":2,"backend":{"type":"s3"}}"#).contains("backend.s3: required"));
        assert!(err(r#"{"version":2,"rafs":{"batch_size":"big"}}"#).contains("rafs.batch_size: expected an unsigned integer, got a string"));
        assert!(err(r#"{"version":2,"cache":{"type":"blobcache","filecache":{},"prefetch":{"threads":2}}}"#).contains("cache.prefetch.enable: required"));
        assert!(err(r#"{"version":2,"cache":{"type":"blobcache"}}"#).contains("cache.filecache: required"));
        assert!(err(r#"{"version":2,"rafs":{"batch_size":999999999999}}"#).contains("above the limit"));
        assert!(
            err(r#"{"version":2,"backend":{"type":"registry","registry":{"host":"h","repo":"r","mirrors":[{"host":"ftp://x"}]}}}"#).contains("mirrors[0].host")
        );
        assert!(err("[1,2]").contains("must be an object"));
        assert!(err("{oops").contains("not a JSON or TOML"));
    }

    #[test]
    fn toml_v2_document() {
        let c = Config::parse("version = 2\nid = \"x\"\n[backend]\ntype = \"localfs\"\n[backend.localfs]\ndir = \"/blobs\"\n").unwrap();
        assert_eq!(c.backend, Some(BackendConfig::LocalFs { blob_file: None, dir: Some("/blobs".into()), alt_dirs: vec![] }));
    }

    #[test]
    fn id_mapping_in_v1_and_v2_and_its_errors() {
        let v1 =
            |m: &str| Config::parse(&format!(r#"{{"device":{{"backend":{{"type":"localfs","config":{{"dir":"/b"}}}}}},"mode":"direct","id_mapping":{m}}}"#));
        let c = v1(r#"{"uid":"0:100000:65536","gid":"0:200000:65536"}"#).unwrap();
        let m = c.rafs.id_mapping.unwrap();
        assert_eq!((m.uid.host, m.gid.host, m.uid.size), (100000, 200000, 65536));
        assert_eq!(c.to_v2_json()["rafs"]["id_mapping"]["gid"], "0:200000:65536");
        let v2 = Config::parse(r#"{"version":2,"rafs":{"id_mapping":{"uid":"0:1000:1","gid":"0:1000:1"}}}"#).unwrap();
        assert_eq!(v2.rafs.id_mapping.unwrap().uid.to_host(0), 1000);
        for (bad, says) in [
            (r#"{"uid":"0:1:2"}"#, "id_mapping.gid: required"),
            (r#"{"uid":"0:1:0","gid":"0:1:1"}"#, "id_mapping.uid"),
            (r#""0:1:2""#, "id_mapping: expected an object"),
            (r#"5"#, "id_mapping: expected an object"),
        ] {
            let e = v1(bad).unwrap_err().to_string();
            assert!(e.contains(says), "{bad}: {e}");
        }
    }
}
