//! The 2-D toy distributions of the compositional-generation experiments.
//!
//! Du et al. 2023, "Reduce, Reuse, Recycle: Compositional Generation with Energy-Based Diffusion
//! Models and MCMC" (ICML 2023), §4, compose diffusion models trained on simple 2-D
//! distributions: products of a ring of Gaussians with a bar or a box, mixtures of two bars,
//! negations of a small box within a large one. [`Toy2d`] provides those distributions with
//! everything a test of a composed sampler needs: exact samples, the exact log-density, a
//! support test, and the exact mean and covariance.
//!
//! | variant | distribution |
//! |---|---|
//! | [`Toy2d::Ring`] | 8 equally weighted isotropic Gaussians of std 0.03 at angles 2πk/8 on the circle of radius 0.5 |
//! | [`Toy2d::Bar`] | uniform on \[−0.2, 0.2\] × \[−1, 1\] |
//! | [`Toy2d::LeftBar`] | uniform on \[−0.3, −0.1\] × \[−1, 1\] |
//! | [`Toy2d::RightBar`] | uniform on \[0.1, 0.3\] × \[−1, 1\] |
//! | [`Toy2d::BoxLarge`] | uniform on \[−0.7, 0.7\]² |
//! | [`Toy2d::BoxSmall`] | uniform on \[−0.3, 0.3\]² |

use std::f64::consts::{LN_2, PI};
use std::fmt;
use std::str::FromStr;

use candle_core::{Device, Tensor};
use rand::Rng;
use rand_distr::{Distribution, StandardNormal};

use super::Dataset;
use crate::random::SeededRng;
use crate::{Error, Result};

/// The number of Gaussians of [`Toy2d::Ring`].
pub const RING_MODES: usize = 8;
/// The radius of the circle that the means of [`Toy2d::Ring`] lie on.
pub const RING_RADIUS: f64 = 0.5;
/// The standard deviation of each Gaussian of [`Toy2d::Ring`].
pub const RING_STD: f64 = 0.03;
/// The support radius of [`Toy2d::Ring`] around each mean, three standard deviations (see
/// [`Toy2d::in_support`]).
pub const RING_SUPPORT_RADIUS: f64 = 3.0 * RING_STD;

/// One of the 2-D toy distributions (see the [module documentation](self) for their
/// definitions).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Toy2d {
    /// Eight Gaussians of std 0.03 on the circle of radius 0.5.
    Ring,
    /// Uniform on the vertical bar \[−0.2, 0.2\] × \[−1, 1\].
    Bar,
    /// Uniform on the vertical bar \[−0.3, −0.1\] × \[−1, 1\].
    LeftBar,
    /// Uniform on the vertical bar \[0.1, 0.3\] × \[−1, 1\].
    RightBar,
    /// Uniform on the square \[−0.7, 0.7\]².
    BoxLarge,
    /// Uniform on the square \[−0.3, 0.3\]².
    BoxSmall,
}

/// An axis-aligned rectangle \[x0, x1\] × \[y0, y1\].
#[derive(Debug, Clone, Copy)]
struct Rect {
    x0: f64,
    x1: f64,
    y0: f64,
    y1: f64,
}

impl Rect {
    fn area(&self) -> f64 {
        (self.x1 - self.x0) * (self.y1 - self.y0)
    }

    fn contains(&self, p: [f64; 2]) -> bool {
        p[0] >= self.x0 && p[0] <= self.x1 && p[1] >= self.y0 && p[1] <= self.y1
    }
}

impl Toy2d {
    /// All six distributions, in declaration order.
    pub const ALL: [Toy2d; 6] = [
        Toy2d::Ring,
        Toy2d::Bar,
        Toy2d::LeftBar,
        Toy2d::RightBar,
        Toy2d::BoxLarge,
        Toy2d::BoxSmall,
    ];

    /// The name used by [`FromStr`] and [`fmt::Display`]: `"ring"`, `"bar"`, `"left_bar"`,
    /// `"right_bar"`, `"box_large"` or `"box_small"`.
    pub fn name(self) -> &'static str {
        match self {
            Toy2d::Ring => "ring",
            Toy2d::Bar => "bar",
            Toy2d::LeftBar => "left_bar",
            Toy2d::RightBar => "right_bar",
            Toy2d::BoxLarge => "box_large",
            Toy2d::BoxSmall => "box_small",
        }
    }

    /// The means of the Gaussians of [`Toy2d::Ring`]: `RING_RADIUS · (cos 2πk/8, sin 2πk/8)` for
    /// k = 0, …, 7.
    pub fn ring_means() -> [[f64; 2]; RING_MODES] {
        std::array::from_fn(|k| {
            let angle = 2.0 * PI * k as f64 / RING_MODES as f64;
            [RING_RADIUS * angle.cos(), RING_RADIUS * angle.sin()]
        })
    }

    /// The rectangle of a uniform distribution; `None` for the ring.
    fn rect(self) -> Option<Rect> {
        let (x0, x1, y0, y1) = match self {
            Toy2d::Ring => return None,
            Toy2d::Bar => (-0.2, 0.2, -1.0, 1.0),
            Toy2d::LeftBar => (-0.3, -0.1, -1.0, 1.0),
            Toy2d::RightBar => (0.1, 0.3, -1.0, 1.0),
            Toy2d::BoxLarge => (-0.7, 0.7, -0.7, 0.7),
            Toy2d::BoxSmall => (-0.3, 0.3, -0.3, 0.3),
        };
        Some(Rect { x0, x1, y0, y1 })
    }

    /// `n` independent samples drawn with `rng`.
    ///
    /// For the ring, each sample draws a mode index uniformly and then two standard normals;
    /// for the uniform distributions, x and then y. The same seed gives the same samples.
    pub fn sample(&self, rng: &mut SeededRng, n: usize) -> Vec<[f64; 2]> {
        match self.rect() {
            None => {
                let means = Self::ring_means();
                (0..n)
                    .map(|_| {
                        let mean = means[rng.random_range(0..RING_MODES)];
                        let zx: f64 = StandardNormal.sample(rng);
                        let zy: f64 = StandardNormal.sample(rng);
                        [mean[0] + RING_STD * zx, mean[1] + RING_STD * zy]
                    })
                    .collect()
            }
            Some(r) => (0..n)
                .map(|_| {
                    let u: f64 = rng.random();
                    let v: f64 = rng.random();
                    [r.x0 + (r.x1 - r.x0) * u, r.y0 + (r.y1 - r.y0) * v]
                })
                .collect(),
        }
    }

    /// The exact log-density at `p`.
    ///
    /// For the ring, `ln( (1/8) Σ_k N(p; μ_k, 0.03² I) )`, evaluated with a log-sum-exp so that
    /// it stays finite far from the modes; for a uniform distribution, `−ln(area)` inside the
    /// closed rectangle and `−∞` outside it (and at non-finite points).
    pub fn log_density(&self, p: [f64; 2]) -> f64 {
        match self.rect() {
            None => {
                let inv_two_var = 1.0 / (2.0 * RING_STD * RING_STD);
                let exps = Self::ring_means().map(|m| {
                    let (dx, dy) = (p[0] - m[0], p[1] - m[1]);
                    -(dx * dx + dy * dy) * inv_two_var
                });
                let max = exps.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                if max == f64::NEG_INFINITY {
                    return f64::NEG_INFINITY;
                }
                let lse = max + exps.iter().map(|e| (e - max).exp()).sum::<f64>().ln();
                // ln(1/8) + ln(1/(2π σ²)).
                lse - 3.0 * LN_2 - (2.0 * PI * RING_STD * RING_STD).ln()
            }
            Some(r) => {
                if r.contains(p) {
                    -r.area().ln()
                } else {
                    f64::NEG_INFINITY
                }
            }
        }
    }

    /// Whether `p` lies in the support: for the ring, within [`RING_SUPPORT_RADIUS`] (three
    /// standard deviations, 0.09) of one of the means; for a uniform distribution, in the closed
    /// rectangle.
    ///
    /// A ring sample falls within three standard deviations of its own mode with probability
    /// `1 − e^{−9/2}` ≈ 0.989 (the radius of a 2-D standard normal is Rayleigh distributed), so
    /// about 1.1 % of exact ring samples lie outside this support.
    pub fn in_support(&self, p: [f64; 2]) -> bool {
        match self.rect() {
            None => Self::ring_means().iter().any(|m| {
                let (dx, dy) = (p[0] - m[0], p[1] - m[1]);
                dx * dx + dy * dy <= RING_SUPPORT_RADIUS * RING_SUPPORT_RADIUS
            }),
            Some(r) => r.contains(p),
        }
    }

    /// The exact mean: the origin for the ring (by symmetry), the centre of the rectangle for a
    /// uniform distribution.
    pub fn mean(&self) -> [f64; 2] {
        match self.rect() {
            None => [0.0, 0.0],
            Some(r) => [0.5 * (r.x0 + r.x1), 0.5 * (r.y0 + r.y1)],
        }
    }

    /// The exact 2×2 covariance matrix (row-major).
    ///
    /// For the ring, `(σ² + r²/2) I` with σ = 0.03 and r = 0.5, since `(1/8) Σ_k cos²(2πk/8) =
    /// 1/2` and the cross terms vanish; for a uniform distribution, `diag(w²/12, h²/12)` with the
    /// rectangle's width w and height h.
    pub fn covariance(&self) -> [[f64; 2]; 2] {
        match self.rect() {
            None => {
                let v = RING_STD * RING_STD + 0.5 * RING_RADIUS * RING_RADIUS;
                [[v, 0.0], [0.0, v]]
            }
            Some(r) => {
                let (w, h) = (r.x1 - r.x0, r.y1 - r.y0);
                [[w * w / 12.0, 0.0], [0.0, h * h / 12.0]]
            }
        }
    }
}

impl fmt::Display for Toy2d {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Toy2d {
    type Err = Error;

    /// Parses a [`Toy2d::name`]; hyphens are accepted in place of underscores (`"left-bar"`).
    fn from_str(s: &str) -> Result<Self> {
        let norm = s.trim().replace('-', "_");
        Toy2d::ALL
            .into_iter()
            .find(|d| d.name() == norm)
            .ok_or_else(|| {
                let names: Vec<&str> = Toy2d::ALL.iter().map(|d| d.name()).collect();
                Error::Config(format!(
                    "unknown 2-D distribution '{s}', expected one of: {}",
                    names.join(", ")
                ))
            })
    }
}

impl Dataset for Toy2d {
    fn item_shape(&self) -> Vec<usize> {
        vec![2]
    }

    fn len(&self) -> Option<usize> {
        None
    }

    /// `batch` fresh samples from [`Toy2d::sample`], as an `f32` tensor `[batch, 2]`.
    fn sample_batch(&self, rng: &mut SeededRng, batch: usize, device: &Device) -> Result<Tensor> {
        let data: Vec<f32> = self
            .sample(rng, batch)
            .into_iter()
            .flat_map(|p| [p[0] as f32, p[1] as f32])
            .collect();
        Ok(Tensor::from_vec(data, (batch, 2), device)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::random::seeded;

    #[test]
    fn names_round_trip() {
        for d in Toy2d::ALL {
            assert_eq!(d.name().parse::<Toy2d>().unwrap(), d);
            assert_eq!(d.to_string(), d.name());
            assert_eq!(d.name().replace('_', "-").parse::<Toy2d>().unwrap(), d);
        }
        assert_eq!(
            " Left-Bar".to_lowercase().parse::<Toy2d>().unwrap(),
            Toy2d::LeftBar
        );
        let err = "circle".parse::<Toy2d>().unwrap_err().to_string();
        for d in Toy2d::ALL {
            assert!(err.contains(d.name()), "{err}");
        }
        assert!(err.contains("circle"), "{err}");
    }

    /// Sample mean and covariance of 20 000 draws agree with the exact ones within five
    /// standard errors (estimated from the same samples).
    #[test]
    fn sample_moments_match_exact() {
        const N: usize = 20_000;
        for (i, d) in Toy2d::ALL.into_iter().enumerate() {
            let xs = d.sample(&mut seeded(100 + i as u64), N);
            assert_eq!(xs.len(), N);
            let n = N as f64;
            let m = [0, 1].map(|j| xs.iter().map(|p| p[j]).sum::<f64>() / n);
            let exact_m = d.mean();
            let exact_c = d.covariance();
            for j in 0..2 {
                let se = (exact_c[j][j] / n).sqrt();
                assert!(
                    (m[j] - exact_m[j]).abs() < 5.0 * se,
                    "{d}: mean[{j}] = {} vs {} (se {se})",
                    m[j],
                    exact_m[j]
                );
            }
            for a in 0..2 {
                for b in 0..2 {
                    let prods: Vec<f64> =
                        xs.iter().map(|p| (p[a] - m[a]) * (p[b] - m[b])).collect();
                    let c = prods.iter().sum::<f64>() / (n - 1.0);
                    let var_prod = prods.iter().map(|q| (q - c) * (q - c)).sum::<f64>() / (n - 1.0);
                    let se = (var_prod / n).sqrt();
                    assert!(
                        (c - exact_c[a][b]).abs() < 5.0 * se + 1e-12,
                        "{d}: cov[{a}][{b}] = {c} vs {} (se {se})",
                        exact_c[a][b]
                    );
                }
            }
        }
    }

    /// A midpoint Riemann sum of the density over a grid covering the support is 1. The cell
    /// edges fall on the rectangles' edges, so the sum is exact for the uniform distributions;
    /// for the ring the midpoint rule with h = σ/3 is accurate far beyond the tolerance.
    #[test]
    fn density_integrates_to_one() {
        let h = 0.01;
        let cells = 240;
        let lo = -1.2;
        for d in Toy2d::ALL {
            let mut sum = 0.0;
            for i in 0..cells {
                let x = lo + (i as f64 + 0.5) * h;
                for j in 0..cells {
                    let y = lo + (j as f64 + 0.5) * h;
                    sum += d.log_density([x, y]).exp();
                }
            }
            let integral = sum * h * h;
            assert!((integral - 1.0).abs() < 1e-3, "{d}: integral {integral}");
        }
    }

    #[test]
    fn log_density_values() {
        // At a ring mean the other modes contribute nothing measurable.
        let at_mode = Toy2d::Ring.log_density([RING_RADIUS, 0.0]);
        let expected = -(8.0f64).ln() - (2.0 * PI * RING_STD * RING_STD).ln();
        assert!(
            (at_mode - expected).abs() < 1e-12,
            "{at_mode} vs {expected}"
        );
        // Far away the log-sum-exp keeps it finite.
        let far = Toy2d::Ring.log_density([50.0, 50.0]);
        assert!(far.is_finite() && far < -1e6, "{far}");
        assert_eq!(
            Toy2d::Ring.log_density([f64::INFINITY, 0.0]),
            f64::NEG_INFINITY
        );
        assert!((Toy2d::Bar.log_density([0.0, 0.9]) - (-(0.8f64).ln())).abs() < 1e-12);
        assert_eq!(Toy2d::Bar.log_density([0.25, 0.0]), f64::NEG_INFINITY);
        assert_eq!(Toy2d::LeftBar.log_density([0.2, 0.0]), f64::NEG_INFINITY);
        assert!(Toy2d::RightBar.log_density([0.2, 0.0]).is_finite());
        assert!((Toy2d::BoxSmall.log_density([0.0, 0.0]) - (-(0.36f64).ln())).abs() < 1e-12);
        assert_eq!(
            Toy2d::BoxLarge.log_density([f64::NAN, 0.0]),
            f64::NEG_INFINITY
        );
    }

    /// Nearly all of a distribution's own samples lie in its support: all of them for the
    /// uniform distributions, about 1 − e^{−9/2} ≈ 0.989 for the ring.
    #[test]
    fn own_samples_in_support() {
        const N: usize = 20_000;
        for (i, d) in Toy2d::ALL.into_iter().enumerate() {
            let xs = d.sample(&mut seeded(7 + i as u64), N);
            let frac = xs.iter().filter(|p| d.in_support(**p)).count() as f64 / N as f64;
            match d {
                Toy2d::Ring => {
                    let p = 1.0 - (-4.5f64).exp();
                    let se = (p * (1.0 - p) / N as f64).sqrt();
                    assert!((frac - p).abs() < 5.0 * se, "ring: {frac} vs {p}");
                    assert!(frac >= 0.98, "ring: {frac}");
                }
                _ => assert_eq!(frac, 1.0, "{d}"),
            }
        }
        assert!(!Toy2d::Ring.in_support([0.0, 0.0]));
        assert!(Toy2d::Ring.in_support([0.0, 0.5 + 0.089]));
        assert!(!Toy2d::BoxSmall.in_support([0.31, 0.0]));
        assert!(Toy2d::BoxLarge.in_support([0.7, -0.7]));
    }

    #[test]
    fn deterministic_for_a_seed() {
        for d in Toy2d::ALL {
            let a = d.sample(&mut seeded(42), 100);
            let b = d.sample(&mut seeded(42), 100);
            let c = d.sample(&mut seeded(43), 100);
            assert_eq!(a, b, "{d}");
            assert_ne!(a, c, "{d}");
        }
    }

    #[test]
    fn dataset_batches_match_samples() {
        let device = Device::Cpu;
        for d in Toy2d::ALL {
            assert_eq!(d.item_shape(), vec![2]);
            assert_eq!(Dataset::len(&d), None);
            assert_eq!(d.is_empty(), None);
            let batch = d.sample_batch(&mut seeded(3), 16, &device).unwrap();
            assert_eq!(batch.dims(), &[16, 2]);
            assert_eq!(batch.dtype(), candle_core::DType::F32);
            let got = batch.to_vec2::<f32>().unwrap();
            let want = d.sample(&mut seeded(3), 16);
            for (g, w) in got.iter().zip(&want) {
                assert_eq!(g[0], w[0] as f32);
                assert_eq!(g[1], w[1] as f32);
            }
            let empty = d.sample_batch(&mut seeded(3), 0, &device).unwrap();
            assert_eq!(empty.dims(), &[0, 2]);
        }
    }

    #[test]
    fn ring_means_on_circle() {
        let means = Toy2d::ring_means();
        assert_eq!(means[0], [RING_RADIUS, 0.0]);
        for m in means {
            assert!(((m[0] * m[0] + m[1] * m[1]).sqrt() - RING_RADIUS).abs() < 1e-15);
        }
    }
}
