//! The error type of `recompose-diffusion`.

/// Everything that can go wrong in `recompose-diffusion`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An invalid configuration or argument: a schedule parameter out of range, a time or log-SNR
    /// with no corresponding point on the schedule, a zero step count, a timestep outside the
    /// schedule, a sampler setting out of range.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// Tensors whose shapes do not fit together: a per-sample coefficient whose length is not the
    /// batch size, a model output whose shape differs from its input, a sample whose size does
    /// not match the data dimension.
    #[error("shape mismatch: {0}")]
    Shape(String),
    /// A denoiser implemented outside this crate failed with its own error.
    #[error("denoiser failed: {0}")]
    Denoiser(Box<dyn std::error::Error + Send + Sync>),
    /// A training-run family implemented outside this crate failed with its own error (see
    /// [`crate::run::Run`]).
    #[error(transparent)]
    Run(Box<dyn std::error::Error + Send + Sync>),
    /// A file could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file or directory concerned.
        path: std::path::PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// An image file could not be decoded or encoded.
    #[error("{}: {message}", path.display())]
    Image {
        /// The image file.
        path: std::path::PathBuf,
        /// What went wrong.
        message: String,
    },
    /// A checkpoint or weight file that cannot be used: corrupt, truncated, or not matching the
    /// model (the message names the offending tensor or field).
    #[error("checkpoint: {0}")]
    Checkpoint(String),
    /// A tokenizer that cannot be built, loaded or used: a malformed or unusable
    /// `tokenizer.json`, an invalid vocabulary or sequence length, or a prompt holding a word the
    /// vocabulary does not know (the message names it).
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    /// A training run that cannot go on (for example a non-finite loss).
    #[error("training: {0}")]
    Training(String),
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

/// The result type of `recompose-diffusion`.
pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    /// Whether the error is about the caller's input — an argument, a setting, a shape, a file
    /// that is missing, unreadable, malformed or does not match — rather than a failure inside
    /// the computation. Programs map the two to different exit statuses.
    pub fn is_bad_input(&self) -> bool {
        match self {
            Self::Config(_)
            | Self::Shape(_)
            | Self::Io { .. }
            | Self::Image { .. }
            | Self::Checkpoint(_)
            | Self::Tokenizer(_) => true,
            Self::Memory(_) => true,
            Self::Core(e) => e.is_bad_input(),
            Self::Denoiser(_) | Self::Run(_) | Self::Training(_) | Self::Candle(_) => false,
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
