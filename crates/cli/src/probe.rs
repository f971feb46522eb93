//! A fault-injection hook for testing crash safety. With the environment variable
//! `RECOMPOSE_PAUSE_AT` set, `train` reports or stops at the probe points of its checkpoint
//! protocol (see `recompose_diffusion::train::checkpoint::set_probe`), so that a test can kill
//! the process at an exact point of a write. Unset, nothing is installed and nothing changes.
//!
//! - `RECOMPOSE_PAUSE_AT=list`: every probe point reached is printed on stderr as
//!   `probe NAME`.
//! - `RECOMPOSE_PAUSE_AT=NAME#N` (`NAME` alone means `NAME#1`): the N-th time the point `NAME`
//!   is reached, `paused at NAME#N` is printed on stderr and the process waits there to be
//!   killed; if nobody kills it within ten minutes it exits with status 1.

use std::io::Write;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use recompose_diffusion::train::checkpoint::set_probe;

/// The environment variable read by [`install_from_env`].
const VAR: &str = "RECOMPOSE_PAUSE_AT";

/// Installs the probe that `RECOMPOSE_PAUSE_AT` asks for, if it is set.
pub fn install_from_env() {
    let Ok(spec) = std::env::var(VAR) else {
        return;
    };
    if spec == "list" {
        set_probe(Box::new(|name| {
            let _ = writeln!(std::io::stderr().lock(), "probe {name}");
        }));
        return;
    }
    let (target, nth) = match spec.rsplit_once('#') {
        Some((name, n)) => (name.to_string(), n.parse::<usize>().unwrap_or(1).max(1)),
        None => (spec, 1),
    };
    let seen = AtomicUsize::new(0);
    set_probe(Box::new(move |name| {
        if name != target || seen.fetch_add(1, Ordering::SeqCst) + 1 != nth {
            return;
        }
        let _ = writeln!(std::io::stderr().lock(), "paused at {name}#{nth}");
        let began = Instant::now();
        while began.elapsed() < Duration::from_secs(600) {
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = writeln!(
            std::io::stderr().lock(),
            "error: {VAR}: nobody killed the process paused at {name}#{nth}"
        );
        std::process::exit(1);
    }));
}
