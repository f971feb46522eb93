//! Fused element-wise kernels for the resonator's hot loop.
//!
//! Each iteration of a resonator does a few cheap element-wise passes around two matmuls.
//! Composed from single tensor ops, those passes allocate and traverse `[T, D]` buffers several
//! times each; on the CPU these kernels do each in one pass over contiguous host memory, and on
//! other devices they fall back to the equivalent tensor ops, so results are identical
//! everywhere.

use candle_core::{DType, Storage, Tensor};

use crate::Result;

/// Runs `f` on the contiguous f32 host slices of `xs` when they all live on the CPU in that
/// form; returns `None` otherwise.
fn with_host_slices<R>(xs: &[&Tensor], f: impl FnOnce(&[&[f32]]) -> R) -> Option<R> {
    let guards: Vec<_> = xs.iter().map(|x| x.storage_and_layout()).collect();
    let mut slices = Vec::with_capacity(xs.len());
    for (storage, layout) in &guards {
        let (start, end) = layout.contiguous_offsets()?;
        match &**storage {
            Storage::Cpu(cpu) => slices.push(&cpu.as_slice::<f32>().ok()?[start..end]),
            _ => return None,
        }
    }
    Some(f(&slices))
}

/// The matrix product `a [n, k] × b [k, m] → [n, m]`.
///
/// On the CPU it calls the gemm kernels directly and single-threaded: the factorizers already
/// run one shard of trials per core, and waking a thread pool for every small product costs
/// more than it gains. Elsewhere it is candle's matmul.
pub fn matmul(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    let (n, k) = a.dims2()?;
    let (k2, m) = b.dims2()?;
    if k != k2 {
        return Err(candle_core::Error::ShapeMismatchBinaryOp {
            lhs: a.shape().clone(),
            rhs: b.shape().clone(),
            op: "matmul",
        }
        .into());
    }
    let host = with_host_slices(&[a, b], |s| gemm_host(s[0], s[1], n, k, m));
    match host {
        Some(out) => Ok(Tensor::from_vec(out, (n, m), a.device())?),
        None => Ok(a.matmul(b)?),
    }
}

/// The row-major product `x [n, k] × y [k, m] → [n, m]` on host slices, single-threaded.
///
/// # Panics
/// If `x` does not hold n·k values or `y` does not hold k·m values (callers size them).
pub fn gemm_host(x: &[f32], y: &[f32], n: usize, k: usize, m: usize) -> Vec<f32> {
    assert_eq!(x.len(), n * k, "gemm_host: left operand size");
    assert_eq!(y.len(), k * m, "gemm_host: right operand size");
    let mut out = vec![0f32; n * m];
    if n > 0 && m > 0 && k > 0 {
        // SAFETY: `x` holds n·k, `y` k·m and `out` n·m contiguous row-major f32 values (asserted
        // above); the strides below address exactly those elements, and `out` does not alias
        // the inputs.
        unsafe {
            gemm::gemm(
                n,
                m,
                k,
                out.as_mut_ptr(),
                1,
                m as isize,
                false,
                x.as_ptr(),
                1,
                k as isize,
                y.as_ptr(),
                1,
                m as isize,
                0.0,
                1.0,
                false,
                false,
                false,
                gemm::Parallelism::None,
            );
        }
    }
    out
}

/// Host fast path of the stochastic, sparse activation on one real plane of similarities
/// `[rows, M]`: a·`scale` plus `noise`·z, with z drawn row by row from `rngs[ids[row]]` (the
/// same order as the tensor path), then the `top_k` largest magnitudes kept (ties may keep
/// more) and magnitudes below `threshold` zeroed. `None` when `a` is not on the host.
#[allow(clippy::too_many_arguments)]
pub fn sparse_noisy_activation(
    a: &Tensor,
    scale: f32,
    noise: f32,
    ids: &[usize],
    rngs: &mut [recompose_vsa::random::SeededRng],
    top_k: Option<usize>,
    threshold: Option<f32>,
) -> Result<Option<Tensor>> {
    let (rows, cols) = a.dims2()?;
    let host = with_host_slices(&[a], |s| {
        let mut out: Vec<f32> = s[0].iter().map(|v| v * scale).collect();
        let mut mags = vec![0f32; cols];
        for (r, row) in out.chunks_exact_mut(cols.max(1)).enumerate().take(rows) {
            if noise > 0.0 {
                let z = recompose_vsa::random::normal_vec(&mut rngs[ids[r]], cols);
                for (v, zv) in row.iter_mut().zip(z) {
                    *v += noise * zv;
                }
            }
            if let Some(k) = top_k.filter(|&k| k < cols) {
                for (m, v) in mags.iter_mut().zip(row.iter()) {
                    *m = v.abs();
                }
                let (_, kth, _) = mags.select_nth_unstable_by(k - 1, |x, y| y.total_cmp(x));
                let kth = *kth;
                for v in row.iter_mut() {
                    if v.abs() < kth {
                        *v = 0.0;
                    }
                }
            }
            if let Some(th) = threshold {
                for v in row.iter_mut() {
                    if v.abs() < th {
                        *v = 0.0;
                    }
                }
            }
        }
        out
    });
    Ok(match host {
        Some(out) => Some(Tensor::from_vec(out, (rows, cols), a.device())?),
        None => None,
    })
}

/// Host fast path of cos(⊙_f c_f\[idx_f\], s) per row for real (MAP) codebooks `[M, D]` and
/// bound vectors `[rows, D]`. `None` when the tensors are not on the host.
pub fn reconstruction_cosine_real(
    codebooks: &[&Tensor],
    idx: &[Vec<u32>],
    s: &Tensor,
) -> Result<Option<Vec<f32>>> {
    let (rows, d) = s.dims2()?;
    let mut all: Vec<&Tensor> = codebooks.to_vec();
    all.push(s);
    let host = with_host_slices(&all, |sl| {
        let (books, sv) = (&sl[..codebooks.len()], sl[codebooks.len()]);
        let mut prod = vec![0f32; d];
        (0..rows)
            .map(|r| {
                prod.fill(1.0);
                for (book, ix) in books.iter().zip(idx) {
                    let w = ix[r] as usize;
                    for (p, c) in prod.iter_mut().zip(&book[w * d..(w + 1) * d]) {
                        *p *= c;
                    }
                }
                let srow = &sv[r * d..(r + 1) * d];
                let (mut dot, mut pp, mut ss) = (0f64, 0f64, 0f64);
                for (p, x) in prod.iter().zip(srow) {
                    dot += (p * x) as f64;
                    pp += (p * p) as f64;
                    ss += (x * x) as f64;
                }
                (dot / ((pp * ss).sqrt() + 1e-30)) as f32
            })
            .collect::<Vec<f32>>()
    });
    Ok(host)
}

/// The element-wise product of same-shaped tensors.
pub fn product(xs: &[&Tensor]) -> Result<Tensor> {
    let first = xs[0];
    for x in &xs[1..] {
        if x.shape() != first.shape() {
            return Err(candle_core::Error::ShapeMismatchBinaryOp {
                lhs: first.shape().clone(),
                rhs: x.shape().clone(),
                op: "product",
            }
            .into());
        }
    }
    let host = with_host_slices(xs, |s| {
        let mut out = s[0].to_vec();
        for other in &s[1..] {
            for (o, v) in out.iter_mut().zip(other.iter()) {
                *o *= v;
            }
        }
        out
    });
    match host {
        Some(out) => Ok(Tensor::from_vec(out, first.shape(), first.device())?),
        None => {
            let mut acc = first.clone();
            for x in &xs[1..] {
                acc = (acc * *x)?;
            }
            Ok(acc)
        }
    }
}

/// Bipolar sign with ties broken towards +1.
pub fn sign(x: &Tensor) -> Result<Tensor> {
    let host = with_host_slices(&[x], |s| {
        s[0].iter()
            .map(|&v| if v >= 0.0 { 1.0f32 } else { -1.0 })
            .collect::<Vec<_>>()
    });
    match host {
        Some(out) => Ok(Tensor::from_vec(out, x.shape(), x.device())?),
        None => Ok(x.ge(0f32)?.to_dtype(DType::F32)?.affine(2.0, -1.0)?),
    }
}

/// Bipolar sign of `x` (ties → +1) together with, per row, the L1 distance of the result to
/// the bipolar `prev` (twice the number of flipped components).
pub fn sign_with_change(x: &Tensor, prev: &Tensor) -> Result<(Tensor, Vec<f32>)> {
    let rows = x.dim(0)?;
    if x.shape() != prev.shape() {
        return Err(candle_core::Error::ShapeMismatchBinaryOp {
            lhs: x.shape().clone(),
            rhs: prev.shape().clone(),
            op: "sign_with_change",
        }
        .into());
    }
    let host = with_host_slices(&[x, prev], |s| {
        let (xs, ps) = (s[0], s[1]);
        let d = xs.len() / rows.max(1);
        let mut out = vec![0f32; xs.len()];
        let mut change = vec![0f32; rows];
        for (r, ch) in change.iter_mut().enumerate() {
            let span = r * d..(r + 1) * d;
            let (xr, pr, or) = (&xs[span.clone()], &ps[span.clone()], &mut out[span]);
            // Branch-free, in lanes of eight, so that the loop vectorizes.
            let mut lanes = [0u32; 8];
            let mut xc = xr.chunks_exact(8);
            let mut pc = pr.chunks_exact(8);
            let mut oc = or.chunks_exact_mut(8);
            for ((xv, pv), ov) in (&mut xc).zip(&mut pc).zip(&mut oc) {
                for k in 0..8 {
                    let sgn = if xv[k] >= 0.0 { 1.0f32 } else { -1.0 };
                    ov[k] = sgn;
                    lanes[k] += u32::from(sgn != pv[k]);
                }
            }
            let mut flips: u32 = lanes.iter().sum();
            for ((xv, pv), ov) in xc
                .remainder()
                .iter()
                .zip(pc.remainder())
                .zip(oc.into_remainder())
            {
                let sgn = if *xv >= 0.0 { 1.0f32 } else { -1.0 };
                *ov = sgn;
                flips += u32::from(sgn != *pv);
            }
            *ch = 2.0 * flips as f32;
        }
        (out, change)
    });
    match host {
        Some((out, change)) => Ok((Tensor::from_vec(out, x.shape(), x.device())?, change)),
        None => {
            let s = sign(x)?;
            let change = row_l1_change(&[&s], &[prev])?;
            Ok((s, change))
        }
    }
}

/// Σ |new − old| per row, summed over all pairs of `[T, D]` tensors.
pub fn row_l1_change(new: &[&Tensor], old: &[&Tensor]) -> Result<Vec<f32>> {
    let rows = new[0].dim(0)?;
    let mut all: Vec<&Tensor> = new.to_vec();
    all.extend_from_slice(old);
    let host = with_host_slices(&all, |s| {
        let k = new.len();
        let mut out = vec![0f32; rows];
        for p in 0..k {
            let (a, b) = (s[p], s[k + p]);
            let d = a.len() / rows.max(1);
            for (r, o) in out.iter_mut().enumerate() {
                let (ra, rb) = (&a[r * d..(r + 1) * d], &b[r * d..(r + 1) * d]);
                // Eight independent partial sums let the compiler vectorize the reduction.
                let mut lanes = [0f32; 8];
                let (ca, cb) = (ra.chunks_exact(8), rb.chunks_exact(8));
                let (ta, tb) = (ca.remainder(), cb.remainder());
                for (x, y) in ca.zip(cb) {
                    for k in 0..8 {
                        lanes[k] += (x[k] - y[k]).abs();
                    }
                }
                let tail: f32 = ta.iter().zip(tb).map(|(x, y)| (x - y).abs()).sum();
                *o += lanes.iter().sum::<f32>() + tail;
            }
        }
        out
    });
    match host {
        Some(out) => Ok(out),
        None => {
            let mut acc = Tensor::zeros(rows, DType::F32, new[0].device())?;
            for (a, b) in new.iter().zip(old) {
                acc = (acc + (*a - *b)?.abs()?.sum(1)?)?;
            }
            Ok(acc.to_vec1()?)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn t(v: &[f32], rows: usize) -> Tensor {
        Tensor::from_vec(v.to_vec(), (rows, v.len() / rows), &Device::Cpu).unwrap()
    }

    #[test]
    fn fast_paths_agree_with_tensor_ops() {
        let a = t(&[1.0, -2.0, 0.0, 3.0, -0.5, 4.0], 2);
        let b = t(&[2.0, 1.0, -1.0, -1.0, 2.0, 0.5], 2);
        let c = t(&[-1.0, 1.0, 1.0, 1.0, -1.0, 2.0], 2);
        let p = product(&[&a, &b, &c]).unwrap();
        let want = ((&a * &b).unwrap() * &c).unwrap();
        assert_eq!(p.to_vec2::<f32>().unwrap(), want.to_vec2::<f32>().unwrap());
        assert_eq!(
            sign(&a).unwrap().to_vec2::<f32>().unwrap(),
            vec![vec![1.0, -1.0, 1.0], vec![1.0, -1.0, 1.0]]
        );
        let ch = row_l1_change(&[&a, &b], &[&b, &c]).unwrap();
        let want: Vec<f32> = (0..2)
            .map(|r| {
                let (av, bv, cv) = (
                    a.to_vec2::<f32>().unwrap(),
                    b.to_vec2::<f32>().unwrap(),
                    c.to_vec2::<f32>().unwrap(),
                );
                (0..3)
                    .map(|k| (av[r][k] - bv[r][k]).abs() + (bv[r][k] - cv[r][k]).abs())
                    .sum()
            })
            .collect();
        assert_eq!(ch, want);
        let prev = t(&[1.0, 1.0, -1.0, 1.0, 1.0, 1.0], 2);
        let (sg, changes) = sign_with_change(&a, &prev).unwrap();
        assert_eq!(
            sg.to_vec2::<f32>().unwrap(),
            sign(&a).unwrap().to_vec2::<f32>().unwrap()
        );
        // Row 0: signs (1, −1, 1) vs (1, 1, −1): two flips; row 1: (1, −1, 1) vs (1, 1, 1): one.
        assert_eq!(changes, vec![4.0, 2.0]);
        // Non-contiguous input takes the tensor-op path and gives the same answer.
        let at = a.t().unwrap();
        let s1 = sign(&at).unwrap().to_vec2::<f32>().unwrap();
        let s2 = sign(&at.contiguous().unwrap())
            .unwrap()
            .to_vec2::<f32>()
            .unwrap();
        assert_eq!(s1, s2);
    }

    #[test]
    fn host_matmul_matches_candle() {
        let a: Vec<f32> = (0..6 * 5).map(|i| ((i * 7) % 11) as f32 - 5.0).collect();
        let b: Vec<f32> = (0..5 * 4).map(|i| ((i * 3) % 7) as f32 - 3.0).collect();
        let a = Tensor::from_vec(a, (6, 5), &Device::Cpu).unwrap();
        let b = Tensor::from_vec(b, (5, 4), &Device::Cpu).unwrap();
        let got = matmul(&a, &b).unwrap().to_vec2::<f32>().unwrap();
        assert_eq!(got, a.matmul(&b).unwrap().to_vec2::<f32>().unwrap());
        // A transposed (non-contiguous) operand falls back to candle.
        let bt = b.t().unwrap().contiguous().unwrap().t().unwrap();
        let got = matmul(&a, &bt).unwrap().to_vec2::<f32>().unwrap();
        assert_eq!(got, a.matmul(&b).unwrap().to_vec2::<f32>().unwrap());
        assert!(matmul(&a, &a).is_err());
    }

    #[test]
    fn sparse_activation_keeps_the_top_magnitudes() {
        let a = t(&[4.0, -8.0, 2.0, 6.0, 1.0, -1.0, 3.0, -2.0], 2);
        let mut rngs = vec![recompose_vsa::random::seeded(0); 2];
        let out = sparse_noisy_activation(&a, 0.5, 0.0, &[0, 1], &mut rngs, Some(2), None)
            .unwrap()
            .unwrap();
        assert_eq!(
            out.to_vec2::<f32>().unwrap(),
            vec![vec![0.0, -4.0, 0.0, 3.0], vec![0.0, 0.0, 1.5, -1.0]]
        );
        let out = sparse_noisy_activation(&a, 1.0, 0.0, &[0, 1], &mut rngs, None, Some(2.5))
            .unwrap()
            .unwrap();
        assert_eq!(
            out.to_vec2::<f32>().unwrap(),
            vec![vec![4.0, -8.0, 0.0, 6.0], vec![0.0, 0.0, 3.0, 0.0]]
        );
        // Noise comes from each row's own stream: swapping the rows' ids swaps their noise.
        let mut r1 = vec![
            recompose_vsa::random::seeded(1),
            recompose_vsa::random::seeded(2),
        ];
        let mut r2 = r1.clone();
        let z = Tensor::zeros((2, 4), DType::F32, &Device::Cpu).unwrap();
        let n1 = sparse_noisy_activation(&z, 1.0, 1.0, &[0, 1], &mut r1, None, None)
            .unwrap()
            .unwrap()
            .to_vec2::<f32>()
            .unwrap();
        let n2 = sparse_noisy_activation(&z, 1.0, 1.0, &[1, 0], &mut r2, None, None)
            .unwrap()
            .unwrap()
            .to_vec2::<f32>()
            .unwrap();
        assert_eq!(n1[0], n2[1]);
        assert_eq!(n1[1], n2[0]);
    }

    #[test]
    fn reconstruction_cosine_of_true_and_wrong_codewords() {
        let c1 = t(&[1.0, -1.0, 1.0, 1.0, -1.0, -1.0, 1.0, -1.0], 2);
        let c2 = t(&[1.0, 1.0, -1.0, 1.0, 1.0, -1.0, -1.0, -1.0], 2);
        // s = c1[1] ⊙ c2[0] = (−1, −1, −1, −1).
        let s = t(&[-1.0, -1.0, -1.0, -1.0], 1);
        let right = reconstruction_cosine_real(&[&c1, &c2], &[vec![1], vec![0]], &s)
            .unwrap()
            .unwrap();
        assert!((right[0] - 1.0).abs() < 1e-6);
        // c1[0] ⊙ c2[0] = (1, −1, −1, 1): orthogonal to s.
        let wrong = reconstruction_cosine_real(&[&c1, &c2], &[vec![0], vec![0]], &s)
            .unwrap()
            .unwrap();
        assert!(wrong[0].abs() < 1e-6);
    }

    #[test]
    fn mismatched_shapes_are_errors() {
        let a = t(&[1.0, 2.0], 1);
        let b = t(&[1.0, 2.0, 3.0], 1);
        assert!(product(&[&a, &b]).is_err());
    }
}
