//! Criterion benchmark suites for recompose, and the measurement tasks `cargo xtask` runs.
//!
//! The criterion suites live in `benches/benches/`. The library holds what they share with the
//! other programs that time the same work: the Decomp Diffusion workloads ([`decomp`]), which
//! the criterion suite `decomp` and the `bench-steps` timing server both run, and the training
//! steps of the 2-D MLP and of the text-conditioned U-Net ([`step`]). Every program
//! here starts with `recompose_core::process::prepare()`, the set-up of the `recompose` binary.
//!
//! It also holds the tasks behind `cargo xtask` (a thin dispatcher): the reproductions that
//! write `docs/results/` ([`reproduce`] for factorization, [`composition`], [`image_composition`],
//! [`decomposition`]),
//! the coupled-diffusion tuner ([`tune`]), the comparisons with the PyTorch reference
//! ([`torch`], with its script `torchbench.py`), the prepared GPU runs ([`gpu`]), the chart writer ([`plot`]), the fuzz targets of every reader of outside input ([`fuzz`]), the training and worker pool the reproductions share ([`runs`]), the committed
//! fixtures ([`fixtures`], [`reference`](mod@reference)) and the workspace's paths and commands
//! ([`workspace`]). Like xtask, these tasks report errors with `anyhow`.

pub mod composition;
pub mod decomp;
pub mod decomposition;
pub mod fixtures;
pub mod fuzz;
pub mod gpu;
pub mod image_composition;
pub mod plot;
pub mod reference;
pub mod reproduce;
pub mod runs;
pub mod step;
pub mod torch;
pub mod tune;
pub mod workspace;
