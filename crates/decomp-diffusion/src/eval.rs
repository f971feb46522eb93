//! Evaluation of image decompositions against procedural ground truth.
//!
//! - Reconstruction: mean squared error and PSNR = 10 log₁₀(1 / MSE) for pixels in \[0, 1\].
//! - Object isolation (Su et al. 2024, §4.1, done here with known masks): every factor render is
//!   thresholded into a foreground mask (pixels that differ from the background), the
//!   intersection-over-union of every (object, factor) pair is computed, and objects are matched
//!   to distinct factors by the Hungarian algorithm maximizing total IoU. An object is
//!   *isolated* when its matched IoU is at least 0.5.
//! - Disentanglement of global factors (Falcor-lite; Chen et al. 2018, Khemakhem et al. 2020):
//!   - **MIG**: every latent dimension is discretized into equal-width bins; for every factor v_j
//!     the mutual informations I(z_i; v_j) are sorted and the gap between the two largest,
//!     divided by the entropy H(v_j), is averaged over the factors.
//!   - **MCC**: the absolute Pearson correlations |ρ(z_i, v_j)| form a matrix; factors are matched
//!     to distinct latent dimensions maximizing the total, and the matched correlations are
//!     averaged.

use recompose_diffusion::metrics::min_cost_assignment;

use crate::{Error, Result};

/// Mean squared error of two equally long pixel arrays.
///
/// # Errors
///
/// [`Error::Config`] if the lengths differ or are zero.
pub fn mse(a: &[f32], b: &[f32]) -> Result<f64> {
    if a.len() != b.len() || a.is_empty() {
        return Err(Error::Config(format!(
            "mse needs two non-empty arrays of one length, got {} and {}",
            a.len(),
            b.len()
        )));
    }
    let s: f64 = a.iter().zip(b).map(|(x, y)| f64::from(x - y).powi(2)).sum();
    Ok(s / a.len() as f64)
}

/// PSNR in dB of a mean squared error for pixels in \[0, 1\] (infinite for a perfect match).
pub fn psnr(mse: f64) -> f64 {
    10.0 * (1.0 / mse).log10()
}

/// The foreground of a render `[3, H, W]` against a background `[3, H, W]`: pixels where any
/// channel differs by more than `threshold`.
pub fn foreground(render: &[f32], background: &[f32], threshold: f32) -> Vec<bool> {
    let n = render.len() / 3;
    (0..n)
        .map(|p| (0..3).any(|c| (render[c * n + p] - background[c * n + p]).abs() > threshold))
        .collect()
}

/// Intersection over union of two masks (1 when both are empty).
pub fn iou(a: &[bool], b: &[bool]) -> f64 {
    let (mut inter, mut union) = (0usize, 0usize);
    for (&x, &y) in a.iter().zip(b) {
        inter += usize::from(x && y);
        union += usize::from(x || y);
    }
    if union == 0 {
        1.0
    } else {
        inter as f64 / union as f64
    }
}

/// Objects matched to factors: for each object, its factor and their IoU.
#[derive(Debug, Clone, PartialEq)]
pub struct Matching {
    /// For each ground-truth object, the index of its factor.
    pub factor: Vec<usize>,
    /// For each ground-truth object, the IoU with its factor's mask.
    pub iou: Vec<f64>,
}

impl Matching {
    /// The number of objects whose matched IoU is at least `threshold`.
    pub fn isolated(&self, threshold: f64) -> usize {
        self.iou.iter().filter(|&&v| v >= threshold).count()
    }
}

/// Matches objects to distinct factors maximizing the total IoU (see the
/// [module documentation](self)).
///
/// # Errors
///
/// [`Error::Config`] if there are more objects than factors or the masks differ in size.
pub fn match_objects(objects: &[Vec<bool>], factors: &[Vec<bool>]) -> Result<Matching> {
    if objects.len() > factors.len() {
        return Err(Error::Config(format!(
            "{} objects cannot be matched to {} factors",
            objects.len(),
            factors.len()
        )));
    }
    if let Some(first) = objects.first().or(factors.first())
        && objects
            .iter()
            .chain(factors)
            .any(|m| m.len() != first.len())
    {
        return Err(Error::Config("masks of different sizes".into()));
    }
    let table: Vec<Vec<f64>> = objects
        .iter()
        .map(|o| factors.iter().map(|f| iou(o, f)).collect())
        .collect();
    let cost: Vec<Vec<f64>> = table
        .iter()
        .map(|r| r.iter().map(|v| -v).collect())
        .collect();
    let factor = min_cost_assignment(&cost)?;
    let iou = factor
        .iter()
        .enumerate()
        .map(|(o, &f)| table[o][f])
        .collect();
    Ok(Matching { factor, iou })
}

fn check_columns(latents: &[Vec<f64>], factors: &[Vec<usize>]) -> Result<(usize, usize)> {
    let n = latents.len();
    if n < 2 || factors.len() != n {
        return Err(Error::Config(format!(
            "disentanglement needs at least two samples with one factor row each, got {} latent \
             rows and {} factor rows",
            n,
            factors.len()
        )));
    }
    let (dz, dv) = (latents[0].len(), factors[0].len());
    if dz == 0
        || dv == 0
        || latents.iter().any(|r| r.len() != dz)
        || factors.iter().any(|r| r.len() != dv)
    {
        return Err(Error::Config(
            "latent and factor rows must be non-empty and of one length".into(),
        ));
    }
    Ok((dz, dv))
}

/// Entropy (nats) of discrete values.
fn entropy(values: &[usize]) -> f64 {
    let mut counts = std::collections::HashMap::new();
    for &v in values {
        *counts.entry(v).or_insert(0usize) += 1;
    }
    let n = values.len() as f64;
    counts
        .values()
        .map(|&c| {
            let p = c as f64 / n;
            -p * p.ln()
        })
        .sum()
}

/// Mutual information (nats) of two discrete sequences.
fn mutual_information(a: &[usize], b: &[usize]) -> f64 {
    let joint: Vec<usize> = a.iter().zip(b).map(|(&x, &y)| x * 1_000_003 + y).collect();
    entropy(a) + entropy(b) - entropy(&joint)
}

/// Equal-width binning of one latent dimension into `bins` bins.
fn discretize(values: &[f64], bins: usize) -> Vec<usize> {
    let lo = values.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    if hi <= lo {
        return vec![0; values.len()];
    }
    values
        .iter()
        .map(|&v| (((v - lo) / (hi - lo) * bins as f64) as usize).min(bins - 1))
        .collect()
}

/// The mutual information gap of latents (one row per sample) against discrete factors (one
/// row per sample), latents discretized into `bins` bins; factors that never vary are skipped.
///
/// # Errors
///
/// [`Error::Config`] for fewer than two samples, ragged rows, fewer than two latent dimensions,
/// `bins < 2`, or no varying factor.
pub fn mig(latents: &[Vec<f64>], factors: &[Vec<usize>], bins: usize) -> Result<f64> {
    let (dz, dv) = check_columns(latents, factors)?;
    if dz < 2 || bins < 2 {
        return Err(Error::Config(format!(
            "MIG needs at least two latent dimensions and two bins, got {dz} and {bins}"
        )));
    }
    let z: Vec<Vec<usize>> = (0..dz)
        .map(|i| discretize(&latents.iter().map(|r| r[i]).collect::<Vec<_>>(), bins))
        .collect();
    let mut gaps = Vec::new();
    for j in 0..dv {
        let v: Vec<usize> = factors.iter().map(|r| r[j]).collect();
        let h = entropy(&v);
        if h <= 0.0 {
            continue;
        }
        let mut mi: Vec<f64> = z.iter().map(|zi| mutual_information(zi, &v)).collect();
        mi.sort_by(|a, b| b.total_cmp(a));
        gaps.push((mi[0] - mi[1]) / h);
    }
    if gaps.is_empty() {
        return Err(Error::Config(
            "MIG needs at least one varying factor".into(),
        ));
    }
    Ok(gaps.iter().sum::<f64>() / gaps.len() as f64)
}

fn pearson(a: &[f64], b: &[f64]) -> f64 {
    let n = a.len() as f64;
    let (ma, mb) = (a.iter().sum::<f64>() / n, b.iter().sum::<f64>() / n);
    let (mut sab, mut saa, mut sbb) = (0.0, 0.0, 0.0);
    for (&x, &y) in a.iter().zip(b) {
        sab += (x - ma) * (y - mb);
        saa += (x - ma).powi(2);
        sbb += (y - mb).powi(2);
    }
    if saa <= 0.0 || sbb <= 0.0 {
        0.0
    } else {
        sab / (saa * sbb).sqrt()
    }
}

/// The mean correlation coefficient of latents against factors (see the
/// [module documentation](self)); factors that never vary are skipped.
///
/// # Errors
///
/// [`Error::Config`] for fewer than two samples, ragged rows, more varying factors than latent
/// dimensions, or no varying factor.
pub fn mcc(latents: &[Vec<f64>], factors: &[Vec<usize>]) -> Result<f64> {
    let (dz, dv) = check_columns(latents, factors)?;
    let cols: Vec<Vec<f64>> = (0..dz)
        .map(|i| latents.iter().map(|r| r[i]).collect())
        .collect();
    let table: Vec<Vec<f64>> = (0..dv)
        .map(|j| factors.iter().map(|r| r[j] as f64).collect::<Vec<f64>>())
        .filter(|v| v.iter().any(|&x| x != v[0]))
        .map(|v| cols.iter().map(|c| pearson(c, &v).abs()).collect())
        .collect();
    if table.is_empty() {
        return Err(Error::Config(
            "MCC needs at least one varying factor".into(),
        ));
    }
    if table.len() > dz {
        return Err(Error::Config(format!(
            "MCC matches each of {} factors to its own latent dimension but there are only {dz}",
            table.len()
        )));
    }
    let cost: Vec<Vec<f64>> = table
        .iter()
        .map(|r| r.iter().map(|v| -v).collect())
        .collect();
    let assign = min_cost_assignment(&cost)?;
    Ok(assign
        .iter()
        .enumerate()
        .map(|(j, &i)| table[j][i])
        .sum::<f64>()
        / table.len() as f64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::Rng;

    #[test]
    fn mse_and_psnr_follow_their_definitions() -> Result<()> {
        let a = [0.0f32, 0.5, 1.0, 0.25];
        let b = [0.1f32, 0.5, 0.8, 0.25];
        let want = (0.01 + 0.04) / 4.0;
        assert!((mse(&a, &b)? - want).abs() < 1e-8);
        assert!((psnr(0.01) - 20.0).abs() < 1e-12);
        assert!(psnr(0.0).is_infinite());
        assert!(mse(&a, &b[..3]).is_err());
        Ok(())
    }

    /// Three square "objects"; factors that are the objects in another order, one of them
    /// half-drawn, plus an empty fourth factor.
    #[test]
    fn objects_are_matched_to_factors_by_iou() -> Result<()> {
        let square = |x0: usize, y0: usize, s: usize| -> Vec<bool> {
            (0..64)
                .map(|p| {
                    let (y, x) = (p / 8, p % 8);
                    (x0..x0 + s).contains(&x) && (y0..y0 + s).contains(&y)
                })
                .collect()
        };
        let objects = vec![square(0, 0, 2), square(4, 0, 4), square(0, 5, 3)];
        let mut half = square(0, 5, 3);
        for (p, v) in half.iter_mut().enumerate() {
            if p % 8 == 2 {
                *v = false; // drop one of three columns: IoU 6/9
            }
        }
        let factors = vec![vec![false; 64], half, square(0, 0, 2), square(4, 0, 4)];
        let m = match_objects(&objects, &factors)?;
        assert_eq!(m.factor, vec![2, 3, 1]);
        assert!((m.iou[2] - 6.0 / 9.0).abs() < 1e-12);
        assert_eq!(m.isolated(0.5), 3);
        assert_eq!(m.isolated(0.7), 2);
        assert!(match_objects(&factors, &objects).is_err());
        // The foreground of a render against black.
        let render = [0.0f32, 0.9, 0.0, 0.0, 0.05, 0.0, 0.0, 0.0, 0.3];
        assert_eq!(foreground(&render, &[0.0; 9], 0.1), vec![false, true, true]);
        Ok(())
    }

    /// Latents that copy the factors (in another order, rescaled, with nuisance dimensions) score
    /// MIG = 1 and MCC = 1; latents that ignore them score near 0; a latent that mixes two
    /// factors scores in between.
    #[test]
    fn mig_and_mcc_on_known_latents() -> Result<()> {
        let mut rng = recompose_core::random::seeded(3);
        let n = 3000;
        let factors: Vec<Vec<usize>> = (0..n)
            .map(|_| (0..3).map(|_| rng.random_range(0..5)).collect())
            .collect();
        let noise = |rng: &mut recompose_core::random::SeededRng| rng.random::<f64>();
        let perfect: Vec<Vec<f64>> = factors
            .iter()
            .map(|v| {
                vec![
                    noise(&mut rng) * 1e-3,
                    2.0 * v[2] as f64,
                    -(v[0] as f64),
                    0.5 * v[1] as f64,
                ]
            })
            .collect();
        // Up to the plug-in estimator's bias of the nuisance dimension's MI, ≈ 16 / (2n) nats.
        assert!((mig(&perfect, &factors, 5)? - 1.0).abs() < 0.01);
        assert!((mcc(&perfect, &factors)? - 1.0).abs() < 1e-9);
        let unrelated: Vec<Vec<f64>> = (0..n)
            .map(|_| (0..4).map(|_| noise(&mut rng)).collect())
            .collect();
        assert!(mig(&unrelated, &factors, 10)? < 0.02);
        assert!(mcc(&unrelated, &factors)? < 0.06);
        // z0 = v0 + v1 (both factors in one dimension), z1, z2 noise: correlation 1/√2 for both.
        let mixed: Vec<Vec<f64>> = factors
            .iter()
            .map(|v| vec![(v[0] + v[1]) as f64, noise(&mut rng), noise(&mut rng)])
            .collect();
        let m = mcc(
            &mixed,
            &factors[..]
                .iter()
                .map(|v| vec![v[0], v[1]])
                .collect::<Vec<_>>(),
        )?;
        // One factor gets the shared dimension (≈ 0.707), the other a noise one (≈ 0).
        assert!((m - 0.5f64.sqrt() / 2.0).abs() < 0.05, "{m}");
        assert!(mig(&perfect, &factors, 1).is_err());
        assert!(mcc(&perfect[..1], &factors[..1]).is_err());
        Ok(())
    }
}
