//! Shape checks and small helpers shared by the models (crate-private).

use candle_core::{DType, Device, Tensor};

use crate::{Error, Result};

/// NumPy-style broadcast of two batch shapes.
pub(crate) fn broadcast_shapes(op: &'static str, a: &[usize], b: &[usize]) -> Result<Vec<usize>> {
    let rank = a.len().max(b.len());
    let mut out = vec![0; rank];
    for i in 0..rank {
        let da = if i < rank - a.len() {
            1
        } else {
            a[i - (rank - a.len())]
        };
        let db = if i < rank - b.len() {
            1
        } else {
            b[i - (rank - b.len())]
        };
        out[i] = match (da, db) {
            (x, y) if x == y => x,
            (1, y) => y,
            (x, 1) => x,
            _ => {
                return Err(Error::Shape {
                    op,
                    msg: format!("batch shapes {a:?} and {b:?} cannot be broadcast together"),
                });
            }
        };
    }
    Ok(out)
}

/// Checks that `t` is an `f32` tensor whose trailing dimensions are `feature` (the last one being
/// the model dimension) and returns its batch shape (the leading dimensions).
pub(crate) fn dense_batch(op: &'static str, t: &Tensor, feature: &[usize]) -> Result<Vec<usize>> {
    if t.dtype() != DType::F32 {
        return Err(Error::DType {
            op,
            expected: DType::F32,
            got: t.dtype(),
        });
    }
    let dims = t.dims();
    if dims.len() < feature.len() {
        return Err(Error::Shape {
            op,
            msg: format!(
                "expected a tensor of shape [..., {}], got {dims:?}",
                join(feature)
            ),
        });
    }
    let split = dims.len() - feature.len();
    let (batch, trailing) = dims.split_at(split);
    let d = *feature.last().unwrap_or(&0);
    let got_d = *trailing.last().unwrap_or(&0);
    if got_d != d {
        return Err(Error::DimMismatch {
            op,
            expected: d,
            got: got_d,
        });
    }
    if trailing != feature {
        return Err(Error::Shape {
            op,
            msg: format!(
                "expected a tensor of shape [..., {}], got {dims:?}",
                join(feature)
            ),
        });
    }
    Ok(batch.to_vec())
}

fn join(dims: &[usize]) -> String {
    dims.iter()
        .map(|d| d.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// Checks that `axis` names one of `rank` batch axes and that it is not empty.
pub(crate) fn check_bundle_axis(op: &'static str, batch: &[usize], axis: usize) -> Result<usize> {
    if axis >= batch.len() {
        return Err(Error::Shape {
            op,
            msg: format!("axis {axis} is not a batch axis of a vector batch with shape {batch:?}"),
        });
    }
    if batch[axis] == 0 {
        return Err(Error::Shape {
            op,
            msg: "cannot bundle zero vectors".into(),
        });
    }
    Ok(batch[axis])
}

/// `shift` reduced to `0..d`.
pub(crate) fn wrap_shift(shift: isize, d: usize) -> usize {
    // d is at most isize::MAX for any allocatable vector.
    shift.rem_euclid(d as isize) as usize
}

/// Checks that a coordinate mask has one entry per dimension.
pub(crate) fn check_mask(op: &'static str, mask: &[bool], d: usize) -> Result<()> {
    if mask.len() != d {
        return Err(Error::DimMismatch {
            op,
            expected: d,
            got: mask.len(),
        });
    }
    Ok(())
}

/// A `[d]` tensor holding `-1` where `mask` is set and `+1` elsewhere.
pub(crate) fn sign_mask(mask: &[bool], device: &Device) -> Result<Tensor> {
    let v: Vec<f32> = mask.iter().map(|&m| if m { -1.0 } else { 1.0 }).collect();
    Ok(Tensor::from_vec(v, mask.len(), device)?)
}

/// Checks a list of vectors to concatenate is not empty.
pub(crate) fn check_nonempty<T>(op: &'static str, items: &[T]) -> Result<()> {
    if items.is_empty() {
        return Err(Error::Shape {
            op,
            msg: "expected at least one vector batch".into(),
        });
    }
    Ok(())
}

/// Checks that `indices` are all below `len`.
pub(crate) fn check_indices(op: &'static str, indices: &[usize], len: usize) -> Result<()> {
    if let Some(&bad) = indices.iter().find(|&&i| i >= len) {
        return Err(Error::Shape {
            op,
            msg: format!("index {bad} out of range for a batch axis of length {len}"),
        });
    }
    Ok(())
}

/// Checks that a reshape keeps the number of vectors.
pub(crate) fn check_reshape(op: &'static str, from: &[usize], to: &[usize]) -> Result<()> {
    let a: usize = from.iter().product();
    let b: usize = to.iter().product();
    if a != b {
        return Err(Error::Shape {
            op,
            msg: format!(
                "cannot reshape a batch of shape {from:?} ({a} vectors) into {to:?} ({b})"
            ),
        });
    }
    Ok(())
}

/// The batch shape with a leading axis of length `n` prepended.
pub(crate) fn with_leading(n: usize, batch: &[usize]) -> Vec<usize> {
    let mut v = Vec::with_capacity(batch.len() + 1);
    v.push(n);
    v.extend_from_slice(batch);
    v
}

/// A batch shape followed by feature dims.
pub(crate) fn full_shape(batch: &[usize], feature: &[usize]) -> Vec<usize> {
    let mut v = batch.to_vec();
    v.extend_from_slice(feature);
    v
}

/// Checks a model dimension is usable.
pub(crate) fn check_dim(model: &str, dim: usize) -> Result<()> {
    if dim == 0 {
        return Err(Error::Config(format!(
            "{model}: the dimension must be positive"
        )));
    }
    if dim > i32::MAX as usize {
        return Err(Error::Config(format!(
            "{model}: dimension {dim} is too large"
        )));
    }
    Ok(())
}

/// Broadcasts two dense vector batches against each other; returns both broadcast tensors.
pub(crate) fn broadcast_pair(
    op: &'static str,
    a: &Tensor,
    b: &Tensor,
    feature: &[usize],
) -> Result<(Tensor, Tensor, Vec<usize>)> {
    let ba = dense_batch(op, a, feature)?;
    let bb = dense_batch(op, b, feature)?;
    let batch = broadcast_shapes(op, &ba, &bb)?;
    let shape = full_shape(&batch, feature);
    let a = if ba == batch {
        a.clone()
    } else {
        a.broadcast_as(shape.clone())?
    };
    let b = if bb == batch {
        b.clone()
    } else {
        b.broadcast_as(shape)?
    };
    Ok((a, b, batch))
}
