//! The command-line contract: JSON keys, tables, and exit status 2 with a one-line error for
//! bad arguments.

use std::process::{Command, Output};

fn recompose(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_recompose"))
        .args(args)
        .output()
        .expect("run recompose")
}

fn json(out: &Output) -> serde_json::Value {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("one JSON object on stdout")
}

#[test]
fn factorize_json_has_the_contract_keys() {
    let out = recompose(&[
        "factorize",
        "--dim",
        "500",
        "--factors",
        "3",
        "--codebook",
        "8",
        "--trials",
        "20",
        "--seed",
        "3",
        "--json",
    ]);
    let v = json(&out);
    for key in [
        "method",
        "vsa",
        "dim",
        "factors",
        "codebook",
        "trials",
        "max_iters",
        "seed",
        "factor_accuracy",
        "exact_accuracy",
        "mean_iterations",
        "converged_fraction",
        "wall_seconds",
        "trials_per_second",
    ] {
        assert!(v.get(key).is_some(), "missing {key} in {v}");
    }
    assert_eq!(v["method"], "resonator");
    assert_eq!(v["vsa"], "map");
    assert_eq!(v["dim"], 500);
    assert_eq!(v["max_iters"], 100);
    assert_eq!(v["exact_accuracy"], 1.0);
}

#[test]
fn every_method_and_both_models_run() {
    for method in [
        "resonator",
        "resonator-ols",
        "resonator-sync",
        "stochastic",
        "attention",
        "als",
    ] {
        let v = json(&recompose(&[
            "factorize",
            "--dim",
            "400",
            "--factors",
            "2",
            "--codebook",
            "6",
            "--trials",
            "10",
            "--method",
            method,
            "--json",
        ]));
        assert_eq!(v["method"], method);
        let acc = v["factor_accuracy"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&acc));
    }
    let v = json(&recompose(&[
        "factorize",
        "--vsa",
        "fhrr",
        "--dim",
        "400",
        "--factors",
        "3",
        "--codebook",
        "6",
        "--trials",
        "10",
        "--noise-gauss",
        "0.2",
        "--json",
    ]));
    assert_eq!(v["vsa"], "fhrr");
    assert_eq!(v["exact_accuracy"], 1.0);
}

#[test]
fn coupled_flags_reach_the_json_report() {
    let base = [
        "factorize",
        "--dim",
        "500",
        "--factors",
        "3",
        "--codebook",
        "10",
        "--trials",
        "16",
        "--method",
        "coupled",
        "--json",
    ];
    let v = json(&recompose(&base));
    assert_eq!(v["method"], "coupled");
    assert_eq!(v["preset"], "best");
    assert!(v["coupled"]["guidance_scale"].as_f64().is_some(), "{v}");
    assert!(v["factor_accuracy"].as_f64().unwrap() >= 0.9, "{v}");
    let v = json(&recompose(
        &[
            &base[..],
            &[
                "--energy",
                "gaussian",
                "--space",
                "latent",
                "--sampler",
                "ode",
                "--steps",
                "7",
                "--restarts",
                "3",
                "--renoise",
                "0.4",
                "--guidance",
                "2.5",
                "--temperature",
                "0.75",
            ],
        ]
        .concat(),
    ));
    assert_eq!(v["preset"], "gaussian-latent-ode");
    let c = &v["coupled"];
    assert_eq!(c["energy"]["kind"], "gaussian");
    assert_eq!(c["space"], "latent");
    assert_eq!(c["sampler"], "ode");
    assert_eq!(c["steps"], 7);
    assert_eq!(c["restarts"], 3);
    assert_eq!(c["renoise"], 0.4);
    assert_eq!(c["restart_mode"], "renoise");
    assert_eq!(c["guidance_scale"], 2.5);
    assert_eq!(c["temperature"], 0.75);
    // At most (R + 1)·T = 28 iterations are used.
    assert!(v["mean_iterations"].as_f64().unwrap() <= 28.0, "{v}");
    let v = json(&recompose(
        &[&base[..], &["--preset", "similarity-codebook-ode"]].concat(),
    ));
    assert_eq!(v["preset"], "similarity-codebook-ode");
    assert_eq!(v["coupled"]["sampler"], "ode");
}

#[test]
fn kent_iteration_limit_and_table_output() {
    let out = recompose(&[
        "factorize",
        "--dim",
        "300",
        "--factors",
        "3",
        "--codebook",
        "120",
        "--trials",
        "4",
        "--max-iters",
        "kent",
        "--method",
        "resonator-sync",
        "--json",
    ]);
    // 0.001 · 120³ = 1728 iterations.
    assert_eq!(json(&out)["max_iters"], 1728);
    let out = recompose(&[
        "factorize",
        "--dim",
        "300",
        "--factors",
        "2",
        "--codebook",
        "5",
        "--trials",
        "4",
    ]);
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.contains("factor_acc") && text.contains("resonator"),
        "{text}"
    );
}

#[test]
fn capacity_json_has_the_contract_keys() {
    let v = json(&recompose(&[
        "capacity",
        "--method",
        "resonator",
        "--dim",
        "200",
        "--factors",
        "2",
        "--trials",
        "20",
        "--max-iters",
        "50",
        "--json",
    ]));
    for key in [
        "method",
        "dim",
        "factors",
        "target",
        "m_max",
        "exact_accuracy_at_m_max",
    ] {
        assert!(v.get(key).is_some(), "missing {key} in {v}");
    }
    assert!(v["m_max"].as_u64().unwrap() >= 8);
}

#[test]
fn problem_files_round_trip_through_the_cli() {
    let dir = std::env::temp_dir().join(format!("recompose-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("p.safetensors");
    let f = file.to_str().unwrap();
    let a = json(&recompose(&[
        "factorize",
        "--dim",
        "256",
        "--factors",
        "3",
        "--codebook",
        "7",
        "--trials",
        "12",
        "--seed",
        "5",
        "--save-problem",
        f,
        "--json",
    ]));
    let b = json(&recompose(&["factorize", "--problem", f, "--json"]));
    assert_eq!(a["exact_accuracy"], b["exact_accuracy"]);
    assert_eq!(b["dim"], 256);
    std::fs::write(&file, b"not a safetensors file").unwrap();
    let out = recompose(&["factorize", "--problem", f]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(
        err.contains("p.safetensors") && err.lines().count() == 1,
        "{err}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn bad_arguments_exit_2_with_one_line() {
    let base = [
        "factorize",
        "--dim",
        "100",
        "--factors",
        "3",
        "--codebook",
        "5",
    ];
    let cases: Vec<Vec<&str>> = vec![
        vec![
            "factorize",
            "--dim",
            "0",
            "--factors",
            "3",
            "--codebook",
            "5",
        ],
        vec![
            "factorize",
            "--dim",
            "-5",
            "--factors",
            "3",
            "--codebook",
            "5",
        ],
        vec![
            "factorize",
            "--dim",
            "100",
            "--factors",
            "1",
            "--codebook",
            "5",
        ],
        vec![
            "factorize",
            "--dim",
            "100",
            "--factors",
            "3",
            "--codebook",
            "0",
        ],
        [&base[..], &["--noise-flip", "1.5"]].concat(),
        [&base[..], &["--noise-flip", "-0.1"]].concat(),
        [&base[..], &["--noise-gauss", "-1"]].concat(),
        [&base[..], &["--method", "gradient"]].concat(),
        [&base[..], &["--max-iters", "0"]].concat(),
        [&base[..], &["--max-iters", "lots"]].concat(),
        [&base[..], &["--trials", "0"]].concat(),
        [&base[..], &["--vsa", "bsc"]].concat(),
        [&base[..], &["--vsa", "fhrr", "--method", "resonator-ols"]].concat(),
        [&base[..], &["--vsa", "fhrr", "--method", "als"]].concat(),
        [&base[..], &["--vsa", "fhrr", "--method", "coupled"]].concat(),
        [&base[..], &["--steps", "5"]].concat(),
        [&base[..], &["--method", "stochastic", "--preset", "best"]].concat(),
        [&base[..], &["--method", "coupled", "--preset", "fastest"]].concat(),
        [&base[..], &["--method", "coupled", "--energy", "quadratic"]].concat(),
        [&base[..], &["--method", "coupled", "--space", "pixel"]].concat(),
        [&base[..], &["--method", "coupled", "--sampler", "heun"]].concat(),
        [&base[..], &["--method", "coupled", "--steps", "0"]].concat(),
        [&base[..], &["--method", "coupled", "--restarts", "-1"]].concat(),
        [&base[..], &["--method", "coupled", "--renoise", "1.5"]].concat(),
        [&base[..], &["--method", "coupled", "--renoise", "0"]].concat(),
        [&base[..], &["--method", "coupled", "--guidance", "-2"]].concat(),
        [&base[..], &["--method", "coupled", "--temperature", "nan"]].concat(),
        vec![
            "capacity",
            "--method",
            "resonator",
            "--dim",
            "100",
            "--factors",
            "3",
            "--target",
            "1.5",
        ],
        vec![
            "capacity",
            "--method",
            "nope",
            "--dim",
            "100",
            "--factors",
            "3",
        ],
        vec!["factorize", "--dim", "100"],
        [&base[..], &["--device", "gpu"]].concat(),
        [&base[..], &["--device", "cuda:x"]].concat(),
    ];
    for args in cases {
        let out = recompose(&args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let err = String::from_utf8(out.stderr).unwrap();
        assert!(err.starts_with("error"), "{args:?}: {err}");
        assert_eq!(err.lines().count(), 1, "{args:?}: {err}");
    }
}

/// `--device`: the CPU by name or by `auto` (in a build without CUDA); a GPU asked of a build
/// without CUDA is refused with one line naming the feature.
#[test]
fn device_choice() {
    let base = [
        "factorize",
        "--dim",
        "100",
        "--factors",
        "2",
        "--codebook",
        "5",
        "--trials",
        "4",
    ];
    let cpu = ok(&recompose(&base));
    for device in ["cpu", "auto"] {
        let out = ok(&recompose(&[&base[..], &["--device", device]].concat()));
        // The same table but for the timing columns.
        let cols = |t: &str| -> Vec<String> {
            t.lines()
                .map(|l| l.split_whitespace().take(6).collect::<Vec<_>>().join(" "))
                .collect()
        };
        assert_eq!(cols(&out), cols(&cpu), "{device}");
    }
    if !cfg!(feature = "cuda") {
        for device in ["cuda", "cuda:1"] {
            let out = recompose(&[&base[..], &["--device", device]].concat());
            let err = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(2), "{device}: {err}");
            assert_eq!(err.trim_end().lines().count(), 1, "{device}: {err}");
            assert!(err.contains("built without CUDA"), "{device}: {err}");
        }
    }
}

/// `train --data-parallel` is refused with one line: without NCCL in the build, and on the
/// CPU in any build; nothing is written.
#[test]
fn data_parallel_training_needs_nccl_and_a_gpu() {
    let dir = std::env::temp_dir().join(format!("recompose-cli-dp-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let out_dir = dir.join("run");
    let id = dir.join("nccl-id");
    let out = recompose(&[
        "train",
        "--preset",
        "toy2d-ring",
        "--steps",
        "2",
        "--out",
        out_dir.to_str().unwrap(),
        "--data-parallel",
        id.to_str().unwrap(),
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    let why = if cfg!(feature = "nccl") {
        "--device cuda"
    } else {
        "built without NCCL"
    };
    assert!(err.contains(why), "{err}");
    assert!(!out_dir.join("model.safetensors").exists());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_closed_stdout_ends_quietly() {
    // As in `recompose compare | head -1`: the reader goes away before the output is written.
    let mut child = Command::new(env!("CARGO_BIN_EXE_recompose"))
        .args([
            "compare",
            "--dim",
            "200",
            "--codebook",
            "5",
            "--trials",
            "8",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn recompose");
    drop(child.stdout.take());
    let out = child.wait_with_output().expect("wait for recompose");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}

fn scratch(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("recompose-cli-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir
}

fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Writes `DIR/small.toml`: a tiny MLP on the bar with a 20-step schedule, batch 32, and the
/// `extra_train` lines in its `[train]` table.
fn small_config(dir: &std::path::Path, extra_train: &str) -> std::path::PathBuf {
    let cfg = dir.join("small.toml");
    std::fs::write(
        &cfg,
        format!(
            "[model]\nkind = \"mlp\"\nhidden = 16\nblock_hidden = 32\nnum_blocks = 1\n\
             time_embed_dim = 8\nnum_timesteps = 20\n\n[data]\nkind = \"toy2d\"\n\
             name = \"bar\"\n\n[diffusion]\nnum_timesteps = 20\n\n[train]\nbatch_size = 32\n\
             {extra_train}"
        ),
    )
    .expect("config");
    cfg
}

/// `train --config` with a small MLP, `--resume` to more steps, then `sample` with every
/// sampler to CSV and PNG.
#[test]
fn train_resume_and_sample() {
    let dir = scratch("train");
    let cfg = small_config(&dir, "checkpoint_every = 5\nlog_format = \"csv\"\n");
    let out_dir = dir.join("run");
    let out = out_dir.to_str().expect("utf-8 path");
    let text = ok(&recompose(&[
        "train",
        "--config",
        cfg.to_str().expect("utf-8"),
        "--out",
        out,
        "--steps",
        "8",
        "--seed",
        "4",
        "--quiet",
    ]));
    assert!(text.contains("0..8"), "{text}");
    for f in ["model.safetensors", "model.json", "config.toml", "loss.csv"] {
        assert!(out_dir.join(f).is_file(), "{f} missing");
    }
    // Resume from the saved configuration, extending the run.
    let text = ok(&recompose(&[
        "train", "--out", out, "--resume", "--steps", "12", "--seed", "4", "--quiet",
    ]));
    assert!(text.contains("8..12"), "{text}");
    let log = std::fs::read_to_string(out_dir.join("loss.csv")).expect("log");
    assert_eq!(log.lines().next(), Some("step,loss,lr,grad_norm"));
    assert_eq!(log.lines().count(), 13);

    for sampler in ["ddpm", "ddim", "sde", "ode"] {
        let csv = dir.join(format!("{sampler}.csv"));
        ok(&recompose(&[
            "sample",
            "--checkpoint",
            out,
            "--num",
            "7",
            "--out",
            csv.to_str().expect("utf-8"),
            "--sampler",
            sampler,
            "--steps",
            "10",
            "--seed",
            "1",
        ]));
        let text = std::fs::read_to_string(&csv).expect("csv");
        let mut lines = text.lines();
        assert_eq!(lines.next(), Some("x,y"));
        let rows: Vec<Vec<f64>> = lines
            .map(|l| l.split(',').map(|v| v.parse().expect("number")).collect())
            .collect();
        assert_eq!(rows.len(), 7);
        assert!(
            rows.iter()
                .all(|r| r.len() == 2 && r.iter().all(|v| v.is_finite()))
        );
    }
    // Same seed, same samples.
    let again = dir.join("again.csv");
    ok(&recompose(&[
        "sample",
        "--checkpoint",
        out,
        "--num",
        "7",
        "--out",
        again.to_str().expect("utf-8"),
        "--sampler",
        "ddpm",
        "--steps",
        "10",
        "--seed",
        "1",
    ]));
    assert_eq!(
        std::fs::read(&again).expect("csv"),
        std::fs::read(dir.join("ddpm.csv")).expect("csv")
    );
    let png = dir.join("scatter.png");
    ok(&recompose(&[
        "sample",
        "--checkpoint",
        out,
        "--num",
        "50",
        "--out",
        png.to_str().expect("utf-8"),
    ]));
    let bytes = std::fs::read(&png).expect("png");
    assert_eq!(&bytes[1..4], b"PNG");
    // A prompt needs a text-conditioned model.
    let refused = recompose(&[
        "sample",
        "--checkpoint",
        out,
        "--num",
        "2",
        "--out",
        png.to_str().expect("utf-8"),
        "--prompt",
        "red",
    ]);
    assert_eq!(refused.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("text-conditioned"));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn bad_train_and_sample_arguments_exit_2() {
    let dir = scratch("badtrain");
    let out = dir.join("x");
    let out = out.to_str().expect("utf-8");
    let bad_cfg = dir.join("bad.toml");
    std::fs::write(
        &bad_cfg,
        "[model]\nkind = \"mlp\"\nwidth = 3\n[data]\nkind = \"toy2d\"\nname = \"ring\"\n",
    )
    .expect("write");
    let cases: Vec<Vec<&str>> = vec![
        vec!["train", "--out", out],
        vec!["train", "--preset", "toy2d-moon", "--out", out],
        vec![
            "train",
            "--preset",
            "toy2d-ring",
            "--out",
            out,
            "--steps",
            "0",
        ],
        vec![
            "train",
            "--preset",
            "toy2d-ring",
            "--out",
            out,
            "--steps",
            "-3",
        ],
        vec![
            "train",
            "--config",
            bad_cfg.to_str().expect("utf-8"),
            "--out",
            out,
        ],
        vec![
            "sample",
            "--checkpoint",
            out,
            "--num",
            "0",
            "--out",
            "a.csv",
        ],
        vec![
            "sample",
            "--checkpoint",
            out,
            "--num",
            "3",
            "--out",
            "a.txt",
        ],
        vec![
            "sample",
            "--checkpoint",
            out,
            "--num",
            "3",
            "--out",
            "a.csv",
            "--sampler",
            "euler",
        ],
    ];
    for args in cases {
        let o = recompose(&args);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "{args:?}: {err}");
    }
    // A missing checkpoint is bad input (status 2) naming the file.
    let o = recompose(&[
        "sample",
        "--checkpoint",
        out,
        "--num",
        "3",
        "--out",
        "a.csv",
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("config.toml"));
    let _ = std::fs::remove_dir_all(&dir);
}

/// `train --energy` and score training of two small models, then `compose` with every sampler
/// that applies, CSV and PNG output, same seed same samples; and the errors users hit: OR or
/// MALA on score models, unknown or unused model names, parse errors with a caret, flags that
/// need an MCMC sampler.
#[test]
fn compose_trained_models() {
    let dir = scratch("compose");
    let cfg = small_config(&dir, "checkpoint_every = 10\n");
    let cfg = cfg.to_str().expect("utf-8");
    let model = |name: &str, energy: bool| {
        let out = dir.join(name);
        let out_s = out.to_str().expect("utf-8").to_string();
        let mut args = vec![
            "train", "--config", cfg, "--out", &out_s, "--steps", "10", "--quiet",
        ];
        if energy {
            args.push("--energy");
        }
        ok(&recompose(&args));
        out_s
    };
    let (ea, eb, sa) = (model("ea", true), model("eb", true), model("sa", false));
    let saved = std::fs::read_to_string(dir.join("ea").join("config.toml")).expect("config");
    assert!(saved.contains("energy = \"squared_residual\""), "{saved}");
    let (ma, mb, msa) = (format!("a={ea}"), format!("b={eb}"), format!("a={sa}"));
    let csv = dir.join("out.csv");
    let csv_s = csv.to_str().expect("utf-8");
    for (expr, sampler) in [
        ("a AND b", "reverse"),
        ("a OR b", "ula"),
        ("1.3*a NOT 0.3*b", "uhmc"),
        ("a AND b", "mala"),
        ("(a OR b) AND a", "hmc"),
    ] {
        let mut args = vec![
            "compose",
            "--expr",
            expr,
            "--model",
            &ma,
            "--model",
            &mb,
            "--num",
            "50",
            "--out",
            csv_s,
            "--sampler",
            sampler,
            "--seed",
            "3",
        ];
        if sampler != "reverse" {
            args.extend(["--mcmc-steps", "2"]);
        }
        let text = ok(&recompose(&args));
        assert!(text.contains("wrote 50 samples"), "{text}");
        if sampler == "mala" || sampler == "hmc" {
            assert!(text.contains("acceptance"), "{text}");
        }
        let body = std::fs::read_to_string(&csv).expect("csv");
        assert_eq!(body.lines().next(), Some("x,y"));
        assert_eq!(body.lines().count(), 51);
    }
    let run = |seed: &str| {
        ok(&recompose(&[
            "compose",
            "--expr",
            "a AND b",
            "--model",
            &ma,
            "--model",
            &mb,
            "--num",
            "20",
            "--out",
            csv_s,
            "--sampler",
            "hmc",
            "--mcmc-steps",
            "1",
            "--seed",
            seed,
        ]));
        std::fs::read_to_string(&csv).expect("csv")
    };
    assert_eq!(run("5"), run("5"));
    assert_ne!(run("5"), run("6"));
    let png = dir.join("out.png");
    ok(&recompose(&[
        "compose",
        "--expr",
        "a AND a",
        "--model",
        &msa,
        "--num",
        "30",
        "--out",
        png.to_str().expect("utf-8"),
    ]));
    assert!(png.is_file());

    let bad: Vec<(Vec<&str>, &str)> = vec![
        (
            vec!["--expr", "a OR b", "--model", &msa, "--model", &mb],
            "score model",
        ),
        (
            vec![
                "--expr",
                "a AND b",
                "--model",
                &msa,
                "--model",
                &mb,
                "--sampler",
                "mala",
            ],
            "log-densities",
        ),
        (
            vec!["--expr", "a AND c", "--model", &ma, "--model", &mb],
            "no --model c",
        ),
        (
            vec!["--expr", "a", "--model", &ma, "--model", &mb],
            "not used",
        ),
        (
            vec!["--expr", "a AND )", "--model", &ma],
            "found `)` at column 7",
        ),
        (
            vec!["--expr", "a", "--model", &ma, "--mcmc-steps", "3"],
            "needs an MCMC sampler",
        ),
        (
            vec!["--expr", "a", "--model", &ma, "--mcmc-fraction", "1"],
            "needs an MCMC sampler",
        ),
        (
            vec![
                "--expr",
                "a",
                "--model",
                &ma,
                "--sampler",
                "ula",
                "--mcmc-fraction",
                "0",
            ],
            "--mcmc-fraction must lie in (0, 1]",
        ),
        (
            vec![
                "--expr",
                "a",
                "--model",
                &ma,
                "--sampler",
                "ula",
                "--target-accept",
                "0.5",
            ],
            "acceptance",
        ),
        (
            vec!["--expr", "a", "--model", &ma, "--sampler", "gibbs"],
            "--sampler",
        ),
        (vec!["--expr", "a", "--model", "a"], "NAME=DIR"),
    ];
    for (args, want) in bad {
        let mut full = vec!["compose", "--num", "5", "--out", csv_s];
        full.extend(&args);
        let o = recompose(&full);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(want), "{args:?}: {err}");
        assert_eq!(err.trim_end().lines().count(), 1, "{args:?}: {err}");
    }
}

/// `dataset` writes PNGs, masks and labels, identical for the same seed; bad names and counts
/// exit 2 with one line.
#[test]
fn dataset_writes_images_masks_and_labels() {
    let dir = scratch("dataset");
    for name in [
        "tetrominoes",
        "multi-sprites",
        "sprites-night",
        "falcor-lite",
    ] {
        let out = dir.join(name);
        let out_s = out.to_str().expect("utf-8");
        let text = ok(&recompose(&[
            "dataset", name, "--num", "4", "--out", out_s, "--seed", "2",
        ]));
        assert!(text.contains("wrote 4"), "{text}");
        let labels: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(out.join("labels.json")).expect("labels"),
        )
        .expect("json");
        assert_eq!(labels["images"].as_array().map(Vec::len), Some(4));
        assert!(out.join("image_00003.png").is_file());
        let first = std::fs::read(out.join("image_00000.png")).expect("png");
        ok(&recompose(&[
            "dataset", name, "--num", "1", "--out", out_s, "--seed", "2",
        ]));
        assert_eq!(
            first,
            std::fs::read(out.join("image_00000.png")).expect("png")
        );
    }
    let out = dir.join("bad");
    let out_s = out.to_str().expect("utf-8");
    for args in [
        vec!["dataset", "clevr", "--num", "3", "--out", out_s],
        vec!["dataset", "tetrominoes", "--num", "0", "--out", out_s],
    ] {
        let o = recompose(&args);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {err}");
        assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    }
}

/// `dataset shapes-text` writes 32- or 64-pixel images with captions in labels.json, the same
/// for the same seed; a size other than 32 or 64 (or other than 32 for the other datasets)
/// exits 2 with one line naming `--size`.
#[test]
fn dataset_shapes_text_writes_captioned_images_at_both_sizes() {
    let dir = scratch("dataset-shapes-text");
    for (size, extra) in [(32u32, vec![]), (64, vec!["--size", "64"])] {
        let out = dir.join(format!("s{size}"));
        let out_s = out.to_str().expect("utf-8");
        let mut args = vec![
            "dataset",
            "shapes-text",
            "--num",
            "5",
            "--out",
            out_s,
            "--seed",
            "3",
        ];
        args.extend(&extra);
        let text = ok(&recompose(&args));
        assert!(text.contains("wrote 5 shapes-text images"), "{text}");
        let labels: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(out.join("labels.json")).expect("labels"),
        )
        .expect("json");
        assert_eq!(labels["dataset"], "shapes-text");
        assert_eq!(labels["size"], size);
        let images = labels["images"].as_array().expect("images");
        assert_eq!(images.len(), 5);
        for entry in images {
            let captions = entry["captions"].as_array().expect("captions");
            assert!((1..=3).contains(&captions.len()), "{entry}");
            for (k, caption) in captions.iter().enumerate() {
                // Colour, shape and a two-word position.
                let words = caption.as_str().expect("caption").split(' ').count();
                assert_eq!(words, 4, "{caption}");
                assert_eq!(entry["objects"][k]["caption"], *caption);
            }
        }
        // The tokenizer beside the images knows every word of every training caption.
        let tokenizer =
            recompose_diffusion::text::TextTokenizer::from_file(&out.join("tokenizer.json"))
                .expect("tokenizer");
        let lines = std::fs::read_to_string(out.join("captions.jsonl")).expect("captions");
        assert_eq!(lines.lines().count(), 5);
        for line in lines.lines() {
            let entry: serde_json::Value = serde_json::from_str(line).expect("json");
            for caption in entry["captions"].as_array().expect("captions") {
                let c = caption.as_str().expect("caption");
                tokenizer.encode_strict(&[c]).expect("a known caption");
            }
        }
        let png = image::open(out.join("image_00004.png")).expect("png");
        assert_eq!((png.width(), png.height()), (size, size));
        assert!(out.join("mask_00000_0.png").is_file());
        let first = std::fs::read(out.join("image_00000.png")).expect("png");
        let again = dir.join(format!("again{size}"));
        let again_s = again.to_str().expect("utf-8");
        let mut args = vec![
            "dataset",
            "shapes-text",
            "--num",
            "1",
            "--out",
            again_s,
            "--seed",
            "3",
        ];
        args.extend(&extra);
        ok(&recompose(&args));
        assert_eq!(
            first,
            std::fs::read(again.join("image_00000.png")).expect("png")
        );
    }
    let out = dir.join("bad");
    let out_s = out.to_str().expect("utf-8");
    for (args, want) in [
        (vec!["shapes-text", "--size", "48"], "--size"),
        (vec!["shapes-text", "--size", "0"], "--size"),
        (vec!["shapes-text", "--size", "-32"], "--size"),
        (vec!["tetrominoes", "--size", "64"], "--size"),
        (vec!["shapes-text", "--num", "0"], "--num"),
        (vec!["clevr"], "shapes-text"),
    ] {
        let mut full = vec!["dataset", "--out", out_s];
        full.extend(&args);
        if !args.contains(&"--num") {
            full.extend(["--num", "2"]);
        }
        let o = recompose(&full);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(want), "{args:?}: {err}");
        assert_eq!(err.trim_end().lines().count(), 1, "{args:?}: {err}");
    }
    assert!(!out.exists(), "a refused dataset wrote files");
    ok(&recompose(&[
        "dataset",
        "tetrominoes",
        "--num",
        "1",
        "--size",
        "32",
        "--out",
        out_s,
    ]));
}

/// `decomp-eval` on a small model written here: shapes, the composed output equal to the mean of
/// the per-factor outputs, non-negative latents; mismatched weights, inputs or sizes exit 2 with
/// one line naming what is wrong.
#[test]
fn decomp_eval_reads_weights_and_writes_outputs() {
    use candle_core::{DType, Device, Tensor};
    use recompose_decomp_diffusion::{DecompConfig, DecompModel};
    use std::collections::HashMap;

    let dir = scratch("decomp-eval");
    let cfg_text = "image_size = 16\nnum_channels = 16\nchannel_mult = [1, 2]\n\
                    attention_resolutions = [8]\nemb_dim = 16\nnum_components = 2\n\
                    enc_channels = 4\nnum_head_channels = -1\n";
    let cfg_path = dir.join("c.toml");
    std::fs::write(&cfg_path, cfg_text).expect("config");
    let cfg = DecompConfig::from_toml(cfg_text).expect("parses");
    let store = recompose_diffusion::nn::ParamStore::new(3);
    DecompModel::from_config(&cfg, store.var_builder(DType::F32, &Device::Cpu)).expect("model");
    let weights: HashMap<String, Tensor> = store
        .vars()
        .into_iter()
        .map(|(n, v)| (n, v.as_tensor().clone()))
        .collect();
    let w_path = dir.join("w.safetensors");
    candle_core::safetensors::save(&weights, &w_path).expect("weights");
    let noise = |seed: u64, shape: &[usize]| {
        recompose_diffusion::random::normal_tensor(
            &mut recompose_diffusion::seeded(seed),
            shape,
            DType::F32,
            &Device::Cpu,
        )
        .expect("noise")
    };
    let mut inputs = HashMap::new();
    inputs.insert("x0".to_string(), noise(1, &[2, 3, 16, 16]));
    inputs.insert("x_t".to_string(), noise(2, &[2, 3, 16, 16]));
    inputs.insert(
        "t".to_string(),
        Tensor::new(&[10i64, 700], &Device::Cpu).expect("t"),
    );
    let in_path = dir.join("in.safetensors");
    candle_core::safetensors::save(&inputs, &in_path).expect("inputs");
    let out_path = dir.join("out.safetensors");
    let s = |p: &std::path::Path| p.to_str().expect("utf-8").to_string();
    let args = |w: &str, c: &str, i: &str| {
        vec![
            "decomp-eval".to_string(),
            "--weights".into(),
            w.into(),
            "--config".into(),
            c.into(),
            "--inputs".into(),
            i.into(),
            "--out".into(),
            s(&out_path),
        ]
    };
    let run = |a: Vec<String>| recompose(&a.iter().map(String::as_str).collect::<Vec<_>>());
    let text = ok(&run(args(&s(&w_path), &s(&cfg_path), &s(&in_path))));
    assert!(text.contains("out_k0..out_k1"), "{text}");
    let out = candle_core::safetensors::load(&out_path, &Device::Cpu).expect("outputs");
    assert_eq!(out["z"].dims(), &[2, 16]);
    assert!(
        out["z"]
            .flatten_all()
            .and_then(|z| z.to_vec1::<f32>())
            .expect("z")
            .iter()
            .all(|v| *v >= 0.0)
    );
    let mean = ((&out["out_k0"] + &out["out_k1"]).expect("sum") * 0.5).expect("mean");
    let diff = (mean - &out["out_full"])
        .and_then(|d| d.abs())
        .and_then(|d| d.max_all())
        .and_then(|d| d.to_scalar::<f32>())
        .expect("diff");
    assert!(diff < 1e-5, "out_full vs mean of factors: {diff}");

    // Errors: weights of another model, inputs without x_t, images of another size.
    let other = dir.join("other.toml");
    std::fs::write(
        &other,
        cfg_text.replace("enc_channels = 4", "enc_channels = 8"),
    )
    .expect("cfg");
    let mut partial = inputs.clone();
    partial.remove("x_t");
    let partial_path = dir.join("partial.safetensors");
    candle_core::safetensors::save(&partial, &partial_path).expect("inputs");
    let mut big = inputs.clone();
    big.insert("x0".to_string(), noise(3, &[2, 3, 32, 32]));
    let big_path = dir.join("big.safetensors");
    candle_core::safetensors::save(&big, &big_path).expect("inputs");
    // A NaN in one weight, and in one input image.
    let mut nan_weights = weights.clone();
    let (name, w) = nan_weights
        .iter()
        .find(|(_, w)| w.elem_count() > 1)
        .map(|(n, w)| (n.clone(), w.clone()))
        .expect("a weight");
    let mut vals = w
        .flatten_all()
        .and_then(|v| v.to_vec1::<f32>())
        .expect("values");
    vals[1] = f32::NAN;
    nan_weights.insert(
        name.clone(),
        Tensor::from_vec(vals, w.dims(), &Device::Cpu).expect("tensor"),
    );
    let nan_w_path = dir.join("nan-weights.safetensors");
    candle_core::safetensors::save(&nan_weights, &nan_w_path).expect("weights");
    let mut nan_inputs = inputs.clone();
    let x_t = (noise(2, &[2, 3, 16, 16]) / 0.0).expect("infinite");
    nan_inputs.insert("x_t".to_string(), x_t);
    let nan_in_path = dir.join("nan-inputs.safetensors");
    candle_core::safetensors::save(&nan_inputs, &nan_in_path).expect("inputs");
    let missing = s(&dir.join("missing.safetensors"));
    for (a, want) in [
        (args(&s(&w_path), &s(&other), &s(&in_path)), "does not fit"),
        (args(&s(&w_path), &s(&cfg_path), &s(&partial_path)), "`x_t`"),
        (
            args(&s(&w_path), &s(&cfg_path), &s(&big_path)),
            "x0 has shape",
        ),
        (
            args(&s(&nan_w_path), &s(&cfg_path), &s(&in_path)),
            "non-finite",
        ),
        (
            args(&s(&w_path), &s(&cfg_path), &s(&nan_in_path)),
            "tensor `x_t` holds non-finite",
        ),
        (
            args(&missing, &s(&cfg_path), &s(&in_path)),
            "missing.safetensors",
        ),
    ] {
        let o = run(a);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{err}");
        assert!(err.contains(want), "{err}");
        assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    }
}

/// `train --config` on a tiny Decomp Diffusion model, `--resume`, then `decompose` and
/// `recombine` (slice, add, cross-model), and every bad input as one line with status 2.
#[test]
fn decomp_train_decompose_and_recombine() {
    let dir = scratch("decomp-run");
    let s = |p: &std::path::Path| p.to_str().expect("utf-8").to_string();
    let cfg = dir.join("tiny.toml");
    let cfg_text = "[decomp]\nnum_channels = 16\nchannel_mult = [1, 2]\nattention_resolutions = [8]\n\
                    emb_dim = 16\nnum_components = 3\nenc_channels = 4\nnum_head_channels = -1\n\n\
                    [data]\ndataset = \"tetrominoes\"\nnum_images = 8\n\n\
                    [train]\nsteps = 2\nbatch_size = 2\ncheckpoint_every = 1\n";
    std::fs::write(&cfg, cfg_text).expect("config");
    let run_dir = dir.join("run");
    let text = ok(&recompose(&[
        "train",
        "--config",
        &s(&cfg),
        "--out",
        &s(&run_dir),
        "--quiet",
    ]));
    assert!(text.contains("trained steps 0..2"), "{text}");
    let text = ok(&recompose(&[
        "train",
        "--resume",
        "--out",
        &s(&run_dir),
        "--steps",
        "3",
        "--quiet",
    ]));
    assert!(text.contains("trained steps 2..3"), "{text}");
    let data = dir.join("data");
    ok(&recompose(&[
        "dataset",
        "tetrominoes",
        "--num",
        "2",
        "--out",
        &s(&data),
    ]));
    let (a, b) = (data.join("image_00000.png"), data.join("image_00001.png"));

    let dec = dir.join("dec");
    let text = ok(&recompose(&[
        "decompose",
        &s(&a),
        "--checkpoint",
        &s(&run_dir),
        "--out",
        &s(&dec),
        "--steps",
        "3",
    ]));
    assert!(text.contains("into 3 factors"), "{text}");
    for name in [
        "reconstruction.png",
        "factor_0.png",
        "factor_1.png",
        "factor_2.png",
    ] {
        let img = image::open(dec.join(name)).expect(name);
        assert_eq!((img.width(), img.height()), (32, 32), "{name}");
    }
    let grid = image::open(dec.join("grid.png")).expect("grid");
    assert!(
        grid.width() > 5 * 32,
        "input, reconstruction and 3 factors side by side"
    );
    let first = std::fs::read(dec.join("factor_1.png")).expect("png");
    ok(&recompose(&[
        "decompose",
        &s(&a),
        "--checkpoint",
        &s(&run_dir),
        "--out",
        &s(&dec),
        "--steps",
        "3",
    ]));
    assert_eq!(
        first,
        std::fs::read(dec.join("factor_1.png")).expect("png"),
        "same seed"
    );

    let recombine = |extra: &[&str], out: &std::path::Path| {
        let mut args = vec![
            "recombine".to_string(),
            s(&a),
            s(&b),
            "--checkpoint".into(),
            s(&run_dir),
            "--out".into(),
            s(out),
            "--steps".into(),
            "3".into(),
        ];
        args.extend(extra.iter().map(|x| x.to_string()));
        recompose(&args.iter().map(String::as_str).collect::<Vec<_>>())
    };
    let sliced = dir.join("slice.png");
    let text = ok(&recombine(&["--mask", "1,0,1"], &sliced));
    assert!(text.contains("recombined 3 factors (slice)"), "{text}");
    let added = dir.join("add.png");
    let text = ok(&recombine(&["--mode", "add"], &added));
    assert!(text.contains("recombined 6 factors (add)"), "{text}");
    // Cross-model with the same weights loaded twice is the same-model slice.
    let cross = dir.join("cross.png");
    ok(&recombine(
        &["--mask", "1,0,1", "--checkpoint2", &s(&run_dir)],
        &cross,
    ));
    assert_eq!(
        std::fs::read(&sliced).expect("png"),
        std::fs::read(&cross).expect("png")
    );

    // Bad inputs.
    let small = dir.join("small.png");
    image::save_buffer(&small, &[0u8; 16 * 16 * 3], 16, 16, image::ColorType::Rgb8).expect("png");
    let rgba = dir.join("rgba.png");
    image::save_buffer(&rgba, &[0u8; 32 * 32 * 4], 32, 32, image::ColorType::Rgba8).expect("png");
    let broken = dir.join("broken");
    std::fs::create_dir_all(&broken).expect("dir");
    for f in ["model.safetensors", "model.json"] {
        std::fs::copy(run_dir.join(f), broken.join(f)).expect("copy");
    }
    std::fs::write(
        broken.join("config.toml"),
        std::fs::read_to_string(run_dir.join("config.toml"))
            .expect("config")
            .replace("enc_channels = 4", "enc_channels = 8"),
    )
    .expect("config");
    let dec_args = |img: &std::path::Path, ckpt: &std::path::Path| {
        recompose(&[
            "decompose",
            &s(img),
            "--checkpoint",
            &s(ckpt),
            "--out",
            &s(&dec),
            "--steps",
            "2",
        ])
    };
    let cases = [
        (dec_args(&small, &run_dir), "16×16"),
        (dec_args(&rgba, &run_dir), "4 channel"),
        (dec_args(&a, &broken), "latent_encoder"),
        (dec_args(&a, &data), "no config.toml"),
        (recombine(&["--mask", "1,0"], &sliced), "K = 3"),
        (recombine(&["--mask", "1,x,0"], &sliced), "`x`"),
        (recombine(&[], &sliced), "needs --mask"),
        (recombine(&["--mode", "mix"], &sliced), "slice or add"),
        (
            recompose(&[
                "train",
                "--preset",
                "decomp-tetrominoes",
                "--energy",
                "--out",
                &s(&dir),
            ]),
            "--energy",
        ),
    ];
    for (o, want) in cases {
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{want}: {err}");
        assert!(err.contains(want), "{want}: {err}");
        assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn train_knows_every_preset_of_every_family() {
    let out_dir =
        std::env::temp_dir().join(format!("recompose-cli-presets-{}", std::process::id()));
    let out = out_dir.to_str().unwrap();
    let unknown = recompose(&["train", "--preset", "nope", "--out", out]);
    assert_eq!(unknown.status.code(), Some(2));
    let err = String::from_utf8(unknown.stderr).unwrap();
    for preset in [
        "toy2d-ring",
        "toy2d-box-small-energy",
        "decomp-tetrominoes",
        "decomp-falcor-lite",
    ] {
        assert!(err.contains(preset), "{preset} missing from: {err}");
    }
    let energy = recompose(&[
        "train",
        "--preset",
        "decomp-tetrominoes",
        "--energy",
        "--out",
        out,
    ]);
    assert_eq!(energy.status.code(), Some(2));
    let err = String::from_utf8(energy.stderr).unwrap();
    assert!(err.contains("--energy") && err.contains("decomp"), "{err}");
    assert!(
        !out_dir.exists(),
        "a refused run must not create its directory"
    );
}

/// The exit-status contract: bad input of every kind — a missing or malformed file, a
/// checkpoint of the other kind, an output that cannot be written — exits with 2 and one line
/// on stderr that names the file and does not repeat the operating system's message; a
/// checkpoint of the other kind names its kind and the commands that take it.
#[test]
fn bad_input_exits_2_with_one_line() {
    let dir = scratch("exit");
    let fixture = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../fixtures/decomp-tetrominoes"
    );
    let image = format!("{fixture}/example_a.png");
    let cfg = small_config(&dir, "");
    let run = dir.join("run");
    let run = run.to_str().expect("utf-8");
    ok(&recompose(&[
        "train",
        "--config",
        cfg.to_str().expect("utf-8"),
        "--out",
        run,
        "--steps",
        "2",
        "--quiet",
    ]));
    let junk = dir.join("junk.safetensors");
    std::fs::write(&junk, b"not a safetensors file").expect("junk");
    let junk = junk.to_str().expect("utf-8");
    let missing = dir.join("missing");
    let missing = missing.to_str().expect("utf-8");
    let unwritable = format!("{missing}/out.csv");
    let model_a = format!("a={fixture}");
    let model_run = format!("a={run}");
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec!["factorize", "--problem", missing],
            "No such file or directory",
        ),
        (vec!["factorize", "--problem", junk], "junk.safetensors"),
        (
            vec![
                "sample",
                "--checkpoint",
                missing,
                "--num",
                "2",
                "--out",
                "x.csv",
            ],
            "config.toml",
        ),
        (
            vec![
                "sample",
                "--checkpoint",
                fixture,
                "--num",
                "2",
                "--out",
                "x.csv",
            ],
            "is a Decomp Diffusion checkpoint; `recompose decompose` and `recompose recombine` take it",
        ),
        (
            vec![
                "compose", "--expr", "a", "--model", &model_a, "--num", "2", "--out", "x.csv",
            ],
            "is a Decomp Diffusion checkpoint",
        ),
        (
            vec!["decompose", "--checkpoint", run, "--out", missing, &image],
            "is a denoiser checkpoint; `recompose sample` and `recompose compose` take it",
        ),
        (
            vec![
                "sample",
                "--checkpoint",
                run,
                "--num",
                "2",
                "--out",
                &unwritable,
            ],
            "out.csv: the folder",
        ),
        (
            vec![
                "compose",
                "--expr",
                "a",
                "--model",
                &model_run,
                "--num",
                "2",
                "--out",
                &unwritable,
            ],
            "does not exist",
        ),
        (
            vec!["decompose", "--checkpoint", fixture, "--out", missing, junk],
            "junk.safetensors",
        ),
    ];
    for (args, want) in cases {
        let o = recompose(&args);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "{args:?}: {err}");
        assert!(err.contains(want), "{args:?}: {err}");
        assert!(
            err.matches("(os error").count() <= 1,
            "{args:?}: repeated OS message: {err}"
        );
    }
    let help = ok(&recompose(&["--help"]));
    assert!(
        help.contains("Exit status: 0 success; 2 bad input"),
        "{help}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// Prompt algebra end to end: a shapes-text folder, a tiny text-conditioned U-Net trained on
/// it (score and energy), and `compose` with quoted prompts to a PNG grid; typos, OR over a
/// score model, MALA on a score model and a bad --guidance exit 2 with one line.
#[test]
fn compose_prompts_of_a_text_conditioned_model() {
    let dir = scratch("compose-prompts");
    let data = dir.join("data");
    let data_s = data.to_str().expect("utf-8");
    ok(&recompose(&[
        "dataset",
        "shapes-text",
        "--num",
        "8",
        "--out",
        data_s,
        "--seed",
        "2",
    ]));
    let cfg = dir.join("text.toml");
    std::fs::write(
        &cfg,
        format!(
            "[model]\nkind = \"unet\"\nimage_size = 32\nin_channels = 3\nout_channels = 3\n\
             model_channels = 8\nchannel_mult = [1, 2]\nnum_res_blocks = 1\n\
             attention_resolutions = []\nnum_head_channels = 8\nnum_groups = 4\n\
             time_embed_dim = 16\ndropout = 0.0\n\n[data]\nkind = \"captioned_folder\"\n\
             dir = \"{data_s}\"\nsize = 32\n\n[text]\nwidth = 16\nlayers = 1\nheads = 2\n\n\
             [diffusion]\nnum_timesteps = 10\n\n[train]\nbatch_size = 4\ncheckpoint_every = 2\n"
        ),
    )
    .expect("config");
    let cfg_s = cfg.to_str().expect("utf-8");
    let train = |name: &str, energy: bool| {
        let out = dir.join(name);
        let out_s = out.to_str().expect("utf-8").to_string();
        let mut args = vec![
            "train", "--config", cfg_s, "--out", &out_s, "--steps", "2", "--quiet",
        ];
        if energy {
            args.extend(["--energy", "half_norm"]);
        }
        ok(&recompose(&args));
        assert!(out.join("tokenizer.json").is_file());
        format!("shapes={out_s}")
    };
    let (score, energy) = (train("score", false), train("energy", true));
    let grid = dir.join("grid.png");
    let grid_s = grid.to_str().expect("utf-8");
    for (model, sampler, expr) in [
        (
            &score,
            "reverse",
            "\"red circle top left\" AND \"blue square\" NOT \"green\"",
        ),
        (&score, "ula", "shapes:\"red\""),
        (&energy, "hmc", "\"red\" AND 2*\"circle\""),
        (&energy, "mala", "\"red\" OR \"blue\""),
    ] {
        let mut args = vec![
            "compose",
            "--expr",
            expr,
            "--model",
            model,
            "--num",
            "4",
            "--out",
            grid_s,
            "--sampler",
            sampler,
            "--guidance",
            "2",
        ];
        if sampler != "reverse" {
            args.extend(["--mcmc-steps", "1"]);
        }
        let text = ok(&recompose(&args));
        assert!(text.contains("wrote 4 samples"), "{text}");
        let png = image::open(&grid).expect("grid");
        assert!(png.width() >= 64 && png.height() >= 64);
    }
    // `sample --prompt` draws from one guided prompt with any sampler; without it, from the
    // unconditional model; `--expert` adds an expert network (here the model's own run).
    let score_dir = score.strip_prefix("shapes=").expect("NAME=DIR");
    let energy_dir = energy.strip_prefix("shapes=").expect("NAME=DIR");
    let self_expert = format!("{score_dir}@6");
    for extra in [
        vec!["--prompt", "red circle", "--guidance", "3"],
        vec![],
        vec!["--prompt", "red", "--expert", &self_expert],
    ] {
        let with_expert = extra.contains(&"--expert");
        let mut args = vec![
            "sample",
            "--checkpoint",
            score_dir,
            "--num",
            "2",
            "--out",
            grid_s,
            "--sampler",
            "ddim",
            "--steps",
            "3",
        ];
        args.extend(extra);
        let text = ok(&recompose(&args));
        assert!(text.contains("wrote 2 samples"), "{text}");
        assert_eq!(
            text.contains("experts from timesteps 6"),
            with_expert,
            "{text}"
        );
    }
    let energy_self = format!("{energy_dir}@6");
    let late_self = format!("{score_dir}@10");
    for (extra, want) in [
        (vec!["--prompt", "purple circle"], "purple"),
        (vec!["--prompt", "red", "--guidance", "-1"], "--guidance"),
        (vec!["--expert", score_dir], "DIR@T"),
        (vec!["--expert", &energy_self], "energy"),
        (vec!["--expert", &late_self], "past the schedule"),
    ] {
        let mut args = vec![
            "sample",
            "--checkpoint",
            score_dir,
            "--num",
            "2",
            "--out",
            grid_s,
        ];
        args.extend(extra);
        let out = recompose(&args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(want), "{want}: {err}");
        assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    }
    // --check judges each sample with the shapes-text checker.
    let text = ok(&recompose(&[
        "compose",
        "--expr",
        "\"red\" NOT \"green\"",
        "--model",
        &score,
        "--num",
        "3",
        "--out",
        grid_s,
        "--check",
        "--levels",
        "4",
    ]));
    assert!(
        text.contains("check: ") && text.contains(" of 3 samples"),
        "{text}"
    );
    assert!(text.contains("on 4 of 10 levels"), "{text}");
    // An expert network for the noisier levels (any run of the same tokenizer, schedule and
    // form; here the model's own).
    let expert = format!("{score}@6");
    let text = ok(&recompose(&[
        "compose", "--expr", "\"red\"", "--model", &score, "--expert", &expert, "--num", "2",
        "--out", grid_s,
    ]));
    assert!(text.contains("wrote 2 samples"), "{text}");
    let energy_expert = format!("{energy}@6");
    let late_expert = format!("{score}@10");
    let zero_expert = format!("{score}@0");
    let other_expert = format!("other={score_dir}@5");
    for (model, extra, want) in [
        (
            &score,
            vec!["--expr", "\"red\"", "--expert", &energy_expert],
            "energy model",
        ),
        (
            &score,
            vec!["--expr", "\"red\"", "--expert", &late_expert],
            "past the schedule",
        ),
        (
            &score,
            vec!["--expr", "\"red\"", "--expert", &zero_expert],
            "positive timestep",
        ),
        (
            &score,
            vec!["--expr", "\"red\"", "--expert", &other_expert],
            "--expert other",
        ),
        (
            &score,
            vec!["--expr", "\"red\"", "--expert", score_dir],
            "NAME=DIR@T",
        ),
        (
            &energy,
            vec!["--expr", "\"red\" OR \"blue\"", "--check"],
            "--check",
        ),
        (&score, vec!["--expr", "\"red cirlce\""], "cirlce"),
        (&score, vec!["--expr", "\"red\" OR \"blue\""], "density"),
        (
            &score,
            vec!["--expr", "\"red\"", "--sampler", "mala"],
            "mala",
        ),
        (
            &score,
            vec!["--expr", "\"red\"", "--guidance", "-1"],
            "--guidance",
        ),
        (&score, vec!["--expr", "other:\"red\""], "other"),
        (
            &score,
            vec!["--expr", "\"red\"", "--levels", "1"],
            "--levels",
        ),
        (
            &score,
            vec!["--expr", "\"red\"", "--levels", "11"],
            "--levels",
        ),
    ] {
        let mut args = vec!["compose", "--model", model, "--num", "2", "--out", grid_s];
        args.extend(extra);
        let out = recompose(&args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(want), "{want}: {err}");
        assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// Samples 16 seeded chains of `"red circle top left"` from the committed shapes-text model
/// `model` (`shapes=DIR`) with its `experts` (`shapes=DIR@T`) on 20 levels through `compose
/// --check`, and returns how many the shapes-text checker accepts.
fn red_circles_top_left(scratch_name: &str, model: &str, experts: &[String]) -> usize {
    let out_dir = scratch(scratch_name);
    let grid = out_dir.join("grid.png");
    let mut args = vec![
        "compose",
        "--expr",
        "\"red circle top left\"",
        "--model",
        model,
    ];
    for e in experts {
        args.extend(["--expert", e.as_str()]);
    }
    args.extend([
        "--num",
        "16",
        "--levels",
        "20",
        "--seed",
        "7",
        "--check",
        "--out",
        grid.to_str().expect("utf-8"),
    ]);
    let text = ok(&recompose(&args));
    assert!(grid.is_file());
    let _ = std::fs::remove_dir_all(&out_dir);
    text.lines()
        .find_map(|l| l.strip_prefix("check: "))
        .and_then(|l| l.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no check line in {text}"))
}

/// The small pretrained shapes-text model (`fixtures/image-composition/`, its network for
/// every level and its expert for the noisiest levels) loads through `compose --expert` and
/// draws what a full caption asks for: a red circle in the top-left quadrant in at least 12 of
/// 16 seeded samples on 20 levels (14 of 16 when measured).
#[test]
fn small_shapes_text_model_draws_its_prompt() {
    let fixture = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../fixtures/image-composition"
    );
    let good = red_circles_top_left(
        "small-fixture-prompt",
        &format!("shapes={fixture}"),
        &[format!("shapes={fixture}/expert-t850-1000@850")],
    );
    assert!(good >= 12, "{good} of 16 samples satisfy the caption");
}

/// The committed networks of the image-composition experiments (`fixtures/image-composition-
/// full/`, the base and its two experts) load through `compose --expert` and draw what a full
/// caption asks for: a red circle in the top-left quadrant in at least 12 of 16 seeded samples
/// on 20 levels (16 of 16 when measured).
#[test]
fn committed_shapes_text_networks_draw_their_prompt() {
    let fixture = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../fixtures/image-composition-full"
    );
    let good = red_circles_top_left(
        "fixture-prompt",
        &format!("shapes={fixture}/score"),
        &[
            format!("shapes={fixture}/score-t500-850@500"),
            format!("shapes={fixture}/score-t850-1000@850"),
        ],
    );
    assert!(good >= 12, "{good} of 16 samples satisfy the caption");
}
