//! The error type of `recompose-compose`.

/// Everything that can go wrong in `recompose-compose`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An invalid setting: a non-positive step size, an empty composition, a refresh rate outside
    /// \[0, 1), a sampler that cannot run on the given models.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// Models or points whose sizes do not fit together: components of different data
    /// dimensions or noise schedules, a batch whose length is not a multiple of the dimension.
    #[error("shape mismatch: {0}")]
    Shape(String),
    /// An operation that needs log-densities (a mixture, a Metropolis correction) applied to
    /// models that only provide scores.
    #[error("{0}")]
    NeedsDensity(String),
    /// An expression that does not parse (the message points at the token).
    #[error(transparent)]
    Parse(#[from] crate::expr::ParseError),
    /// The chains produced non-finite values (the message names the noise level); usually a
    /// step size too large for the target.
    #[error("the chains diverged: {0}")]
    Diverged(String),
    /// An error of the diffusion models underneath.
    #[error(transparent)]
    Diffusion(#[from] recompose_diffusion::Error),
    /// An error from candle.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

/// The result type of `recompose-compose`.
pub type Result<T> = std::result::Result<T, Error>;
