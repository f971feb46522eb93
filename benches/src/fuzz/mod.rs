//! Fuzzing of every reader of outside input: `cargo xtask fuzz [TARGET] [--seconds N]`.
//!
//! Each target in [`targets::TARGETS`] hands one input to a public reader of a library crate
//! (problem files, safetensors weights and their JSON sidecars, training checkpoints, Decomp
//! Diffusion weights, TOML run configurations, composition expressions, PNG images). The
//! properties checked on every input:
//!
//! - no panic, no abort (stack overflow, failed allocation);
//! - no hang: one input takes at most [`HANG_SECONDS`];
//! - no unbounded allocation: the `recompose-fuzz` program refuses any single allocation above
//!   [`ALLOC_CAP`] bytes (a reader that trusts a declared size aborts there);
//! - a malformed input is an error that says it is about the input (`is_bad_input()`); an
//!   error that does not is counted as *internal* and listed;
//! - what a reader accepts keeps its promises (loaded weights are finite, pixels lie in their
//!   value range, an expression's canonical form parses back to itself).
//!
//! Two engines drive the targets. The mutation engine ([`engine`]) runs everywhere on the
//! stable toolchain: structured mutations ([`mutate`]) of seed inputs the project makes itself,
//! with inputs that produce a new outcome kept as new seeds. With `--engine afl` the same
//! targets run under AFL++ (coverage-guided, through `cargo afl` and the harness in `fuzz/`).
//!
//! Why two: cargo-fuzz (libFuzzer) needs a nightly toolchain, which CI does not have. AFL++
//! runs on stable: `cargo install cargo-afl` builds it with the C compiler in about 40 s, and
//! under it the `expr` target ran 131 000 inputs in 20 s with coverage feedback. But the
//! instrumented build of the targets compiles every dependency (candle, image, …) again: 11 CPU
//! minutes, 53 minutes of wall time on a shared two-core machine, far beyond the few minutes CI
//! can spend. So CI runs the mutation engine (10 s per target after the test build, which it
//! reuses), and `--engine afl` is there for longer local runs.

pub mod engine;
pub mod mutate;
pub mod targets;
pub mod xtask;

/// Longest time one input may take before it counts as a hang, in seconds.
pub const HANG_SECONDS: u64 = 10;

/// Largest single allocation the fuzz program allows, in bytes (1 GiB).
pub const ALLOC_CAP: usize = 1 << 30;
