//! Weighted sums of sign patterns by table lookup (the "method of Four Russians" applied to a
//! matrix product with a ±1 operand).
//!
//! Alternating least squares over bipolar codebooks (Kent et al., *Resonator Networks 2*, 2020,
//! §3.1) needs, for every trial t and pair of codewords (a, b), the Gram entry
//! `G_t[a, b] = Σ_d w_t,d · c_a,d · c_b,d`: a product of the weights `w` `[n, D]` with a matrix
//! of sign patterns `s = c_a ⊙ c_b ∈ {±1}^D`. Cutting the D coordinates into blocks of
//! [`BITS`], each pattern is a list of block codes (one bit per coordinate, set where the sign
//! is −1). For each block the signed sums of the block's weights are tabulated once for all
//! 2^[`BITS`] codes; a pattern's sum is then one table lookup per block instead of [`BITS`]
//! multiply-adds. With the trials in vector lanes, a lookup is one contiguous vector load.
//! Tabulating costs D·2^BITS/BITS additions per trial, shared by every pattern, so for
//! M(M+1)/2 patterns of M = 50 codewords the work falls about six-fold against a dense product.

/// Coordinates per block code: 64 table entries per block, so that for D = 1000 the tables of
/// 16 trials (684 KiB) stay in a core's L2 cache.
pub const BITS: usize = 6;

/// Table entries per block.
const ENTRIES: usize = 1 << BITS;

/// Trials processed together, one per vector lane.
const LANES: usize = 16;

/// Independent accumulators per pattern sum (to hide the latency of the additions).
const ACCS: usize = 4;

/// Sign patterns `{±1}^D` stored as block codes (see the module documentation).
#[derive(Debug, Clone, PartialEq)]
pub struct SignPatterns {
    d: usize,
    count: usize,
    /// `[count, blocks]`: bit i of code j of a pattern is set when coordinate j·BITS + i is −1.
    codes: Vec<u8>,
}

impl SignPatterns {
    /// Blocks per pattern.
    fn blocks(&self) -> usize {
        self.d.div_ceil(BITS)
    }

    /// The patterns `c_a ⊙ c_b` of every pair a ≤ b of the codewords `c` `[m, d]` (row-major),
    /// in the order (0,0), (0,1), …, (0,m−1), (1,1), …; `None` when some codeword value is not
    /// exactly +1 or −1.
    pub fn upper_pairs(c: &[f32], m: usize, d: usize) -> Option<SignPatterns> {
        assert_eq!(c.len(), m * d, "SignPatterns::upper_pairs: codebook size");
        if c.iter().any(|&v| v != 1.0 && v != -1.0) {
            return None;
        }
        let blocks = d.div_ceil(BITS);
        // Each codeword's own block codes; a pair's are their exclusive or.
        let own: Vec<u8> = c
            .chunks(d.max(1))
            .take(m)
            .flat_map(|row| {
                row.chunks(BITS).map(|block| {
                    block
                        .iter()
                        .enumerate()
                        .fold(0u8, |code, (i, &v)| code | (u8::from(v < 0.0) << i))
                })
            })
            .collect();
        let count = m * (m + 1) / 2;
        let mut codes = Vec::with_capacity(count * blocks);
        for a in 0..m {
            for b in a..m {
                let (ca, cb) = (
                    &own[a * blocks..(a + 1) * blocks],
                    &own[b * blocks..(b + 1) * blocks],
                );
                codes.extend(ca.iter().zip(cb).map(|(x, y)| x ^ y));
            }
        }
        Some(SignPatterns { d, count, codes })
    }

    /// Number of patterns.
    pub fn count(&self) -> usize {
        self.count
    }

    /// Bytes held (the block codes).
    pub fn bytes(&self) -> usize {
        self.codes.len()
    }

    /// `out[p·n + t] = Σ_k w[t·D + k] · s_p[k]` for the `n` weight rows `w` `[n, D]`: every
    /// pattern's weighted sum for every row, pattern-major (the rows of one pattern side by
    /// side). Runs on the calling thread.
    ///
    /// # Panics
    /// If `w` does not hold n·D values or `out` count·n values (callers size them).
    pub fn weighted_sums_into(&self, w: &[f32], n: usize, out: &mut [f32]) {
        let (d, blocks) = (self.d, self.blocks());
        assert_eq!(
            w.len(),
            n * d,
            "SignPatterns::weighted_sums_into: weights size"
        );
        assert_eq!(
            out.len(),
            self.count * n,
            "SignPatterns::weighted_sums_into: output size"
        );
        let mut lane_w = vec![[0f32; LANES]; blocks * BITS];
        let mut table = vec![[0f32; LANES]; blocks * ENTRIES];
        for first in (0..n).step_by(LANES) {
            let used = LANES.min(n - first);
            crate::host::vectorized(
                #[inline(always)]
                || {
                    // The lane block's weights, coordinate-major (zero past D and past n).
                    for (k, lanes) in lane_w.iter_mut().enumerate() {
                        for (t, v) in lanes.iter_mut().enumerate() {
                            *v = if k < d && t < used {
                                w[(first + t) * d + k]
                            } else {
                                0.0
                            };
                        }
                    }
                    // Per block: entry 0 is the plain sum; setting bit i subtracts 2·w_i.
                    for (tab, dims) in table.chunks_mut(ENTRIES).zip(lane_w.chunks(BITS)) {
                        let mut base = [0f32; LANES];
                        for v in dims {
                            add_assign(&mut base, v);
                        }
                        tab[0] = base;
                        for code in 1..ENTRIES {
                            let high = (usize::BITS - 1 - code.leading_zeros()) as usize;
                            let mut e = tab[code & !(1 << high)];
                            for (x, y) in e.iter_mut().zip(&dims[high]) {
                                *x -= 2.0 * y;
                            }
                            tab[code] = e;
                        }
                    }
                    for (p, codes) in self.codes.chunks(blocks.max(1)).enumerate() {
                        let mut acc = [[0f32; LANES]; ACCS];
                        let mut groups = codes.chunks_exact(ACCS);
                        let mut base = 0;
                        for group in &mut groups {
                            for (i, (a, &code)) in acc.iter_mut().zip(group).enumerate() {
                                add_assign(a, &table[(base + i) * ENTRIES + usize::from(code)]);
                            }
                            base += ACCS;
                        }
                        for (i, &code) in groups.remainder().iter().enumerate() {
                            add_assign(
                                &mut acc[i],
                                &table[(base + i) * ENTRIES + usize::from(code)],
                            );
                        }
                        let [a0, a1, a2, a3] = acc;
                        let dst = &mut out[p * n + first..p * n + first + used];
                        for (t, o) in dst.iter_mut().enumerate() {
                            *o = (a0[t] + a1[t]) + (a2[t] + a3[t]);
                        }
                    }
                },
            );
        }
    }
}

/// `acc += v` in every lane.
#[inline(always)]
fn add_assign(acc: &mut [f32; LANES], v: &[f32; LANES]) {
    for (a, x) in acc.iter_mut().zip(v) {
        *a += x;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::random::{normal_vec, seeded};

    fn bipolar(rng: &mut crate::random::SeededRng, len: usize) -> Vec<f32> {
        normal_vec(rng, len)
            .into_iter()
            .map(|v| if v < 0.0 { -1.0 } else { 1.0 })
            .collect()
    }

    /// Every weighted pair sum equals the direct sum Σ_k w_k c_a,k c_b,k (in f64), for sizes
    /// that leave partial blocks, partial lane groups and accumulator remainders.
    #[test]
    fn weighted_pair_sums_equal_the_direct_sums() {
        let mut rng = seeded(5);
        for (m, d, n) in [(1, 1, 1), (3, 7, 5), (6, 40, 17), (9, 100, 33), (4, 6, 16)] {
            let c = bipolar(&mut rng, m * d);
            let w: Vec<f32> = normal_vec(&mut rng, n * d).iter().map(|v| v * v).collect();
            let s = SignPatterns::upper_pairs(&c, m, d).expect("bipolar");
            assert_eq!(s.count(), m * (m + 1) / 2);
            let mut out = vec![f32::NAN; s.count() * n];
            s.weighted_sums_into(&w, n, &mut out);
            let mut p = 0;
            for a in 0..m {
                for b in a..m {
                    for t in 0..n {
                        let want: f64 = (0..d)
                            .map(|k| {
                                f64::from(w[t * d + k]) * f64::from(c[a * d + k] * c[b * d + k])
                            })
                            .sum();
                        let got = f64::from(out[p * n + t]);
                        let scale: f64 = (0..d).map(|k| f64::from(w[t * d + k])).sum();
                        assert!(
                            (got - want).abs() <= 1e-5 * (1.0 + scale),
                            "(m {m}, d {d}, n {n}) pair ({a},{b}) trial {t}: {got} vs {want}"
                        );
                    }
                    p += 1;
                }
            }
        }
    }

    /// A diagonal pair (a, a) is all +1, so its sum is the plain sum of the weights; a
    /// codebook with a value other than ±1 is refused.
    #[test]
    fn diagonal_pairs_sum_the_weights_and_non_bipolar_books_are_refused() {
        let c = [1.0, -1.0, -1.0, 1.0, 1.0, 1.0, -1.0, -1.0];
        let s = SignPatterns::upper_pairs(&c, 2, 4).expect("bipolar");
        let w = [1.0, 2.0, 3.0, 4.0];
        let mut out = [0f32; 3];
        s.weighted_sums_into(&w, 1, &mut out);
        // (0,0): 10; (0,1): signs (+,-,+,-) -> 1-2+3-4 = -2; (1,1): 10.
        assert_eq!(out, [10.0, -2.0, 10.0]);
        assert!(SignPatterns::upper_pairs(&[1.0, 0.5], 1, 2).is_none());
        assert!(SignPatterns::upper_pairs(&[1.0, f32::NAN], 1, 2).is_none());
    }
}
