//! The batched loop of coupled diffusion: F chains per trial, all trials of a shard at once.
//!
//! All arrays are row-major host buffers with one row per active trial; the codebook products
//! are single-threaded gemm calls of `[rows, D] × [D, M]` and `[rows, M] × [M, D]` (the shards
//! run in parallel, see `factorize::run_sharded`). Every trial owns its random stream, keyed by
//! its index in the caller's whole problem, so a trial's result does not depend on the batch.

use recompose_diffusion::sampler::{StepRule, Transition};
use recompose_diffusion::{Marginal, VpSde};
use recompose_vsa::random::{self, SeededRng};

use super::prior::{CodebookPrior, Posterior, transpose};
use super::{CoupledConfig, Guidance, Integrator, Readout, RestartMode, Sampler, Space, TimeGrid};
use crate::problem::{Problem, VsaKind};
use crate::trials::{Budget, Outcome, Progress, Update};
use crate::{Error, Result};
use recompose_core::gemm::gemm_host;

/// One point of a pass's time grid.
#[derive(Debug, Clone, Copy)]
struct Knot {
    t: f64,
    alpha: f64,
    sigma: f64,
    beta: f64,
}

fn knots(sde: &VpSde, t_hi: f64, t_lo: f64, steps: usize, grid: TimeGrid) -> Result<Vec<Knot>> {
    let sde = sde.with_time_range(t_lo, t_hi)?;
    let times = sde.grid(steps, grid)?;
    Ok(times
        .into_iter()
        .map(|t| Knot {
            t,
            alpha: sde.alpha(t),
            sigma: sde.sigma(t),
            beta: sde.beta(t),
        })
        .collect())
}

/// Per-factor data: the codewords `[M, D]`, their transpose `[D, M]` and the chain's prior.
struct Factor {
    c: Vec<f32>,
    ct: Vec<f32>,
    prior: CodebookPrior,
}

/// The active trials of a shard.
struct Batch {
    ids: Vec<usize>,
    s: Vec<f32>,
    s_norm: Vec<f64>,
    /// Chain state per factor, `[rows, S]`.
    y: Vec<Vec<f32>>,
    /// Read-out estimate per factor, `[rows, D]`.
    est: Vec<Vec<f32>>,
    /// Decoded signed index per factor and row: (index, sign).
    dec: Vec<Vec<(u32, f32)>>,
    /// Grid of the current pass (0: first pass, 1: re-noise restarts) and step within it.
    grid: Vec<usize>,
    step: Vec<usize>,
    stall: Vec<usize>,
    passes: Vec<usize>,
    /// Best reconstruction |cos| seen and its decoded indices (one per factor).
    best_cos: Vec<f64>,
    best: Vec<Vec<u32>>,
    rngs: Vec<SeededRng>,
}

impl Batch {
    fn keep(&mut self, keep: &[usize], d: usize, sdim: usize) {
        let rows = |v: &Vec<f32>, w: usize| -> Vec<f32> {
            keep.iter()
                .flat_map(|&r| v[r * w..(r + 1) * w].iter().copied())
                .collect()
        };
        self.s = rows(&self.s, d);
        for y in self.y.iter_mut() {
            *y = rows(y, sdim);
        }
        for e in self.est.iter_mut() {
            *e = rows(e, d);
        }
        for dc in self.dec.iter_mut() {
            *dc = keep.iter().map(|&r| dc[r]).collect();
        }
        fn pick<T: Clone>(v: &[T], keep: &[usize]) -> Vec<T> {
            keep.iter().map(|&r| v[r].clone()).collect()
        }
        self.ids = pick(&self.ids, keep);
        self.s_norm = pick(&self.s_norm, keep);
        self.grid = pick(&self.grid, keep);
        self.step = pick(&self.step, keep);
        self.stall = pick(&self.stall, keep);
        self.passes = pick(&self.passes, keep);
        self.best_cos = pick(&self.best_cos, keep);
        self.best = pick(&self.best, keep);
        self.rngs = pick(&self.rngs, keep);
    }
}

/// Index and sign of the largest |v_m| of one row.
fn signed_argmax(v: &[f32]) -> (u32, f32) {
    let mut best = 0usize;
    for (i, x) in v.iter().enumerate() {
        if x.abs() > v[best].abs() {
            best = i;
        }
    }
    (best as u32, if v[best] < 0.0 { -1.0 } else { 1.0 })
}

/// Writes the read-out of `r` (`[rows, D]`, the posterior-mean codewords Cᵀv) into `out`.
fn read_out(readout: Readout, r: &[f32], d: usize, out: &mut [f32]) {
    match readout {
        Readout::Sign => {
            for (o, x) in out.iter_mut().zip(r) {
                *o = if *x < 0.0 { -1.0 } else { 1.0 };
            }
        }
        Readout::Soft => {
            for (orow, rrow) in out.chunks_mut(d).zip(r.chunks(d)) {
                let n: f64 = rrow.iter().map(|x| f64::from(*x) * f64::from(*x)).sum();
                if n > 0.0 {
                    let g = ((d as f64).sqrt() / n.sqrt()) as f32;
                    for (o, x) in orow.iter_mut().zip(rrow) {
                        *o = x * g;
                    }
                } else {
                    orow.iter_mut().for_each(|o| *o = 1.0);
                }
            }
        }
    }
}

/// Peak bytes [`run`] allocates for a shard of `n` trials of a problem of `pc`'s sizes (MAP,
/// `f32` host buffers, S the state dimension: D in latent space, M in codebook space; the
/// problem itself not counted):
///
/// - per factor, the host copy of the codewords and their transpose, 2·F·M·D·4, and in latent
///   space the prior's own copy and transpose, another 2·F·M·D·4;
/// - the batch: bound vectors, estimates (and their synchronous copy) and states,
///   (2F + 1)·n·D·4 + F·n·S·4, and the same again while retired rows are dropped;
/// - one factor's step: energy signal, read-out, mean centre and guidance in D, 4·n·D·4;
///   state-space temporaries (mean centre, guidance, score, noise), 4·n·S·4; the pulls, logits,
///   posterior weights and their second moments and the covariance action, 8·n·M·4;
/// - per trial, the random stream and the bookkeeping, 512·n bytes.
pub(crate) fn memory_estimate(
    cc: &CoupledConfig,
    pc: &crate::problem::ProblemConfig,
    n: usize,
) -> recompose_core::memory::Estimate {
    use recompose_core::memory::Estimate;
    let (f, m, d) = (pc.factors, pc.codebook_size, pc.dim);
    let sdim = match cc.space {
        Space::Latent => d,
        Space::Codebook => m,
    };
    let books = match cc.space {
        Space::Latent => 4,
        Space::Codebook => 2,
    };
    let batch = Estimate::f32s(&[f.saturating_mul(2).saturating_add(1), n, d])
        + Estimate::f32s(&[f, n, sdim]);
    Estimate::f32s(&[f, m, d]) * books
        + batch * 2
        + Estimate::f32s(&[n, d]) * 4
        + Estimate::f32s(&[n, sdim]) * 4
        + Estimate::f32s(&[n, m]) * 8
        + Estimate::array(&[n], 512)
}

/// Runs coupled diffusion on every trial of `problem`, whose first trial is trial
/// `trial_offset` of the caller's whole problem.
// Factor and row indices address several parallel arrays at once.
#[allow(clippy::needless_range_loop)]
pub(crate) fn run(
    problem: &Problem,
    cc: &CoupledConfig,
    fc: Budget,
    trial_offset: usize,
    progress: &mut dyn FnMut(Progress),
) -> Result<Outcome> {
    let pc = &problem.config;
    if pc.vsa != VsaKind::Map {
        return Err(Error::Unsupported {
            method: "coupled",
            vsa: pc.vsa.name(),
        });
    }
    let (nf, m, d, t) = (pc.factors, pc.codebook_size, pc.dim, pc.trials);
    cc.validate()?;
    let sdim = match cc.space {
        Space::Latent => d,
        Space::Codebook => m,
    };
    let sde = VpSde::linear();
    let grids = [
        knots(&sde, cc.t_max, cc.t_min, cc.steps, cc.grid)?,
        knots(&sde, cc.renoise, cc.t_min, cc.steps, cc.grid)?,
    ];
    let eta = match cc.sampler {
        Sampler::Ode => 0.0,
        Sampler::Sde => cc.eta,
    };

    let mut factors = Vec::with_capacity(nf);
    for f in 0..nf {
        let c = problem.codebook(f)?[0].flatten_all()?.to_vec1::<f32>()?;
        let ct = transpose(&c, m, d);
        let width = cc.temperature as f32;
        let prior = match cc.space {
            Space::Latent => CodebookPrior::latent(c.clone(), m, d, cc.prior, width, cc.top_k),
            Space::Codebook => {
                CodebookPrior::codebook(m, cc.scale as f32, cc.prior, width, cc.top_k)
            }
        };
        factors.push(Factor { c, ct, prior });
    }

    let s = problem.bound_planes()?[0].flatten_all()?.to_vec1::<f32>()?;
    let s_norm = s
        .chunks(d)
        .map(|r| {
            r.iter()
                .map(|x| f64::from(*x) * f64::from(*x))
                .sum::<f64>()
                .sqrt()
        })
        .collect();
    let rngs = (0..t)
        .map(|i| {
            let mut r = random::seeded(fc.seed ^ 0xD1B5_4A32_D192_ED03);
            r.set_stream((trial_offset + i) as u64);
            r
        })
        .collect();
    let mut b = Batch {
        ids: (0..t).collect(),
        s,
        s_norm,
        y: vec![vec![0f32; t * sdim]; nf],
        est: vec![vec![0f32; t * d]; nf],
        dec: vec![vec![(0, 1.0); t]; nf],
        grid: vec![0; t],
        step: vec![0; t],
        stall: vec![0; t],
        passes: vec![0; t],
        best_cos: vec![-1.0; t],
        best: vec![vec![0; nf]; t],
        rngs,
    };
    for r in 0..t {
        start_pass(&mut b, &factors, cc, &grids, r, 0, false, sdim);
    }
    init_estimates(&mut b, &factors, cc, &grids, &(0..t).collect::<Vec<_>>(), d);

    let mut out = Outcome::new(t, nf);
    let energy = cc.energy;
    let zeta = cc.guidance_scale;
    let grad_scale = energy.grad_scale(d) as f32;
    for it in 1..=fc.max_iters {
        let n = b.ids.len();
        if n == 0 {
            break;
        }
        let old = match cc.update {
            Update::Synchronous => Some(b.est.clone()),
            Update::Sequential => None,
        };
        let now: Vec<Knot> = (0..n).map(|r| grids[b.grid[r]][b.step[r]]).collect();
        let next: Vec<Knot> = (0..n).map(|r| grids[b.grid[r]][b.step[r] + 1]).collect();
        let ab: Vec<(f64, f64)> = now.iter().map(|k| (k.alpha, k.sigma)).collect();
        let mut changed = vec![false; n];
        for f in 0..nf {
            let fd = &factors[f];
            let src: Vec<&[f32]> = match &old {
                Some(o) => o.iter().map(|e| e.as_slice()).collect(),
                None => b.est.iter().map(|e| e.as_slice()).collect(),
            };
            // h_m = ⟨c_m, −∂E/∂x̂_f⟩: the energy's pull on every codeword.
            let signal = match cc.guidance {
                Guidance::Posterior => {
                    super::Energy::Similarity { lambda: 1.0 }.signal(&b.s, &src, f)
                }
                Guidance::Jacobian { .. } => energy.signal(&b.s, &src, f),
            };
            let mut h = gemm_host(&signal, &fd.ct, n, d, m);
            h.iter_mut().for_each(|x| *x *= grad_scale);
            let mut logits = fd.prior.logits(&b.y[f], &ab);
            out.matmul_flops += 2.0 * (n * d * m) as f64;
            if cc.space == Space::Latent {
                out.matmul_flops += 2.0 * (n * d * m) as f64;
            }
            if cc.guidance == Guidance::Posterior {
                let z = zeta as f32;
                logits.iter_mut().zip(&h).for_each(|(l, x)| *l += z * x);
            }
            let post = fd.prior.posterior(&logits);
            // Posterior-mean codewords Cᵀv: the read-out, and in latent space the mean centre.
            let cv = gemm_host(&post.v, &fd.c, n, m, d);
            out.matmul_flops += 2.0 * (n * d * m) as f64;
            let mc = match cc.space {
                Space::Latent => cv.clone(),
                Space::Codebook => fd.prior.expand(&post.v),
            };
            let guide = match cc.guidance {
                Guidance::Posterior => None,
                Guidance::Jacobian { clip } => {
                    let g = jacobian_guidance(&fd.prior, &post, &h, &ab, zeta, clip, m);
                    if cc.space == Space::Latent {
                        out.matmul_flops += 2.0 * (n * d * m) as f64;
                    }
                    Some(g)
                }
            };
            step_states(
                &mut b.y[f],
                &mc,
                guide.as_deref(),
                &now,
                &next,
                &fd.prior,
                cc.integrator,
                eta,
                &mut b.rngs,
                sdim,
            );
            read_out(cc.readout, &cv, d, &mut b.est[f]);
            for r in 0..n {
                let dec = signed_argmax(&post.v[r * m..(r + 1) * m]);
                if dec.0 != b.dec[f][r].0 {
                    changed[r] = true;
                }
                b.dec[f][r] = dec;
            }
        }
        for r in 0..n {
            b.step[r] += 1;
            b.stall[r] = if changed[r] { 0 } else { b.stall[r] + 1 };
        }

        // Verify, restart or retire every row.
        let mut done = vec![false; n];
        let mut restart = Vec::new();
        for r in 0..n {
            let trial = b.ids[r];
            let cos = reconstruction_cos(&b, &factors, r, d);
            if cos > b.best_cos[r] {
                b.best_cos[r] = cos;
                b.best[r] = (0..nf).map(|f| b.dec[f][r].0).collect();
            }
            if cc.verify.is_some_and(|thr| cos >= thr) {
                out.converged[trial] = true;
                for f in 0..nf {
                    out.predictions[trial * nf + f] = b.dec[f][r].0;
                }
                done[r] = true;
                continue;
            }
            let end = b.step[r] + 1 >= grids[b.grid[r]].len();
            let stalled = cc.patience.is_some_and(|p| b.stall[r] >= p);
            let left = cc.restarts.is_none_or(|rr| b.passes[r] < rr);
            if (end || stalled) && left {
                restart.push(r);
            } else if end || it == fc.max_iters {
                done[r] = true;
            }
        }
        if !restart.is_empty() {
            for &r in &restart {
                b.passes[r] += 1;
                let (g, renoise) = match cc.restart_mode {
                    RestartMode::Fresh => (0, false),
                    RestartMode::Renoise => (1, true),
                };
                start_pass(&mut b, &factors, cc, &grids, r, g, renoise, sdim);
            }
            init_estimates(&mut b, &factors, cc, &grids, &restart, d);
            // A restart at the last iteration still ends the run.
            if it == fc.max_iters {
                restart.iter().for_each(|&r| done[r] = true);
            }
        }
        let finished: Vec<usize> = (0..n).filter(|&r| done[r]).collect();
        if !finished.is_empty() {
            retire(&b, &factors, &finished, it, cc.keep_best, m, d, &mut out);
            let keep: Vec<usize> = (0..n).filter(|&r| !done[r]).collect();
            b.keep(&keep, d, sdim);
        }
        progress(Progress {
            iteration: it,
            max_iters: fc.max_iters,
            active: b.ids.len(),
        });
    }
    Ok(out)
}

/// Starts a pass of row `r` on grid `g`: fresh noise at the grid's first time, or (with
/// `renoise`) the row's decoded codewords re-noised to that time.
#[allow(clippy::too_many_arguments)]
fn start_pass(
    b: &mut Batch,
    factors: &[Factor],
    cc: &CoupledConfig,
    grids: &[Vec<Knot>; 2],
    r: usize,
    g: usize,
    renoise: bool,
    sdim: usize,
) {
    let k0 = grids[g][0];
    b.grid[r] = g;
    b.step[r] = 0;
    b.stall[r] = 0;
    let d = factors[0].c.len() / factors[0].prior.codewords();
    for (f, fd) in factors.iter().enumerate() {
        let noise = random::normal_vec(&mut b.rngs[r], sdim);
        let y = &mut b.y[f][r * sdim..(r + 1) * sdim];
        if renoise {
            let (j, sign) = b.dec[f][r];
            let j = j as usize;
            match cc.space {
                Space::Latent => {
                    let c = &fd.c[j * d..(j + 1) * d];
                    for i in 0..sdim {
                        y[i] = (k0.alpha * f64::from(sign * c[i]) + k0.sigma * f64::from(noise[i]))
                            as f32;
                    }
                }
                Space::Codebook => {
                    for i in 0..sdim {
                        let c0 = if i == j { sign * cc.scale as f32 } else { 0.0 };
                        y[i] = (k0.alpha * f64::from(c0) + k0.sigma * f64::from(noise[i])) as f32;
                    }
                }
            }
        } else {
            for i in 0..sdim {
                y[i] = (k0.sigma * f64::from(noise[i])) as f32;
            }
        }
    }
}

/// Sets the estimates and decoded indices of `rows` from their chains' unguided posteriors.
fn init_estimates(
    b: &mut Batch,
    factors: &[Factor],
    cc: &CoupledConfig,
    grids: &[Vec<Knot>; 2],
    rows: &[usize],
    d: usize,
) {
    let m = factors[0].prior.codewords();
    let sdim = factors[0].prior.state_dim();
    let ab: Vec<(f64, f64)> = rows
        .iter()
        .map(|&r| {
            let k = grids[b.grid[r]][b.step[r]];
            (k.alpha, k.sigma)
        })
        .collect();
    for (f, fd) in factors.iter().enumerate() {
        let y: Vec<f32> = rows
            .iter()
            .flat_map(|&r| b.y[f][r * sdim..(r + 1) * sdim].iter().copied())
            .collect();
        let post = fd.prior.posterior(&fd.prior.logits(&y, &ab));
        let cv = gemm_host(&post.v, &fd.c, rows.len(), m, d);
        let mut est = vec![0f32; rows.len() * d];
        read_out(cc.readout, &cv, d, &mut est);
        for (k, &r) in rows.iter().enumerate() {
            b.est[f][r * d..(r + 1) * d].copy_from_slice(&est[k * d..(k + 1) * d]);
            b.dec[f][r] = signed_argmax(&post.v[k * m..(k + 1) * m]);
        }
    }
}

/// The guidance −ζ J_fᵀ ∂E/∂x̂_f in state space, given h = C(−∂E/∂x̂_f) and the unguided
/// posterior: the mean-centre Jacobian (α/s²) Bᵀ(diag q − vvᵀ) B applied through the read-out
/// x̂_f = Cᵀv, then clipped to norm `clip` per row.
fn jacobian_guidance(
    prior: &CodebookPrior,
    post: &Posterior,
    h: &[f32],
    ab: &[(f64, f64)],
    zeta: f64,
    clip: Option<f64>,
    m: usize,
) -> Vec<f32> {
    let mut gam = CodebookPrior::covariance_action(post, h, m);
    for (r, &(a, s)) in ab.iter().enumerate() {
        let f = (zeta * a / prior.component_var(a, s)) as f32;
        gam[r * m..(r + 1) * m].iter_mut().for_each(|x| *x *= f);
    }
    // In codebook space the read-out is Cᵀv = Cᵀ(â/k); the chain rule through v gives the
    // factor k of ∂v/∂y = (αk/s²)(diag q − vvᵀ) — `expand` supplies it. In latent space
    // ∂v/∂y = (α/s²)(diag q − vvᵀ) C, so Bᵀ = Cᵀ; `expand` is that product.
    let mut g = prior.expand(&gam);
    if let Some(c) = clip {
        let sdim = prior.state_dim();
        for row in g.chunks_mut(sdim) {
            let n: f64 = row
                .iter()
                .map(|x| f64::from(*x) * f64::from(*x))
                .sum::<f64>()
                .sqrt();
            if n > c {
                let k = (c / n) as f32;
                row.iter_mut().for_each(|x| *x *= k);
            }
        }
    }
    g
}

/// Advances every row's chain state from `now` to `next`: the score of the codebook prior
/// (plus the guidance) at the state, then one reverse step of the shared sampling core
/// (`recompose_diffusion::sampler::step`): DDIM with η for the exponential integrator, the
/// Euler–Maruyama step of length Δ = β(t)·(t − t') for the Euler integrator.
#[allow(clippy::too_many_arguments)]
fn step_states(
    y: &mut [f32],
    mc: &[f32],
    guide: Option<&[f32]>,
    now: &[Knot],
    next: &[Knot],
    prior: &CodebookPrior,
    integrator: Integrator,
    eta: f64,
    rngs: &mut [SeededRng],
    sdim: usize,
) {
    let rule = match integrator {
        Integrator::Exponential => StepRule::Ddim { eta },
        Integrator::Euler => StepRule::Euler { eta },
    };
    for r in 0..now.len() {
        let (k, k2) = (now[r], next[r]);
        let var = prior.component_var(k.alpha, k.sigma);
        let from = Marginal {
            alpha: k.alpha,
            sigma: k.sigma,
        };
        let to = Marginal {
            alpha: k2.alpha,
            sigma: k2.sigma,
        };
        let transition = match integrator {
            Integrator::Exponential => Transition::between(from, Some(to)),
            Integrator::Euler => Transition::with_delta(from, Some(to), k.beta * (k.t - k2.t)),
        };
        let c = rule.coefficients(&transition);
        let noise = rule
            .is_stochastic()
            .then(|| random::normal_vec(&mut rngs[r], sdim));
        let rg = r * sdim..(r + 1) * sdim;
        let yr = &mut y[rg.clone()];
        let mr = &mc[rg.clone()];
        let gr = guide.map(|g| &g[rg.clone()]);
        for i in 0..sdim {
            let yi = f64::from(yr[i]);
            let mut score = (k.alpha * f64::from(mr[i]) - yi) / var;
            if let Some(g) = gr {
                score += f64::from(g[i]);
            }
            let z = noise.as_ref().map_or(0.0, |n| f64::from(n[i]));
            yr[i] = c.apply_score(from, yi, score, z) as f32;
        }
    }
}

/// |cos(⊙_f ±c_f\[ĵ_f\], s)| for row `r`'s decoded indices.
fn reconstruction_cos(b: &Batch, factors: &[Factor], r: usize, d: usize) -> f64 {
    let s = &b.s[r * d..(r + 1) * d];
    let mut acc = 0f64;
    let cws: Vec<&[f32]> = factors
        .iter()
        .enumerate()
        .map(|(f, fd)| {
            let j = b.dec[f][r].0 as usize;
            &fd.c[j * d..(j + 1) * d]
        })
        .collect();
    for i in 0..d {
        let p: f32 = cws.iter().map(|c| c[i]).product();
        acc += f64::from(s[i] * p);
    }
    let n = b.s_norm[r] * (d as f64).sqrt();
    if n > 0.0 { acc.abs() / n } else { 0.0 }
}

/// Records the answers of the finished rows: verified trials keep their decoded indices; the
/// others answer with their best reconstruction (`keep_best`, when it is above chance) or are
/// decoded from their final estimates by largest absolute similarity.
#[allow(clippy::too_many_arguments)]
fn retire(
    b: &Batch,
    factors: &[Factor],
    rows: &[usize],
    it: usize,
    keep_best: bool,
    m: usize,
    d: usize,
    out: &mut Outcome,
) {
    let nf = factors.len();
    for &r in rows {
        out.iterations[b.ids[r]] = it as u32;
    }
    let open: Vec<usize> = rows
        .iter()
        .copied()
        .filter(|&r| !out.converged[b.ids[r]])
        .collect();
    // A wrong decoding reconstructs s with |cos| of order 1/√D; only a visited reconstruction
    // well above that (4/√D) is worth more than the final estimates.
    let chance = 4.0 / (d as f64).sqrt();
    let (best, open): (Vec<usize>, Vec<usize>) = open
        .into_iter()
        .partition(|&r| keep_best && b.best_cos[r] > chance);
    for &r in &best {
        let trial = b.ids[r];
        out.predictions[trial * nf..(trial + 1) * nf].copy_from_slice(&b.best[r]);
    }
    for (f, fd) in factors.iter().enumerate() {
        if open.is_empty() {
            break;
        }
        let x: Vec<f32> = open
            .iter()
            .flat_map(|&r| b.est[f][r * d..(r + 1) * d].iter().copied())
            .collect();
        let sims = gemm_host(&x, &fd.ct, open.len(), d, m);
        out.matmul_flops += 2.0 * (open.len() * d * m) as f64;
        for (k, &r) in open.iter().enumerate() {
            let (j, _) = signed_argmax(&sims[k * m..(k + 1) * m]);
            out.predictions[b.ids[r] * nf + f] = j;
        }
    }
}
