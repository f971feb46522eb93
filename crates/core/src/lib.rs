//! # recompose-core
//!
//! The ground floor of the recompose workspace: what every other crate builds on. Nothing in it
//! knows about hypervectors, diffusion or composition.
//!
//! - [`random`]: the one seeded random generator of the workspace ([`SeededRng`], ChaCha with 8
//!   rounds) and the draws made from it (standard normal, uniform, bipolar values, as host
//!   vectors or tensors). candle's CPU generator cannot be seeded, so every random number in
//!   recompose comes from here and reaches a device through `Tensor::from_vec`: the same seed
//!   gives the same numbers on every device.
//! - [`host`]: host access to the contiguous `f32` data of CPU tensors, the entry of every fast
//!   path, and the helpers the kernels share (output buffers, parallel parts on candle's worker
//!   threads, vectorized loops, a fast exponential).
//! - [`gemm`]: single-threaded host matrix products (whole, strided, dense layers).
//! - [`ops`]: every hand-written CPU kernel of the workspace, each tested against the candle
//!   ops it replaces (forward and backward): the factorizers' elementwise and sparse passes;
//!   convolution, fused group norm + SiLU, attention, row repeats, ReLU, resampling and batch
//!   normalization as candle custom ops for the denoisers and the Decomp Diffusion encoder; the
//!   AdamW update, gradient norms and moving averages of training. Models dispatch to them for
//!   `f32` tensors on the CPU and to candle's ops elsewhere.
//!
//! - [`parity`]: device parity — one computation on the CPU fast paths and on candle's ops (on
//!   the CPU with the fast paths off, or on CUDA), compared output by output; the
//!   [`device_parity!`] macro writes the tests.
//! - [`collective`]: the all-reduce of data-parallel training — one rank ([`collective::Single`]),
//!   threads of one process ([`collective::LocalGroup`]) or one process per GPU over NCCL
//!   (feature `nccl`).
//! - [`memory`]: the memory guard — estimates of a request's peak allocation, the limit they
//!   are checked against (by default the machine's available memory) and byte sizes.
//!
//! - `process` (feature `process`, for binaries only): the thread count and allocator settings
//!   CPU programs start with.
//!
//! This is the only crate of the workspace with `unsafe` code; each use carries a `SAFETY`
//! comment that states why it holds.
//!
//! ## Example
//!
//! ```
//! use candle_core::Device;
//! use recompose_core::random::{normal, seeded};
//!
//! let a = normal(&mut seeded(7), &[2, 3], &Device::Cpu)?;
//! let b = normal(&mut seeded(7), &[2, 3], &Device::Cpu)?;
//! assert_eq!(a.to_vec2::<f32>()?, b.to_vec2::<f32>()?);
//! // The product of three tensors in one pass on the CPU, candle's ops elsewhere.
//! let p = recompose_core::ops::elementwise::product(&[&a, &b, &a])?;
//! assert_eq!(p.dims(), &[2, 3]);
//! # Ok::<(), recompose_core::Error>(())
//! ```
#![warn(missing_docs)]

pub mod collective;
pub mod error;
pub mod gemm;
pub mod host;
pub mod memory;
pub mod ops;
pub mod parity;
#[cfg(feature = "process")]
pub mod process;
pub mod random;

pub use error::{Error, Result};
pub use random::{SeededRng, seeded};

/// The crate README's example, compiled and run as a doctest.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
