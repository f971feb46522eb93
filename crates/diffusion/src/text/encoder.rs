//! A small transformer text encoder: token ids to one state per token.
//!
//! The transformer of Vaswani et al., *Attention Is All You Need* (NeurIPS 2017), in the
//! pre-norm arrangement of CLIP's text transformer (Radford et al., *Learning Transferable
//! Visual Models From Natural Language Supervision*, ICML 2021), whose token states latent
//! diffusion feeds to its U-Net through cross-attention (Rombach et al., *High-Resolution Image
//! Synthesis with Latent Diffusion Models*, CVPR 2022):
//!
//! ```text
//! x = token_embedding[ids] + position_embedding[0..L]           embeddings.*
//! for each layer i:                                              encoder.layers.{i}.*
//!     x = x + out_proj(attention(layer_norm1(x), mask))         self_attn.{q,k,v,out}_proj
//!     x = x + fc2(GELU(fc1(layer_norm2(x))))                    mlp.fc1 (W → 4W), mlp.fc2
//! states = final_layer_norm(x)                                   [n, L, W]
//!
//! attention, per head h of d = W / heads channels:
//!     softmax(q_h k_hᵀ / √d + b) v_h,   b_j = 0 for a real key j, −∞ for a padded one
//! pooled = Σ_j mask_j states_j / Σ_j mask_j                      [n, W]
//! ```
//!
//! Unlike CLIP's text transformer there is no causal mask (every token sees every real token),
//! the GELU is the exact one (erf, PyTorch's `nn.GELU()`) rather than the sigmoid
//! approximation, and the pooled vector is the mean over the real tokens rather than the end
//! token's state. Padded positions still get states (they attend to the real tokens), but no
//! real position and no pooled vector depends on them.
//!
//! Parameters are named after the `text_model.*` keys of Hugging Face's `CLIPTextModel`, under
//! the caller's prefix: `embeddings.token_embedding.weight` `[V, W]`,
//! `embeddings.position_embedding.weight` `[L, W]`, `encoder.layers.0.layer_norm1.weight`,
//! `encoder.layers.0.self_attn.q_proj.weight` `[W, W]`, `encoder.layers.0.mlp.fc1.bias` `[4W]`,
//! …, `final_layer_norm.bias`. They are created through the caller's [`VarBuilder`] — on a
//! [`ParamStore`](crate::nn::ParamStore), seeded per name, saved with a model's safetensors
//! and trained with [`AdamW`](crate::train::AdamW) like the U-Net's. Initialization follows
//! CLIP: token embeddings N(0, 0.02²), position embeddings N(0, 0.01²), linear layers
//! PyTorch's default, layer norms weight 1 and bias 0. Every operation is a differentiable
//! candle op (the [`LayerNorm`] is the crate's own, since candle's has no backward pass), so
//! the encoder runs on any device and trains end to end.

use candle_core::{D, DType, Device, Module, Tensor};
use candle_nn::{Init, Linear, VarBuilder};
use serde::{Deserialize, Serialize};

use crate::nn::layers::{LayerNorm, linear};
use crate::text::Encoded;
use crate::{Error, Result};

/// The standard deviation of the initial token embeddings (CLIP's).
const TOKEN_EMBEDDING_STD: f64 = 0.02;
/// The standard deviation of the initial position embeddings (CLIP's).
const POSITION_EMBEDDING_STD: f64 = 0.01;

/// The shape of a [`TextEncoder`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TextEncoderConfig {
    /// Rows of the token embedding: every id must be below it
    /// ([`TextTokenizer::vocab_size`](crate::text::TextTokenizer::vocab_size)).
    pub vocab_size: usize,
    /// The longest sequence, rows of the position embedding
    /// ([`TextTokenizer::max_len`](crate::text::TextTokenizer::max_len)).
    pub max_len: usize,
    /// Width W of the token states.
    pub width: usize,
    /// Number of transformer blocks (0 leaves the embeddings and the final layer norm).
    pub layers: usize,
    /// Attention heads; W must be a multiple of it.
    pub heads: usize,
}

impl TextEncoderConfig {
    /// A small encoder for short prompts over a small vocabulary: width 64, 2 layers, 4 heads
    /// of 16 channels (≈ 100k parameters plus 64 per token and position).
    pub fn small(vocab_size: usize, max_len: usize) -> Self {
        Self {
            vocab_size,
            max_len,
            width: 64,
            layers: 2,
            heads: 4,
        }
    }

    /// The channels `d = W / heads` of one attention head.
    pub fn head_dim(&self) -> usize {
        self.width / self.heads.max(1)
    }

    /// The number of scalar parameters.
    pub fn num_params(&self) -> usize {
        let w = self.width;
        let layer = 2 * 2 * w + 4 * (w * w + w) + (w * 4 * w + 4 * w) + (4 * w * w + w);
        (self.vocab_size + self.max_len) * w + self.layers * layer + 2 * w
    }

    /// Checks the sizes.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] if the vocabulary, length, width or head count is zero, or the width
    /// is not a multiple of the head count.
    pub fn validate(&self) -> Result<()> {
        for (name, v) in [
            ("vocab_size", self.vocab_size),
            ("max_len", self.max_len),
            ("width", self.width),
            ("heads", self.heads),
        ] {
            if v == 0 {
                return Err(Error::Config(format!(
                    "text encoder: {name} must be positive"
                )));
            }
        }
        if !self.width.is_multiple_of(self.heads) {
            return Err(Error::Config(format!(
                "text encoder: width {} is not a multiple of heads = {}",
                self.width, self.heads
            )));
        }
        Ok(())
    }
}

/// Multi-head self-attention over the tokens with an additive key mask (`self_attn`).
#[derive(Clone, Debug)]
struct SelfAttention {
    q_proj: Linear,
    k_proj: Linear,
    v_proj: Linear,
    out_proj: Linear,
    heads: usize,
}

impl SelfAttention {
    fn new(width: usize, heads: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            q_proj: linear(width, width, vb.pp("q_proj"))?,
            k_proj: linear(width, width, vb.pp("k_proj"))?,
            v_proj: linear(width, width, vb.pp("v_proj"))?,
            out_proj: linear(width, width, vb.pp("out_proj"))?,
            heads,
        })
    }

    /// `x` `[n, L, W]` and the key bias `[n, 1, 1, L]` (0 or −∞) to `[n, L, W]`.
    fn forward(&self, x: &Tensor, key_bias: &Tensor) -> Result<Tensor> {
        let (n, len, width) = x.dims3()?;
        let d = width / self.heads;
        let split = |t: Tensor| -> Result<Tensor> {
            Ok(t.reshape((n, len, self.heads, d))?
                .transpose(1, 2)?
                .contiguous()?)
        };
        let q = (split(self.q_proj.forward(x)?)? * (1.0 / (d as f64).sqrt()))?;
        let k = split(self.k_proj.forward(x)?)?;
        let v = split(self.v_proj.forward(x)?)?;
        let scores = q.matmul(&k.t()?)?.broadcast_add(key_bias)?;
        let weights = candle_nn::ops::softmax(&scores, D::Minus1)?;
        let attended = weights
            .matmul(&v)?
            .transpose(1, 2)?
            .reshape((n, len, width))?;
        Ok(self.out_proj.forward(&attended)?)
    }
}

/// One pre-norm transformer block (`encoder.layers.{i}`).
#[derive(Clone, Debug)]
struct EncoderLayer {
    layer_norm1: LayerNorm,
    self_attn: SelfAttention,
    layer_norm2: LayerNorm,
    fc1: Linear,
    fc2: Linear,
}

impl EncoderLayer {
    fn new(config: &TextEncoderConfig, vb: VarBuilder) -> Result<Self> {
        let w = config.width;
        Ok(Self {
            layer_norm1: LayerNorm::new(w, vb.pp("layer_norm1"))?,
            self_attn: SelfAttention::new(w, config.heads, vb.pp("self_attn"))?,
            layer_norm2: LayerNorm::new(w, vb.pp("layer_norm2"))?,
            fc1: linear(w, 4 * w, vb.pp("mlp.fc1"))?,
            fc2: linear(4 * w, w, vb.pp("mlp.fc2"))?,
        })
    }

    fn forward(&self, x: &Tensor, key_bias: &Tensor) -> Result<Tensor> {
        let h = (x + self
            .self_attn
            .forward(&self.layer_norm1.forward(x)?, key_bias)?)?;
        let m = self
            .fc1
            .forward(&self.layer_norm2.forward(&h)?)?
            .gelu_erf()?;
        Ok((&h + self.fc2.forward(&m)?)?)
    }
}

/// The mask of a batch checked and read to the host: one value (0 or 1) per token.
struct HostMask {
    values: Vec<f32>,
    n: usize,
    len: usize,
}

impl HostMask {
    /// `mask` `[n, L]` read to the host, checked to hold only 0 and 1 and at least one 1 per
    /// row.
    fn read(mask: &Tensor) -> Result<Self> {
        let (n, len) = mask.dims2().map_err(|_| {
            Error::Shape(format!(
                "the attention mask must be [n, L], got {:?}",
                mask.dims()
            ))
        })?;
        let values = mask.flatten_all()?.to_dtype(DType::F32)?.to_vec1::<f32>()?;
        if let Some(bad) = values.iter().find(|&&v| v != 0.0 && v != 1.0) {
            return Err(Error::Shape(format!(
                "the attention mask holds {bad}: only 0 (padding) and 1 (token) are allowed"
            )));
        }
        if len > 0
            && let Some(row) = values.chunks(len).position(|r| r.iter().all(|&v| v == 0.0))
        {
            return Err(Error::Shape(format!(
                "prompt {row} has no token in its attention mask (all padding)"
            )));
        }
        Ok(Self { values, n, len })
    }

    /// The additive key bias `[n, 1, 1, L]`: 0 for a token, −∞ for padding.
    fn key_bias(&self, dtype: DType, device: &Device) -> Result<Tensor> {
        let bias: Vec<f32> = self
            .values
            .iter()
            .map(|&m| if m == 0.0 { f32::NEG_INFINITY } else { 0.0 })
            .collect();
        Ok(Tensor::from_vec(bias, (self.n, 1, 1, self.len), device)?.to_dtype(dtype)?)
    }

    /// The pooling weights `[n, L, 1]`: mask / (tokens in the row).
    fn pool_weights(&self, dtype: DType, device: &Device) -> Result<Tensor> {
        let mut w = self.values.clone();
        if self.len > 0 {
            for row in w.chunks_mut(self.len) {
                let count: f32 = row.iter().sum();
                row.iter_mut().for_each(|v| *v /= count);
            }
        }
        Ok(Tensor::from_vec(w, (self.n, self.len, 1), device)?.to_dtype(dtype)?)
    }
}

/// The mean of `states` `[n, L, W]` over the tokens of `mask` `[n, L]` (1 for a token, 0 for
/// padding; any dtype): `[n, W]`, differentiable in `states`.
///
/// # Errors
///
/// [`Error::Shape`] if the shapes do not fit, the mask holds a value other than 0 and 1, or a
/// row of the mask has no token.
pub fn mean_pool(states: &Tensor, mask: &Tensor) -> Result<Tensor> {
    let (n, len, _) = states.dims3().map_err(|_| {
        Error::Shape(format!(
            "states to pool must be [n, L, W], got {:?}",
            states.dims()
        ))
    })?;
    let host = HostMask::read(mask)?;
    if (host.n, host.len) != (n, len) {
        return Err(Error::Shape(format!(
            "the mask is {:?} but the states are {:?}",
            mask.dims(),
            states.dims()
        )));
    }
    pool(states, &host)
}

/// [`mean_pool`] with the mask already read.
fn pool(states: &Tensor, mask: &HostMask) -> Result<Tensor> {
    let w = mask.pool_weights(states.dtype(), states.device())?;
    Ok(states.broadcast_mul(&w)?.sum(1)?)
}

/// A transformer text encoder; see the [module documentation](self).
#[derive(Clone, Debug)]
pub struct TextEncoder {
    config: TextEncoderConfig,
    token_embedding: Tensor,
    position_embedding: Tensor,
    layers: Vec<EncoderLayer>,
    final_layer_norm: LayerNorm,
    dtype: DType,
    device: Device,
}

impl TextEncoder {
    /// Builds the encoder on the parameters of `vb`, named as in the
    /// [module documentation](self), in `vb`'s dtype and on its device.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] for an invalid configuration ([`TextEncoderConfig::validate`]);
    /// [`Error::Candle`] if a parameter is missing from a loaded `vb` or has another shape.
    pub fn new(config: &TextEncoderConfig, vb: VarBuilder) -> Result<Self> {
        config.validate()?;
        let w = config.width;
        let token_embedding = vb.get_with_hints(
            (config.vocab_size, w),
            "embeddings.token_embedding.weight",
            Init::Randn {
                mean: 0.0,
                stdev: TOKEN_EMBEDDING_STD,
            },
        )?;
        let position_embedding = vb.get_with_hints(
            (config.max_len, w),
            "embeddings.position_embedding.weight",
            Init::Randn {
                mean: 0.0,
                stdev: POSITION_EMBEDDING_STD,
            },
        )?;
        let layers = (0..config.layers)
            .map(|i| EncoderLayer::new(config, vb.pp(format!("encoder.layers.{i}"))))
            .collect::<Result<Vec<_>>>()?;
        let final_layer_norm = LayerNorm::new(w, vb.pp("final_layer_norm"))?;
        Ok(Self {
            config: config.clone(),
            token_embedding,
            position_embedding,
            layers,
            final_layer_norm,
            dtype: vb.dtype(),
            device: vb.device().clone(),
        })
    }

    /// The configuration the encoder was built with.
    pub fn config(&self) -> &TextEncoderConfig {
        &self.config
    }

    /// The token states `[n, L, W]` of `ids` (`u32` `[n, L]`, `L ≤ max_len`) under the
    /// attention mask `mask` (`[n, L]`, any dtype: 1 for a token, 0 for padding). The inputs
    /// are moved to the encoder's device.
    ///
    /// # Errors
    ///
    /// [`Error::Shape`] if `ids` is not a non-empty `u32` `[n, L]` with `1 ≤ L ≤ max_len`,
    /// holds an id outside the vocabulary, or the mask does not have its shape, holds a value
    /// other than 0 and 1, or gives a prompt no token.
    pub fn forward(&self, ids: &Tensor, mask: &Tensor) -> Result<Tensor> {
        let host = self.check_inputs(ids, mask)?;
        self.run(ids, &host)
    }

    /// The mean of the token states over each prompt's tokens, `[n, W]` (see
    /// [`forward`](Self::forward) for the inputs).
    ///
    /// # Errors
    ///
    /// As [`forward`](Self::forward).
    pub fn pooled(&self, ids: &Tensor, mask: &Tensor) -> Result<Tensor> {
        Ok(self.forward_pooled(ids, mask)?.1)
    }

    /// The token states `[n, L, W]` and their pooled mean `[n, W]` from one pass.
    ///
    /// # Errors
    ///
    /// As [`forward`](Self::forward).
    pub fn forward_pooled(&self, ids: &Tensor, mask: &Tensor) -> Result<(Tensor, Tensor)> {
        let host = self.check_inputs(ids, mask)?;
        let states = self.run(ids, &host)?;
        let pooled = pool(&states, &host)?;
        Ok((states, pooled))
    }

    /// The token states `[n, L, W]` of a tokenizer's output, on the encoder's device.
    ///
    /// # Errors
    ///
    /// As [`forward`](Self::forward): the tokenizer's length or vocabulary may not fit this
    /// encoder.
    pub fn encode(&self, encoded: &Encoded) -> Result<Tensor> {
        self.forward(
            &encoded.ids_tensor(&self.device)?,
            &encoded.mask_tensor(&self.device)?,
        )
    }

    /// The checks of [`forward`](Self::forward); the mask read to the host.
    fn check_inputs(&self, ids: &Tensor, mask: &Tensor) -> Result<HostMask> {
        let (n, len) = ids
            .dims2()
            .map_err(|_| Error::Shape(format!("token ids must be [n, L], got {:?}", ids.dims())))?;
        if ids.dtype() != DType::U32 {
            return Err(Error::Shape(format!(
                "token ids must be u32, got {:?}",
                ids.dtype()
            )));
        }
        if n == 0 || len == 0 {
            return Err(Error::Shape(format!(
                "token ids [{n}, {len}] hold no prompt or no token"
            )));
        }
        if len > self.config.max_len {
            return Err(Error::Shape(format!(
                "sequences of {len} tokens exceed the encoder's max_len = {}",
                self.config.max_len
            )));
        }
        if mask.dims() != ids.dims() {
            return Err(Error::Shape(format!(
                "the attention mask is {:?} but the ids are {:?}",
                mask.dims(),
                ids.dims()
            )));
        }
        let host_ids = ids.flatten_all()?.to_vec1::<u32>()?;
        if let Some(p) = host_ids
            .iter()
            .position(|&id| id as usize >= self.config.vocab_size)
        {
            return Err(Error::Shape(format!(
                "token id {} (prompt {}, position {}) is outside the vocabulary of {} ids",
                host_ids[p],
                p / len,
                p % len,
                self.config.vocab_size
            )));
        }
        HostMask::read(mask)
    }

    /// The forward pass on checked inputs.
    fn run(&self, ids: &Tensor, mask: &HostMask) -> Result<Tensor> {
        let (n, len) = (mask.n, mask.len);
        let ids = ids.to_device(&self.device)?.flatten_all()?;
        let tokens =
            self.token_embedding
                .index_select(&ids, 0)?
                .reshape((n, len, self.config.width))?;
        let positions = self.position_embedding.narrow(0, 0, len)?.unsqueeze(0)?;
        let mut x = tokens.broadcast_add(&positions)?;
        let key_bias = mask.key_bias(self.dtype, &self.device)?;
        for layer in &self.layers {
            x = layer.forward(&x, &key_bias)?;
        }
        Ok(self.final_layer_norm.forward(&x)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::ParamStore;
    use crate::random::{normal_tensor, seeded};

    const DEV: Device = Device::Cpu;

    /// Every variable of `store` moved by N(0, scale²) noise (layer norms away from 1 and 0,
    /// so their parameters matter), from a seeded stream.
    fn perturb(store: &ParamStore, seed: u64, scale: f64) -> Result<()> {
        let mut rng = seeded(seed);
        for (_, var) in store.vars() {
            let noise = normal_tensor(&mut rng, var.dims(), var.dtype(), &DEV)?;
            var.set(&(var.as_tensor() + (noise * scale)?)?)?;
        }
        Ok(())
    }

    fn host_mask(rows: &[&[u32]]) -> Result<HostMask> {
        let len = rows[0].len();
        let flat: Vec<u32> = rows.iter().flat_map(|r| r.iter().copied()).collect();
        HostMask::read(&Tensor::from_vec(flat, (rows.len(), len), &DEV)?)
    }

    fn tiny(vocab_size: usize, max_len: usize) -> TextEncoderConfig {
        TextEncoderConfig {
            vocab_size,
            max_len,
            width: 8,
            layers: 2,
            heads: 2,
        }
    }

    fn ids(rows: &[&[u32]]) -> Result<Tensor> {
        let flat: Vec<u32> = rows.iter().flat_map(|r| r.iter().copied()).collect();
        Ok(Tensor::from_vec(flat, (rows.len(), rows[0].len()), &DEV)?)
    }

    fn max_abs_diff(a: &Tensor, b: &Tensor) -> Result<f64> {
        Ok((a.to_dtype(DType::F64)? - b.to_dtype(DType::F64)?)?
            .abs()?
            .flatten_all()?
            .max(0)?
            .to_scalar::<f64>()?)
    }

    /// `W x + b` on the host, for `W` `[out, in]`.
    fn affine(w: &[Vec<f32>], b: &[f32], x: &[f32]) -> Vec<f32> {
        w.iter()
            .zip(b)
            .map(|(row, bi)| bi + row.iter().zip(x).map(|(a, c)| a * c).sum::<f32>())
            .collect()
    }

    fn weights(l: &Linear) -> Result<(Vec<Vec<f32>>, Vec<f32>)> {
        let b = l.bias().map(|b| b.to_vec1::<f32>()).transpose()?;
        Ok((l.weight().to_vec2::<f32>()?, b.unwrap_or_default()))
    }

    /// With every key but one padded, each query's weights are 1 on that key: the output at
    /// every position is `out_proj(v_proj(x_j))` for the visible token j.
    #[test]
    fn attention_with_one_visible_key_returns_that_keys_value_path() -> Result<()> {
        let (n, len, w) = (2, 5, 8);
        let store = ParamStore::new(3);
        let attn = SelfAttention::new(w, 2, store.var_builder(DType::F32, &DEV))?;
        let x = normal_tensor(&mut seeded(4), &[n, len, w], DType::F32, &DEV)?;
        let visible = [2usize, 4];
        let mask = host_mask(&[&[0, 0, 1, 0, 0], &[0, 0, 0, 0, 1]])?;
        let out = attn
            .forward(&x, &mask.key_bias(DType::F32, &DEV)?)?
            .to_vec3::<f32>()?;
        let xs = x.to_vec3::<f32>()?;
        let (wv, bv) = weights(&attn.v_proj)?;
        let (wo, bo) = weights(&attn.out_proj)?;
        for b in 0..n {
            let want = affine(&wo, &bo, &affine(&wv, &bv, &xs[b][visible[b]]));
            for (i, got) in out[b].iter().enumerate() {
                for c in 0..w {
                    assert!(
                        (got[c] - want[c]).abs() < 1e-5,
                        "batch {b} query {i} channel {c}: {} vs {}",
                        got[c],
                        want[c]
                    );
                }
            }
        }
        Ok(())
    }

    /// Multi-head attention with a padding mask against an index-by-index transcription:
    /// head h owns channels h·d..(h+1)·d of q, k and v, and the softmax runs over the
    /// unpadded keys only.
    #[test]
    #[allow(clippy::needless_range_loop)] // index-by-index transcription on purpose
    fn masked_attention_follows_its_definition() -> Result<()> {
        let (n, len, w, heads) = (2, 4, 6, 3);
        let d = w / heads;
        let store = ParamStore::new(11);
        let attn = SelfAttention::new(w, heads, store.var_builder(DType::F32, &DEV))?;
        let x = normal_tensor(&mut seeded(12), &[n, len, w], DType::F32, &DEV)?;
        let rows: [&[u32]; 2] = [&[1, 1, 0, 1], &[1, 0, 0, 0]];
        let mask = host_mask(&rows)?;
        let got = attn
            .forward(&x, &mask.key_bias(DType::F32, &DEV)?)?
            .to_vec3::<f32>()?;
        let xs = x.to_vec3::<f32>()?;
        let (wq, bq) = weights(&attn.q_proj)?;
        let (wk, bk) = weights(&attn.k_proj)?;
        let (wv, bv) = weights(&attn.v_proj)?;
        let (wo, bo) = weights(&attn.out_proj)?;
        for b in 0..n {
            let q: Vec<Vec<f32>> = xs[b].iter().map(|t| affine(&wq, &bq, t)).collect();
            let k: Vec<Vec<f32>> = xs[b].iter().map(|t| affine(&wk, &bk, t)).collect();
            let v: Vec<Vec<f32>> = xs[b].iter().map(|t| affine(&wv, &bv, t)).collect();
            for i in 0..len {
                let mut attended = vec![0f32; w];
                for h in 0..heads {
                    let ch = h * d..(h + 1) * d;
                    let logits: Vec<Option<f32>> = (0..len)
                        .map(|j| {
                            (rows[b][j] == 1).then(|| {
                                ch.clone().map(|c| q[i][c] * k[j][c]).sum::<f32>()
                                    / (d as f32).sqrt()
                            })
                        })
                        .collect();
                    let m = logits.iter().flatten().copied().fold(f32::MIN, f32::max);
                    let e: Vec<f32> = logits
                        .iter()
                        .map(|l| l.map_or(0.0, |l| (l - m).exp()))
                        .collect();
                    let z: f32 = e.iter().sum();
                    for c in ch.clone() {
                        attended[c] = (0..len).map(|j| e[j] / z * v[j][c]).sum();
                    }
                }
                let want = affine(&wo, &bo, &attended);
                for c in 0..w {
                    assert!(
                        (got[b][i][c] - want[c]).abs() < 1e-5,
                        "batch {b} query {i} channel {c}: {} vs {}",
                        got[b][i][c],
                        want[c]
                    );
                }
            }
        }
        Ok(())
    }

    /// The states of real tokens and the pooled vector do not depend on the ids at padded
    /// positions; they do depend on the ids of real tokens.
    #[test]
    fn padding_ids_do_not_change_the_real_positions() -> Result<()> {
        let store = ParamStore::new(5);
        let enc = TextEncoder::new(&tiny(10, 6), store.var_builder(DType::F32, &DEV))?;
        perturb(&store, 6, 0.2)?;
        let mask = ids(&[&[1, 1, 1, 1, 0, 0], &[1, 1, 1, 0, 0, 0]])?;
        let a = ids(&[&[2, 5, 6, 3, 0, 0], &[2, 7, 3, 0, 0, 0]])?;
        let b = ids(&[&[2, 5, 6, 3, 9, 4], &[2, 7, 3, 8, 1, 6]])?;
        let (sa, pa) = enc.forward_pooled(&a, &mask)?;
        let (sb, pb) = enc.forward_pooled(&b, &mask)?;
        for (row, real) in [(0usize, 4usize), (1, 3)] {
            let ra = sa.get(row)?.narrow(0, 0, real)?;
            let rb = sb.get(row)?.narrow(0, 0, real)?;
            assert!(max_abs_diff(&ra, &rb)? < 1e-6, "row {row}");
            // The padded positions themselves see other ids.
            let pad_a = sa.get(row)?.narrow(0, real, 6 - real)?;
            let pad_b = sb.get(row)?.narrow(0, real, 6 - real)?;
            assert!(max_abs_diff(&pad_a, &pad_b)? > 1e-3, "row {row}");
        }
        assert!(max_abs_diff(&pa, &pb)? < 1e-6);
        // A real token's id matters, everywhere in its prompt.
        let c = ids(&[&[2, 5, 8, 3, 0, 0], &[2, 7, 3, 0, 0, 0]])?;
        let (sc, pc) = enc.forward_pooled(&c, &mask)?;
        let first = |s: &Tensor| s.get(0).and_then(|r| r.get(0));
        assert!(max_abs_diff(&first(&sa)?, &first(&sc)?)? > 1e-3);
        assert!(max_abs_diff(&pa.get(0)?, &pc.get(0)?)? > 1e-3);
        assert!(max_abs_diff(&pa.get(1)?, &pc.get(1)?)? < 1e-6);
        Ok(())
    }

    /// The encoder treats the prompts of a batch independently: permuting the batch permutes
    /// the states and the pooled vectors.
    #[test]
    fn permuting_the_batch_permutes_the_output() -> Result<()> {
        let store = ParamStore::new(7);
        let enc = TextEncoder::new(&tiny(10, 5), store.var_builder(DType::F32, &DEV))?;
        perturb(&store, 8, 0.2)?;
        let rows: [&[u32]; 3] = [&[2, 4, 3, 0, 0], &[2, 5, 6, 7, 3], &[2, 9, 9, 3, 0]];
        let masks: [&[u32]; 3] = [&[1, 1, 1, 0, 0], &[1, 1, 1, 1, 1], &[1, 1, 1, 1, 0]];
        let perm = [2usize, 0, 1];
        let (s, p) = enc.forward_pooled(&ids(&rows)?, &ids(&masks)?)?;
        let prow: Vec<&[u32]> = perm.iter().map(|&i| rows[i]).collect();
        let pmask: Vec<&[u32]> = perm.iter().map(|&i| masks[i]).collect();
        let (sp, pp) = enc.forward_pooled(&ids(&prow)?, &ids(&pmask)?)?;
        for (k, &i) in perm.iter().enumerate() {
            assert!(max_abs_diff(&sp.get(k)?, &s.get(i)?)? < 1e-6);
            assert!(max_abs_diff(&pp.get(k)?, &p.get(i)?)? < 1e-6);
        }
        Ok(())
    }

    /// The pooled vector is the mean of the states over the real tokens.
    #[test]
    fn pooled_is_the_mean_over_real_tokens() -> Result<()> {
        let store = ParamStore::new(9);
        let enc = TextEncoder::new(&tiny(6, 4), store.var_builder(DType::F32, &DEV))?;
        let mask = ids(&[&[1, 1, 0, 0], &[1, 1, 1, 1]])?;
        let (states, pooled) = enc.forward_pooled(&ids(&[&[1, 2, 0, 0], &[5, 4, 3, 2]])?, &mask)?;
        let s = states.to_vec3::<f32>()?;
        let p = pooled.to_vec2::<f32>()?;
        for (b, real) in [(0usize, 2usize), (1, 4)] {
            for c in 0..8 {
                let mean = (0..real).map(|j| s[b][j][c]).sum::<f32>() / real as f32;
                assert!((p[b][c] - mean).abs() < 1e-6);
            }
        }
        assert!(max_abs_diff(&mean_pool(&states, &mask)?, &pooled)? == 0.0);
        Ok(())
    }

    /// Autograd against central differences, in f64, for three entries of every variable:
    /// loss = Σ states ⊙ R + Σ pooled ⊙ R', h = 10⁻⁵, |analytic − numeric| ≤ 10⁻⁶ + 10⁻⁵·|g|.
    #[test]
    fn gradients_match_central_differences() -> Result<()> {
        let cfg = tiny(7, 5);
        let store = ParamStore::new(21);
        let enc = TextEncoder::new(&cfg, store.var_builder(DType::F64, &DEV))?;
        perturb(&store, 22, 0.3)?;
        let tokens = ids(&[&[2, 4, 6, 3, 0], &[2, 5, 3, 0, 0]])?;
        let mask = ids(&[&[1, 1, 1, 1, 0], &[1, 1, 1, 0, 0]])?;
        let mut rng = seeded(23);
        let r = normal_tensor(&mut rng, &[2, 5, cfg.width], DType::F64, &DEV)?;
        let r_pool = normal_tensor(&mut rng, &[2, cfg.width], DType::F64, &DEV)?;
        let loss = || -> Result<Tensor> {
            let (s, p) = enc.forward_pooled(&tokens, &mask)?;
            Ok(((s * &r)?.sum_all()? + (p * &r_pool)?.sum_all()?)?)
        };
        let grads = loss()?.backward()?;
        let h = 1e-5;
        let mut checked = 0;
        for (name, var) in store.vars() {
            let g = grads
                .get(var.as_tensor())
                .ok_or_else(|| Error::Training(format!("{name} has no gradient")))?
                .flatten_all()?
                .to_vec1::<f64>()?;
            let len = var.elem_count();
            // For the token embedding, entries of rows that the prompts use.
            let picks = if name.ends_with("token_embedding.weight") {
                vec![
                    4 * cfg.width + 1,
                    6 * cfg.width,
                    3 * cfg.width + cfg.width - 1,
                ]
            } else {
                vec![0, len / 2, len - 1]
            };
            let original = var.as_tensor().flatten_all()?.to_vec1::<f64>()?;
            for i in picks {
                let at = |delta: f64| -> Result<f64> {
                    let mut v = original.clone();
                    v[i] += delta;
                    var.set(&Tensor::from_vec(v, var.dims(), &DEV)?)?;
                    Ok(loss()?.to_scalar::<f64>()?)
                };
                let numeric = (at(h)? - at(-h)?) / (2.0 * h);
                var.set(&Tensor::from_vec(original.clone(), var.dims(), &DEV)?)?;
                let analytic = g[i];
                assert!(
                    (analytic - numeric).abs() <= 1e-6 + 1e-5 * analytic.abs(),
                    "{name}[{i}]: autograd {analytic}, finite differences {numeric}"
                );
                checked += 1;
            }
        }
        assert_eq!(checked, 3 * (2 + 16 * cfg.layers + 2));
        Ok(())
    }

    /// Every variable gets a nonzero gradient (candle's own layer norm would silently give
    /// none); the names follow `CLIPTextModel` and the count matches the formula.
    #[test]
    fn every_variable_is_trained_and_named_like_clip() -> Result<()> {
        let cfg = tiny(9, 6);
        let store = ParamStore::new(31);
        let enc = TextEncoder::new(&cfg, store.var_builder(DType::F32, &DEV))?;
        perturb(&store, 32, 0.2)?;
        assert_eq!(store.num_params(), cfg.num_params());
        assert_eq!(store.len(), 2 + 16 * cfg.layers + 2);
        for name in [
            "embeddings.token_embedding.weight",
            "embeddings.position_embedding.weight",
            "encoder.layers.1.self_attn.out_proj.bias",
            "encoder.layers.0.mlp.fc1.weight",
            "encoder.layers.1.layer_norm2.weight",
            "final_layer_norm.bias",
        ] {
            assert!(store.get(name).is_some(), "{name} missing");
        }
        let fc1 = store
            .get("encoder.layers.0.mlp.fc1.weight")
            .map(|v| v.dims().to_vec());
        assert_eq!(fc1, Some(vec![4 * cfg.width, cfg.width]));
        let tokens = ids(&[&[2, 4, 6, 3, 0, 0], &[2, 5, 7, 8, 3, 1]])?;
        let mask = ids(&[&[1, 1, 1, 1, 0, 0], &[1; 6]])?;
        let target = normal_tensor(&mut seeded(33), &[2, 6, cfg.width], DType::F32, &DEV)?;
        let loss = (enc.forward(&tokens, &mask)? - target)?.sqr()?.sum_all()?;
        let grads = loss.backward()?;
        for (name, var) in store.vars() {
            let g = grads
                .get(var.as_tensor())
                .ok_or_else(|| Error::Training(format!("{name} has no gradient")))?;
            let norm = g.sqr()?.sum_all()?.to_scalar::<f32>()?;
            assert!(norm > 0.0, "{name} has a zero gradient");
        }
        Ok(())
    }

    /// The same seed gives the same encoder; another seed another one.
    #[test]
    fn initialization_is_seeded() -> Result<()> {
        let cfg = tiny(6, 4);
        let tokens = ids(&[&[2, 4, 3, 0]])?;
        let mask = ids(&[&[1, 1, 1, 0]])?;
        let out = |seed: u64| -> Result<Tensor> {
            let store = ParamStore::new(seed);
            TextEncoder::new(&cfg, store.var_builder(DType::F32, &DEV))?.forward(&tokens, &mask)
        };
        assert_eq!(max_abs_diff(&out(1)?, &out(1)?)?, 0.0);
        assert!(max_abs_diff(&out(1)?, &out(2)?)? > 1e-3);
        Ok(())
    }

    /// Wrong shapes, dtypes, ids and masks, and invalid configurations, are errors.
    #[test]
    fn bad_inputs_are_errors() -> Result<()> {
        let cfg = tiny(6, 4);
        let store = ParamStore::new(1);
        let enc = TextEncoder::new(&cfg, store.var_builder(DType::F32, &DEV))?;
        let good_ids = ids(&[&[2, 4, 3, 0]])?;
        let good_mask = ids(&[&[1, 1, 1, 0]])?;
        enc.forward(&good_ids, &good_mask)?;
        let f32_mask = good_mask.to_dtype(DType::F32)?;
        assert_eq!(enc.forward(&good_ids, &f32_mask)?.dims(), [1, 4, 8]);
        let cases: Vec<(&str, Tensor, Tensor)> = vec![
            (
                "rank 1 ids",
                good_ids.flatten_all()?,
                good_mask.flatten_all()?,
            ),
            ("f32 ids", good_ids.to_dtype(DType::F32)?, good_mask.clone()),
            ("too long", ids(&[&[2, 4, 4, 4, 3]])?, ids(&[&[1; 5]])?),
            ("id out of range", ids(&[&[2, 6, 3, 0]])?, good_mask.clone()),
            ("mask shape", good_ids.clone(), ids(&[&[1, 1, 1]])?),
            ("mask value", good_ids.clone(), ids(&[&[1, 2, 1, 0]])?),
            ("all padding", good_ids.clone(), ids(&[&[0, 0, 0, 0]])?),
            (
                "empty batch",
                Tensor::zeros((0, 4), DType::U32, &DEV)?,
                Tensor::zeros((0, 4), DType::U32, &DEV)?,
            ),
        ];
        for (what, i, m) in cases {
            match enc.forward(&i, &m) {
                Err(e @ Error::Shape(_)) => assert!(e.is_bad_input()),
                other => panic!("{what}: expected a shape error, got {other:?}"),
            }
        }
        let states = Tensor::zeros((1, 4, 8), DType::F32, &DEV)?;
        assert!(mean_pool(&states, &ids(&[&[1, 1, 1]])?).is_err());
        assert!(mean_pool(&states.flatten_all()?, &good_mask).is_err());
        for bad in [
            TextEncoderConfig {
                heads: 3,
                ..cfg.clone()
            },
            TextEncoderConfig {
                width: 0,
                ..cfg.clone()
            },
            TextEncoderConfig {
                vocab_size: 0,
                ..cfg.clone()
            },
            TextEncoderConfig {
                max_len: 0,
                ..cfg.clone()
            },
            TextEncoderConfig {
                heads: 0,
                ..cfg.clone()
            },
        ] {
            let vb = ParamStore::new(0).var_builder(DType::F32, &DEV);
            assert!(
                matches!(TextEncoder::new(&bad, vb), Err(Error::Config(_))),
                "{bad:?}"
            );
        }
        Ok(())
    }
}
