//! Paths and commands of the workspace, for the tasks that build, run and write into it.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

/// The workspace root: `RECOMPOSE_ROOT` when set; else the parent of this package's directory
/// when it exists (a program run on the machine that built it); else the current directory (a
/// binary copied to another machine and run from the repository's root, as the GPU runs are).
pub fn root() -> PathBuf {
    if let Some(dir) = std::env::var_os("RECOMPOSE_ROOT") {
        return PathBuf::from(dir);
    }
    let built = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the benches package lives in the workspace")
        .to_path_buf();
    if built.join("Cargo.toml").is_file() {
        return built;
    }
    std::env::current_dir().unwrap_or(built)
}

/// The value that follows the option `flag` in a task's arguments.
///
/// # Errors
///
/// When the arguments end after the flag.
pub fn option_value<'a>(it: &mut std::slice::Iter<'_, &'a str>, flag: &str) -> Result<&'a str> {
    it.next()
        .copied()
        .with_context(|| format!("{flag} needs a value"))
}

/// The positive whole number `v` given to the option `flag`.
///
/// # Errors
///
/// When `v` is not a whole number above zero.
pub fn positive_option(flag: &str, v: &str) -> Result<usize> {
    match v.parse::<usize>() {
        Ok(n) if n > 0 => Ok(n),
        _ => bail!("{flag} expects a positive whole number, got '{v}'"),
    }
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
/// `RECOMPOSE_REVISION`, when set, is taken instead; outside a git checkout, the file `REVISION`
/// beside the running binary (`cargo xtask gpu build` writes it: the GPU runs happen on a
/// machine without the repository's history).
pub fn revision() -> String {
    static REVISION: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    REVISION
        .get_or_init(|| {
            if let Ok(r) = std::env::var("RECOMPOSE_REVISION") {
                return r;
            }
            let r = read_revision();
            if r != "unknown" {
                return r;
            }
            std::env::current_exe()
                .ok()
                .and_then(|e| std::fs::read_to_string(e.with_file_name("REVISION")).ok())
                .map_or(r, |t| t.trim().to_string())
        })
        .clone()
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
