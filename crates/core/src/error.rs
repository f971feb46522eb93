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
    /// A request whose memory estimate exceeds the limit ([`crate::memory`]).
    #[error(transparent)]
    Memory(#[from] crate::memory::MemoryError),
    /// A data-parallel group that cannot be joined or whose ranks disagree
    /// ([`crate::collective`]); the message says why.
    #[error("{0}")]
    Collective(String),
}

/// The result type of `recompose-core`.
pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    /// Whether the error is about the caller's input — an argument, a setting, a shape, a file
    /// that is missing, unreadable, malformed or does not match — rather than a failure inside
    /// the computation. Programs map the two to different exit statuses.
    pub fn is_bad_input(&self) -> bool {
        match self {
            Self::Shape(_) | Self::Memory(_) => true,
            Self::Candle(_) | Self::Collective(_) => false,
        }
    }
}
