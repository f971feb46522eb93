//! `recompose-fuzz TARGET [--seconds N] [--max-execs N] [--seed S] [--out DIR] [--input FILE]`:
//! runs one fuzz target of [`recompose_benches::fuzz`] with the mutation engine and prints its
//! statistics as one JSON line (with `--input`, runs the one input and prints its verdict). `cargo xtask fuzz` starts one such process per target, so that an abort (a
//! refused allocation, a stack overflow) or a hang ends only that target's run; the input it
//! died on is left in `DIR/current`.
//!
//! The global allocator refuses any single allocation above
//! `ALLOC_CAP` bytes.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use recompose_benches::fuzz::{ALLOC_CAP, engine, targets};
use recompose_benches::workspace::root;
use recompose_core::process::CappedAlloc;

#[global_allocator]
static GLOBAL: CappedAlloc<mimalloc::MiMalloc> = CappedAlloc::new(mimalloc::MiMalloc, ALLOC_CAP);

const USAGE: &str = "usage: recompose-fuzz TARGET [--seconds N] [--max-execs N] [--seed S] [--out DIR] [--input FILE]";

fn main() -> Result<()> {
    recompose_core::process::prepare();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(name) = args.first() else {
        bail!("{USAGE}")
    };
    let target = targets::target(name).with_context(|| {
        let names: Vec<&str> = targets::TARGETS.iter().map(|t| t.name).collect();
        format!("unknown target `{name}` (one of {})", names.join(", "))
    })?;
    let (mut seconds, mut max_execs, mut seed) = (10.0, u64::MAX, 0u64);
    let mut out = root().join("target/fuzz").join(target.name);
    let mut input = None;
    let mut rest = args[1..].iter();
    while let Some(flag) = rest.next() {
        let value = rest
            .next()
            .with_context(|| format!("{flag} needs a value\n{USAGE}"))?;
        match flag.as_str() {
            "--seconds" => seconds = value.parse()?,
            "--max-execs" => max_execs = value.parse()?,
            "--seed" => seed = value.parse()?,
            "--out" => out = PathBuf::from(value),
            "--input" => input = Some(PathBuf::from(value)),
            _ => bail!("unknown option {flag}\n{USAGE}"),
        }
    }
    let scratch = targets::Scratch::new(out.join("scratch"), root())?;
    let seeds = (target.prepare)(&scratch)?;
    if let Some(path) = input {
        let bytes = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
        println!("{:?}", (target.run)(&scratch, &bytes));
        return Ok(());
    }
    engine::quiet_panics();
    let stats = engine::fuzz(target, &scratch, seeds, seconds, max_execs, seed, &out)?;
    println!("{}", stats.to_json(target.name));
    Ok(())
}
