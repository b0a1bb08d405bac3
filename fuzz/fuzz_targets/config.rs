//! nydusd configuration documents and registry auth challenges: any input either parses or
//! is rejected with an error; nothing panics.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nydus_hybrid_core::config::Config;
use nydus_hybrid_core::storage::registry::Challenge;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(cfg) = Config::parse(text) {
            // The normalised form is itself a valid document.
            let again = Config::parse(&cfg.to_v2_json().to_string());
            assert!(again.is_ok() || cfg.backend.is_none());
        }
        let _ = Challenge::parse(text);
    }
});
