//! Fuzz the `/dev/cachefiles` message decoder (`fscache::proto::decode`): whatever one read
//! of the device returns. What decodes must encode to a message that decodes the same
//! (READ and CLOSE have one spelling, so their bytes must match exactly; an OPEN's volume
//! key has several, such as a missing `erofs,` prefix or extra NULs).

#![no_main]

use libfuzzer_sys::fuzz_target;
use nydus_hybrid_core::fscache::proto::{decode, encode_close, encode_open, encode_read, Request};

fuzz_target!(|data: &[u8]| {
    let Ok(m) = decode(data) else { return };
    match &m.request {
        Request::Read { off, len } => assert_eq!(encode_read(m.msg_id, m.object_id, *off, *len), data),
        Request::Close => assert_eq!(encode_close(m.msg_id, m.object_id), data),
        Request::Open { domain, cookie, fd, .. } => {
            let again = decode(&encode_open(m.msg_id, m.object_id, domain, cookie, *fd)).expect("our own OPEN decodes");
            match again.request {
                Request::Open { domain: d, cookie: c, fd: f, .. } => assert!(&d == domain && &c == cookie && f == *fd),
                other => panic!("OPEN re-decoded as {other:?}"),
            }
        }
    }
});
