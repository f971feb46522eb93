//! Trainable parameters with seeded, reproducible initialization.
//!
//! candle's `VarMap` draws initial weights from the operating-system-seeded CPU generator, so two
//! runs never start from the same network. [`ParamStore`] is a drop-in backend for
//! [`candle_nn::VarBuilder`] that creates every variable from a ChaCha stream keyed by the store's
//! seed **and the variable's name**: the same seed gives the same weights whatever the order in
//! which a model creates its layers, on any device.
//!
//! One model type therefore serves training (`(cfg, store.var_builder(..))`) and inference
//! (weights read back with [`crate::train::read_model_weights`] and [`ParamStore::assign`]).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};

use candle_core::{DType, Device, Shape, Tensor, Var};
use candle_nn::init::{FanInOut, NormalOrUniform};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::{Init, VarBuilder};
use rand::SeedableRng;
use rand_distr::{Distribution, StandardNormal, Uniform};

use crate::random::SeededRng;
use crate::{Error, Result};

/// FNV-1a 64-bit hash of `bytes` (the per-name seeds of [`ParamStore`], and the tensor
/// checksums of [`crate::train::checkpoint`]); a short stable name for any byte string.
pub fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// A named set of trainable variables, created on first use from a seeded stream per name.
///
/// Cloning a store is cheap and shares the variables.
#[derive(Clone, Debug)]
pub struct ParamStore {
    vars: Arc<Mutex<BTreeMap<String, Var>>>,
    seed: u64,
}

impl ParamStore {
    /// An empty store whose variables will be initialized from `seed`.
    pub fn new(seed: u64) -> Self {
        Self {
            vars: Arc::new(Mutex::new(BTreeMap::new())),
            seed,
        }
    }

    /// The seed the variables are drawn from.
    pub fn seed(&self) -> u64 {
        self.seed
    }

    fn lock(&self) -> MutexGuard<'_, BTreeMap<String, Var>> {
        // A poisoned lock only means another thread panicked while holding it; the map itself
        // is always in a consistent state (single inserts).
        self.vars.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A [`VarBuilder`] that creates (or returns) this store's variables.
    pub fn var_builder(&self, dtype: DType, device: &Device) -> VarBuilder<'static> {
        VarBuilder::from_backend(Box::new(self.clone()), dtype, device.clone())
    }

    /// A [`VarBuilder`] over detached copies of the current values (the handles, not the
    /// data), for inference: a network built from it computes without recording an autograd
    /// graph, so every intermediate buffer is freed as soon as it is used instead of being
    /// kept alive by the graph until the output is dropped. Only the names the store holds
    /// can be read from it, and reading one gives its current value (changed values reach a
    /// network built earlier only through a new builder).
    pub fn frozen_var_builder(&self, dtype: DType, device: &Device) -> VarBuilder<'static> {
        let tensors: HashMap<String, Tensor> = self.tensors().into_iter().collect();
        VarBuilder::from_tensors(tensors, dtype, device)
    }

    /// The variables, sorted by name.
    pub fn vars(&self) -> Vec<(String, Var)> {
        self.lock()
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    /// The variable called `name`, if any.
    pub fn get(&self, name: &str) -> Option<Var> {
        self.lock().get(name).cloned()
    }

    /// The number of variables.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether the store holds no variable.
    pub fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }

    /// The total number of scalar parameters.
    pub fn num_params(&self) -> usize {
        self.lock().values().map(|v| v.elem_count()).sum()
    }

    /// The current values, by name (the tensors are detached copies of the handles, not of the
    /// data: save or convert them before the next optimizer step).
    pub fn tensors(&self) -> BTreeMap<String, Tensor> {
        self.lock()
            .iter()
            .map(|(k, v)| (k.clone(), v.as_tensor().detach()))
            .collect()
    }

    /// Overwrites every variable with the tensor of the same name in `values`.
    ///
    /// # Errors
    ///
    /// [`Error::Checkpoint`] naming the tensor when one is missing, has another shape or holds a
    /// non-finite value (NaN or ±∞: weights are never loaded with them), or when `values` holds
    /// a tensor the store does not know (`source` says where the values came from, for the
    /// message). Nothing is assigned unless every tensor passes.
    pub fn assign(&self, values: &HashMap<String, Tensor>, source: &str) -> Result<()> {
        let vars = self.lock();
        for (name, var) in vars.iter() {
            let value = values.get(name).ok_or_else(|| {
                Error::Checkpoint(format!("{source}: tensor `{name}` is missing"))
            })?;
            if value.dims() != var.dims() {
                return Err(Error::Checkpoint(format!(
                    "{source}: tensor `{name}` has shape {:?}, the model expects {:?}",
                    value.dims(),
                    var.dims()
                )));
            }
        }
        if let Some(extra) = values.keys().find(|k| !vars.contains_key(*k)) {
            return Err(Error::Checkpoint(format!(
                "{source}: tensor `{extra}` does not belong to this model"
            )));
        }
        let mut converted = Vec::with_capacity(vars.len());
        for (name, var) in vars.iter() {
            let value = values[name]
                .to_dtype(var.dtype())?
                .to_device(var.device())?;
            if var.dtype().is_float() && !all_finite(&value)? {
                return Err(Error::Checkpoint(format!(
                    "{source}: tensor `{name}` holds non-finite values (NaN or infinity)"
                )));
            }
            converted.push((var, value));
        }
        for (var, value) in converted {
            var.set(&value)?;
        }
        Ok(())
    }
}

/// Whether every element of the float tensor `t` is finite.
fn all_finite(t: &Tensor) -> Result<bool> {
    let host = t.flatten_all()?.to_dtype(DType::F32)?.to_vec1::<f32>()?;
    Ok(host.iter().all(|v| v.is_finite()))
}

/// The initial values of a variable of `shape` under `init`, drawn from `rng` in row-major
/// order, following candle's definitions of the [`Init`] variants.
fn draw(init: Init, shape: &Shape, rng: &mut SeededRng) -> Vec<f32> {
    let n = shape.elem_count();
    let uniform = |lo: f64, up: f64, rng: &mut SeededRng| -> Vec<f32> {
        if up <= lo {
            return vec![lo as f32; n];
        }
        let u = Uniform::new(lo, up).expect("finite bounds with lo < up");
        (0..n).map(|_| u.sample(rng) as f32).collect()
    };
    let normal = |mean: f64, std: f64, rng: &mut SeededRng| -> Vec<f32> {
        (0..n)
            .map(|_| {
                let z: f64 = StandardNormal.sample(rng);
                (mean + std * z) as f32
            })
            .collect()
    };
    match init {
        Init::Const(c) => vec![c as f32; n],
        Init::Uniform { lo, up } => uniform(lo, up, rng),
        Init::Randn { mean, stdev } => normal(mean, stdev, rng),
        Init::Kaiming {
            dist,
            fan,
            non_linearity,
        } => {
            let fan = match fan {
                FanInOut::FanIn | FanInOut::FanOut => fan.for_shape(shape).max(1),
            };
            let std = non_linearity.gain() / (fan as f64).sqrt();
            match dist {
                NormalOrUniform::Uniform => {
                    let bound = 3f64.sqrt() * std;
                    uniform(-bound, bound, rng)
                }
                NormalOrUniform::Normal => normal(0.0, std, rng),
            }
        }
    }
}

impl SimpleBackend for ParamStore {
    fn get(
        &self,
        s: Shape,
        name: &str,
        h: Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        let mut vars = self.lock();
        if let Some(var) = vars.get(name) {
            if var.shape() != &s {
                candle_core::bail!(
                    "parameter `{name}` requested with shape {s:?} but exists with {:?}",
                    var.shape()
                );
            }
            return Ok(var.as_tensor().clone());
        }
        let mut rng = SeededRng::seed_from_u64(self.seed ^ fnv1a(name.as_bytes()));
        let values = draw(h, &s, &mut rng);
        let tensor = Tensor::from_vec(values, s, dev)?.to_dtype(dtype)?;
        let var = Var::from_tensor(&tensor)?;
        let out = var.as_tensor().clone();
        vars.insert(name.to_string(), var);
        Ok(out)
    }

    fn get_unchecked(
        &self,
        name: &str,
        _dtype: DType,
        _dev: &Device,
    ) -> candle_core::Result<Tensor> {
        match self.lock().get(name) {
            Some(var) => Ok(var.as_tensor().clone()),
            None => candle_core::bail!("parameter `{name}` does not exist and has no shape"),
        }
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.lock().contains_key(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_values_in_any_creation_order() -> Result<()> {
        let a = ParamStore::new(7);
        let b = ParamStore::new(7);
        let dev = Device::Cpu;
        let va = a.var_builder(DType::F32, &dev);
        let vb = b.var_builder(DType::F32, &dev);
        let init = Init::Randn {
            mean: 0.0,
            stdev: 1.0,
        };
        let a1 = va.get_with_hints((3, 4), "one", init)?;
        let a2 = va.get_with_hints(5, "two", init)?;
        let b2 = vb.get_with_hints(5, "two", init)?;
        let b1 = vb.get_with_hints((3, 4), "one", init)?;
        assert_eq!(
            a1.flatten_all()?.to_vec1::<f32>()?,
            b1.flatten_all()?.to_vec1::<f32>()?
        );
        assert_eq!(a2.to_vec1::<f32>()?, b2.to_vec1::<f32>()?);
        let c = ParamStore::new(8);
        let c1 = c
            .var_builder(DType::F32, &dev)
            .get_with_hints((3, 4), "one", init)?;
        assert_ne!(
            a1.flatten_all()?.to_vec1::<f32>()?,
            c1.flatten_all()?.to_vec1::<f32>()?
        );
        Ok(())
    }

    #[test]
    fn assign_names_the_offending_tensor() -> Result<()> {
        let store = ParamStore::new(0);
        let vb = store.var_builder(DType::F32, &Device::Cpu);
        vb.get_with_hints((2, 2), "layer.weight", Init::Const(0.0))?;
        let mut values = HashMap::new();
        values.insert(
            "layer.weight".to_string(),
            Tensor::ones(3, DType::F32, &Device::Cpu)?,
        );
        let err = store.assign(&values, "test").unwrap_err().to_string();
        assert!(err.contains("layer.weight") && err.contains("[3]"), "{err}");
        values.insert(
            "layer.weight".to_string(),
            Tensor::ones((2, 2), DType::F32, &Device::Cpu)?,
        );
        values.insert(
            "stray".to_string(),
            Tensor::ones(1, DType::F32, &Device::Cpu)?,
        );
        let err = store.assign(&values, "test").unwrap_err().to_string();
        assert!(err.contains("stray"), "{err}");
        values.remove("stray");
        store.assign(&values, "test")?;
        let w = store.get("layer.weight").expect("created above");
        assert_eq!(w.as_tensor().sum_all()?.to_scalar::<f32>()?, 4.0);
        Ok(())
    }

    /// Weights holding NaN or ±∞ are refused by name and leave every variable as it was (the
    /// fuzz target `decomp-trained` loaded a weight file with a NaN written into it).
    #[test]
    fn assign_refuses_non_finite_weights() -> Result<()> {
        let store = ParamStore::new(0);
        let vb = store.var_builder(DType::F32, &Device::Cpu);
        vb.get_with_hints(2, "a", Init::Const(0.0))?;
        vb.get_with_hints(2, "b", Init::Const(0.0))?;
        for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
            let values: HashMap<String, Tensor> = [
                ("a".to_string(), Tensor::new(&[1f32, 2.0], &Device::Cpu)?),
                ("b".to_string(), Tensor::new(&[3f32, bad], &Device::Cpu)?),
            ]
            .into();
            let err = store.assign(&values, "w.safetensors").unwrap_err();
            assert!(err.is_bad_input());
            let msg = err.to_string();
            assert!(msg.contains("`b`") && msg.contains("non-finite"), "{msg}");
            let a = store.get("a").expect("created above");
            assert_eq!(a.as_tensor().to_vec1::<f32>()?, [0.0, 0.0]);
        }
        // Finite extremes are weights like any other.
        let values: HashMap<String, Tensor> = [
            (
                "a".to_string(),
                Tensor::new(&[f32::MAX, f32::MIN], &Device::Cpu)?,
            ),
            ("b".to_string(), Tensor::new(&[0f32, -0.0], &Device::Cpu)?),
        ]
        .into();
        store.assign(&values, "w.safetensors")?;
        Ok(())
    }
}
