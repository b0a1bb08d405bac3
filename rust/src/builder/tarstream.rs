//! A streaming walker over tar archives. Header fields are decoded by the `tar` crate; this
//! module only frames the stream: 512-byte blocks, data padding, GNU long names (`L`/`K`)
//! and PAX records (`x`). We frame it ourselves because the crate's PAX iterator splits
//! records at newline bytes instead of using their length prefix, which rejects binary
//! xattr values such as `security.capability`. Every size read from the stream is bounded.

use crate::error::{Error, Result};
use std::io::Read;

const BLOCK: usize = 512;
/// Largest GNU long name / PAX header we accept.
const MAX_META: u64 = 1 << 20;

fn bad(msg: impl Into<String>) -> Error {
    Error::UnsafeInput(msg.into())
}

/// One archive member after long names and PAX records are applied.
pub struct Member {
    pub header: tar::Header,
    pub path: Vec<u8>,
    pub link: Option<Vec<u8>>,
    /// Bytes of data that follow in the stream.
    pub size: u64,
    pub uid: u64,
    pub gid: u64,
    pub mtime: i64,
    pub mtime_nsec: u32,
    /// PAX `SCHILY.xattr.*` records: (name, value).
    pub xattrs: Vec<(Vec<u8>, Vec<u8>)>,
}

pub struct TarStream<R: Read> {
    r: R,
    /// Data bytes of the current member not yet consumed, then its padding.
    remaining: u64,
    padding: u64,
    done: bool,
}

/// Parse PAX extended header records (`"%d %s=%s\n"`, the length counting the whole record).
pub fn parse_pax(data: &[u8]) -> Result<Vec<(&[u8], &[u8])>> {
    let mut out = Vec::new();
    let mut pos = 0;
    while pos < data.len() {
        if data[pos..].iter().all(|&b| b == 0) {
            break; // trailing NUL padding
        }
        let sp = data[pos..].iter().position(|&b| b == b' ').ok_or_else(|| bad("malformed PAX record (no length)"))?;
        let len: usize = std::str::from_utf8(&data[pos..pos + sp]).ok().and_then(|s| s.parse().ok()).ok_or_else(|| bad("malformed PAX record length"))?;
        let end = pos.checked_add(len).filter(|&e| e <= data.len() && len > sp + 1).ok_or_else(|| bad("PAX record overruns its header"))?;
        let rec = &data[pos + sp + 1..end];
        let rec = rec.strip_suffix(b"\n").ok_or_else(|| bad("PAX record does not end with a newline"))?;
        let eq = rec.iter().position(|&b| b == b'=').ok_or_else(|| bad("PAX record without '='"))?;
        out.push((&rec[..eq], &rec[eq + 1..]));
        pos = end;
    }
    Ok(out)
}

/// PAX time "seconds[.fraction]" (possibly negative) as (seconds, nanoseconds).
fn parse_pax_time(v: &[u8]) -> Result<(i64, u32)> {
    let s = std::str::from_utf8(v).map_err(|_| bad("PAX mtime is not text"))?;
    let (int, frac) = s.split_once('.').unwrap_or((s, ""));
    let secs: i64 = int.parse().map_err(|_| bad(format!("bad PAX mtime {s:?}")))?;
    let mut nsec = 0u32;
    for (i, c) in frac.chars().take(9).enumerate() {
        let d = c.to_digit(10).ok_or_else(|| bad(format!("bad PAX mtime {s:?}")))?;
        nsec += d * 10u32.pow(8 - i as u32);
    }
    // "-1.5" means 1.5 s before the epoch: (-2 s, 0.5 s).
    if int.starts_with('-') && nsec > 0 {
        let secs = secs.checked_sub(1).ok_or_else(|| bad(format!("PAX mtime {s:?} out of range")))?;
        return Ok((secs, 1_000_000_000 - nsec));
    }
    Ok((secs, nsec))
}

fn parse_num(v: &[u8], what: &str) -> Result<u64> {
    std::str::from_utf8(v).ok().and_then(|s| s.parse().ok()).ok_or_else(|| bad(format!("bad PAX {what}")))
}

impl<R: Read> TarStream<R> {
    pub fn new(r: R) -> Self {
        TarStream { r, remaining: 0, padding: 0, done: false }
    }

    /// Fill `buf` completely; Ok(false) on a clean EOF before the first byte.
    fn fill(&mut self, buf: &mut [u8]) -> Result<bool> {
        let mut n = 0;
        while n < buf.len() {
            match self.r.read(&mut buf[n..]) {
                Ok(0) if n == 0 => return Ok(false),
                Ok(0) => return Err(bad("tar stream truncated in the middle of a block")),
                Ok(k) => n += k,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(bad(format!("malformed or truncated tar stream: {e}"))),
            }
        }
        Ok(true)
    }

    fn skip(&mut self, mut n: u64) -> Result<()> {
        let mut buf = [0u8; 8192];
        while n > 0 {
            let k = n.min(buf.len() as u64) as usize;
            if !self.fill(&mut buf[..k])? {
                return Err(bad("tar stream truncated inside a member"));
            }
            n -= k as u64;
        }
        Ok(())
    }

    fn read_meta(&mut self, size: u64, what: &str) -> Result<Vec<u8>> {
        if size > MAX_META {
            return Err(bad(format!("{what} of {size} bytes is over the {MAX_META}-byte limit")));
        }
        let mut data = vec![0u8; size as usize];
        if !self.fill(&mut data)? && size > 0 {
            return Err(bad(format!("tar stream truncated inside a {what}")));
        }
        self.skip(pad(size))?;
        Ok(data)
    }

    /// The next member, or None at the end-of-archive marker.
    pub fn next_member(&mut self) -> Result<Option<Member>> {
        if self.done {
            return Ok(None);
        }
        self.skip(self.remaining + self.padding)?;
        self.remaining = 0;
        self.padding = 0;
        let mut long_name: Option<Vec<u8>> = None;
        let mut long_link: Option<Vec<u8>> = None;
        let mut pax: Option<Vec<u8>> = None;
        loop {
            let mut block = [0u8; BLOCK];
            if !self.fill(&mut block)? {
                return Err(bad("tar stream ends without an end-of-archive marker (truncated?)"));
            }
            if block.iter().all(|&b| b == 0) {
                self.done = true;
                return Ok(None);
            }
            let header = tar::Header::from_byte_slice(&block).clone();
            check_checksum(&block)?;
            let kind = header.entry_type();
            let size = header.entry_size().map_err(|e| bad(format!("bad tar header size: {e}")))?;
            match kind.as_byte() {
                b'L' => long_name = Some(trim_nul(self.read_meta(size, "GNU long name")?)),
                b'K' => long_link = Some(trim_nul(self.read_meta(size, "GNU long link name")?)),
                b'x' | b'X' => pax = Some(self.read_meta(size, "PAX header")?),
                b'g' => {
                    self.read_meta(size, "PAX global header")?;
                }
                b'S' => return Err(Error::Unsupported("GNU sparse tar members".into())),
                _ => {
                    let mut m = Member {
                        path: long_name.take().unwrap_or_else(|| header.path_bytes().into_owned()),
                        link: long_link.take().or_else(|| header.link_name_bytes().map(|c| c.into_owned())),
                        size: 0,
                        uid: header.uid().map_err(|e| bad(format!("bad tar uid: {e}")))?,
                        gid: header.gid().map_err(|e| bad(format!("bad tar gid: {e}")))?,
                        mtime: header.mtime().map_err(|e| bad(format!("bad tar mtime: {e}")))? as i64,
                        mtime_nsec: 0,
                        xattrs: Vec::new(),
                        header,
                    };
                    let mut data_size = size;
                    if let Some(p) = &pax {
                        for (k, v) in parse_pax(p)? {
                            match k {
                                b"path" => m.path = v.to_vec(),
                                b"linkpath" => m.link = Some(v.to_vec()),
                                b"size" => data_size = parse_num(v, "size")?,
                                b"uid" => m.uid = parse_num(v, "uid")?,
                                b"gid" => m.gid = parse_num(v, "gid")?,
                                b"mtime" => (m.mtime, m.mtime_nsec) = parse_pax_time(v)?,
                                _ => {
                                    if let Some(name) = k.strip_prefix(b"SCHILY.xattr.") {
                                        m.xattrs.push((name.to_vec(), v.to_vec()));
                                    }
                                }
                            }
                        }
                    }
                    // Like POSIX readers: only regular (and unknown) members carry data.
                    let has_data = !b"123456".contains(&kind.as_byte());
                    let data_size = if has_data { data_size } else { 0 };
                    m.size = data_size;
                    self.remaining = data_size;
                    self.padding = pad(data_size);
                    return Ok(Some(m));
                }
            }
        }
    }
}

impl<R: Read> TarStream<R> {
    /// Read whatever follows the end-of-archive marker, so a compressed stream's decoder
    /// reaches its end and checks its trailer (gzip CRC-32, zstd checksum).
    pub fn drain(&mut self) -> Result<()> {
        std::io::copy(&mut self.r, &mut std::io::sink()).map(|_| ()).map_err(|e| bad(format!("corrupt data after the end of the tar archive: {e}")))
    }
}

impl<R: Read> Read for TarStream<R> {
    /// Read the current member's data.
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.remaining == 0 {
            return Ok(0);
        }
        let k = (buf.len() as u64).min(self.remaining) as usize;
        let n = self.r.read(&mut buf[..k])?;
        if n == 0 {
            return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "tar stream truncated inside a member"));
        }
        self.remaining -= n as u64;
        Ok(n)
    }
}

fn pad(size: u64) -> u64 {
    (BLOCK as u64 - size % BLOCK as u64) % BLOCK as u64
}

fn trim_nul(mut v: Vec<u8>) -> Vec<u8> {
    while v.last() == Some(&0) {
        v.pop();
    }
    v
}

fn check_checksum(block: &[u8; BLOCK]) -> Result<()> {
    let field = &block[148..156];
    // Octal digits, possibly right-justified with spaces and ended by NUL or space (POSIX).
    let text: String = field.iter().take_while(|&&c| c != 0).map(|&c| c as char).collect();
    let text = text.trim_matches(' ');
    let stored = u32::from_str_radix(text, 8).map_err(|_| bad("tar header has an unreadable checksum (not a tar stream?)"))?;
    let sum: u32 = block.iter().enumerate().map(|(i, &b)| if (148..156).contains(&i) { b' ' as u32 } else { b as u32 }).sum();
    if stored != sum {
        return Err(bad("tar header checksum mismatch (corrupt or not a tar stream)"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pax_records_keep_newlines_in_values() {
        let body = b"SCHILY.xattr.user.nl=a\nb";
        let len = body.len() + 2 + 2; // "NN " + body + "\n"
        let record = format!("{len} ").into_bytes().into_iter().chain(body.iter().copied()).chain([b'\n']).collect::<Vec<u8>>();
        assert_eq!(record.len(), len);
        let parsed = parse_pax(&record).unwrap();
        assert_eq!(parsed, vec![(&b"SCHILY.xattr.user.nl"[..], &b"a\nb"[..])]);
        assert!(parse_pax(&record[..10]).is_err());
        assert!(parse_pax(b"99 path=x\n").is_err());
    }

    #[test]
    fn pax_time_fractions() {
        assert_eq!(parse_pax_time(b"1600000000.7").unwrap(), (1600000000, 700_000_000));
        assert_eq!(parse_pax_time(b"-1.5").unwrap(), (-2, 500_000_000));
        assert_eq!(parse_pax_time(b"12").unwrap(), (12, 0));
        assert!(parse_pax_time(b"x").is_err());
    }
}
