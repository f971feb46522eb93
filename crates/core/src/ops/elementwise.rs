//! Element-wise kernels for the resonator's hot loop.
//!
//! Each iteration of a resonator does a few cheap element-wise passes around two matmuls.
//! Composed from single tensor ops, those passes allocate and traverse `[T, D]` buffers several
//! times each; on the CPU these kernels do each in one pass over contiguous host memory, and on
//! other devices they fall back to the equivalent tensor ops, so results are identical
//! everywhere.

use candle_core::{DType, Tensor};

use crate::Result;
use crate::host::with_host_slices;

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
    fn mismatched_shapes_are_errors() {
        let a = t(&[1.0, 2.0], 1);
        let b = t(&[1.0, 2.0, 3.0], 1);
        assert!(product(&[&a, &b]).is_err());
    }
}
