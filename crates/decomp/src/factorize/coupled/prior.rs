//! The closed-form codebook prior of one factor and its Tweedie denoiser.
//!
//! Coupled inference (Yeung, Zakeri, Zou, Imani 2026, §3 of our spec) gives every factor the
//! prior "uniform mixture of the codewords". Under the variance-preserving forward process
//! y_t = α_t y_0 + σ_t ε its marginal is a Gaussian mixture, so posterior, score and denoiser are
//! closed forms — no network:
//!
//! - component centres μ_j: the codewords c_m (*codewords* prior) or ±c_m (*signed* prior, our
//!   default for bipolar MAP: s is unchanged when an even number of factors flip sign, so a
//!   factor is identifiable only up to sign and the posterior must put mass on both);
//! - each centre may be widened into a Gaussian of standard deviation τ (the codeword width,
//!   `temperature` in the CLI); the marginal component variance is s_t² = σ_t² + α_t²τ²;
//! - posterior weights w_j ∝ exp(α_t ⟨μ_j, y⟩ / s_t²) (the ‖μ_j‖² terms cancel because every
//!   centre has the same norm) — an attention read-out over the codebook whose inverse
//!   temperature α_t / s_t² rises as t → 0;
//! - score ∇ log p_t(y) = (α_t m(y) − y) / s_t², with m(y) = Σ_j w_j μ_j the posterior mean
//!   centre;
//! - Tweedie denoiser ŷ_0 = (y + σ_t² ∇ log p_t(y)) / α_t = (α_t τ² y + σ_t² m(y)) / s_t²;
//! - Jacobian of the mean centre: ∂m/∂y = (α_t / s_t²) Bᵀ (diag q − v vᵀ) B, where B holds the
//!   codewords as rows, v = E\[±e_m\] and q = E\[e_m e_mᵀ\] diagonal under the posterior (for
//!   the codewords prior q = v = w). It is symmetric, so Jᵀg = Jg.
//!
//! The same formulas serve both state spaces of the spec: in the *latent* space the chain lives
//! in ℝ^D and B = C; in the *codebook* space it lives in ℝ^M over coefficients and B = k·I (the
//! centres are scaled one-hot vectors), so no matmul is needed to form the logits.
//!
//! A posterior restricted to the `top_k` components of largest |logit| (the rest get weight
//! zero) is offered too: the sparse read-out that the in-memory factorizer of Langenegger et al.
//! (Nature Nanotechnology 18, 2023) found decisive, here as a truncated mixture posterior.

use serde::{Deserialize, Serialize};

use recompose_core::gemm::gemm_host;

/// Which mixture the factor prior is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PriorKind {
    /// Uniform mixture over ±c_m (2M components): the sign-symmetric prior.
    Signed,
    /// Uniform mixture over the codewords c_m (M components), as the paper states it.
    Codewords,
}

/// Posterior statistics of a batch of rows: v = E\[z\] and the diagonal q = E\[z ∘ z\] of the
/// component indicator z (±e_m or e_m), each `[rows, M]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Posterior {
    /// Posterior mean of the (signed) one-hot indicator, `[rows, M]`.
    pub v: Vec<f32>,
    /// Posterior probability of each codeword (either sign), `[rows, M]`.
    pub q: Vec<f32>,
}

/// Posterior weights from logits `[rows, M]` (row-major): ℓ_m is the log-weight of +c_m (and
/// −ℓ_m that of −c_m under the signed prior). Components outside the `top_k` largest |ℓ| (or
/// largest ℓ for the codewords prior) get zero weight when `top_k` is given and smaller than M.
pub fn posterior(logits: &[f32], m: usize, kind: PriorKind, top_k: Option<usize>) -> Posterior {
    let rows = logits.len() / m.max(1);
    let mut v = vec![0f32; logits.len()];
    let mut q = vec![0f32; logits.len()];
    let mut keep = vec![true; m];
    let mut order: Vec<usize> = (0..m).collect();
    for r in 0..rows {
        let l = &logits[r * m..(r + 1) * m];
        let key = |i: usize| match kind {
            PriorKind::Signed => l[i].abs(),
            PriorKind::Codewords => l[i],
        };
        keep.iter_mut().for_each(|k| *k = true);
        if let Some(k) = top_k.filter(|&k| k > 0 && k < m) {
            // Largest keys first, ties by index, so the kept set is well defined.
            order.select_nth_unstable_by(k - 1, |&a, &b| key(b).total_cmp(&key(a)).then(a.cmp(&b)));
            for &i in &order[k..] {
                keep[i] = false;
            }
        }
        let top = (0..m)
            .filter(|&i| keep[i])
            .map(key)
            .fold(f32::NEG_INFINITY, f32::max);
        let (vr, qr) = (&mut v[r * m..(r + 1) * m], &mut q[r * m..(r + 1) * m]);
        let mut z = 0f64;
        for i in 0..m {
            if !keep[i] {
                continue;
            }
            match kind {
                PriorKind::Signed => {
                    let ep = (l[i] - top).exp();
                    let en = (-l[i] - top).exp();
                    vr[i] = ep - en;
                    qr[i] = ep + en;
                    z += f64::from(ep + en);
                }
                PriorKind::Codewords => {
                    let e = (l[i] - top).exp();
                    vr[i] = e;
                    qr[i] = e;
                    z += f64::from(e);
                }
            }
        }
        let inv = (1.0 / z) as f32;
        vr.iter_mut().for_each(|x| *x *= inv);
        qr.iter_mut().for_each(|x| *x *= inv);
    }
    Posterior { v, q }
}

/// The transpose `[cols, rows]` of a row-major `[rows, cols]` matrix.
pub(crate) fn transpose(x: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut t = vec![0f32; rows * cols];
    for i in 0..rows {
        for j in 0..cols {
            t[j * rows + i] = x[i * cols + j];
        }
    }
    t
}

/// The closed-form prior of one factor in one state space: its component basis, the kind of
/// mixture, the codeword width τ and the optional top-k truncation.
#[derive(Debug, Clone)]
pub struct CodebookPrior {
    basis: Basis,
    kind: PriorKind,
    width: f32,
    top_k: Option<usize>,
}

/// The component basis B of a state space (centres ±B_m).
#[derive(Debug, Clone)]
enum Basis {
    /// Latent space: B = C, stored as `[M, D]` and transposed `[D, M]`.
    Codewords {
        c: Vec<f32>,
        ct: Vec<f32>,
        m: usize,
        d: usize,
    },
    /// Codebook space: B = k·I over M coefficients.
    Scaled { k: f32, m: usize },
}

impl CodebookPrior {
    /// The latent-space prior over the codewords `c` (`[m, d]`, row-major, bipolar).
    pub fn latent(
        c: Vec<f32>,
        m: usize,
        d: usize,
        kind: PriorKind,
        width: f32,
        top_k: Option<usize>,
    ) -> Self {
        let ct = transpose(&c, m, d);
        CodebookPrior {
            basis: Basis::Codewords { c, ct, m, d },
            kind,
            width,
            top_k,
        }
    }

    /// The codebook-space prior over M coefficients with centres ±k·e_m.
    pub fn codebook(
        m: usize,
        scale: f32,
        kind: PriorKind,
        width: f32,
        top_k: Option<usize>,
    ) -> Self {
        CodebookPrior {
            basis: Basis::Scaled { k: scale, m },
            kind,
            width,
            top_k,
        }
    }

    /// Dimension of the state space (D in latent space, M in codebook space).
    pub fn state_dim(&self) -> usize {
        match &self.basis {
            Basis::Codewords { d, .. } => *d,
            Basis::Scaled { m, .. } => *m,
        }
    }

    /// Number of codewords M.
    pub fn codewords(&self) -> usize {
        match &self.basis {
            Basis::Codewords { m, .. } | Basis::Scaled { m, .. } => *m,
        }
    }

    /// The marginal component variance s_t² = σ_t² + α_t² τ².
    pub fn component_var(&self, alpha: f64, sigma: f64) -> f64 {
        let tau = f64::from(self.width);
        sigma * sigma + alpha * alpha * tau * tau
    }

    /// Projections B y of a batch of states `[rows, S]` onto the basis, `[rows, M]`.
    pub fn project(&self, y: &[f32]) -> Vec<f32> {
        match &self.basis {
            Basis::Codewords { ct, m, d, .. } => gemm_host(y, ct, y.len() / d, *d, *m),
            Basis::Scaled { k, .. } => y.iter().map(|x| x * k).collect(),
        }
    }

    /// Maps coefficients `[rows, M]` back to the state space, Bᵀa, `[rows, S]`.
    pub fn expand(&self, a: &[f32]) -> Vec<f32> {
        match &self.basis {
            Basis::Codewords { c, m, d, .. } => gemm_host(a, c, a.len() / m, *m, *d),
            Basis::Scaled { k, .. } => a.iter().map(|x| x * k).collect(),
        }
    }

    /// The logits α_t⟨B_m, y⟩ / s_t² of a batch of states, one row per state, given per-row
    /// (α, σ).
    pub fn logits(&self, y: &[f32], alpha_sigma: &[(f64, f64)]) -> Vec<f32> {
        let m = self.codewords();
        let mut l = self.project(y);
        for (r, &(a, s)) in alpha_sigma.iter().enumerate() {
            let g = (a / self.component_var(a, s)) as f32;
            l[r * m..(r + 1) * m].iter_mut().for_each(|x| *x *= g);
        }
        l
    }

    /// The posterior of the mixture component for given logits (see [`posterior`]).
    pub fn posterior(&self, logits: &[f32]) -> Posterior {
        posterior(logits, self.codewords(), self.kind, self.top_k)
    }

    /// The posterior-mean centre m(y) = Bᵀv for states `y` at per-row (α, σ).
    pub fn mean_centre(&self, y: &[f32], alpha_sigma: &[(f64, f64)]) -> Vec<f32> {
        let p = self.posterior(&self.logits(y, alpha_sigma));
        self.expand(&p.v)
    }

    /// The Tweedie denoiser ŷ_0 = (α τ² y + σ² m(y)) / s² for states `y` at per-row (α, σ).
    pub fn denoise(&self, y: &[f32], alpha_sigma: &[(f64, f64)]) -> Vec<f32> {
        let mc = self.mean_centre(y, alpha_sigma);
        self.combine_denoised(y, &mc, alpha_sigma)
    }

    /// The score ∇ log p_t(y) = (α m(y) − y) / s² for states `y` at per-row (α, σ).
    pub fn score(&self, y: &[f32], alpha_sigma: &[(f64, f64)]) -> Vec<f32> {
        let mc = self.mean_centre(y, alpha_sigma);
        let s = self.state_dim();
        let mut out = vec![0f32; y.len()];
        for (r, &(a, sg)) in alpha_sigma.iter().enumerate() {
            let inv = 1.0 / self.component_var(a, sg);
            for i in r * s..(r + 1) * s {
                out[i] = ((a * f64::from(mc[i]) - f64::from(y[i])) * inv) as f32;
            }
        }
        out
    }

    /// ŷ_0 from a state and its mean centre.
    pub(crate) fn combine_denoised(
        &self,
        y: &[f32],
        mc: &[f32],
        alpha_sigma: &[(f64, f64)],
    ) -> Vec<f32> {
        let s = self.state_dim();
        let tau2 = f64::from(self.width) * f64::from(self.width);
        let mut out = vec![0f32; y.len()];
        for (r, &(a, sg)) in alpha_sigma.iter().enumerate() {
            let var = self.component_var(a, sg);
            let (cy, cm) = (a * tau2 / var, sg * sg / var);
            for i in r * s..(r + 1) * s {
                out[i] = (cy * f64::from(y[i]) + cm * f64::from(mc[i])) as f32;
            }
        }
        out
    }

    /// The posterior covariance action (diag q − v vᵀ) h on coefficient rows `[rows, M]`.
    pub fn covariance_action(p: &Posterior, h: &[f32], m: usize) -> Vec<f32> {
        let mut out = vec![0f32; h.len()];
        for r in 0..h.len() / m {
            let rg = r * m..(r + 1) * m;
            let vh: f32 = p.v[rg.clone()]
                .iter()
                .zip(&h[rg.clone()])
                .map(|(a, b)| a * b)
                .sum();
            for i in rg {
                out[i] = p.q[i] * h[i] - p.v[i] * vh;
            }
        }
        out
    }

    /// The Jacobian-vector product of the mean centre, (∂m/∂y) g = (α/s²) Bᵀ(diag q − vvᵀ) B g,
    /// for states `y` and directions `g` (`[rows, S]` each). The Jacobian is symmetric, so this
    /// is also Jᵀg, the chain rule of guidance.
    pub fn mean_centre_jvp(&self, y: &[f32], g: &[f32], alpha_sigma: &[(f64, f64)]) -> Vec<f32> {
        let m = self.codewords();
        let p = self.posterior(&self.logits(y, alpha_sigma));
        let mut bg = self.project(g);
        let cov = Self::covariance_action(&p, &bg, m);
        bg.copy_from_slice(&cov);
        for (r, &(a, s)) in alpha_sigma.iter().enumerate() {
            let f = (a / self.component_var(a, s)) as f32;
            bg[r * m..(r + 1) * m].iter_mut().for_each(|x| *x *= f);
        }
        self.expand(&bg)
    }

    /// The Jacobian-vector product of the Tweedie denoiser,
    /// (∂ŷ_0/∂y) g = (α τ² g + σ² (∂m/∂y) g) / s².
    pub fn denoise_jvp(&self, y: &[f32], g: &[f32], alpha_sigma: &[(f64, f64)]) -> Vec<f32> {
        let jm = self.mean_centre_jvp(y, g, alpha_sigma);
        self.combine_denoised(g, &jm, alpha_sigma)
    }
}
