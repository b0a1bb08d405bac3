//! OCI distribution registry backend: ranged blob reads and blob uploads, with anonymous,
//! basic and Bearer-token auth (the Docker token flow), redirects followed without our
//! `Authorization` header, and the connection policy of `http.rs`.

use crate::config::RegistryConfig;
use crate::error::{Error, Result};
use crate::storage::http::{describe, head_size, read_range_body, read_small, HttpConn, Request};
use crate::storage::metrics::BackendMetrics;
use crate::storage::RangeReader;
use base64::Engine;
use reqwest::blocking::Response;
use reqwest::{Method, StatusCode};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const MAX_REDIRECTS: usize = 5;
/// Tokens are refreshed this long before the registry says they expire (or a quarter of
/// their lifetime, for short-lived ones).
const TOKEN_SLACK: Duration = Duration::from_secs(10);

#[derive(Clone)]
enum AuthHeader {
    None,
    Basic,
    Bearer { token: String, expires: Instant },
}

/// Credentials replaced at runtime (`PUT /api/v1/config {"registry_auth"}`), by backend id
/// (the RAFS mountpoint). A registry reads them on every request, so a rotated password
/// takes effect without a remount.
static AUTH_OVERRIDES: std::sync::LazyLock<std::sync::RwLock<std::collections::HashMap<String, String>>> = std::sync::LazyLock::new(Default::default);

pub fn set_registry_auth(backend_id: &str, auth: &str) {
    AUTH_OVERRIDES.write().unwrap_or_else(|p| p.into_inner()).insert(backend_id.to_string(), auth.to_string());
}

pub struct Registry {
    cfg: RegistryConfig,
    http: HttpConn,
    /// base64 `user:password`, from the config, `IMAGE_PULL_AUTH` or docker's config.json.
    creds: Option<String>,
    /// Key of runtime credential overrides (see `set_registry_auth`).
    backend_id: Option<String>,
    auth: Mutex<AuthHeader>,
}

/// A parsed `WWW-Authenticate` challenge.
#[derive(Debug, PartialEq)]
pub struct Challenge {
    pub scheme: String,
    pub params: Vec<(String, String)>,
}

impl Challenge {
    pub fn parse(header: &str) -> Option<Challenge> {
        let header = header.trim();
        let (scheme, rest) = header.split_once(' ').unwrap_or((header, ""));
        let mut params = Vec::new();
        let mut chars = rest.chars().peekable();
        loop {
            while chars.peek().is_some_and(|c| *c == ',' || c.is_whitespace()) {
                chars.next();
            }
            let key: String = chars.by_ref().take_while(|c| *c != '=').collect::<String>().trim().to_ascii_lowercase();
            if key.is_empty() {
                break;
            }
            let mut value = String::new();
            if chars.peek() == Some(&'"') {
                chars.next();
                while let Some(c) = chars.next() {
                    match c {
                        '\\' => value.extend(chars.next()),
                        '"' => break,
                        c => value.push(c),
                    }
                }
            } else {
                value = chars.by_ref().take_while(|c| *c != ',').collect::<String>().trim().to_string();
            }
            params.push((key, value));
        }
        Some(Challenge { scheme: scheme.to_ascii_lowercase(), params })
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.params.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }
}

/// Credentials for `host` in a docker `config.json` (`$DOCKER_CONFIG` or `~/.docker`).
pub fn docker_config_auth(host: &str) -> Option<String> {
    let dir = std::env::var_os("DOCKER_CONFIG").map(std::path::PathBuf::from).or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".docker")))?;
    let doc: serde_json::Value = serde_json::from_slice(&std::fs::read(dir.join("config.json")).ok()?).ok()?;
    let auths = doc.get("auths")?.as_object()?;
    let entry = [host.to_string(), format!("https://{host}"), format!("http://{host}"), format!("https://{host}/v1/")].iter().find_map(|k| auths.get(k))?;
    if let Some(a) = entry.get("auth").and_then(|v| v.as_str()).filter(|a| !a.is_empty()) {
        return Some(a.to_string());
    }
    let user = entry.get("username")?.as_str()?;
    let pass = entry.get("password")?.as_str()?;
    Some(base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}")))
}

fn digest_ref(blob_id: &str) -> Result<String> {
    let hex = blob_id.strip_prefix("sha256:").unwrap_or(blob_id);
    if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(Error::invalid(format!("blob id {blob_id:?} is not a sha256 digest")));
    }
    Ok(format!("sha256:{}", hex.to_ascii_lowercase()))
}

impl Registry {
    pub fn new(cfg: &RegistryConfig, metrics: Arc<BackendMetrics>) -> Result<Self> {
        let creds = cfg.auth.clone().or_else(|| std::env::var("IMAGE_PULL_AUTH").ok().filter(|s| !s.is_empty())).or_else(|| docker_config_auth(&cfg.host));
        let auth = match &cfg.registry_token {
            Some(t) => AuthHeader::Bearer { token: t.clone(), expires: Instant::now() + Duration::from_secs(86400 * 365) },
            None => AuthHeader::None,
        };
        Ok(Registry { cfg: cfg.clone(), http: HttpConn::new(&cfg.conn, metrics)?, creds, backend_id: cfg.backend_id.clone(), auth: Mutex::new(auth) })
    }

    /// The credentials in force: a runtime override for this backend, else the configured ones.
    fn current_creds(&self) -> Option<String> {
        let overridden = self.backend_id.as_ref().and_then(|id| AUTH_OVERRIDES.read().unwrap_or_else(|p| p.into_inner()).get(id).cloned());
        overridden.or_else(|| self.creds.clone())
    }

    fn base(&self) -> String {
        format!("{}://{}/v2/{}", self.cfg.scheme, self.cfg.host, self.cfg.repo)
    }

    fn where_(&self) -> String {
        format!("registry {}/{}", self.cfg.host, self.cfg.repo)
    }

    fn auth_value(&self) -> Option<String> {
        match &*self.auth.lock().unwrap_or_else(|p| p.into_inner()) {
            AuthHeader::None => None,
            AuthHeader::Basic => self.current_creds().map(|c| format!("Basic {c}")),
            AuthHeader::Bearer { token, expires } if Instant::now() < *expires => Some(format!("Bearer {token}")),
            AuthHeader::Bearer { .. } => None,
        }
    }

    /// Send with the current credentials; on 401, answer the challenge once and resend.
    fn send_authed(&self, mut req: Request, actions: &str) -> Result<Response> {
        let plain = req.headers.clone();
        if let Some(v) = self.auth_value() {
            req.headers.push(("Authorization".into(), v));
        }
        let resp = self.http.send(&req)?;
        if resp.status() != StatusCode::UNAUTHORIZED {
            return Ok(resp);
        }
        let challenge = resp
            .headers()
            .get("www-authenticate")
            .and_then(|v| v.to_str().ok())
            .and_then(Challenge::parse)
            .ok_or_else(|| Error::Auth(format!("{}: 401 without a WWW-Authenticate challenge", self.where_())))?;
        self.answer(&challenge, actions)?;
        req.headers = plain;
        if let Some(v) = self.auth_value() {
            req.headers.push(("Authorization".into(), v));
        }
        let resp = self.http.send(&req)?;
        if resp.status() == StatusCode::UNAUTHORIZED || resp.status() == StatusCode::FORBIDDEN {
            return Err(Error::Auth(describe(resp, &format!("{} refused our credentials", self.where_()))));
        }
        Ok(resp)
    }

    fn answer(&self, c: &Challenge, actions: &str) -> Result<()> {
        match c.scheme.as_str() {
            "basic" => {
                if self.current_creds().is_none() {
                    return Err(Error::Auth(format!("{} requires credentials and none are configured", self.where_())));
                }
                *self.auth.lock().unwrap_or_else(|p| p.into_inner()) = AuthHeader::Basic;
                Ok(())
            }
            "bearer" => {
                let realm = c.get("realm").ok_or_else(|| Error::Auth(format!("{}: Bearer challenge without a realm", self.where_())))?;
                let scope = c.get("scope").map(str::to_string).unwrap_or_else(|| format!("repository:{}:{actions}", self.cfg.repo));
                let (token, ttl) = self.fetch_token(realm, c.get("service"), &scope)?;
                let expires = Instant::now() + ttl - TOKEN_SLACK.min(ttl / 4);
                *self.auth.lock().unwrap_or_else(|p| p.into_inner()) = AuthHeader::Bearer { token, expires };
                Ok(())
            }
            other => Err(Error::Auth(format!("{}: unsupported auth scheme {other:?}", self.where_()))),
        }
    }

    /// The Docker token flow: GET the realm with service and scope, basic-authenticated when
    /// we have credentials; the reply carries `token` (or `access_token`) and `expires_in`.
    fn fetch_token(&self, realm: &str, service: Option<&str>, scope: &str) -> Result<(String, Duration)> {
        let mut url = url::Url::parse(realm).map_err(|e| Error::Auth(format!("token realm {realm:?}: {e}")))?;
        {
            let mut q = url.query_pairs_mut();
            if let Some(s) = service {
                q.append_pair("service", s);
            }
            q.append_pair("scope", scope);
        }
        let mut req = Request::new(Method::GET, url.as_str());
        if let Some(c) = self.current_creds() {
            req = req.header("Authorization", format!("Basic {c}"));
        }
        let resp = self.http.send_direct(&req)?;
        let status = resp.status();
        if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
            return Err(Error::Auth(describe(resp, &format!("token endpoint {realm} rejected our credentials"))));
        }
        if !status.is_success() {
            return Err(Error::backend(describe(resp, &format!("token endpoint {realm}"))));
        }
        let body: serde_json::Value =
            serde_json::from_slice(&read_small(resp, 1 << 20)?).map_err(|e| Error::backend(format!("token endpoint {realm}: reply is not JSON: {e}")))?;
        let token = body
            .get("token")
            .or_else(|| body.get("access_token"))
            .and_then(|t| t.as_str())
            .filter(|t| !t.is_empty())
            .ok_or_else(|| Error::backend(format!("token endpoint {realm}: reply has no token")))?;
        let ttl = body.get("expires_in").and_then(|v| v.as_u64()).unwrap_or(60).max(1);
        Ok((token.to_string(), Duration::from_secs(ttl)))
    }

    /// Follow a redirect chain from a blob URL, without our credentials.
    fn follow(&self, mut resp: Response, headers: &[(String, String)], what: &str) -> Result<Response> {
        for _ in 0..MAX_REDIRECTS {
            if !resp.status().is_redirection() {
                return Ok(resp);
            }
            let loc =
                resp.headers().get("location").and_then(|v| v.to_str().ok()).ok_or_else(|| Error::backend(format!("{what}: redirect without a Location")))?;
            let next = resp.url().join(loc).map_err(|e| Error::backend(format!("{what}: bad redirect {loc:?}: {e}")))?;
            let mut req = Request::new(Method::GET, next.as_str());
            req.headers = headers.to_vec();
            resp = self.http.send_direct(&req)?;
        }
        Err(Error::backend(format!("{what}: more than {MAX_REDIRECTS} redirects")))
    }

    fn blob_response(&self, digest: &str, method: Method, headers: Vec<(String, String)>) -> Result<Response> {
        let mut req = Request::new(method, format!("{}/blobs/{digest}", self.base()));
        req.headers = headers.clone();
        let resp = self.send_authed(req, "pull")?;
        self.follow(resp, &headers, &format!("blob {digest}"))
    }

    /// Whether the registry has this blob.
    pub fn blob_exists(&self, blob_id: &str) -> Result<bool> {
        Ok(self.blob_size(blob_id)?.is_some())
    }

    /// The size of this blob in the registry, or None when it has no such blob.
    pub fn blob_size(&self, blob_id: &str) -> Result<Option<u64>> {
        let digest = digest_ref(blob_id)?;
        let what = format!("HEAD blob {digest} at {}", self.where_());
        let resp = self.blob_response(&digest, Method::HEAD, Vec::new())?;
        match resp.status() {
            s if s.is_success() => head_size(&resp, &what).map(Some),
            StatusCode::NOT_FOUND => Ok(None),
            _ => Err(Error::backend(describe(resp, &what))),
        }
    }

    /// Upload a blob file, monolithic (one PUT) or in `chunk_size` pieces (PATCH each, then
    /// PUT). Returns the digest and whether anything was sent (an existing blob is skipped).
    /// The file is streamed from disk, never held in memory.
    pub fn push_blob(&self, path: &Path, chunk_size: Option<usize>) -> Result<(String, bool)> {
        let file = std::fs::File::open(path).map_err(|e| Error::io(format!("open {}", path.display()), e))?;
        let (digest, len) = sha256_of(&file).map_err(|e| Error::io(format!("read {}", path.display()), e))?;
        if self.blob_exists(&digest)? {
            return Ok((digest, false));
        }
        let file = Arc::new(file);
        let start = self.send_authed(Request::new(Method::POST, format!("{}/blobs/uploads/", self.base())).header("Content-Length", "0"), "pull,push")?;
        if start.status() != StatusCode::ACCEPTED {
            return Err(Error::backend(describe(start, &format!("start upload at {}", self.where_()))));
        }
        let mut location = upload_location(&start)?;
        let piece = chunk_size.filter(|s| *s > 0 && (*s as u64) < len).map(|s| s as u64);
        let Some(size) = piece else {
            return self.finish_upload(location, &digest, file, 0, len).map(|_| (digest, true));
        };
        let mut from = 0;
        while from < len {
            let n = size.min(len - from);
            let req = Request::new(Method::PATCH, location.as_str())
                .header("Content-Type", "application/octet-stream")
                .header("Content-Range", format!("{from}-{}", from + n - 1))
                .file_body(file.clone(), from, n);
            let resp = self.send_authed(req, "pull,push")?;
            if resp.status() != StatusCode::ACCEPTED {
                return Err(Error::backend(describe(resp, &format!("upload bytes {from}+{n} to {}", self.where_()))));
            }
            location = upload_location(&resp)?;
            from += n;
        }
        self.finish_upload(location, &digest, file, len, 0)?;
        Ok((digest, true))
    }

    /// Download a whole blob into `dest`, checking its size (at most `max_size`, and exactly
    /// `size` when given) and its digest as it streams; `dest` appears only when both hold.
    pub fn fetch_blob(&self, blob_id: &str, dest: &Path, size: Option<u64>, max_size: u64) -> Result<u64> {
        use std::io::{Read, Write};
        let digest = digest_ref(blob_id)?;
        let what = format!("blob {digest} at {}", self.where_());
        let resp = self.blob_response(&digest, Method::GET, Vec::new())?;
        match resp.status() {
            s if s.is_success() => {}
            StatusCode::NOT_FOUND => return Err(Error::BlobMissing(digest.clone(), PathBuf::from(format!("{}/{}", self.cfg.host, self.cfg.repo)))),
            _ => return Err(Error::backend(describe(resp, &what))),
        }
        let limit = size.unwrap_or(max_size).min(max_size);
        if let Some(n) = resp.content_length() {
            if n > max_size {
                return Err(Error::invalid(format!("{what}: {n} bytes, more than the {max_size} allowed")));
            }
            if size.is_some_and(|s| s != n) {
                return Err(Error::DigestMismatch(format!("{what}: the registry announces {n} bytes, the descriptor says {}", size.unwrap_or(0))));
            }
        }
        let tmp = dest.with_file_name(format!(".{}.part", dest.file_name().and_then(|n| n.to_str()).unwrap_or("blob")));
        let io = |e: std::io::Error| Error::io(format!("write {}", tmp.display()), e);
        let result = (|| {
            let mut out = std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(&tmp).map_err(io)?);
            let mut hasher = Sha256::new();
            let mut body = resp.take(limit.saturating_add(1));
            let mut buf = vec![0u8; 1 << 20];
            let mut total = 0u64;
            loop {
                let n = body.read(&mut buf).map_err(|e| Error::backend(format!("{what}: body ended early: {e}")))?;
                if n == 0 {
                    break;
                }
                total += n as u64;
                if total > limit {
                    return Err(Error::DigestMismatch(format!("{what}: more than the {limit} bytes expected")));
                }
                hasher.update(&buf[..n]);
                out.write_all(&buf[..n]).map_err(io)?;
            }
            if size.is_some_and(|s| s != total) {
                return Err(Error::DigestMismatch(format!("{what}: {total} bytes, the descriptor says {}", size.unwrap_or(0))));
            }
            let got = format!("sha256:{}", hex::encode(hasher.finalize()));
            if got != digest {
                return Err(Error::DigestMismatch(format!("{what}: its bytes hash to {got}")));
            }
            out.into_inner().map_err(|e| io(e.into_error()))?.sync_all().map_err(io)?;
            std::fs::rename(&tmp, dest).map_err(|e| Error::io(format!("rename to {}", dest.display()), e))?;
            Ok(total)
        })();
        if result.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        result
    }

    /// Fetch a manifest or index by tag or digest, accepting `accept` media types. Returns
    /// its media type, digest and bytes; a document asked for by digest must hash to it.
    pub fn get_manifest(&self, reference: &str, accept: &[String], max_size: u64) -> Result<(String, String, Vec<u8>)> {
        let what = format!("manifest {reference} at {}", self.where_());
        let mut req = Request::new(Method::GET, format!("{}/manifests/{reference}", self.base()));
        if !accept.is_empty() {
            req = req.header("Accept", accept.join(", "));
        }
        let resp = self.send_authed(req, "pull")?;
        match resp.status() {
            s if s.is_success() => {}
            StatusCode::NOT_FOUND => return Err(Error::NotFound(format!("{what}: not found"))),
            _ => return Err(Error::backend(describe(resp, &what))),
        }
        if resp.content_length().is_some_and(|n| n > max_size) {
            return Err(Error::invalid(format!("{what}: more than the {max_size} bytes a manifest may have")));
        }
        let media_type = resp.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("").split(';').next().unwrap_or("").trim().to_string();
        let body = read_small(resp, max_size.saturating_add(1))?;
        if body.len() as u64 > max_size {
            return Err(Error::invalid(format!("{what}: more than the {max_size} bytes a manifest may have")));
        }
        let digest = format!("sha256:{}", hex::encode(Sha256::digest(&body)));
        if reference.contains(':') && reference != digest {
            return Err(Error::DigestMismatch(format!("{what}: its bytes hash to {digest}")));
        }
        Ok((media_type, digest, body))
    }

    /// Store a manifest or index under `reference` (a tag or its digest); returns its digest.
    pub fn put_manifest(&self, reference: &str, media_type: &str, body: Vec<u8>) -> Result<String> {
        let digest = format!("sha256:{}", hex::encode(Sha256::digest(&body)));
        let req = Request::new(Method::PUT, format!("{}/manifests/{reference}", self.base())).header("Content-Type", media_type).body(body);
        let resp = self.send_authed(req, "pull,push")?;
        if resp.status() != StatusCode::CREATED && !resp.status().is_success() {
            return Err(Error::backend(describe(resp, &format!("put manifest {reference} to {}", self.where_()))));
        }
        Ok(digest)
    }

    /// The closing PUT of an upload, carrying `len` bytes of `file` from `offset` (none after
    /// a chunked upload).
    fn finish_upload(&self, mut location: url::Url, digest: &str, file: Arc<std::fs::File>, offset: u64, len: u64) -> Result<()> {
        location.query_pairs_mut().append_pair("digest", digest);
        let req = Request::new(Method::PUT, location.as_str()).header("Content-Type", "application/octet-stream").file_body(file, offset, len);
        let resp = self.send_authed(req, "pull,push")?;
        if resp.status() != StatusCode::CREATED {
            return Err(Error::backend(describe(resp, &format!("finish upload of {digest} to {}", self.where_()))));
        }
        Ok(())
    }
}

/// The sha256 digest and length of a file, read in 1 MiB pieces.
fn sha256_of(file: &std::fs::File) -> std::io::Result<(String, u64)> {
    use std::io::Read;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut r = file;
    let mut len = 0u64;
    loop {
        let n = r.read(&mut buf)?;
        if n == 0 {
            return Ok((format!("sha256:{}", hex::encode(h.finalize())), len));
        }
        h.update(&buf[..n]);
        len += n as u64;
    }
}

fn upload_location(resp: &Response) -> Result<url::Url> {
    let loc = resp.headers().get("location").and_then(|v| v.to_str().ok()).ok_or_else(|| Error::backend("upload reply without a Location"))?;
    resp.url().join(loc).map_err(|e| Error::backend(format!("upload Location {loc:?}: {e}")))
}

impl RangeReader for Registry {
    fn read_range(&self, blob_id: &str, offset: u64, buf: &mut [u8]) -> Result<()> {
        let digest = digest_ref(blob_id)?;
        if buf.is_empty() {
            return Ok(());
        }
        let range = format!("bytes={offset}-{}", offset + buf.len() as u64 - 1);
        let what = format!("blob {digest} range {offset}+{} at {}", buf.len(), self.where_());
        let resp = self.blob_response(&digest, Method::GET, vec![("Range".into(), range)])?;
        match resp.status() {
            StatusCode::PARTIAL_CONTENT => read_range_body(resp, buf, &what),
            // A server that ignores Range is acceptable only when the range is the whole blob.
            StatusCode::OK if offset == 0 && resp.content_length() == Some(buf.len() as u64) => read_range_body(resp, buf, &what),
            StatusCode::OK => Err(Error::backend(format!("{what}: the server ignored the Range header"))),
            StatusCode::NOT_FOUND => Err(Error::backend(format!("{what}: blob not found"))),
            _ => Err(Error::backend(describe(resp, &what))),
        }
    }

    fn object_size(&self, blob_id: &str) -> Result<u64> {
        let digest = digest_ref(blob_id)?;
        let resp = self.blob_response(&digest, Method::HEAD, Vec::new())?;
        let what = format!("size of blob {digest} at {}", self.where_());
        if !resp.status().is_success() {
            let status = resp.status();
            return Err(Error::backend(format!("{what}: HTTP {status}")));
        }
        head_size(&resp, &what)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_bearer_challenge() {
        let c = Challenge::parse(r#"Bearer realm="https://auth.example/token",service="registry.example",scope="repository:a/b:pull,push""#).unwrap();
        assert_eq!(c.scheme, "bearer");
        assert_eq!(c.get("realm"), Some("https://auth.example/token"));
        assert_eq!(c.get("scope"), Some("repository:a/b:pull,push"));
        let b = Challenge::parse(r#"Basic realm="Registry Realm""#).unwrap();
        assert_eq!((b.scheme.as_str(), b.get("realm")), ("basic", Some("Registry Realm")));
        let odd = Challenge::parse(r#"Bearer realm=unquoted, error="a\"b""#).unwrap();
        assert_eq!(odd.get("realm"), Some("unquoted"));
        assert_eq!(odd.get("error"), Some("a\"b"));
    }

    #[test]
    fn digests_are_checked() {
        assert!(digest_ref("../etc/passwd").is_err());
        assert_eq!(digest_ref(&"A".repeat(64)).unwrap(), format!("sha256:{}", "a".repeat(64)));
    }
}
