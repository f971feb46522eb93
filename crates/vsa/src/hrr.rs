//! HRR: Holographic Reduced Representations (Plate 1995, "Holographic reduced representations",
//! IEEE Trans. Neural Networks 6(3); Plate 2003, *Holographic Reduced Representation:
//! Distributed Representation for Cognitive Structures*).
//!
//! Hypervectors are real `f32` tensors of shape `[..., D]` with i.i.d. `N(0, 1/D)` entries (so
//! their norm is about 1).
//!
//! * bind: circular convolution `(a ⊛ b)_j = Σ_k a_k b_{(j−k) mod D}`, computed through the FFT
//!   (`F(a ⊛ b) = F(a)·F(b)`), with `rustfft` plans made once per model and shared by its clones;
//! * unbind: circular correlation, i.e. convolution with the *involution* `a*_i = a_{−i mod D}`, the
//!   approximate inverse Plate recommends because it is numerically stable; the result is a noisy
//!   version of the bound filler (cosine about `1/√2` for one random pair) that a codebook cleans
//!   up. [`Hrr::exact_inverse`] and [`Hrr::unbind_exact`] use `F⁻¹(1/F(a))` instead;
//! * *unitary* vectors ([`Hrr::random_unitary`], [`Hrr::make_unitary`]) have unit-magnitude
//!   Fourier coefficients; for them the involution is the exact inverse and binding preserves the
//!   norm;
//! * bundle: element-wise sum (the RNG is not used); [`Vsa::normalize`] rescales to unit norm;
//! * permute: cyclic shift. It is itself a convolution (with a shifted impulse), so it commutes
//!   with binding: `ρ(a ⊛ b) = ρ(a) ⊛ b`. Permutation-based sequences `Σ ρ^i(x_i)` work, but
//!   permuted *products* (n-grams) lose their order in HRR;
//! * similarity: cosine.
//!
//! Everything except the convolutions is a candle tensor operation. candle has no FFT, so binding
//! copies the operands to the host, transforms them there (two real rows per complex FFT) and
//! copies the result back to the operands' device.

use std::fmt;
use std::sync::Arc;

use candle_core::{Device, Tensor};
use rand::Rng;
use rustfft::num_complex::Complex32;
use rustfft::{Fft, FftPlanner};

use crate::model::{Phasor, Vsa};
use crate::util::{broadcast_pair, check_bundle_axis, check_dim, dense_batch, full_shape};
use crate::{Error, Result, dense, random};

/// FFT plans for one dimension.
struct Plans {
    forward: Arc<dyn Fft<f32>>,
    inverse: Arc<dyn Fft<f32>>,
}

impl fmt::Debug for Plans {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Plans")
            .field("len", &self.forward.len())
            .finish()
    }
}

impl Plans {
    fn new(dim: usize) -> Self {
        let mut planner = FftPlanner::<f32>::new();
        Self {
            forward: planner.plan_fft_forward(dim),
            inverse: planner.plan_fft_inverse(dim),
        }
    }

    /// In-place transform of every length-`D` chunk of `buf`.
    fn run(&self, fft: &Arc<dyn Fft<f32>>, buf: &mut [Complex32]) {
        if buf.is_empty() {
            return;
        }
        let mut scratch = vec![Complex32::new(0.0, 0.0); fft.get_inplace_scratch_len()];
        fft.process_with_scratch(buf, &mut scratch);
    }
}

/// The HRR model (Gaussian vectors, circular-convolution binding).
///
/// [`Vsa::normalize`] scales each vector to unit Euclidean norm (zero vectors stay zero).
///
/// ```
/// use candle_core::Device;
/// use recompose_vsa::{Hrr, Vsa, random::seeded};
///
/// let hrr = Hrr::new(2048, &Device::Cpu)?;
/// let mut rng = seeded(2);
/// let v = hrr.random(&[2], &mut rng)?;
/// let (role, filler) = (v.get(0)?, v.get(1)?);
/// let bound = hrr.bind(&role, &filler)?;
/// let noisy = hrr.unbind(&bound, &role)?; // correlation: approximate
/// assert!(hrr.similarity(&noisy, &filler)?.to_scalar::<f32>()? > 0.5);
/// let exact = hrr.unbind_exact(&bound, &role)?; // 1/F(role): exact up to rounding
/// assert!(hrr.similarity(&exact, &filler)?.to_scalar::<f32>()? > 0.99);
/// # Ok::<(), recompose_vsa::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct Hrr {
    dim: usize,
    device: Device,
    plans: Arc<Plans>,
}

/// The index of frequency `−k` modulo `d` (without a division).
#[inline]
fn mirror(k: usize, d: usize) -> usize {
    if k == 0 { 0 } else { d - k }
}

/// The spectrum of one of the two real rows packed in `z = F(x + i·y)`: `X_k = (Z_k + conj
/// Z_{−k})/2` for `x`, `Y_k = (Z_k − conj Z_{−k})/2i` for `y` (`odd`).
fn unpack(z: &[Complex32], odd: bool, out: &mut [Complex32]) {
    let d = z.len();
    for (k, o) in out.iter_mut().enumerate() {
        let u = z[k];
        let v = z[mirror(k, d)].conj();
        *o = if odd {
            let diff = u - v;
            Complex32::new(diff.im * 0.5, -diff.re * 0.5)
        } else {
            (u + v) * 0.5
        };
    }
}

/// Reads a tensor to the host as a flat `f32` vector.
fn host(t: &Tensor) -> Result<Vec<f32>> {
    Ok(t.contiguous()?.flatten_all()?.to_vec1::<f32>()?)
}

impl Hrr {
    /// An HRR model of dimension `dim` on `device`. FFT plans for `dim` are made here.
    pub fn new(dim: usize, device: &Device) -> Result<Self> {
        check_dim("hrr", dim)?;
        Ok(Self {
            dim,
            device: device.clone(),
            plans: Arc::new(Plans::new(dim)),
        })
    }

    fn feature(&self) -> [usize; 1] {
        [self.dim]
    }

    /// Forward FFTs of real rows packed two per complex row: packed row `j` is
    /// `F(x_{2j} + i·x_{2j+1})` (see [`unpack`]).
    fn analyze(&self, x: &[f32]) -> Vec<Complex32> {
        let d = self.dim;
        let rows = x.len() / d;
        let mut z = vec![Complex32::new(0.0, 0.0); rows.div_ceil(2) * d];
        for (r, row) in x.chunks_exact(d).enumerate() {
            let dst = &mut z[(r / 2) * d..(r / 2 + 1) * d];
            if r % 2 == 0 {
                for (c, &v) in dst.iter_mut().zip(row) {
                    c.re = v;
                }
            } else {
                for (c, &v) in dst.iter_mut().zip(row) {
                    c.im = v;
                }
            }
        }
        self.plans.run(&self.plans.forward, &mut z);
        z
    }

    /// Real rows `F⁻¹(P_r)` from conjugate-symmetric spectra `P_r` written by `spectrum(r, buf)`,
    /// two rows per complex inverse FFT (`F⁻¹(P_{2j} + i·P_{2j+1})` has real part row `2j` and
    /// imaginary part row `2j+1`). Scaled by `1/D`.
    fn synthesize(
        &self,
        rows: usize,
        mut spectrum: impl FnMut(usize, &mut [Complex32]) -> Result<()>,
    ) -> Result<Vec<f32>> {
        let d = self.dim;
        let mut q = vec![Complex32::new(0.0, 0.0); rows.div_ceil(2) * d];
        let mut tmp = vec![Complex32::new(0.0, 0.0); d];
        for r in 0..rows {
            spectrum(r, &mut tmp)?;
            let dst = &mut q[(r / 2) * d..(r / 2 + 1) * d];
            if r % 2 == 0 {
                dst.copy_from_slice(&tmp);
            } else {
                for (c, p) in dst.iter_mut().zip(&tmp) {
                    *c += Complex32::new(-p.im, p.re);
                }
            }
        }
        self.plans.run(&self.plans.inverse, &mut q);
        let scale = 1.0 / d as f32;
        let mut out = vec![0f32; rows * d];
        for (r, dst) in out.chunks_exact_mut(d).enumerate() {
            let src = &q[(r / 2) * d..(r / 2 + 1) * d];
            if r % 2 == 0 {
                for (o, c) in dst.iter_mut().zip(src) {
                    *o = c.re * scale;
                }
            } else {
                for (o, c) in dst.iter_mut().zip(src) {
                    *o = c.im * scale;
                }
            }
        }
        Ok(out)
    }

    /// `F⁻¹(f(F(a), F(b)))` element-wise over the spectra of two broadcast batches. Each row pair
    /// `(a_r, b_r)` takes one complex FFT of `a_r + i·b_r`.
    fn spectral2(
        &self,
        op: &'static str,
        a: &Tensor,
        b: &Tensor,
        f: impl Fn(Complex32, Complex32) -> Complex32,
    ) -> Result<Tensor> {
        let (a, b, batch) = broadcast_pair(op, a, b, &self.feature())?;
        let device = a.device().clone();
        let d = self.dim;
        let (x, y) = (host(&a)?, host(&b)?);
        let rows = x.len() / d;
        let mut z: Vec<Complex32> = x
            .iter()
            .zip(&y)
            .map(|(&re, &im)| Complex32::new(re, im))
            .collect();
        drop((x, y));
        self.plans.run(&self.plans.forward, &mut z);
        let out = self.synthesize(rows, |r, buf| {
            let zr = &z[r * d..(r + 1) * d];
            for (k, p) in buf.iter_mut().enumerate() {
                let u = zr[k];
                let v = zr[mirror(k, d)].conj();
                // X_k = (Z_k + conj Z_{−k})/2, Y_k = (Z_k − conj Z_{−k})/2i.
                let xk = (u + v) * 0.5;
                let diff = u - v;
                let yk = Complex32::new(diff.im * 0.5, -diff.re * 0.5);
                *p = f(xk, yk);
            }
            Ok(())
        })?;
        Ok(Tensor::from_vec(
            out,
            full_shape(&batch, &self.feature()),
            &device,
        )?)
    }

    /// `F⁻¹(f(F(a)))` for each vector of a batch; `f` transforms one spectrum in place and may
    /// refuse it.
    fn spectral1(
        &self,
        op: &'static str,
        a: &Tensor,
        f: impl Fn(&mut [Complex32]) -> Result<()>,
    ) -> Result<Tensor> {
        let batch = dense_batch(op, a, &self.feature())?;
        let d = self.dim;
        let rows: usize = batch.iter().product();
        let z = self.analyze(&host(a)?);
        let out = self.synthesize(rows, |r, buf| {
            unpack(&z[(r / 2) * d..(r / 2 + 1) * d], r % 2 == 1, buf);
            f(buf)
        })?;
        Ok(Tensor::from_vec(
            out,
            full_shape(&batch, &self.feature()),
            a.device(),
        )?)
    }

    /// The exact inverse `F⁻¹(1/F(a))`, so that `a ⊛ exact_inverse(a)` is the identity.
    ///
    /// Random Gaussian vectors are invertible but often ill-conditioned (some Fourier coefficients
    /// are small), which amplifies noise; a vector with a (numerically) zero Fourier coefficient
    /// gives [`Error::NotInvertible`].
    pub fn exact_inverse(&self, a: &Tensor) -> Result<Tensor> {
        self.spectral1("hrr.exact_inverse", a, |row| {
            let mean: f32 = row.iter().map(|c| c.norm_sqr()).sum::<f32>() / row.len() as f32;
            let floor = mean * 1e-12;
            for c in row.iter_mut() {
                let n = c.norm_sqr();
                if n.is_nan() || n <= floor {
                    return Err(Error::NotInvertible(
                        "HRR vector with a zero Fourier coefficient".into(),
                    ));
                }
                *c = c.conj() / n;
            }
            Ok(())
        })
    }

    /// Unbinds with the exact inverse of `key` (see [`Hrr::exact_inverse`]).
    pub fn unbind_exact(&self, bound: &Tensor, key: &Tensor) -> Result<Tensor> {
        let inv = self.exact_inverse(key)?;
        self.bind(bound, &inv)
    }

    /// Projects vectors onto the unitary ones: every Fourier coefficient divided by its magnitude
    /// (zero coefficients become 1).
    pub fn make_unitary(&self, a: &Tensor) -> Result<Tensor> {
        self.spectral1("hrr.make_unitary", a, |row| {
            for c in row.iter_mut() {
                let n = c.norm();
                *c = if n > 0.0 {
                    *c / n
                } else {
                    Complex32::new(1.0, 0.0)
                };
            }
            Ok(())
        })
    }

    /// Random unitary vectors (unit-magnitude Fourier coefficients with uniform random phases,
    /// conjugate-symmetric so the vectors are real). They have unit norm, their involution is their
    /// exact inverse, and binding with them preserves norms.
    pub fn random_unitary<R: Rng + ?Sized>(&self, batch: &[usize], rng: &mut R) -> Result<Tensor> {
        let m = self.phase_count();
        let phases = random::uniform(
            rng,
            &full_shape(batch, &[m]),
            -std::f32::consts::PI,
            std::f32::consts::PI,
            &self.device,
        )?;
        self.phase_vectors(&phases)
    }
}

impl Vsa for Hrr {
    type Vector = Tensor;

    fn name(&self) -> &'static str {
        "hrr"
    }

    fn dim(&self) -> usize {
        self.dim
    }

    fn device(&self) -> &Device {
        &self.device
    }

    fn batch_shape(&self, v: &Tensor) -> Result<Vec<usize>> {
        dense_batch("hrr", v, &self.feature())
    }

    /// I.i.d. `N(0, 1/D)` entries.
    fn random<R: Rng + ?Sized>(&self, batch: &[usize], rng: &mut R) -> Result<Tensor> {
        let t = random::normal(rng, &full_shape(batch, &self.feature()), &self.device)?;
        Ok((t * (1.0 / (self.dim as f64).sqrt()))?)
    }

    /// The unit impulse `[1, 0, …, 0]`.
    fn identity(&self, batch: &[usize]) -> Result<Tensor> {
        let mut v = vec![0f32; self.dim];
        v[0] = 1.0;
        let row = Tensor::from_vec(v, self.dim, &self.device)?;
        Ok(row
            .broadcast_as(full_shape(batch, &self.feature()))?
            .contiguous()?)
    }

    /// Circular convolution.
    fn bind(&self, a: &Tensor, b: &Tensor) -> Result<Tensor> {
        self.spectral2("hrr.bind", a, b, |u, v| u * v)
    }

    /// Circular correlation (convolution with the involution of `key`).
    fn unbind(&self, bound: &Tensor, key: &Tensor) -> Result<Tensor> {
        self.spectral2("hrr.unbind", bound, key, |u, v| u * v.conj())
    }

    /// The involution `a*_i = a_{−i mod D}` (Plate's approximate inverse).
    fn inverse(&self, a: &Tensor) -> Result<Tensor> {
        self.batch_shape(a)?;
        let d = self.dim as u32;
        let ids: Vec<u32> = (0..d).map(|i| (d - i) % d).collect();
        let ids = Tensor::from_vec(ids, self.dim, a.device())?;
        Ok(a.index_select(&ids, a.rank() - 1)?)
    }

    /// Element-wise sum (the RNG is not used).
    fn bundle<R: Rng + ?Sized>(&self, xs: &Tensor, axis: usize, _rng: &mut R) -> Result<Tensor> {
        let batch = dense_batch("hrr.bundle", xs, &self.feature())?;
        check_bundle_axis("hrr.bundle", &batch, axis)?;
        dense::sum_axis(xs, axis)
    }

    fn permute(&self, a: &Tensor, shift: isize) -> Result<Tensor> {
        self.batch_shape(a)?;
        dense::permute(a, shift, self.dim)
    }

    fn dot(&self, a: &Tensor, b: &Tensor) -> Result<Tensor> {
        dense::dot("hrr.dot", a, b, &self.feature())
    }

    fn cosine(&self, a: &Tensor, b: &Tensor) -> Result<Tensor> {
        dense::cosine("hrr.cosine", a, b, &self.feature())
    }

    /// Cosine similarity.
    fn similarity(&self, a: &Tensor, b: &Tensor) -> Result<Tensor> {
        dense::cosine("hrr.similarity", a, b, &self.feature())
    }

    fn similarity_matrix(&self, queries: &Tensor, items: &Tensor) -> Result<Tensor> {
        dense::similarity_matrix(
            "hrr.similarity_matrix",
            queries,
            items,
            &self.feature(),
            true,
            1.0,
        )
    }

    /// Unit Euclidean norm (zero vectors stay zero).
    fn normalize(&self, a: &Tensor) -> Result<Tensor> {
        self.batch_shape(a)?;
        dense::unit_rows(a, 1)
    }

    fn flip(&self, a: &Tensor, mask: &[bool]) -> Result<Tensor> {
        dense::flip("hrr.flip", a, mask, &self.feature())
    }

    fn negate(&self, a: &Tensor) -> Result<Tensor> {
        self.batch_shape(a)?;
        Ok(a.neg()?)
    }

    fn select(&self, v: &Tensor, indices: &[usize]) -> Result<Tensor> {
        dense::select("hrr.select", v, indices, &self.feature())
    }

    fn concat(&self, parts: &[Tensor]) -> Result<Tensor> {
        dense::concat("hrr.concat", parts, &self.feature())
    }

    fn reshape(&self, v: &Tensor, batch: &[usize]) -> Result<Tensor> {
        dense::reshape("hrr.reshape", v, batch, &self.feature())
    }
}

impl Phasor for Hrr {
    /// `⌊(D−1)/2⌋`: the Fourier phases of frequencies `1..=⌊(D−1)/2⌋`; the DC coefficient (and the
    /// Nyquist one for even `D`) is 1 and the negative frequencies are the conjugates.
    fn phase_count(&self) -> usize {
        (self.dim - 1) / 2
    }

    /// The real unitary vectors with Fourier coefficients `e^{iφ_k}` (unit norm).
    fn phase_vectors(&self, phases: &Tensor) -> Result<Tensor> {
        let m = self.phase_count();
        let batch = dense_batch("hrr.phase_vectors", phases, &[m])?;
        let re = host(&phases.cos()?)?;
        let im = host(&phases.sin()?)?;
        let d = self.dim;
        let rows: usize = batch.iter().product();
        let out = self.synthesize(rows, |r, buf| {
            buf.fill(Complex32::new(1.0, 0.0));
            for k in 1..=m {
                let c = Complex32::new(re[r * m + k - 1], im[r * m + k - 1]);
                buf[k] = c;
                buf[d - k] = c.conj();
            }
            Ok(())
        })?;
        Ok(Tensor::from_vec(
            out,
            full_shape(&batch, &self.feature()),
            phases.device(),
        )?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The definition: `(a ⊛ b)_j = Σ_k a_k b_{(j−k) mod D}`.
    fn naive_conv(a: &[f32], b: &[f32]) -> Vec<f32> {
        let d = a.len();
        (0..d)
            .map(|j| (0..d).map(|k| a[k] * b[(j + d - k) % d]).sum())
            .collect()
    }

    #[test]
    fn fft_convolution_matches_definition() -> Result<()> {
        let mut rng = random::seeded(11);
        for d in [1, 2, 5, 16, 31, 100] {
            let hrr = Hrr::new(d, &Device::Cpu)?;
            // Three rows exercise both halves of the row pairing.
            let a = hrr.random(&[3], &mut rng)?;
            let b = hrr.random(&[3], &mut rng)?;
            let c = host(&hrr.bind(&a, &b)?)?;
            let (ha, hb) = (host(&a)?, host(&b)?);
            for r in 0..3 {
                let expect = naive_conv(&ha[r * d..(r + 1) * d], &hb[r * d..(r + 1) * d]);
                for (x, y) in c[r * d..(r + 1) * d].iter().zip(&expect) {
                    assert!((x - y).abs() < 1e-5, "d {d}: {x} vs {y}");
                }
            }
        }
        Ok(())
    }
}
