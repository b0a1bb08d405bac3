//! S3-compatible object storage: SigV4-signed ranged GETs of `<prefix><blob id>` in a
//! bucket, path-style (`<endpoint>/<bucket>/<key>`) so that local endpoints work.

use crate::config::S3Config;
use crate::error::{Error, Result};
use crate::storage::http::{describe, head_size, read_range_body, HttpConn, Request};
use crate::storage::metrics::BackendMetrics;
use crate::storage::sigv4::{self, Credentials, EMPTY_SHA256};
use crate::storage::RangeReader;
use reqwest::{Method, StatusCode};
use std::sync::Arc;
use std::time::SystemTime;

pub struct S3 {
    cfg: S3Config,
    http: HttpConn,
}

impl S3 {
    pub fn new(cfg: &S3Config, metrics: Arc<BackendMetrics>) -> Result<Self> {
        if cfg.endpoint.contains('/') {
            return Err(Error::config(format!("backend.s3.endpoint: {:?} must be host[:port], without a scheme or path", cfg.endpoint)));
        }
        Ok(S3 { cfg: cfg.clone(), http: HttpConn::new(&cfg.conn, metrics)? })
    }

    fn key(&self, blob_id: &str) -> Result<String> {
        if blob_id.is_empty() || blob_id.contains('/') || blob_id.starts_with('.') {
            return Err(Error::invalid(format!("blob id {blob_id:?} is not a valid object name")));
        }
        Ok(format!("{}{blob_id}", self.cfg.object_prefix))
    }

    fn where_(&self) -> String {
        format!("s3 {}/{}", self.cfg.endpoint, self.cfg.bucket_name)
    }

    /// A request for the object, signed when keys are configured (anonymous otherwise).
    fn request(&self, method: Method, blob_id: &str, extra: Vec<(String, String)>) -> Result<Request> {
        let path = format!("/{}/{}", self.cfg.bucket_name, self.key(blob_id)?);
        let url = format!("{}://{}{}", self.cfg.scheme, self.cfg.endpoint, sigv4::uri_encode(&path, true));
        let mut headers = extra;
        if !self.cfg.access_key_id.is_empty() {
            let creds = Credentials { access_key_id: &self.cfg.access_key_id, secret_access_key: &self.cfg.access_key_secret };
            sigv4::sign(method.as_str(), &self.cfg.endpoint, &path, &[], &mut headers, EMPTY_SHA256, &self.cfg.region, &creds, SystemTime::now());
            // reqwest sets Host itself from the URL; sending it twice would be invalid.
            headers.retain(|(k, _)| k != "host");
        }
        let mut req = Request::new(method, url);
        req.headers = headers;
        Ok(req)
    }

    fn check(&self, resp: reqwest::blocking::Response, what: &str) -> Result<reqwest::blocking::Response> {
        match resp.status() {
            s if s.is_success() => Ok(resp),
            StatusCode::FORBIDDEN | StatusCode::UNAUTHORIZED => Err(Error::Auth(describe(resp, what))),
            StatusCode::NOT_FOUND => Err(Error::backend(format!("{what}: object not found"))),
            _ => Err(Error::backend(describe(resp, what))),
        }
    }
}

impl RangeReader for S3 {
    fn read_range(&self, blob_id: &str, offset: u64, buf: &mut [u8]) -> Result<()> {
        if buf.is_empty() {
            return Ok(());
        }
        let what = format!("object {} range {offset}+{} at {}", self.key(blob_id)?, buf.len(), self.where_());
        let range = format!("bytes={offset}-{}", offset + buf.len() as u64 - 1);
        let req = self.request(Method::GET, blob_id, vec![("range".into(), range)])?;
        let resp = self.check(self.http.send(&req)?, &what)?;
        if resp.status() != StatusCode::PARTIAL_CONTENT && !(offset == 0 && resp.content_length() == Some(buf.len() as u64)) {
            return Err(Error::backend(format!("{what}: the server ignored the Range header")));
        }
        read_range_body(resp, buf, &what)
    }

    fn object_size(&self, blob_id: &str) -> Result<u64> {
        let what = format!("size of object {} at {}", self.key(blob_id)?, self.where_());
        let req = self.request(Method::HEAD, blob_id, Vec::new())?;
        let resp = self.check(self.http.send(&req)?, &what)?;
        head_size(&resp, &what)
    }
}
