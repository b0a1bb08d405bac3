//! Build an image without Python: `cargo run --release --example build_image SRC BOOT BLOBDIR [zstd|lz4_block|none]`.
//! Used to measure the core alone (peak RSS, throughput).
// A command-line example: printing the report is its output.
#![allow(clippy::print_stdout)]

use nydus_hybrid_core::builder::{build, BuildOptions};
use nydus_hybrid_core::layout::Compressor;
use std::path::Path;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 4 {
        eprintln!("usage: build_image SRC BOOTSTRAP BLOB_DIR [compressor]");
        std::process::exit(2);
    }
    let compressor = args.get(4).and_then(|c| Compressor::parse(c)).unwrap_or(Compressor::Zstd);
    let opts = BuildOptions { compressor, progress: false, ..Default::default() };
    match build(Path::new(&args[1]), Some(Path::new(&args[2])), Path::new(&args[3]), &opts) {
        Ok(r) => println!("{}", serde_json::to_string(&r).unwrap()),
        Err(e) => {
            eprintln!("build_image: {e}");
            std::process::exit(1);
        }
    }
}
