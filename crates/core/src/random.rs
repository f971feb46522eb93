//! Seeded random draws: the one random generator of the workspace.
//!
//! candle's CPU generator cannot be seeded (`Device::Cpu.set_seed` fails and `randn` is seeded by
//! the operating system), so every random number in recompose is drawn here from a
//! caller-supplied RNG — in practice a [`SeededRng`] made by [`seeded`] — and turned into a
//! tensor with [`Tensor::from_vec`]. The same seed always gives the same values, on every device.
//! Values are drawn in row-major order, one at a time, so a draw of `n` values followed by one of
//! `m` is the same stream as one draw of `n + m`.

use candle_core::{DType, Device, Tensor};
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, StandardNormal};

use crate::Result;

/// The RNG used across recompose: ChaCha with 8 rounds, fast and reproducible across platforms.
pub type SeededRng = rand_chacha::ChaCha8Rng;

/// A [`SeededRng`] from a 64-bit seed.
pub fn seeded(seed: u64) -> SeededRng {
    SeededRng::seed_from_u64(seed)
}

/// `n` independent uniform ±1 values.
pub fn bipolar_vec<R: Rng + ?Sized>(rng: &mut R, n: usize) -> Vec<f32> {
    let mut out = Vec::with_capacity(n);
    // One 64-bit draw yields 64 signs.
    while out.len() < n {
        let bits: u64 = rng.random();
        let take = (n - out.len()).min(64);
        out.extend((0..take).map(|i| if (bits >> i) & 1 == 1 { 1.0 } else { -1.0 }));
    }
    out
}

/// `n` independent standard normal values.
pub fn normal_vec<R: Rng + ?Sized>(rng: &mut R, n: usize) -> Vec<f32> {
    (0..n)
        .map(|_| {
            let z: f32 = StandardNormal.sample(rng);
            z
        })
        .collect()
}

/// `n` independent values uniform on `[lo, hi)`.
pub fn uniform_vec<R: Rng + ?Sized>(rng: &mut R, n: usize, lo: f32, hi: f32) -> Vec<f32> {
    (0..n).map(|_| rng.random_range(lo..hi)).collect()
}

/// A tensor of uniform ±1 values with the given shape.
pub fn bipolar<R: Rng + ?Sized>(rng: &mut R, shape: &[usize], device: &Device) -> Result<Tensor> {
    let n = shape.iter().product();
    Ok(Tensor::from_vec(bipolar_vec(rng, n), shape, device)?)
}

/// A tensor of standard normal values with the given shape.
pub fn normal<R: Rng + ?Sized>(rng: &mut R, shape: &[usize], device: &Device) -> Result<Tensor> {
    let n = shape.iter().product();
    Ok(Tensor::from_vec(normal_vec(rng, n), shape, device)?)
}

/// A tensor of standard normal values with the given shape and dtype: drawn as `f32` (the same
/// values as [`normal`]) and converted.
pub fn normal_tensor<R: Rng + ?Sized>(
    rng: &mut R,
    shape: &[usize],
    dtype: DType,
    device: &Device,
) -> Result<Tensor> {
    Ok(normal(rng, shape, device)?.to_dtype(dtype)?)
}

/// A tensor of values uniform on `[lo, hi)` with the given shape.
pub fn uniform<R: Rng + ?Sized>(
    rng: &mut R,
    shape: &[usize],
    lo: f32,
    hi: f32,
    device: &Device,
) -> Result<Tensor> {
    let n = shape.iter().product();
    Ok(Tensor::from_vec(
        uniform_vec(rng, n, lo, hi),
        shape,
        device,
    )?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_draws() {
        let a = bipolar_vec(&mut seeded(7), 1000);
        let b = bipolar_vec(&mut seeded(7), 1000);
        let c = bipolar_vec(&mut seeded(8), 1000);
        assert_eq!(a, b);
        assert_ne!(a, c);
    }

    #[test]
    fn bipolar_is_balanced() {
        let v = bipolar_vec(&mut seeded(1), 100_000);
        assert!(v.iter().all(|&x| x == 1.0 || x == -1.0));
        let mean: f32 = v.iter().sum::<f32>() / v.len() as f32;
        // Standard error of the mean is 1/sqrt(n) ≈ 0.0032; allow 5 of them.
        assert!(mean.abs() < 0.016, "mean {mean}");
    }

    #[test]
    fn normal_has_unit_variance() {
        let v = normal_vec(&mut seeded(2), 100_000);
        let mean: f32 = v.iter().sum::<f32>() / v.len() as f32;
        let var: f32 = v.iter().map(|x| (x - mean).powi(2)).sum::<f32>() / v.len() as f32;
        assert!(
            mean.abs() < 0.016 && (var - 1.0).abs() < 0.03,
            "{mean} {var}"
        );
    }
}
