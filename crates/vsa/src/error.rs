//! The error type of `recompose-vsa`.

/// Everything that can go wrong in `recompose-vsa`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An error raised by candle.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    /// Two operands (or an operand and a model) disagree on a dimension.
    #[error("dimension mismatch in {op}: expected {expected}, got {got}")]
    DimMismatch {
        /// The operation that was attempted.
        op: &'static str,
        /// The dimension it required.
        expected: usize,
        /// The dimension it was given.
        got: usize,
    },
    /// A shape that an operation cannot accept.
    #[error("invalid shape in {op}: {msg}")]
    Shape {
        /// The operation that was attempted.
        op: &'static str,
        /// What is wrong with the shape.
        msg: String,
    },
    /// An invalid configuration value (a zero dimension, an empty codebook, a bad parameter).
    #[error("invalid configuration: {0}")]
    Config(String),
}

/// The result type of `recompose-vsa`.
pub type Result<T> = std::result::Result<T, Error>;
