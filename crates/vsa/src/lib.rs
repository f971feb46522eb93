//! # recompose-vsa
//!
//! Vector-symbolic architectures (VSAs, also called hyperdimensional computing): symbols are
//! random high-dimensional vectors, and structures are built from them with *binding*,
//! *bundling* and *permutation* (Kanerva 2009, "Hyperdimensional computing"; Gayler 2003;
//! Kleyko, Rachkovskij, Osipov, Rahimi 2022, "A survey on hyperdimensional computing aka vector
//! symbolic architectures").
//!
//! ## Models
//!
//! Four models implement one trait, [`Vsa`]:
//!
//! | model | vectors | bind | bundle | similarity |
//! |---|---|---|---|---|
//! | [`Map`] (Gayler 2003) | bipolar `±1`, tensor `[..., D]` | element-wise product | sum, then sign (random tie-break) | cosine; [`Hamming`] |
//! | [`Bsc`] (Kanerva 1994) | bits packed in `u64` words ([`PackedBits`]) | XOR | majority (random tie-break) | `1 − 2·hamming/D`; [`Hamming`] |
//! | [`Hrr`] (Plate 1995) | real `N(0, 1/D)`, tensor `[..., D]` | circular convolution (FFT) | sum | cosine |
//! | [`Fhrr`] (Plate 1994) | unit phasors, tensor `[..., 2, D]` (re, im) | complex product | phasor sum, phase-normalized | mean cosine of phase differences |
//!
//! Dense models work on candle tensors (`f32`) and run on whatever device the model was created
//! on (HRR's FFT runs on the host). Every operation is batched over leading axes and broadcasts
//! batch shapes; see [`model`] for the conventions. Shapes are checked and mismatches are reported
//! as [`Error`]s.
//!
//! ## Building blocks
//!
//! * [`Codebook`]: named codewords, batched similarity (one matmul for dense models), nearest,
//!   top-k and threshold clean-up;
//! * [`encoding`]: [`LevelEncoder`], [`CircularEncoder`] and fractional power encoding
//!   ([`FpeEncoder`], sinc or Gaussian kernel);
//! * [`structure`]: key–value records, permutation sequences and n-grams.
//!
//! ## Reproducibility
//!
//! candle's CPU random generator cannot be seeded, so all randomness — random vectors and the
//! tie-breaks of bundling — is drawn from a caller-supplied [`rand::Rng`]; [`random::seeded`] gives
//! a portable seeded generator.
//!
//! ## Example
//!
//! Encode the record `{country: Mexico, currency: peso}` and ask "what is the dollar of Mexico?"
//! (Kanerva 2010, "What we mean when we say 'What's the dollar of Mexico?'"):
//!
//! ```
//! use candle_core::Device;
//! use recompose_vsa::{Codebook, Map, Vsa, random::seeded, structure};
//!
//! let map = Map::new(10_000, &Device::Cpu)?;
//! let mut rng = seeded(42);
//! let roles = Codebook::random(map.clone(), ["country", "currency"], &mut rng)?;
//! let fillers = Codebook::random(map.clone(), ["usa", "mexico", "dollar", "peso"], &mut rng)?;
//!
//! let usa = structure::record(
//!     &map,
//!     roles.vectors(),
//!     &fillers.get_many(&["usa", "dollar"])?,
//!     &mut rng,
//! )?;
//! let mexico = structure::record(
//!     &map,
//!     roles.vectors(),
//!     &fillers.get_many(&["mexico", "peso"])?,
//!     &mut rng,
//! )?;
//!
//! // The mapping between the two records, applied to "dollar".
//! let usa_to_mexico = map.bind(&usa, &mexico)?;
//! let answer = map.bind(&fillers.get("dollar")?, &usa_to_mexico)?;
//! let hit = fillers.cleanup(&answer, 0.1)?.expect("an answer above chance");
//! assert_eq!(hit.name, "peso");
//!
//! // Batched queries: similarities of both records to every filler, shape [2, 4].
//! let records = map.stack(&[usa, mexico])?;
//! assert_eq!(fillers.similarities(&records)?.dims(), &[2, 4]);
//! # Ok::<(), recompose_vsa::Error>(())
//! ```
#![warn(missing_docs)]
#![forbid(unsafe_code)]

pub mod bsc;
pub mod codebook;
mod dense;
pub mod encoding;
pub mod error;
pub mod fhrr;
pub mod hrr;
pub mod map;
pub mod model;
pub mod planes;
/// Seeded random draws: the workspace's one generator, from `recompose-core`.
pub use recompose_core::random;
pub mod structure;
mod util;

pub use bsc::{Bsc, PackedBits};
pub use codebook::{Codebook, Match};
pub use encoding::{CircularEncoder, FpeEncoder, Kernel, LevelEncoder};
pub use error::{Error, Result};
pub use fhrr::Fhrr;
pub use hrr::Hrr;
pub use map::{Map, MapBundling};
pub use model::{Hamming, Phasor, Vsa};
pub use structure::{RecordCodec, SequenceCodec};

/// The crate README's example, compiled and run as a doctest.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
