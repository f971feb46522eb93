//! Paths and commands of the workspace, for the tasks that build, run and write into it.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

/// The workspace root (the parent of this package's directory).
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the benches package lives in the workspace")
        .to_path_buf()
}

/// Runs `cargo` (the one running this program, when there is one) with `args` in the workspace
/// root.
pub fn cargo(args: &[&str]) -> Result<()> {
    run(Command::new(cargo_bin()).args(args))
}

/// The `cargo` binary: `$CARGO` when set, else `cargo` from the path.
pub fn cargo_bin() -> String {
    std::env::var("CARGO").unwrap_or_else(|_| "cargo".into())
}

/// Runs a command in the workspace root, echoing it on stderr; an error if it fails.
pub fn run(cmd: &mut Command) -> Result<()> {
    eprintln!("$ {cmd:?}");
    let status = cmd
        .current_dir(root())
        .status()
        .with_context(|| format!("could not start {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed with {status}");
    }
    Ok(())
}
