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
    /// A request whose estimated memory exceeds the limit, or whose sizes overflow
    /// ([`recompose_core::memory`]); nothing was allocated.
    #[error(transparent)]
    Memory(#[from] recompose_core::memory::MemoryError),
    /// An error of the ground-floor crate `recompose-core` other than candle's own.
    #[error(transparent)]
    Core(recompose_core::Error),
    /// An error from candle.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

/// The result type of `recompose-compose`.
pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    /// Whether the error is about the caller's input — an argument, a setting, a shape, a file
    /// that is missing, unreadable, malformed or does not match — rather than a failure inside
    /// the computation. Programs map the two to different exit statuses.
    pub fn is_bad_input(&self) -> bool {
        match self {
            Self::Config(_) | Self::Shape(_) | Self::NeedsDensity(_) | Self::Parse(_) => true,
            Self::Diffusion(e) => e.is_bad_input(),
            Self::Memory(_) => true,
            Self::Core(e) => e.is_bad_input(),
            Self::Diverged(_) | Self::Candle(_) => false,
        }
    }
}

impl From<recompose_core::Error> for Error {
    /// candle's errors stay [`Error::Candle`] and shape errors [`Error::Shape`], as if raised here.
    fn from(e: recompose_core::Error) -> Self {
        match e {
            recompose_core::Error::Candle(c) => Self::Candle(c),
            recompose_core::Error::Memory(m) => Self::Memory(m),
            recompose_core::Error::Shape(msg) => Self::Shape(msg),
            other => Self::Core(other),
        }
    }
}
