//! AdamW with learning-rate warm-up and decay, global gradient-norm clipping, and an EMA of the
//! weights.
//!
//! - AdamW: Loshchilov & Hutter, *Decoupled Weight Decay Regularization* (ICLR 2019), Algorithm
//!   2, with Adam's bias corrections (Kingma & Ba 2015): `m ← β₁m + (1−β₁)g`,
//!   `v ← β₂v + (1−β₂)g²`, `θ ← θ(1 − ηλ) − η m̂/(√v̂ + ε)` with `m̂ = m/(1−β₁ᵗ)`,
//!   `v̂ = v/(1−β₂ᵗ)`. With λ = 0 it is Adam.
//! - Clipping rescales all gradients by `max_norm / (‖g‖ + 10⁻⁶)` when their global L2 norm
//!   exceeds `max_norm` (as PyTorch's `clip_grad_norm_`).
//! - The EMA keeps `θ̄ ← δθ̄ + (1−δ)θ` after every step (Polyak averaging, as in DDPM and
//!   improved-diffusion).
//!
//! candle's own optimizers have neither schedules nor clipping nor EMA, and their state cannot be
//! saved; here every piece of state is a named tensor, so a checkpoint can hold it and a resumed
//! run continues bit for bit.
//!
//! For contiguous `f32` tensors on the CPU the update, the gradient norm and the EMA each run
//! as one parallel pass per variable; elsewhere they are written with tensor ops.

use candle_core::backprop::GradStore;
use candle_core::{Tensor, Var};
use recompose_core::ops::optim::{AdamWCoefficients, adamw_update, blend, sum_of_squares};
use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// How the learning rate decays after warm-up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LrDecay {
    /// Constant after warm-up.
    #[default]
    Constant,
    /// Linear from the peak to the final rate at the last step.
    Linear,
    /// Half a cosine from the peak to the final rate at the last step.
    Cosine,
}

/// The learning rate as a function of the step: linear warm-up from 0 to `peak` over
/// `warmup_steps`, then [`LrDecay`] to `final_lr` at `total_steps`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LrSchedule {
    /// The rate after warm-up.
    pub peak: f64,
    /// Warm-up length in steps (0: start at the peak).
    pub warmup_steps: usize,
    /// The decay after warm-up.
    pub decay: LrDecay,
    /// The rate reached at `total_steps` by a decaying schedule.
    pub final_lr: f64,
    /// The planned number of steps.
    pub total_steps: usize,
}

impl LrSchedule {
    /// The learning rate for the 0-based `step`.
    pub fn lr(&self, step: usize) -> f64 {
        if step < self.warmup_steps {
            return self.peak * (step + 1) as f64 / self.warmup_steps as f64;
        }
        let span = self.total_steps.saturating_sub(self.warmup_steps).max(1) as f64;
        let frac = ((step - self.warmup_steps) as f64 / span).min(1.0);
        match self.decay {
            LrDecay::Constant => self.peak,
            LrDecay::Linear => self.peak + (self.final_lr - self.peak) * frac,
            LrDecay::Cosine => {
                self.final_lr
                    + 0.5
                        * (self.peak - self.final_lr)
                        * (1.0 + (std::f64::consts::PI * frac).cos())
            }
        }
    }
}

/// AdamW hyperparameters.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamWConfig {
    /// β₁.
    pub beta1: f64,
    /// β₂.
    pub beta2: f64,
    /// ε added to √v̂.
    pub eps: f64,
    /// Decoupled weight decay λ (0 = Adam).
    pub weight_decay: f64,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        Self {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
        }
    }
}

/// AdamW over a fixed list of named variables.
#[derive(Debug)]
pub struct AdamW {
    config: AdamWConfig,
    vars: Vec<(String, Var)>,
    m: Vec<Tensor>,
    v: Vec<Tensor>,
    steps_taken: u64,
}

impl AdamW {
    /// An optimizer for `vars` with zero moments.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] if a β is outside \[0, 1) or ε, λ are negative.
    pub fn new(vars: Vec<(String, Var)>, config: AdamWConfig) -> Result<Self> {
        for (name, b) in [("beta1", config.beta1), ("beta2", config.beta2)] {
            if !(0.0..1.0).contains(&b) {
                return Err(Error::Config(format!(
                    "adamw: {name} = {b} is not in [0, 1)"
                )));
            }
        }
        if !(config.eps >= 0.0 && config.weight_decay >= 0.0) {
            return Err(Error::Config(
                "adamw: eps and weight_decay must be non-negative".to_string(),
            ));
        }
        let m = vars
            .iter()
            .map(|(_, v)| v.as_tensor().zeros_like())
            .collect::<candle_core::Result<Vec<_>>>()?;
        let v = m.clone();
        Ok(Self {
            config,
            vars,
            m,
            v,
            steps_taken: 0,
        })
    }

    /// The variables being optimized.
    pub fn vars(&self) -> &[(String, Var)] {
        &self.vars
    }

    /// Number of updates applied so far.
    pub fn steps_taken(&self) -> u64 {
        self.steps_taken
    }

    /// The first and second moments as named tensors (`adam_m.NAME`, `adam_v.NAME`).
    pub fn state(&self) -> Vec<(String, Tensor)> {
        let mut out = Vec::with_capacity(2 * self.vars.len());
        for (i, (name, _)) in self.vars.iter().enumerate() {
            out.push((format!("adam_m.{name}"), self.m[i].clone()));
            out.push((format!("adam_v.{name}"), self.v[i].clone()));
        }
        out
    }

    /// Restores the moments and the step count saved by [`AdamW::state`].
    ///
    /// # Errors
    ///
    /// [`Error::Checkpoint`] naming a missing tensor or one of the wrong shape.
    pub fn load_state(
        &mut self,
        get: &dyn Fn(&str) -> Option<Tensor>,
        steps_taken: u64,
    ) -> Result<()> {
        for (i, (name, var)) in self.vars.iter().enumerate() {
            for (prefix, slot) in [("adam_m", &mut self.m[i]), ("adam_v", &mut self.v[i])] {
                let key = format!("{prefix}.{name}");
                let t = get(&key).ok_or_else(|| {
                    Error::Checkpoint(format!("optimizer tensor `{key}` is missing"))
                })?;
                if t.dims() != var.dims() {
                    return Err(Error::Checkpoint(format!(
                        "optimizer tensor `{key}` has shape {:?}, expected {:?}",
                        t.dims(),
                        var.dims()
                    )));
                }
                *slot = t.to_dtype(var.dtype())?.to_device(var.device())?;
            }
        }
        self.steps_taken = steps_taken;
        Ok(())
    }

    /// The global L2 norm of the gradients of the optimized variables (variables without a
    /// gradient count as zero).
    ///
    /// # Errors
    ///
    /// [`Error::Candle`] from the reductions.
    pub fn grad_norm(&self, grads: &GradStore) -> Result<f64> {
        let mut sq = 0.0f64;
        // Off the host path the partial sums stay on the device, added in f64, and come back in
        // one read: a read per variable would stall a GPU's queue once per variable.
        let mut on_device: Option<Tensor> = None;
        for (_, var) in &self.vars {
            if let Some(g) = grads.get(var.as_tensor()) {
                match sum_of_squares(g) {
                    Some(s) => sq += s,
                    None => {
                        let s = g.sqr()?.sum_all()?.to_dtype(candle_core::DType::F64)?;
                        on_device = Some(match on_device {
                            Some(total) => (total + s)?,
                            None => s,
                        });
                    }
                }
            }
        }
        if let Some(total) = on_device {
            sq += total.to_scalar::<f64>()?;
        }
        Ok(sq.sqrt())
    }

    /// One update at learning rate `lr`, with every gradient multiplied by `grad_scale` (the
    /// clipping factor; 1 for none). Variables without a gradient are left unchanged (their
    /// moments too).
    ///
    /// # Errors
    ///
    /// [`Error::Candle`] from the tensor ops.
    pub fn step(&mut self, grads: &GradStore, lr: f64, grad_scale: f64) -> Result<()> {
        self.steps_taken += 1;
        let c = self.config;
        let t = self.steps_taken as i32;
        let bc1 = 1.0 - c.beta1.powi(t);
        let bc2 = 1.0 - c.beta2.powi(t);
        for (i, (_, var)) in self.vars.iter().enumerate() {
            let Some(g) = grads.get(var.as_tensor()) else {
                continue;
            };
            // candle leaves the gradients of variables attached to the graph that produced
            // them (for an energy model's loss, one built on the forward activations); the
            // moments must not keep that graph alive from step to step.
            let g = g.detach();
            let k = AdamWCoefficients {
                scale: grad_scale as f32,
                beta1: c.beta1 as f32,
                beta2: c.beta2 as f32,
                inv_bc1: (1.0 / bc1) as f32,
                inv_bc2: (1.0 / bc2) as f32,
                eps: c.eps as f32,
                lr: lr as f32,
                decay: (1.0 - lr * c.weight_decay) as f32,
            };
            if let Some((theta, m, v)) =
                adamw_update(var.as_tensor(), &g, &self.m[i], &self.v[i], k)
            {
                let shape = var.as_tensor().shape().clone();
                let dev = var.device().clone();
                var.set(&Tensor::from_vec(theta, shape.clone(), &dev)?)?;
                self.m[i] = Tensor::from_vec(m, shape.clone(), &dev)?;
                self.v[i] = Tensor::from_vec(v, shape, &dev)?;
                continue;
            }
            let g = if grad_scale == 1.0 {
                g
            } else {
                (g * grad_scale)?
            };
            let m = ((&self.m[i] * c.beta1)? + (&g * (1.0 - c.beta1))?)?;
            let v = ((&self.v[i] * c.beta2)? + (g.sqr()? * (1.0 - c.beta2))?)?;
            let denom = ((&v / bc2)?.sqrt()? + c.eps)?;
            let update = ((&m / bc1)? / denom)?;
            let theta = var.as_tensor();
            let decayed = if c.weight_decay > 0.0 {
                (theta * (1.0 - lr * c.weight_decay))?
            } else {
                theta.clone()
            };
            var.set(&(decayed - (update * lr)?)?.detach())?;
            self.m[i] = m.detach();
            self.v[i] = v.detach();
        }
        Ok(())
    }
}

/// The factor by which [`AdamW::step`] should scale gradients of global norm `norm` so that it
/// does not exceed `max_norm` (1 when `max_norm` is `None` or not exceeded).
pub fn clip_scale(norm: f64, max_norm: Option<f64>) -> f64 {
    match max_norm {
        Some(m) if norm > m => m / (norm + 1e-6),
        _ => 1.0,
    }
}

/// An exponential moving average of named variables.
#[derive(Debug)]
pub struct Ema {
    decay: f64,
    shadow: Vec<(String, Tensor)>,
}

impl Ema {
    /// An average starting at the current values of `vars`.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] if `decay` is not in \[0, 1\].
    pub fn new(vars: &[(String, Var)], decay: f64) -> Result<Self> {
        if !(0.0..=1.0).contains(&decay) {
            return Err(Error::Config(format!("ema decay {decay} is not in [0, 1]")));
        }
        let shadow = vars
            .iter()
            .map(|(n, v)| Ok((n.clone(), v.as_tensor().copy()?.detach())))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self { decay, shadow })
    }

    /// `θ̄ ← δθ̄ + (1−δ)θ` for every variable (in the order given to [`Ema::new`]).
    ///
    /// # Errors
    ///
    /// [`Error::Candle`] from the tensor ops.
    pub fn update(&mut self, vars: &[(String, Var)]) -> Result<()> {
        self.update_with(vars, self.decay)
    }

    /// [`Ema::update`] with the decay `d` for this update (a warm-up schedule's value).
    ///
    /// # Errors
    ///
    /// [`Error::Config`] if `d` is not in \[0, 1\]; [`Error::Candle`] from the tensor ops.
    pub fn update_with(&mut self, vars: &[(String, Var)], d: f64) -> Result<()> {
        if !(0.0..=1.0).contains(&d) {
            return Err(Error::Config(format!("ema decay {d} is not in [0, 1]")));
        }
        for ((_, s), (_, v)) in self.shadow.iter_mut().zip(vars) {
            *s = match blend(s, v.as_tensor(), d as f32) {
                Some(data) => Tensor::from_vec(data, s.shape().clone(), s.device())?,
                None => ((&*s * d)? + (v.as_tensor() * (1.0 - d))?)?.detach(),
            };
        }
        Ok(())
    }

    /// The averaged values, by variable name.
    pub fn values(&self) -> &[(String, Tensor)] {
        &self.shadow
    }

    /// Replaces the averaged values with tensors looked up by `get` under the variable names.
    ///
    /// # Errors
    ///
    /// [`Error::Checkpoint`] naming a missing tensor or one of the wrong shape.
    pub fn load(&mut self, get: &dyn Fn(&str) -> Option<Tensor>, prefix: &str) -> Result<()> {
        for (name, s) in self.shadow.iter_mut() {
            let key = format!("{prefix}{name}");
            let t = get(&key)
                .ok_or_else(|| Error::Checkpoint(format!("EMA tensor `{key}` is missing")))?;
            if t.dims() != s.dims() {
                return Err(Error::Checkpoint(format!(
                    "EMA tensor `{key}` has shape {:?}, expected {:?}",
                    t.dims(),
                    s.dims()
                )));
            }
            *s = t.to_dtype(s.dtype())?.to_device(s.device())?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};

    #[test]
    fn schedule_warms_up_and_decays() {
        let s = LrSchedule {
            peak: 1.0,
            warmup_steps: 10,
            decay: LrDecay::Cosine,
            final_lr: 0.1,
            total_steps: 110,
        };
        assert!((s.lr(0) - 0.1).abs() < 1e-12);
        assert!((s.lr(9) - 1.0).abs() < 1e-12);
        assert!((s.lr(10) - 1.0).abs() < 1e-12);
        assert!((s.lr(60) - 0.55).abs() < 1e-12);
        assert!((s.lr(110) - 0.1).abs() < 1e-12);
        let lin = LrSchedule {
            decay: LrDecay::Linear,
            ..s
        };
        assert!((lin.lr(60) - 0.55).abs() < 1e-12);
        let c = LrSchedule {
            decay: LrDecay::Constant,
            ..s
        };
        assert_eq!(c.lr(100), 1.0);
    }

    /// Adam's first step moves every coordinate by exactly lr·sign(g) (up to ε).
    #[test]
    fn first_adam_step_is_lr_times_sign() -> Result<()> {
        let dev = Device::Cpu;
        let w = Var::from_tensor(&Tensor::new(&[1.0f32, -2.0, 3.0], &dev)?)?;
        let loss = (w.as_tensor() * Tensor::new(&[2.0f32, -0.5, 0.0], &dev)?)?.sum_all()?;
        let grads = loss.backward()?;
        let mut opt = AdamW::new(vec![("w".into(), w.clone())], AdamWConfig::default())?;
        opt.step(&grads, 0.1, 1.0)?;
        let got = w.as_tensor().to_vec1::<f32>()?;
        assert!((got[0] - 0.9).abs() < 1e-6 && (got[1] + 1.9).abs() < 1e-6 && got[2] == 3.0);
        Ok(())
    }

    /// The one-pass CPU update (f32) follows the tensor-op form (run here in f64) over several
    /// steps with weight decay and a gradient scale, on a variable large enough to be split
    /// across threads; a variable without a gradient is left alone; the gradient norm is
    /// 2‖w − y‖ for the loss ‖w − y‖², in both forms.
    #[test]
    fn fused_update_follows_the_tensor_form() -> Result<()> {
        let dev = Device::Cpu;
        let mut rng = crate::random::seeded(4);
        let n = 40_000;
        let x0 = crate::random::normal_tensor(&mut rng, &[n], DType::F32, &dev)?;
        let targets: Vec<Tensor> = (0..3)
            .map(|_| {
                Ok(crate::random::normal_tensor(
                    &mut rng,
                    &[n],
                    DType::F32,
                    &dev,
                )?)
            })
            .collect::<Result<_>>()?;
        let config = AdamWConfig {
            weight_decay: 0.1,
            ..AdamWConfig::default()
        };
        let run = |dtype: DType| -> Result<Vec<f64>> {
            let w = Var::from_tensor(&x0.to_dtype(dtype)?)?;
            let idle = Var::from_tensor(&Tensor::ones(3, dtype, &dev)?)?;
            let vars = vec![
                ("w".to_string(), w.clone()),
                ("idle".to_string(), idle.clone()),
            ];
            let mut opt = AdamW::new(vars, config)?;
            for (i, y) in targets.iter().enumerate() {
                let diff = (w.as_tensor() - y.to_dtype(dtype)?)?;
                let grads = diff.sqr()?.sum_all()?.backward()?;
                // ‖∇‖ = 2‖w − y‖.
                let want = 2.0
                    * diff
                        .to_dtype(DType::F64)?
                        .sqr()?
                        .sum_all()?
                        .to_scalar::<f64>()?
                        .sqrt();
                let norm = opt.grad_norm(&grads)?;
                assert!((norm - want).abs() < 1e-9 * want, "{norm} vs {want}");
                opt.step(&grads, 0.01 * (i + 1) as f64, 0.5)?;
            }
            assert_eq!(
                idle.as_tensor().to_dtype(DType::F64)?.to_vec1::<f64>()?,
                [1.0; 3]
            );
            Ok(w.as_tensor().to_dtype(DType::F64)?.to_vec1::<f64>()?)
        };
        let (fused, reference) = (run(DType::F32)?, run(DType::F64)?);
        let worst = fused
            .iter()
            .zip(&reference)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f64::max);
        assert!(worst < 1e-5, "{worst}");
        Ok(())
    }

    #[test]
    fn clipping_and_ema() -> Result<()> {
        assert_eq!(clip_scale(0.5, Some(1.0)), 1.0);
        assert!((clip_scale(4.0, Some(1.0)) - 0.25).abs() < 1e-6);
        assert_eq!(clip_scale(4.0, None), 1.0);
        let dev = Device::Cpu;
        let w = Var::from_tensor(&Tensor::zeros(2, DType::F32, &dev)?)?;
        let vars = vec![("w".to_string(), w.clone())];
        let mut ema = Ema::new(&vars, 0.9)?;
        w.set(&Tensor::ones(2, DType::F32, &dev)?)?;
        ema.update(&vars)?;
        ema.update(&vars)?;
        let v = ema.values()[0].1.to_vec1::<f32>()?;
        assert!((v[0] - 0.19).abs() < 1e-6, "{v:?}");
        // The same in f64 (the tensor-op form) and on a variable split across threads.
        for (dtype, n) in [(DType::F64, 2), (DType::F32, 50_000)] {
            let w = Var::from_tensor(&Tensor::zeros(n, dtype, &dev)?)?;
            let vars = vec![("w".to_string(), w.clone())];
            let mut ema = Ema::new(&vars, 0.9)?;
            w.set(&Tensor::ones(n, dtype, &dev)?)?;
            ema.update(&vars)?;
            ema.update(&vars)?;
            let v = ema.values()[0].1.to_dtype(DType::F64)?.to_vec1::<f64>()?;
            assert!(v.iter().all(|x| (x - 0.19).abs() < 1e-6), "{dtype:?}");
        }
        assert!(Ema::new(&vars, 1.5).is_err());
        Ok(())
    }

    /// With warm-up the average of a weight that jumps from 0 to 1 at the first step keeps
    /// a fraction ∏_{k=1..n} d_k of the initialization after n steps, with
    /// d_k = min(δ, (1 + k)/(10 + k)); without it δⁿ. At δ = 0.999 and 500 steps that is
    /// 1.7·10⁻¹⁸ instead of 0.61.
    #[test]
    fn ema_warmup_forgets_the_initialization() -> Result<()> {
        use crate::train::TrainConfig;
        let dev = Device::Cpu;
        let cfg = TrainConfig {
            ema_decay: 0.999,
            ema_warmup: true,
            ..TrainConfig::default()
        };
        assert!((cfg.ema_decay_at(1) - 2.0 / 11.0).abs() < 1e-12);
        assert!((cfg.ema_decay_at(1000) - 1001.0 / 1010.0).abs() < 1e-12);
        assert_eq!(cfg.ema_decay_at(1_000_000), 0.999);
        let plain = TrainConfig {
            ema_warmup: false,
            ..cfg.clone()
        };
        assert_eq!(plain.ema_decay_at(1), 0.999);
        for (c, want) in [
            (
                &cfg,
                (1..=500).map(|k| cfg.ema_decay_at(k)).product::<f64>(),
            ),
            (&plain, 0.999f64.powi(500)),
        ] {
            let w = Var::from_tensor(&Tensor::zeros(3, DType::F64, &dev)?)?;
            let vars = vec![("w".to_string(), w.clone())];
            let mut ema = Ema::new(&vars, c.ema_decay)?;
            w.set(&Tensor::ones(3, DType::F64, &dev)?)?;
            for k in 1..=500 {
                ema.update_with(&vars, c.ema_decay_at(k))?;
            }
            let left = 1.0 - ema.values()[0].1.to_vec1::<f64>()?[0];
            assert!((left - want).abs() < 1e-9, "{left} vs {want}");
        }
        assert!(((1..=500).map(|k| cfg.ema_decay_at(k)).product::<f64>()) < 1e-3);
        assert!(
            Ema::new(&vars_of(&dev)?, 0.5)?
                .update_with(&vars_of(&dev)?, 1.5)
                .is_err()
        );
        // Off by default, and absent from a written configuration unless on.
        assert!(!TrainConfig::default().ema_warmup);
        let written = |c: &TrainConfig| toml::to_string(c).expect("toml");
        assert!(!written(&TrainConfig::default()).contains("ema_warmup"));
        assert!(written(&cfg).contains("ema_warmup = true"));
        let back: TrainConfig = toml::from_str(&written(&cfg)).expect("toml");
        assert_eq!(back, cfg);
        Ok(())
    }

    fn vars_of(dev: &Device) -> Result<Vec<(String, Var)>> {
        Ok(vec![(
            "w".to_string(),
            Var::from_tensor(&Tensor::zeros(2, DType::F32, dev)?)?,
        )])
    }
}
