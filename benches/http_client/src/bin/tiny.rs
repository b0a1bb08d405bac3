//! Smallest program that performs one GET with the selected client. Used only to measure
//! compile time from clean, dependency count and stripped binary size per client:
//!   cargo build --release --bin tiny                      # no client (std TcpStream)
//!   cargo build --release --bin tiny --features ureq
//!   cargo build --release --bin tiny --features reqwest
//!   cargo build --release --bin tiny --features reqwest-ring

use std::io::Read;

fn main() {
    let url = std::env::args().nth(1).unwrap_or_else(|| "http://127.0.0.1:9/".to_string());
    let mut body = Vec::new();

    #[cfg(feature = "ureq")]
    {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_connect(Some(std::time::Duration::from_secs(5)))
            .max_redirects(0)
            .build()
            .into();
        match agent.get(&url).call() {
            Ok(mut r) => {
                r.body_mut().as_reader().read_to_end(&mut body).ok();
            }
            Err(e) => eprintln!("ureq: {e}"),
        }
    }

    #[cfg(all(any(feature = "reqwest", feature = "reqwest-ring"), not(feature = "ureq")))]
    {
        #[cfg(all(feature = "reqwest-ring", not(feature = "reqwest")))]
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = reqwest::blocking::Client::builder()
            .connect_timeout(std::time::Duration::from_secs(5))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .expect("client");
        match client.get(&url).send() {
            Ok(mut r) => {
                r.read_to_end(&mut body).ok();
            }
            Err(e) => eprintln!("reqwest: {e}"),
        }
    }

    #[cfg(not(any(feature = "ureq", feature = "reqwest", feature = "reqwest-ring")))]
    {
        // Baseline: plain HTTP/1.0 over std, so the size delta is the client alone.
        use std::io::Write;
        let rest = url.trim_start_matches("http://");
        let (host, path) = rest.split_once('/').unwrap_or((rest, ""));
        match std::net::TcpStream::connect(host) {
            Ok(mut s) => {
                let _ = write!(s, "GET /{path} HTTP/1.0\r\nHost: {host}\r\n\r\n");
                s.read_to_end(&mut body).ok();
            }
            Err(e) => eprintln!("std: {e}"),
        }
    }

    println!("{} bytes", body.len());
}
