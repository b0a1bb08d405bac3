//! Blocking HTTP client comparison for nydus-hybrid storage backends.
//!
//! Starts a loopback HTTP/1.1 server (std only, Range support, keep-alive) serving a 256 MiB
//! random blob from memory in a child process, then drives it with each client compiled in:
//!
//! * (a) sequential 1 MiB ranged GETs over the whole blob, one thread, keep-alive
//! * (b) 4 threads, random 128 KiB ranged GETs, 4096 requests in total
//! * (c) 2000 random 4 KiB ranged GETs, one thread: latency p50/p99
//! * (d) one full GET of the blob, against `curl -o /dev/null` as a baseline
//!
//! Each measurement is run `--reps` times (default 3), interleaving the clients, and the median
//! is reported. Client CPU time is CLOCK_PROCESS_CPUTIME_ID (the server is another process,
//! so it is not counted). Every ranged response is checked byte for byte against the blob.
//!
//! Usage: http-client-bench [--reps N] [--size-mib N]
//! Build: cargo build --release --features ureq,reqwest

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

const SEED: u64 = 0x6e79_6475_735f_6862; // "nydus_hb"

// ---------------------------------------------------------------- data

fn splitmix(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Deterministic pseudo-random blob: server and client generate the same bytes.
fn gen_blob(size: usize) -> Vec<u8> {
    let mut v = vec![0u8; size];
    let mut s = SEED;
    for chunk in v.chunks_mut(8) {
        let x = splitmix(&mut s).to_le_bytes();
        chunk.copy_from_slice(&x[..chunk.len()]);
    }
    v
}

// ---------------------------------------------------------------- server

static CONNS: AtomicU64 = AtomicU64::new(0);

fn serve(size: usize, port_file: Option<String>) -> io::Result<()> {
    let blob: &'static [u8] = Box::leak(gen_blob(size).into_boxed_slice());
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let port = listener.local_addr()?.port();
    // Tell the parent we are ready (after the blob exists).
    println!("{port}");
    io::stdout().flush()?;
    if let Some(p) = port_file {
        std::fs::write(p, port.to_string())?;
    }
    for stream in listener.incoming() {
        let Ok(stream) = stream else { continue };
        CONNS.fetch_add(1, Ordering::Relaxed);
        std::thread::spawn(move || {
            let _ = handle_conn(stream, blob);
        });
    }
    Ok(())
}

enum RangeSpec {
    Full,
    Part(usize, usize), // inclusive
    Unsatisfiable,
}

fn parse_range(v: &str, len: usize) -> RangeSpec {
    let Some(spec) = v.trim().strip_prefix("bytes=") else { return RangeSpec::Full };
    if spec.contains(',') {
        return RangeSpec::Full; // multi-range not supported: send it all (allowed by RFC 9110)
    }
    let Some((a, b)) = spec.split_once('-') else { return RangeSpec::Unsatisfiable };
    let (a, b) = (a.trim(), b.trim());
    let r = if a.is_empty() {
        // suffix: last N bytes
        match b.parse::<usize>() {
            Ok(0) | Err(_) => return RangeSpec::Unsatisfiable,
            Ok(n) => (len.saturating_sub(n), len - 1),
        }
    } else {
        let Ok(start) = a.parse::<usize>() else { return RangeSpec::Unsatisfiable };
        let end = if b.is_empty() {
            len - 1
        } else {
            match b.parse::<usize>() {
                Ok(e) => e.min(len - 1),
                Err(_) => return RangeSpec::Unsatisfiable,
            }
        };
        (start, end)
    };
    if r.0 >= len || r.0 > r.1 {
        RangeSpec::Unsatisfiable
    } else {
        RangeSpec::Part(r.0, r.1)
    }
}

fn handle_conn(stream: TcpStream, blob: &'static [u8]) -> io::Result<()> {
    stream.set_nodelay(true)?;
    let mut rd = BufReader::new(stream.try_clone()?);
    let mut w = stream;
    let mut line = String::new();
    loop {
        line.clear();
        if rd.read_line(&mut line)? == 0 {
            return Ok(());
        }
        let req = line.trim_end().to_string();
        if req.is_empty() {
            continue;
        }
        let mut parts = req.split_whitespace();
        let method = parts.next().unwrap_or("").to_string();
        let path = parts.next().unwrap_or("").to_string();
        let version = parts.next().unwrap_or("HTTP/1.0").to_string();
        let mut range = None;
        let mut close = version == "HTTP/1.0";
        let mut req_body = 0usize;
        loop {
            line.clear();
            if rd.read_line(&mut line)? == 0 {
                return Ok(());
            }
            let h = line.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':') {
                let v = v.trim();
                match k.trim().to_ascii_lowercase().as_str() {
                    "range" => range = Some(v.to_string()),
                    "connection" => {
                        if v.eq_ignore_ascii_case("close") {
                            close = true
                        } else if v.eq_ignore_ascii_case("keep-alive") {
                            close = false
                        }
                    }
                    "content-length" => req_body = v.parse().unwrap_or(0),
                    _ => {}
                }
            }
        }
        if req_body > 0 {
            io::copy(&mut (&mut rd).take(req_body as u64), &mut io::sink())?;
        }
        let conn_hdr = if close { "close" } else { "keep-alive" };
        let mut out: Vec<u8>;
        let mut body: &[u8] = &[];
        if path == "/conns" {
            let b = CONNS.load(Ordering::Relaxed).to_string();
            out = format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: {conn_hdr}\r\n\r\n{b}",
                b.len()
            )
            .into_bytes();
        } else if path != "/blob" || (method != "GET" && method != "HEAD") {
            out = format!("HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: {conn_hdr}\r\n\r\n")
                .into_bytes();
        } else {
            let len = blob.len();
            let spec = range.as_deref().map_or(RangeSpec::Full, |r| parse_range(r, len));
            match spec {
                RangeSpec::Full => {
                    out = format!(
                        "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nAccept-Ranges: bytes\r\nContent-Length: {len}\r\nConnection: {conn_hdr}\r\n\r\n"
                    )
                    .into_bytes();
                    body = blob;
                }
                RangeSpec::Part(a, b) => {
                    out = format!(
                        "HTTP/1.1 206 Partial Content\r\nContent-Type: application/octet-stream\r\nAccept-Ranges: bytes\r\nContent-Range: bytes {a}-{b}/{len}\r\nContent-Length: {}\r\nConnection: {conn_hdr}\r\n\r\n",
                        b - a + 1
                    )
                    .into_bytes();
                    body = &blob[a..=b];
                }
                RangeSpec::Unsatisfiable => {
                    out = format!(
                        "HTTP/1.1 416 Range Not Satisfiable\r\nContent-Range: bytes */{len}\r\nContent-Length: 0\r\nConnection: {conn_hdr}\r\n\r\n"
                    )
                    .into_bytes();
                }
            }
        }
        if method == "HEAD" {
            body = &[];
        }
        // Small bodies go out with the header in one write; large ones in a second write.
        if body.len() <= 64 * 1024 {
            out.extend_from_slice(body);
            w.write_all(&out)?;
        } else {
            w.write_all(&out)?;
            w.write_all(body)?;
        }
        if close {
            return Ok(());
        }
    }
}

struct Server {
    child: Child,
    port: u16,
}

impl Server {
    fn start(size_mib: usize) -> Server {
        let exe = std::env::current_exe().expect("current_exe");
        let mut child = Command::new(exe)
            .args(["--serve", &size_mib.to_string()])
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn server");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).expect("server port");
        let port = line.trim().parse().expect("server port number");
        Server { child, port }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}/blob", self.port)
    }

    /// Connections the server has accepted so far (this query itself opens one).
    fn conns(&self) -> u64 {
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        s.write_all(b"GET /conns HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").unwrap();
        let mut r = String::new();
        s.read_to_string(&mut r).unwrap();
        r.rsplit("\r\n\r\n").next().unwrap().trim().parse::<u64>().unwrap()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---------------------------------------------------------------- clients

trait Client: Send + Sync {
    fn name(&self) -> &'static str;
    /// GET bytes [start, start+len) into `out` (cleared first); must be a 206.
    fn get_range(&self, start: u64, len: u64, out: &mut Vec<u8>) -> Result<(), String>;
    /// GET the whole blob, discarding it through `buf`; returns the byte count.
    fn get_full(&self, buf: &mut [u8]) -> Result<u64, String>;
}

fn drain(r: &mut dyn Read, buf: &mut [u8]) -> io::Result<u64> {
    let mut n = 0u64;
    loop {
        match r.read(buf) {
            Ok(0) => return Ok(n),
            Ok(k) => n += k as u64,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

#[cfg(feature = "ureq")]
mod ureq_client {
    use super::*;

    pub struct Ureq {
        agent: ureq::Agent,
        url: String,
    }

    impl Ureq {
        pub fn new(url: &str) -> Self {
            // The configuration a storage backend would use: bounded connect and per-read
            // timeouts, no redirect following (we handle 3xx ourselves to drop Authorization),
            // HTTP errors as responses, a pool big enough for our worker threads.
            let config = ureq::Agent::config_builder()
                .timeout_connect(Some(Duration::from_secs(5)))
                .timeout_per_read(Some(Duration::from_secs(30)))
                .max_redirects(0)
                .http_status_as_error(false)
                .max_idle_connections(32)
                .max_idle_connections_per_host(16)
                .proxy(None);
            // Optional knob to see whether ureq's 128 KiB default input buffer matters.
            let config = match std::env::var("UREQ_INPUT_BUF").ok().and_then(|v| v.parse().ok()) {
                Some(n) => config.input_buffer_size(n),
                None => config,
            }
            .build();
            Ureq { agent: config.into(), url: url.to_string() }
        }
    }

    impl Client for Ureq {
        fn name(&self) -> &'static str {
            "ureq"
        }
        fn get_range(&self, start: u64, len: u64, out: &mut Vec<u8>) -> Result<(), String> {
            let mut resp = self
                .agent
                .get(&self.url)
                .header("Range", format!("bytes={}-{}", start, start + len - 1))
                .call()
                .map_err(|e| e.to_string())?;
            if resp.status().as_u16() != 206 {
                return Err(format!("status {}", resp.status()));
            }
            out.clear();
            resp.body_mut().as_reader().read_to_end(out).map_err(|e| e.to_string())?;
            Ok(())
        }
        fn get_full(&self, buf: &mut [u8]) -> Result<u64, String> {
            let mut resp = self.agent.get(&self.url).call().map_err(|e| e.to_string())?;
            if resp.status().as_u16() != 200 {
                return Err(format!("status {}", resp.status()));
            }
            drain(&mut resp.body_mut().as_reader(), buf).map_err(|e| e.to_string())
        }
    }
}

#[cfg(any(feature = "reqwest", feature = "reqwest-ring"))]
mod reqwest_client {
    use super::*;

    pub struct Reqwest {
        client: reqwest::blocking::Client,
        url: String,
    }

    impl Reqwest {
        pub fn new(url: &str) -> Self {
            #[cfg(all(feature = "reqwest-ring", not(feature = "reqwest")))]
            let _ = rustls::crypto::ring::default_provider().install_default();
            // Same policy as the ureq client. reqwest's blocking `timeout` bounds the wait
            // for the response head and each body read; there is no separate read timeout.
            let client = reqwest::blocking::Client::builder()
                .connect_timeout(Duration::from_secs(5))
                .timeout(Duration::from_secs(30))
                .redirect(reqwest::redirect::Policy::none())
                .pool_max_idle_per_host(16)
                .no_proxy()
                .build()
                .expect("reqwest client");
            Reqwest { client, url: url.to_string() }
        }
    }

    impl Client for Reqwest {
        fn name(&self) -> &'static str {
            "reqwest"
        }
        fn get_range(&self, start: u64, len: u64, out: &mut Vec<u8>) -> Result<(), String> {
            let mut resp = self
                .client
                .get(&self.url)
                .header(reqwest::header::RANGE, format!("bytes={}-{}", start, start + len - 1))
                .send()
                .map_err(|e| e.to_string())?;
            if resp.status().as_u16() != 206 {
                return Err(format!("status {}", resp.status()));
            }
            out.clear();
            resp.read_to_end(out).map_err(|e| e.to_string())?;
            Ok(())
        }
        fn get_full(&self, buf: &mut [u8]) -> Result<u64, String> {
            let mut resp = self.client.get(&self.url).send().map_err(|e| e.to_string())?;
            if resp.status().as_u16() != 200 {
                return Err(format!("status {}", resp.status()));
            }
            drain(&mut resp, buf).map_err(|e| e.to_string())
        }
    }
}

fn make_clients(url: &str) -> Vec<Box<dyn Client>> {
    #[allow(unused_mut)]
    let mut v: Vec<Box<dyn Client>> = Vec::new();
    #[cfg(feature = "ureq")]
    v.push(Box::new(ureq_client::Ureq::new(url)));
    #[cfg(any(feature = "reqwest", feature = "reqwest-ring"))]
    v.push(Box::new(reqwest_client::Reqwest::new(url)));
    let _ = url;
    v
}

// ---------------------------------------------------------------- measurement helpers

#[repr(C)]
struct Timespec {
    tv_sec: i64,
    tv_nsec: i64,
}
extern "C" {
    fn clock_gettime(clk: i32, ts: *mut Timespec) -> i32;
}
const CLOCK_PROCESS_CPUTIME_ID: i32 = 2;

/// CPU time of this process in seconds, all threads (including reqwest's runtime thread).
/// The server is a separate process and is not counted.
fn cpu_secs() -> f64 {
    let mut ts = Timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: plain libc call (std links libc) writing into a properly sized struct.
    let rc = unsafe { clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime");
    ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    let idx = ((p / 100.0) * (sorted.len() as f64 - 1.0)).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

#[derive(Default, Clone)]
struct Sample {
    mibs: f64,
    cpu_s_per_gib: f64,
    p50_us: f64,
    p99_us: f64,
    cpu_us_per_req: f64,
    conns: u64,
}

fn check(blob: &[u8], start: u64, buf: &[u8], len: u64) -> Result<(), String> {
    let s = start as usize;
    if buf.len() as u64 != len || buf != &blob[s..s + len as usize] {
        return Err(format!("bad body for range at {start} (+{len}), got {} bytes", buf.len()));
    }
    Ok(())
}

/// (a) sequential 1 MiB ranged GETs over the whole blob, one thread.
fn bench_seq(c: &dyn Client, srv: &Server, blob: &[u8]) -> Result<Sample, String> {
    const STEP: u64 = 1 << 20;
    let size = blob.len() as u64;
    let mut buf = Vec::with_capacity(STEP as usize + 64);
    let c0 = srv.conns();
    let cpu0 = cpu_secs();
    let t0 = Instant::now();
    let mut off = 0;
    while off < size {
        let len = STEP.min(size - off);
        c.get_range(off, len, &mut buf)?;
        check(blob, off, &buf, len)?;
        off += len;
    }
    let el = t0.elapsed().as_secs_f64();
    let cpu = cpu_secs() - cpu0;
    Ok(Sample {
        mibs: mib(size) / el,
        cpu_s_per_gib: cpu / (mib(size) / 1024.0),
        conns: srv.conns() - c0 - 1,
        ..Default::default()
    })
}

/// (b) `threads` threads doing random `len`-byte ranged GETs, `total` requests in all.
fn bench_random_mt(
    c: &dyn Client,
    srv: &Server,
    blob: &[u8],
    threads: usize,
    total: usize,
    len: u64,
) -> Result<Sample, String> {
    let size = blob.len() as u64;
    let per = total / threads;
    let c0 = srv.conns();
    let cpu0 = cpu_secs();
    let t0 = Instant::now();
    let lats: Vec<Result<Vec<f64>, String>> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..threads)
            .map(|t| {
                s.spawn(move || -> Result<Vec<f64>, String> {
                    let mut rng = SEED ^ (t as u64 + 1).wrapping_mul(0x1234_5678_9abc);
                    let mut buf = Vec::with_capacity(len as usize + 64);
                    let mut lat = Vec::with_capacity(per);
                    for _ in 0..per {
                        let off = (splitmix(&mut rng) % (size - len + 1)) & !4095;
                        let t = Instant::now();
                        c.get_range(off, len, &mut buf)?;
                        lat.push(t.elapsed().as_secs_f64() * 1e6);
                        check(blob, off, &buf, len)?;
                    }
                    Ok(lat)
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let el = t0.elapsed().as_secs_f64();
    let cpu = cpu_secs() - cpu0;
    let mut all = Vec::with_capacity(total);
    for l in lats {
        all.extend(l?);
    }
    all.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let bytes = (per * threads) as u64 * len;
    Ok(Sample {
        mibs: mib(bytes) / el,
        cpu_s_per_gib: cpu / (mib(bytes) / 1024.0),
        p50_us: pct(&all, 50.0),
        p99_us: pct(&all, 99.0),
        cpu_us_per_req: cpu * 1e6 / (per * threads) as f64,
        conns: srv.conns() - c0 - 1,
    })
}

/// (d) one full GET of the blob through the client.
fn bench_full(c: &dyn Client, srv: &Server, size: u64) -> Result<Sample, String> {
    let mut buf = vec![0u8; 256 * 1024];
    let c0 = srv.conns();
    let cpu0 = cpu_secs();
    let t0 = Instant::now();
    let n = c.get_full(&mut buf)?;
    let el = t0.elapsed().as_secs_f64();
    let cpu = cpu_secs() - cpu0;
    if n != size {
        return Err(format!("full GET returned {n} of {size} bytes"));
    }
    Ok(Sample {
        mibs: mib(size) / el,
        cpu_s_per_gib: cpu / (mib(size) / 1024.0),
        conns: srv.conns() - c0 - 1,
        ..Default::default()
    })
}

/// (d) baseline: one full `curl` GET to /dev/null, timed by curl itself (time_total).
fn bench_curl(srv: &Server, size: u64) -> Result<Sample, String> {
    let out = Command::new("curl")
        .args(["-s", "-S", "-f", "-o", "/dev/null", "-w", "%{time_total} %{size_download}"])
        .arg(srv.url())
        .output()
        .map_err(|e| format!("curl: {e}"))?;
    if !out.status.success() {
        return Err(format!("curl failed: {}", String::from_utf8_lossy(&out.stderr)));
    }
    let s = String::from_utf8_lossy(&out.stdout).to_string();
    let mut it = s.split_whitespace();
    let t: f64 = it.next().and_then(|x| x.parse().ok()).ok_or("curl time")?;
    let n: u64 = it.next().and_then(|x| x.parse().ok()).ok_or("curl size")?;
    if n != size {
        return Err(format!("curl got {n} bytes"));
    }
    Ok(Sample { mibs: mib(size) / t, ..Default::default() })
}

// ---------------------------------------------------------------- main

fn med_sample(v: &[Sample]) -> Sample {
    let f = |g: fn(&Sample) -> f64| median(&mut v.iter().map(g).collect::<Vec<_>>());
    Sample {
        mibs: f(|s| s.mibs),
        cpu_s_per_gib: f(|s| s.cpu_s_per_gib),
        p50_us: f(|s| s.p50_us),
        p99_us: f(|s| s.p99_us),
        cpu_us_per_req: f(|s| s.cpu_us_per_req),
        conns: f(|s| s.conns as f64) as u64,
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let mut reps = 3usize;
    let mut size_mib = 256usize;
    let mut i = 1;
    while i < args.len() {
        match args[i].as_str() {
            "--serve" => {
                let mib: usize = args[i + 1].parse().expect("--serve MiB");
                serve(mib << 20, None).expect("server");
                return;
            }
            "--reps" => {
                reps = args[i + 1].parse().expect("--reps N");
                i += 1;
            }
            "--size-mib" => {
                size_mib = args[i + 1].parse().expect("--size-mib N");
                i += 1;
            }
            a => panic!("unknown argument {a}"),
        }
        i += 1;
    }

    let size = (size_mib as u64) << 20;
    let blob = gen_blob(size as usize);
    let srv = Server::start(size_mib);
    let url = srv.url();
    let clients = make_clients(&url);
    if clients.is_empty() {
        eprintln!("no client compiled in: build with --features ureq,reqwest");
        std::process::exit(2);
    }
    eprintln!("server on {url}, blob {size_mib} MiB, {reps} reps, clients: {:?}",
        clients.iter().map(|c| c.name()).collect::<Vec<_>>());

    // Warm up: one request per client (connection + lazy init), and let the server settle.
    let mut tmp = Vec::new();
    for c in &clients {
        c.get_range(0, 4096, &mut tmp).expect("warm-up");
        check(&blob, 0, &tmp, 4096).expect("warm-up body");
    }

    let scen = ["seq 1 MiB", "4 thr × 128 KiB", "4 KiB latency", "full GET"];
    // results[client][scenario] = samples
    let mut res: Vec<Vec<Vec<Sample>>> = vec![vec![Vec::new(); scen.len()]; clients.len()];
    let mut curl = Vec::new();
    for rep in 0..reps {
        for (ci, c) in clients.iter().enumerate() {
            let c = c.as_ref();
            let r = [
                bench_seq(c, &srv, &blob),
                bench_random_mt(c, &srv, &blob, 4, 4096, 128 * 1024),
                bench_random_mt(c, &srv, &blob, 1, 2000, 4096),
                bench_full(c, &srv, size),
            ];
            for (si, s) in r.into_iter().enumerate() {
                let s = s.unwrap_or_else(|e| panic!("{} {}: {e}", c.name(), scen[si]));
                eprintln!(
                    "rep {rep} {:8} {:16} {:8.1} MiB/s  cpu {:5.2} s/GiB  p50 {:7.1} us  p99 {:7.1} us  cpu/req {:6.1} us  conns {}",
                    c.name(), scen[si], s.mibs, s.cpu_s_per_gib, s.p50_us, s.p99_us, s.cpu_us_per_req, s.conns
                );
                res[ci][si].push(s);
            }
        }
        let s = bench_curl(&srv, size).expect("curl");
        eprintln!("rep {rep} {:8} {:16} {:8.1} MiB/s", "curl", "full GET", s.mibs);
        curl.push(s);
    }

    // Markdown summary (medians).
    println!("Medians of {reps} runs; blob {size_mib} MiB on 127.0.0.1; CPU = client process only.\n");
    println!("| client | (a) seq 1 MiB MiB/s | (a) CPU s/GiB | (b) 4×128 KiB MiB/s | (b) p50 / p99 µs | (b) CPU s/GiB | (b) conns | (c) 4 KiB p50 µs | (c) p99 µs | (c) CPU µs/req | (d) full GET MiB/s | (d) CPU s/GiB |");
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|");
    for (ci, c) in clients.iter().enumerate() {
        let m: Vec<Sample> = res[ci].iter().map(|v| med_sample(v)).collect();
        println!(
            "| {} | {:.0} | {:.2} | {:.0} | {:.0} / {:.0} | {:.2} | {} | {:.1} | {:.1} | {:.1} | {:.0} | {:.2} |",
            c.name(),
            m[0].mibs, m[0].cpu_s_per_gib,
            m[1].mibs, m[1].p50_us, m[1].p99_us, m[1].cpu_s_per_gib, m[1].conns,
            m[2].p50_us, m[2].p99_us, m[2].cpu_us_per_req,
            m[3].mibs, m[3].cpu_s_per_gib,
        );
    }
    let cm = med_sample(&curl);
    println!("| curl (baseline) | – | – | – | – | – | – | – | – | – | {:.0} | – |", cm.mibs);
}
