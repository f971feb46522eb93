//! The error type of `recompose-diffusion`.

/// Everything that can go wrong in `recompose-diffusion`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An invalid configuration or argument: a schedule parameter out of range, a time or log-SNR
    /// with no corresponding point on the schedule, a zero step count.
    #[error("invalid configuration: {0}")]
    Config(String),
}

/// The result type of `recompose-diffusion`.
pub type Result<T> = std::result::Result<T, Error>;
