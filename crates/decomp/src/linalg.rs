//! Small dense linear algebra on the host, in f64.
//!
//! The resonator's OLS weights need the inverse of an M×M Gram matrix once per codebook, and
//! alternating least squares solves one small symmetric positive-(semi)definite system per trial
//! and factor. Both are tiny next to the D-dimensional matmuls, so a careful Cholesky
//! factorization in f64 is all they need.

use crate::{Error, Result};

/// Cholesky factorization of a symmetric positive-definite `n×n` row-major matrix, in place
/// (lower triangle). Fails when a pivot is not positive.
fn cholesky_in_place(a: &mut [f64], n: usize) -> Result<()> {
    for j in 0..n {
        let mut diag = a[j * n + j];
        for k in 0..j {
            diag -= a[j * n + k] * a[j * n + k];
        }
        if diag.is_nan() || diag <= 0.0 {
            return Err(Error::Numerical(format!(
                "matrix is not positive definite (pivot {j} is {diag:e})"
            )));
        }
        let l = diag.sqrt();
        a[j * n + j] = l;
        for i in j + 1..n {
            let mut v = a[i * n + j];
            for k in 0..j {
                v -= a[i * n + k] * a[j * n + k];
            }
            a[i * n + j] = v / l;
        }
    }
    Ok(())
}

/// Solves L Lᵀ x = b in place, given the Cholesky factor L in the lower triangle of `l`.
fn cholesky_solve_in_place(l: &[f64], n: usize, b: &mut [f64]) {
    for i in 0..n {
        let mut v = b[i];
        for k in 0..i {
            v -= l[i * n + k] * b[k];
        }
        b[i] = v / l[i * n + i];
    }
    for i in (0..n).rev() {
        let mut v = b[i];
        for k in i + 1..n {
            v -= l[k * n + i] * b[k];
        }
        b[i] = v / l[i * n + i];
    }
}

/// Factorizes `a + ridge·I` (ridge relative to the mean diagonal), raising the ridge tenfold
/// (from 1e-10) until the factorization succeeds. Returns the factor.
fn regularized_cholesky(a: &[f64], n: usize, ridge: f64) -> Result<Vec<f64>> {
    let mean_diag = (0..n).map(|i| a[i * n + i]).sum::<f64>() / n.max(1) as f64;
    let scale = if mean_diag > 0.0 { mean_diag } else { 1.0 };
    let mut eps = ridge;
    for _ in 0..12 {
        let mut l = a.to_vec();
        for i in 0..n {
            l[i * n + i] += eps * scale;
        }
        if cholesky_in_place(&mut l, n).is_ok() {
            return Ok(l);
        }
        eps = if eps == 0.0 { 1e-10 } else { eps * 10.0 };
    }
    Err(Error::Numerical(
        "symmetric system stayed singular after regularization".into(),
    ))
}

/// Solves the symmetric positive-(semi)definite system `a x = b` (`a` is `n×n`, row-major),
/// adding the smallest ridge that makes it numerically definite.
pub fn solve_spd(a: &[f64], n: usize, b: &[f64], ridge: f64) -> Result<Vec<f64>> {
    let l = regularized_cholesky(a, n, ridge)?;
    let mut x = b.to_vec();
    cholesky_solve_in_place(&l, n, &mut x);
    Ok(x)
}

/// The inverse of a symmetric positive-(semi)definite `n×n` matrix (row-major), regularized
/// as in [`solve_spd`].
pub fn inverse_spd(a: &[f64], n: usize, ridge: f64) -> Result<Vec<f64>> {
    let l = regularized_cholesky(a, n, ridge)?;
    let mut inv = vec![0f64; n * n];
    let mut col = vec![0f64; n];
    for j in 0..n {
        col.iter_mut().for_each(|v| *v = 0.0);
        col[j] = 1.0;
        cholesky_solve_in_place(&l, n, &mut col);
        for i in 0..n {
            inv[i * n + j] = col[i];
        }
    }
    Ok(inv)
}

/// Solves `k` symmetric positive-definite `n×n` systems at once, the trials interleaved so
/// that every step of the factorization runs over all of them in vector lanes: `a` holds
/// entry (i, j) of system t at `(i·n + j)·k + t` and `b` entry i of system t at `i·k + t`.
/// Each system gets the relative ridge of [`solve_spd`]'s first attempt (`ridge` times its mean
/// diagonal), and the same operations in the same order, so a system that factorizes gives
/// [`solve_spd`]'s solution exactly. Returns the solutions (laid out as `b`) and, per system,
/// whether it factorized; a system that did not must be solved by [`solve_spd`], which raises
/// the ridge until it does. Only the lower triangles of `a` (j ≤ i) are read.
pub fn solve_spd_batch(
    a: &[f64],
    b: &[f64],
    n: usize,
    k: usize,
    ridge: f64,
) -> (Vec<f64>, Vec<bool>) {
    let mut x = vec![0f64; n * k];
    let mut ok = vec![true; k];
    // Blocks of W systems in fixed-width lanes (so each step is one vector operation); lanes
    // past the last system hold the identity, which factorizes and is discarded.
    let mut l = vec![[0f64; W]; n * n];
    let mut y = vec![[0f64; W]; n];
    for first in (0..k).step_by(W) {
        let used = W.min(k - first);
        for i in 0..n {
            for j in 0..=i {
                let e = i * n + j;
                let src = &a[e * k + first..e * k + first + used];
                l[e][..used].copy_from_slice(src);
                l[e][used..].fill(if i == j { 1.0 } else { 0.0 });
            }
            y[i][..used].copy_from_slice(&b[i * k + first..i * k + first + used]);
            y[i][used..].fill(0.0);
        }
        let factored = lanes_solve(&mut l, &mut y, n, ridge);
        ok[first..first + used].copy_from_slice(&factored[..used]);
        for i in 0..n {
            x[i * k + first..i * k + first + used].copy_from_slice(&y[i][..used]);
        }
    }
    (x, ok)
}

/// Lanes of [`solve_spd_batch`]: one 512-bit vector of `f64`.
const W: usize = 8;

/// `acc[t] -= u[t]·v[t]` in every lane.
#[inline(always)]
fn lanes_sub_mul(acc: &mut [f64; W], u: &[f64; W], v: &[f64; W]) {
    for t in 0..W {
        acc[t] -= u[t] * v[t];
    }
}

/// Factorizes W interleaved systems (lower triangles of `l`, entry (i, j) at `i·n + j`) in
/// place with [`solve_spd`]'s first ridge and operation order, then solves for the
/// right-hand sides `x` in place. Returns which lanes factorized.
fn lanes_solve(l: &mut [[f64; W]], x: &mut [[f64; W]], n: usize, ridge: f64) -> [bool; W] {
    let mut ok = [true; W];
    // Ridge relative to each system's mean diagonal.
    let mut scale = [0f64; W];
    for i in 0..n {
        for t in 0..W {
            scale[t] += l[i * n + i][t];
        }
    }
    for s in &mut scale {
        let mean = *s / n.max(1) as f64;
        *s = ridge * if mean > 0.0 { mean } else { 1.0 };
    }
    for i in 0..n {
        for t in 0..W {
            l[i * n + i][t] += scale[t];
        }
    }
    for j in 0..n {
        let mut acc = l[j * n + j];
        for p in 0..j {
            let ljp = l[j * n + p];
            lanes_sub_mul(&mut acc, &ljp, &ljp);
        }
        let mut pivot = [0f64; W];
        for t in 0..W {
            if acc[t].is_nan() || acc[t] <= 0.0 {
                ok[t] = false;
                pivot[t] = 1.0;
            } else {
                pivot[t] = acc[t].sqrt();
            }
        }
        l[j * n + j] = pivot;
        let (head, tail) = l.split_at_mut((j + 1) * n);
        let lj = &head[j * n..j * n + j];
        for row in tail.chunks_mut(n) {
            let mut acc = row[j];
            for (u, v) in row[..j].iter().zip(lj) {
                lanes_sub_mul(&mut acc, u, v);
            }
            for t in 0..W {
                row[j][t] = acc[t] / pivot[t];
            }
        }
    }
    // L y = b, then Lᵀ x = y.
    for i in 0..n {
        let mut acc = x[i];
        for p in 0..i {
            lanes_sub_mul(&mut acc, &l[i * n + p], &x[p]);
        }
        for t in 0..W {
            x[i][t] = acc[t] / l[i * n + i][t];
        }
    }
    for i in (0..n).rev() {
        let mut acc = x[i];
        for p in i + 1..n {
            lanes_sub_mul(&mut acc, &l[p * n + i], &x[p]);
        }
        for t in 0..W {
            x[i][t] = acc[t] / l[i * n + i][t];
        }
    }
    ok
}

#[cfg(test)]
mod tests {
    use super::*;

    fn matmul(a: &[f64], b: &[f64], n: usize) -> Vec<f64> {
        let mut c = vec![0.0; n * n];
        for i in 0..n {
            for k in 0..n {
                for j in 0..n {
                    c[i * n + j] += a[i * n + k] * b[k * n + j];
                }
            }
        }
        c
    }

    #[test]
    fn inverse_of_spd_matrix_is_exact() {
        // A = Bᵀ B + I for a fixed B is symmetric positive definite.
        let n = 6;
        let b: Vec<f64> = (0..n * n)
            .map(|k| ((k * 7 + 3) % 11) as f64 - 5.0)
            .collect();
        let mut a = vec![0.0; n * n];
        for i in 0..n {
            for j in 0..n {
                a[i * n + j] = (0..n).map(|k| b[k * n + i] * b[k * n + j]).sum::<f64>()
                    + if i == j { 1.0 } else { 0.0 };
            }
        }
        let inv = inverse_spd(&a, n, 0.0).unwrap();
        let id = matmul(&a, &inv, n);
        for i in 0..n {
            for j in 0..n {
                let want = if i == j { 1.0 } else { 0.0 };
                assert!(
                    (id[i * n + j] - want).abs() < 1e-9,
                    "{i},{j}: {}",
                    id[i * n + j]
                );
            }
        }
        let x = solve_spd(&a, n, &[1.0; 6], 0.0).unwrap();
        for i in 0..n {
            let ax: f64 = (0..n).map(|k| a[i * n + k] * x[k]).sum();
            assert!((ax - 1.0).abs() < 1e-9);
        }
    }

    #[test]
    fn singular_matrix_is_regularized() {
        // Rank one: [[1,1],[1,1]]; the ridge makes it solvable and the answer lies in its range.
        let x = solve_spd(&[1.0, 1.0, 1.0, 1.0], 2, &[2.0, 2.0], 0.0).unwrap();
        assert!(
            (x[0] - 1.0).abs() < 1e-3 && (x[1] - 1.0).abs() < 1e-3,
            "{x:?}"
        );
    }

    #[test]
    fn nan_matrix_is_an_error() {
        assert!(solve_spd(&[f64::NAN], 1, &[1.0], 0.0).is_err());
    }

    /// The batched solver gives the single solver's solutions exactly for systems that
    /// factorize, and flags the ones that do not.
    #[test]
    fn batched_solves_equal_single_solves() {
        let (n, k) = (7, 13);
        let mut state = 12345u64;
        let mut next = || {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((state >> 33) as f64 / (1u64 << 31) as f64) - 0.5
        };
        let mut systems = Vec::new();
        for t in 0..k {
            let g: Vec<f64> = (0..n * n).map(|_| next()).collect();
            let mut a = matmul(&g, &transpose(&g, n), n);
            if t == 3 {
                // Indefinite: the batch must flag it.
                a[0] = -1.0;
            }
            let b: Vec<f64> = (0..n).map(|_| next()).collect();
            systems.push((a, b));
        }
        let mut a = vec![0f64; n * n * k];
        let mut b = vec![0f64; n * k];
        for (t, (at, bt)) in systems.iter().enumerate() {
            for e in 0..n * n {
                // Only the lower triangle is read: the upper one holds NaN.
                a[e * k + t] = if e % n <= e / n { at[e] } else { f64::NAN };
            }
            for i in 0..n {
                b[i * k + t] = bt[i];
            }
        }
        let (x, ok) = solve_spd_batch(&a, &b, n, k, 1e-6);
        for (t, (at, bt)) in systems.iter().enumerate() {
            if t == 3 {
                assert!(!ok[t]);
                continue;
            }
            assert!(ok[t], "system {t}");
            let want = solve_spd(at, n, bt, 1e-6).unwrap();
            for i in 0..n {
                assert_eq!(x[i * k + t], want[i], "system {t}, entry {i}");
            }
        }
    }

    fn transpose(a: &[f64], n: usize) -> Vec<f64> {
        (0..n * n).map(|e| a[(e % n) * n + e / n]).collect()
    }
}
