//! The error type of `recompose-decomp-diffusion`.

/// Everything that can go wrong in `recompose-decomp-diffusion`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An error raised by candle.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    /// A request whose estimated memory exceeds the limit, or whose sizes overflow
    /// ([`recompose_core::memory`]); nothing was allocated.
    #[error(transparent)]
    Memory(#[from] recompose_core::memory::MemoryError),
    /// An error of the ground-floor crate `recompose-core` other than candle's own.
    #[error(transparent)]
    Core(recompose_core::Error),
    /// An error raised by the diffusion library (schedules, training, checkpoints).
    #[error(transparent)]
    Diffusion(#[from] recompose_diffusion::Error),
    /// An error of the procedural datasets ([`crate::datasets`], from `recompose-scenes`): an
    /// unknown dataset name, a file that cannot be written.
    #[error(transparent)]
    Scenes(#[from] recompose_scenes::Error),
    /// An invalid configuration value (a zero size, an unknown dataset, …).
    #[error("invalid configuration: {0}")]
    Config(String),
    /// A file that could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A file that is malformed (an image that is not an RGB PNG of the right size, …); the
    /// message names what is wrong.
    #[error("{path}: {msg}")]
    Format {
        /// The file.
        path: String,
        /// What is wrong with it.
        msg: String,
    },
}

/// The result type of `recompose-decomp-diffusion`.
pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    /// Whether the error is about the caller's input — an argument, a setting, a shape, a file
    /// that is missing, unreadable, malformed or does not match — rather than a failure inside
    /// the computation. Programs map the two to different exit statuses.
    pub fn is_bad_input(&self) -> bool {
        match self {
            Self::Config(_) | Self::Io { .. } | Self::Format { .. } => true,
            Self::Diffusion(e) => e.is_bad_input(),
            Self::Scenes(e) => e.is_bad_input(),
            Self::Memory(_) => true,
            Self::Core(e) => e.is_bad_input(),
            Self::Candle(_) => false,
        }
    }
}

impl From<recompose_core::Error> for Error {
    /// candle's errors stay [`Error::Candle`], as if raised here.
    fn from(e: recompose_core::Error) -> Self {
        match e {
            recompose_core::Error::Candle(c) => Self::Candle(c),
            recompose_core::Error::Memory(m) => Self::Memory(m),
            other => Self::Core(other),
        }
    }
}
