//! Tensor operations with CPU fast paths: one pass over contiguous host memory where candle
//! would compose several ops (each allocating and traversing a buffer), candle's own ops on
//! other devices, dtypes or layouts, with identical results.
//!
//! - [`elementwise`]: products of several tensors, bipolar signs and the change between two
//!   sign states, for the resonator loops of factorization;
//! - [`sparse`]: the noisy, sparse activation of the stochastic resonator and the
//!   reconstruction cosine of decoded codewords.

pub mod elementwise;
pub mod sparse;
