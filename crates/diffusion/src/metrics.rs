//! Sample-quality metrics: exact optimal assignment and the Wasserstein-2 distance between
//! point sets.
//!
//! - [`min_cost_assignment`]: the Hungarian algorithm with potentials (Kuhn 1955, Munkres 1957;
//!   the O(n²m) shortest-augmenting-path form of Jonker & Volgenant 1987) for an n × m cost
//!   matrix, n ≤ m: every row gets a distinct column and the total cost is minimal.
//! - [`wasserstein2`]: for two empirical distributions of n equally weighted points each, the
//!   optimal coupling is a permutation (Birkhoff–von Neumann), so
//!   `W₂² = min_π (1/n) Σ_i ‖a_i − b_π(i)‖²` is computed exactly with the assignment above.

use crate::{Error, Result};

/// The assignment of rows to distinct columns minimizing the total cost, for a rectangular cost
/// matrix with at most as many rows as columns (`cost[i][j]`, all rows of equal length).
/// Returns, for each row, its column.
///
/// # Errors
///
/// [`Error::Shape`] if rows differ in length or there are more rows than columns;
/// [`Error::Config`] if a cost is not finite.
pub fn min_cost_assignment(cost: &[Vec<f64>]) -> Result<Vec<usize>> {
    let n = cost.len();
    if n == 0 {
        return Ok(Vec::new());
    }
    let m = cost[0].len();
    if cost.iter().any(|r| r.len() != m) {
        return Err(Error::Shape("assignment: rows of different lengths".into()));
    }
    if n > m {
        return Err(Error::Shape(format!(
            "assignment: {n} rows but only {m} columns"
        )));
    }
    if cost.iter().flatten().any(|c| !c.is_finite()) {
        return Err(Error::Config("assignment: costs must be finite".into()));
    }
    // 1-based potentials u (rows), v (columns); p[j] = row matched to column j (0 = none).
    let inf = f64::INFINITY;
    let mut u = vec![0.0; n + 1];
    let mut v = vec![0.0; m + 1];
    let mut p = vec![0usize; m + 1];
    let mut way = vec![0usize; m + 1];
    for i in 1..=n {
        p[0] = i;
        let mut j0 = 0usize;
        let mut minv = vec![inf; m + 1];
        let mut used = vec![false; m + 1];
        loop {
            used[j0] = true;
            let i0 = p[j0];
            let mut delta = inf;
            let mut j1 = 0usize;
            let row = &cost[i0 - 1];
            for j in 1..=m {
                if !used[j] {
                    let cur = row[j - 1] - u[i0] - v[j];
                    if cur < minv[j] {
                        minv[j] = cur;
                        way[j] = j0;
                    }
                    if minv[j] < delta {
                        delta = minv[j];
                        j1 = j;
                    }
                }
            }
            for j in 0..=m {
                if used[j] {
                    u[p[j]] += delta;
                    v[j] -= delta;
                } else {
                    minv[j] -= delta;
                }
            }
            j0 = j1;
            if p[j0] == 0 {
                break;
            }
        }
        loop {
            let j1 = way[j0];
            p[j0] = p[j1];
            j0 = j1;
            if j0 == 0 {
                break;
            }
        }
    }
    let mut out = vec![0usize; n];
    for j in 1..=m {
        if p[j] != 0 {
            out[p[j] - 1] = j - 1;
        }
    }
    Ok(out)
}

/// The exact Wasserstein-2 distance between two equally sized sets of points of the same
/// dimension (each point a slice), computed by optimal assignment.
///
/// # Errors
///
/// [`Error::Shape`] if the sets differ in size, are empty or mix dimensions; [`Error::Config`]
/// if a coordinate is not finite.
pub fn wasserstein2<P: AsRef<[f64]>>(a: &[P], b: &[P]) -> Result<f64> {
    if a.len() != b.len() || a.is_empty() {
        return Err(Error::Shape(format!(
            "wasserstein2: needs two non-empty sets of the same size, got {} and {}",
            a.len(),
            b.len()
        )));
    }
    let d = a[0].as_ref().len();
    if a.iter().chain(b).any(|p| p.as_ref().len() != d) {
        return Err(Error::Shape(
            "wasserstein2: points of different dimensions".into(),
        ));
    }
    let cost: Vec<Vec<f64>> = a
        .iter()
        .map(|x| {
            b.iter()
                .map(|y| {
                    x.as_ref()
                        .iter()
                        .zip(y.as_ref())
                        .map(|(p, q)| (p - q) * (p - q))
                        .sum()
                })
                .collect()
        })
        .collect();
    let assign = min_cost_assignment(&cost)?;
    let total: f64 = assign.iter().enumerate().map(|(i, &j)| cost[i][j]).sum();
    Ok((total / a.len() as f64).sqrt())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Brute force over all permutations agrees with the Hungarian algorithm.
    #[test]
    fn assignment_is_optimal() -> Result<()> {
        let mut rng = crate::random::seeded(5);
        for n in 1..=6 {
            let cost: Vec<Vec<f64>> = (0..n)
                .map(|_| {
                    crate::random::normal_vec(&mut rng, n + 1)
                        .iter()
                        .map(|&x| f64::from(x))
                        .collect()
                })
                .collect();
            let got = min_cost_assignment(&cost)?;
            let got_cost: f64 = got.iter().enumerate().map(|(i, &j)| cost[i][j]).sum();
            let mut distinct = got.clone();
            distinct.sort_unstable();
            distinct.dedup();
            assert_eq!(distinct.len(), n);
            // Brute force: every injective map of n rows into n + 1 columns.
            let mut best = f64::INFINITY;
            let mut cols: Vec<usize> = (0..=n).collect();
            permute(&mut cols, 0, &mut |perm| {
                let c: f64 = (0..n).map(|i| cost[i][perm[i]]).sum();
                best = best.min(c);
            });
            assert!(
                (got_cost - best).abs() < 1e-9,
                "n={n}: {got_cost} vs {best}"
            );
        }
        Ok(())
    }

    fn permute(v: &mut Vec<usize>, k: usize, f: &mut dyn FnMut(&[usize])) {
        if k == v.len() {
            f(v);
            return;
        }
        for i in k..v.len() {
            v.swap(k, i);
            permute(v, k + 1, f);
            v.swap(k, i);
        }
    }

    #[test]
    fn w2_of_a_translation_is_its_length() -> Result<()> {
        let a: Vec<[f64; 2]> = vec![[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]];
        let b: Vec<[f64; 2]> = a.iter().rev().map(|p| [p[0] + 0.3, p[1] - 0.4]).collect();
        assert!((wasserstein2(&a, &b)? - 0.5).abs() < 1e-12);
        assert!(wasserstein2(&a, &b[..2]).is_err());
        Ok(())
    }
}
