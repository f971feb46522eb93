//! The memory guard's estimates against the real peak: each method runs a small problem in a
//! child process (this test binary, re-run on one ignored test) that reports its resident set
//! before the run and its high-water mark after (`VmRSS` and `VmHWM` of `/proc/self/status`).
//! The estimate must cover the measured growth, and must not exceed it by more than a small
//! factor; refusals must come before any allocation.

use std::process::Command;

use candle_core::Device;
use recompose_core::memory::MemoryLimit;
use recompose_decomp::Error;
use recompose_decomp::factorize::{FactorizeConfig, Method, factorize_within, pipeline_estimate};
use recompose_decomp::problem::{Problem, ProblemConfig};

/// The variable that turns [`child`] on and names the method it runs.
const METHOD_VAR: &str = "RECOMPOSE_MEMORY_CHILD_METHOD";

/// A `/proc/self/status` field in bytes.
fn status_bytes(field: &str) -> u64 {
    let text = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    let line = text
        .lines()
        .find(|l| l.starts_with(field))
        .unwrap_or_else(|| panic!("{field} in /proc/self/status"));
    let kb: u64 = line[field.len()..]
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .expect("a number of kB");
    kb * 1024
}

/// The problem a method is measured on: large enough (about 100 MiB of codebooks, or of ALS's
/// per-trial estimates) that the program's own few megabytes do not matter. ALS solves an M×M
/// system per trial and factor, so it gets a small codebook and many trials.
fn config(method: &str) -> ProblemConfig {
    if method == "als" {
        ProblemConfig::map(2048, 3, 64, 512, 11)
    } else {
        ProblemConfig::map(8192, 3, 1024, 64, 11)
    }
}

fn factorize_config(method: &str) -> FactorizeConfig {
    FactorizeConfig {
        method: Method::from_name(method).expect("method"),
        max_iters: 3,
        seed: 1,
        threads: 2,
    }
}

/// Runs in the child process only: generates and factorizes the problem with the method named
/// by [`METHOD_VAR`] and prints `rss_before peak estimate` in bytes.
#[test]
#[ignore = "child process of estimates_cover_the_measured_peak, which runs it"]
fn child() {
    let Ok(method) = std::env::var(METHOD_VAR) else {
        panic!("run by estimates_cover_the_measured_peak with {METHOD_VAR} set");
    };
    let pc = config(&method);
    let fc = factorize_config(&method);
    let estimate = pipeline_estimate(&pc, &fc).get().expect("no overflow");
    let before = status_bytes("VmRSS:");
    let limit = MemoryLimit::unlimited();
    let problem = Problem::generate_within(&pc, &Device::Cpu, limit).expect("problem");
    factorize_within(&problem, &fc, limit, &mut |_| {}).expect("factorize");
    let peak = status_bytes("VmHWM:");
    println!("\nMEMORY {before} {peak} {estimate}");
}

#[test]
fn estimates_cover_the_measured_peak() {
    if !std::path::Path::new("/proc/self/status").exists() {
        eprintln!("no /proc/self/status here; the peak cannot be measured");
        return;
    }
    let exe = std::env::current_exe().expect("test binary");
    for method in ["resonator", "attention", "stochastic", "als", "coupled"] {
        let out = Command::new(&exe)
            .args([
                "child",
                "--exact",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(METHOD_VAR, method)
            .output()
            .expect("run the child");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{method}: {stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let line = stdout
            .lines()
            .find_map(|l| l.split_once("MEMORY ").map(|(_, rest)| rest))
            .unwrap_or_else(|| panic!("{method}: no MEMORY line in {stdout}"));
        let v: Vec<u64> = line
            .split_whitespace()
            .map(|x| x.parse().expect("bytes"))
            .collect();
        let (before, peak, estimate) = (v[0], v[1], v[2]);
        let grown = peak.saturating_sub(before);
        let mib = |b: u64| b as f64 / (1 << 20) as f64;
        eprintln!(
            "{method}: grew {:.1} MiB, estimate {:.1} MiB ({:.2}×)",
            mib(grown),
            mib(estimate),
            estimate as f64 / grown as f64
        );
        // Upper bound, with 16 MiB for the allocator's and threads' own overhead.
        assert!(
            grown <= estimate + (16 << 20),
            "{method}: grew {grown} bytes, estimate {estimate}"
        );
        // Not a wild overestimate either.
        assert!(
            estimate <= 4 * grown,
            "{method}: estimate {estimate} bytes is more than 4× the growth {grown}"
        );
    }
}

/// The sizes are refused at once, without allocating, by the library's own checks.
#[test]
fn absurd_problems_are_refused_before_allocating() {
    let limit: MemoryLimit = "8G".parse().expect("limit");
    for pc in [
        ProblemConfig::map(100_000_000, 3, 1000, 10, 0),
        ProblemConfig::map(1000, 3, 10_000_000, 10, 0),
    ] {
        let before = status_bytes("VmHWM:");
        let start = std::time::Instant::now();
        let err = Problem::generate_within(&pc, &Device::Cpu, limit).expect_err("refused");
        assert!(matches!(err, Error::Memory(_)), "{err}");
        assert!(err.is_bad_input());
        let msg = err.to_string();
        assert!(msg.contains("more than the limit of 8 GiB"), "{msg}");
        assert!(msg.contains("needs an estimated"), "{msg}");
        assert!(start.elapsed().as_secs_f64() < 1.0);
        // Nothing near the estimate was touched.
        assert!(status_bytes("VmHWM:") < before + (64 << 20));
    }
    // D·M·F beyond usize: an overflow, not a wrapped-around small size.
    let pc = ProblemConfig::map(usize::MAX / 2, 3, usize::MAX / 4, 1, 0);
    let err =
        Problem::generate_within(&pc, &Device::Cpu, MemoryLimit::unlimited()).expect_err("refused");
    assert!(err.to_string().contains("overflow"), "{err}");
    // Factorizing a small problem under a tiny limit is refused too.
    let problem = Problem::generate_within(
        &ProblemConfig::map(256, 3, 8, 4, 0),
        &Device::Cpu,
        MemoryLimit::unlimited(),
    )
    .expect("small problem");
    let err = factorize_within(
        &problem,
        &factorize_config("resonator"),
        MemoryLimit::new(1024),
        &mut |_| {},
    )
    .expect_err("refused");
    assert!(matches!(err, Error::Memory(_)), "{err}");
    assert!(err.to_string().contains("limit of 1 KiB"), "{err}");
}
