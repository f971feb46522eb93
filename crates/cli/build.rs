//! Records the git revision the binary is built from as `RECOMPOSE_REVISION` (the commit, with
//! `-dirty` when tracked files differed from it; `unknown` outside a git checkout), so that the
//! models `recompose train` writes say which code trained them.

use std::path::Path;
use std::process::Command;

fn git(dir: &Path, args: &[&str]) -> Option<String> {
    let out = Command::new("git")
        .args(args)
        .current_dir(dir)
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn main() {
    let dir = std::path::PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap_or_default());
    let revision = match git(&dir, &["rev-parse", "HEAD"]) {
        Some(rev) => {
            let dirty = git(&dir, &["status", "--porcelain", "--untracked-files=no"])
                .is_some_and(|s| !s.is_empty());
            if dirty { format!("{rev}-dirty") } else { rev }
        }
        None => "unknown".to_string(),
    };
    println!("cargo:rustc-env=RECOMPOSE_REVISION={revision}");
    // Rebuild when the commit or the index moves (commits, checkouts, staging).
    for path in ["HEAD", "index"] {
        if let Some(p) = git(&dir, &["rev-parse", "--git-path", path]) {
            println!("cargo:rerun-if-changed={}", dir.join(p).display());
        }
    }
    if let Some(head) = git(&dir, &["symbolic-ref", "-q", "HEAD"])
        && let Some(p) = git(&dir, &["rev-parse", "--git-path", &head])
    {
        println!("cargo:rerun-if-changed={}", dir.join(p).display());
    }
    println!("cargo:rerun-if-changed=build.rs");
}
