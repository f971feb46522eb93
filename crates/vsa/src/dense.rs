//! Tensor helpers shared by the dense models (crate-private).
//!
//! A dense vector batch is an `f32` tensor of shape `batch ++ feature`, where `feature` is `[D]`
//! for MAP and HRR and `[2, D]` for FHRR.

use candle_core::{D as Axis, DType, Tensor};

use crate::util::{
    broadcast_pair, check_indices, check_mask, check_nonempty, check_reshape, dense_batch,
    full_shape, sign_mask, wrap_shift,
};
use crate::{Error, Result};

/// Smallest norm product treated as non-zero in cosine similarities.
const TINY: f64 = 1e-30;

/// Sums a tensor over its trailing `n` axes.
fn sum_trailing(t: &Tensor, n: usize) -> Result<Tensor> {
    let mut t = t.clone();
    for _ in 0..n {
        t = t.sum(Axis::Minus1)?;
    }
    Ok(t)
}

/// Inner products of two dense batches over the feature axes.
pub(crate) fn dot(op: &'static str, a: &Tensor, b: &Tensor, feature: &[usize]) -> Result<Tensor> {
    let (a, b, _) = broadcast_pair(op, a, b, feature)?;
    sum_trailing(&(a * b)?, feature.len())
}

/// Euclidean norms over the feature axes.
pub(crate) fn norm(t: &Tensor, feature_rank: usize) -> Result<Tensor> {
    Ok(sum_trailing(&t.sqr()?, feature_rank)?.sqrt()?)
}

/// Cosine similarities of two dense batches (0 when either vector is zero).
pub(crate) fn cosine(
    op: &'static str,
    a: &Tensor,
    b: &Tensor,
    feature: &[usize],
) -> Result<Tensor> {
    let (a, b, _) = broadcast_pair(op, a, b, feature)?;
    let dot = sum_trailing(&(&a * &b)?, feature.len())?;
    let na = norm(&a, feature.len())?;
    let nb = norm(&b, feature.len())?;
    Ok((dot / (na * nb)?.maximum(TINY)?)?)
}

/// Rows scaled to unit norm over the feature axes (zero rows stay zero).
pub(crate) fn unit_rows(t: &Tensor, feature_rank: usize) -> Result<Tensor> {
    let mut n = norm(t, feature_rank)?.maximum(TINY)?;
    for _ in 0..feature_rank {
        n = n.unsqueeze(Axis::Minus1)?;
    }
    Ok(t.broadcast_div(&n)?)
}

/// `queries · itemsᵀ` over the flattened feature axes, scaled by `scale`; queries `[..., F]`,
/// items `[M, F]` → `[..., M]`. With `cosine`, both sides are first scaled to unit norm.
pub(crate) fn similarity_matrix(
    op: &'static str,
    queries: &Tensor,
    items: &Tensor,
    feature: &[usize],
    cosine: bool,
    scale: f64,
) -> Result<Tensor> {
    let qb = dense_batch(op, queries, feature)?;
    let ib = dense_batch(op, items, feature)?;
    if ib.len() != 1 {
        return Err(Error::Shape {
            op,
            msg: format!("items must have batch shape [M], got {ib:?}"),
        });
    }
    let f: usize = feature.iter().product();
    let nq: usize = qb.iter().product();
    let m = ib[0];
    let q = queries.contiguous()?.reshape((nq, f))?;
    let it = items.contiguous()?.reshape((m, f))?;
    let mut out = q.matmul(&it.t()?)?;
    if cosine {
        // Divide the small [nq, m] matrix by the norm products rather than normalizing both
        // (large) operands.
        let qn = q.sqr()?.sum_keepdim(1)?.sqrt()?;
        let inn = it.sqr()?.sum_keepdim(1)?.sqrt()?.t()?;
        out = out.broadcast_div(&qn.broadcast_mul(&inn)?.maximum(TINY)?)?;
    }
    if scale != 1.0 {
        out = (out * scale)?;
    }
    let mut shape = qb;
    shape.push(m);
    Ok(out.reshape(shape)?)
}

/// Cyclic shift along the last axis: coordinate `i` moves to `(i + shift) mod D`.
pub(crate) fn permute(t: &Tensor, shift: isize, d: usize) -> Result<Tensor> {
    let s = wrap_shift(shift, d);
    if s == 0 {
        return Ok(t.clone());
    }
    // `d` is checked to fit in an i32 when the model is built, so `s < d` does too.
    let s = i32::try_from(s).map_err(|_| Error::Config("shift out of range".into()))?;
    Ok(t.roll(s, Axis::Minus1)?)
}

/// Multiplies the coordinates selected by `mask` by −1.
pub(crate) fn flip(
    op: &'static str,
    t: &Tensor,
    mask: &[bool],
    feature: &[usize],
) -> Result<Tensor> {
    dense_batch(op, t, feature)?;
    let d = *feature.last().unwrap_or(&0);
    check_mask(op, mask, d)?;
    let m = sign_mask(mask, t.device())?;
    Ok(t.broadcast_mul(&m)?)
}

/// Picks entries along the first batch axis.
pub(crate) fn select(
    op: &'static str,
    t: &Tensor,
    indices: &[usize],
    feature: &[usize],
) -> Result<Tensor> {
    let batch = dense_batch(op, t, feature)?;
    let Some(&len) = batch.first() else {
        return Err(Error::Shape {
            op,
            msg: "cannot select from a single vector (batch shape [])".into(),
        });
    };
    check_indices(op, indices, len)?;
    let ids: Vec<u32> = indices
        .iter()
        .map(|&i| u32::try_from(i).map_err(|_| Error::Config("index too large".into())))
        .collect::<Result<_>>()?;
    let ids = Tensor::from_vec(ids, indices.len(), t.device())?;
    Ok(t.index_select(&ids, 0)?)
}

/// Concatenates along the first batch axis.
pub(crate) fn concat(op: &'static str, parts: &[Tensor], feature: &[usize]) -> Result<Tensor> {
    check_nonempty(op, parts)?;
    let mut rest: Option<Vec<usize>> = None;
    for p in parts {
        let b = dense_batch(op, p, feature)?;
        if b.is_empty() {
            return Err(Error::Shape {
                op,
                msg: "cannot concatenate single vectors (batch shape []); stack them instead"
                    .into(),
            });
        }
        match &rest {
            None => rest = Some(b[1..].to_vec()),
            Some(r) if r.as_slice() != &b[1..] => {
                return Err(Error::Shape {
                    op,
                    msg: format!("trailing batch axes differ: {r:?} vs {:?}", &b[1..]),
                });
            }
            Some(_) => {}
        }
    }
    Ok(Tensor::cat(parts, 0)?)
}

/// Reshapes the batch axes.
pub(crate) fn reshape(
    op: &'static str,
    t: &Tensor,
    batch: &[usize],
    feature: &[usize],
) -> Result<Tensor> {
    let from = dense_batch(op, t, feature)?;
    check_reshape(op, &from, batch)?;
    Ok(t.reshape(full_shape(batch, feature))?)
}

/// Sums along a batch axis, as a (batched) product with a row of ones: a GEMM is much faster
/// than candle's strided reduction over a non-trailing axis, on CPU and GPU alike. Sums of
/// integers below `2^24` (bipolar bundles) are exact.
pub(crate) fn sum_axis(t: &Tensor, axis: usize) -> Result<Tensor> {
    let dims = t.dims();
    let n = dims[axis];
    let outer: usize = dims[..axis].iter().product();
    let inner: usize = dims[axis + 1..].iter().product();
    let mut out_dims = dims.to_vec();
    out_dims.remove(axis);
    let ones = Tensor::ones((1, n), t.dtype(), t.device())?;
    let x = t.contiguous()?;
    let sum = if outer == 1 {
        ones.matmul(&x.reshape((n, inner))?)?
    } else {
        ones.broadcast_left(outer)?
            .contiguous()?
            .matmul(&x.reshape((outer, n, inner))?)?
    };
    Ok(sum.reshape(out_dims)?)
}

/// Whether a `u8` mask has any set entry (one scalar read back from the device).
pub(crate) fn any(mask: &Tensor) -> Result<bool> {
    if mask.elem_count() == 0 {
        return Ok(false);
    }
    Ok(mask.flatten_all()?.max(0)?.to_scalar::<u8>()? > 0)
}

/// A `u8` mask converted to `f32` 0/1.
pub(crate) fn mask_f32(m: &Tensor) -> Result<Tensor> {
    Ok(m.to_dtype(DType::F32)?)
}
