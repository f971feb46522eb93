//! Alternating least squares (Kent et al., *Resonator Networks 2*, Neural Computation 32(12),
//! 2020, §3.1): each factor in turn minimizes ‖s − (⊙_{g≠f} x̂_g) ⊙ C_fᵀ a_f‖² over its
//! coefficients a_f, with the other factors fixed. With p = ⊙_{g≠f} x̂_g the normal equations
//! are (C_f diag(p²) C_fᵀ) a_f = C_f (p ⊙ s), one M×M system per trial.
//!
//! The Gram matrices dominate the cost (M²D per trial and factor against M³/3 for the
//! solve). Each entry is `G[m, n] = Σ_d p_d² c_m,d c_n,d`, so all of them come from one product
//! of the squared weights with the `[D, M(M+1)/2]` matrix of codeword products `c_m ⊙ c_n`,
//! m ≤ n (symmetry halves the work); for bipolar codebooks those products are ±1 patterns, and
//! their weighted sums come from per-block sign tables instead
//! ([`recompose_core::ops::sign_gram`], about a sixth of the work of the dense product). On the
//! CPU the trials are cut into one shard per thread, and each shard runs the whole iteration on
//! host slices without waiting for the others: it builds the Gram rows of a group of trials with
//! one single-threaded product and solves the group's systems together by Cholesky in f64, the
//! trials in vector lanes; for codebooks too large for the product matrix, each trial's Gram is
//! `(C ⊙ p²) Cᵀ`. Every per-trial computation has the same shape whatever the shard, so the
//! result does not depend on the thread count. Elsewhere the same systems are built with
//! candle's batched products.

use candle_core::{DType, Tensor};
use serde::{Deserialize, Serialize};

use crate::problem::{Problem, VsaKind};
use crate::trials::{ActiveTrials, Budget, Outcome, Progress};
use crate::{Error, Result, linalg};
use recompose_core::ops::sign_gram::{self, SignPatterns};
use recompose_vsa::planes::{self, Planes, PreparedCodebook};

/// Settings of alternating least squares.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AlsConfig {
    /// Relative ridge added to every normal-equation matrix.
    pub ridge: f64,
    /// Trials whose estimates change by less than this (mean absolute change per component)
    /// over a sweep count as converged.
    pub tolerance: f32,
}

impl Default for AlsConfig {
    fn default() -> Self {
        AlsConfig {
            ridge: 1e-6,
            tolerance: 1e-5,
        }
    }
}

/// Largest M²·D for which the pair-product matrix is built (128 MiB of f32 with symmetry).
const PAIR_LIMIT: usize = 1 << 26;

/// The `[D, M(M+1)/2]` matrix of codeword products `c_m ⊙ c_n` for m ≤ n (row-major, column
/// `m·M − m(m−1)/2 + (n − m)` for the pair (m, n)), from the codewords `[M, D]`.
fn upper_pairs(c: &[f32], m: usize, d: usize) -> Vec<f32> {
    let q = m * (m + 1) / 2;
    let mut out = vec![0f32; d * q];
    let mut col = 0;
    for a in 0..m {
        for b in a..m {
            let (ca, cb) = (&c[a * d..(a + 1) * d], &c[b * d..(b + 1) * d]);
            for k in 0..d {
                out[k * q + col] = ca[k] * cb[k];
            }
            col += 1;
        }
    }
    out
}

/// What the host solver needs of one codebook: the codewords and, when it fits, either the
/// sign patterns of the codeword pairs (a bipolar codebook: Gram entries by table lookup) or
/// the pair-product matrix of [`upper_pairs`].
struct HostBook {
    c: Vec<f32>,
    ct: Vec<f32>,
    signs: Option<SignPatterns>,
    pairs: Option<Vec<f32>>,
}

impl HostBook {
    /// Whether Gram entries come from the symmetric pair products (table or matrix).
    fn has_pairs(&self) -> bool {
        self.signs.is_some() || self.pairs.is_some()
    }
}

/// Trials whose Gram rows one product builds: the pair-product matrix is read once per group.
const GROUP: usize = 128;

/// Systems solved together by [`linalg::solve_spd_batch`]: eight `f64` lanes fill a 512-bit
/// vector, and eight interleaved M = 50 systems (160 KiB) stay in the core's L2 cache.
const LANES: usize = 8;

/// The coefficients `[n, M]` of every trial's normal equations `G_i a = r_i`, with
/// `G_i = C diag(w_i) Cᵀ` for the squared weights `w` `[n, D]` and right-hand sides `r`
/// `[n, M]`, on the calling thread. The Gram entries of a group of trials come from one
/// product (or one pass of sign-table lookups), written pair-major so that each entry's values
/// for consecutive trials lie side by side, and the group's systems are solved [`LANES`] at a
/// time by Cholesky in f64 ([`linalg::solve_spd_batch`], the trials in vector lanes, only the
/// lower triangles filled).
fn solve_rows(
    book: &HostBook,
    w: &[f32],
    rhs: &[f32],
    (n, m, d): (usize, usize, usize),
    ridge: f64,
) -> Result<Vec<f32>> {
    let q = m * (m + 1) / 2;
    let group = GROUP.min(n).max(1);
    let lanes = LANES.min(n).max(1);
    let mut coef = Vec::with_capacity(n * m);
    // The group's Gram entries, pair-major: pair p of trial t at p·group + t.
    let mut upper = vec![0f32; if book.has_pairs() { q * group } else { 0 }];
    let mut cw = vec![0f32; if book.has_pairs() { 0 } else { m * d }];
    // Interleaved systems: entry (a, b) of system t at (a·m + b)·lanes + t.
    let mut gram = vec![0f64; m * m * lanes];
    let mut r = vec![0f64; m * lanes];
    let mut start = 0;
    while start < n {
        let end = (start + group).min(n);
        let g = end - start;
        if let Some(signs) = &book.signs {
            signs.weighted_sums_into(&w[start * d..end * d], g, &mut upper[..q * g]);
        } else if let Some(p) = &book.pairs {
            recompose_core::gemm::gemm_host_transposed_into(
                &w[start * d..end * d],
                p,
                &mut upper[..q * g],
                (g, d, q),
            );
        }
        let mut first = 0;
        while first < g {
            let k = lanes.min(g - first);
            let gram = &mut gram[..m * m * k];
            match book.has_pairs() {
                true => {
                    let mut col = 0;
                    for a in 0..m {
                        for b in a..m {
                            let src = &upper[col * g + first..col * g + first + k];
                            let dst = &mut gram[(b * m + a) * k..(b * m + a + 1) * k];
                            dst.iter_mut()
                                .zip(src)
                                .for_each(|(o, v)| *o = f64::from(*v));
                            col += 1;
                        }
                    }
                }
                false => {
                    for t in 0..k {
                        let wi = &w[(start + first + t) * d..(start + first + t + 1) * d];
                        for (dst, src) in cw.chunks_mut(d).zip(book.c.chunks(d)) {
                            dst.iter_mut()
                                .zip(src.iter().zip(wi))
                                .for_each(|(o, (c, w))| *o = c * w);
                        }
                        let gt = recompose_core::gemm::gemm_host(&cw, &book.ct, m, d, m);
                        for (e, v) in gt.iter().enumerate() {
                            gram[e * k + t] = f64::from(*v);
                        }
                    }
                }
            }
            let r = &mut r[..m * k];
            for t in 0..k {
                for a in 0..m {
                    r[a * k + t] = f64::from(rhs[(start + first + t) * m + a]);
                }
            }
            let (x, ok) = linalg::solve_spd_batch(gram, r, m, k, ridge);
            for (t, good) in ok.iter().enumerate() {
                if *good {
                    coef.extend((0..m).map(|a| x[a * k + t] as f32));
                } else {
                    // Singular at the first ridge: the single solver raises it.
                    let g: Vec<f64> = (0..m * m)
                        .map(|e| {
                            let (a, b) = (e / m, e % m);
                            gram[(a.max(b) * m + a.min(b)) * k + t]
                        })
                        .collect();
                    let rt: Vec<f64> = (0..m).map(|a| r[a * k + t]).collect();
                    let a = linalg::solve_spd(&g, m, &rt, ridge)?;
                    coef.extend(a.into_iter().map(|v| v as f32));
                }
            }
            first += k;
        }
        start = end;
    }
    Ok(coef)
}

/// Whether the pair-product matrix `[M², D]` is built (M²·D at most [`PAIR_LIMIT`]).
fn builds_pairs(m: usize, d: usize) -> bool {
    m.checked_mul(m)
        .and_then(|mm| mm.checked_mul(d))
        .is_some_and(|x| x <= PAIR_LIMIT)
}

/// Peak bytes [`run`] allocates on the CPU for `t` trials of a problem of `pc`'s sizes (MAP,
/// `f32`, the problem itself not counted):
///
/// - the transposed codebooks, F·M·D·4, and their host copies (codewords and transposes),
///   2·F·M·D·4;
/// - with the pair products (M²·D ≤ 2²⁶): the sign tables of the M(M+1)/2 codeword pairs of
///   each bipolar codebook, one byte per block of [`sign_gram::BITS`] coordinates, and, while
///   one is built, each codeword's own block codes;
/// - the estimates, their copy from the previous iteration and a new one, 3·F·t·D·4; the
///   product of the other factors, its square, weighted bound vectors and bound vectors,
///   (F + 4)·t·D·4; the right-hand sides and coefficients (`f32` tensors and host copies),
///   16·t·M;
/// - per solver shard (one per thread): with the pair products a group's Gram
///   entries, [`GROUP`]·M(M+1)/2·4, and the tabulated block sums of 16 trials,
///   ⌈D/6⌉·(64 + 6)·16·4; without them one weighted codebook and its Gram matrix,
///   (M·D + M²)·4; and the interleaved `f64` systems, ([`LANES`]·M² + LANES·M)·8.
///
/// On other devices the Gram matrices are candle products (the `[M², D]` pair-product matrix
/// or the weighted codebooks `[t, M, D]`), larger than this.
pub(super) fn memory_estimate(
    pc: &crate::problem::ProblemConfig,
    t: usize,
) -> recompose_core::memory::Estimate {
    use recompose_core::memory::Estimate;
    let (f, m, d) = (pc.factors, pc.codebook_size, pc.dim);
    let pairs = builds_pairs(m, d);
    let q = m.saturating_mul(m.saturating_add(1)) / 2;
    let blocks = d.div_ceil(sign_gram::BITS);
    let mut e = Estimate::f32s(&[f, m, d]) * 3;
    if pairs {
        e += Estimate::array(&[f, q, blocks], 1) + Estimate::array(&[m, blocks], 1);
    }
    e += Estimate::f32s(&[f, t, d]) * 3
        + Estimate::f32s(&[t, d]) * f.saturating_add(4)
        + Estimate::array(&[t, m], 16);
    let shard = if pairs {
        Estimate::f32s(&[GROUP.min(t.max(1)), q])
            + Estimate::f32s(&[blocks, (1 << sign_gram::BITS) + sign_gram::BITS, 16])
    } else {
        Estimate::f32s(&[m, d]) + Estimate::f32s(&[m, m])
    } + Estimate::array(&[LANES, m, m], 8)
        + Estimate::array(&[LANES, m], 8);
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let shards = threads.clamp(1, t.max(1));
    e + shard * shards
}

pub(super) fn run(
    problem: &Problem,
    cfg: &AlsConfig,
    fc: Budget,
    threads: usize,
    progress: &mut dyn FnMut(Progress),
) -> Result<Outcome> {
    let pc = &problem.config;
    let (nf, m, d, t) = (pc.factors, pc.codebook_size, pc.dim, pc.trials);
    let device = super::device_of(problem);
    let cbs: Vec<PreparedCodebook> = (0..nf)
        .map(|f| Ok(PreparedCodebook::new(problem.codebook(f)?)?))
        .collect::<Result<_>>()?;
    // On the host: the codewords and, for moderate M, the symmetric pair products.
    let host_books: Vec<Option<HostBook>> = cbs
        .iter()
        .map(|cb| {
            recompose_core::host::with_host_slices(&[&cb.c[0], &cb.ct[0]], |s| {
                let signs = builds_pairs(m, d)
                    .then(|| SignPatterns::upper_pairs(s[0], m, d))
                    .flatten();
                HostBook {
                    c: s[0].to_vec(),
                    ct: s[1].to_vec(),
                    pairs: (signs.is_none() && builds_pairs(m, d)).then(|| upper_pairs(s[0], m, d)),
                    signs,
                }
            })
        })
        .collect();
    if host_books.iter().all(Option::is_some) {
        let books: Vec<HostBook> = host_books.into_iter().flatten().collect();
        let s = problem.bound_planes()?;
        let s = recompose_core::host::with_host_slices(&[&s[0]], |x| x[0].to_vec())
            .ok_or_else(|| Error::Numerical("ALS: bound vectors not on the host".into()))?;
        return run_host(&books, &s, (t, m, d), cfg, fc, threads, progress);
    }
    // Elsewhere, for moderate M, every Gram matrix C diag(w) Cᵀ is one row of W · Pᵀ, with P
    // the `[M², D]` matrix of codeword products c_m ⊙ c_n: a single large matmul for all trials.
    let pairs: Vec<Option<Tensor>> = cbs
        .iter()
        .zip(&host_books)
        .map(|(cb, host)| -> Result<Option<Tensor>> {
            if host.is_some() || !builds_pairs(m, d) {
                return Ok(None);
            }
            let c = &cb.c[0];
            let p = c.unsqueeze(1)?.broadcast_mul(&c.unsqueeze(0)?)?; // [M, M, D]
            Ok(Some(p.reshape((m * m, d))?.t()?.contiguous()?))
        })
        .collect::<Result<_>>()?;
    let mut ids: Vec<usize> = (0..t).collect();
    let mut s = problem.bound_planes()?;
    let mut est: Vec<Planes> = Vec::with_capacity(nf);
    for cb in &cbs {
        let sup = planes::l2_normalize(&vec![cb.c[0].sum_keepdim(0)?])?;
        est.push(vec![sup[0].broadcast_as((t, d))?.contiguous()?]);
    }
    let mut out = Outcome::new(t, nf);
    for it in 1..=fc.max_iters {
        let old = est.clone();
        let n = ids.len();
        for f in 0..nf {
            let p = planes::product_except(VsaKind::Map, &est, Some(f))?
                .expect("at least two factors")[0]
                .clone();
            let rhs = (&p * &s[0])?.matmul(&cbs[f].ct[0])?; // [n, M]
            let w = p.sqr()?;
            let coef = device_solve(&w, &rhs, &cbs[f], pairs[f].as_ref(), m, cfg.ridge)?;
            let coef = Tensor::from_vec(coef, (n, m), &device)?;
            out.matmul_flops += n as f64 * sweep_flops(None, m, d);
            est[f] = planes::l2_normalize(&vec![coef.matmul(&cbs[f].c[0])?])?;
        }
        // Stop trials whose estimates no longer move (up to the sign ambiguity of each factor's
        // scale, which the L2 normalization fixes only up to ±).
        let mut change = Tensor::zeros(n, DType::F32, &device)?;
        for (new, prev) in est.iter().zip(&old) {
            let diff = (&new[0] - &prev[0])?.abs()?.sum(1)?;
            let sum = (&new[0] + &prev[0])?.abs()?.sum(1)?;
            change = (change + diff.minimum(&sum)?)?;
        }
        let change = change.to_vec1::<f32>()?;
        let tol = cfg.tolerance * d as f32;
        let last = it == fc.max_iters;
        let stop: Vec<bool> = change.iter().map(|&c| last || c <= tol).collect();
        for (i, &c) in change.iter().enumerate() {
            if c <= tol {
                out.converged[ids[i]] = true;
            }
        }
        if stop.iter().any(|&x| x) {
            let mut act = ActiveTrials { ids, s, est };
            let books: Vec<&PreparedCodebook> = cbs.iter().collect();
            act.retire(VsaKind::Map, &stop, None, &books, it, &mut out)?;
            (ids, s, est) = (act.ids, act.s, act.est);
        }
        progress(Progress {
            iteration: it,
            max_iters: fc.max_iters,
            active: ids.len(),
        });
        if ids.is_empty() {
            break;
        }
    }
    Ok(out)
}

/// Multiply-adds of one factor's update for one trial: the right-hand side and projection
/// products, and the Gram's products (the symmetric half on the host, the full matrix with
/// candle's products), or with sign tables their additions (tabulation and lookups).
fn sweep_flops(book: Option<&HostBook>, m: usize, d: usize) -> f64 {
    let (dd, mm) = (d as f64, m as f64);
    let gram = if book.is_some_and(|b| b.signs.is_some()) {
        let blocks = dd / sign_gram::BITS as f64;
        blocks * (1 << sign_gram::BITS) as f64 + mm * (mm + 1.0) / 2.0 * blocks
    } else if book.is_some_and(HostBook::has_pairs) {
        dd * mm * (mm + 1.0)
    } else {
        2.0 * dd * mm * mm
    };
    4.0 * dd * mm + gram
}

/// Scales a row to Euclidean norm √D, as [`planes::l2_normalize`] does (an all-zero row stays
/// zero).
fn normalize_row(x: &mut [f32]) {
    let sq: f32 = x.iter().map(|v| v * v).sum();
    let inv = 1.0 / (sq * (1.0 / x.len() as f32) + 1e-30).sqrt();
    x.iter_mut().for_each(|v| *v *= inv);
}

/// Rows per product of [`row_blocks`].
const ROW_BLOCK: usize = 16;

/// The product `x [n, k] × y [k, m] → [n, m]`, computed in blocks of exactly [`ROW_BLOCK`]
/// rows (the last one padded with zeros), each copied to the same scratch buffer first: every
/// row goes through the same call of the same shape, so its bits do not depend on how many
/// rows come with it, and a trial's path does not depend on the sharding.
fn row_blocks(x: &[f32], y: &[f32], (n, k, m): (usize, usize, usize)) -> Vec<f32> {
    let mut out = Vec::with_capacity(n * m);
    let mut block = vec![0f32; ROW_BLOCK * k];
    for rows in x.chunks(ROW_BLOCK * k).take(n.div_ceil(ROW_BLOCK)) {
        block[..rows.len()].copy_from_slice(rows);
        block[rows.len()..].fill(0.0);
        let p = recompose_core::gemm::gemm_host(&block, y, ROW_BLOCK, k, m);
        out.extend_from_slice(&p[..rows.len() / k * m]);
    }
    out
}

/// [`run`] on the host: the trials cut into contiguous shards, one thread each, every shard
/// running the whole iteration on its rows with single-threaded products and no
/// synchronization with the others (trials evolve independently, so the shards' outcomes are
/// those of one batch). The first shard reports progress.
fn run_host(
    books: &[HostBook],
    s: &[f32],
    (t, m, d): (usize, usize, usize),
    cfg: &AlsConfig,
    fc: Budget,
    threads: usize,
    progress: &mut dyn FnMut(Progress),
) -> Result<Outcome> {
    let bounds = super::shard_bounds(t, super::shard_count(t, threads, true));
    super::run_on_shards(
        &bounds,
        books.len(),
        &|k, p| {
            let (a, b) = bounds[k];
            host_shard(books, &s[a * d..b * d], (m, d), cfg, fc, p)
        },
        progress,
    )
}

/// One shard of [`run_host`]: the trials whose bound vectors are the rows of `s`.
fn host_shard(
    books: &[HostBook],
    s: &[f32],
    (m, d): (usize, usize),
    cfg: &AlsConfig,
    fc: Budget,
    progress: &mut dyn FnMut(Progress),
) -> Result<Outcome> {
    let nf = books.len();
    let t = s.len() / d.max(1);
    let mut out = Outcome::new(t, nf);
    let mut ids: Vec<usize> = (0..t).collect();
    let mut s = s.to_vec();
    // Every estimate starts at the normalized superposition of its codebook.
    let mut est: Vec<Vec<f32>> = books
        .iter()
        .map(|b| {
            let mut sup = vec![0f32; d];
            for row in b.c.chunks(d) {
                sup.iter_mut().zip(row).for_each(|(o, v)| *o += v);
            }
            normalize_row(&mut sup);
            sup.repeat(t)
        })
        .collect();
    let tol = cfg.tolerance * d as f32;
    for it in 1..=fc.max_iters {
        let n = ids.len();
        let old = est.clone();
        for f in 0..nf {
            // The product of the other factors' estimates, in factor order.
            let mut others = (0..nf).filter(|&g| g != f);
            let first = others.next().expect("at least two factors");
            let mut p = est[first].clone();
            for g in others {
                p.iter_mut().zip(&est[g]).for_each(|(a, b)| *a *= b);
            }
            let ps: Vec<f32> = p.iter().zip(&s).map(|(a, b)| a * b).collect();
            let rhs = row_blocks(&ps, &books[f].ct, (n, d, m));
            p.iter_mut().for_each(|v| *v *= *v);
            let coef = solve_rows(&books[f], &p, &rhs, (n, m, d), cfg.ridge)?;
            let mut e = row_blocks(&coef, &books[f].c, (n, m, d));
            e.chunks_mut(d).for_each(normalize_row);
            est[f] = e;
            out.matmul_flops += n as f64 * sweep_flops(Some(&books[f]), m, d);
        }
        // Stop trials whose estimates no longer move (up to the sign ambiguity of each factor's
        // scale, which the normalization fixes only up to ±).
        let change: Vec<f32> = (0..n)
            .map(|i| {
                est.iter().zip(&old).fold(0f32, |acc, (new, prev)| {
                    let (a, b) = (&new[i * d..(i + 1) * d], &prev[i * d..(i + 1) * d]);
                    let diff: f32 = a.iter().zip(b).map(|(x, y)| (x - y).abs()).sum();
                    let sum: f32 = a.iter().zip(b).map(|(x, y)| (x + y).abs()).sum();
                    acc + diff.min(sum)
                })
            })
            .collect();
        let last = it == fc.max_iters;
        let stop: Vec<bool> = change.iter().map(|&c| last || c <= tol).collect();
        if stop.iter().any(|&x| x) {
            let keep: Vec<usize> = (0..n).filter(|&i| !stop[i]).collect();
            for i in (0..n).filter(|&i| stop[i]) {
                let trial = ids[i];
                out.converged[trial] = change[i] <= tol;
                out.iterations[trial] = it as u32;
                // Decoded by the largest absolute similarity (the sign ambiguity).
                for (f, book) in books.iter().enumerate() {
                    let sims = row_blocks(&est[f][i * d..(i + 1) * d], &book.ct, (1, d, m));
                    let best = sims
                        .iter()
                        .enumerate()
                        .fold((0, f32::NEG_INFINITY), |(bi, bv), (k, v)| {
                            if v.abs() > bv { (k, v.abs()) } else { (bi, bv) }
                        })
                        .0;
                    out.predictions[trial * nf + f] = best as u32;
                }
            }
            let select = |x: &[f32]| -> Vec<f32> {
                keep.iter()
                    .flat_map(|&i| x[i * d..(i + 1) * d].iter().copied())
                    .collect()
            };
            s = select(&s);
            for e in est.iter_mut() {
                *e = select(e);
            }
            ids = keep.iter().map(|&i| ids[i]).collect();
        }
        progress(Progress {
            iteration: it,
            max_iters: fc.max_iters,
            active: ids.len(),
        });
        if ids.is_empty() {
            break;
        }
    }
    Ok(out)
}

/// The coefficients of every trial's normal equations with candle's batched products (the
/// path of tensors that do not live on the host), solved per trial by Cholesky in f64.
fn device_solve(
    w: &Tensor,
    rhs: &Tensor,
    cb: &PreparedCodebook,
    pairs: Option<&Tensor>,
    m: usize,
    ridge: f64,
) -> Result<Vec<f32>> {
    let n = w.dim(0)?;
    let gram = match pairs {
        Some(pt) => w.matmul(pt)?, // [n, M²]
        None => {
            let cw = cb.c[0].unsqueeze(0)?.broadcast_mul(&w.unsqueeze(1)?)?; // [n, M, D]
            cw.broadcast_matmul(&cb.ct[0])? // [n, M, M]
        }
    };
    let gram: Vec<f64> = gram.to_dtype(DType::F64)?.flatten_all()?.to_vec1()?;
    let rhs: Vec<f64> = rhs.to_dtype(DType::F64)?.flatten_all()?.to_vec1()?;
    let mut coef = Vec::with_capacity(n * m);
    for i in 0..n {
        let a = linalg::solve_spd(
            &gram[i * m * m..(i + 1) * m * m],
            m,
            &rhs[i * m..(i + 1) * m],
            ridge,
        )?;
        coef.extend(a.into_iter().map(|v| v as f32));
    }
    Ok(coef)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;
    use recompose_core::random::{normal_vec, seeded};

    /// The host solver (symmetric pair products, and per-trial Gram matrices) and the batched
    /// candle solver agree, and their solutions satisfy the normal equations built naively.
    #[test]
    fn host_and_batched_solvers_solve_the_normal_equations() -> Result<()> {
        // Two full groups of 128 trials and a partial one of 46, with a partial lane block.
        let (n, m, d) = (302, 6, 40);
        let mut rng = seeded(3);
        let c: Vec<f32> = normal_vec(&mut rng, m * d)
            .into_iter()
            .map(|v| v.signum())
            .collect();
        let w: Vec<f32> = normal_vec(&mut rng, n * d).iter().map(|v| v * v).collect();
        let rhs = normal_vec(&mut rng, n * m);
        let ct: Vec<f32> = (0..d * m).map(|i| c[(i % m) * d + i / m]).collect();
        let cb = PreparedCodebook::new(vec![Tensor::from_vec(c.clone(), (m, d), &Device::Cpu)?])?;
        let wt = Tensor::from_vec(w.clone(), (n, d), &Device::Cpu)?;
        let rt = Tensor::from_vec(rhs.clone(), (n, m), &Device::Cpu)?;
        let full_pairs = cb.c[0]
            .unsqueeze(1)?
            .broadcast_mul(&cb.c[0].unsqueeze(0)?)?
            .reshape((m * m, d))?
            .t()?
            .contiguous()?;
        let batched = device_solve(&wt, &rt, &cb, Some(&full_pairs), m, 0.0)?;
        let per_trial = device_solve(&wt, &rt, &cb, None, m, 0.0)?;
        let with_signs = HostBook {
            c: c.clone(),
            ct: ct.clone(),
            signs: SignPatterns::upper_pairs(&c, m, d),
            pairs: None,
        };
        assert!(
            with_signs.signs.is_some(),
            "a bipolar codebook has sign patterns"
        );
        let with_pairs = HostBook {
            c: c.clone(),
            ct: ct.clone(),
            signs: None,
            pairs: Some(upper_pairs(&c, m, d)),
        };
        let without = HostBook {
            c: c.clone(),
            ct,
            signs: None,
            pairs: None,
        };
        let host_pairs = solve_rows(&with_pairs, &w, &rhs, (n, m, d), 0.0)?;
        let host_signs = solve_rows(&with_signs, &w, &rhs, (n, m, d), 0.0)?;
        let host_plain = solve_rows(&without, &w, &rhs, (n, m, d), 0.0)?;
        for i in 0..n {
            // Residual of the naive normal equations Σ_d w c_a c_b x_b = r_a.
            let x = &host_pairs[i * m..(i + 1) * m];
            for a in 0..m {
                let mut lhs = 0f64;
                for b in 0..m {
                    let g: f64 = (0..d)
                        .map(|k| f64::from(w[i * d + k]) * f64::from(c[a * d + k] * c[b * d + k]))
                        .sum();
                    lhs += g * f64::from(x[b]);
                }
                let r = f64::from(rhs[i * m + a]);
                assert!(
                    (lhs - r).abs() < 1e-3 * (1.0 + r.abs()),
                    "trial {i}, row {a}"
                );
            }
        }
        for (name, other) in [
            ("batched", &batched),
            ("per trial", &per_trial),
            ("host per trial", &host_plain),
            ("host sign tables", &host_signs),
        ] {
            let err = host_pairs
                .iter()
                .zip(other.iter())
                .fold(0f32, |e, (a, b)| e.max((a - b).abs() / (1.0 + b.abs())));
            assert!(err < 1e-4, "{name}: {err}");
        }
        Ok(())
    }

    #[test]
    fn upper_pairs_lists_each_pair_once() {
        let (m, d) = (3, 2);
        let c = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0];
        let p = upper_pairs(&c, m, d);
        // Columns (0,0) (0,1) (0,2) (1,1) (1,2) (2,2); rows d = 0, 1.
        assert_eq!(
            p,
            vec![
                1.0, 3.0, 5.0, 9.0, 15.0, 25.0, 4.0, 8.0, 12.0, 16.0, 24.0, 36.0
            ]
        );
    }
}
