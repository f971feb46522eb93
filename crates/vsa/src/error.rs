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
    /// A request whose estimated memory exceeds the limit, or whose sizes overflow
    /// ([`recompose_core::memory`]); nothing was allocated.
    #[error(transparent)]
    Memory(#[from] recompose_core::memory::MemoryError),
    /// An error of the ground-floor crate `recompose-core` other than candle's own.
    #[error(transparent)]
    Core(recompose_core::Error),
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
    /// A tensor with a dtype the operation cannot accept (hypervectors are `f32`).
    #[error("invalid dtype in {op}: expected {expected:?}, got {got:?}")]
    DType {
        /// The operation that was attempted.
        op: &'static str,
        /// The dtype it required.
        expected: candle_core::DType,
        /// The dtype it was given.
        got: candle_core::DType,
    },
    /// A name that a codebook does not contain.
    #[error("unknown codeword name {0:?}")]
    UnknownName(String),
    /// A vector that has no exact inverse (for example an HRR vector with a zero Fourier coefficient).
    #[error("not invertible: {0}")]
    NotInvertible(String),
}

/// The result type of `recompose-vsa`.
pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    /// Whether the error is about the caller's input — an argument, a setting, a shape, a file
    /// that is missing, unreadable, malformed or does not match — rather than a failure inside
    /// the computation. Programs map the two to different exit statuses.
    pub fn is_bad_input(&self) -> bool {
        match self {
            Self::DimMismatch { .. }
            | Self::Shape { .. }
            | Self::Config(_)
            | Self::DType { .. }
            | Self::UnknownName(_)
            | Self::NotInvertible(_) => true,
            Self::Memory(_) => true,
            Self::Core(e) => e.is_bad_input(),
            Self::Candle(_) => false,
        }
    }
}

impl From<recompose_core::Error> for Error {
    /// candle's errors stay [`Error::Candle`] and shape errors [`Error::Shape`], as if raised here.
    fn from(e: recompose_core::Error) -> Self {
        match e {
            recompose_core::Error::Candle(c) => Self::Candle(c),
            recompose_core::Error::Memory(m) => Self::Memory(m),
            recompose_core::Error::Shape(msg) => Self::Shape { op: "kernel", msg },
            other => Self::Core(other),
        }
    }
}
