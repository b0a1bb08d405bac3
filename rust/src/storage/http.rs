//! One HTTP connection policy for every network backend: timeouts, retries with backoff and
//! jitter, a Dragonfly-style forward proxy with fallback to the origin, and mirrors tried
//! before the origin. Redirects are never followed here: the registry follows them itself so
//! that its `Authorization` header is not sent to the storage a redirect points at.

use crate::config::{ConnConfig, MirrorConfig, ProxyConfig};
use crate::error::{Error, Result};
use crate::storage::metrics::BackendMetrics;
use reqwest::blocking::{Client, ClientBuilder, Response};
use reqwest::{Method, StatusCode};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A request body that can be sent again on retry.
#[derive(Clone, Debug)]
pub enum Body {
    Empty,
    Bytes(Arc<Vec<u8>>),
    /// `len` bytes of a file from `offset`, read with `pread` on every send, so a retry
    /// resends the same bytes and a large blob is never held in memory.
    File {
        file: Arc<std::fs::File>,
        offset: u64,
        len: u64,
    },
}

/// A reader over a byte range of a shared file that keeps its own position.
struct FileRange {
    file: Arc<std::fs::File>,
    pos: u64,
    end: u64,
}

impl std::io::Read for FileRange {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        use std::os::unix::fs::FileExt;
        let want = (self.end - self.pos).min(buf.len() as u64) as usize;
        if want == 0 {
            return Ok(0);
        }
        let n = self.file.read_at(&mut buf[..want], self.pos)?;
        if n == 0 {
            return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "file shrank while it was being sent"));
        }
        self.pos += n as u64;
        Ok(n)
    }
}

#[derive(Clone, Debug)]
pub struct Request {
    pub method: Method,
    pub url: String,
    pub headers: Vec<(String, String)>,
    pub body: Body,
}

impl Request {
    pub fn new(method: Method, url: impl Into<String>) -> Self {
        Request { method, url: url.into(), headers: Vec::new(), body: Body::Empty }
    }
    pub fn header(mut self, k: &str, v: impl Into<String>) -> Self {
        self.headers.push((k.to_string(), v.into()));
        self
    }
    pub fn body(mut self, b: Vec<u8>) -> Self {
        self.body = Body::Bytes(Arc::new(b));
        self
    }
    pub fn file_body(mut self, file: Arc<std::fs::File>, offset: u64, len: u64) -> Self {
        self.body = Body::File { file, offset, len };
        self
    }
}

/// Seconds since the epoch, for health timestamps shared between threads.
fn now_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// Health of a proxy or mirror: after a failure it is skipped until `retry_at`.
#[derive(Default)]
struct Health {
    failures: AtomicU32,
    retry_at: AtomicU64,
}

impl Health {
    fn usable(&self) -> bool {
        now_secs() >= self.retry_at.load(Relaxed)
    }
    fn ok(&self) {
        self.failures.store(0, Relaxed);
        self.retry_at.store(0, Relaxed);
    }
    fn failed(&self, limit: u32, pause: Duration) {
        if self.failures.fetch_add(1, Relaxed) + 1 >= limit.max(1) {
            self.retry_at.store(now_secs() + pause.as_secs().max(1), Relaxed);
        }
    }
}

struct Proxy {
    client: Client,
    cfg: ProxyConfig,
    health: Health,
    /// When `ping_url` was last asked (seconds since the epoch), so it is asked at most
    /// once per `check_interval` rather than before every request.
    last_ping: AtomicU64,
}

struct Mirror {
    cfg: MirrorConfig,
    health: Health,
}

pub struct HttpConn {
    client: Client,
    proxy: Option<Proxy>,
    mirrors: Vec<Mirror>,
    retry_limit: u32,
    pub metrics: Arc<BackendMetrics>,
}

fn builder(cfg: &ConnConfig) -> Result<ClientBuilder> {
    let mut b = Client::builder()
        .connect_timeout(cfg.connect_timeout)
        .timeout(cfg.timeout)
        .redirect(reqwest::redirect::Policy::none())
        .pool_max_idle_per_host(16)
        .danger_accept_invalid_certs(cfg.skip_verify)
        .user_agent(concat!("nydus-hybrid/", env!("CARGO_PKG_VERSION")));
    for path in &cfg.ca_cert_files {
        let pem = std::fs::read(path).map_err(|e| Error::config(format!("ca_cert_files: read {}: {e}", path.display())))?;
        for cert in reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| Error::config(format!("ca_cert_files: {}: {e}", path.display())))? {
            b = b.add_root_certificate(cert);
        }
    }
    Ok(b)
}

/// Map a transport error to our kinds: timeouts are their own variant.
pub fn transport_error(e: &reqwest::Error, what: &str) -> Error {
    let mut msg = e.to_string();
    let mut src = std::error::Error::source(e);
    while let Some(s) = src {
        msg = format!("{msg}: {s}");
        src = s.source();
    }
    if e.is_timeout() {
        Error::Timeout(format!("{what}: {msg}"))
    } else {
        Error::backend(format!("{what}: {msg}"))
    }
}

/// Worth trying again: the server or the network, not our request.
fn retryable_status(s: StatusCode) -> bool {
    s.is_server_error() || s == StatusCode::TOO_MANY_REQUESTS || s == StatusCode::REQUEST_TIMEOUT
}

/// Exponential backoff (100 ms doubling, at most 3.2 s) with full jitter.
fn backoff(attempt: u32) -> Duration {
    let cap = 100u64 << attempt.min(5);
    Duration::from_millis(fastrand::u64(cap / 2..=cap))
}

impl HttpConn {
    pub fn new(cfg: &ConnConfig, metrics: Arc<BackendMetrics>) -> Result<Self> {
        // Only the configured proxy is used: HTTP_PROXY and friends are ignored, so a
        // reader behaves the same under any environment.
        let client = builder(cfg)?.no_proxy().build().map_err(|e| Error::config(format!("http client: {e}")))?;
        let proxy = if cfg.proxy.url.is_empty() {
            None
        } else {
            let p = reqwest::Proxy::all(&cfg.proxy.url).map_err(|e| Error::config(format!("proxy.url: {e}")))?;
            let client = builder(cfg)?.proxy(p).build().map_err(|e| Error::config(format!("proxy client: {e}")))?;
            Some(Proxy { client, cfg: cfg.proxy.clone(), health: Health::default(), last_ping: AtomicU64::new(0) })
        };
        let mirrors = cfg.mirrors.iter().map(|m| Mirror { cfg: m.clone(), health: Health::default() }).collect();
        Ok(HttpConn { client, proxy, mirrors, retry_limit: cfg.retry_limit, metrics })
    }

    /// A connection whose every request goes to a unix socket (`http-proxy` with a socket
    /// path as `addr`); proxies and mirrors do not apply there.
    pub fn new_unix(cfg: &ConnConfig, socket: &std::path::Path, metrics: Arc<BackendMetrics>) -> Result<Self> {
        let client = builder(cfg)?.unix_socket(socket.to_path_buf()).build().map_err(|e| Error::config(format!("http client: {e}")))?;
        Ok(HttpConn { client, proxy: None, mirrors: Vec::new(), retry_limit: cfg.retry_limit, metrics })
    }

    fn send_once(&self, client: &Client, req: &Request, url: &str, extra: &[(String, String)]) -> std::result::Result<Response, reqwest::Error> {
        self.send_filtered(client, req, url, extra, true)
    }

    fn send_filtered(
        &self,
        client: &Client,
        req: &Request,
        url: &str,
        extra: &[(String, String)],
        auth: bool,
    ) -> std::result::Result<Response, reqwest::Error> {
        self.metrics.request();
        let mut rb = client.request(req.method.clone(), url);
        let keep = |(k, _): &&(String, String)| auth || !k.eq_ignore_ascii_case("authorization");
        for (k, v) in req.headers.iter().filter(keep).chain(extra) {
            rb = rb.header(k, v);
        }
        match &req.body {
            Body::Empty => {}
            Body::Bytes(b) => rb = rb.body(b.as_ref().clone()),
            Body::File { file, offset, len } => {
                let reader = FileRange { file: file.clone(), pos: *offset, end: offset + len };
                rb = rb.body(reqwest::blocking::Body::sized(reader, *len));
            }
        }
        rb.send()
    }

    /// Send a request: through the proxy when it is up, else to mirrors, else to the origin
    /// with retries. Any HTTP status is returned to the caller, except that 5xx replies are
    /// retried first.
    pub fn send(&self, req: &Request) -> Result<Response> {
        if let Some(p) = &self.proxy {
            if p.health.usable() && self.proxy_ping(p) {
                let url = if p.cfg.use_http { req.url.replacen("https://", "http://", 1) } else { req.url.clone() };
                match self.send_once(&p.client, req, &url, &[]) {
                    Ok(r) if !retryable_status(r.status()) => {
                        p.health.ok();
                        return Ok(r);
                    }
                    Ok(r) if !p.cfg.fallback => return Ok(r),
                    Err(e) if !p.cfg.fallback => return Err(transport_error(&e, &format!("{} via proxy {}", req.url, p.cfg.url))),
                    _ => p.health.failed(1, p.cfg.check_interval),
                }
            } else if !p.cfg.fallback {
                return Err(Error::backend(format!("proxy {} is down and fallback is off", p.cfg.url)));
            }
        }
        for m in self.mirrors.iter().filter(|m| m.health.usable()) {
            let Some(url) = mirror_url(&m.cfg.host, &req.url) else {
                continue;
            };
            match self.send_filtered(&self.client, req, &url, &m.cfg.headers, m.cfg.auth_through) {
                Ok(r) if !retryable_status(r.status()) && r.status() != StatusCode::NOT_FOUND => {
                    m.health.ok();
                    return Ok(r);
                }
                _ => m.health.failed(m.cfg.failure_limit, m.cfg.health_check_interval),
            }
        }
        self.send_direct(req)
    }

    /// Straight to the URL (no proxy, no mirrors), with retries.
    pub fn send_direct(&self, req: &Request) -> Result<Response> {
        let mut attempt = 0;
        loop {
            let res = self.send_once(&self.client, req, &req.url, &[]);
            let retry = match &res {
                Ok(r) => retryable_status(r.status()),
                Err(e) => !e.is_builder(),
            };
            if !retry || attempt >= self.retry_limit {
                return res.map_err(|e| transport_error(&e, &format!("{} {}", req.method, req.url)));
            }
            std::thread::sleep(backoff(attempt));
            attempt += 1;
        }
    }

    /// With a `ping_url`, a proxy is used only while it answers there (checked at most once
    /// per `check_interval`); without one, failures alone mark it down.
    fn proxy_ping(&self, p: &Proxy) -> bool {
        let now = now_secs();
        if p.cfg.ping_url.is_empty() || now < p.last_ping.load(Relaxed) + p.cfg.check_interval.as_secs().max(1) {
            return true;
        }
        p.last_ping.store(now, Relaxed);
        let ok = self.client.get(&p.cfg.ping_url).timeout(Duration::from_secs(2)).send().is_ok_and(|r| r.status().is_success());
        if !ok {
            p.health.failed(1, p.cfg.check_interval);
        }
        ok
    }
}

/// The request URL with its scheme and authority replaced by the mirror's.
fn mirror_url(mirror: &str, url: &str) -> Option<String> {
    let u = url::Url::parse(url).ok()?;
    let mut path = u.path().to_string();
    if let Some(q) = u.query() {
        path = format!("{path}?{q}");
    }
    Some(format!("{mirror}{path}"))
}

/// The object size a HEAD reply announces. (reqwest's `content_length()` describes the
/// body actually sent, which for HEAD is empty, so the header is read directly.)
pub fn head_size(resp: &Response, what: &str) -> Result<u64> {
    resp.headers()
        .get("content-length")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| Error::backend(format!("{what}: no Content-Length")))
}

/// Read a whole (bounded) response body, for error messages and small JSON replies.
pub fn read_small(resp: Response, limit: u64) -> Result<Vec<u8>> {
    use std::io::Read;
    let mut out = Vec::new();
    resp.take(limit).read_to_end(&mut out).map_err(|e| Error::backend(format!("read response: {e}")))?;
    Ok(out)
}

/// A short description of an unexpected reply, with the start of its body.
pub fn describe(resp: Response, what: &str) -> String {
    let status = resp.status();
    let body = read_small(resp, 512).unwrap_or_default();
    let text = String::from_utf8_lossy(&body);
    let text = text.trim();
    if text.is_empty() {
        format!("{what}: HTTP {status}")
    } else {
        format!("{what}: HTTP {status}: {text}")
    }
}

/// Read exactly `buf.len()` bytes of a range reply into `buf`; a longer or shorter body is
/// an error, so a misbehaving server cannot hand us the wrong bytes.
pub fn read_range_body(resp: Response, buf: &mut [u8], what: &str) -> Result<()> {
    use std::io::Read;
    if let Some(len) = resp.content_length() {
        if len != buf.len() as u64 {
            return Err(Error::backend(format!("{what}: server sent {len} bytes for a {}-byte range", buf.len())));
        }
    }
    let mut r = resp;
    r.read_exact(buf).map_err(|e| {
        if e.kind() == std::io::ErrorKind::TimedOut || e.to_string().contains("timed out") {
            Error::Timeout(format!("{what}: {e}"))
        } else {
            Error::backend(format!("{what}: body ended early: {e}"))
        }
    })?;
    let mut extra = [0u8; 1];
    if matches!(r.read(&mut extra), Ok(n) if n > 0) {
        return Err(Error::backend(format!("{what}: server sent more than the {}-byte range", buf.len())));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mirror_url_keeps_path_and_query() {
        assert_eq!(mirror_url("http://m:5000", "https://reg.io/v2/lib/x/blobs/sha256:ab?x=1").as_deref(), Some("http://m:5000/v2/lib/x/blobs/sha256:ab?x=1"));
    }

    #[test]
    fn backoff_is_bounded_and_jittered() {
        for a in 0..10 {
            let d = backoff(a).as_millis() as u64;
            let cap = 100u64 << a.min(5);
            assert!(d >= cap / 2 && d <= cap);
        }
    }
}
