//! Prompt algebra: text-conditioned models guided by several prompts at once.
//!
//! Liu, Li, Du, Torralba, Tenenbaum, *Compositional Visual Generation with Composable Diffusion
//! Models* (ECCV 2022), eqs. 10–13; Du et al., *Reduce, Reuse, Recycle* (ICML 2023), §3 (the
//! classifier-free guidance product); Ho & Salimans, *Classifier-Free Diffusion Guidance*
//! (2022).
//!
//! # Semantics
//!
//! A prompt `"P"` of a text-conditioned model M (written in an expression, [`crate::expr`])
//! stands for the **guidance factor** (p_M(x | P) / p_M(x | ""))^γ, where "" is the empty
//! prompt — the model's unconditional distribution p_u — and γ the guidance scale, a parameter
//! of the build ([`crate::tree::build_with`], `--guidance` on the command line). Inside one
//! product (a chain of AND, NOT and weights), all prompt factors of the same model share
//! **one** unconditional base p_u, so the chain's part from model M is the density
//! p_u · Π_i (p_i / p_u)^{c_i}, with coefficients c_i:
//!
//! ```text
//! "A"                 s = s_u + γ (s_A − s_u)                      (classifier-free guidance)
//! "A" AND "B"         s = s_u + γ (s_A − s_u) + γ (s_B − s_u)      (conjunction)
//! w*"A"               s = s_u + wγ (s_A − s_u)
//! a*"A" NOT α*"B"     s = s_u + aγ (s_A − s_u) − αγ (s_B − s_u)    (a = α = 1 when not written)
//! in general          s = s_u + Σ_i c_i (s_i − s_u)
//!                     f = f_u + Σ_i c_i (f_i − f_u)
//! ```
//!
//! with s_P = ∇ₓ log p_t(x | P) the model's score under prompt P at the current noise level and
//! f_P = log p_t(x | P) its log-density (energy models only: f = −E/σ_t, known up to a constant
//! per level), so the log-density of a composition always matches its score. Nested AND and
//! NOT of prompts of one model flatten into one such linear combination. The weights of a NOT
//! between prompts default to (1, 1), not to the density negation's (1.3, 0.3)
//! ([`crate::ops::DEFAULT_NEGATION`]): a guidance factor is a ratio of two densities of the
//! same noise level, and the noise scale is carried by the base p_u, which keeps weight 1.
//! OR of prompts is the mixture ([`crate::ops::Mixture`]) of the guided conditionals
//! p_u (p_P / p_u)^γ, each with its own base; like every mixture it needs log-densities
//! (energy-parameterized models). A prompt group is a [`Component`] like any other, so prompts
//! combine with models of other kinds: `ring AND "red"` is the product of the model `ring`
//! and the group p_u (p_red / p_u)^γ (see [`crate::tree`] for the rules of a whole
//! expression).
//!
//! # Evaluation
//!
//! [`GuidedPrompts`] holds the tokenized prompts of one group and their coefficients and runs
//! **one** batched network call per evaluation, whatever the number of prompts: n points and
//! P prompts make n·(P + 1) rows (the empty prompt is the last one). The rows are
//! **chain-major**: row i·(P + 1) + k is point i under prompt k, so a network can share the
//! work that does not depend on the prompt (the text encoder runs on the P + 1 prompts once;
//! [`TextUNet`] runs its input convolution once per point, [`UNet::forward_repeated`]).
//! Every parameterization's score is affine in the network's output y with coefficients that
//! depend only on the noise level, s = A y + B x, and the weights 1 − Σc_i (the empty prompt)
//! and c_i (the prompts) sum to 1, so the combination is taken on the outputs and converted
//! once: s = A (Σ_k w_k y_k) + B x. Energy models: ε̂ = ∇ₓE, s = −ε̂/σ_t and f = −E/σ_t
//! ([`crate::component::EnergyLeaf`]).
//!
//! Prompts are tokenized once, when the group is built, with
//! [`TextTokenizer::encode_strict`]: a word the model does not know is an error naming the
//! word ([`Error::is_bad_input`]), not a silent unknown token.
//!
//! [`UNet::forward_repeated`]: recompose_diffusion::nn::UNet::forward_repeated

use std::sync::Arc;

use candle_core::{DType, Device, Tensor};
use recompose_core::memory::Estimate;
use recompose_diffusion::text::{TextTokenizer, TextUNet};
use recompose_diffusion::{Denoiser, DiscreteSchedule, Parameterization};

use crate::component::{Component, Eval, check_batch, divide};
use crate::{Error, Result};

/// What a [`PromptNetwork`] predicts for n points under P prompts: n·P rows, chain-major (row
/// i·P + k is point i under prompt k).
#[derive(Debug, Clone)]
pub struct Prediction {
    /// The energies E (`[n·P]`), when asked for (energy models only).
    pub energy: Option<Tensor>,
    /// The network's outputs (`[n·P, item…]`) in its [`PromptNetwork::parameterization`]; for
    /// an energy model the prediction ε̂ = ∇ₓE.
    pub output: Tensor,
}

/// A denoiser conditioned on prompts given as token ids: the network behind a
/// [`GuidedPrompts`] group.
pub trait PromptNetwork: Send + Sync {
    /// The shape of one item (`[c, h, w]` for images; points are passed flattened to
    /// [`Component`]s and reshaped to it).
    fn item_shape(&self) -> Vec<usize>;

    /// What the network's output means (ε for an energy model, whose output is ∇ₓE).
    fn parameterization(&self) -> Parameterization;

    /// Whether the network has an energy, i.e. [`PromptNetwork::predict`] can return E.
    fn has_energy(&self) -> bool;

    /// Checks that `tokenizer` produces the ids the network reads (the default accepts any).
    ///
    /// # Errors
    ///
    /// [`Error::Config`] or [`Error::Diffusion`] naming the mismatch.
    fn check_tokenizer(&self, tokenizer: &TextTokenizer) -> Result<()> {
        let _ = tokenizer;
        Ok(())
    }

    /// The predictions for every point of `x` (`[n, item…]`, `f32`) at the per-point training
    /// timesteps `t` (`[n]`, `f32`) under every prompt of `ids` (`u32` `[P, L]`), in one
    /// batched call: n·P rows, chain-major (see [`Prediction`]). With `energy` set, the
    /// energies too. The results need no gradient: an implementation may drop the graph.
    ///
    /// # Errors
    ///
    /// [`Error::NeedsDensity`] for `energy` on a network without one; the network's errors.
    fn predict(&self, x: &Tensor, t: &Tensor, ids: &Tensor, energy: bool) -> Result<Prediction>;
}

/// `x` (`[n, …]`) with every row repeated `p` times in place: `[n·p, …]`, row i·p + k = row i.
fn repeat_rows(x: &Tensor, p: usize) -> Result<Tensor> {
    let dims = x.dims();
    let mut wide = vec![dims[0], p];
    wide.extend_from_slice(&dims[1..]);
    let mut flat = vec![dims[0] * p];
    flat.extend_from_slice(&dims[1..]);
    Ok(x.unsqueeze(1)?.broadcast_as(wide)?.reshape(flat)?)
}

/// `x` (`[p, …]`) stacked `n` times: `[n·p, …]`, row i·p + k = row k.
fn tile_rows(x: &Tensor, n: usize) -> Result<Tensor> {
    let dims = x.dims();
    let mut wide = vec![n];
    wide.extend_from_slice(dims);
    let mut flat = vec![n * dims[0]];
    flat.extend_from_slice(&dims[1..]);
    Ok(x.unsqueeze(0)?.broadcast_as(wide)?.reshape(flat)?)
}

impl PromptNetwork for TextUNet {
    fn item_shape(&self) -> Vec<usize> {
        let u = &self.config().unet;
        vec![u.in_channels, u.image_size, u.image_size]
    }

    fn parameterization(&self) -> Parameterization {
        Denoiser::parameterization(self)
    }

    fn has_energy(&self) -> bool {
        self.is_energy()
    }

    fn check_tokenizer(&self, tokenizer: &TextTokenizer) -> Result<()> {
        Ok(self.config().check_tokenizer(tokenizer)?)
    }

    /// Score models: the P prompts are encoded once and [`UNet::forward_repeated`] runs the
    /// input convolution once per point. Energy models: [`TextUNet::energy_and_grad`] on the
    /// repeated rows. Either way the results are detached from candle's graph (which the
    /// weights of a trainable store would otherwise keep alive until the results are
    /// dropped).
    ///
    /// [`UNet::forward_repeated`]: recompose_diffusion::nn::UNet::forward_repeated
    fn predict(&self, x: &Tensor, t: &Tensor, ids: &Tensor, energy: bool) -> Result<Prediction> {
        let (n, p) = (x.dim(0)?, ids.dim(0)?);
        if p == 0 {
            return Err(Error::Config(
                "a prediction needs at least one prompt".into(),
            ));
        }
        if self.is_energy() {
            let (e, grad) = self.energy_and_grad(
                &repeat_rows(x, p)?,
                &repeat_rows(t, p)?,
                &tile_rows(ids, n)?,
            )?;
            return Ok(Prediction {
                energy: energy.then(|| e.detach()),
                output: grad.detach(),
            });
        }
        if energy {
            return Err(Error::NeedsDensity(
                "a score-parameterized text model has no energy; train it with an energy form \
                 for log-densities"
                    .into(),
            ));
        }
        // Row i·p + k is prompt k.
        let rows: Vec<u32> = (0..n * p).map(|r| (r % p) as u32).collect();
        let c = self
            .condition(ids)?
            .select_rows(&Tensor::from_vec(rows, n * p, ids.device())?)?;
        let y =
            self.unet()
                .forward_repeated(x, t, c.pooled.as_ref(), c.tokens.as_ref(), p, None)?;
        Ok(Prediction {
            energy: None,
            output: y.detach(),
        })
    }
}

/// A text-conditioned model ready to be guided: what [`crate::tree::build_with`] asks for
/// each prompt's model.
#[derive(Clone)]
pub struct PromptModel {
    /// The model's name (the qualifier of its prompts, `shapes` in `shapes:"red"`).
    pub name: String,
    /// The network.
    pub network: Arc<dyn PromptNetwork>,
    /// The tokenizer the network was trained with.
    pub tokenizer: TextTokenizer,
    /// The noise schedule the network was trained on.
    pub schedule: DiscreteSchedule,
    /// Where the network's weights live and its points must be.
    pub device: Device,
}

impl std::fmt::Debug for PromptModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PromptModel")
            .field("name", &self.name)
            .field("item_shape", &self.network.item_shape())
            .field("has_energy", &self.network.has_energy())
            .field("steps", &self.schedule.len())
            .field("device", &self.device.location())
            .finish()
    }
}

impl PromptModel {
    /// The model `name` of `network` with its `tokenizer`, trained on `schedule`, evaluated on
    /// `device`.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] for an empty name or an item shape that is empty or has a zero
    /// extent; as [`PromptNetwork::check_tokenizer`].
    pub fn new(
        name: &str,
        network: Arc<dyn PromptNetwork>,
        tokenizer: TextTokenizer,
        schedule: DiscreteSchedule,
        device: &Device,
    ) -> Result<Self> {
        if name.is_empty() {
            return Err(Error::Config("a text model needs a name".into()));
        }
        let item = network.item_shape();
        if item.is_empty() || item.contains(&0) {
            return Err(Error::Config(format!(
                "{name}: the item shape must be non-empty with positive extents, got {item:?}"
            )));
        }
        network.check_tokenizer(&tokenizer)?;
        Ok(Self {
            name: name.to_string(),
            network,
            tokenizer,
            schedule,
            device: device.clone(),
        })
    }
}

impl PromptModel {
    /// The noise schedule the model was trained with.
    pub fn schedule(&self) -> &DiscreteSchedule {
        &self.schedule
    }

    /// The text-conditioned model of a directory written by `recompose train` (a run with a
    /// `[text]` table), with the tokenizer saved beside it, on `device`; `name` is the model's
    /// name in expressions.
    ///
    /// # Errors
    ///
    /// As [`recompose_diffusion::run::Trained::load`]; [`Error::Config`] when the run is not
    /// text-conditioned; as [`PromptModel::new`].
    pub fn load(name: &str, dir: &std::path::Path, device: &Device) -> Result<Self> {
        use recompose_diffusion::run::{Model, Trained};
        let trained = Trained::load(dir, device)?;
        let (Model::TextUnet(net), Some(tokenizer)) = (trained.model, trained.tokenizer) else {
            return Err(Error::Config(format!(
                "{}: not a text-conditioned model (its prompts need a run with a [text] table)",
                dir.display()
            )));
        };
        Self::new(name, Arc::new(*net), tokenizer, trained.schedule, device)
    }
}

/// The text models of a composition by name, resolving the qualifier of each prompt: a named
/// one must exist, an unnamed one needs exactly one text model.
#[derive(Debug, Clone, Default)]
pub struct PromptModels {
    models: Vec<PromptModel>,
}

impl PromptModels {
    /// No text model.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `model`.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] if a model of the same name is already there.
    pub fn insert(&mut self, model: PromptModel) -> Result<()> {
        if self.models.iter().any(|m| m.name == model.name) {
            return Err(Error::Config(format!(
                "the text model `{}` is given twice",
                model.name
            )));
        }
        self.models.push(model);
        Ok(())
    }

    /// The models' names, in order of insertion.
    pub fn names(&self) -> Vec<&str> {
        self.models.iter().map(|m| m.name.as_str()).collect()
    }

    /// The model of a prompt qualified by `qualifier` (`Some("shapes")` for `shapes:"red"`,
    /// `None` for `"red"`).
    ///
    /// # Errors
    ///
    /// [`Error::Config`]: an unknown name; no name and no text model, or no name and several.
    pub fn resolve(&self, qualifier: Option<&str>) -> Result<PromptModel> {
        let list = || {
            self.names()
                .iter()
                .map(|n| format!("`{n}`"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        match qualifier {
            Some(name) => self
                .models
                .iter()
                .find(|m| m.name == name)
                .cloned()
                .ok_or_else(|| {
                    Error::Config(if self.models.is_empty() {
                        format!("`{name}` is not a text model (there is none)")
                    } else {
                        format!("`{name}` is not a text model (the text models: {})", list())
                    })
                }),
            None => match self.models.as_slice() {
                [only] => Ok(only.clone()),
                [] => Err(Error::Config(
                    "a prompt needs a text-conditioned model, and none is given".into(),
                )),
                [first, ..] => Err(Error::Config(format!(
                    "the prompt does not name its model and there are several text models \
                     ({}); write it as {}:\"…\"",
                    list(),
                    first.name
                ))),
            },
        }
    }
}

/// One text model guided by several prompts, p_u · Π_i (p_i / p_u)^{c_i}:
/// s = s_u + Σ_i c_i (s_i − s_u), f likewise (see the [module documentation](self)).
pub struct GuidedPrompts {
    name: String,
    network: Arc<dyn PromptNetwork>,
    prompts: Vec<String>,
    coefficients: Vec<f64>,
    /// The weights of the rows: c_i for the prompts, 1 − Σc_i for the empty prompt (last).
    weights: Vec<f64>,
    /// The token ids of the prompts and of the empty prompt (last), `u32` `[P + 1, L]`.
    ids: Tensor,
    item: Vec<usize>,
    dim: usize,
    parameterization: Parameterization,
    schedule: DiscreteSchedule,
    device: Device,
}

impl std::fmt::Debug for GuidedPrompts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GuidedPrompts")
            .field("describe", &self.describe())
            .finish()
    }
}

impl GuidedPrompts {
    /// The model `model` guided by `terms` (coefficient c_i, prompt): for one prompt with
    /// c = γ, classifier-free guidance. A prompt given twice is one prompt with the sum of its
    /// coefficients.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] for no terms, a coefficient that is not finite or a blank prompt;
    /// [`Error::Diffusion`] (a tokenizer error, naming the prompt and the word) for a word the
    /// tokenizer does not know or a prompt longer than its sequence length; candle's errors
    /// placing the ids on the device.
    pub fn new(model: &PromptModel, terms: &[(f64, &str)]) -> Result<Self> {
        let name = &model.name;
        if terms.is_empty() {
            return Err(Error::Config(format!(
                "guiding `{name}` needs at least one prompt"
            )));
        }
        let mut prompts: Vec<String> = Vec::new();
        let mut coefficients: Vec<f64> = Vec::new();
        for &(c, text) in terms {
            if !c.is_finite() {
                return Err(Error::Config(format!(
                    "the coefficient {c} of the prompt {text:?} of `{name}` is not finite"
                )));
            }
            if text.trim().is_empty() {
                return Err(Error::Config(format!(
                    "a blank prompt for `{name}`: the empty prompt is the unconditional model, \
                     which guidance adds by itself"
                )));
            }
            match prompts.iter().position(|p| p == text) {
                Some(k) => coefficients[k] += c,
                None => {
                    prompts.push(text.to_string());
                    coefficients.push(c);
                }
            }
        }
        let mut texts: Vec<&str> = prompts.iter().map(String::as_str).collect();
        texts.push("");
        let encoded = model.tokenizer.encode_strict(&texts).map_err(|e| match e {
            recompose_diffusion::Error::Tokenizer(msg) => recompose_diffusion::Error::Tokenizer(
                format!("the prompts of the text model `{name}`: {msg}"),
            ),
            other => other,
        })?;
        let ids = encoded.ids_tensor(&model.device)?;
        let mut weights = coefficients.clone();
        weights.push(1.0 - coefficients.iter().sum::<f64>());
        let item = model.network.item_shape();
        Ok(Self {
            name: name.clone(),
            parameterization: model.network.parameterization(),
            network: Arc::clone(&model.network),
            dim: item.iter().product(),
            item,
            prompts,
            coefficients,
            weights,
            ids,
            schedule: model.schedule.clone(),
            device: model.device.clone(),
        })
    }

    /// The model `model` without a prompt: its unconditional model (the empty prompt) alone,
    /// which [`GuidedPrompts::new`] otherwise adds by itself.
    ///
    /// # Errors
    ///
    /// Candle's errors placing the ids on the device; the tokenizer's (none for the empty
    /// prompt of a working tokenizer).
    pub fn unconditional(model: &PromptModel) -> Result<Self> {
        let ids = model
            .tokenizer
            .encode_strict(&[""])?
            .ids_tensor(&model.device)?;
        let item = model.network.item_shape();
        Ok(Self {
            name: model.name.clone(),
            parameterization: model.network.parameterization(),
            network: Arc::clone(&model.network),
            dim: item.iter().product(),
            item,
            prompts: Vec::new(),
            coefficients: Vec::new(),
            weights: vec![1.0],
            ids,
            schedule: model.schedule.clone(),
            device: model.device.clone(),
        })
    }

    /// The model's name.
    pub fn model_name(&self) -> &str {
        &self.name
    }

    /// The distinct prompts, in order of first appearance.
    pub fn prompts(&self) -> &[String] {
        &self.prompts
    }

    /// The coefficient c_i of each prompt (γ times its weight, negative when negated).
    pub fn coefficients(&self) -> &[f64] {
        &self.coefficients
    }

    /// The rows of one evaluation per point: the prompts and the empty prompt.
    pub fn rows_per_point(&self) -> usize {
        self.prompts.len() + 1
    }
}

impl GuidedPrompts {
    /// The network's predictions for the items `x` (`[n, item…]`) at the per-point timesteps
    /// `t` under every row (the prompts and the empty prompt), in one call, combined per
    /// point as Σ_k w_k y_k: `[n, dim]` `f32` in the network's parameterization (the guided
    /// prediction, since every parameterization is affine in the score at fixed x and t), and
    /// the raw energies (`[n · rows]`) when `density` asks for them.
    fn weighted(&self, x: &Tensor, t: &Tensor, density: bool) -> Result<(Tensor, Option<Tensor>)> {
        let n = x.dim(0)?;
        let rows = self.rows_per_point();
        let pred = self.network.predict(x, t, &self.ids, density)?;
        if pred.output.elem_count() != n * rows * self.dim {
            return Err(Error::Shape(format!(
                "{}: the network returned {:?} for {n} points under {rows} prompts; expected \
                 [{}, {:?}]",
                self.describe(),
                pred.output.dims(),
                n * rows,
                self.item
            )));
        }
        // Σ_k w_k y_k per point, over the rows of the point (chain-major).
        let w32: Vec<f32> = self.weights.iter().map(|&w| w as f32).collect();
        let w = Tensor::from_vec(w32, (1, rows, 1), &self.device)?;
        let y = pred
            .output
            .to_dtype(DType::F32)?
            .reshape((n, rows, self.dim))?
            .broadcast_mul(&w)?
            .sum(1)?;
        Ok((y, pred.energy))
    }
}

/// The guided model as a plain denoiser for the diffusion crate's samplers (`recompose sample
/// --prompt`, with or without expert networks): its prediction at (x_t, t) is Σ_k w_k y_k, the
/// classifier-free guided prediction y_∅ + γ (y_prompt − y_∅) for one prompt, in the network's
/// parameterization.
impl Denoiser for GuidedPrompts {
    fn parameterization(&self) -> Parameterization {
        self.parameterization
    }

    /// `cond` must be `None` (the prompts are fixed); `x_t` is `[n, item…]`.
    fn forward(
        &self,
        x_t: &Tensor,
        t: &Tensor,
        cond: Option<&Tensor>,
    ) -> recompose_diffusion::Result<Tensor> {
        let shape_err = |msg: String| recompose_diffusion::Error::Shape(msg);
        if cond.is_some() {
            return Err(shape_err(format!(
                "{} takes no further condition",
                self.describe()
            )));
        }
        if x_t.dims().get(1..) != Some(self.item.as_slice()) {
            return Err(shape_err(format!(
                "{} takes items of shape {:?}, got a batch of {:?}",
                self.describe(),
                self.item,
                x_t.dims()
            )));
        }
        let (y, _) = self
            .weighted(x_t, t, false)
            .map_err(|e| recompose_diffusion::Error::Denoiser(Box::new(e)))?;
        Ok(y.reshape(x_t.dims())?)
    }
}

impl Component for GuidedPrompts {
    fn dim(&self) -> usize {
        self.dim
    }
    fn schedule(&self) -> &DiscreteSchedule {
        &self.schedule
    }
    fn has_density(&self) -> bool {
        self.network.has_energy()
    }
    fn describe(&self) -> String {
        let parts: Vec<String> = self
            .prompts
            .iter()
            .zip(&self.coefficients)
            .map(|(p, c)| format!("{c}*{p:?}"))
            .collect();
        format!("`{}`[{}]", self.name, parts.join(", "))
    }
    fn device(&self) -> &Device {
        &self.device
    }
    fn evaluate(&self, x: &Tensor, level: usize, density: bool) -> Result<Eval> {
        let n = check_batch(x, self.dim, &self.device, level, &self.schedule)?;
        if density && !self.network.has_energy() {
            return Err(Error::NeedsDensity(format!(
                "{} is a score model: it has no log-density (train it with an energy \
                 parameterization to get one)",
                self.describe()
            )));
        }
        let rows = self.rows_per_point();
        let mut shape = vec![n];
        shape.extend_from_slice(&self.item);
        let t = Tensor::from_vec(vec![level as f32; n], n, &self.device)?;
        let (y, energy) = self.weighted(&x.reshape(shape)?, &t, density)?;
        let m = self.schedule.marginal(level);
        let per = |v: f64| Tensor::from_vec(vec![v as f32; n], n, &self.device);
        let score = self
            .parameterization
            .to_score(&y, x, &per(m.alpha)?, &per(m.sigma)?)?;
        let log_density = if density {
            let e = energy.ok_or_else(|| {
                Error::NeedsDensity(format!("{} returned no energy", self.describe()))
            })?;
            if e.elem_count() != n * rows {
                return Err(Error::Shape(format!(
                    "{}: the network returned energies {:?}; expected [{}]",
                    self.describe(),
                    e.dims(),
                    n * rows
                )));
            }
            let w = Tensor::from_vec(self.weights.clone(), (1, rows), &self.device)?;
            let e = e
                .to_dtype(DType::F64)?
                .reshape((n, rows))?
                .broadcast_mul(&w)?
                .sum(1)?;
            Some(divide(&e.neg()?, m.sigma)?)
        } else {
            None
        };
        Ok(Eval { log_density, score })
    }
}

/// The (parameter bytes, activation bytes per chain) of a group of `prompts` prompts of a
/// text model whose weights take `param_bytes` and whose forward pass takes
/// `activation_bytes` per item, for points of dimension `dim`: one of the `leaves` of
/// [`crate::mcmc::anneal_estimate`]. Each chain is P + 1 rows of the batched call, each with
/// its activations and about four vectors (the repeated point, the output, the score and the
/// weighted sum).
pub fn group_estimate(
    param_bytes: Estimate,
    activation_bytes: Estimate,
    prompts: usize,
    dim: usize,
) -> (Estimate, Estimate) {
    let rows = prompts.saturating_add(1);
    (
        param_bytes,
        (activation_bytes + Estimate::f32s(&[4, dim])) * rows,
    )
}
