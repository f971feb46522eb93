//! FHRR: Fourier Holographic Reduced Representations (Plate 1994, "Distributed representations
//! and nested compositional structure", PhD thesis, ch. 4; Plate 2003, *Holographic Reduced
//! Representation*, §4.4).
//!
//! Hypervectors are vectors of `D` unit phasors `e^{iθ_j}` — the Fourier-domain view of HRR, in
//! which circular convolution becomes an element-wise product.
//!
//! # Representation
//!
//! candle has no complex dtype, so a batch of FHRR vectors is an `f32` tensor of shape
//! `[..., 2, D]`: index 0 of the second-to-last axis holds the real parts `cos θ_j`, index 1 the
//! imaginary parts `sin θ_j`. This keeps every operation a plain tensor operation (GPU friendly),
//! makes binding an exact complex product (no angle wrapping), makes bundling a true sum of
//! phasors, and lets a codebook `[M, 2, D]` be compared with queries by a single matrix
//! multiplication over the flattened `2D` axis. Use [`Fhrr::from_angles`], [`Fhrr::from_parts`],
//! [`Fhrr::real`] and [`Fhrr::imag`] to convert.
//!
//! * bind: element-wise complex product (angles add); unbind multiplies by the conjugate, which is
//!   the exact inverse of a unit phasor, so round trips are exact up to `f32` rounding;
//! * bundle: sum of the phasors, then each coordinate divided by its magnitude ("phase
//!   normalization"); a coordinate whose sum cancels (magnitude at most `1e-6·n` for `n` inputs)
//!   gets a random phase from the caller's RNG (drawn only when some coordinate cancelled);
//! * permute: cyclic shift of the `D` coordinates (real and imaginary parts move together);
//! * similarity: `Re⟨a, b⟩ / D = mean_j cos(θ_j − φ_j)`; `dot` is `Re⟨a, b⟩`, `cosine` the cosine of
//!   the `2D` real vectors (equal to the similarity for unit phasors).

use candle_core::{DType, Device, Tensor};
use rand::Rng;
use recompose_core::memory::Estimate;

use crate::model::{Phasor, Vsa};
use crate::util::{broadcast_pair, check_bundle_axis, check_dim, dense_batch, full_shape};
use crate::{Result, dense, random};

/// Magnitude (per bundled vector) below which a bundled coordinate counts as cancelled.
const CANCEL_TOL: f64 = 1e-6;

/// The FHRR model (unit phasors stored as `[..., 2, D]` real/imaginary planes).
///
/// [`Vsa::normalize`] divides every coordinate by its magnitude; a zero coordinate becomes `1`
/// (phase 0).
///
/// ```
/// use candle_core::{Device, Tensor};
/// use recompose_vsa::{Fhrr, Vsa, random::seeded};
///
/// let fhrr = Fhrr::new(512, &Device::Cpu)?;
/// let mut rng = seeded(4);
/// let v = fhrr.random(&[2], &mut rng)?; // shape [2, 2, 512]
/// assert_eq!(v.dims(), &[2, 2, 512]);
/// let (a, b) = (v.get(0)?, v.get(1)?);
/// let back = fhrr.unbind(&fhrr.bind(&a, &b)?, &b)?;
/// assert!(fhrr.similarity(&back, &a)?.to_scalar::<f32>()? > 0.9999);
/// // Angles add under binding.
/// let fhrr2 = Fhrr::new(2, &Device::Cpu)?;
/// let x = fhrr2.from_angles(&Tensor::new(&[0.5f32, -1.0], &Device::Cpu)?)?;
/// let y = fhrr2.from_angles(&Tensor::new(&[0.25f32, 2.0], &Device::Cpu)?)?;
/// let xy = fhrr2.from_angles(&Tensor::new(&[0.75f32, 1.0], &Device::Cpu)?)?;
/// let s = fhrr2.similarity(&fhrr2.bind(&x, &y)?, &xy)?.to_scalar::<f32>()?;
/// assert!((s - 1.0).abs() < 1e-6);
/// # Ok::<(), recompose_vsa::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct Fhrr {
    dim: usize,
    device: Device,
}

impl Fhrr {
    /// An FHRR model of dimension `dim` (number of phasors) on `device`.
    pub fn new(dim: usize, device: &Device) -> Result<Self> {
        check_dim("fhrr", dim)?;
        Ok(Self {
            dim,
            device: device.clone(),
        })
    }

    fn feature(&self) -> [usize; 2] {
        [2, self.dim]
    }

    /// Unit phasors `e^{iθ}` from angles `θ` of shape `[..., D]` (in radians).
    pub fn from_angles(&self, angles: &Tensor) -> Result<Tensor> {
        let batch = dense_batch("fhrr.from_angles", angles, &[self.dim])?;
        Ok(Tensor::stack(&[angles.cos()?, angles.sin()?], batch.len())?)
    }

    /// The phases of random vectors: angles uniform in [-π, π), shape `[batch..., D]`.
    /// [`Vsa::random`] is `from_angles(random_angles(..))` on the same stream of draws, so a
    /// caller that needs the exact phases (to bind in higher precision, say) draws them here.
    pub fn random_angles<R: Rng + ?Sized>(&self, batch: &[usize], rng: &mut R) -> Result<Tensor> {
        let pi = std::f32::consts::PI;
        Ok(random::uniform(
            rng,
            &full_shape(batch, &[self.dim]),
            -pi,
            pi,
            &self.device,
        )?)
    }

    /// Vectors from real and imaginary parts, both `[..., D]` of equal shape. They are used as
    /// given (call [`Vsa::normalize`] to project onto unit phasors).
    pub fn from_parts(&self, re: &Tensor, im: &Tensor) -> Result<Tensor> {
        let b1 = dense_batch("fhrr.from_parts", re, &[self.dim])?;
        let b2 = dense_batch("fhrr.from_parts", im, &[self.dim])?;
        if b1 != b2 {
            return Err(crate::Error::Shape {
                op: "fhrr.from_parts",
                msg: format!("real and imaginary parts differ in shape: {b1:?} vs {b2:?}"),
            });
        }
        Ok(Tensor::stack(&[re, im], b1.len())?)
    }

    /// Real parts `[..., D]`.
    pub fn real(&self, v: &Tensor) -> Result<Tensor> {
        let batch = self.batch_shape(v)?;
        Ok(v.narrow(batch.len(), 0, 1)?.squeeze(batch.len())?)
    }

    /// Imaginary parts `[..., D]`.
    pub fn imag(&self, v: &Tensor) -> Result<Tensor> {
        let batch = self.batch_shape(v)?;
        Ok(v.narrow(batch.len(), 1, 1)?.squeeze(batch.len())?)
    }

    /// Complex product `a · b` (or `a · conj b`) of two broadcast batches.
    fn product(&self, op: &'static str, a: &Tensor, b: &Tensor, conj_b: bool) -> Result<Tensor> {
        let (a, b, batch) = broadcast_pair(op, a, b, &self.feature())?;
        let ax = batch.len();
        let (ar, ai) = (a.narrow(ax, 0, 1)?, a.narrow(ax, 1, 1)?);
        let (br, bi) = (b.narrow(ax, 0, 1)?, b.narrow(ax, 1, 1)?);
        let (re, im) = if conj_b {
            (
                ((&ar * &br)? + (&ai * &bi)?)?,
                ((&ai * &br)? - (&ar * &bi)?)?,
            )
        } else {
            (
                ((&ar * &br)? - (&ai * &bi)?)?,
                ((&ar * &bi)? + (&ai * &br)?)?,
            )
        };
        Ok(Tensor::cat(&[re, im], ax)?)
    }

    /// Magnitudes `[..., 1, D]` of the coordinates of `v` (with batch rank `ax`).
    fn magnitudes(v: &Tensor, ax: usize) -> Result<Tensor> {
        Ok(v.sqr()?.sum_keepdim(ax)?.sqrt()?)
    }

    /// Divides each coordinate of `v` (batch rank `ax`) by its magnitude; coordinates with
    /// magnitude `<= tol` are taken from `fallback()` (a batch of the same shape), which is only
    /// called when there are such coordinates.
    fn phase_normalize(
        v: &Tensor,
        ax: usize,
        tol: f64,
        fallback: impl FnOnce() -> Result<Tensor>,
    ) -> Result<Tensor> {
        let mag = Self::magnitudes(v, ax)?;
        let unit = v.broadcast_div(&mag.maximum(f64::MIN_POSITIVE)?)?;
        let cancelled = mag.le(tol)?;
        if !dense::any(&cancelled)? {
            return Ok(unit);
        }
        let cancelled = cancelled.broadcast_as(v.shape())?.contiguous()?;
        Ok(cancelled.where_cond(&fallback()?, &unit)?)
    }
}

impl Vsa for Fhrr {
    type Vector = Tensor;

    fn name(&self) -> &'static str {
        "fhrr"
    }

    fn dim(&self) -> usize {
        self.dim
    }

    fn device(&self) -> &Device {
        &self.device
    }

    fn batch_shape(&self, v: &Tensor) -> Result<Vec<usize>> {
        dense_batch("fhrr", v, &self.feature())
    }

    /// Phases uniform on `[−π, π)`.
    /// The angles, their cosines and sines and the stacked parts: 5·`count`·D·4 bytes.
    fn random_bytes(&self, count: usize) -> Estimate {
        Estimate::f32s(&[count, self.dim]) * 5
    }

    fn random<R: Rng + ?Sized>(&self, batch: &[usize], rng: &mut R) -> Result<Tensor> {
        self.from_angles(&self.random_angles(batch, rng)?)
    }

    /// All phases 0 (`1 + 0i`).
    fn identity(&self, batch: &[usize]) -> Result<Tensor> {
        let shape = full_shape(batch, &[self.dim]);
        let one = Tensor::ones(shape.clone(), DType::F32, &self.device)?;
        let zero = Tensor::zeros(shape, DType::F32, &self.device)?;
        Ok(Tensor::stack(&[one, zero], batch.len())?)
    }

    /// Element-wise complex product (phases add).
    fn bind(&self, a: &Tensor, b: &Tensor) -> Result<Tensor> {
        self.product("fhrr.bind", a, b, false)
    }

    /// Product with the conjugate of `key` (phases subtract).
    fn unbind(&self, bound: &Tensor, key: &Tensor) -> Result<Tensor> {
        self.product("fhrr.unbind", bound, key, true)
    }

    /// The complex conjugate (exact inverse of unit phasors).
    fn inverse(&self, a: &Tensor) -> Result<Tensor> {
        self.batch_shape(a)?;
        let conj = Tensor::new(&[[1f32], [-1f32]], a.device())?;
        Ok(a.broadcast_mul(&conj)?)
    }

    /// Sum of phasors, then phase normalization; exactly cancelled coordinates get a random phase.
    fn bundle<R: Rng + ?Sized>(&self, xs: &Tensor, axis: usize, rng: &mut R) -> Result<Tensor> {
        let batch = dense_batch("fhrr.bundle", xs, &self.feature())?;
        let n = check_bundle_axis("fhrr.bundle", &batch, axis)?;
        let sum = dense::sum_axis(xs, axis)?;
        let mut out_batch = batch;
        out_batch.remove(axis);
        let tol = CANCEL_TOL * n as f64;
        Self::phase_normalize(&sum, out_batch.len(), tol, || {
            Ok(self.random(&out_batch, rng)?.to_device(xs.device())?)
        })
    }

    fn permute(&self, a: &Tensor, shift: isize) -> Result<Tensor> {
        self.batch_shape(a)?;
        dense::permute(a, shift, self.dim)
    }

    /// `Re⟨a, b⟩ = Σ_j Re(a_j · conj b_j)`.
    fn dot(&self, a: &Tensor, b: &Tensor) -> Result<Tensor> {
        dense::dot("fhrr.dot", a, b, &self.feature())
    }

    fn cosine(&self, a: &Tensor, b: &Tensor) -> Result<Tensor> {
        dense::cosine("fhrr.cosine", a, b, &self.feature())
    }

    /// `Re⟨a, b⟩ / D`, the mean cosine of the phase differences.
    fn similarity(&self, a: &Tensor, b: &Tensor) -> Result<Tensor> {
        Ok((dense::dot("fhrr.similarity", a, b, &self.feature())? / self.dim as f64)?)
    }

    fn similarity_matrix(&self, queries: &Tensor, items: &Tensor) -> Result<Tensor> {
        dense::similarity_matrix(
            "fhrr.similarity_matrix",
            queries,
            items,
            &self.feature(),
            false,
            1.0 / self.dim as f64,
        )
    }

    /// Each coordinate divided by its magnitude; zero coordinates become `1`.
    fn normalize(&self, a: &Tensor) -> Result<Tensor> {
        let batch = self.batch_shape(a)?;
        Self::phase_normalize(a, batch.len(), 0.0, || {
            Ok(self.identity(&batch)?.to_device(a.device())?)
        })
    }

    /// Multiplies the selected phasors by −1 (rotates them by π).
    fn flip(&self, a: &Tensor, mask: &[bool]) -> Result<Tensor> {
        dense::flip("fhrr.flip", a, mask, &self.feature())
    }

    fn negate(&self, a: &Tensor) -> Result<Tensor> {
        self.batch_shape(a)?;
        Ok(a.neg()?)
    }

    fn select(&self, v: &Tensor, indices: &[usize]) -> Result<Tensor> {
        dense::select("fhrr.select", v, indices, &self.feature())
    }

    fn concat(&self, parts: &[Tensor]) -> Result<Tensor> {
        dense::concat("fhrr.concat", parts, &self.feature())
    }

    fn reshape(&self, v: &Tensor, batch: &[usize]) -> Result<Tensor> {
        dense::reshape("fhrr.reshape", v, batch, &self.feature())
    }
}

impl Phasor for Fhrr {
    /// `D`: one phase per coordinate.
    fn phase_count(&self) -> usize {
        self.dim
    }

    /// Same as [`Fhrr::from_angles`].
    fn phase_vectors(&self, phases: &Tensor) -> Result<Tensor> {
        self.from_angles(phases)
    }
}
