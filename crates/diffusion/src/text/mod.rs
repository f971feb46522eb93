//! Text conditioning for diffusion models: prompts turned into token ids, and token ids into
//! the vectors a denoiser attends to.
//!
//! Latent diffusion conditions its U-Net on a text encoder's token states through
//! cross-attention (Rombach, Blattmann, Lorenz, Esser, Ommer, *High-Resolution Image Synthesis
//! with Latent Diffusion Models*, CVPR 2022), with CLIP's tokenizer and text transformer
//! (Radford et al., *Learning Transferable Visual Models From Natural Language Supervision*,
//! ICML 2021). This module holds the text-side pieces and the model they condition:
//!
//! - [`tokenizer`]: [`TextTokenizer`], Hugging Face `tokenizer.json` tokenizers with a fixed
//!   sequence length — word-level ones built here over a small vocabulary, or published ones
//!   such as CLIP's byte-pair encoding, loaded through the same code — and [`Encoded`], the
//!   padded ids and attention mask of a batch of prompts.
//! - [`encoder`]: [`TextEncoder`], a small pre-norm transformer (Vaswani et al. 2017) over the
//!   tokens with a padding mask, returning one state per token and a pooled vector.
//! - [`unet`]: [`TextUNet`], a U-Net conditioned on a prompt through the encoder's pooled
//!   vector, trained jointly with it; the empty prompt is its unconditional model.
//!
//! ```
//! use candle_core::{DType, Device};
//! use recompose_diffusion::nn::ParamStore;
//! use recompose_diffusion::text::{TextEncoder, TextEncoderConfig, TextTokenizer};
//!
//! let tokenizer = TextTokenizer::word_level(["red", "blue", "circle", "square"], 6)?;
//! let encoded = tokenizer.encode_strict(&["red circle", "Blue  SQUARE"])?;
//! assert_eq!(encoded.shape(), (2, 6));
//!
//! let config = TextEncoderConfig::small(tokenizer.vocab_size(), tokenizer.max_len());
//! let store = ParamStore::new(0);
//! let encoder = TextEncoder::new(&config, store.var_builder(DType::F32, &Device::Cpu))?;
//! let states = encoder.encode(&encoded)?;
//! assert_eq!(states.dims(), [2, 6, config.width]);
//! # Ok::<(), recompose_diffusion::Error>(())
//! ```

pub mod encoder;
pub mod tokenizer;
pub mod unet;

pub use encoder::{TextEncoder, TextEncoderConfig, mean_pool};
pub use tokenizer::{Encoded, TextTokenizer};
pub use unet::{GuidedPrompt, PromptCondition, TextUNet, TextUNetConfig};
