//! Row-wise kernels of the stochastic resonator and of coupled factorization: the noisy,
//! sparse activation and the reconstruction cosine of decoded codewords (Langenegger et al.,
//! Nature Nanotechnology 18, 2023; Yeung et al. 2026).

use candle_core::Tensor;

use crate::Result;
use crate::host::with_host_slices;
use crate::random::{SeededRng, normal_vec};

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
    rngs: &mut [SeededRng],
    top_k: Option<usize>,
    threshold: Option<f32>,
) -> Result<Option<Tensor>> {
    let (rows, cols) = a.dims2()?;
    let host = with_host_slices(&[a], |s| {
        let mut out: Vec<f32> = s[0].iter().map(|v| v * scale).collect();
        let mut mags = vec![0f32; cols];
        for (r, row) in out.chunks_exact_mut(cols.max(1)).enumerate().take(rows) {
            if noise > 0.0 {
                let z = normal_vec(&mut rngs[ids[r]], cols);
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

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    use candle_core::DType;
    fn t(v: &[f32], rows: usize) -> Tensor {
        Tensor::from_vec(v.to_vec(), (rows, v.len() / rows), &Device::Cpu).unwrap()
    }

    #[test]
    fn sparse_activation_keeps_the_top_magnitudes() {
        let a = t(&[4.0, -8.0, 2.0, 6.0, 1.0, -1.0, 3.0, -2.0], 2);
        let mut rngs = vec![crate::random::seeded(0); 2];
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
        let mut r1 = vec![crate::random::seeded(1), crate::random::seeded(2)];
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
}
