//! Coupled inference in diffusion models for semantic decomposition.
//!
//! Yeung, Zakeri, Zou, Imani, *Coupled Inference in Diffusion Models for Semantic
//! Decomposition* (arXiv 2602.09983, 2026): every factor of s = x₁ ⊙ … ⊙ x_F runs its own
//! reverse diffusion under a closed-form codebook prior ([`prior`]), and the chains are coupled
//! by guidance from an energy on their denoised estimates ([`energy`]). The pieces, in the order
//! of the spec (§3):
//!
//! - **schedule**: the VP-SDE with linear β(t) from 0.1 to 20 ([`recompose_diffusion::VpSde`]),
//!   sampled on a linear or log-SNR-uniform time grid from `t_max` down to `t_min`;
//! - **prior**: the uniform mixture over the codewords (or over ±codewords, [`PriorKind`]), with a
//!   codeword width τ (σ_t² → σ_t² + α_t²τ²) and an optional top-k truncated posterior;
//! - **state space**: [`Space::Latent`] chains in ℝ^D, or [`Space::Codebook`] chains over M
//!   coefficients with centres ±k·e_m (no matmul for the prior; the factor estimate is Cᵀv);
//! - **coupling**: the Gaussian or similarity [`Energy`] of the factors' read-outs
//!   x̂_f = sign(Cᵀv_f) (or the L2-normalized Cᵀv_f), with
//!   - [`Guidance::Jacobian`]: diffusion posterior sampling, score_f += −ζ J_fᵀ ∂E/∂x̂_f through
//!     the closed-form denoiser Jacobian, with an optional norm clip;
//!   - [`Guidance::Posterior`]: exact guidance for a mixture prior — the energy of each
//!     component, −ζ E(x̂_f = ±c_m), is added to the component's log-weight, and the guided score
//!     is the mixture score under those weights. To first order in ζ this is the Jacobian
//!     guidance; it needs no linearization because the prior is a finite mixture;
//! - **samplers**: the probability-flow ODE and the reverse SDE, integrated either with the
//!   exponential (DDIM-type) integrator — exact for a frozen denoiser and stable at the low-noise
//!   end — or with plain Euler(–Maruyama); η ∈ \[0, 1\] interpolates between them (η = 0 ODE,
//!   η = 1 reverse SDE). Both are the shared reverse steps of
//!   `recompose_diffusion::sampler::step` (DDIM with η; Euler–Maruyama of length β(t)·Δt);
//! - **iterative sampling (restarts)**: after a pass, or as soon as a trial's estimates stall,
//!   the trial re-noises its current decoded estimate to level ρ (or starts again from fresh
//!   noise) and runs another pass, within the same iteration budget;
//! - **verification**: a trial stops as soon as the product of its decoded codewords
//!   reconstructs s (|cos| ≥ `verify`), which uses only s and the codebooks; a trial that never
//!   verifies answers with the best reconstruction it visited (`keep_best`), the lowest energy
//!   seen, so that strong noise, which caps the attainable cosine, degrades it gracefully.
//!
//! One iteration is one step of all F chains (each factor in turn, using the others' latest
//! read-outs, as the sequential resonator does), so budgets compare with the resonators'.
//!
//! **Special case.** With the codewords prior, codebook space, state scale k = 0, the similarity
//! energy, posterior guidance and no noise, every step sets v_f = softmax(ζλ C u_f / D) and
//! x̂_f = sign(Cᵀ v_f): the attention resonator with β = ζλ ([`attention_equivalent`]); the
//! diffusion adds the annealed prior memory, the noise, sparsity and restarts.

pub mod energy;
pub mod prior;

mod chain;

use serde::{Deserialize, Serialize};

pub use energy::Energy;
pub use prior::{CodebookPrior, Posterior, PriorKind};

use super::resonator::{Activation, Normalization, ResonatorConfig, StopRule, Weights};
use crate::trials::Update;
use crate::{Error, Result};

pub(crate) use chain::{memory_estimate, run};

/// Where each factor's chain lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Space {
    /// ℝ^D: the chain is a hypervector.
    Latent,
    /// ℝ^M: the chain holds coefficients over the codewords.
    Codebook,
}

/// How the coupling energy steers the chains.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Guidance {
    /// Exact guidance of the mixture posterior: the component log-weights get −ζ E(±c_m).
    Posterior,
    /// First-order guidance through the denoiser Jacobian, score += −ζ J_fᵀ ∂E/∂x̂_f, with the
    /// guidance vector's L2 norm clipped at `clip` (per trial) when given.
    Jacobian {
        /// Norm clip of the guidance vector.
        clip: Option<f64>,
    },
}

/// Which reverse process the chains integrate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Sampler {
    /// The probability-flow ODE (deterministic).
    Ode,
    /// The reverse SDE, with noise fraction `eta` of [`CoupledConfig`].
    Sde,
}

impl std::str::FromStr for Space {
    type Err = Error;
    /// `latent` or `codebook`.
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "latent" => Ok(Space::Latent),
            "codebook" => Ok(Space::Codebook),
            other => Err(Error::Config(format!(
                "unknown chain space '{other}' (expected latent or codebook)"
            ))),
        }
    }
}

impl std::str::FromStr for Sampler {
    type Err = Error;
    /// `ode` or `sde`.
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "ode" => Ok(Sampler::Ode),
            "sde" => Ok(Sampler::Sde),
            other => Err(Error::Config(format!(
                "unknown coupled sampler '{other}' (expected ode or sde)"
            ))),
        }
    }
}

/// How each step is integrated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Integrator {
    /// Exponential integrator (DDIM with η, `StepRule::Ddim` of the diffusion crate):
    /// y' = α' ŷ_0 + √(σ'² − c²) ε̂ + c ξ, c = η (σ'/σ) √(1 − α²/α'²).
    Exponential,
    /// Euler(–Maruyama), `StepRule::Euler` of the diffusion crate with the step length β Δt:
    /// y' = y + (½β y + (1+η²)/2 · β ∇log p) Δt + η √(β Δt) ξ.
    Euler,
}

/// The time grid of a pass: the VP-SDE's own grids, equally spaced in t or in log-SNR.
pub use recompose_diffusion::TimeGrid;

/// How a restart re-noises a trial.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RestartMode {
    /// y = α_ρ ŷ + σ_ρ ε from the current decoded estimate ŷ, then a pass from t = ρ.
    Renoise,
    /// Fresh noise at t_max, then a full pass.
    Fresh,
}

/// How a factor's estimate is read out of its posterior for the coupling.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Readout {
    /// sign(Cᵀv): the nearest bipolar vector to the posterior-mean codeword.
    Sign,
    /// Cᵀv scaled to norm √D (the soft Tweedie estimate).
    Soft,
}

/// Settings of coupled-diffusion factorization.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CoupledConfig {
    /// State space of the chains.
    pub space: Space,
    /// The factor prior.
    pub prior: PriorKind,
    /// Codeword width τ (the `temperature`): σ_t² → σ_t² + α_t²τ².
    pub temperature: f64,
    /// Scale k of the codebook-space centres ±k·e_m (ignored in latent space).
    pub scale: f64,
    /// Keep only the top-k components of the posterior (None, or k ≥ M: all).
    pub top_k: Option<usize>,
    /// The coupling energy.
    pub energy: Energy,
    /// How the energy guides the chains.
    pub guidance: Guidance,
    /// Guidance scale ζ.
    pub guidance_scale: f64,
    /// The reverse process.
    pub sampler: Sampler,
    /// Noise fraction of the SDE sampler, in \[0, 1\] (1: the reverse SDE).
    pub eta: f64,
    /// Step integrator.
    pub integrator: Integrator,
    /// Steps T of a pass.
    pub steps: usize,
    /// Time grid of a pass.
    pub grid: TimeGrid,
    /// Start of the first pass, in (t_min, 1\].
    pub t_max: f64,
    /// End of every pass, > 0.
    pub t_min: f64,
    /// Restarts R after the first pass (None: as many as the iteration budget allows).
    pub restarts: Option<usize>,
    /// Re-noise level ρ of [`RestartMode::Renoise`], a time in (t_min, 1\].
    pub renoise: f64,
    /// How restarts re-noise.
    pub restart_mode: RestartMode,
    /// Restart a trial early when its estimates have not changed for this many iterations.
    pub patience: Option<usize>,
    /// Stop a trial when its decoded factors reconstruct s with |cos| at least this.
    pub verify: Option<f64>,
    /// Answer an unverified trial with the best reconstruction it visited (largest |cos| of
    /// ⊙_f c_f\[ĵ_f\] with s) instead of its final estimates, when that cosine is above chance
    /// (4/√D).
    pub keep_best: bool,
    /// Read-out used in the coupling.
    pub readout: Readout,
    /// Sequential (Gauss–Seidel) or synchronous coupling.
    pub update: Update,
}

/// The names of the built-in presets (see [`CoupledConfig::preset`]): `best`; one tuned preset
/// per variant `energy-space-sampler`; and `dps-*` presets restricted to first-order (Jacobian)
/// guidance, the form of diffusion posterior sampling in which the two energies differ.
pub const PRESET_NAMES: [&str; 14] = [
    "best",
    "similarity-codebook-sde",
    "similarity-codebook-ode",
    "similarity-latent-sde",
    "similarity-latent-ode",
    "gaussian-codebook-sde",
    "gaussian-codebook-ode",
    "gaussian-latent-sde",
    "gaussian-latent-ode",
    "dps-similarity-codebook-sde",
    "dps-gaussian-codebook-sde",
    "dps-gaussian-codebook-ode",
    "dps-gaussian-latent-sde",
    "dps-gaussian-latent-ode",
];

impl CoupledConfig {
    /// The untuned baseline of the spec: latent space, codewords prior, similarity energy
    /// through the Jacobian, reverse SDE over one pass, soft read-out. It scores far below the
    /// resonator; it is here to show why the tuned presets are built the way they are.
    pub fn naive() -> Self {
        CoupledConfig {
            space: Space::Latent,
            prior: PriorKind::Codewords,
            temperature: 0.0,
            scale: 1.0,
            top_k: None,
            energy: Energy::Similarity { lambda: 1.0 },
            guidance: Guidance::Jacobian { clip: None },
            guidance_scale: 1.0,
            sampler: Sampler::Sde,
            eta: 1.0,
            integrator: Integrator::Euler,
            steps: 100,
            grid: TimeGrid::Linear,
            t_max: 1.0,
            t_min: 1e-3,
            restarts: Some(0),
            renoise: 0.5,
            restart_mode: RestartMode::Renoise,
            patience: None,
            verify: None,
            keep_best: false,
            readout: Readout::Soft,
            update: Update::Sequential,
        }
    }

    /// A named preset (one of [`PRESET_NAMES`]); `best` is the default of `--method coupled`.
    ///
    /// The settings come from `cargo xtask tune coupled` (random search on the validation
    /// point D = 1000, F = 3, M = 50 and M = 70, tuning seeds separate from the evaluation
    /// seeds); see `presets.rs` for the command and seed of each.
    pub fn preset(name: &str) -> Result<Self> {
        presets::preset(name).ok_or_else(|| {
            Error::Config(format!(
                "unknown coupled preset '{name}' (expected one of {})",
                PRESET_NAMES.join(", ")
            ))
        })
    }

    /// The variant name `energy-space-sampler` of these settings.
    pub fn variant(&self) -> String {
        let space = match self.space {
            Space::Latent => "latent",
            Space::Codebook => "codebook",
        };
        let sampler = match self.sampler {
            Sampler::Ode => "ode",
            Sampler::Sde => "sde",
        };
        format!("{}-{space}-{sampler}", self.energy.name())
    }

    /// The same settings without restarts: one pass, no stall restarts.
    pub fn without_restarts(&self) -> Self {
        CoupledConfig {
            restarts: Some(0),
            patience: None,
            ..self.clone()
        }
    }

    /// Checks every parameter.
    pub fn validate(&self) -> Result<()> {
        let bad = |msg: String| Err(Error::Config(msg));
        let finite_pos = |name: &str, x: f64| -> Result<()> {
            if x.is_finite() && x > 0.0 {
                Ok(())
            } else {
                bad(format!("{name} must be finite and positive, got {x}"))
            }
        };
        self.energy.validate().map_err(Error::Config)?;
        if !(self.temperature.is_finite() && self.temperature >= 0.0) {
            return bad(format!(
                "temperature must be finite and non-negative, got {}",
                self.temperature
            ));
        }
        if !(self.scale.is_finite() && self.scale >= 0.0) {
            return bad(format!(
                "scale must be finite and non-negative, got {}",
                self.scale
            ));
        }
        if !(self.guidance_scale.is_finite() && self.guidance_scale >= 0.0) {
            return bad(format!(
                "guidance scale must be finite and non-negative, got {}",
                self.guidance_scale
            ));
        }
        if let Guidance::Jacobian { clip: Some(c) } = self.guidance {
            finite_pos("guidance clip", c)?;
        }
        if !(0.0..=1.0).contains(&self.eta) {
            return bad(format!("eta must lie in [0, 1], got {}", self.eta));
        }
        if self.steps == 0 {
            return bad("steps must be at least 1".into());
        }
        finite_pos("t_min", self.t_min)?;
        if !(self.t_max > self.t_min && self.t_max <= 1.0) {
            return bad(format!(
                "t_max must lie in (t_min, 1] = ({}, 1], got {}",
                self.t_min, self.t_max
            ));
        }
        if !(self.renoise > self.t_min && self.renoise <= 1.0) {
            return bad(format!(
                "renoise level must lie in (t_min, 1] = ({}, 1], got {}",
                self.t_min, self.renoise
            ));
        }
        if self.top_k == Some(0) {
            return bad("top-k must be at least 1".into());
        }
        if self.patience == Some(0) {
            return bad("patience must be at least 1".into());
        }
        if let Some(v) = self.verify
            && !(v > 0.0 && v <= 1.0)
        {
            return bad(format!("verify threshold must lie in (0, 1], got {v}"));
        }
        if self.space == Space::Latent && self.scale != 1.0 {
            return bad("the scale k applies to the codebook space only".into());
        }
        Ok(())
    }
}

/// Changes to a coupled preset, field by field, as the command line gives them.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CoupledOverrides {
    /// The preset to start from (see [`CoupledOverrides::resolve`] when `None`).
    pub preset: Option<String>,
    /// Coupling energy.
    pub energy: Option<Energy>,
    /// State space of the chains.
    pub space: Option<Space>,
    /// Reverse process.
    pub sampler: Option<Sampler>,
    /// Steps T of a pass.
    pub steps: Option<usize>,
    /// Restarts R after the first pass (0: none, and no patience).
    pub restarts: Option<usize>,
    /// Re-noise level ρ of the restarts; restarts then re-noise the current estimates.
    pub renoise: Option<f64>,
    /// Guidance scale ζ.
    pub guidance: Option<f64>,
    /// Codeword width (temperature) τ.
    pub temperature: Option<f64>,
}

impl CoupledOverrides {
    /// Whether no field is given.
    pub fn is_empty(&self) -> bool {
        *self == CoupledOverrides::default()
    }

    /// The settings these overrides ask for, and the name of the preset they start from.
    ///
    /// The preset is the one named; without a name, `best` when no energy, space or sampler is
    /// given, else the tuned preset of the variant they select (the rest taken from `best`).
    /// Every given field then replaces the preset's; changing the space also resets the
    /// codeword scale to that space's (1 for latent chains, `best`'s for codebook chains).
    ///
    /// # Errors
    ///
    /// [`Error::Config`] for an unknown preset.
    pub fn resolve(&self) -> Result<(CoupledConfig, String)> {
        let best = CoupledConfig::preset("best")?;
        let name = match &self.preset {
            Some(p) => p.clone(),
            None if self.energy.is_none() && self.space.is_none() && self.sampler.is_none() => {
                "best".into()
            }
            None => CoupledConfig {
                energy: self.energy.unwrap_or(best.energy),
                space: self.space.unwrap_or(best.space),
                sampler: self.sampler.unwrap_or(best.sampler),
                ..best.clone()
            }
            .variant(),
        };
        let mut c = CoupledConfig::preset(&name)?;
        if let Some(e) = self.energy {
            c.energy = e;
        }
        if let Some(s) = self.space
            && s != c.space
        {
            c.space = s;
            c.scale = match s {
                Space::Latent => 1.0,
                Space::Codebook => best.scale,
            };
        }
        if let Some(m) = self.sampler {
            c.sampler = m;
        }
        if let Some(t) = self.steps {
            c.steps = t;
        }
        if let Some(r) = self.restarts {
            c.restarts = Some(r);
            if r == 0 {
                c.patience = None;
            }
        }
        if let Some(rho) = self.renoise {
            c.renoise = rho;
            c.restart_mode = RestartMode::Renoise;
        }
        if let Some(g) = self.guidance {
            c.guidance_scale = g;
        }
        if let Some(t) = self.temperature {
            c.temperature = t;
        }
        Ok((c, name))
    }
}

/// The attention resonator that the coupled update reduces to in the special case of the module
/// docs: codewords prior, codebook space, k = 0, similarity energy, posterior guidance with
/// ζλ = β, no noise, no restarts, sign read-out, sequential updates.
pub fn attention_equivalent(beta: f64) -> (CoupledConfig, ResonatorConfig) {
    let coupled = CoupledConfig {
        space: Space::Codebook,
        scale: 0.0,
        guidance: Guidance::Posterior,
        guidance_scale: beta,
        sampler: Sampler::Ode,
        eta: 0.0,
        integrator: Integrator::Exponential,
        steps: 1000,
        readout: Readout::Sign,
        ..CoupledConfig::naive()
    };
    let resonator = ResonatorConfig {
        weights: Weights::OuterProduct,
        update: Update::Sequential,
        activation: Activation::Attention { beta: beta as f32 },
        normalization: Normalization::Sign,
        tolerance: 0.0,
        stop: StopRule::FixedPoint,
    };
    (coupled, resonator)
}

mod presets;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse_to_the_settings_they_name() -> Result<()> {
        assert_eq!("latent".parse::<Space>()?, Space::Latent);
        assert_eq!("codebook".parse::<Space>()?, Space::Codebook);
        assert_eq!("ode".parse::<Sampler>()?, Sampler::Ode);
        assert_eq!("sde".parse::<Sampler>()?, Sampler::Sde);
        for name in ["similarity", "gaussian"] {
            assert_eq!(name.parse::<Energy>()?.name(), name);
        }
        assert!("pixel".parse::<Space>().is_err());
        assert!("heun".parse::<Sampler>().is_err());
        assert!("quadratic".parse::<Energy>().is_err());
        Ok(())
    }

    #[test]
    fn overrides_start_from_the_preset_they_select() -> Result<()> {
        let best = CoupledConfig::preset("best")?;
        let (c, name) = CoupledOverrides::default().resolve()?;
        assert_eq!((c, name.as_str()), (best.clone(), "best"));
        // A variant without a preset name selects that variant's tuned preset.
        let gaussian = CoupledOverrides {
            energy: Some(Energy::Gaussian { sigma_y: 1.0 }),
            ..Default::default()
        };
        let (c, name) = gaussian.resolve()?;
        assert_eq!(name, format!("gaussian-{}-{}", "codebook", "sde"));
        assert_eq!(c.energy, Energy::Gaussian { sigma_y: 1.0 });
        // Field overrides replace the preset's values.
        let o = CoupledOverrides {
            preset: Some("similarity-latent-ode".into()),
            space: Some(Space::Codebook),
            steps: Some(7),
            restarts: Some(0),
            renoise: Some(0.25),
            guidance: Some(2.0),
            temperature: Some(3.0),
            ..Default::default()
        };
        assert!(!o.is_empty());
        let (c, name) = o.resolve()?;
        assert_eq!(name, "similarity-latent-ode");
        assert_eq!((c.space, c.scale), (Space::Codebook, best.scale));
        assert_eq!((c.steps, c.restarts, c.patience), (7, Some(0), None));
        assert_eq!((c.renoise, c.restart_mode), (0.25, RestartMode::Renoise));
        assert_eq!((c.guidance_scale, c.temperature), (2.0, 3.0));
        let unknown = CoupledOverrides {
            preset: Some("fastest".into()),
            ..Default::default()
        };
        assert!(unknown.resolve().is_err());
        Ok(())
    }
}
