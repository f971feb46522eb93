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

/// The git revision of the workspace's source tree: the commit, with `-dirty` when tracked
/// files that can change a result differ from it; `unknown` outside a git checkout. What the
/// reproductions write (reports under `docs/`, models under `fixtures/`) and Markdown files do
/// not count, so that a model trained while a report is rewritten is not marked. Recorded in
/// the models the reproductions train ([`recompose_diffusion::train::TrainOptions::revision`]).
///
/// Read once, at the first call, and kept: a reproduction that runs for hours records the tree
/// it was built from even when commits land meanwhile (`xtask` calls it as it starts).
pub fn revision() -> String {
    static REVISION: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    REVISION.get_or_init(read_revision).clone()
}

fn read_revision() -> String {
    let git = |args: &[&str]| -> Option<String> {
        let out = Command::new("git")
            .args(args)
            .current_dir(root())
            .output()
            .ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
    };
    match git(&["rev-parse", "HEAD"]) {
        Some(rev) => {
            let dirty = git(&[
                "status",
                "--porcelain",
                "--untracked-files=no",
                "--",
                ".",
                ":(exclude)docs",
                ":(exclude)fixtures",
                ":(exclude,glob)**/*.md",
            ])
            .is_some_and(|s| !s.is_empty());
            if dirty { format!("{rev}-dirty") } else { rev }
        }
        None => "unknown".to_string(),
    }
}

/// How the recorded runs of a trained model read in a report: each run's short revision and the
/// step it started from, or "not recorded".
pub fn provenance_text(dir: &Path) -> String {
    let runs = recompose_diffusion::train::read_provenance(dir);
    if runs.is_empty() {
        return "not recorded".to_string();
    }
    runs.iter()
        .map(|r| {
            let short: String = r.revision.chars().take(7).collect();
            let dirty = if r.revision.ends_with("-dirty") {
                "-dirty"
            } else {
                ""
            };
            if r.from_step == 0 {
                format!("{short}{dirty}")
            } else {
                format!("{short}{dirty} (from step {})", r.from_step)
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}
