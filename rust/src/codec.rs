//! Chunk codecs and digests (§6.9, §7). Decoding is bounded by the expected size: chunk-sized
//! outputs are decoded in one shot, larger ones (CI arrays, inlined bootstraps, whose callers
//! cap the size) are streamed so memory follows the real output.

use crate::error::{Error, Result};
use crate::layout::{Compressor, Digester};
use std::io::Read;

/// Outputs up to this size are decoded in one shot into a buffer of the exact size.
const BULK_LIMIT: usize = 16 << 20;

thread_local! {
    // zstd contexts are reused per thread: setting one up costs ~20 µs, which dominated
    // builds of many small files. Output bytes are the same as one-shot compression.
    static ZSTD_CCTX: std::cell::RefCell<Option<zstd::bulk::Compressor<'static>>> = const { std::cell::RefCell::new(None) };
    static ZSTD_DCTX: std::cell::RefCell<Option<zstd::bulk::Decompressor<'static>>> = const { std::cell::RefCell::new(None) };
}

/// zstd level used by the reference builder for chunk frames.
pub const ZSTD_LEVEL: i32 = 3;

/// Compress `data`; returns None when the result would not be strictly smaller (store raw).
pub fn compress(algo: Compressor, data: &[u8]) -> Result<Option<Vec<u8>>> {
    let out = match algo {
        Compressor::None => return Ok(None),
        Compressor::Zstd => ZSTD_CCTX
            .with(|cell| {
                let mut slot = cell.borrow_mut();
                if slot.is_none() {
                    *slot = Some(zstd::bulk::Compressor::new(ZSTD_LEVEL)?);
                }
                slot.as_mut().unwrap().compress(data)
            })
            .map_err(|e| Error::invalid(format!("zstd compression failed: {e}")))?,
        Compressor::Lz4Block => lz4_flex::block::compress(data),
        Compressor::Gzip => {
            let mut enc = flate2::read::GzEncoder::new(data, flate2::Compression::default());
            let mut out = Vec::new();
            enc.read_to_end(&mut out).map_err(|e| Error::io("gzip compression", e))?;
            out
        }
    };
    Ok((out.len() < data.len()).then_some(out))
}

/// Decompress `data` into exactly `size` bytes.
pub fn decompress(algo: Compressor, data: &[u8], size: usize) -> Result<Vec<u8>> {
    let out = match algo {
        Compressor::None => {
            if data.len() != size {
                return Err(Error::Decompress(format!("stored chunk is {} bytes, expected {size}", data.len())));
            }
            data.to_vec()
        }
        // One-shot for chunk-sized outputs; beyond that stream, so memory follows the real
        // output rather than a size field an attacker controls.
        Compressor::Zstd if size <= BULK_LIMIT => ZSTD_DCTX
            .with(|cell| {
                let mut slot = cell.borrow_mut();
                if slot.is_none() {
                    *slot = Some(zstd::bulk::Decompressor::new()?);
                }
                slot.as_mut().unwrap().decompress(data, size)
            })
            .map_err(|e| Error::Decompress(format!("zstd: {e}")))?,
        Compressor::Zstd => {
            let mut out = Vec::with_capacity(BULK_LIMIT);
            zstd::stream::read::Decoder::new(data)
                .map_err(|e| Error::Decompress(format!("zstd: {e}")))?
                .take(size as u64 + 1)
                .read_to_end(&mut out)
                .map_err(|e| Error::Decompress(format!("zstd: {e}")))?;
            out
        }
        Compressor::Lz4Block => {
            if size > crate::layout::MAX_CHUNK_SIZE as usize * 24 {
                return Err(Error::Decompress(format!("lz4_block output of {size} bytes is over the limit")));
            }
            let mut buf = vec![0u8; size];
            let n = lz4_flex::block::decompress_into(data, &mut buf).map_err(|e| Error::Decompress(format!("lz4_block: {e}")))?;
            buf.truncate(n);
            buf
        }
        Compressor::Gzip => {
            let mut out = Vec::with_capacity(size.min(BULK_LIMIT));
            flate2::read::GzDecoder::new(data).take(size as u64 + 1).read_to_end(&mut out).map_err(|e| Error::Decompress(format!("gzip: {e}")))?;
            out
        }
    };
    if out.len() != size {
        return Err(Error::Decompress(format!("{} produced {} bytes, expected {size}", algo.name(), out.len())));
    }
    Ok(out)
}

pub fn digest(algo: Digester, data: &[u8]) -> [u8; 32] {
    match algo {
        Digester::Blake3 => *blake3::hash(data).as_bytes(),
        Digester::Sha256 => sha256(data),
    }
}

pub fn sha256(data: &[u8]) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(data).into()
}

pub fn crc32c(data: &[u8]) -> u32 {
    crc32c::crc32c(data)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32c_check_value() {
        assert_eq!(crc32c(b"123456789"), 0xE306_9283);
    }

    #[test]
    fn blake3_matches_spec_example() {
        assert_eq!(hex::encode(digest(Digester::Blake3, b"0123456789")), "53b63a6fc8605d0c0ce559317a00177d72adb24d669235e4c914f443a8831ca1");
    }

    #[test]
    fn roundtrip_every_codec() {
        let data: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        for algo in [Compressor::Zstd, Compressor::Lz4Block, Compressor::Gzip] {
            let c = compress(algo, &data).unwrap().expect("repetitive data shrinks");
            assert_eq!(decompress(algo, &c, data.len()).unwrap(), data);
            assert!(decompress(algo, &c, data.len() - 1).is_err());
        }
        assert!(compress(Compressor::Zstd, b"0123456789").unwrap().is_none());
    }
}
