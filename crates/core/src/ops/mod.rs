//! Tensor operations with CPU fast paths: one pass over contiguous host memory where candle
//! would compose several ops (each allocating and traversing a buffer), with results equal to
//! candle's own ops up to `f32` rounding. Every kernel is tested against the candle ops it
//! replaces, forward and (where it has one) backward.
//!
//! - [`elementwise`]: products of several tensors, bipolar signs and the change between two
//!   sign states, for the resonator loops of factorization (candle's ops on other devices);
//! - [`sparse`]: the noisy, sparse activation of the stochastic resonator and the
//!   reconstruction cosine of decoded codewords;
//! - [`conv`]: 2-D convolution as matrix products, with bias and residual branch fused;
//! - [`group_norm`]: group normalization fused with its affine map and SiLU, per-channel sums;
//! - [`attention`]: the U-Net's multi-head self-attention;
//! - [`repeat`]: a batch's rows repeated for several conditions;
//! - [`relu`]: ReLU with a one-pass gradient;
//! - [`resample`]: nearest-neighbour 2× upsampling and 2×2 average pooling;
//! - [`batch_norm`]: batch normalization of `[B, C, …]` tensors with batch statistics;
//! - [`optim`]: the AdamW update of one parameter tensor, gradient norms, moving averages;
//! - [`sign_gram`]: weighted sums of ±1 patterns by table lookup, the Gram matrices of
//!   alternating least squares over bipolar codebooks.
//!
//! The candle custom ops here ([`conv`], [`group_norm`], [`attention`], [`repeat`], [`relu`],
//! [`resample`], [`batch_norm`]) take contiguous `f32` tensors on the CPU; models call them
//! there and candle's ops on other devices.

pub mod attention;
pub mod batch_norm;
pub mod conv;
pub mod elementwise;
pub mod group_norm;
pub mod optim;
pub mod relu;
pub mod repeat;
pub mod resample;
pub mod sign_gram;
pub mod sparse;
