//! MAP: Multiply–Add–Permute (Gayler 1998, "Multiplicative binding, representation operators and
//! analogy"; Gayler 2003, "Vector Symbolic Architectures answer Jackendoff's challenges for
//! cognitive neuroscience").
//!
//! Hypervectors are bipolar (`±1`) `f32` tensors of shape `[..., D]`.
//!
//! * bind / unbind: element-wise product; every bipolar vector is its own inverse, so
//!   `unbind(bind(a, b), b) = a` exactly;
//! * bundle: element-wise sum, followed (by default) by the sign to return to bipolar vectors
//!   ("MAP-B"); coordinates where the sum is exactly 0 (possible for an even number of inputs) get
//!   an independent random sign drawn from the caller's RNG (see [`Map::sign_with_ties`]). With [`MapBundling::Sum`] the sum is
//!   kept ("MAP-I": integer vectors, which bind, permute and compare the same way);
//! * permute: cyclic shift of the coordinates;
//! * similarity: cosine (equal to `dot / D` for bipolar vectors); Hamming distance counts the
//!   coordinates whose signs differ.
//!
//! All operations are candle tensor operations, so a model built on a GPU device runs there.

use candle_core::{D as Axis, DType, Device, Tensor};
use rand::Rng;
use recompose_core::memory::Estimate;

use crate::model::{Hamming, Vsa};
use crate::util::{broadcast_pair, check_bundle_axis, check_dim, dense_batch, full_shape};
use crate::{Result, dense, random};

/// How [`Map`] bundles.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum MapBundling {
    /// Sum, then sign; exact ties get a random sign from the caller's RNG (bipolar MAP-B).
    #[default]
    Sign,
    /// Plain sum (integer MAP-I); the RNG is not used. [`Vsa::normalize`] re-binarizes later.
    Sum,
}

/// The MAP model (bipolar vectors, element-wise product binding).
///
/// [`Vsa::normalize`] maps a vector to its sign with the deterministic rule `sign(0) = +1`.
///
/// ```
/// use candle_core::Device;
/// use recompose_vsa::{Map, Vsa, random::seeded};
///
/// let map = Map::new(1024, &Device::Cpu)?;
/// let mut rng = seeded(1);
/// let ab = map.random(&[2], &mut rng)?;
/// let (a, b) = (ab.get(0)?, ab.get(1)?);
/// let bound = map.bind(&a, &b)?;
/// // Binding is exactly invertible ...
/// let back = map.unbind(&bound, &b)?;
/// assert_eq!(back.to_vec1::<f32>()?, a.to_vec1::<f32>()?);
/// // ... and the bound vector resembles neither operand.
/// assert!(map.similarity(&bound, &a)?.to_scalar::<f32>()?.abs() < 0.15);
/// # Ok::<(), recompose_vsa::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct Map {
    dim: usize,
    device: Device,
    bundling: MapBundling,
}

impl Map {
    /// A MAP model of dimension `dim` on `device`, bundling with [`MapBundling::Sign`].
    pub fn new(dim: usize, device: &Device) -> Result<Self> {
        check_dim("map", dim)?;
        Ok(Self {
            dim,
            device: device.clone(),
            bundling: MapBundling::Sign,
        })
    }

    /// The same model with another bundling rule.
    pub fn with_bundling(mut self, bundling: MapBundling) -> Self {
        self.bundling = bundling;
        self
    }

    /// The bundling rule.
    pub fn bundling(&self) -> MapBundling {
        self.bundling
    }

    /// Sign of `t` with exact zeros replaced by independent random signs from `rng`.
    ///
    /// Random signs are drawn (one per coordinate of `t`) only when `t` has a zero, so odd-sized
    /// bundles of bipolar vectors never touch the RNG.
    pub fn sign_with_ties<R: Rng + ?Sized>(&self, t: &Tensor, rng: &mut R) -> Result<Tensor> {
        let batch = self.batch_shape(t)?;
        let sign = t.sign()?;
        let ties = t.eq(0.0)?;
        if !dense::any(&ties)? {
            return Ok(sign);
        }
        let shape = full_shape(&batch, &[self.dim]);
        let coin = random::bipolar(rng, &shape, t.device())?;
        Ok(ties.where_cond(&coin, &sign)?)
    }

    fn feature(&self) -> [usize; 1] {
        [self.dim]
    }
}

impl Vsa for Map {
    type Vector = Tensor;

    fn name(&self) -> &'static str {
        "map"
    }

    fn dim(&self) -> usize {
        self.dim
    }

    fn device(&self) -> &Device {
        &self.device
    }

    fn batch_shape(&self, v: &Tensor) -> Result<Vec<usize>> {
        dense_batch("map", v, &self.feature())
    }

    /// The ±1 draw itself, `count`·D·4 bytes.
    fn random_bytes(&self, count: usize) -> Estimate {
        Estimate::f32s(&[count, self.dim])
    }

    fn random<R: Rng + ?Sized>(&self, batch: &[usize], rng: &mut R) -> Result<Tensor> {
        Ok(random::bipolar(
            rng,
            &full_shape(batch, &self.feature()),
            &self.device,
        )?)
    }

    fn identity(&self, batch: &[usize]) -> Result<Tensor> {
        Ok(Tensor::ones(
            full_shape(batch, &self.feature()),
            DType::F32,
            &self.device,
        )?)
    }

    fn bind(&self, a: &Tensor, b: &Tensor) -> Result<Tensor> {
        let (a, b, _) = broadcast_pair("map.bind", a, b, &self.feature())?;
        Ok((a * b)?)
    }

    fn unbind(&self, bound: &Tensor, key: &Tensor) -> Result<Tensor> {
        let (a, b, _) = broadcast_pair("map.unbind", bound, key, &self.feature())?;
        Ok((a * b)?)
    }

    /// Every bipolar vector is its own inverse, so this returns `a` unchanged.
    fn inverse(&self, a: &Tensor) -> Result<Tensor> {
        self.batch_shape(a)?;
        Ok(a.clone())
    }

    fn bundle<R: Rng + ?Sized>(&self, xs: &Tensor, axis: usize, rng: &mut R) -> Result<Tensor> {
        let batch = dense_batch("map.bundle", xs, &self.feature())?;
        check_bundle_axis("map.bundle", &batch, axis)?;
        let sum = dense::sum_axis(xs, axis)?;
        match self.bundling {
            MapBundling::Sum => Ok(sum),
            MapBundling::Sign => self.sign_with_ties(&sum, rng),
        }
    }

    fn permute(&self, a: &Tensor, shift: isize) -> Result<Tensor> {
        self.batch_shape(a)?;
        dense::permute(a, shift, self.dim)
    }

    fn dot(&self, a: &Tensor, b: &Tensor) -> Result<Tensor> {
        dense::dot("map.dot", a, b, &self.feature())
    }

    fn cosine(&self, a: &Tensor, b: &Tensor) -> Result<Tensor> {
        dense::cosine("map.cosine", a, b, &self.feature())
    }

    /// Cosine similarity.
    fn similarity(&self, a: &Tensor, b: &Tensor) -> Result<Tensor> {
        dense::cosine("map.similarity", a, b, &self.feature())
    }

    fn similarity_matrix(&self, queries: &Tensor, items: &Tensor) -> Result<Tensor> {
        dense::similarity_matrix(
            "map.similarity_matrix",
            queries,
            items,
            &self.feature(),
            true,
            1.0,
        )
    }

    /// Sign, with `sign(0) = +1`.
    fn normalize(&self, a: &Tensor) -> Result<Tensor> {
        self.batch_shape(a)?;
        Ok(dense::mask_f32(&a.ge(0.0)?)?.affine(2.0, -1.0)?)
    }

    fn flip(&self, a: &Tensor, mask: &[bool]) -> Result<Tensor> {
        dense::flip("map.flip", a, mask, &self.feature())
    }

    fn negate(&self, a: &Tensor) -> Result<Tensor> {
        self.batch_shape(a)?;
        Ok(a.neg()?)
    }

    fn select(&self, v: &Tensor, indices: &[usize]) -> Result<Tensor> {
        dense::select("map.select", v, indices, &self.feature())
    }

    fn concat(&self, parts: &[Tensor]) -> Result<Tensor> {
        dense::concat("map.concat", parts, &self.feature())
    }

    fn reshape(&self, v: &Tensor, batch: &[usize]) -> Result<Tensor> {
        dense::reshape("map.reshape", v, batch, &self.feature())
    }
}

impl Hamming for Map {
    /// The number of coordinates whose signs differ (with `sign(0) = +1`).
    fn hamming(&self, a: &Tensor, b: &Tensor) -> Result<Tensor> {
        let (a, b, _) = broadcast_pair("map.hamming", a, b, &self.feature())?;
        let differ = a.ge(0.0)?.ne(&b.ge(0.0)?)?;
        Ok(dense::mask_f32(&differ)?.sum(Axis::Minus1)?)
    }
}
