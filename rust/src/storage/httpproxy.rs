//! The `http-proxy` backend: blobs served as `<addr>/<path>/<blob id>` by a plain HTTP
//! server (a P2P or caching proxy), over TCP or a unix socket.

use crate::config::HttpProxyConfig;
use crate::error::{Error, Result};
use crate::storage::http::{describe, head_size, read_range_body, HttpConn, Request};
use crate::storage::metrics::BackendMetrics;
use crate::storage::RangeReader;
use reqwest::{Method, StatusCode};
use std::sync::Arc;

pub struct HttpProxy {
    base: String,
    http: HttpConn,
}

impl HttpProxy {
    pub fn new(cfg: &HttpProxyConfig, metrics: Arc<BackendMetrics>) -> Result<Self> {
        let path = cfg.path.trim_matches('/');
        let (origin, http) = if cfg.addr.starts_with('/') {
            // Requests go to the socket; the URL only supplies path and Host.
            let http = HttpConn::new_unix(&cfg.conn, std::path::Path::new(&cfg.addr), metrics)?;
            ("http://localhost".to_string(), http)
        } else {
            (cfg.addr.trim_end_matches('/').to_string(), HttpConn::new(&cfg.conn, metrics)?)
        };
        let base = if path.is_empty() { origin } else { format!("{origin}/{path}") };
        Ok(HttpProxy { base, http })
    }

    fn url(&self, blob_id: &str) -> Result<String> {
        if blob_id.is_empty() || blob_id.contains('/') || blob_id.starts_with('.') {
            return Err(Error::invalid(format!("blob id {blob_id:?} is not a valid name")));
        }
        Ok(format!("{}/{blob_id}", self.base))
    }
}

impl RangeReader for HttpProxy {
    fn read_range(&self, blob_id: &str, offset: u64, buf: &mut [u8]) -> Result<()> {
        if buf.is_empty() {
            return Ok(());
        }
        let url = self.url(blob_id)?;
        let what = format!("{url} range {offset}+{}", buf.len());
        let req = Request::new(Method::GET, &url).header("Range", format!("bytes={offset}-{}", offset + buf.len() as u64 - 1));
        let resp = self.http.send(&req)?;
        match resp.status() {
            StatusCode::PARTIAL_CONTENT => read_range_body(resp, buf, &what),
            StatusCode::OK if offset == 0 && resp.content_length() == Some(buf.len() as u64) => read_range_body(resp, buf, &what),
            StatusCode::OK => Err(Error::backend(format!("{what}: the server ignored the Range header"))),
            _ => Err(Error::backend(describe(resp, &what))),
        }
    }

    fn object_size(&self, blob_id: &str) -> Result<u64> {
        let url = self.url(blob_id)?;
        let resp = self.http.send(&Request::new(Method::HEAD, &url))?;
        if !resp.status().is_success() {
            return Err(Error::backend(describe(resp, &format!("HEAD {url}"))));
        }
        head_size(&resp, &format!("HEAD {url}"))
    }
}
