//! AWS Signature Version 4 for S3 requests (header form, signed payload hash).

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use std::time::{SystemTime, UNIX_EPOCH};

type HmacSha256 = Hmac<Sha256>;

/// sha256 of an empty body, the payload hash of every GET.
pub const EMPTY_SHA256: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

pub struct Credentials<'a> {
    pub access_key_id: &'a str,
    pub secret_access_key: &'a str,
}

fn hmac(key: &[u8], data: &[u8]) -> Vec<u8> {
    let mut m = HmacSha256::new_from_slice(key).expect("HMAC takes keys of any length");
    m.update(data);
    m.finalize().into_bytes().to_vec()
}

/// `YYYYMMDDTHHMMSSZ` for a time since the epoch (UTC, proleptic Gregorian).
pub fn amz_date(t: SystemTime) -> String {
    let secs = t.duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let (days, rem) = (secs / 86400, secs % 86400);
    // Civil-from-days over 400-year eras (H. Hinnant's well-known derivation).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}{m:02}{d:02}T{:02}{:02}{:02}Z", rem / 3600, rem / 60 % 60, rem % 60)
}

/// Percent-encode everything but RFC 3986 unreserved characters (and `/` when `keep_slash`).
pub fn uri_encode(s: &str, keep_slash: bool) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) || (keep_slash && b == b'/') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Sign a request. `path` is the raw (unencoded) object path, `query` the raw pairs, and
/// `headers` the headers to send: `host`, `x-amz-date` and `x-amz-content-sha256` are added
/// here, every header given is signed, and the `authorization` header is appended.
#[allow(clippy::too_many_arguments)]
pub fn sign(
    method: &str,
    host: &str,
    path: &str,
    query: &[(&str, &str)],
    headers: &mut Vec<(String, String)>,
    payload_sha256: &str,
    region: &str,
    creds: &Credentials,
    now: SystemTime,
) {
    let date_time = amz_date(now);
    let date = &date_time[..8];
    headers.push(("host".into(), host.into()));
    headers.push(("x-amz-content-sha256".into(), payload_sha256.into()));
    headers.push(("x-amz-date".into(), date_time.clone()));
    let mut canon: Vec<(String, String)> = headers.iter().map(|(k, v)| (k.to_ascii_lowercase(), v.trim().to_string())).collect();
    canon.sort();
    let signed: Vec<&str> = canon.iter().map(|(k, _)| k.as_str()).collect();
    let signed = signed.join(";");
    let mut q: Vec<(String, String)> = query.iter().map(|(k, v)| (uri_encode(k, false), uri_encode(v, false))).collect();
    q.sort();
    let query_str: Vec<String> = q.iter().map(|(k, v)| format!("{k}={v}")).collect();
    let header_block: String = canon.iter().map(|(k, v)| format!("{k}:{v}\n")).collect();
    let request = format!("{method}\n{}\n{}\n{header_block}\n{signed}\n{payload_sha256}", uri_encode(path, true), query_str.join("&"));
    let scope = format!("{date}/{region}/s3/aws4_request");
    let to_sign = format!("AWS4-HMAC-SHA256\n{date_time}\n{scope}\n{}", hex::encode(Sha256::digest(request.as_bytes())));
    let mut key = hmac(format!("AWS4{}", creds.secret_access_key).as_bytes(), date.as_bytes());
    for part in [region, "s3", "aws4_request"] {
        key = hmac(&key, part.as_bytes());
    }
    let signature = hex::encode(hmac(&key, to_sign.as_bytes()));
    headers
        .push(("authorization".into(), format!("AWS4-HMAC-SHA256 Credential={}/{scope}, SignedHeaders={signed}, Signature={signature}", creds.access_key_id)));
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn dates() {
        assert_eq!(amz_date(UNIX_EPOCH), "19700101T000000Z");
        assert_eq!(amz_date(UNIX_EPOCH + Duration::from_secs(1_369_353_600)), "20130524T000000Z");
        assert_eq!(amz_date(UNIX_EPOCH + Duration::from_secs(951_782_400 + 3661)), "20000229T010101Z");
    }

    /// The GET Object example of the AWS SigV4 documentation (header-based auth).
    #[test]
    fn aws_documented_get_object_example() {
        let mut headers = vec![("range".to_string(), "bytes=0-9".to_string())];
        let creds = Credentials { access_key_id: "AKIAIOSFODNN7EXAMPLE", secret_access_key: "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY" };
        let t = UNIX_EPOCH + Duration::from_secs(1_369_353_600);
        sign("GET", "examplebucket.s3.amazonaws.com", "/test.txt", &[], &mut headers, EMPTY_SHA256, "us-east-1", &creds, t);
        let auth = &headers.last().unwrap().1;
        assert!(auth.contains("SignedHeaders=host;range;x-amz-content-sha256;x-amz-date"), "{auth}");
        assert!(auth.ends_with("Signature=f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41"), "{auth}");
    }
}
