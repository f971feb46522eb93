//! Expert denoisers: one text-conditioned model made of several networks, each serving a band
//! of noise levels.
//!
//! Balaji et al., *eDiff-I: Text-to-Image Diffusion Models with an Ensemble of Expert
//! Denoisers* (2022), §4: at high noise a text-conditioned denoiser decides the layout of the
//! image from the prompt; at low noise it mostly ignores the text and refines detail. One
//! network trained on every level shares its capacity between the two tasks; networks trained
//! on bands of levels (`[train] timesteps = { kind = "range", … }`) each specialise, and the
//! sampler calls the one whose band holds the current level.
//!
//! [`LevelExperts`] is such a model: a base network for the levels below the first threshold
//! and one expert per threshold τ for the training timesteps t ≥ τ (up to the next threshold).
//! All networks share the item shape, the parameterization, the form (score or energy), the
//! tokenizer and the noise schedule, so to every caller it is one [`PromptNetwork`]. A call
//! whose points are all at levels of one band runs that band's network alone; points spread
//! over several bands are split by band and put back in order.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::{Device, Tensor};
use recompose_diffusion::Parameterization;
use recompose_diffusion::text::TextTokenizer;

use crate::prompt::{Prediction, PromptModel, PromptNetwork};
use crate::{Error, Result};

/// A [`PromptNetwork`] whose network depends on the noise level: `base` below the first
/// threshold, expert k for the training timesteps in [τ_k, τ_{k+1}). See the [module
/// docs](self).
pub struct LevelExperts {
    base: Arc<dyn PromptNetwork>,
    /// (τ, network), τ strictly increasing and positive.
    experts: Vec<(usize, Arc<dyn PromptNetwork>)>,
}

impl std::fmt::Debug for LevelExperts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let thresholds: Vec<usize> = self.experts.iter().map(|(t, _)| *t).collect();
        f.debug_struct("LevelExperts")
            .field("item_shape", &self.base.item_shape())
            .field("thresholds", &thresholds)
            .finish()
    }
}

impl LevelExperts {
    /// `base` for the training timesteps below every threshold and `experts` as (τ, network):
    /// each serves the timesteps from its τ up to the next larger τ.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] for no expert, a threshold of 0 (the base would serve nothing) or
    /// given twice, networks of different item shapes, parameterizations or forms (score and
    /// energy).
    pub fn new(
        base: Arc<dyn PromptNetwork>,
        mut experts: Vec<(usize, Arc<dyn PromptNetwork>)>,
    ) -> Result<Self> {
        if experts.is_empty() {
            return Err(Error::Config(
                "level experts need at least one expert besides the base".into(),
            ));
        }
        experts.sort_by_key(|(t, _)| *t);
        if experts[0].0 == 0 {
            return Err(Error::Config(
                "an expert's threshold must be a positive timestep (the base serves the levels \
                 below it)"
                    .into(),
            ));
        }
        if let Some(w) = experts.windows(2).find(|w| w[0].0 == w[1].0) {
            return Err(Error::Config(format!(
                "two experts start at timestep {}",
                w[0].0
            )));
        }
        for (t, e) in &experts {
            if e.item_shape() != base.item_shape() {
                return Err(Error::Config(format!(
                    "the expert from timestep {t} makes items of shape {:?}, the base {:?}",
                    e.item_shape(),
                    base.item_shape()
                )));
            }
            if e.parameterization() != base.parameterization() {
                return Err(Error::Config(format!(
                    "the expert from timestep {t} predicts {:?}, the base {:?}",
                    e.parameterization(),
                    base.parameterization()
                )));
            }
            if e.has_energy() != base.has_energy() {
                return Err(Error::Config(format!(
                    "the expert from timestep {t} is {}, the base {}: a model's log-density \
                     would change form between levels",
                    form(e.as_ref()),
                    form(base.as_ref())
                )));
            }
        }
        Ok(Self { base, experts })
    }

    /// The thresholds τ of the experts, increasing.
    pub fn thresholds(&self) -> Vec<usize> {
        self.experts.iter().map(|(t, _)| *t).collect()
    }

    /// Which network serves training timestep `t`: 0 for the base, k + 1 for expert k.
    pub fn band(&self, t: f32) -> usize {
        self.experts
            .iter()
            .take_while(|(tau, _)| t >= *tau as f32)
            .count()
    }

    fn network(&self, band: usize) -> &dyn PromptNetwork {
        match band {
            0 => self.base.as_ref(),
            k => self.experts[k - 1].1.as_ref(),
        }
    }
}

fn form(n: &dyn PromptNetwork) -> &'static str {
    if n.has_energy() {
        "an energy model"
    } else {
        "a score model"
    }
}

impl PromptNetwork for LevelExperts {
    fn item_shape(&self) -> Vec<usize> {
        self.base.item_shape()
    }

    fn parameterization(&self) -> Parameterization {
        self.base.parameterization()
    }

    fn has_energy(&self) -> bool {
        self.base.has_energy()
    }

    fn check_tokenizer(&self, tokenizer: &TextTokenizer) -> Result<()> {
        self.base.check_tokenizer(tokenizer)?;
        self.experts
            .iter()
            .try_for_each(|(_, e)| e.check_tokenizer(tokenizer))
    }

    fn predict(&self, x: &Tensor, t: &Tensor, ids: &Tensor, energy: bool) -> Result<Prediction> {
        let ts = t.to_vec1::<f32>()?;
        let bands: Vec<usize> = ts.iter().map(|&ti| self.band(ti)).collect();
        let Some(&first) = bands.first() else {
            return self.base.predict(x, t, ids, energy);
        };
        if bands.iter().all(|&b| b == first) {
            return self.network(first).predict(x, t, ids, energy);
        }
        // Points of several bands: run each band on its points, then put the rows back.
        let p = ids.dim(0)?;
        let device = x.device();
        let mut outputs = Vec::new();
        let mut energies = Vec::new();
        // order[j] = the point whose rows come j-th in the concatenation.
        let mut order = Vec::with_capacity(bands.len());
        for band in 0..=self.experts.len() {
            let points: Vec<u32> = (0..bands.len())
                .filter(|&i| bands[i] == band)
                .map(|i| i as u32)
                .collect();
            if points.is_empty() {
                continue;
            }
            let index = Tensor::from_vec(points.clone(), points.len(), device)?;
            let out = self.network(band).predict(
                &x.index_select(&index, 0)?,
                &t.index_select(&index, 0)?,
                ids,
                energy,
            )?;
            outputs.push(out.output);
            energies.extend(out.energy);
            order.extend(points);
        }
        // Row r of the result is point i = r / p under prompt k = r % p, found at row
        // pos(i)·p + k of the concatenation.
        let mut position = vec![0u32; order.len()];
        for (j, &i) in order.iter().enumerate() {
            position[i as usize] = j as u32;
        }
        let rows: Vec<u32> = (0..order.len() * p)
            .map(|r| position[r / p] * p as u32 + (r % p) as u32)
            .collect();
        let rows = Tensor::from_vec(rows, order.len() * p, device)?;
        let output = Tensor::cat(&outputs, 0)?.index_select(&rows, 0)?;
        let energy = if energy {
            Some(Tensor::cat(&energies, 0)?.index_select(&rows, 0)?)
        } else {
            None
        };
        Ok(Prediction { energy, output })
    }
}

/// Reads an expert written as `DIR@T`: the run directory of the network and the first
/// training timestep it serves (the form of `recompose compose --expert NAME=DIR@T` after the
/// name). The directory is what comes before the last `@`, so it may hold `@` itself.
///
/// # Errors
///
/// [`Error::Config`] quoting `spec` when it has no `@`, an empty directory, or a timestep that
/// is not a positive integer (the base network serves the levels below every threshold).
pub fn parse_expert(spec: &str) -> Result<(usize, PathBuf)> {
    match spec.rsplit_once('@') {
        Some((dir, t)) if !dir.is_empty() => match t.parse::<usize>() {
            Ok(t) if t > 0 => Ok((t, PathBuf::from(dir))),
            _ => Err(Error::Config(format!(
                "an expert is DIR@T with T a positive timestep, got '{spec}'"
            ))),
        },
        _ => Err(Error::Config(format!(
            "an expert is DIR@T with T a positive timestep, got '{spec}'"
        ))),
    }
}

impl PromptModel {
    /// The text-conditioned model `name` of the run directory `base` (as [`PromptModel::load`])
    /// with expert networks from other run directories, `(τ, dir)`: each serves the training
    /// timesteps from τ up to the next threshold ([`LevelExperts`]).
    ///
    /// # Errors
    ///
    /// As [`PromptModel::load`] for each directory; [`Error::Config`] when an expert's
    /// tokenizer or noise schedule differs from the base's, and as [`LevelExperts::new`].
    pub fn load_with_experts(
        name: &str,
        base: &Path,
        experts: &[(usize, &Path)],
        device: &Device,
    ) -> Result<Self> {
        let base_model = Self::load(name, base, device)?;
        if experts.is_empty() {
            return Ok(base_model);
        }
        let base_vocab = base_model.tokenizer.to_json()?;
        let mut nets = Vec::with_capacity(experts.len());
        for &(tau, dir) in experts {
            let e = Self::load(name, dir, device)?;
            if e.tokenizer.to_json()? != base_vocab {
                return Err(Error::Config(format!(
                    "{name}: the expert {} has another tokenizer than the base {}",
                    dir.display(),
                    base.display()
                )));
            }
            if e.schedule != base_model.schedule {
                return Err(Error::Config(format!(
                    "{name}: the expert {} was trained on another noise schedule than the base {}",
                    dir.display(),
                    base.display()
                )));
            }
            if tau >= base_model.schedule.len() {
                return Err(Error::Config(format!(
                    "{name}: the expert {} starts at timestep {tau}, past the schedule's last \
                     ({})",
                    dir.display(),
                    base_model.schedule.len() - 1
                )));
            }
            nets.push((tau, e.network));
        }
        let network = LevelExperts::new(base_model.network, nets)?;
        Self::new(
            name,
            Arc::new(network),
            base_model.tokenizer,
            base_model.schedule,
            device,
        )
    }
}
