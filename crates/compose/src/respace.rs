//! Sampling on fewer noise levels than the model was trained with.
//!
//! A model trained on T levels (T = 1000 for image models) need not be sampled on all of them:
//! DDIM (Song et al., ICLR 2021, §4.2) and improved DDPM (Nichol & Dhariwal, ICML 2021, §4)
//! run the reverse process on a subsequence k_0 < k_1 < ⋯ < k_{S−1} of the training timesteps,
//! with the respaced schedule ᾱ'_j = ᾱ_{k_j}, β'_j = 1 − ᾱ_{k_j}/ᾱ_{k_{j−1}}
//! ([`DiscreteSchedule::respace`]). Because level j of the respaced schedule has exactly the
//! marginal of training level k_j, the distribution p_{k_j} — and so its score and
//! log-density — is the same; only the steps between levels grow. [`Respaced`] presents a
//! component on that shorter schedule, so every annealed sampler of [`crate::mcmc`] (reverse
//! steps, MCMC step sizes proportional to β', the MCMC fraction) runs unchanged on S levels.
//! Du et al. sample their image models on 100 of the 1000 training levels the same way.

use candle_core::{Device, Tensor};
use recompose_diffusion::DiscreteSchedule;
use recompose_diffusion::Spacing;

use crate::component::{Component, Eval};
use crate::{Error, Result};

/// A component evaluated on a subsequence of its noise levels (see the
/// [module documentation](self)).
pub struct Respaced<C> {
    inner: C,
    schedule: DiscreteSchedule,
    timesteps: Vec<usize>,
}

impl<C: Component> Respaced<C> {
    /// `inner` on `levels` levels spread evenly over its schedule, the noisiest (T − 1) and the
    /// cleanest (0) always among them.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] if `levels` is 0 or more than the schedule's length, or 1 for a
    /// schedule of more than one level (a sampler needs both ends).
    pub fn new(inner: C, levels: usize) -> Result<Self> {
        let t = inner.schedule().len();
        if levels == 0 || levels > t || (levels == 1 && t > 1) {
            return Err(Error::Config(format!(
                "the number of sampling levels must lie in 2..={t} for a schedule of {t} levels, \
                 got {levels}"
            )));
        }
        let timesteps = inner.schedule().timesteps(levels, Spacing::Linspace, 0)?;
        Self::with_timesteps(inner, &timesteps)
    }

    /// `inner` on the given training levels (any order, no repeats).
    ///
    /// # Errors
    ///
    /// [`Error::Config`] if `timesteps` is empty, repeats a level or names one outside the
    /// schedule.
    pub fn with_timesteps(inner: C, timesteps: &[usize]) -> Result<Self> {
        let (schedule, timesteps) = inner.schedule().respace(timesteps)?;
        Ok(Self {
            inner,
            schedule,
            timesteps,
        })
    }

    /// The training level behind each level of the respaced schedule, ascending.
    pub fn timesteps(&self) -> &[usize] {
        &self.timesteps
    }

    /// The wrapped component.
    pub fn inner(&self) -> &C {
        &self.inner
    }
}

impl<C: Component> Component for Respaced<C> {
    fn dim(&self) -> usize {
        self.inner.dim()
    }
    fn schedule(&self) -> &DiscreteSchedule {
        &self.schedule
    }
    fn has_density(&self) -> bool {
        self.inner.has_density()
    }
    fn describe(&self) -> String {
        format!(
            "{} on {} of {} levels",
            self.inner.describe(),
            self.timesteps.len(),
            self.inner.schedule().len()
        )
    }
    fn device(&self) -> &Device {
        self.inner.device()
    }
    fn evaluate(&self, x: &Tensor, level: usize, density: bool) -> Result<Eval> {
        let &k = self.timesteps.get(level).ok_or_else(|| {
            Error::Config(format!(
                "noise level {level} is outside the respaced schedule's {} levels",
                self.timesteps.len()
            ))
        })?;
        self.inner.evaluate(x, k, density)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::component::AnalyticLeaf;
    use crate::mcmc::{AnnealConfig, Kernel, StepSize, anneal};
    use recompose_diffusion::{GaussianMixture, seeded};

    fn leaf(t: usize) -> AnalyticLeaf {
        let mixture = GaussianMixture::new(
            vec![0.5, 0.5],
            vec![vec![-2.0, 0.0], vec![2.0, 1.0]],
            vec![0.09, 0.09],
        )
        .unwrap();
        AnalyticLeaf::new("m", mixture, DiscreteSchedule::cosine(t, 0.008).unwrap())
    }

    #[test]
    fn respaced_levels_are_the_training_levels() -> Result<()> {
        let r = Respaced::new(leaf(1000), 50)?;
        assert_eq!(r.schedule().len(), 50);
        assert_eq!(r.timesteps()[0], 0);
        assert_eq!(*r.timesteps().last().unwrap(), 999);
        let x = Tensor::new(&[[0.3f32, -0.7], [1.5, 2.0]], &Device::Cpu)?;
        for (j, &k) in r.timesteps().iter().enumerate() {
            // Same marginal, same score and log-density.
            let a = (r.schedule().alpha_bar(j) - r.inner().schedule().alpha_bar(k)).abs();
            assert!(a < 1e-12, "level {j}: ᾱ differs by {a}");
            let got = r.evaluate(&x, j, true)?;
            let want = r.inner().evaluate(&x, k, true)?;
            assert_eq!(got.score_vec()?, want.score_vec()?);
            assert_eq!(got.log_density_vec()?, want.log_density_vec()?);
        }
        assert!(r.evaluate(&x, 50, false).is_err());
        for bad in [0, 1, 1001] {
            assert!(matches!(
                Respaced::new(leaf(1000), bad),
                Err(Error::Config(_))
            ));
        }
        assert!(Respaced::with_timesteps(leaf(10), &[3, 3]).is_err());
        Ok(())
    }

    /// Reverse diffusion and HMC on 100 of 1000 levels still sample the analytic mixture: its
    /// component weights and means.
    #[test]
    fn sampling_on_fewer_levels_reaches_the_data() -> Result<()> {
        let r = Respaced::new(leaf(1000), 100)?;
        let mut hmc = AnnealConfig::paper_2d(Kernel::Hmc);
        hmc.step_size = StepSize::Constant(0.05);
        hmc.mcmc_steps = 2;
        for cfg in [AnnealConfig::reverse(), hmc] {
            let n = 4000;
            let out = anneal(&r, &cfg, n, &mut seeded(3))?;
            assert_eq!(out.levels.len(), 100);
            let s = out.samples_vec()?;
            let right: Vec<&[f32]> = s.chunks(2).filter(|p| p[0] > 0.0).collect();
            let frac = right.len() as f64 / n as f64;
            assert!((frac - 0.5).abs() < 0.04, "weight of the right mode {frac}");
            let mean_y = right.iter().map(|p| p[1] as f64).sum::<f64>() / right.len() as f64;
            let mean_x = right.iter().map(|p| p[0] as f64).sum::<f64>() / right.len() as f64;
            assert!(
                (mean_x - 2.0).abs() < 0.05 && (mean_y - 1.0).abs() < 0.05,
                "{mean_x} {mean_y}"
            );
            let var_x = right
                .iter()
                .map(|p| (p[0] as f64 - mean_x).powi(2))
                .sum::<f64>()
                / right.len() as f64;
            assert!((var_x.sqrt() - 0.3).abs() < 0.04, "σ {}", var_x.sqrt());
        }
        Ok(())
    }
}
