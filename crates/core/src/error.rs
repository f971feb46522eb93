//! The error type of `recompose-core`.

/// Everything that can go wrong in `recompose-core`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An error raised by candle.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    /// Tensors whose shapes do not fit the operation; the message names them.
    #[error("{0}")]
    Shape(String),
}

/// The result type of `recompose-core`.
pub type Result<T> = std::result::Result<T, Error>;
