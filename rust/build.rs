// Embed what nydusd's `--version` and `GET /api/v1/daemon` report: the git commit, the build
// time, the profile and the compiler. The commit is read only when this crate is the top of
// its own git checkout (an sdist unpacked inside another repository must not borrow its
// commit); NYDUS_HYBRID_GIT_COMMIT overrides it. The build time is the commit's time, or
// SOURCE_DATE_EPOCH, so that a rebuild of the same commit embeds the same text.
use std::path::Path;
use std::process::Command;

fn git(dir: &Path, args: &[&str]) -> Option<String> {
    let out = Command::new("git").arg("-C").arg(dir).args(args).output().ok()?;
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn main() {
    let manifest = std::env::var("CARGO_MANIFEST_DIR").unwrap_or_default();
    let top = Path::new(&manifest).parent().unwrap_or(Path::new("."));
    let own_checkout = git(top, &["rev-parse", "--show-toplevel"]).is_some_and(|t| Path::new(&t) == top);
    let commit = std::env::var("NYDUS_HYBRID_GIT_COMMIT")
        .ok()
        .filter(|c| !c.is_empty())
        .or_else(|| own_checkout.then(|| git(top, &["rev-parse", "HEAD"])).flatten())
        .unwrap_or_else(|| "unknown".into());
    let build_time = std::env::var("SOURCE_DATE_EPOCH")
        .ok()
        .map(|t| format!("@{t}"))
        .or_else(|| own_checkout.then(|| git(top, &["show", "-s", "--format=%cI", "HEAD"])).flatten())
        .unwrap_or_else(|| "unknown".into());
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let rustc_version =
        Command::new(rustc).arg("--version").output().ok().map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string()).unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=NYDUS_HYBRID_GIT_COMMIT={commit}");
    println!("cargo:rustc-env=NYDUS_HYBRID_BUILD_TIME={build_time}");
    println!("cargo:rustc-env=NYDUS_HYBRID_PROFILE={}", std::env::var("PROFILE").unwrap_or_default());
    println!("cargo:rustc-env=NYDUS_HYBRID_RUSTC={rustc_version}");
    println!("cargo:rerun-if-env-changed=NYDUS_HYBRID_GIT_COMMIT");
    println!("cargo:rerun-if-env-changed=SOURCE_DATE_EPOCH");
    // HEAD names a branch; the branch's ref file (or packed-refs) changes with each commit.
    let git_dir = top.join(".git");
    for f in ["HEAD", "packed-refs", "index"] {
        println!("cargo:rerun-if-changed={}", git_dir.join(f).display());
    }
    if let Ok(head) = std::fs::read_to_string(git_dir.join("HEAD")) {
        if let Some(r) = head.trim().strip_prefix("ref: ") {
            println!("cargo:rerun-if-changed={}", git_dir.join(r).display());
        }
    }
}
