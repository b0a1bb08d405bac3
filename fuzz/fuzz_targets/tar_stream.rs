//! Fuzz the build-side tar framing (`builder::tarstream`): the input is a tar stream. Every
//! member is framed (GNU long names, PAX records, padding) and its data read to the end;
//! PAX record parsing is also fed the raw input. The full build path over tar input is
//! covered by `damaged_layer_builds_or_fails_cleanly` in rust/tests/proptest_parsers.rs.

#![no_main]

use libfuzzer_sys::fuzz_target;
use nydus_hybrid_core::builder::tarstream::{parse_pax, TarStream};

fuzz_target!(|data: &[u8]| {
    let _ = parse_pax(data);
    let mut ts = TarStream::new(std::io::Cursor::new(data));
    for _ in 0..256 {
        match ts.next_member() {
            Ok(Some(m)) => {
                let _ = (m.path.len(), m.link.as_ref().map(Vec::len), m.size, m.mtime, m.xattrs.len());
                if std::io::copy(&mut ts, &mut std::io::sink()).is_err() {
                    break;
                }
            }
            _ => break,
        }
    }
});
