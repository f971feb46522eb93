//! Encodings of numbers into hypervectors.
//!
//! * [`LevelEncoder`]: `L` quantization levels of an interval, built by progressive flipping
//!   (Rachkovskij, Slipchenko, Kussul, Baidyk 2005, "Sparse binary distributed encoding of scalars";
//!   Kanerva 2009; the "level hypervectors" of Rahimi et al. 2016, "A robust and energy-efficient
//!   classifier using brain-inspired hyperdimensional computing"). Neighbouring levels are
//!   similar and similarity falls linearly with the distance between levels; the two extremes are
//!   orthogonal.
//! * [`CircularEncoder`]: the same on a circle (angles, times of day; Nunes et al. 2022,
//!   "Extension of hyperdimensional computing to circular data"): the first and last levels are
//!   neighbours, opposite levels are orthogonal.
//! * [`FpeEncoder`]: fractional power encoding (Plate 1992/1995, "fractional binding"; Komer,
//!   Stewart, Voelker, Eliasmith 2019, "A neural representation of continuous space using
//!   fractional binding"; Frady, Kleyko, Kymn, Olshausen, Sommer 2021, "Computing on functions
//!   using randomized vector representations"). A base vector of phasors `e^{iφ_j}` is raised to a
//!   real power `x`, giving `e^{iφ_j x}`; binding adds exponents (`z(x) ⊗ z(y) = z(x + y)`) and the
//!   similarity of `z(x)` and `z(y)` approximates a shift-invariant kernel `K(x − y)` whose shape is
//!   the characteristic function of the phase distribution.

use candle_core::Tensor;
use rand::Rng;
use rand::seq::SliceRandom;

use crate::model::{Phasor, Vsa};
use crate::util::dense_batch;
use crate::{Error, Result, random};

/// Coordinate masks: for each level, the coordinates (by random rank) that are flipped.
fn flipped_masks<R: Rng + ?Sized>(
    d: usize,
    ranges: &[std::ops::Range<usize>],
    rng: &mut R,
) -> Vec<Vec<bool>> {
    let mut order: Vec<usize> = (0..d).collect();
    order.shuffle(rng);
    ranges
        .iter()
        .map(|r| {
            let mut mask = vec![false; d];
            for &c in &order[r.clone()] {
                mask[c] = true;
            }
            mask
        })
        .collect()
}

/// A base vector and its flipped variants, stacked into a batch `[L]`.
fn build_levels<M: Vsa, R: Rng + ?Sized>(
    model: &M,
    ranges: &[std::ops::Range<usize>],
    rng: &mut R,
) -> Result<M::Vector> {
    let base = model.random(&[], rng)?;
    let masks = flipped_masks(model.dim(), ranges, rng);
    let levels = masks
        .iter()
        .map(|m| model.flip(&base, m))
        .collect::<Result<Vec<_>>>()?;
    model.stack(&levels)
}

/// Nearest level for each query of a batch, in row-major order.
fn nearest_levels<M: Vsa>(model: &M, levels: &M::Vector, query: &M::Vector) -> Result<Vec<usize>> {
    let sims = model.similarity_matrix(query, levels)?;
    let idx = sims
        .argmax(candle_core::D::Minus1)?
        .flatten_all()?
        .to_vec1::<u32>()?;
    Ok(idx.into_iter().map(|i| i as usize).collect())
}

fn check_single<M: Vsa>(model: &M, op: &'static str, v: &M::Vector) -> Result<()> {
    let batch = model.batch_shape(v)?;
    if batch.iter().any(|&b| b != 1) {
        return Err(Error::Shape {
            op,
            msg: format!("expected a single vector, got batch shape {batch:?}"),
        });
    }
    Ok(())
}

fn finite(op: &str, x: f64) -> Result<f64> {
    if x.is_finite() {
        Ok(x)
    } else {
        Err(Error::Config(format!(
            "{op}: cannot encode non-finite value {x}"
        )))
    }
}

/// Level (thermometer-like) encoding of the interval `[lo, hi]` into `L` hypervectors.
///
/// Level `ℓ` is a random base vector with `round(ℓ·⌊D/2⌋/(L−1))` coordinates flipped (negated), the
/// flipped sets being nested prefixes of one random coordinate order. Hence for MAP, BSC and FHRR
/// `sim(level_i, level_j) = 1 − 2·|n_i − n_j|/D ≈ 1 − |i − j|/(L−1)` exactly, level 0 and level
/// `L−1` are orthogonal, and for HRR the same holds in expectation. Values are quantized to the
/// nearest level; values outside `[lo, hi]` are clamped.
///
/// ```
/// use candle_core::Device;
/// use recompose_vsa::{LevelEncoder, Map, Vsa, random::seeded};
///
/// let map = Map::new(4096, &Device::Cpu)?;
/// let enc = LevelEncoder::new(map.clone(), 11, 0.0, 1.0, &mut seeded(5))?;
/// let (a, b, c) = (enc.encode(0.0)?, enc.encode(0.1)?, enc.encode(1.0)?);
/// let near = map.similarity(&a, &b)?.to_scalar::<f32>()?;
/// let far = map.similarity(&a, &c)?.to_scalar::<f32>()?;
/// assert!((near - 0.9).abs() < 1e-3 && far.abs() < 1e-3);
/// assert!((enc.decode(&b)? - 0.1).abs() < 1e-12);
/// # Ok::<(), recompose_vsa::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct LevelEncoder<M: Vsa> {
    model: M,
    lo: f64,
    hi: f64,
    count: usize,
    levels: M::Vector,
}

impl<M: Vsa> LevelEncoder<M> {
    /// `levels ≥ 2` levels spanning `lo < hi`, drawn from `rng`.
    pub fn new<R: Rng + ?Sized>(
        model: M,
        levels: usize,
        lo: f64,
        hi: f64,
        rng: &mut R,
    ) -> Result<Self> {
        if levels < 2 {
            return Err(Error::Config(format!(
                "a level encoding needs at least 2 levels, got {levels}"
            )));
        }
        if !(lo.is_finite() && hi.is_finite() && lo < hi) {
            return Err(Error::Config(format!(
                "a level encoding needs finite lo < hi, got [{lo}, {hi}]"
            )));
        }
        let half = model.dim() / 2;
        let ranges: Vec<_> = (0..levels)
            .map(|l| 0..(l as f64 * half as f64 / (levels - 1) as f64).round() as usize)
            .collect();
        let vectors = build_levels(&model, &ranges, rng)?;
        Ok(Self {
            model,
            lo,
            hi,
            count: levels,
            levels: vectors,
        })
    }

    /// The model.
    pub fn model(&self) -> &M {
        &self.model
    }

    /// The number of levels `L`.
    pub fn len(&self) -> usize {
        self.count
    }

    /// Always `false` (there are at least 2 levels).
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// The level vectors, batch shape `[L]`.
    pub fn levels(&self) -> &M::Vector {
        &self.levels
    }

    /// The value represented by level `index` (`lo + index·(hi − lo)/(L − 1)`).
    pub fn value(&self, index: usize) -> f64 {
        self.lo + index as f64 * (self.hi - self.lo) / (self.count - 1) as f64
    }

    /// The level of `x` (nearest level after clamping to `[lo, hi]`); errors on NaN or infinities.
    pub fn index(&self, x: f64) -> Result<usize> {
        let x = finite("LevelEncoder", x)?.clamp(self.lo, self.hi);
        let t = (x - self.lo) / (self.hi - self.lo);
        Ok(((t * (self.count - 1) as f64).round() as usize).min(self.count - 1))
    }

    /// The hypervector of `x` (batch shape `[]`).
    pub fn encode(&self, x: f64) -> Result<M::Vector> {
        let v = self.model.select(&self.levels, &[self.index(x)?])?;
        self.model.reshape(&v, &[])
    }

    /// The hypervectors of `xs` (batch shape `[xs.len()]`).
    pub fn encode_batch(&self, xs: &[f64]) -> Result<M::Vector> {
        let idx = xs
            .iter()
            .map(|&x| self.index(x))
            .collect::<Result<Vec<_>>>()?;
        self.model.select(&self.levels, &idx)
    }

    /// The value of the level most similar to a single vector.
    pub fn decode(&self, v: &M::Vector) -> Result<f64> {
        check_single(&self.model, "LevelEncoder::decode", v)?;
        let i = nearest_levels(&self.model, &self.levels, v)?;
        Ok(self.value(i.first().copied().unwrap_or(0)))
    }

    /// The decoded value of every vector of a batch, row-major.
    pub fn decode_batch(&self, v: &M::Vector) -> Result<Vec<f64>> {
        let i = nearest_levels(&self.model, &self.levels, v)?;
        Ok(i.into_iter().map(|i| self.value(i)).collect())
    }
}

/// Circular level encoding of a periodic quantity with period `period` into `L` hypervectors.
///
/// Level `ℓ` represents `ℓ·period/L`. With `h = ⌊D/2⌋`, the levels of the first half-turn flip a
/// growing prefix `[0, 2ℓh/L)` of a random coordinate order and the levels of the second half-turn
/// un-flip it from the front (`[(2ℓ−L)h/L, h)`), so the walk returns to the start. The similarity
/// of two levels falls linearly with their circular distance `c`: `1 − 2c/L` (about 0 for opposite
/// levels) — exactly for MAP, BSC and FHRR, in expectation for HRR.
///
/// ```
/// use candle_core::Device;
/// use recompose_vsa::{Bsc, CircularEncoder, Vsa, random::seeded};
///
/// let bsc = Bsc::new(4096)?;
/// let hours = CircularEncoder::new(bsc.clone(), 24, 24.0, &mut seeded(6))?;
/// let s = |a: f64, b: f64| -> recompose_vsa::Result<f32> {
///     Ok(bsc.similarity(&hours.encode(a)?, &hours.encode(b)?)?.to_scalar::<f32>()?)
/// };
/// assert!(s(23.0, 0.0)? > 0.9); // wraps around midnight
/// assert!(s(0.0, 12.0)?.abs() < 0.01); // opposite hours are orthogonal
/// # Ok::<(), recompose_vsa::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct CircularEncoder<M: Vsa> {
    model: M,
    period: f64,
    count: usize,
    levels: M::Vector,
}

impl<M: Vsa> CircularEncoder<M> {
    /// `levels ≥ 2` levels around a circle of circumference `period > 0`, drawn from `rng`.
    pub fn new<R: Rng + ?Sized>(model: M, levels: usize, period: f64, rng: &mut R) -> Result<Self> {
        if levels < 2 {
            return Err(Error::Config(format!(
                "a circular encoding needs at least 2 levels, got {levels}"
            )));
        }
        if !(period.is_finite() && period > 0.0) {
            return Err(Error::Config(format!(
                "a circular encoding needs a finite positive period, got {period}"
            )));
        }
        let h = model.dim() / 2;
        let l = levels as f64;
        let ranges: Vec<_> = (0..levels)
            .map(|i| {
                let t = 2.0 * i as f64 / l; // position on the circle, in half-turns
                if t <= 1.0 {
                    0..(t * h as f64).round() as usize
                } else {
                    ((t - 1.0) * h as f64).round() as usize..h
                }
            })
            .collect();
        let vectors = build_levels(&model, &ranges, rng)?;
        Ok(Self {
            model,
            period,
            count: levels,
            levels: vectors,
        })
    }

    /// The model.
    pub fn model(&self) -> &M {
        &self.model
    }

    /// The number of levels `L`.
    pub fn len(&self) -> usize {
        self.count
    }

    /// Always `false` (there are at least 2 levels).
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// The level vectors, batch shape `[L]`.
    pub fn levels(&self) -> &M::Vector {
        &self.levels
    }

    /// The value represented by level `index` (`index·period/L`).
    pub fn value(&self, index: usize) -> f64 {
        index as f64 * self.period / self.count as f64
    }

    /// The level of `x` (taken modulo the period); errors on NaN or infinities.
    pub fn index(&self, x: f64) -> Result<usize> {
        let t = (finite("CircularEncoder", x)? / self.period).rem_euclid(1.0);
        Ok(((t * self.count as f64).round() as usize) % self.count)
    }

    /// The hypervector of `x` (batch shape `[]`).
    pub fn encode(&self, x: f64) -> Result<M::Vector> {
        let v = self.model.select(&self.levels, &[self.index(x)?])?;
        self.model.reshape(&v, &[])
    }

    /// The hypervectors of `xs` (batch shape `[xs.len()]`).
    pub fn encode_batch(&self, xs: &[f64]) -> Result<M::Vector> {
        let idx = xs
            .iter()
            .map(|&x| self.index(x))
            .collect::<Result<Vec<_>>>()?;
        self.model.select(&self.levels, &idx)
    }

    /// The value (in `[0, period)`) of the level most similar to a single vector.
    pub fn decode(&self, v: &M::Vector) -> Result<f64> {
        check_single(&self.model, "CircularEncoder::decode", v)?;
        let i = nearest_levels(&self.model, &self.levels, v)?;
        Ok(self.value(i.first().copied().unwrap_or(0)))
    }

    /// The decoded value of every vector of a batch, row-major.
    pub fn decode_batch(&self, v: &M::Vector) -> Result<Vec<f64>> {
        let i = nearest_levels(&self.model, &self.levels, v)?;
        Ok(i.into_iter().map(|i| self.value(i)).collect())
    }
}

/// The similarity kernel of a fractional power encoding, fixed by the distribution of the base
/// phases.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kernel {
    /// Phases uniform on `[−π·bw, π·bw)`: `K(Δ) = sinc(bw·Δ) = sin(π·bw·Δ)/(π·bw·Δ)`, the kernel of
    /// band-limited functions (Frady et al. 2021). With `bw = 1`, integer inputs are orthogonal.
    Sinc,
    /// Phases normal with standard deviation `bw`: `K(Δ) = exp(−(bw·Δ)²/2)`, the Gaussian (RBF)
    /// kernel of random Fourier features (Rahimi & Recht 2007).
    Gaussian,
}

impl Kernel {
    /// The kernel value at a scaled distance `u = bw·Δ`.
    pub fn eval(self, u: f64) -> f64 {
        match self {
            Kernel::Sinc => {
                let x = std::f64::consts::PI * u;
                if x.abs() < 1e-8 { 1.0 } else { x.sin() / x }
            }
            Kernel::Gaussian => (-0.5 * u * u).exp(),
        }
    }
}

/// Fractional power encoding of points of `R^k` for phasor models ([`Fhrr`](crate::Fhrr) and
/// [`Hrr`](crate::Hrr), whose FPE vectors are Komer's "spatial semantic pointers").
///
/// For each input axis `j` the encoder draws base phases `φ_j` (one per free phase of the model)
/// from the kernel's distribution; a point `x` is encoded as the vector with phases `Σ_j x_j φ_j`,
/// i.e. the bind of the base vectors raised to the powers `x_j`. Therefore
///
/// * `bind(encode(x), encode(y)) = encode(x + y)` (exactly for FHRR up to rounding), and
/// * `sim(encode(x), encode(y)) ≈ Π_j K(bw·(x_j − y_j))` with fluctuations of order `1/√D`
///   ([`FpeEncoder::kernel`] gives the expected value).
///
/// ```
/// use candle_core::Device;
/// use recompose_vsa::{Fhrr, FpeEncoder, Kernel, Vsa, random::seeded};
///
/// let fhrr = Fhrr::new(8192, &Device::Cpu)?;
/// let fpe = FpeEncoder::new(fhrr.clone(), 1, Kernel::Gaussian, 0.5, &mut seeded(7))?;
/// let (a, b) = (fpe.encode(&[1.0])?, fpe.encode(&[3.0])?);
/// let sim = fhrr.similarity(&a, &b)?.to_scalar::<f32>()? as f64;
/// assert!((sim - fpe.kernel(&[2.0])?).abs() < 0.05); // exp(-0.5) ≈ 0.61
/// // Binding adds the encoded values.
/// let sum = fhrr.bind(&a, &b)?;
/// let four = fpe.encode(&[4.0])?;
/// assert!(fhrr.similarity(&sum, &four)?.to_scalar::<f32>()? > 0.999);
/// # Ok::<(), recompose_vsa::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct FpeEncoder<M: Phasor> {
    model: M,
    kernel: Kernel,
    bandwidth: f64,
    /// Base phases `[k, phase_count]`.
    phases: Tensor,
}

impl<M: Phasor> FpeEncoder<M> {
    /// An encoder for points of `R^input_dims` with the given kernel and bandwidth `bw > 0`
    /// (inverse length scale), with base phases drawn from `rng`.
    pub fn new<R: Rng + ?Sized>(
        model: M,
        input_dims: usize,
        kernel: Kernel,
        bandwidth: f64,
        rng: &mut R,
    ) -> Result<Self> {
        if input_dims == 0 {
            return Err(Error::Config(
                "FPE needs at least one input dimension".into(),
            ));
        }
        if !(bandwidth.is_finite() && bandwidth > 0.0) {
            return Err(Error::Config(format!(
                "FPE bandwidth must be finite and positive, got {bandwidth}"
            )));
        }
        let m = model.phase_count();
        if m == 0 {
            return Err(Error::Config(format!(
                "{} of dimension {} has no free phases for FPE",
                model.name(),
                model.dim()
            )));
        }
        let shape = [input_dims, m];
        let device = model.device().clone();
        let phases = match kernel {
            Kernel::Sinc => {
                let pi = std::f32::consts::PI;
                (random::uniform(rng, &shape, -pi, pi, &device)? * bandwidth)?
            }
            Kernel::Gaussian => (random::normal(rng, &shape, &device)? * bandwidth)?,
        };
        Self::from_base_phases(model, kernel, bandwidth, phases)
    }

    /// An encoder from given base phases `[k, phase_count]` (for example shared with another
    /// encoder); `kernel` and `bandwidth` only document the expected kernel.
    pub fn from_base_phases(
        model: M,
        kernel: Kernel,
        bandwidth: f64,
        phases: Tensor,
    ) -> Result<Self> {
        let batch = dense_batch("FpeEncoder", &phases, &[model.phase_count()])?;
        if batch.len() != 1 || batch[0] == 0 {
            return Err(Error::Shape {
                op: "FpeEncoder",
                msg: format!("base phases must have shape [k, {}]", model.phase_count()),
            });
        }
        Ok(Self {
            model,
            kernel,
            bandwidth,
            phases,
        })
    }

    /// The model.
    pub fn model(&self) -> &M {
        &self.model
    }

    /// The number of input dimensions `k`.
    pub fn input_dims(&self) -> usize {
        self.phases.dims()[0]
    }

    /// The kernel.
    pub fn kernel_kind(&self) -> Kernel {
        self.kernel
    }

    /// The bandwidth.
    pub fn bandwidth(&self) -> f64 {
        self.bandwidth
    }

    /// The base phases `[k, phase_count]`.
    pub fn base_phases(&self) -> &Tensor {
        &self.phases
    }

    /// The base vectors (the encodings of the unit vectors of `R^k`), batch shape `[k]`.
    pub fn base(&self) -> Result<M::Vector> {
        self.model.phase_vectors(&self.phases)
    }

    /// Encodes points given as an `f32` tensor `[..., k]`; the result has batch shape `[...]`.
    pub fn encode_tensor(&self, points: &Tensor) -> Result<M::Vector> {
        let k = self.input_dims();
        let batch = dense_batch("FpeEncoder::encode", points, &[k])?;
        let n: usize = batch.iter().product();
        let flat = points
            .to_device(self.phases.device())?
            .contiguous()?
            .reshape((n, k))?;
        let phases = flat.matmul(&self.phases)?;
        let mut shape = batch;
        shape.push(self.model.phase_count());
        self.model.phase_vectors(&phases.reshape(shape)?)
    }

    /// Encodes one point (`point.len() == k`); batch shape `[]`.
    pub fn encode(&self, point: &[f64]) -> Result<M::Vector> {
        let k = self.input_dims();
        if point.len() != k {
            return Err(Error::DimMismatch {
                op: "FpeEncoder::encode",
                expected: k,
                got: point.len(),
            });
        }
        let t = Tensor::from_vec(
            point.iter().map(|&x| x as f32).collect::<Vec<_>>(),
            k,
            self.phases.device(),
        )?;
        self.encode_tensor(&t)
    }

    /// Encodes `points.len() / k` points stored row-major; batch shape `[points.len() / k]`.
    pub fn encode_batch(&self, points: &[f64]) -> Result<M::Vector> {
        let k = self.input_dims();
        if !points.len().is_multiple_of(k) {
            return Err(Error::Shape {
                op: "FpeEncoder::encode_batch",
                msg: format!("{} values do not split into points of {k}", points.len()),
            });
        }
        let t = Tensor::from_vec(
            points.iter().map(|&x| x as f32).collect::<Vec<_>>(),
            (points.len() / k, k),
            self.phases.device(),
        )?;
        self.encode_tensor(&t)
    }

    /// The expected similarity `Π_j K(bw·Δ_j)` of two encodings whose inputs differ by `delta`.
    pub fn kernel(&self, delta: &[f64]) -> Result<f64> {
        let k = self.input_dims();
        if delta.len() != k {
            return Err(Error::DimMismatch {
                op: "FpeEncoder::kernel",
                expected: k,
                got: delta.len(),
            });
        }
        Ok(delta
            .iter()
            .map(|&d| self.kernel.eval(self.bandwidth * d))
            .product())
    }
}
