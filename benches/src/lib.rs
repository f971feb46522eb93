//! Criterion benchmark suites for recompose; the suites live in `benches/benches/`.
//!
//! The library holds what a suite shares with the other programs that time the same work:
//! the process set-up ([`prepare_process`]) and the Decomp Diffusion workloads ([`decomp`]),
//! which the criterion suite `decomp` and the `decomp-steps` timing server both run.

pub mod decomp;

/// Sets a benchmark process up the way the `recompose` binary sets itself up: candle's thread
/// count pinned through `RAYON_NUM_THREADS` (the available cores unless already set; spares
/// candle a `/proc/cpuinfo` read per matmul) and freed buffers kept for reuse
/// ([`recompose_diffusion::host::keep_freed_memory`]).
///
/// # Safety
///
/// Sets an environment variable: call it first thing in `main`, before any other thread exists.
pub unsafe fn prepare_process() {
    if std::env::var_os("RAYON_NUM_THREADS").is_none() {
        let n = std::thread::available_parallelism().map_or(1, |n| n.get());
        // SAFETY: the caller's contract: no other thread exists yet.
        unsafe { std::env::set_var("RAYON_NUM_THREADS", n.to_string()) };
    }
    recompose_diffusion::host::keep_freed_memory();
}
