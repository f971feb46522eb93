//! The residual MLP denoiser of the 2-D experiments.
//!
//! Du et al., *Reduce, Reuse, Recycle: Compositional Generation with Energy-Based Diffusion
//! Models and MCMC* (ICML 2023), §4 / appendix: the network behind the 2-D compositions.
//!
//! ```text
//! h = input(x)                                       Linear(d → H)
//! e = time_embed[t]                                  learned, one row per training step
//! for each block b:                                  (num_blocks, default 4)
//!     y = swish(norm_b(h))                           LayerNorm(H)
//!     y = swish(fc1_b(y) + time_proj_b(e))           Linear(H → 2H), Linear(E → 2H)
//!     y = swish(fc2_b(y))                            Linear(2H → 2H)
//!     h = h + fc3_b(y)                               Linear(2H → H), zero-initialized
//! out = output(h)                                    Linear(H → d), zero-initialized
//! ```
//!
//! with H = 128, E = 32 and d = 2 in the paper. Parameter names follow a PyTorch module tree
//! (`input.weight`, `time_embed.weight`, `blocks.0.norm.weight`, `blocks.0.fc1.bias`, …,
//! `output.weight`). The [`LayerNorm`] is differentiable (candle's is not), so every parameter
//! gets a gradient once the zero-initialized layers have moved.

use candle_core::{DType, Module, Tensor};
use candle_nn::{Init, Linear, VarBuilder};
use serde::{Deserialize, Serialize};

use crate::denoiser::Denoiser;
use crate::nn::layers::{LayerNorm, linear, linear_zeroed};
use crate::param::Parameterization;
use crate::{Error, Result};

/// The shape of a [`ResidualMlp`]. The default is the paper's 2-D network.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MlpConfig {
    /// Data dimension d (input and output).
    pub data_dim: usize,
    /// Width H of the residual stream.
    pub hidden: usize,
    /// Width of the inner layers of each block (2H in the paper).
    pub block_hidden: usize,
    /// Number of residual blocks.
    pub num_blocks: usize,
    /// Size E of the learned time embedding.
    pub time_embed_dim: usize,
    /// Number of training timesteps T (rows of the time embedding).
    pub num_timesteps: usize,
}

impl Default for MlpConfig {
    fn default() -> Self {
        Self {
            data_dim: 2,
            hidden: 128,
            block_hidden: 256,
            num_blocks: 4,
            time_embed_dim: 32,
            num_timesteps: 100,
        }
    }
}

impl MlpConfig {
    /// Checks that every size is positive.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] naming the first zero size.
    pub fn validate(&self) -> Result<()> {
        for (name, v) in [
            ("data_dim", self.data_dim),
            ("hidden", self.hidden),
            ("block_hidden", self.block_hidden),
            ("time_embed_dim", self.time_embed_dim),
            ("num_timesteps", self.num_timesteps),
        ] {
            if v == 0 {
                return Err(Error::Config(format!("mlp: {name} must be positive")));
            }
        }
        Ok(())
    }
}

/// One residual block of [`ResidualMlp`].
#[derive(Debug, Clone)]
pub struct MlpBlock {
    /// Pre-activation layer norm over the residual stream.
    pub norm: LayerNorm,
    /// First inner layer, H → 2H.
    pub fc1: Linear,
    /// Projection of the time embedding, E → 2H, added after `fc1`.
    pub time_proj: Linear,
    /// Second inner layer, 2H → 2H.
    pub fc2: Linear,
    /// Output layer back to the stream, 2H → H (zero-initialized).
    pub fc3: Linear,
}

/// The residual MLP denoiser (see the [module documentation](self)).
#[derive(Debug, Clone)]
pub struct ResidualMlp {
    config: MlpConfig,
    prediction: Parameterization,
    input: Linear,
    time_embed: Tensor,
    blocks: Vec<MlpBlock>,
    output: Linear,
}

impl ResidualMlp {
    /// Builds the network, predicting `prediction` (ε in the paper), on the parameters of `vb`
    /// (a [`crate::nn::ParamStore`] for training, loaded tensors for inference).
    ///
    /// # Errors
    ///
    /// [`Error::Config`] for an invalid configuration; [`Error::Candle`] if a parameter exists
    /// with another shape.
    pub fn new(config: &MlpConfig, prediction: Parameterization, vb: VarBuilder) -> Result<Self> {
        Self::build(config, prediction, true, vb)
    }

    /// Like [`ResidualMlp::new`] but with the output layer initialized like the others
    /// (PyTorch's default) instead of at zero: what an energy `E = ½‖g‖²` needs, whose gradient
    /// would otherwise vanish at initialization.
    ///
    /// # Errors
    ///
    /// As [`ResidualMlp::new`].
    pub fn with_random_output(
        config: &MlpConfig,
        prediction: Parameterization,
        vb: VarBuilder,
    ) -> Result<Self> {
        Self::build(config, prediction, false, vb)
    }

    fn build(
        config: &MlpConfig,
        prediction: Parameterization,
        zero_output: bool,
        vb: VarBuilder,
    ) -> Result<Self> {
        config.validate()?;
        let c = config;
        let input = linear(c.data_dim, c.hidden, vb.pp("input"))?;
        // PyTorch's nn.Embedding draws N(0, 1).
        let time_embed = vb.get_with_hints(
            (c.num_timesteps, c.time_embed_dim),
            "time_embed.weight",
            Init::Randn {
                mean: 0.0,
                stdev: 1.0,
            },
        )?;
        let blocks = (0..c.num_blocks)
            .map(|i| {
                let vb = vb.pp(format!("blocks.{i}"));
                Ok(MlpBlock {
                    norm: LayerNorm::new(c.hidden, vb.pp("norm"))?,
                    fc1: linear(c.hidden, c.block_hidden, vb.pp("fc1"))?,
                    time_proj: linear(c.time_embed_dim, c.block_hidden, vb.pp("time_proj"))?,
                    fc2: linear(c.block_hidden, c.block_hidden, vb.pp("fc2"))?,
                    fc3: linear_zeroed(c.block_hidden, c.hidden, vb.pp("fc3"))?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let output = if zero_output {
            linear_zeroed(c.hidden, c.data_dim, vb.pp("output"))?
        } else {
            linear(c.hidden, c.data_dim, vb.pp("output"))?
        };
        Ok(Self {
            config: config.clone(),
            prediction,
            input,
            time_embed,
            blocks,
            output,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &MlpConfig {
        &self.config
    }

    /// The input layer.
    pub fn input_layer(&self) -> &Linear {
        &self.input
    }

    /// The learned time-embedding table `[T, E]`.
    pub fn time_embed(&self) -> &Tensor {
        &self.time_embed
    }

    /// The residual blocks.
    pub fn blocks(&self) -> &[MlpBlock] {
        &self.blocks
    }

    /// The output layer.
    pub fn output_layer(&self) -> &Linear {
        &self.output
    }

    /// The time-embedding rows for per-sample timesteps `t` (`[B]`, float training-step
    /// indices): `[B, E]`.
    ///
    /// # Errors
    ///
    /// [`Error::Shape`] if `t` is not 1-D; [`Error::Config`] if a value is not (within 10⁻³) an
    /// integer in `0..T`.
    pub fn embed_time(&self, t: &Tensor) -> Result<Tensor> {
        let idx = self.time_indices(t)?;
        let idx = Tensor::from_vec(idx, t.dim(0)?, t.device())?;
        Ok(self.time_embed.index_select(&idx, 0)?)
    }

    /// The training-step indices of per-sample times `t` (`[B]`, float step indices).
    ///
    /// # Errors
    ///
    /// As [`ResidualMlp::embed_time`].
    pub(crate) fn time_indices(&self, t: &Tensor) -> Result<Vec<u32>> {
        if t.rank() != 1 {
            return Err(Error::Shape(format!(
                "mlp: times must be 1-D, got shape {:?}",
                t.dims()
            )));
        }
        let steps = self.config.num_timesteps;
        let idx = t
            .to_dtype(DType::F64)?
            .to_vec1::<f64>()?
            .into_iter()
            .map(|v| {
                let r = v.round();
                if (v - r).abs() > 1e-3 || r < 0.0 || r >= steps as f64 {
                    Err(Error::Config(format!(
                        "mlp: time {v} is not a training step in 0..{steps}"
                    )))
                } else {
                    Ok(r as u32)
                }
            })
            .collect::<Result<Vec<u32>>>()?;
        Ok(idx)
    }

    pub(crate) fn check_input(&self, x: &Tensor, t: &Tensor) -> Result<()> {
        let d = self.config.data_dim;
        match x.dims() {
            [b, dd] if *dd == d => {
                if t.dims() != [*b] {
                    return Err(Error::Shape(format!(
                        "mlp: {b} samples but times of shape {:?}",
                        t.dims()
                    )));
                }
                Ok(())
            }
            other => Err(Error::Shape(format!(
                "mlp: expects inputs of shape [batch, {d}], got {other:?}"
            ))),
        }
    }
}

impl Denoiser for ResidualMlp {
    fn parameterization(&self) -> Parameterization {
        self.prediction
    }

    fn forward(&self, x_t: &Tensor, t: &Tensor, _cond: Option<&Tensor>) -> Result<Tensor> {
        self.check_input(x_t, t)?;
        let emb = self.embed_time(t)?.to_dtype(x_t.dtype())?;
        let mut h = self.input.forward(x_t)?;
        for b in &self.blocks {
            let y = b.norm.forward(&h)?.silu()?;
            let y = (b.fc1.forward(&y)? + b.time_proj.forward(&emb)?)?.silu()?;
            let y = b.fc2.forward(&y)?.silu()?;
            h = (h + b.fc3.forward(&y)?)?;
        }
        Ok(self.output.forward(&h)?)
    }
}
