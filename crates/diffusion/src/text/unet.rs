//! A text-conditioned U-Net: the text encoder's pooled prompt vector conditions the denoiser,
//! and its token states too when the U-Net cross-attends.
//!
//! Text-to-image diffusion conditions its denoiser on the states of a text encoder trained with
//! it or frozen (Nichol et al., *GLIDE*, ICML 2022; Rombach et al., *High-Resolution Image
//! Synthesis with Latent Diffusion Models*, CVPR 2022). Here the prompt's token ids go through
//! a [`TextEncoder`] trained jointly with the [`UNet`], and the mean of its token states over
//! the prompt's tokens is the U-Net's conditioning vector: it joins the time embedding that
//! every residual block reads (the U-Net's `cond` path, `cond_dim` = the encoder's width). The
//! empty prompt is the unconditional model of classifier-free guidance (Ho & Salimans 2022), as
//! in the training data's condition dropout ([`crate::data::CaptionedImages`]). With
//! `context_dim` = the encoder's width, every attention block of the U-Net also attends from
//! the feature map to the token states (padding masked; Rombach et al. §3.3), GLIDE's
//! arrangement of both paths ([`PromptCondition`]); with `cond_dim` = 0 the token states alone
//! condition it, Stable Diffusion's arrangement, which reads a prompt's words where the feature
//! map attends to them rather than in every residual block at once.
//!
//! The conditioning passed to [`Denoiser::forward`] is the prompts' token ids, `u32` `[B, L]`
//! (one prompt per image, from [`TextTokenizer::encode`]); the attention mask is read from them
//! (a position is a token unless it holds the pad id), so the tokenizer's pad token must differ
//! from every other token — true of the word-level tokenizers built here; a tokenizer that pads
//! with its end token (as CLIP's does) is refused.
//!
//! With an energy form ([`TextUNetConfig::energy`]) the U-Net is an [`EnergyUNet`]: its
//! prediction is ε̂ = ∇ₓE(x, t | prompt), and [`TextUNet::energy_and_grad`] gives the energy
//! too — the log-density the Metropolis-corrected samplers and mixtures of Du et al. (ICML
//! 2023) need.
//!
//! Parameter names: the U-Net's own (the improved-diffusion state-dict keys, see
//! [`crate::nn::unet`]) and the encoder's under `text_encoder.`.

use candle_core::{DType, Tensor};
use candle_nn::VarBuilder;
use serde::{Deserialize, Serialize};

use crate::denoiser::Denoiser;
use crate::nn::{EnergyForm, EnergyUNet, TokenContext, UNet, UNetConfig};
use crate::param::Parameterization;
use crate::random::SeededRng;
use crate::text::tokenizer::{END_TOKEN, START_TOKEN};
use crate::text::{TextEncoder, TextEncoderConfig, TextTokenizer};
use crate::train::TrainableDenoiser;
use crate::{Error, Result};

/// The prefix of the text encoder's parameter names.
pub const TEXT_ENCODER_PREFIX: &str = "text_encoder";

/// The settings of a [`TextUNet`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TextUNetConfig {
    /// The U-Net; its `cond_dim` must equal the encoder's width (the pooled vector conditions
    /// it) or be 0 with a nonzero `context_dim` (the token states alone, by cross-attention).
    pub unet: UNetConfig,
    /// The text encoder; its vocabulary size and length must match the tokenizer's.
    pub text: TextEncoderConfig,
    /// The tokenizer's pad id: positions holding it are not tokens.
    pub pad_id: u32,
    /// The energy form of an energy-parameterized model (ε̂ = ∇ₓE); absent for a score model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub energy: Option<EnergyForm>,
}

impl TextUNetConfig {
    /// The settings for `unet` conditioned by a [`TextEncoderConfig::small`] encoder over the
    /// vocabulary of `tokenizer` (the U-Net's `cond_dim` is set to the encoder's width, and so
    /// is a nonzero `context_dim`: cross-attention stays on or off as asked).
    ///
    /// # Errors
    ///
    /// As [`TextUNetConfig::check_tokenizer`].
    pub fn for_tokenizer(unet: UNetConfig, tokenizer: &TextTokenizer) -> Result<Self> {
        let text = TextEncoderConfig::small(tokenizer.vocab_size(), tokenizer.max_len());
        let cfg = Self {
            unet: UNetConfig {
                cond_dim: text.width,
                context_dim: if unet.context_dim > 0 { text.width } else { 0 },
                ..unet
            },
            text,
            pad_id: tokenizer.pad_id(),
            energy: None,
        };
        cfg.check_tokenizer(tokenizer)?;
        Ok(cfg)
    }

    /// Checks the parts against each other.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] for an invalid U-Net or encoder, a U-Net `cond_dim` other than the
    /// encoder's width or 0, or a U-Net that reads the prompt neither way.
    pub fn validate(&self) -> Result<()> {
        self.unet.validate()?;
        self.text.validate()?;
        if self.unet.cond_dim != self.text.width && self.unet.cond_dim != 0 {
            return Err(Error::Config(format!(
                "the U-Net's cond_dim ({}) must equal the text encoder's width ({}), or be 0 \
                 when the prompt conditions by cross-attention alone",
                self.unet.cond_dim, self.text.width
            )));
        }
        if self.unet.cond_dim == 0 && self.unet.context_dim == 0 {
            return Err(Error::Config(
                "the U-Net reads the prompt neither through the pooled vector (cond_dim = 0) \
                 nor by cross-attention (context_dim = 0)"
                    .into(),
            ));
        }
        if self.unet.context_dim != 0 && self.unet.context_dim != self.text.width {
            return Err(Error::Config(format!(
                "the U-Net's context_dim ({}) must be 0 (no cross-attention) or the text \
                 encoder's width ({})",
                self.unet.context_dim, self.text.width
            )));
        }
        if self.pad_id as usize >= self.text.vocab_size {
            return Err(Error::Config(format!(
                "the pad id {} is outside the encoder's vocabulary of {}",
                self.pad_id, self.text.vocab_size
            )));
        }
        Ok(())
    }

    /// Checks that `tokenizer` produces the ids this model reads: the same vocabulary size,
    /// sequence length and pad id, and a pad token distinct from the start and end tokens.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] naming the first mismatch.
    pub fn check_tokenizer(&self, tokenizer: &TextTokenizer) -> Result<()> {
        self.validate()?;
        let mismatch = |what: &str, model: usize, tok: usize| {
            Error::Config(format!(
                "the model's text {what} is {model} but the tokenizer's is {tok}"
            ))
        };
        if tokenizer.vocab_size() != self.text.vocab_size {
            return Err(mismatch(
                "vocabulary size",
                self.text.vocab_size,
                tokenizer.vocab_size(),
            ));
        }
        if tokenizer.max_len() != self.text.max_len {
            return Err(mismatch(
                "sequence length",
                self.text.max_len,
                tokenizer.max_len(),
            ));
        }
        if tokenizer.pad_id() != self.pad_id {
            return Err(mismatch(
                "pad id",
                self.pad_id as usize,
                tokenizer.pad_id() as usize,
            ));
        }
        for special in [START_TOKEN, END_TOKEN] {
            if tokenizer.token_to_id(special) == Some(self.pad_id) {
                return Err(Error::Config(format!(
                    "the tokenizer pads with `{special}`; a text-conditioned U-Net reads its \
                     mask from the ids and needs a pad token of its own"
                )));
            }
        }
        Ok(())
    }
}

/// What a [`TextUNet`]'s image network reads of a batch of prompts.
#[derive(Debug, Clone)]
pub struct PromptCondition {
    /// The pooled prompt vectors `[B, width]`, the U-Net's `cond`, when it reads them
    /// (`cond_dim > 0`).
    pub pooled: Option<Tensor>,
    /// The token states the attention blocks cross-attend to, when the U-Net has
    /// cross-attention (`context_dim > 0`).
    pub tokens: Option<TokenContext>,
}

impl PromptCondition {
    /// The rows `rows` (`u32` indices) in that order (repeats and tilings of the prompts).
    ///
    /// # Errors
    ///
    /// [`Error::Candle`] for an index outside the batch.
    pub fn select_rows(&self, rows: &Tensor) -> Result<Self> {
        Ok(Self {
            pooled: self
                .pooled
                .as_ref()
                .map(|p| p.index_select(rows, 0))
                .transpose()?,
            tokens: self
                .tokens
                .as_ref()
                .map(|t| t.select_rows(rows))
                .transpose()?,
        })
    }

    /// The same condition cut from the encoder's graph.
    pub fn detach(&self) -> Self {
        Self {
            pooled: self.pooled.as_ref().map(Tensor::detach),
            tokens: self.tokens.as_ref().map(TokenContext::detach),
        }
    }
}

/// The image network of a [`TextUNet`].
#[derive(Debug, Clone)]
enum ImageNet {
    /// A U-Net predicting in its parameterization.
    Score(UNet),
    /// An energy U-Net: ε̂ = ∇ₓE.
    Energy(EnergyUNet),
}

/// A [`UNet`] conditioned on prompts through a jointly trained [`TextEncoder`] (see the
/// [module documentation](self)).
#[derive(Debug, Clone)]
pub struct TextUNet {
    config: TextUNetConfig,
    encoder: TextEncoder,
    image: ImageNet,
}

impl TextUNet {
    /// Builds the network on the parameters of `vb` (the U-Net's names at the root, the
    /// encoder's under [`TEXT_ENCODER_PREFIX`]); `parameterization` is what the U-Net's output
    /// means (ε for an energy model).
    ///
    /// # Errors
    ///
    /// As [`TextUNetConfig::validate`], [`UNet::new`], [`EnergyUNet::new`] and
    /// [`TextEncoder::new`]; [`Error::Config`] for an energy model with another
    /// parameterization than ε.
    pub fn new(
        config: &TextUNetConfig,
        parameterization: Parameterization,
        vb: VarBuilder,
    ) -> Result<Self> {
        config.validate()?;
        let image = match config.energy {
            None => ImageNet::Score(UNet::new(&config.unet, parameterization, vb.clone())?),
            Some(form) => {
                if parameterization != Parameterization::Epsilon {
                    return Err(Error::Config(format!(
                        "an energy model predicts ε = ∇ₓE; it cannot use the {parameterization:?} \
                         parameterization"
                    )));
                }
                ImageNet::Energy(EnergyUNet::new(&config.unet, form, vb.clone())?)
            }
        };
        let encoder = TextEncoder::new(&config.text, vb.pp(TEXT_ENCODER_PREFIX))?;
        Ok(Self {
            config: config.clone(),
            encoder,
            image,
        })
    }

    /// The settings the network was built with.
    pub fn config(&self) -> &TextUNetConfig {
        &self.config
    }

    /// The text encoder.
    pub fn encoder(&self) -> &TextEncoder {
        &self.encoder
    }

    /// The U-Net (the network g of an energy model).
    pub fn unet(&self) -> &UNet {
        match &self.image {
            ImageNet::Score(u) => u,
            ImageNet::Energy(e) => e.net(),
        }
    }

    /// Whether the model is energy-parameterized (has a log-density).
    pub fn is_energy(&self) -> bool {
        matches!(self.image, ImageNet::Energy(_))
    }

    /// The energies `[B]` and their input gradients ε̂ = ∇ₓE `[B, C, H, W]` of `x_t` at `t`
    /// under the prompts `ids` (`u32` `[B, L]`), as tracked graphs.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] for a score model; as [`EnergyUNet::energy_and_grad`] and
    /// [`TextUNet::condition`].
    pub fn energy_and_grad(
        &self,
        x_t: &Tensor,
        t: &Tensor,
        ids: &Tensor,
    ) -> Result<(Tensor, Tensor)> {
        let ImageNet::Energy(e) = &self.image else {
            return Err(Error::Config(
                "a score model has no energy; train it with an energy form".into(),
            ));
        };
        let c = self.condition(ids)?;
        e.energy_and_grad_context(x_t, t, c.pooled.as_ref(), c.tokens.as_ref())
    }

    /// The prediction under the condition `c`, in train mode with `rng`.
    fn predict(
        &self,
        x_t: &Tensor,
        t: &Tensor,
        c: &PromptCondition,
        rng: Option<&mut SeededRng>,
    ) -> Result<Tensor> {
        match &self.image {
            ImageNet::Score(u) => {
                u.forward_context(x_t, t, c.pooled.as_ref(), c.tokens.as_ref(), rng)
            }
            ImageNet::Energy(e) => Ok(e
                .energy_and_grad_context(x_t, t, c.pooled.as_ref(), c.tokens.as_ref())?
                .1),
        }
    }

    /// What the image network reads of the prompts `ids` (`u32` `[B, L]`): the mean of the
    /// encoder's states over each prompt's tokens (unless the U-Net reads the prompt by
    /// cross-attention alone) and, when the U-Net cross-attends, the states themselves with the
    /// padding masked.
    ///
    /// # Errors
    ///
    /// [`Error::Shape`] as [`TextEncoder::forward`] (ids of another shape, dtype or
    /// vocabulary).
    pub fn condition(&self, ids: &Tensor) -> Result<PromptCondition> {
        if ids.dtype() != DType::U32 {
            return Err(Error::Shape(format!(
                "a text-conditioned U-Net takes the prompts' token ids (u32 [B, L]) as its \
                 condition, got {:?} {:?}",
                ids.dtype(),
                ids.dims()
            )));
        }
        let mask = ids.ne(self.config.pad_id)?.to_dtype(DType::F32)?;
        let (states, pooled) = self.encoder.forward_pooled(ids, &mask)?;
        let tokens = if self.config.unet.context_dim > 0 {
            Some(TokenContext::new(&states, &mask)?)
        } else {
            None
        };
        let pooled = (self.config.unet.cond_dim > 0).then_some(pooled);
        Ok(PromptCondition { pooled, tokens })
    }

    /// The prompts of a forward call, required.
    fn prompts<'a>(&self, cond: Option<&'a Tensor>) -> Result<&'a Tensor> {
        cond.ok_or_else(|| {
            Error::Shape(
                "a text-conditioned U-Net needs the prompts' token ids as its condition (the \
                 empty prompt for the unconditional model)"
                    .into(),
            )
        })
    }
}

/// A text-conditioned model under one prompt with classifier-free guidance (Ho & Salimans,
/// 2022, eq. 6): y = y_∅ + γ (y_P − y_∅), where y_P is the network's output under the prompt,
/// y_∅ under the empty prompt (the unconditional model that condition dropout trained), and the
/// outputs are in the model's parameterization (every parameterization's score is affine in the
/// output with the same coefficients for both terms, so the combination is the guided score's).
/// A [`Denoiser`] that takes no condition: any sampler draws from the guided model. Both
/// outputs come from one network call on the doubled batch.
#[derive(Debug, Clone)]
pub struct GuidedPrompt<'a> {
    net: &'a TextUNet,
    /// The condition of two prompts: the empty prompt, then the prompt.
    cond: PromptCondition,
    guidance: f64,
}

impl TextUNet {
    /// The model under `prompt` with guidance scale `guidance` (γ = 1: the conditional model,
    /// γ = 0: the unconditional one), the prompt tokenized by `tokenizer` onto `device`.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] for a guidance scale that is negative or not finite; as
    /// [`TextTokenizer::encode_strict`] (a word outside the vocabulary) and
    /// [`TextUNet::condition`].
    pub fn guided(
        &self,
        tokenizer: &TextTokenizer,
        prompt: &str,
        guidance: f64,
        device: &candle_core::Device,
    ) -> Result<GuidedPrompt<'_>> {
        if !(guidance.is_finite() && guidance >= 0.0) {
            return Err(Error::Config(format!(
                "the guidance scale must be finite and non-negative, got {guidance}"
            )));
        }
        self.config.check_tokenizer(tokenizer)?;
        let ids = tokenizer.encode_strict(&["", prompt])?.ids_tensor(device)?;
        Ok(GuidedPrompt {
            net: self,
            cond: self.condition(&ids)?.detach(),
            guidance,
        })
    }
}

impl Denoiser for GuidedPrompt<'_> {
    fn parameterization(&self) -> Parameterization {
        self.net.parameterization()
    }

    /// The guided prediction for `x_t` at `t`; `cond` must be `None` (the prompt is fixed).
    fn forward(&self, x_t: &Tensor, t: &Tensor, cond: Option<&Tensor>) -> Result<Tensor> {
        if cond.is_some() {
            return Err(Error::Shape(
                "a guided prompt model takes no further condition".into(),
            ));
        }
        let b = x_t.dim(0)?;
        let rows: Vec<u32> = (0..2 * b).map(|i| u32::from(i >= b)).collect();
        let c = self
            .cond
            .select_rows(&Tensor::from_vec(rows, 2 * b, x_t.device())?)?;
        let y = self
            .net
            .predict(
                &Tensor::cat(&[x_t, x_t], 0)?,
                &Tensor::cat(&[t, t], 0)?,
                &c,
                None,
            )?
            .detach();
        let (unconditional, prompted) = (y.narrow(0, 0, b)?, y.narrow(0, b, b)?);
        Ok((&unconditional + ((prompted - &unconditional)? * self.guidance)?)?)
    }
}

impl Denoiser for TextUNet {
    fn parameterization(&self) -> Parameterization {
        match &self.image {
            ImageNet::Score(u) => u.parameterization(),
            ImageNet::Energy(_) => Parameterization::Epsilon,
        }
    }

    /// The U-Net's prediction for `x_t` at `t` under the prompts `cond` (`u32` `[B, L]`), in
    /// eval mode.
    fn forward(&self, x_t: &Tensor, t: &Tensor, cond: Option<&Tensor>) -> Result<Tensor> {
        let c = self.condition(self.prompts(cond)?)?;
        self.predict(x_t, t, &c, None)
    }
}

impl TrainableDenoiser for TextUNet {
    fn forward_train(
        &self,
        x_t: &Tensor,
        t: &Tensor,
        cond: Option<&Tensor>,
        rng: &mut SeededRng,
    ) -> Result<Tensor> {
        let c = self.condition(self.prompts(cond)?)?;
        self.predict(x_t, t, &c, Some(rng))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::ParamStore;
    use crate::random::seeded;
    use candle_core::Device;

    fn tokenizer() -> Result<TextTokenizer> {
        TextTokenizer::word_level(["red", "blue", "circle", "square"], 5)
    }

    fn tiny() -> UNetConfig {
        UNetConfig {
            image_size: 8,
            in_channels: 3,
            out_channels: 3,
            model_channels: 8,
            channel_mult: vec![1, 2],
            num_res_blocks: 1,
            attention_resolutions: vec![4],
            num_heads: 1,
            num_head_channels: None,
            num_groups: 4,
            time_embed_dim: 16,
            ..UNetConfig::default()
        }
    }

    /// How the U-Net reads the prompt: the pooled vector, the token states by
    /// cross-attention, or both.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    enum Reads {
        Pooled,
        Both,
        Tokens,
    }

    const READS: [Reads; 3] = [Reads::Pooled, Reads::Both, Reads::Tokens];

    impl Reads {
        /// The settings of the tiny model reading the prompt this way.
        fn config(self, tok: &TextTokenizer) -> Result<TextUNetConfig> {
            let unet = UNetConfig {
                context_dim: usize::from(self != Reads::Pooled),
                ..tiny()
            };
            let mut cfg = TextUNetConfig::for_tokenizer(unet, tok)?;
            if self == Reads::Tokens {
                cfg.unet.cond_dim = 0;
            }
            cfg.validate()?;
            Ok(cfg)
        }
    }

    /// The tiny model, reading the prompt as `reads` says.
    fn model(store: &ParamStore, reads: Reads) -> Result<(TextUNet, TextTokenizer)> {
        let tok = tokenizer()?;
        let cfg = reads.config(&tok)?;
        let w = cfg.text.width;
        let want = match reads {
            Reads::Pooled => (w, 0),
            Reads::Both => (w, w),
            Reads::Tokens => (0, w),
        };
        assert_eq!((cfg.unet.cond_dim, cfg.unet.context_dim), want);
        let net = TextUNet::new(
            &cfg,
            Parameterization::Epsilon,
            store.var_builder(DType::F32, &Device::Cpu),
        )?;
        Ok((net, tok))
    }

    /// Perturbs every variable so that the zero-initialized output layers pass a signal.
    fn perturb(store: &ParamStore) -> Result<()> {
        let mut rng = seeded(1);
        for (_, var) in store.vars() {
            let noise = crate::random::normal_tensor(
                &mut rng,
                var.as_tensor().dims(),
                DType::F32,
                &Device::Cpu,
            )?;
            var.set(&(var.as_tensor() + (noise * 0.1)?)?)?;
        }
        Ok(())
    }

    #[test]
    fn the_prompt_changes_the_prediction_of_its_own_image_only() -> Result<()> {
        for reads in READS {
            prompt_changes_its_own_image(reads)?;
        }
        Ok(())
    }

    fn prompt_changes_its_own_image(reads: Reads) -> Result<()> {
        let store = ParamStore::new(0);
        let (net, tok) = model(&store, reads)?;
        perturb(&store)?;
        let x =
            crate::random::normal_tensor(&mut seeded(2), &[2, 3, 8, 8], DType::F32, &Device::Cpu)?;
        let t = Tensor::new(&[3f32, 3.0], &Device::Cpu)?;
        let ids = |texts: &[&str]| tok.encode_strict(texts)?.ids_tensor(&Device::Cpu);
        let a = net.forward(&x, &t, Some(&ids(&["red circle", "red circle"])?))?;
        let b = net.forward(&x, &t, Some(&ids(&["red circle", "blue square"])?))?;
        let diff = (&a - &b)?
            .abs()?
            .flatten_from(1)?
            .max(1)?
            .to_vec1::<f32>()?;
        // Image 0 has the same prompt in both calls, image 1 another one.
        assert_eq!(diff[0], 0.0);
        assert!(diff[1] > 1e-4, "{diff:?}");
        // The empty prompt (the unconditional model) is a prompt like any other.
        let empty = net.forward(&x, &t, Some(&ids(&["", ""])?))?;
        assert_eq!(empty.dims(), [2, 3, 8, 8]);
        Ok(())
    }

    /// Guidance is the affine combination of the prompted and the unconditional outputs:
    /// γ = 0 is the empty prompt's prediction, γ = 1 the prompt's, and γ = 2.5 their
    /// extrapolation; bad scales and unknown words are refused.
    #[test]
    fn guided_prompt_is_the_classifier_free_combination() -> Result<()> {
        for reads in READS {
            guided_is_the_combination(reads)?;
        }
        Ok(())
    }

    fn guided_is_the_combination(reads: Reads) -> Result<()> {
        let store = ParamStore::new(0);
        let (net, tok) = model(&store, reads)?;
        perturb(&store)?;
        let dev = Device::Cpu;
        let x = crate::random::normal_tensor(&mut seeded(4), &[3, 3, 8, 8], DType::F32, &dev)?;
        let t = Tensor::new(&[1f32, 5.0, 9.0], &dev)?;
        let ids = |p: &str| tok.encode_strict(&[p, p, p])?.ids_tensor(&dev);
        let empty = net.forward(&x, &t, Some(&ids("")?))?;
        let red = net.forward(&x, &t, Some(&ids("red circle")?))?;
        let close = |a: &Tensor, b: &Tensor| -> Result<f32> {
            Ok((a - b)?.abs()?.max_all()?.to_scalar::<f32>()?)
        };
        for g in [0.0, 1.0, 2.5] {
            let guided = net
                .guided(&tok, "red circle", g, &dev)?
                .forward(&x, &t, None)?;
            let want = (&empty + ((&red - &empty)? * g)?)?;
            let err = close(&guided, &want)?;
            assert!(err < 1e-5, "γ = {g}: {err}");
        }
        assert!(close(&empty, &red)? > 1e-4);
        for bad in [-1.0, f64::NAN] {
            assert!(matches!(
                net.guided(&tok, "red", bad, &dev),
                Err(Error::Config(_))
            ));
        }
        assert!(net.guided(&tok, "purple", 1.0, &dev).is_err());
        let guided = net.guided(&tok, "red", 1.0, &dev)?;
        assert!(guided.forward(&x, &t, Some(&ids("red")?)).is_err());
        Ok(())
    }

    #[test]
    fn training_mode_reaches_encoder_and_unet_parameters() -> Result<()> {
        for reads in READS {
            training_reaches_every_parameter(reads)?;
        }
        Ok(())
    }

    fn training_reaches_every_parameter(reads: Reads) -> Result<()> {
        let store = ParamStore::new(0);
        let (net, tok) = model(&store, reads)?;
        perturb(&store)?;
        let x =
            crate::random::normal_tensor(&mut seeded(2), &[2, 3, 8, 8], DType::F32, &Device::Cpu)?;
        let t = Tensor::new(&[3f32, 7.0], &Device::Cpu)?;
        let ids = tok
            .encode_strict(&["red", "blue square"])?
            .ids_tensor(&Device::Cpu)?;
        let y = net.forward_train(&x, &t, Some(&ids), &mut seeded(3))?;
        let grads = y.sqr()?.sum_all()?.backward()?;
        let mut missing = Vec::new();
        for (name, var) in store.vars() {
            if grads.get(var.as_tensor()).is_none() {
                missing.push(name);
            }
        }
        assert!(
            missing.iter().all(|n| !n.starts_with(TEXT_ENCODER_PREFIX)),
            "encoder variables without gradient: {missing:?}"
        );
        assert!(missing.is_empty(), "{missing:?}");
        Ok(())
    }

    /// The energy model: its prediction is the gradient of its energy (central differences in
    /// f64), and a loss on that gradient reaches every parameter, the text encoder's included
    /// (the prompt enters through the embedding that the hand-written input gradient reads).
    #[test]
    fn energy_model_predicts_the_gradient_of_its_energy() -> Result<()> {
        for reads in READS {
            energy_predicts_its_gradient(reads)?;
        }
        Ok(())
    }

    fn energy_predicts_its_gradient(reads: Reads) -> Result<()> {
        let store = ParamStore::new(0);
        let tok = tokenizer()?;
        let cfg = TextUNetConfig {
            energy: Some(EnergyForm::HalfNorm),
            ..reads.config(&tok)?
        };
        let net = TextUNet::new(
            &cfg,
            Parameterization::Epsilon,
            store.var_builder(DType::F64, &Device::Cpu),
        )?;
        assert!(net.is_energy());
        let x =
            crate::random::normal_tensor(&mut seeded(2), &[2, 3, 8, 8], DType::F64, &Device::Cpu)?;
        let t = Tensor::new(&[3f32, 9.0], &Device::Cpu)?;
        let ids = tok
            .encode_strict(&["red circle", "blue"])?
            .ids_tensor(&Device::Cpu)?;
        let (e, grad) = net.energy_and_grad(&x, &t, &ids)?;
        let eps = net.forward(&x, &t, Some(&ids))?;
        assert_eq!(
            grad.flatten_all()?.to_vec1::<f64>()?,
            eps.flatten_all()?.to_vec1::<f64>()?
        );
        let g = grad.flatten_all()?.to_vec1::<f64>()?;
        let base = x.flatten_all()?.to_vec1::<f64>()?;
        let h = 1e-5;
        for k in [0usize, 77, 191, 192 + 50] {
            let at = |d: f64| -> Result<f64> {
                let mut v = base.clone();
                v[k] += d;
                let xp = Tensor::from_vec(v, (2, 3, 8, 8), &Device::Cpu)?;
                let (e, _) = net.energy_and_grad(&xp, &t, &ids)?;
                Ok(e.to_vec1::<f64>()?[k / 192])
            };
            let fd = (at(h)? - at(-h)?) / (2.0 * h);
            assert!(
                (fd - g[k]).abs() <= 1e-6 * (1.0 + fd.abs()),
                "{k}: {fd} vs {}",
                g[k]
            );
        }
        assert_eq!(e.dims(), [2]);
        let loss = grad.sqr()?.mean_all()?;
        let grads = loss.backward()?;
        let missing: Vec<String> = store
            .vars()
            .into_iter()
            .filter(|(_, v)| grads.get(v.as_tensor()).is_none())
            .map(|(n, _)| n)
            .collect();
        assert!(missing.is_empty(), "{missing:?}");
        // A score model has no energy; an energy model predicts ε only.
        let store = ParamStore::new(0);
        let (score, _) = model(&store, reads)?;
        assert!(matches!(
            score.energy_and_grad(&x, &t, &ids),
            Err(Error::Config(_))
        ));
        assert!(
            TextUNet::new(
                &cfg,
                Parameterization::X0,
                ParamStore::new(0).var_builder(DType::F32, &Device::Cpu)
            )
            .is_err()
        );
        Ok(())
    }

    #[test]
    fn mismatches_are_clear_errors() -> Result<()> {
        let store = ParamStore::new(0);
        let (net, tok) = model(&store, Reads::Pooled)?;
        let x = Tensor::zeros((1, 3, 8, 8), DType::F32, &Device::Cpu)?;
        let t = Tensor::new(&[1f32], &Device::Cpu)?;
        assert!(matches!(net.forward(&x, &t, None), Err(Error::Shape(_))));
        let float_ids = Tensor::zeros((1, 5), DType::F32, &Device::Cpu)?;
        assert!(matches!(
            net.forward(&x, &t, Some(&float_ids)),
            Err(Error::Shape(_))
        ));
        let other = TextTokenizer::word_level(["red", "blue"], 5)?;
        assert!(net.config().check_tokenizer(&other).is_err());
        assert!(net.config().check_tokenizer(&tok).is_ok());
        let bad = TextUNetConfig {
            unet: UNetConfig {
                cond_dim: 3,
                ..tiny()
            },
            ..net.config().clone()
        };
        assert!(matches!(bad.validate(), Err(Error::Config(_))));
        let bad = TextUNetConfig {
            unet: UNetConfig {
                context_dim: 3,
                ..net.config().unet.clone()
            },
            ..net.config().clone()
        };
        assert!(matches!(bad.validate(), Err(Error::Config(_))));
        // A U-Net that reads the prompt neither way is refused.
        let deaf = TextUNetConfig {
            unet: UNetConfig {
                cond_dim: 0,
                context_dim: 0,
                ..net.config().unet.clone()
            },
            ..net.config().clone()
        };
        assert!(matches!(deaf.validate(), Err(Error::Config(_))));
        Ok(())
    }
}
