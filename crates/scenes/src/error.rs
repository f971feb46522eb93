//! The error type of `recompose-scenes`.

/// Everything that can go wrong in `recompose-scenes`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An invalid setting or argument: a zero image count, an unsupported image size, an image
    /// buffer whose length does not match its size, an unknown dataset.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// A text condition that does not parse; `word` is the offending word (empty when the text
    /// holds no word at all).
    #[error("cannot read the condition `{text}`: {reason}")]
    Condition {
        /// The whole text.
        text: String,
        /// The word that is unknown, repeated, contradictory or incomplete.
        word: String,
        /// What is wrong, naming the word.
        reason: String,
    },
    /// A file that could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A file that could not be encoded or decoded (a PNG); the message names what is wrong.
    #[error("{path}: {msg}")]
    Format {
        /// The file.
        path: String,
        /// What is wrong with it.
        msg: String,
    },
    /// A request whose estimated memory exceeds the limit, or whose sizes overflow
    /// ([`recompose_core::memory`]); nothing was allocated.
    #[error(transparent)]
    Memory(#[from] recompose_core::memory::MemoryError),
}

/// The result type of `recompose-scenes`.
pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    /// Whether the error is about the caller's input — an argument, a setting, a text, a file
    /// that cannot be written or is malformed, a request too large for the memory — rather than
    /// a failure inside the computation. Programs map the two to different exit statuses.
    /// Every error of this crate is of the first kind: generation and checking cannot fail on
    /// valid input.
    pub fn is_bad_input(&self) -> bool {
        match self {
            Self::Config(_) | Self::Condition { .. } | Self::Io { .. } | Self::Format { .. } => {
                true
            }
            Self::Memory(_) => true,
        }
    }
}
