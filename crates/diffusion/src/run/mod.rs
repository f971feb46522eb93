//! Training runs as configuration values: the TOML file behind `recompose train`, its named
//! presets, and loading a trained model back for sampling.
//!
//! A run configuration has four tables:
//!
//! ```toml
//! [model]                  # kind = "mlp" (the 2-D residual MLP) or "unet"; the model's fields
//! kind = "mlp"
//! hidden = 128
//!
//! [data]                   # kind = "toy2d" with a distribution name, or "image_folder"
//! kind = "toy2d"
//! name = "ring"
//!
//! [diffusion]              # the noise schedule
//! schedule = "cosine"
//! num_timesteps = 100
//!
//! [train]                  # crate::train::TrainConfig
//! steps = 15000
//! batch_size = 1000
//! ```
//!
//! A U-Net trained on a captioned folder (`[data] kind = "captioned_folder"`, see
//! [`CaptionedImages`]) is text-conditioned ([`TextUNet`]): the folder's `tokenizer.json` (or the
//! file named by `tokenizer`) turns captions into token ids, an optional `[text]` table sizes
//! the jointly trained encoder ([`TextSettings`]; the U-Net's `cond_dim` is then the encoder's
//! width, whatever the `[model]` table says), and the run directory keeps a copy of the
//! tokenizer, so the model loads without the data. An energy form (`[diffusion] energy`) turns
//! either U-Net into an energy model ([`EnergyUNet`]).
//!
//! Omitted fields take their defaults; unknown fields are errors. The presets `toy2d-*` are the
//! 2-D setup of Du et al. (2023, §4): the residual MLP, a 100-step cosine schedule, Adam at
//! 10⁻³, batch 1000, 15 000 steps, EMA 0.999. The presets `toy2d-*-energy` are the same with the
//! energy parameterization `E = ‖g − x‖²` ([`crate::nn::energy`]), written in a file as
//! `energy = "squared_residual"` (or `"half_norm"`) in the `[diffusion]` table.

use std::collections::HashMap;
use std::fs;
use std::path::Path;

use candle_core::backprop::GradStore;
use candle_core::{DType, Device, Tensor};
use serde::{Deserialize, Serialize};

use crate::data::{CaptionedImages, Dataset, ImageFolder, ImageFolderConfig, Toy2d, ValueRange};
use crate::denoiser::Denoiser;
use crate::nn::{
    EnergyForm, EnergyMlp, EnergyUNet, MlpConfig, ParamStore, ResidualMlp, UNet, UNetConfig,
};
use crate::param::Parameterization;
use crate::random::SeededRng;
use crate::schedule::DiscreteSchedule;
use crate::text::{TextEncoderConfig, TextTokenizer, TextUNet, TextUNetConfig};
use crate::train::{
    DenoisingLoss, TrainConfig, TrainOptions, TrainProgress, TrainReport, TrainableDenoiser,
    read_model_weights,
};
use crate::{Error, Result};

mod registry;

pub use registry::{Registry, Run, RunFamily};

/// Which network to train, with its settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ModelConfig {
    /// The residual MLP of the 2-D experiments.
    Mlp(MlpConfig),
    /// The improved-diffusion U-Net.
    Unet(UNetConfig),
}

/// Where the training data comes from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum DataConfig {
    /// One of the 2-D toy distributions ([`Toy2d`]), by name.
    Toy2d {
        /// `ring`, `bar`, `left_bar`, `right_bar`, `box_large` or `box_small`.
        name: String,
    },
    /// The PNG files of a directory.
    ImageFolder {
        /// The directory.
        dir: String,
        /// Side every image is resized to.
        size: usize,
        /// 1 (grey) or 3 (RGB).
        #[serde(default = "three")]
        channels: usize,
        /// Value range of the pixels (`minus_one_one` by default).
        #[serde(default)]
        range: ValueRange,
    },
    /// The PNG files of a directory with their captions (`captions.jsonl`): training data for
    /// a text-conditioned model.
    CaptionedFolder {
        /// The directory.
        dir: String,
        /// Side every image is resized to.
        size: usize,
        /// 1 (grey) or 3 (RGB).
        #[serde(default = "three")]
        channels: usize,
        /// Value range of the pixels (`minus_one_one` by default).
        #[serde(default)]
        range: ValueRange,
        /// The rate at which a training item gets the empty prompt (condition dropout for
        /// classifier-free guidance; 0.1 by default).
        #[serde(default = "uncond_prob")]
        uncond_prob: f64,
        /// The tokenizer file (`DIR/tokenizer.json` by default).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        tokenizer: Option<String>,
    },
}

fn three() -> usize {
    3
}

fn uncond_prob() -> f64 {
    0.1
}

/// The text encoder of a text-conditioned run (table `[text]`); its vocabulary and sequence
/// length come from the tokenizer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TextSettings {
    /// Width of the token states and of the U-Net's conditioning vector.
    pub width: usize,
    /// Transformer layers.
    pub layers: usize,
    /// Attention heads per layer.
    pub heads: usize,
    /// The U-Net's attention blocks also cross-attend to the token states (the Stable
    /// Diffusion arrangement; `context_dim` = `width`); the pooled vector conditions it either
    /// way.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub cross_attention: bool,
    /// The pooled prompt vector joins the time embedding of every residual block (default).
    /// Off (`pooled = false`, with `cross_attention`), the prompt reaches the U-Net through
    /// cross-attention alone, as in Stable Diffusion: a condition the feature map reads where
    /// it attends, not everywhere at once.
    #[serde(default = "yes", skip_serializing_if = "is_yes")]
    pub pooled: bool,
}

fn yes() -> bool {
    true
}

#[allow(clippy::trivially_copy_pass_by_ref)] // serde's skip_serializing_if passes a reference
fn is_yes(v: &bool) -> bool {
    *v
}

impl Default for TextSettings {
    fn default() -> Self {
        let small = TextEncoderConfig::small(1, 1);
        Self {
            width: small.width,
            layers: small.layers,
            heads: small.heads,
            cross_attention: false,
            pooled: true,
        }
    }
}

/// The name of a text-conditioned run's tokenizer file, in the data and the run directory.
pub const TOKENIZER_FILE: &str = "tokenizer.json";

/// The family of a discrete noise schedule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ScheduleKind {
    /// Linear betas from `beta_start` to `beta_end` (Ho et al. 2020).
    Linear,
    /// Betas linear in √β (Stable Diffusion's "scaled_linear").
    ScaledLinear,
    /// The cosine schedule of Nichol & Dhariwal (2021) with offset `cosine_s`, β ≤ `max_beta`.
    #[default]
    Cosine,
}

/// The noise schedule of a run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DiffusionConfig {
    /// The schedule family.
    pub schedule: ScheduleKind,
    /// Number of training timesteps T.
    pub num_timesteps: usize,
    /// What the model predicts: `epsilon`, `x0` or `v`.
    pub prediction: Parameterization,
    /// First beta of the linear schedules.
    pub beta_start: f64,
    /// Last beta of the linear schedules.
    pub beta_end: f64,
    /// Offset s of the cosine schedule.
    pub cosine_s: f64,
    /// Largest beta of the cosine schedule.
    pub max_beta: f64,
    /// Rescale to zero terminal SNR (Lin et al. 2024).
    pub zero_terminal_snr: bool,
    /// Train an energy-parameterized model with this energy (ε̂ = ∇ₓE; MLP models and the ε
    /// prediction only). Absent: an ordinary score model.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub energy: Option<EnergyForm>,
}

impl Default for DiffusionConfig {
    fn default() -> Self {
        Self {
            schedule: ScheduleKind::Cosine,
            num_timesteps: 1000,
            prediction: Parameterization::Epsilon,
            beta_start: 1e-4,
            beta_end: 0.02,
            cosine_s: 0.008,
            max_beta: 0.999,
            zero_terminal_snr: false,
            energy: None,
        }
    }
}

impl DiffusionConfig {
    /// The schedule these settings describe.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] for out-of-range values.
    pub fn schedule(&self) -> Result<DiscreteSchedule> {
        let t = self.num_timesteps;
        let s = match self.schedule {
            ScheduleKind::Linear => DiscreteSchedule::linear(t, self.beta_start, self.beta_end)?,
            ScheduleKind::ScaledLinear => {
                DiscreteSchedule::scaled_linear(t, self.beta_start, self.beta_end)?
            }
            ScheduleKind::Cosine => {
                DiscreteSchedule::cosine_with_max_beta(t, self.cosine_s, self.max_beta)?
            }
        };
        if self.zero_terminal_snr {
            s.rescale_zero_terminal_snr()
        } else {
            Ok(s)
        }
    }
}

/// Everything `recompose train` needs: model, data, schedule and training settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunConfig {
    /// The network.
    pub model: ModelConfig,
    /// The data.
    pub data: DataConfig,
    /// The noise schedule.
    #[serde(default)]
    pub diffusion: DiffusionConfig,
    /// The optimization.
    #[serde(default)]
    pub train: TrainConfig,
    /// The text encoder of a text-conditioned run (captioned data); defaults if absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<TextSettings>,
}

/// The names of the built-in presets ([`RunConfig::preset`]).
pub const PRESET_NAMES: [&str; 12] = [
    "toy2d-ring",
    "toy2d-bar",
    "toy2d-left-bar",
    "toy2d-right-bar",
    "toy2d-box-large",
    "toy2d-box-small",
    "toy2d-ring-energy",
    "toy2d-bar-energy",
    "toy2d-left-bar-energy",
    "toy2d-right-bar-energy",
    "toy2d-box-large-energy",
    "toy2d-box-small-energy",
];

impl RunConfig {
    /// A built-in configuration by name (see [`PRESET_NAMES`]).
    ///
    /// # Errors
    ///
    /// [`Error::Config`] listing the presets if `name` is not one.
    pub fn preset(name: &str) -> Result<Self> {
        let toy = name
            .strip_prefix("toy2d-")
            .filter(|_| PRESET_NAMES.contains(&name))
            .ok_or_else(|| {
                Error::Config(format!(
                    "unknown preset `{name}`; the presets are {}",
                    PRESET_NAMES.join(", ")
                ))
            })?;
        Ok(match toy.strip_suffix("-energy") {
            Some(dist) => Self::toy2d_energy(dist.parse()?),
            None => Self::toy2d(toy.parse()?),
        })
    }

    /// [`RunConfig::toy2d`] with the energy parameterization `E = ‖g − x‖²` of the paper's 2-D
    /// energy models.
    pub fn toy2d_energy(dist: Toy2d) -> Self {
        let mut cfg = Self::toy2d(dist);
        cfg.diffusion.energy = Some(EnergyForm::SquaredResidual);
        cfg
    }

    /// The 2-D setup of Du et al. (2023) for one toy distribution.
    pub fn toy2d(dist: Toy2d) -> Self {
        Self {
            model: ModelConfig::Mlp(MlpConfig::default()),
            data: DataConfig::Toy2d {
                name: dist.name().to_string(),
            },
            text: None,
            diffusion: DiffusionConfig {
                num_timesteps: 100,
                ..DiffusionConfig::default()
            },
            train: TrainConfig {
                steps: 15_000,
                batch_size: 1000,
                lr: 1e-3,
                ema_decay: 0.999,
                checkpoint_every: 1000,
                log_every: 10,
                ..TrainConfig::default()
            },
        }
    }

    /// Parses a TOML configuration.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] with the parser's message (line and field) if the text is not a valid
    /// configuration, or if [`RunConfig::validate`] fails.
    pub fn from_toml(text: &str) -> Result<Self> {
        let cfg: Self = toml::from_str(text).map_err(|e| {
            let line = e.span().map(|s| {
                1 + text.as_bytes()[..s.start.min(text.len())]
                    .iter()
                    .filter(|&&b| b == b'\n')
                    .count()
            });
            let msg = e.message().trim();
            match line {
                Some(l) => Error::Config(format!("config line {l}: {msg}")),
                None => Error::Config(format!("config: {msg}")),
            }
        })?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Reads a TOML configuration file.
    ///
    /// # Errors
    ///
    /// [`Error::Io`] if it cannot be read; otherwise as [`RunConfig::from_toml`].
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = fs::read_to_string(path).map_err(|source| Error::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_toml(&text).map_err(|e| match e {
            Error::Config(m) => Error::Config(format!("{}: {m}", path.display())),
            other => other,
        })
    }

    /// The configuration as TOML.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] if it cannot be serialized (cannot happen for valid values).
    pub fn to_toml(&self) -> Result<String> {
        toml::to_string_pretty(self).map_err(|e| Error::Config(format!("config: {e}")))
    }

    /// Checks that the parts fit together: valid model, schedule and training settings, a model
    /// whose time embedding covers the schedule, and data of the model's shape.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] describing the first problem.
    pub fn validate(&self) -> Result<()> {
        self.train.validate()?;
        self.diffusion.schedule()?;
        self.train
            .timesteps
            .validate(self.diffusion.num_timesteps)?;
        if let Some(w) = &self.train.loss_weight {
            w.validate()?;
        }
        match &self.model {
            ModelConfig::Mlp(m) => {
                m.validate()?;
                if m.num_timesteps != self.diffusion.num_timesteps {
                    return Err(Error::Config(format!(
                        "model.num_timesteps = {} but diffusion.num_timesteps = {}",
                        m.num_timesteps, self.diffusion.num_timesteps
                    )));
                }
            }
            ModelConfig::Unet(u) => {
                u.validate()?;
                if self.diffusion.energy.is_some() && u.dropout > 0.0 {
                    return Err(Error::Config(format!(
                        "an energy U-Net needs model.dropout = 0 (its input gradient is written \
                         for the network without dropout), got {}",
                        u.dropout
                    )));
                }
            }
        }
        let captioned = matches!(self.data, DataConfig::CaptionedFolder { .. });
        if captioned && !matches!(self.model, ModelConfig::Unet(_)) {
            return Err(Error::Config(
                "captioned data train a text-conditioned U-Net: use model kind \"unet\"".into(),
            ));
        }
        if self.text.is_some() && !captioned {
            return Err(Error::Config(
                "a [text] table needs captioned data (data kind \"captioned_folder\")".into(),
            ));
        }
        if let Some(t) = &self.text
            && !t.pooled
            && !t.cross_attention
        {
            return Err(Error::Config(
                "text.pooled = false leaves the prompt only the cross-attention path: set \
                 text.cross_attention = true"
                    .into(),
            ));
        }
        if let DataConfig::CaptionedFolder { uncond_prob, .. } = &self.data
            && !(0.0..=1.0).contains(uncond_prob)
        {
            return Err(Error::Config(format!(
                "data.uncond_prob must lie in [0, 1], got {uncond_prob}"
            )));
        }
        if self.diffusion.energy.is_some() && self.diffusion.prediction != Parameterization::Epsilon
        {
            return Err(Error::Config(format!(
                "diffusion.energy predicts ε as the energy's gradient, so diffusion.prediction \
                 must be \"epsilon\", not {}",
                format!("{:?}", self.diffusion.prediction).to_lowercase()
            )));
        }
        let want = self.data_item_shape()?;
        let have = self.model_item_shape();
        if want != have {
            return Err(Error::Config(format!(
                "the data items have shape {want:?} but the model takes {have:?}"
            )));
        }
        Ok(())
    }

    fn data_item_shape(&self) -> Result<Vec<usize>> {
        Ok(match &self.data {
            DataConfig::Toy2d { name } => {
                name.parse::<Toy2d>()?;
                vec![2]
            }
            DataConfig::ImageFolder { size, channels, .. }
            | DataConfig::CaptionedFolder { size, channels, .. } => {
                vec![*channels, *size, *size]
            }
        })
    }

    /// Whether the run trains a text-conditioned model (its data are captioned).
    pub fn is_text_conditioned(&self) -> bool {
        matches!(self.data, DataConfig::CaptionedFolder { .. })
    }

    /// The tokenizer of a text-conditioned run, read from the data (`tokenizer`, or
    /// `DIR/tokenizer.json`); `None` for other runs.
    ///
    /// # Errors
    ///
    /// As [`TextTokenizer::from_file`].
    pub fn tokenizer(&self) -> Result<Option<TextTokenizer>> {
        match &self.data {
            DataConfig::CaptionedFolder { dir, tokenizer, .. } => {
                let path = match tokenizer {
                    Some(p) => std::path::PathBuf::from(p),
                    None => Path::new(dir).join(TOKENIZER_FILE),
                };
                Ok(Some(TextTokenizer::from_file(&path)?))
            }
            _ => Ok(None),
        }
    }

    /// The [`TextUNetConfig`] of a text-conditioned run with the tokenizer `tokenizer`.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] if the run is not a text-conditioned U-Net, or as
    /// [`TextUNetConfig::check_tokenizer`].
    pub fn text_unet_config(&self, tokenizer: &TextTokenizer) -> Result<TextUNetConfig> {
        let ModelConfig::Unet(u) = &self.model else {
            return Err(Error::Config(
                "a text-conditioned model is a U-Net (model kind \"unet\")".into(),
            ));
        };
        let t = self.text.clone().unwrap_or_default();
        let text = TextEncoderConfig {
            vocab_size: tokenizer.vocab_size(),
            max_len: tokenizer.max_len(),
            width: t.width,
            layers: t.layers,
            heads: t.heads,
        };
        let cfg = TextUNetConfig {
            unet: UNetConfig {
                cond_dim: if t.pooled { t.width } else { 0 },
                context_dim: if t.cross_attention { t.width } else { 0 },
                ..u.clone()
            },
            text,
            pad_id: tokenizer.pad_id(),
            energy: self.diffusion.energy,
        };
        cfg.check_tokenizer(tokenizer)?;
        Ok(cfg)
    }

    /// The shape of one sample the model produces.
    pub fn model_item_shape(&self) -> Vec<usize> {
        match &self.model {
            ModelConfig::Mlp(m) => vec![m.data_dim],
            ModelConfig::Unet(u) => vec![u.in_channels, u.image_size, u.image_size],
        }
    }

    /// Bytes of one forward pass's activations per item, three times for an energy model
    /// (the energy's gradient is a second pass through the network, and training
    /// differentiates through it).
    pub fn activation_bytes(&self) -> recompose_core::memory::Estimate {
        let a = self.model.activation_bytes();
        if self.diffusion.energy.is_some() {
            a * 3
        } else {
            a
        }
    }

    /// Peak bytes of training this run ([`crate::memory::train_estimate`]): the network's
    /// parameters and activations on `train.batch_size` items, and for an image folder its
    /// images in memory (every entry of the directory counted as an image of the configured
    /// size, twice: decoded and converted).
    pub fn memory_estimate(&self) -> recompose_core::memory::Estimate {
        use recompose_core::memory::Estimate;
        let data = match &self.data {
            DataConfig::Toy2d { .. } => Estimate::ZERO,
            DataConfig::ImageFolder {
                dir,
                size,
                channels,
                ..
            }
            | DataConfig::CaptionedFolder {
                dir,
                size,
                channels,
                ..
            } => {
                let files = std::fs::read_dir(dir).map_or(0, |d| d.count());
                Estimate::f32s(&[files, *channels, *size, *size]) * 2
            }
        };
        crate::memory::train_estimate(
            self.model.param_bytes(),
            self.activation_bytes(),
            self.train.batch_size,
            data,
        )
    }

    /// The training data.
    ///
    /// # Errors
    ///
    /// As [`Toy2d`]'s parser, [`ImageFolder::open`], [`RunConfig::tokenizer`] and
    /// [`CaptionedImages::open`].
    pub fn dataset(&self) -> Result<Box<dyn Dataset>> {
        Ok(match &self.data {
            DataConfig::Toy2d { name } => Box::new(name.parse::<Toy2d>()?),
            DataConfig::ImageFolder {
                dir,
                size,
                channels,
                range,
            } => Box::new(ImageFolder::open(
                dir,
                &ImageFolderConfig {
                    size: *size,
                    channels: *channels,
                    range: *range,
                },
            )?),
            DataConfig::CaptionedFolder {
                dir,
                size,
                channels,
                range,
                uncond_prob,
                ..
            } => {
                let tokenizer = self
                    .tokenizer()?
                    .ok_or_else(|| Error::Config("captioned data without a tokenizer".into()))?;
                Box::new(CaptionedImages::open(
                    dir,
                    &ImageFolderConfig {
                        size: *size,
                        channels: *channels,
                        range: *range,
                    },
                    &tokenizer,
                    *uncond_prob,
                )?)
            }
        })
    }

    /// The value range of image data (for writing samples as PNG).
    pub fn value_range(&self) -> ValueRange {
        match &self.data {
            DataConfig::ImageFolder { range, .. } | DataConfig::CaptionedFolder { range, .. } => {
                *range
            }
            DataConfig::Toy2d { .. } => ValueRange::MinusOneOne,
        }
    }

    /// Builds the model on the variables of `vb` (a text-conditioned one with the data's
    /// tokenizer).
    ///
    /// # Errors
    ///
    /// As the model's constructor and [`RunConfig::tokenizer`].
    pub fn build_model(&self, vb: candle_nn::VarBuilder) -> Result<Model> {
        self.build_model_with(vb, self.tokenizer()?.as_ref())
    }

    /// [`RunConfig::build_model`] with the given tokenizer for a text-conditioned run (the
    /// run directory's copy when loading a trained model).
    ///
    /// # Errors
    ///
    /// As the model's constructor; [`Error::Config`] for a text-conditioned run without a
    /// tokenizer.
    pub fn build_model_with(
        &self,
        vb: candle_nn::VarBuilder,
        tokenizer: Option<&TextTokenizer>,
    ) -> Result<Model> {
        if self.is_text_conditioned() {
            let tokenizer = tokenizer.ok_or_else(|| {
                Error::Config("a text-conditioned run needs its tokenizer".into())
            })?;
            let cfg = self.text_unet_config(tokenizer)?;
            return Ok(Model::TextUnet(Box::new(TextUNet::new(
                &cfg,
                self.diffusion.prediction,
                vb,
            )?)));
        }
        Ok(match &self.model {
            ModelConfig::Mlp(c) => match self.diffusion.energy {
                Some(form) => Model::Energy(EnergyMlp::new(c, form, vb)?),
                None => Model::Mlp(ResidualMlp::new(c, self.diffusion.prediction, vb)?),
            },
            ModelConfig::Unet(c) => match self.diffusion.energy {
                Some(form) => Model::EnergyUnet(Box::new(EnergyUNet::new(c, form, vb)?)),
                None => Model::Unet(Box::new(UNet::new(c, self.diffusion.prediction, vb)?)),
            },
        })
    }
}

/// A model built from a [`RunConfig`].
#[derive(Debug, Clone)]
pub enum Model {
    /// The residual MLP.
    Mlp(ResidualMlp),
    /// The residual MLP read as an energy model.
    Energy(EnergyMlp),
    /// The U-Net.
    Unet(Box<UNet>),
    /// The U-Net read as an energy model.
    EnergyUnet(Box<EnergyUNet>),
    /// A U-Net conditioned on prompts (token ids as its condition), score or energy.
    TextUnet(Box<TextUNet>),
}

impl Denoiser for Model {
    fn parameterization(&self) -> Parameterization {
        match self {
            Self::Mlp(m) => m.parameterization(),
            Self::Energy(m) => m.parameterization(),
            Self::Unet(m) => m.parameterization(),
            Self::EnergyUnet(m) => m.parameterization(),
            Self::TextUnet(m) => m.parameterization(),
        }
    }

    fn forward(&self, x_t: &Tensor, t: &Tensor, cond: Option<&Tensor>) -> Result<Tensor> {
        match self {
            Self::Mlp(m) => m.forward(x_t, t, cond),
            Self::Energy(m) => m.forward(x_t, t, cond),
            Self::Unet(m) => m.forward(x_t, t, cond),
            Self::EnergyUnet(m) => m.forward(x_t, t, cond),
            Self::TextUnet(m) => m.forward(x_t, t, cond),
        }
    }
}

impl TrainableDenoiser for Model {
    fn forward_train(
        &self,
        x_t: &Tensor,
        t: &Tensor,
        cond: Option<&Tensor>,
        rng: &mut SeededRng,
    ) -> Result<Tensor> {
        match self {
            Self::Mlp(m) => m.forward_train(x_t, t, cond, rng),
            Self::Energy(m) => m.forward_train(x_t, t, cond, rng),
            Self::Unet(m) => m.forward_train(x_t, t, cond, rng),
            Self::EnergyUnet(m) => m.forward_train(x_t, t, cond, rng),
            Self::TextUnet(m) => m.forward_train(x_t, t, cond, rng),
        }
    }

    fn fused_mse_and_grads(
        &self,
        x_t: &Tensor,
        t: &Tensor,
        cond: Option<&Tensor>,
        target: &Tensor,
    ) -> Result<Option<(Tensor, GradStore)>> {
        match self {
            Self::Mlp(m) => m.fused_mse_and_grads(x_t, t, cond, target),
            Self::Energy(m) => m.fused_mse_and_grads(x_t, t, cond, target),
            Self::Unet(m) => m.fused_mse_and_grads(x_t, t, cond, target),
            Self::EnergyUnet(m) => m.fused_mse_and_grads(x_t, t, cond, target),
            Self::TextUnet(m) => m.fused_mse_and_grads(x_t, t, cond, target),
        }
    }
}

/// Trains the run described by `cfg` into `opts.out_dir`, writing `config.toml` there too.
///
/// # Errors
///
/// As [`RunConfig::validate`], [`RunConfig::dataset`] and [`crate::train::train`];
/// [`Error::Memory`] when [`RunConfig::memory_estimate`] exceeds
/// [`TrainOptions::memory_limit`], before anything is allocated.
pub fn train_run(
    cfg: &RunConfig,
    opts: &TrainOptions,
    device: &Device,
    progress: &mut dyn FnMut(TrainProgress),
) -> Result<TrainReport> {
    cfg.validate()?;
    opts.memory_limit().check(
        format_args!(
            "training a denoiser run on batches of {}",
            cfg.train.batch_size
        ),
        cfg.memory_estimate(),
    )?;
    let store = ParamStore::new(cfg.train.seed);
    let tokenizer = cfg.tokenizer()?;
    let model = cfg.build_model_with(store.var_builder(DType::F32, device), tokenizer.as_ref())?;
    let data = cfg.dataset()?;
    let schedule = cfg.diffusion.schedule()?;
    let objective = DenoisingLoss::new(&model, &schedule)
        .with_timesteps(cfg.train.timesteps)?
        .with_weight(cfg.train.loss_weight)?;
    let mut opts = opts.clone();
    opts.extra_files
        .push(("config.toml".to_string(), cfg.to_toml()?));
    if let Some(t) = &tokenizer {
        opts.extra_files
            .push((TOKENIZER_FILE.to_string(), t.to_json()?));
    }
    crate::train::train(
        &store,
        &objective,
        data.as_ref(),
        &cfg.train,
        &opts,
        progress,
    )
}

impl RunConfig {
    /// The family of denoiser runs (table `[model]`, presets [`PRESET_NAMES`]) for a
    /// [`Registry`].
    pub const FAMILY: RunFamily = RunFamily {
        name: "denoiser",
        table: "model",
        presets: &PRESET_NAMES,
        preset: |name| Ok(Box::new(RunConfig::preset(name)?)),
        from_toml: |text| Ok(Box::new(RunConfig::from_toml(text)?)),
    };
}

impl Run for RunConfig {
    fn family(&self) -> &'static str {
        Self::FAMILY.name
    }

    fn train_config(&self) -> &TrainConfig {
        &self.train
    }

    fn train_config_mut(&mut self) -> &mut TrainConfig {
        &mut self.train
    }

    fn set_energy(&mut self, form: EnergyForm) -> Result<()> {
        self.diffusion.energy = Some(form);
        Ok(())
    }

    fn validate(&self) -> Result<()> {
        RunConfig::validate(self)
    }

    fn to_toml(&self) -> Result<String> {
        RunConfig::to_toml(self)
    }

    fn memory_estimate(&self) -> recompose_core::memory::Estimate {
        RunConfig::memory_estimate(self)
    }

    fn train(
        &self,
        opts: &TrainOptions,
        device: &Device,
        progress: &mut dyn FnMut(TrainProgress),
    ) -> Result<TrainReport> {
        train_run(self, opts, device, progress)
    }
}

/// A trained model read back from a `recompose train` output directory: its configuration
/// (`config.toml`), the EMA weights (`model.safetensors`, checked against `model.json`) and the
/// schedule. The model is for inference: its weights are constants, not variables, so its
/// computations record no autograd graph.
#[derive(Debug, Clone)]
pub struct Trained {
    /// The run configuration.
    pub config: RunConfig,
    /// The model with the EMA weights.
    pub model: Model,
    /// The training noise schedule.
    pub schedule: DiscreteSchedule,
    /// The tokenizer of a text-conditioned model (the run directory's copy).
    pub tokenizer: Option<TextTokenizer>,
}

impl Trained {
    /// Loads `dir` onto `device`.
    ///
    /// # Errors
    ///
    /// [`Error::Io`] if a file is missing; [`Error::Config`] for an invalid `config.toml`;
    /// [`Error::Checkpoint`] naming the tensor when the weights are corrupt, truncated or do not
    /// match the configured model (missing, extra or misshapen tensors).
    pub fn load(dir: &Path, device: &Device) -> Result<Self> {
        let config = RunConfig::from_file(&dir.join("config.toml"))?;
        let weights: HashMap<String, Tensor> = read_model_weights(dir, device)?;
        let tokenizer = if config.is_text_conditioned() {
            Some(TextTokenizer::from_file(&dir.join(TOKENIZER_FILE))?)
        } else {
            None
        };
        // The weights are checked and converted through a store, then the model is built on
        // their detached values: inference records no autograd graph.
        let store = ParamStore::new(0);
        config.build_model_with(store.var_builder(DType::F32, device), tokenizer.as_ref())?;
        store.assign(
            &weights,
            &dir.join("model.safetensors").display().to_string(),
        )?;
        let model = config.build_model_with(
            store.frozen_var_builder(DType::F32, device),
            tokenizer.as_ref(),
        )?;
        let schedule = config.diffusion.schedule()?;
        Ok(Self {
            config,
            model,
            schedule,
            tokenizer,
        })
    }
}
