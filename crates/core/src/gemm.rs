//! Matrix products on the host with the `gemm` crate, single-threaded: callers that already
//! run one shard of work per core (the factorizers, the kernels of [`crate::ops`], the host
//! MLP) multiply small matrices without waking a thread pool for each.

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

/// The row-major product `x [n, k] × y [k, m]` written transposed into `out` `[m, n]`
/// (`out[j·n + i] = (x·y)[i, j]`), single-threaded: the layout that puts the n rows of `x`
/// side by side, ready for routines that work on them in vector lanes.
///
/// # Panics
/// If `x` does not hold n·k values, `y` k·m values or `out` n·m values (callers size them).
pub fn gemm_host_transposed_into(
    x: &[f32],
    y: &[f32],
    out: &mut [f32],
    (n, k, m): (usize, usize, usize),
) {
    assert_eq!(
        x.len(),
        n * k,
        "gemm_host_transposed_into: left operand size"
    );
    assert_eq!(
        y.len(),
        k * m,
        "gemm_host_transposed_into: right operand size"
    );
    assert_eq!(out.len(), n * m, "gemm_host_transposed_into: output size");
    if n == 0 || m == 0 {
        return;
    }
    if k == 0 {
        out.fill(0.0);
        return;
    }
    // SAFETY: `x` holds n·k, `y` k·m and `out` n·m contiguous f32 values (asserted above);
    // product entry (i, j) is written at j·n + i < n·m, and `out` does not alias the inputs.
    unsafe {
        strided(
            (n, m, k),
            out.as_mut_ptr(),
            (1, n),
            false,
            x.as_ptr(),
            (k, 1),
            y.as_ptr(),
            (m, 1),
        );
    }
}

/// Raises the `gemm` crate's single-thread threshold for repacking the left operand (once per
/// process): from 8 to 64 microkernel columns of the product. Our products run one per thread,
/// and their large operand is a column matrix already contiguous along the output rows; with 64
/// or more output channels `gemm` would otherwise copy that whole matrix into panels first, which
/// cost more than reading it in place (≈5% of a Decomp Diffusion training step).
fn tune_gemm() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| gemm::set_lhs_packing_threshold_single_thread(64));
}

/// `dst[m×n] (+)= lhs[m×k] · rhs[k×n]` with the given (row, column) strides, on the calling
/// thread: the product of the convolution, attention and host-MLP kernels.
///
/// # Safety
///
/// Every element addressed through the sizes and strides must lie in its buffer, and `dst`
/// must not overlap `lhs` or `rhs`.
#[allow(clippy::too_many_arguments)]
pub unsafe fn strided(
    (m, n, k): (usize, usize, usize),
    dst: *mut f32,
    (dst_rs, dst_cs): (usize, usize),
    accumulate: bool,
    lhs: *const f32,
    (lhs_rs, lhs_cs): (usize, usize),
    rhs: *const f32,
    (rhs_rs, rhs_cs): (usize, usize),
) {
    tune_gemm();
    // SAFETY: the caller guarantees that every addressed element lies in its buffer.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst,
            dst_cs as isize,
            dst_rs as isize,
            accumulate,
            lhs,
            lhs_cs as isize,
            lhs_rs as isize,
            rhs,
            rhs_cs as isize,
            rhs_rs as isize,
            1.0,
            1.0,
            false,
            false,
            false,
            gemm::Parallelism::None,
        );
    }
}

/// `y[m×out] (+)= x[m×in] · wᵀ` for a row-major weight `w` `[out, in]`: a dense layer on host
/// rows, without bias, on the calling thread (added to `y` when `accumulate`).
///
/// # Panics
/// If `x`, `w` or `y` hold fewer than m·in, out·in or m·out values (callers size them).
pub fn dense_forward(
    x: &[f32],
    w: &[f32],
    y: &mut [f32],
    (m, inp, out): (usize, usize, usize),
    accumulate: bool,
) {
    assert!(x.len() >= m * inp && w.len() >= out * inp && y.len() >= m * out);
    // SAFETY: the assertion bounds every addressed element; `y` is a distinct mutable buffer.
    unsafe {
        strided(
            (m, out, inp),
            y.as_mut_ptr(),
            (out, 1),
            accumulate,
            x.as_ptr(),
            (inp, 1),
            w.as_ptr(),
            (1, inp),
        );
    }
}

/// `gx[m×in] = g[m×out] · w` for a row-major weight `w` `[out, in]`: the input gradient of
/// [`dense_forward`], on the calling thread.
///
/// # Panics
/// If `g`, `w` or `gx` hold fewer than m·out, out·in or m·in values (callers size them).
pub fn dense_backward(g: &[f32], w: &[f32], gx: &mut [f32], (m, inp, out): (usize, usize, usize)) {
    assert!(g.len() >= m * out && w.len() >= out * inp && gx.len() >= m * inp);
    // SAFETY: as in `dense_forward`.
    unsafe {
        strided(
            (m, inp, out),
            gx.as_mut_ptr(),
            (inp, 1),
            false,
            g.as_ptr(),
            (out, 1),
            w.as_ptr(),
            (inp, 1),
        );
    }
}

/// `gw[out×in] (+)= gᵀ · x` for `g` `[m, out]` and `x` `[m, in]`: the weight gradient of
/// [`dense_forward`] (summed over the m rows), on the calling thread; added to `gw` when
/// `accumulate`.
///
/// # Panics
/// If `g`, `x` or `gw` hold fewer than m·out, m·in or out·in values (callers size them).
pub fn dense_weight_grad(
    g: &[f32],
    x: &[f32],
    gw: &mut [f32],
    (m, inp, out): (usize, usize, usize),
    accumulate: bool,
) {
    assert!(g.len() >= m * out && x.len() >= m * inp && gw.len() >= out * inp);
    if m == 0 {
        if !accumulate {
            gw[..out * inp].fill(0.0);
        }
        return;
    }
    // SAFETY: as in `dense_forward`; gᵀ is read with row stride 1 and column stride `out`.
    unsafe {
        strided(
            (out, inp, m),
            gw.as_mut_ptr(),
            (inp, 1),
            accumulate,
            g.as_ptr(),
            (1, out),
            x.as_ptr(),
            (inp, 1),
        );
    }
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

    /// The transposed product equals the naive triple loop (integer-valued entries, so exact),
    /// including sizes that are not multiples of any vector width.
    #[test]
    fn transposed_product_matches_the_definition() {
        for (n, k, m) in [(1, 1, 1), (3, 5, 2), (17, 33, 9), (70, 40, 130)] {
            let x: Vec<f32> = (0..n * k).map(|i| ((i * 7) % 11) as f32 - 5.0).collect();
            let y: Vec<f32> = (0..k * m).map(|i| ((i * 3) % 7) as f32 - 3.0).collect();
            let mut out = vec![f32::NAN; n * m];
            gemm_host_transposed_into(&x, &y, &mut out, (n, k, m));
            for i in 0..n {
                for j in 0..m {
                    let want: f32 = (0..k).map(|p| x[i * k + p] * y[p * m + j]).sum();
                    assert_eq!(out[j * n + i], want, "({n},{k},{m}) entry ({i},{j})");
                }
            }
        }
        let mut out = vec![f32::NAN; 6];
        gemm_host_transposed_into(&[], &[], &mut out, (2, 0, 3));
        assert!(out.iter().all(|v| *v == 0.0));
    }
}
