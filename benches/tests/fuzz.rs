//! The fuzz targets of `cargo xtask fuzz` on their seeds and on the committed regression inputs
//! (`fuzz/regressions/`), and a short run of the mutation engine per target (about two seconds
//! each; `cargo xtask fuzz` runs them longer).

use anyhow::{Result, ensure};
use recompose_benches::fuzz::engine;
use recompose_benches::fuzz::targets::{Scratch, TARGETS};
use recompose_benches::fuzz::xtask::replay;
use recompose_benches::workspace::root;

/// Every seed is accepted or rejected as bad input, and so is every regression input: the
/// crashes they once caused stay fixed.
#[test]
fn seeds_and_regression_inputs_pass() -> Result<()> {
    let root = root();
    let mut regressions = 0;
    for t in &TARGETS {
        regressions += replay(t, &root)?.len();
    }
    // The eight inputs listed in fuzz/regressions/README.md.
    ensure!(
        regressions >= 8,
        "only {regressions} regression inputs found"
    );
    Ok(())
}

/// A short mutation run per target: no panic, no broken property, no internal error.
#[test]
fn short_mutation_runs_find_nothing() -> Result<()> {
    let root = root();
    for (i, t) in TARGETS.iter().enumerate() {
        let out = std::env::temp_dir().join(format!(
            "recompose-fuzz-test-{}-{}",
            t.name,
            std::process::id()
        ));
        let scratch = Scratch::new(out.join("scratch"), root.clone())?;
        let seeds = (t.prepare)(&scratch)?;
        let n_seeds = seeds.len() as u64;
        let stats = engine::fuzz(t, &scratch, seeds, 2.0, 400, i as u64, &out)?;
        ensure!(
            stats.crashes.is_empty() && stats.internal.is_empty(),
            "{}: {:?} {:?}",
            t.name,
            stats.crashes,
            stats.internal
        );
        ensure!(stats.execs > n_seeds, "{}: no mutant ran", t.name);
        ensure!(
            stats.accepted >= 1 && stats.rejected >= 1,
            "{}: {} accepted, {} rejected",
            t.name,
            stats.accepted,
            stats.rejected
        );
        let _ = std::fs::remove_dir_all(&out);
    }
    Ok(())
}
