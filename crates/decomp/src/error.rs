//! The error type of `recompose-decomp`.

/// Everything that can go wrong in `recompose-decomp`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An error raised by candle.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    /// An error raised by the VSA library.
    #[error(transparent)]
    Vsa(#[from] recompose_vsa::Error),
    /// An invalid configuration value (a zero size, a probability outside [0, 1], …).
    #[error("invalid configuration: {0}")]
    Config(String),
    /// A method that does not exist for the chosen VSA model.
    #[error("method {method} is not available for the {vsa} model")]
    Unsupported {
        /// The factorization method.
        method: &'static str,
        /// The VSA model.
        vsa: &'static str,
    },
    /// A numerical failure, such as a singular system that no regularization could fix.
    #[error("numerical failure: {0}")]
    Numerical(String),
}

/// The result type of `recompose-decomp`.
pub type Result<T> = std::result::Result<T, Error>;
