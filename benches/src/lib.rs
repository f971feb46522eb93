//! Criterion benchmark suites for recompose; the suites live in `benches/benches/`.
//!
//! The library holds what a suite shares with the other programs that time the same work:
//! the Decomp Diffusion workloads ([`decomp`]), which the criterion suite `decomp` and the
//! `decomp-steps` timing server both run. Every program here starts with
//! `recompose_core::process::prepare()`, the set-up of the `recompose` binary.

pub mod decomp;
