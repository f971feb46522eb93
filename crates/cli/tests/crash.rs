//! Crash safety of `recompose train`, tested on the real binary:
//!
//! - a run killed with SIGKILL again and again — at every probe point of the checkpoint
//!   protocol (inside a file's bytes, between its sync and its rename, between the renames of
//!   the directory swap, inside a loss-log row, between steps, during a resume) — and resumed
//!   each time ends with the same bytes in every file as a run never interrupted;
//! - a write that fails for lack of space (a file-size limit) reports it with exit status 2 and
//!   leaves the last checkpoint and the model files as they were;
//! - a second run on the same output directory is refused while the first holds it, changing
//!   nothing, and the lock left by a killed run does not block its resume.
//!
//! The kills land where the `RECOMPOSE_PAUSE_AT` hook stops the process (see the CLI's
//! `probe` module): the production code path, stopped at a named point and killed there.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Instant;

use candle_core::Device;
use recompose_diffusion::train::{Manifest, read_model_weights, read_safetensors};

const BIN: &str = env!("CARGO_BIN_EXE_recompose");

/// A fresh scratch directory under the system's temporary directory.
fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("recompose-crash-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir
}

/// Writes `DIR/run.toml`: a tiny MLP on the bar, batch 8, and the given `[train]` lines.
fn config(dir: &Path, train: &str) -> PathBuf {
    let cfg = dir.join("run.toml");
    std::fs::write(
        &cfg,
        format!(
            "[model]\nkind = \"mlp\"\nhidden = 16\nblock_hidden = 32\nnum_blocks = 1\n\
             time_embed_dim = 8\nnum_timesteps = 20\n\n[data]\nkind = \"toy2d\"\n\
             name = \"bar\"\n\n[diffusion]\nnum_timesteps = 20\n\n[train]\nbatch_size = 8\n\
             ema_decay = 0.9\ngrad_clip = 1.0\nseed = 4\n{train}"
        ),
    )
    .expect("config");
    cfg
}

/// `recompose train --config CFG --out OUT --quiet [--resume] [extra…]`.
fn train_cmd(cfg: &Path, out: &Path, resume: bool, extra: &[&str]) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.arg("train")
        .arg("--config")
        .arg(cfg)
        .arg("--out")
        .arg(out)
        .arg("--quiet")
        .args(extra)
        .env_remove("RECOMPOSE_PAUSE_AT")
        // One thread: a tiny model gains nothing from more, and a thread pool on cores shared
        // with other work can slow every step a hundredfold.
        .env("RAYON_NUM_THREADS", "1");
    if resume {
        cmd.arg("--resume");
    }
    cmd
}

/// Runs `cmd` to its end and checks that it succeeded.
fn run_ok(mut cmd: Command) {
    let out = cmd.output().expect("run recompose");
    assert!(
        out.status.success(),
        "{:?}: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Whether `out` holds a checkpoint to resume from (what `train --resume` looks for).
fn resumable(out: &Path) -> bool {
    ["checkpoint", "checkpoint.old"]
        .iter()
        .any(|d| out.join(d).join("state.json").is_file())
}

/// The step of the checkpoint a resume of `out` would start from, after checking that its state
/// file is whole: every tensor's dtype, shape and checksum as its `state.json` records them.
fn resumable_step(out: &Path) -> Option<u64> {
    ["checkpoint", "checkpoint.old"].iter().find_map(|d| {
        let dir = out.join(d);
        let text = std::fs::read_to_string(dir.join("state.json")).ok()?;
        let v: serde_json::Value = serde_json::from_str(&text).expect("state.json is JSON");
        let manifest: Manifest =
            serde_json::from_value(v["state"].clone()).expect("a manifest in state.json");
        read_safetensors(
            &dir.join("state.safetensors"),
            Some(&manifest),
            &Device::Cpu,
        )
        .unwrap_or_else(|e| panic!("{d} is not whole: {e}"));
        v["step"].as_u64()
    })
}

/// Every file under `dir` (relative path → bytes).
fn snapshot(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    fn walk(root: &Path, dir: &Path, into: &mut BTreeMap<String, Vec<u8>>) {
        for entry in std::fs::read_dir(dir).expect("read dir") {
            let path = entry.expect("dir entry").path();
            if path.is_dir() {
                walk(root, &path, into);
            } else {
                let rel = path.strip_prefix(root).expect("under root");
                into.insert(
                    rel.display().to_string(),
                    std::fs::read(&path).expect("read file"),
                );
            }
        }
    }
    let mut files = BTreeMap::new();
    walk(dir, dir, &mut files);
    files
}

/// Checks that `got` holds exactly the files of `want`, byte for byte, except the run lock's
/// contents (the id of the process that held it) and the provenance record, which lists every
/// run — a resumed training has more of them (checked: the same revision, starting at step 0).
fn assert_same_files(want: &Path, got: &Path) {
    let (mut a, mut b) = (snapshot(want), snapshot(got));
    assert!(a.remove("train.lock").is_some(), "no lock file in {want:?}");
    assert!(b.remove("train.lock").is_some(), "no lock file in {got:?}");
    let runs = |d: &Path| recompose_diffusion::train::read_provenance(d);
    let (ra, rb) = (runs(want), runs(got));
    assert_eq!(ra.len(), 1, "one run in {want:?}");
    assert!(!rb.is_empty() && rb[0].from_step == 0, "{rb:?}");
    assert!(rb.iter().all(|r| r.revision == ra[0].revision), "{rb:?}");
    assert!(a.remove("provenance.json").is_some() && b.remove("provenance.json").is_some());
    let names = |m: &BTreeMap<String, Vec<u8>>| m.keys().cloned().collect::<Vec<_>>();
    assert_eq!(names(&a), names(&b), "different files");
    for (name, bytes) in &a {
        assert!(
            bytes == &b[name],
            "{name} differs from the uninterrupted run's"
        );
    }
}

/// A process started with `RECOMPOSE_PAUSE_AT` set.
enum Stop {
    /// It paused where asked and was killed with SIGKILL.
    Killed,
    /// It ended on its own first.
    Ended(ExitStatus, String),
}

/// Starts `cmd` with `RECOMPOSE_PAUSE_AT=pause` and kills it with SIGKILL once it reports that
/// it paused there.
fn kill_at(mut cmd: Command, pause: &str) -> Stop {
    let mut child = cmd
        .env("RECOMPOSE_PAUSE_AT", pause)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start recompose");
    let want = format!("paused at {pause}");
    let mut text = String::new();
    let stderr = child.stderr.take().expect("stderr");
    for line in BufReader::new(stderr).lines() {
        let line = line.expect("read stderr");
        if line == want {
            return Stop::Killed.confirm(child);
        }
        text.push_str(&line);
        text.push('\n');
    }
    Stop::Ended(child.wait().expect("wait"), text)
}

impl Stop {
    fn confirm(self, mut child: Child) -> Self {
        child.kill().expect("SIGKILL");
        let status = child.wait().expect("wait");
        assert_eq!(status.signal(), Some(9), "{status:?}");
        self
    }
}

/// The probe points a process reaches, in order, with `RECOMPOSE_PAUSE_AT=list`.
fn probe_points(cmd: Command) -> Vec<String> {
    let mut cmd = cmd;
    let out = cmd
        .env("RECOMPOSE_PAUSE_AT", "list")
        .output()
        .expect("run recompose");
    let text = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{text}");
    text.lines()
        .filter_map(|l| l.strip_prefix("probe ").map(str::to_string))
        .collect()
}

/// Where a probe point lies relative to the writes of the checkpoint protocol.
fn landing(point: &str) -> &'static str {
    if point.ends_with(":half") {
        "inside a write (half the bytes written)"
    } else if point.ends_with(":synced") {
        "inside an atomic write (synced, not yet renamed)"
    } else if point == "step" {
        "between steps, no write under way"
    } else if point == "lock:acquired" || point == "loss log:truncated" {
        "at start-up or resume, before the first write"
    } else {
        "between the writes and renames of a checkpoint"
    }
}

/// How a kill-and-resume run is set up.
struct Plan {
    /// The run's length.
    steps: usize,
    /// Steps between checkpoints.
    checkpoint_every: usize,
    /// More `[train]` lines of the configuration.
    train: &'static str,
    /// The occurrences of each probe point to kill at (those a process reaches).
    occurrences: std::ops::RangeInclusive<usize>,
}

/// Kills a training run at the occurrences `plan` names of every probe point, resuming after
/// each kill (from scratch while no checkpoint exists), then lets it finish and compares every
/// file with an uninterrupted run's. Returns the number of kills.
fn kill_and_resume(name: &str, plan: &Plan) -> usize {
    let began = Instant::now();
    let dir = scratch(name);
    let cfg = config(
        &dir,
        &format!(
            "steps = {}\ncheckpoint_every = {}\n{}",
            plan.steps, plan.checkpoint_every, plan.train
        ),
    );

    let reference = dir.join("reference");
    run_ok(train_cmd(&cfg, &reference, false, &[]));

    // The probe points of a short fresh run (a checkpoint more than the occurrences asked for)
    // and of a resume (here of the finished run, which reaches those of start-up only). Each is killed at, in the order a run reaches them first, at the
    // occurrences a fresh process reaches (a resumed one reaches at least as many: it writes
    // the model files once more at start-up).
    let listing = dir.join("listing");
    let short_steps = (plan.checkpoint_every * (plan.occurrences.end() + 1)).to_string();
    let short = ["--steps", short_steps.as_str()];
    let fresh = probe_points(train_cmd(&cfg, &listing, false, &short));
    let resumed = probe_points(train_cmd(&cfg, &listing, true, &short));
    let mut order: Vec<String> = Vec::new();
    for p in fresh.iter().chain(&resumed) {
        if !order.contains(p) {
            order.push(p.clone());
        }
    }
    let count = |p: &str| fresh.iter().filter(|q| *q == p).count();
    let schedule: Vec<(String, usize)> = order
        .iter()
        .flat_map(|p| {
            let reached = count(p).max(1);
            plan.occurrences
                .clone()
                .filter(move |&n| n <= reached)
                .map(move |n| (p.clone(), n))
        })
        .collect();
    for must in [
        "step",
        "loss log:half",
        "loss log:truncated",
        "lock:acquired",
        "checkpoint.tmp:created",
        "checkpoint.tmp/state.safetensors:half",
        "checkpoint.tmp/state.json:synced",
        "checkpoint:retired",
        "checkpoint:committed",
        "checkpoint.old:removed",
        "model.safetensors.tmp:half",
        "model.json:renamed",
    ] {
        assert!(order.iter().any(|p| p == must), "no probe point {must}");
    }

    let out = dir.join("crashed");
    let mut landed: BTreeMap<&'static str, usize> = BTreeMap::new();
    let mut committed = None;
    for (point, n) in &schedule {
        let resume = resumable(&out);
        assert!(
            resume || point != "loss log:truncated",
            "no checkpoint to resume at {point}#{n}"
        );
        let lock = std::fs::read_to_string(out.join("train.lock")).ok();
        match kill_at(train_cmd(&cfg, &out, resume, &[]), &format!("{point}#{n}")) {
            Stop::Killed => {}
            Stop::Ended(status, text) => {
                panic!("the run ended ({status:?}) before {point}#{n}: {text}")
            }
        }
        // The killed process left its lock file; the next start must not be blocked by it.
        if lock.is_some() {
            assert!(out.join("train.lock").is_file());
        }
        *landed.entry(landing(point)).or_default() += 1;
        // A whole checkpoint exists once one was committed, and committed progress never goes
        // back.
        let step = resumable_step(&out);
        assert!(
            step >= committed,
            "{point}#{n}: checkpoint {step:?} after {committed:?}"
        );
        committed = step;
    }
    let kills = schedule.len();
    let last = committed.expect("a checkpoint after the kills");
    run_ok(train_cmd(&cfg, &out, true, &[]));
    assert_same_files(&reference, &out);
    for leftover in ["checkpoint.tmp", "checkpoint.old", "model.safetensors.tmp"] {
        assert!(!out.join(leftover).exists(), "{leftover} left behind");
    }
    println!(
        "{name}: {kills} SIGKILLs at {} probe points, the last checkpoint before the final \
         resume at step {last}; {:.1} s in all",
        order.len(),
        began.elapsed().as_secs_f64()
    );
    for (where_, k) in &landed {
        println!("  {k:3} kills {where_}");
    }
    let _ = std::fs::remove_dir_all(&dir);
    kills
}

/// At least 20 kills, at every probe point (twice where a process reaches it twice): the run
/// still ends byte-identical to an uninterrupted one.
#[test]
fn killed_at_every_probe_point_and_resumed_ends_bit_identical() {
    let kills = kill_and_resume(
        "quick",
        &Plan {
            steps: 75,
            checkpoint_every: 3,
            train: "log_format = \"csv\"\n",
            occurrences: 1..=2,
        },
    );
    assert!(kills >= 20, "only {kills} kills");
}

/// The long version: every probe point at its first five occurrences, a JSONL log written every
/// other step, a cosine schedule with warm-up.
#[test]
#[ignore = "85 kills, about 20 s; run with `cargo xtask crash-test`"]
fn killed_many_times_and_resumed_ends_bit_identical() {
    let kills = kill_and_resume(
        "long",
        &Plan {
            steps: 800,
            checkpoint_every: 4,
            train: "log_every = 2\nwarmup_steps = 10\ndecay = \"cosine\"\n",
            occurrences: 1..=5,
        },
    );
    assert!(kills >= 80, "only {kills} kills");
}

/// A checkpoint write that fails for lack of space (a file-size limit below the state file's
/// size) exits with status 2 and one line naming the file, removes its temporary directory and
/// leaves the last checkpoint and the model files byte for byte as they were; resuming without
/// the limit ends as if nothing had happened.
#[test]
fn a_failed_checkpoint_write_leaves_the_last_one_intact() {
    let dir = scratch("full");
    let cfg = config(&dir, "steps = 12\ncheckpoint_every = 3\n");
    let reference = dir.join("reference");
    run_ok(train_cmd(&cfg, &reference, false, &[]));

    let out = dir.join("run");
    run_ok(train_cmd(&cfg, &out, false, &["--steps", "6"]));
    let before = snapshot(&out);

    // `ulimit -f` counts 512-byte blocks in dash and 1024-byte ones in bash: choose a count
    // under which, in either unit, every other file fits and the checkpoint's state does not.
    let size = |p: &str| before[p].len() as u64;
    let largest_other = before
        .iter()
        .filter(|(k, _)| k.as_str() != "checkpoint/state.safetensors")
        .map(|(_, v)| v.len() as u64)
        .max()
        .unwrap_or(0)
        .max(2 * 1024);
    let blocks = largest_other.div_ceil(512) + 1;
    assert!(
        blocks * 1024 < size("checkpoint/state.safetensors"),
        "the state file ({} bytes) is too small for the test",
        size("checkpoint/state.safetensors")
    );
    let resume = train_cmd(&cfg, &out, true, &["--steps", "12"]);
    let mut limited = Command::new("sh");
    limited
        .arg("-c")
        .arg("trap '' XFSZ; ulimit -f \"$1\" || exit 99; shift; exec \"$@\"")
        .arg("sh")
        .arg(blocks.to_string())
        .arg(resume.get_program())
        .args(resume.get_args());
    let failed = limited.output().expect("run sh");
    let stderr = String::from_utf8_lossy(&failed.stderr);
    assert_eq!(
        failed.status.code(),
        Some(2),
        "{:?}: {stderr}",
        failed.status
    );
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.starts_with("error: ") && stderr.contains("state.safetensors"),
        "{stderr}"
    );
    assert!(stderr.contains("File too large"), "{stderr}");

    let after = snapshot(&out);
    assert!(
        !after.keys().any(|k| k.contains(".tmp")),
        "temporary files left: {:?}",
        after.keys().collect::<Vec<_>>()
    );
    for file in [
        "checkpoint/state.safetensors",
        "checkpoint/state.json",
        "model.safetensors",
        "model.json",
    ] {
        assert!(before[file] == after[file], "{file} changed");
    }

    run_ok(train_cmd(&cfg, &out, true, &["--steps", "12"]));
    assert_same_files(&reference, &out);
    let _ = std::fs::remove_dir_all(&dir);
}

/// While a run is paused in the middle of a checkpoint write, a second run on its directory —
/// fresh or `--resume` — exits with status 2 and one line naming the lock and the first run's
/// process, and changes nothing. Once the first run is killed, its leftover lock file does not
/// stop the resume, which ends byte-identical to an uninterrupted run.
#[test]
fn a_second_run_on_the_same_directory_is_refused() {
    let dir = scratch("lock");
    let cfg = config(&dir, "steps = 9\ncheckpoint_every = 3\n");
    let reference = dir.join("reference");
    run_ok(train_cmd(&cfg, &reference, false, &[]));

    let out = dir.join("run");
    let pause = "checkpoint.tmp/state.safetensors:half#2";
    let mut first = train_cmd(&cfg, &out, false, &[])
        .env("RECOMPOSE_PAUSE_AT", pause)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start recompose");
    let mut lines = BufReader::new(first.stderr.take().expect("stderr")).lines();
    let line = lines.next().expect("a line").expect("read stderr");
    assert_eq!(line, format!("paused at {pause}"));
    let held = snapshot(&out);
    assert!(held.contains_key("checkpoint.tmp/state.safetensors"));

    for resume in [false, true] {
        let second = train_cmd(&cfg, &out, resume, &[])
            .output()
            .expect("run recompose");
        let stderr = String::from_utf8_lossy(&second.stderr);
        assert_eq!(second.status.code(), Some(2), "{stderr}");
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        assert!(
            stderr.contains("train.lock")
                && stderr.contains(&format!("another training run (process {})", first.id())),
            "{stderr}"
        );
        assert!(snapshot(&out) == held, "the refused run changed files");
    }

    let pid = first.id();
    Stop::Killed.confirm(first);
    let stale = std::fs::read_to_string(out.join("train.lock")).expect("lock file");
    assert_eq!(stale.trim(), pid.to_string());
    run_ok(train_cmd(&cfg, &out, true, &[]));
    assert_same_files(&reference, &out);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A kill between the renames of `model.safetensors` and `model.json` leaves the two torn (the
/// weights new, the manifest of the checkpoint before); the resume rewrites both from the
/// checkpoint before its first step, and the run still ends byte-identical.
#[test]
fn a_resume_repairs_model_files_torn_by_a_kill() {
    let dir = scratch("torn");
    let cfg = config(&dir, "steps = 9\ncheckpoint_every = 3\n");
    let reference = dir.join("reference");
    run_ok(train_cmd(&cfg, &reference, false, &[]));

    let out = dir.join("run");
    let torn = kill_at(
        train_cmd(&cfg, &out, false, &[]),
        "model.safetensors:renamed#2",
    );
    assert!(matches!(torn, Stop::Killed));
    let err = read_model_weights(&out, &Device::Cpu).expect_err("torn model files");
    assert!(err.to_string().contains("checksum"), "{err}");

    let resumed = kill_at(train_cmd(&cfg, &out, true, &[]), "step#1");
    assert!(matches!(resumed, Stop::Killed));
    let weights = read_model_weights(&out, &Device::Cpu).expect("whole model files");
    let state = read_safetensors(
        &out.join("checkpoint/state.safetensors"),
        None,
        &Device::Cpu,
    )
    .expect("state");
    for (name, w) in &weights {
        let ema = &state[&format!("ema.{name}")];
        let same = (w - ema)
            .and_then(|d| d.abs()?.sum_all()?.to_scalar::<f32>())
            .expect("compare");
        assert_eq!(same, 0.0, "{name} is not the checkpoint's EMA");
    }
    run_ok(train_cmd(&cfg, &out, true, &[]));
    assert_same_files(&reference, &out);
    let _ = std::fs::remove_dir_all(&dir);
}
