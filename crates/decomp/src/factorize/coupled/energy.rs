//! The coupling energies between the factors' denoised estimates and their gradients.
//!
//! With x̂_1 … x̂_F the factors' current estimates and u_f = s ⊙ ∏_{g≠f} x̂_g the unbinding signal
//! of factor f (spec §3, "coupling energies"), both energies are normalized per dimension:
//!
//! - Gaussian: E = ‖s − ⊙_g x̂_g‖² / (2σ_y² D), so
//!   −∂E/∂x̂_f = (s − ⊙_g x̂_g) ⊙ ∏_{g≠f} x̂_g / (σ_y² D);
//! - similarity: E = −λ ⟨s, ⊙_g x̂_g⟩ / D, so −∂E/∂x̂_f = λ u_f / D, the resonator's unbinding
//!   signal.
//!
//! Evaluated at a codeword, x̂_f = ±c_m, with the other estimates fixed, both are affine in
//! ⟨c_m, u_f⟩ — the codewords are bipolar, so ‖c_m ⊙ ∏_{g≠f} x̂_g‖ is the same for every m —
//! and under exact posterior guidance they differ only by their gain (λ versus 1/σ_y²);
//! through the denoiser Jacobian (the first-order guidance of diffusion posterior sampling) the
//! Gaussian energy also carries the self-term
//! −x̂_f ⊙ (∏_{g≠f} x̂_g)², which pushes against the factor's own current estimate.

use serde::{Deserialize, Serialize};

/// A coupling energy.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Energy {
    /// E = −λ⟨s, ⊙_g x̂_g⟩ / D.
    Similarity {
        /// Strength λ.
        lambda: f64,
    },
    /// E = ‖s − ⊙_g x̂_g‖² / (2σ_y² D).
    Gaussian {
        /// Observation noise σ_y.
        sigma_y: f64,
    },
}

impl std::str::FromStr for Energy {
    type Err = crate::Error;
    /// `similarity` (λ = 1) or `gaussian` (σ_y = 1), the command line's names.
    fn from_str(s: &str) -> crate::Result<Self> {
        match s {
            "similarity" => Ok(Energy::Similarity { lambda: 1.0 }),
            "gaussian" => Ok(Energy::Gaussian { sigma_y: 1.0 }),
            other => Err(crate::Error::Config(format!(
                "unknown coupling energy '{other}' (expected similarity or gaussian)"
            ))),
        }
    }
}

impl Energy {
    /// The energy's name on the command line: `similarity` or `gaussian`.
    pub fn name(&self) -> &'static str {
        match self {
            Energy::Similarity { .. } => "similarity",
            Energy::Gaussian { .. } => "gaussian",
        }
    }

    /// The gain of the codeword log-likelihoods under exact posterior guidance: λ for the
    /// similarity energy, 1/σ_y² for the Gaussian one (see the module docs).
    pub fn gain(&self) -> f64 {
        match *self {
            Energy::Similarity { lambda } => lambda,
            Energy::Gaussian { sigma_y } => 1.0 / (sigma_y * sigma_y),
        }
    }

    /// Checks the parameters: λ finite and positive, σ_y finite and positive.
    pub fn validate(&self) -> Result<(), String> {
        let (name, x) = match *self {
            Energy::Similarity { lambda } => ("lambda", lambda),
            Energy::Gaussian { sigma_y } => ("sigma_y", sigma_y),
        };
        if x.is_finite() && x > 0.0 {
            Ok(())
        } else {
            Err(format!("{name} must be finite and positive, got {x}"))
        }
    }

    /// The energy of one trial: `s` and each estimate in `est` are `[D]`.
    pub fn value(&self, s: &[f32], est: &[&[f32]]) -> f64 {
        let d = s.len();
        let mut acc = 0f64;
        for i in 0..d {
            let p: f64 = est.iter().map(|x| f64::from(x[i])).product();
            let si = f64::from(s[i]);
            acc += match self {
                Energy::Similarity { .. } => si * p,
                Energy::Gaussian { .. } => (si - p) * (si - p),
            };
        }
        match *self {
            Energy::Similarity { lambda } => -lambda * acc / d as f64,
            Energy::Gaussian { sigma_y } => acc / (2.0 * sigma_y * sigma_y * d as f64),
        }
    }

    /// The negative gradient −∂E/∂x̂_f for a batch of trials: `s` and every `est[g]` are
    /// `[rows, d]` (row-major); returns `[rows, d]`.
    pub fn neg_grad(&self, s: &[f32], est: &[&[f32]], f: usize, d: usize) -> Vec<f32> {
        let scale = self.grad_scale(d) as f32;
        let mut out = self.signal(s, est, f);
        out.iter_mut().for_each(|x| *x *= scale);
        out
    }

    /// The unscaled direction of −∂E/∂x̂_f: s ⊙ p for the similarity energy and
    /// (s − x̂_f ⊙ p) ⊙ p for the Gaussian one, with p = ∏_{g≠f} x̂_g.
    pub(crate) fn signal(&self, s: &[f32], est: &[&[f32]], f: usize) -> Vec<f32> {
        let mut out = vec![0f32; s.len()];
        for (i, o) in out.iter_mut().enumerate() {
            let others: f32 = est
                .iter()
                .enumerate()
                .filter(|&(g, _)| g != f)
                .map(|(_, x)| x[i])
                .product();
            *o = match self {
                Energy::Similarity { .. } => s[i] * others,
                Energy::Gaussian { .. } => (s[i] - est[f][i] * others) * others,
            };
        }
        out
    }

    /// The factor that turns the unscaled direction of −∂E/∂x̂_f into the gradient in dimension
    /// D: λ/D or 1/(σ_y² D).
    pub fn grad_scale(&self, d: usize) -> f64 {
        self.gain() / d as f64
    }
}
