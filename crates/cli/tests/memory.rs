//! The memory guard on the command line: requests that would not fit are refused at once, with
//! exit status 2 and one line naming the estimate and the limit; `--max-memory` sets the limit.

use std::process::{Command, Output};
use std::time::{Duration, Instant};

fn recompose(args: &[&str]) -> (Output, Duration) {
    let start = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_recompose"))
        .args(args)
        .output()
        .expect("run recompose");
    (out, start.elapsed())
}

/// Asserts a refusal: exit status 2, nothing on stdout, one line on stderr holding every
/// string of `want`; returns the line.
fn refused(args: &[&str], want: &[&str]) -> String {
    let (out, took) = recompose(args);
    let err = String::from_utf8_lossy(&out.stderr).trim().to_string();
    assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
    assert!(out.stdout.is_empty(), "{args:?}: stdout not empty");
    assert_eq!(err.lines().count(), 1, "{args:?}: {err}");
    for w in want {
        assert!(err.contains(w), "{args:?}: {err:?} lacks {w:?}");
    }
    // Refused before any real work: well under the seconds an allocation of gigabytes takes.
    assert!(took < Duration::from_secs(5), "{args:?} took {took:?}");
    err
}

/// The two requests that used to grow past 7 GB with no output: refused under the default
/// limit (the machine's available memory) and under an explicit one, with the estimate and
/// the limit in the message.
#[test]
fn oversized_factorizations_are_refused_at_once() {
    let big_dim = [
        "factorize",
        "--dim",
        "100000000",
        "--factors",
        "3",
        "--codebook",
        "1000",
        "--trials",
        "10",
    ];
    let big_codebook = [
        "factorize",
        "--dim",
        "1000",
        "--factors",
        "3",
        "--codebook",
        "10000000",
    ];
    for args in [&big_dim[..], &big_codebook[..]] {
        // The codebooks alone are 3·M·D·4 bytes: 1.1 TiB and 112 GiB.
        let line = refused(args, &["needs an estimated", "available", "--max-memory"]);
        assert!(line.contains("TiB") || line.contains("GiB"), "{line}");
        let mut limited = args.to_vec();
        limited.extend(["--max-memory", "8G"]);
        refused(&limited, &["more than the limit of 8 GiB", "M = "]);
    }
    // Under an address-space limit of 4 GiB, an attempt to allocate the codebooks would abort;
    // a refusal shows nothing was allocated first.
    let sh = format!(
        "ulimit -v 4194304 && exec {} {}",
        env!("CARGO_BIN_EXE_recompose"),
        big_dim.join(" ")
    );
    let out = Command::new("sh")
        .args(["-c", &sh])
        .output()
        .expect("run sh");
    assert_eq!(
        out.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Sizes whose product overflows are refused as such, not wrapped around.
    refused(
        &[
            "factorize",
            "--dim",
            "9223372036854775807",
            "--factors",
            "3",
            "--codebook",
            "9223372036854775807",
            "--trials",
            "1",
        ],
        &["overflow"],
    );
}

/// `--max-memory` below what a small run needs refuses it; a generous one lets it run; the
/// option works before and after the subcommand.
#[test]
fn max_memory_bounds_every_command() {
    let small = [
        "factorize",
        "--dim",
        "500",
        "--factors",
        "3",
        "--codebook",
        "8",
        "--trials",
        "20",
    ];
    let mut tiny = small.to_vec();
    tiny.extend(["--max-memory", "4K"]);
    refused(&tiny, &["more than the limit of 4 KiB"]);
    let mut before = vec!["--max-memory", "4K"];
    before.extend(small);
    refused(&before, &["more than the limit of 4 KiB"]);
    let mut generous = small.to_vec();
    generous.extend(["--max-memory", "1GiB"]);
    let (out, _) = recompose(&generous);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for cmd in [
        vec![
            "compare",
            "--dim",
            "500",
            "--codebook",
            "8",
            "--trials",
            "20",
        ],
        vec![
            "capacity",
            "--method",
            "resonator",
            "--dim",
            "500",
            "--factors",
            "3",
        ],
    ] {
        let mut args = cmd.clone();
        args.extend(["--max-memory", "4K"]);
        refused(&args, &["more than the limit of 4 KiB"]);
    }

    let dir = std::env::temp_dir().join(format!("recompose-memory-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch");
    let out_dir = dir.join("data");
    let out_str = out_dir.to_str().expect("utf-8");
    refused(
        &[
            "dataset",
            "tetrominoes",
            "--num",
            "4",
            "--out",
            out_str,
            "--max-memory",
            "1K",
        ],
        &["dataset of 4 images", "limit of 1 KiB"],
    );
    assert!(!out_dir.exists(), "a refused dataset wrote files");
    refused(
        &[
            "dataset",
            "tetrominoes",
            "--num",
            "1000000000000",
            "--out",
            out_str,
        ],
        &["dataset of 1000000000000 images", "available"],
    );
    let run = dir.join("run");
    let run_str = run.to_str().expect("utf-8");
    refused(
        &[
            "train",
            "--preset",
            "toy2d-bar",
            "--out",
            run_str,
            "--max-memory",
            "64K",
        ],
        &["training a denoiser run", "limit of 64 KiB"],
    );
    assert!(!run.exists(), "a refused training run wrote files");
    let fixture = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../fixtures/decomp-tetrominoes"
    );
    let image = format!("{fixture}/example_a.png");
    refused(
        &[
            "decompose",
            &image,
            "--checkpoint",
            fixture,
            "--out",
            out_str,
            "--max-memory",
            "64K",
        ],
        &["decomposing with", "limit of 64 KiB"],
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn bad_max_memory_values_exit_2() {
    for bad in [
        "abc",
        "0",
        "-1G",
        "1.5XB",
        "",
        "1e9",
        "99999999999999999999",
    ] {
        let (out, _) = recompose(&[
            "factorize",
            "--dim",
            "100",
            "--factors",
            "3",
            "--codebook",
            "5",
            "--max-memory",
            bad,
        ]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{bad:?}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "{bad:?}: {err}");
        assert!(err.contains("--max-memory"), "{bad:?}: {err}");
    }
}
