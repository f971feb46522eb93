//! Seeded random draws.
//!
//! candle's CPU generator cannot be seeded (`Device::Cpu.set_seed` fails and `randn` is seeded by
//! the operating system), so every random number in this crate comes from a caller-supplied
//! [`SeededRng`] and reaches the device through [`Tensor::from_vec`]. The same seed gives the same
//! samples on every device.

use candle_core::{DType, Device, Tensor};
use rand::SeedableRng;
use rand_distr::{Distribution, StandardNormal};

use crate::Result;

/// The RNG of recompose: ChaCha with 8 rounds, fast and reproducible across platforms. The same
/// type as `recompose_vsa::random::SeededRng`.
pub type SeededRng = rand_chacha::ChaCha8Rng;

/// A [`SeededRng`] from a 64-bit seed.
pub fn seeded(seed: u64) -> SeededRng {
    SeededRng::seed_from_u64(seed)
}

/// `n` independent standard normal `f32` values.
pub fn normal_vec(rng: &mut SeededRng, n: usize) -> Vec<f32> {
    (0..n)
        .map(|_| {
            let z: f32 = StandardNormal.sample(rng);
            z
        })
        .collect()
}

/// A tensor of independent standard normal values with the given shape, dtype and device, drawn
/// in row-major order as `f32` and converted.
///
/// # Errors
///
/// [`crate::Error::Candle`] if the tensor cannot be built or converted.
pub fn normal_tensor(
    rng: &mut SeededRng,
    shape: &[usize],
    dtype: DType,
    device: &Device,
) -> Result<Tensor> {
    let n = shape.iter().product();
    Ok(Tensor::from_vec(normal_vec(rng, n), shape, device)?.to_dtype(dtype)?)
}
