//! Matrix products on the host with the `gemm` crate, single-threaded: callers that already
//! run one shard of work per core (the factorizers) multiply small matrices without waking a
//! thread pool for each.

use candle_core::Tensor;

use crate::Result;
use crate::host::with_host_slices;

/// The matrix product `a [n, k] × b [k, m] → [n, m]`.
///
/// On the CPU it calls the gemm kernels directly and single-threaded: the factorizers already
/// run one shard of trials per core, and waking a thread pool for every small product costs
/// more than it gains. Elsewhere it is candle's matmul.
pub fn matmul(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    let (n, k) = a.dims2()?;
    let (k2, m) = b.dims2()?;
    if k != k2 {
        return Err(candle_core::Error::ShapeMismatchBinaryOp {
            lhs: a.shape().clone(),
            rhs: b.shape().clone(),
            op: "matmul",
        }
        .into());
    }
    let host = with_host_slices(&[a, b], |s| gemm_host(s[0], s[1], n, k, m));
    match host {
        Some(out) => Ok(Tensor::from_vec(out, (n, m), a.device())?),
        None => Ok(a.matmul(b)?),
    }
}

/// The row-major product `x [n, k] × y [k, m] → [n, m]` on host slices, single-threaded.
///
/// # Panics
/// If `x` does not hold n·k values or `y` does not hold k·m values (callers size them).
pub fn gemm_host(x: &[f32], y: &[f32], n: usize, k: usize, m: usize) -> Vec<f32> {
    assert_eq!(x.len(), n * k, "gemm_host: left operand size");
    assert_eq!(y.len(), k * m, "gemm_host: right operand size");
    let mut out = vec![0f32; n * m];
    if n > 0 && m > 0 && k > 0 {
        // SAFETY: `x` holds n·k, `y` k·m and `out` n·m contiguous row-major f32 values (asserted
        // above); the strides below address exactly those elements, and `out` does not alias
        // the inputs.
        unsafe {
            gemm::gemm(
                n,
                m,
                k,
                out.as_mut_ptr(),
                1,
                m as isize,
                false,
                x.as_ptr(),
                1,
                k as isize,
                y.as_ptr(),
                1,
                m as isize,
                0.0,
                1.0,
                false,
                false,
                false,
                gemm::Parallelism::None,
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn host_matmul_matches_candle() {
        let a: Vec<f32> = (0..6 * 5).map(|i| ((i * 7) % 11) as f32 - 5.0).collect();
        let b: Vec<f32> = (0..5 * 4).map(|i| ((i * 3) % 7) as f32 - 3.0).collect();
        let a = Tensor::from_vec(a, (6, 5), &Device::Cpu).unwrap();
        let b = Tensor::from_vec(b, (5, 4), &Device::Cpu).unwrap();
        let got = matmul(&a, &b).unwrap().to_vec2::<f32>().unwrap();
        assert_eq!(got, a.matmul(&b).unwrap().to_vec2::<f32>().unwrap());
        // A transposed (non-contiguous) operand falls back to candle.
        let bt = b.t().unwrap().contiguous().unwrap().t().unwrap();
        let got = matmul(&a, &bt).unwrap().to_vec2::<f32>().unwrap();
        assert_eq!(got, a.matmul(&b).unwrap().to_vec2::<f32>().unwrap());
        assert!(matmul(&a, &a).is_err());
    }
}
