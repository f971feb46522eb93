//! `cargo xtask fuzz [TARGET] [--seconds N] [--seed S] [--engine mutation|afl] [--report]`.
//!
//! Builds the fuzz program and runs each target (or the one named) for `N` seconds (default 60)
//! in its own process, after replaying the target's regression inputs (`fuzz/regressions/`,
//! minimized inputs of crashes that were fixed). `--report` writes `docs/results/fuzz.md` with
//! the command in its header. The exit status is non-zero when any target crashed, hung,
//! broke a property or exceeded the allocation cap; crashing inputs are left in
//! `target/fuzz/TARGET/`.
//!
//! The mutation engine is the default. `--engine afl` runs the same targets under AFL++ through
//! `cargo afl` (`cargo install cargo-afl` once) with the harness in `fuzz/`.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};
use serde_json::Value;

use super::targets::{Scratch, TARGETS, Target, Verdict, target};
use crate::workspace::{cargo, cargo_bin, root, run};

/// The options of `cargo xtask fuzz`.
#[derive(Debug, Clone, PartialEq)]
pub struct FuzzArgs {
    /// One target, or all.
    pub target: Option<String>,
    /// Seconds per target.
    pub seconds: u64,
    /// Seed of the mutation engine.
    pub seed: u64,
    /// `mutation` or `afl`.
    pub engine: String,
    /// Write `docs/results/fuzz.md`.
    pub report: bool,
}

const USAGE: &str =
    "usage: cargo xtask fuzz [TARGET] [--seconds N] [--seed S] [--engine mutation|afl] [--report]";

impl FuzzArgs {
    /// Parses the arguments after `fuzz`.
    ///
    /// # Errors
    ///
    /// An unknown option, target or engine, or a value that does not parse.
    pub fn parse(args: &[&str]) -> Result<Self> {
        let mut a = Self {
            target: None,
            seconds: 60,
            seed: 0,
            engine: "mutation".into(),
            report: false,
        };
        let mut it = args.iter();
        while let Some(&arg) = it.next() {
            let mut value = || {
                it.next()
                    .copied()
                    .with_context(|| format!("{arg} needs a value\n{USAGE}"))
            };
            match arg {
                "--seconds" => a.seconds = value()?.parse()?,
                "--seed" => a.seed = value()?.parse()?,
                "--engine" => a.engine = value()?.to_string(),
                "--report" => a.report = true,
                name if !name.starts_with('-') && a.target.is_none() => {
                    if target(name).is_none() {
                        let names: Vec<&str> = TARGETS.iter().map(|t| t.name).collect();
                        bail!("unknown fuzz target `{name}` (one of {})", names.join(", "));
                    }
                    a.target = Some(name.to_string());
                }
                other => bail!("unknown option {other}\n{USAGE}"),
            }
        }
        if a.engine != "mutation" && a.engine != "afl" {
            bail!("unknown engine `{}` (mutation or afl)\n{USAGE}", a.engine);
        }
        Ok(a)
    }
}

/// One target's line of the report.
#[derive(Debug, Clone, Default)]
struct Row {
    name: &'static str,
    reader: &'static str,
    regressions: Vec<String>,
    execs: u64,
    seconds: f64,
    accepted: Option<u64>,
    rejected: Option<u64>,
    internal: Vec<(String, u64)>,
    corpus: u64,
    failures: Vec<String>,
}

/// Runs `cargo xtask fuzz`.
///
/// # Errors
///
/// If a build or a process fails to start, or when any target found a failure.
pub fn fuzz(args: &FuzzArgs) -> Result<()> {
    let root = root();
    let chosen: Vec<&'static Target> = match &args.target {
        Some(n) => vec![target(n).expect("checked by parse")],
        None => TARGETS.iter().collect(),
    };
    let mut rows = Vec::new();
    for t in &chosen {
        rows.push(Row {
            name: t.name,
            reader: t.reader,
            regressions: replay(t, &root)?,
            ..Row::default()
        });
    }
    match args.engine.as_str() {
        "afl" => {
            run(Command::new(cargo_bin()).args([
                "afl",
                "build",
                "--release",
                "--manifest-path",
                "fuzz/Cargo.toml",
            ]))?;
            for row in &mut rows {
                afl(row, args, &root)?;
            }
        }
        _ => {
            cargo(&[
                "build",
                "--release",
                "-p",
                "recompose-benches",
                "--bin",
                "recompose-fuzz",
            ])?;
            for row in &mut rows {
                mutation(row, args, &root)?;
            }
        }
    }
    let table = table(&rows, &args.engine);
    println!("{table}");
    if args.report {
        let command = format!(
            "cargo xtask fuzz{} --seconds {} --seed {} --engine {} --report",
            args.target
                .as_ref()
                .map(|t| format!(" {t}"))
                .unwrap_or_default(),
            args.seconds,
            args.seed,
            args.engine
        );
        let path = root.join("docs/results/fuzz.md");
        std::fs::write(&path, report(&rows, &command, &table))
            .with_context(|| format!("writing {}", path.display()))?;
        eprintln!("wrote {}", path.display());
    }
    let failed: Vec<String> = rows
        .iter()
        .flat_map(|r| r.failures.iter().map(move |f| format!("{}: {f}", r.name)))
        .collect();
    if !failed.is_empty() {
        bail!("fuzzing found failures:\n  {}", failed.join("\n  "));
    }
    Ok(())
}

/// The committed regression inputs of `t`.
pub fn regression_inputs(t: &Target, root: &Path) -> Result<Vec<PathBuf>> {
    let dir = root.join("fuzz/regressions").join(t.name);
    let mut files = Vec::new();
    if let Ok(entries) = std::fs::read_dir(&dir) {
        for e in entries {
            let p = e?.path();
            if p.is_file() && p.extension().is_none_or(|x| x != "md") {
                files.push(p);
            }
        }
    }
    files.sort();
    Ok(files)
}

/// Runs `t` on its seeds and regression inputs in this process; a panic, an internal error or
/// a broken property is an error. Returns the regression inputs' file names.
///
/// # Errors
///
/// The first input that fails, with its verdict.
pub fn replay(t: &Target, root: &Path) -> Result<Vec<String>> {
    let scratch = Scratch::new(
        root.join("target/fuzz").join(t.name).join("replay"),
        root.to_path_buf(),
    )?;
    let seeds = (t.prepare)(&scratch)?;
    let files = regression_inputs(t, root)?;
    let mut inputs: Vec<(String, Vec<u8>)> = seeds
        .into_iter()
        .enumerate()
        .map(|(i, s)| (format!("seed {i}"), s))
        .collect();
    for f in &files {
        inputs.push((f.display().to_string(), std::fs::read(f)?));
    }
    for (what, input) in inputs {
        let v =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| (t.run)(&scratch, &input)));
        match v {
            Ok(Verdict::Accepted | Verdict::Rejected(_)) => {}
            Ok(Verdict::Internal(m)) => bail!("{}: {what}: internal error: {m}", t.name),
            Ok(Verdict::Violation(m)) => bail!("{}: {what}: {m}", t.name),
            Err(_) => bail!("{}: {what}: panicked", t.name),
        }
    }
    Ok(files
        .iter()
        .filter_map(|f| f.file_name().map(|n| n.to_string_lossy().into_owned()))
        .collect())
}

/// Runs one target with the mutation engine in a child process.
fn mutation(row: &mut Row, args: &FuzzArgs, root: &Path) -> Result<()> {
    let out = root.join("target/fuzz").join(row.name);
    let bin = root.join("target/release/recompose-fuzz");
    eprintln!("== fuzz {} ({} s, mutation engine)", row.name, args.seconds);
    let output = Command::new(&bin)
        .args([
            row.name,
            "--seconds",
            &args.seconds.to_string(),
            "--seed",
            &args.seed.to_string(),
            "--out",
            &out.display().to_string(),
        ])
        .current_dir(root)
        .output()
        .with_context(|| format!("starting {}", bin.display()))?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    let Some(stats) = stdout
        .lines()
        .rev()
        .find_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|_| output.status.success())
    else {
        // The process died on an input: keep it for the regression corpus.
        let kept = out.join("died-on");
        let _ = std::fs::copy(out.join("current"), &kept);
        let last = stderr
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("");
        row.failures.push(format!(
            "the process ended with {} ({last}); input in {}",
            output.status,
            kept.display()
        ));
        return Ok(());
    };
    let n = |k: &str| stats[k].as_u64().unwrap_or(0);
    row.execs = n("execs");
    row.accepted = Some(n("accepted"));
    row.rejected = Some(n("rejected"));
    row.corpus = n("corpus");
    row.seconds = stats["seconds"].as_f64().unwrap_or(0.0);
    if let Some(m) = stats["internal"].as_object() {
        row.internal = m
            .iter()
            .map(|(k, v)| (k.clone(), v.as_u64().unwrap_or(0)))
            .collect();
    }
    if let Some(c) = stats["crashes"].as_array() {
        for crash in c {
            row.failures.push(format!(
                "{} (input {})",
                crash[0].as_str().unwrap_or(""),
                crash[1].as_str().unwrap_or("")
            ));
        }
    }
    for (m, _) in &row.internal {
        row.failures
            .push(format!("internal error for a malformed input: {m}"));
    }
    Ok(())
}

/// Runs one target under AFL++.
fn afl(row: &mut Row, args: &FuzzArgs, root: &Path) -> Result<()> {
    let out = root.join("target/fuzz").join(row.name).join("afl");
    let seeds = root.join("target/fuzz").join(row.name).join("afl-seeds");
    let _ = std::fs::remove_dir_all(&out);
    let _ = std::fs::remove_dir_all(&seeds);
    std::fs::create_dir_all(&seeds)?;
    let t = target(row.name).expect("a known target");
    let scratch = Scratch::new(
        root.join("target/fuzz").join(row.name).join("afl-prep"),
        root.to_path_buf(),
    )?;
    for (i, s) in (t.prepare)(&scratch)?.iter().enumerate() {
        std::fs::write(seeds.join(format!("seed-{i}")), s)?;
    }
    eprintln!("== fuzz {} ({} s, AFL++)", row.name, args.seconds);
    let status = Command::new(cargo_bin())
        .args(["afl", "fuzz", "-i"])
        .arg(&seeds)
        .arg("-o")
        .arg(&out)
        .args([
            "-V",
            &args.seconds.to_string(),
            "-t",
            "10000",
            "-m",
            "none",
            "--",
        ])
        .arg(root.join("fuzz/target/release/recompose-afl"))
        .arg(row.name)
        .env("AFL_NO_UI", "1")
        .env("AFL_SKIP_CPUFREQ", "1")
        .env("AFL_I_DONT_CARE_ABOUT_MISSING_CRASHES", "1")
        .env("AFL_NO_AFFINITY", "1")
        .current_dir(root)
        .stdout(std::process::Stdio::null())
        .status()
        .context("starting cargo afl fuzz")?;
    let stats_path = out.join("default/fuzzer_stats");
    let text = std::fs::read_to_string(&stats_path).with_context(|| {
        format!(
            "afl-fuzz ended with {status} and left no {}",
            stats_path.display()
        )
    })?;
    let field = |k: &str| -> u64 {
        text.lines()
            .find_map(|l| l.split_once(':').filter(|(a, _)| a.trim() == k))
            .and_then(|(_, v)| v.trim().parse().ok())
            .unwrap_or(0)
    };
    row.execs = field("execs_done");
    row.seconds = field("run_time") as f64;
    row.corpus = field("corpus_count");
    for (kind, n) in [
        ("crash", field("saved_crashes")),
        ("hang", field("saved_hangs")),
    ] {
        if n > 0 {
            row.failures.push(format!(
                "{n} {kind} input(s) in {}",
                out.join("default").join(format!("{kind}es")).display()
            ));
        }
    }
    Ok(())
}

fn table(rows: &[Row], engine: &str) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "| target | engine | seconds | executions | execs/s | accepted | rejected | internal errors | corpus | failures | regression inputs |"
    );
    let _ = writeln!(s, "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for r in rows {
        let opt = |v: Option<u64>| v.map_or("–".to_string(), |v| v.to_string());
        let internal: u64 = r.internal.iter().map(|(_, n)| n).sum();
        let _ = writeln!(
            s,
            "| `{}` | {engine} | {:.0} | {} | {:.0} | {} | {} | {internal} | {} | {} | {} |",
            r.name,
            r.seconds,
            r.execs,
            r.execs as f64 / r.seconds.max(1e-9),
            opt(r.accepted),
            opt(r.rejected),
            r.corpus,
            r.failures.len(),
            r.regressions.len(),
        );
    }
    s
}

fn report(rows: &[Row], command: &str, table: &str) -> String {
    let mut s = format!(
        "# Fuzzing the readers of outside input\n\n\
         Generated by `{command}`; do not edit by hand.\n\n\
         Each target hands its inputs to a public reader of a library crate (see\n\
         `benches/src/fuzz/targets.rs`). A failure is a panic or abort, an input running longer\n\
         than {} s, a single allocation above {} MiB, an error for a malformed input that does not\n\
         say the input is bad (internal), or an accepted input breaking a property (non-finite\n\
         weights loaded, pixels outside their range, an expression that does not round-trip).\n\
         Regression inputs (`fuzz/regressions/TARGET/`) are minimized inputs of crashes that were\n\
         fixed; they are replayed before fuzzing and by `cargo test -p recompose-benches`.\n\n",
        super::HANG_SECONDS,
        super::ALLOC_CAP >> 20
    );
    s.push_str(table);
    s.push_str("\n## Targets\n\n");
    for r in rows {
        let _ = writeln!(s, "- `{}`: {}", r.name, r.reader);
        for f in &r.regressions {
            let _ = writeln!(s, "  - regression input `{f}`");
        }
        for (m, n) in &r.internal {
            let _ = writeln!(s, "  - internal error ({n}×): {m}");
        }
        for f in &r.failures {
            let _ = writeln!(s, "  - failure: {f}");
        }
    }
    s
}
