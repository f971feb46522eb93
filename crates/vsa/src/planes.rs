//! The batched "planes" form of MAP and FHRR, for solvers that work on many hypervectors at once
//! with real matrix products (the factorizers of `recompose-decomp`).
//!
//! A batch of hypervectors is a list of real planes, each `[T, D]`: one plane for MAP (bipolar
//! values), two for FHRR (real and imaginary parts). Binding is the element-wise product (complex
//! for FHRR), unbinding multiplies by the conjugate, and the similarity with a codebook
//! `C` (`[M, D]` per plane) is the complex inner product a_m = Σ_d conj(c_md)·u_d, computed with
//! real matmuls (Frady et al., *Resonator Networks 1*, Neural Computation 32(12), 2020, eqs. 5–6,
//! for MAP; the same products over the complex field for FHRR). Projection back onto the codebook
//! is x = Σ_m a_m c_m. The element-wise and product kernels come from `recompose-core`: one pass
//! over host memory on the CPU, candle's ops elsewhere.
//!
//! [`PlaneModel`] converts the vectors of [`Map`] and [`Fhrr`] (and codebooks of them) to planes,
//! so vectors built with this crate go straight into a solver.
//!
//! ```
//! use candle_core::Device;
//! use recompose_vsa::planes::{self, PlaneModel, PreparedCodebook, VsaKind};
//! use recompose_vsa::{Codebook, Map, Vsa, random::seeded};
//!
//! let map = Map::new(1000, &Device::Cpu)?;
//! let mut rng = seeded(3);
//! let colours = Codebook::random_numbered(map.clone(), "colour", 8, &mut rng)?;
//! let shapes = Codebook::random_numbered(map.clone(), "shape", 8, &mut rng)?;
//! let s = map.bind(&colours.vector(2)?, &shapes.vector(5)?)?.unsqueeze(0)?;
//! // Unbind the true shape and compare with the colours: codeword 2 stands out.
//! let u = planes::unbind(VsaKind::Map, &map.to_planes(&s)?, &map.to_planes(&shapes.vector(5)?.unsqueeze(0)?)?)?;
//! let book = PreparedCodebook::new(map.to_planes(colours.vectors())?)?;
//! assert_eq!(planes::decode(VsaKind::Map, &u, &book)?, vec![2]);
//! # Ok::<(), recompose_vsa::Error>(())
//! ```

use candle_core::Tensor;
use recompose_core::gemm;
use recompose_core::ops::elementwise;

use crate::{Error, Fhrr, Map, Result, Vsa};

/// The VSA models with a planes form.
///
/// In configuration files and JSON it is written `"map"` or `"fhrr"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VsaKind {
    /// Multiply–add–permute: bipolar ±1 vectors, binding by element-wise product.
    Map,
    /// Fourier holographic reduced representations: unit phasors, binding by complex product.
    Fhrr,
}

impl VsaKind {
    /// Number of real planes per hypervector (1 for MAP, 2 for FHRR).
    pub fn planes(self) -> usize {
        match self {
            VsaKind::Map => 1,
            VsaKind::Fhrr => 2,
        }
    }

    /// The lower-case name used on the command line and in reports.
    pub fn name(self) -> &'static str {
        match self {
            VsaKind::Map => "map",
            VsaKind::Fhrr => "fhrr",
        }
    }
}

impl std::str::FromStr for VsaKind {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "map" => Ok(VsaKind::Map),
            "fhrr" => Ok(VsaKind::Fhrr),
            other => Err(Error::Config(format!(
                "unknown VSA model '{other}' (expected map or fhrr)"
            ))),
        }
    }
}

/// A model whose vectors have a planes form.
pub trait PlaneModel: Vsa<Vector = Tensor> {
    /// Which model this is.
    fn kind(&self) -> VsaKind;

    /// The planes of a batch `[N, …features]` of this model's vectors: `[N, D]` each.
    ///
    /// # Errors
    ///
    /// [`Error::Shape`] unless `v` is a batch of exactly one leading axis of this model's vectors.
    fn to_planes(&self, v: &Tensor) -> Result<Planes>;
}

/// Checks that `v` is one batch axis followed by the model's feature axes.
fn check_batch<M: Vsa<Vector = Tensor>>(model: &M, v: &Tensor) -> Result<()> {
    if model.batch_shape(v)?.len() != 1 {
        return Err(Error::Shape {
            op: "to_planes",
            msg: format!(
                "expected a batch [N, …] of {} vectors, got shape {:?}",
                model.name(),
                v.dims()
            ),
        });
    }
    Ok(())
}

impl PlaneModel for Map {
    fn kind(&self) -> VsaKind {
        VsaKind::Map
    }

    fn to_planes(&self, v: &Tensor) -> Result<Planes> {
        check_batch(self, v)?;
        Ok(vec![v.contiguous()?])
    }
}

impl PlaneModel for Fhrr {
    fn kind(&self) -> VsaKind {
        VsaKind::Fhrr
    }

    /// `[N, 2, D]` (real, imaginary) to the two planes `[N, D]`.
    fn to_planes(&self, v: &Tensor) -> Result<Planes> {
        check_batch(self, v)?;
        Ok(vec![
            v.narrow(1, 0, 1)?.squeeze(1)?.contiguous()?,
            v.narrow(1, 1, 1)?.squeeze(1)?.contiguous()?,
        ])
    }
}

/// One batch of hypervectors (or similarity vectors): one tensor per plane.
pub type Planes = Vec<Tensor>;

/// A codebook prepared for fast batched products.
#[derive(Debug, Clone)]
pub struct PreparedCodebook {
    /// Codewords per plane, `[M, D]`, contiguous.
    pub c: Planes,
    /// Transposed codewords per plane, `[D, M]`, contiguous.
    pub ct: Planes,
}

impl PreparedCodebook {
    /// Prepares the planes of one codebook.
    pub fn new(c: Planes) -> Result<Self> {
        let c = c
            .into_iter()
            .map(|p| p.contiguous())
            .collect::<candle_core::Result<Vec<_>>>()?;
        let ct = c
            .iter()
            .map(|p| p.t()?.contiguous())
            .collect::<candle_core::Result<Vec<_>>>()?;
        Ok(PreparedCodebook { c, ct })
    }
}

/// Element-wise product a ⊙ b (complex for FHRR).
pub fn bind(kind: VsaKind, a: &Planes, b: &Planes) -> Result<Planes> {
    Ok(match kind {
        VsaKind::Map => vec![elementwise::product(&[&a[0], &b[0]])?],
        VsaKind::Fhrr => vec![
            ((&a[0] * &b[0])? - (&a[1] * &b[1])?)?,
            ((&a[0] * &b[1])? + (&a[1] * &b[0])?)?,
        ],
    })
}

/// s ⊙ conj(∏_{g≠f} x̂_g): the unbinding of every estimate but factor `f` from `s`, in one
/// fused pass for MAP.
pub fn unbind_others(kind: VsaKind, s: &Planes, est: &[Planes], f: usize) -> Result<Planes> {
    if kind == VsaKind::Map {
        let mut xs: Vec<&Tensor> = vec![&s[0]];
        xs.extend(
            est.iter()
                .enumerate()
                .filter(|(g, _)| *g != f)
                .map(|(_, x)| &x[0]),
        );
        return Ok(vec![elementwise::product(&xs)?]);
    }
    let others = product_except(kind, est, Some(f))?.unwrap_or_else(|| s.clone());
    unbind(kind, s, &others)
}

/// Unbinding a ⊙ conj(b) (for MAP, the same as binding).
pub fn unbind(kind: VsaKind, a: &Planes, b: &Planes) -> Result<Planes> {
    Ok(match kind {
        VsaKind::Map => vec![elementwise::product(&[&a[0], &b[0]])?],
        VsaKind::Fhrr => vec![
            ((&a[0] * &b[0])? + (&a[1] * &b[1])?)?,
            ((&a[1] * &b[0])? - (&a[0] * &b[1])?)?,
        ],
    })
}

/// The binding of all estimates but `skip` (`None`: all of them).
pub fn product_except(
    kind: VsaKind,
    est: &[Planes],
    skip: Option<usize>,
) -> Result<Option<Planes>> {
    if kind == VsaKind::Map {
        let xs: Vec<&Tensor> = est
            .iter()
            .enumerate()
            .filter(|(g, _)| Some(*g) != skip)
            .map(|(_, x)| &x[0])
            .collect();
        return Ok(if xs.is_empty() {
            None
        } else {
            Some(vec![elementwise::product(&xs)?])
        });
    }
    let mut acc: Option<Planes> = None;
    for (g, x) in est.iter().enumerate() {
        if Some(g) == skip {
            continue;
        }
        acc = Some(match acc {
            None => x.clone(),
            Some(p) => bind(kind, &p, x)?,
        });
    }
    Ok(acc)
}

/// Similarities `[T, M]` per plane between a batch `[T, D]` and a codebook.
pub fn similarities(kind: VsaKind, u: &Planes, cb: &PreparedCodebook) -> Result<Planes> {
    Ok(match kind {
        VsaKind::Map => vec![gemm::matmul(&u[0], &cb.ct[0])?],
        VsaKind::Fhrr => vec![
            (gemm::matmul(&u[0], &cb.ct[0])? + gemm::matmul(&u[1], &cb.ct[1])?)?,
            (gemm::matmul(&u[1], &cb.ct[0])? - gemm::matmul(&u[0], &cb.ct[1])?)?,
        ],
    })
}

/// Projection x = Σ_m a_m c_m of coefficients `[T, M]` per plane onto a codebook.
pub fn project(kind: VsaKind, a: &Planes, cb: &PreparedCodebook) -> Result<Planes> {
    Ok(match kind {
        VsaKind::Map => vec![gemm::matmul(&a[0], &cb.c[0])?],
        VsaKind::Fhrr => {
            let re = gemm::matmul(&a[0], &cb.c[0])?;
            match a.get(1) {
                // Real coefficients (e.g. attention weights) need only two products.
                None => vec![re, gemm::matmul(&a[0], &cb.c[1])?],
                Some(ai) => vec![
                    (re - gemm::matmul(ai, &cb.c[1])?)?,
                    (gemm::matmul(&a[0], &cb.c[1])? + gemm::matmul(ai, &cb.c[0])?)?,
                ],
            }
        }
    })
}

/// Modulus of similarities, `[T, M]`: |a| for MAP, √(re² + im²) for FHRR.
pub fn magnitude(kind: VsaKind, a: &Planes) -> Result<Tensor> {
    Ok(match kind {
        VsaKind::Map => a[0].abs()?,
        VsaKind::Fhrr => (a[0].sqr()? + a[1].sqr()?)?.sqrt()?,
    })
}

/// Bipolar sign with ties broken towards +1.
pub fn sign(x: &Tensor) -> Result<Tensor> {
    Ok(elementwise::sign(x)?)
}

/// Scales every row of every plane to Euclidean norm √D (joint norm over planes).
pub fn l2_normalize(x: &Planes) -> Result<Planes> {
    let d = x[0].dim(1)? as f64;
    let mut sq = x[0].sqr()?.sum_keepdim(1)?;
    for p in &x[1..] {
        sq = (sq + p.sqr()?.sum_keepdim(1)?)?;
    }
    // Guard the all-zero row: leave it at zero rather than producing NaN.
    let inv = (sq.affine(1.0 / d, 1e-30)?.sqrt()?).recip()?;
    Ok(x.iter()
        .map(|p| p.broadcast_mul(&inv))
        .collect::<candle_core::Result<Vec<_>>>()?)
}

/// Projects every FHRR component onto the unit circle (a zero component becomes 1 + 0i).
pub fn phase_normalize(x: &Planes) -> Result<Planes> {
    let modulus = (x[0].sqr()? + x[1].sqr()?)?.sqrt()?;
    let zero = modulus.le(1e-30f32)?;
    let re = zero.where_cond(&modulus.ones_like()?, &(&x[0] / &modulus)?)?;
    let im = zero.where_cond(&modulus.zeros_like()?, &(&x[1] / &modulus)?)?;
    Ok(vec![re, im])
}

/// Softmax along the last dimension, stabilized by the row maximum.
pub fn softmax_rows(x: &Tensor) -> Result<Tensor> {
    let max = x.max_keepdim(1)?;
    let e = x.broadcast_sub(&max)?.exp()?;
    let z = e.sum_keepdim(1)?;
    Ok(e.broadcast_div(&z)?)
}

/// Index of the largest-magnitude similarity per row, `[T]` (decoding under the sign / global
/// phase ambiguity).
pub fn decode(kind: VsaKind, x: &Planes, cb: &PreparedCodebook) -> Result<Vec<u32>> {
    let sims = similarities(kind, x, cb)?;
    Ok(magnitude(kind, &sims)?.argmax(1)?.to_vec1::<u32>()?)
}

/// Keeps, per row, the `k` entries of largest modulus and zeroes the rest (ties may keep more).
pub fn keep_top_k(kind: VsaKind, a: &Planes, k: usize) -> Result<Planes> {
    let m = a[0].dim(1)?;
    if k >= m {
        return Ok(a.clone());
    }
    let mag = magnitude(kind, a)?;
    let (sorted, _) = mag.sort_last_dim(false)?;
    let kth = sorted.narrow(1, k - 1, 1)?;
    let keep = mag.broadcast_ge(&kth)?;
    let zeros = a[0].zeros_like()?;
    Ok(a.iter()
        .map(|p| keep.where_cond(p, &zeros))
        .collect::<candle_core::Result<Vec<_>>>()?)
}

/// Zeroes, per row, the entries whose modulus is below `threshold`.
pub fn threshold(kind: VsaKind, a: &Planes, threshold: f32) -> Result<Planes> {
    let keep = magnitude(kind, a)?.ge(threshold)?;
    let zeros = a[0].zeros_like()?;
    Ok(a.iter()
        .map(|p| keep.where_cond(p, &zeros))
        .collect::<candle_core::Result<Vec<_>>>()?)
}

/// Selects rows (trials) of every plane.
pub fn select_rows(x: &Planes, rows: &Tensor) -> Result<Planes> {
    Ok(x.iter()
        .map(|p| p.index_select(rows, 0))
        .collect::<candle_core::Result<Vec<_>>>()?)
}
