//! Host access to tensor data, and the helpers of the CPU kernels.
//!
//! A fast path reads and writes the contiguous `f32` memory behind candle tensors that live on
//! the CPU; anything else (another device or dtype, a strided view) takes the equivalent candle
//! ops instead, so results agree everywhere. The kernels of [`crate::ops`] share the helpers
//! here: the contiguous `f32` data of a candle storage ([`f32_data`]), an output pointer that
//! worker threads writing disjoint parts may share ([`SendPtr`]), uninitialized output buffers,
//! parallel loops over parts of a buffer on candle's worker threads, an exponential that loops
//! can vectorize ([`fast_exp`]), and loops compiled for the CPU's widest vectors
//! ([`vectorized`]).
//!
//! ## Reference paths
//!
//! Every dispatch between a fast path and candle's ops asks [`on_fast_path`] (or goes through
//! [`with_host_slices`]). [`set_fast_paths`]`(false)` — or the environment variable
//! `RECOMPOSE_REFERENCE_OPS=1` at start — makes all of them take candle's ops on the CPU too:
//! the code a GPU runs, on the CPU. The device parity tests ([`crate::parity`]) compare the two.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU8, Ordering};

use candle_core::{CpuStorage, DType, Layout, Storage, Tensor, bail};

/// 0: not yet read from the environment; 1: fast paths on; 2: reference ops only.
static FAST_PATHS: AtomicU8 = AtomicU8::new(0);

/// Whether the CPU fast paths are in use (the default; see [`set_fast_paths`]).
pub fn fast_paths_enabled() -> bool {
    match FAST_PATHS.load(Ordering::Relaxed) {
        1 => true,
        2 => false,
        _ => {
            let off = std::env::var("RECOMPOSE_REFERENCE_OPS").is_ok_and(|v| v == "1");
            // A concurrent `set_fast_paths` wins over the environment.
            let _ = FAST_PATHS.compare_exchange(
                0,
                if off { 2 } else { 1 },
                Ordering::Relaxed,
                Ordering::Relaxed,
            );
            FAST_PATHS.load(Ordering::Relaxed) == 1
        }
    }
}

/// Turns the CPU fast paths on or off for the whole process. Off, every model, sampler and
/// solver computes with candle's ops on the CPU as it would on a GPU: for parity tests and for
/// telling a kernel's error from a model's.
pub fn set_fast_paths(enabled: bool) {
    FAST_PATHS.store(if enabled { 1 } else { 2 }, Ordering::Relaxed);
}

/// Whether a computation on `xs` takes a CPU fast path: fast paths are on and every tensor is
/// `f32` on the CPU (the kernels make their inputs contiguous themselves).
pub fn on_fast_path(xs: &[&Tensor]) -> bool {
    fast_paths_enabled()
        && xs
            .iter()
            .all(|x| x.device().is_cpu() && x.dtype() == DType::F32)
}

/// Runs `f` on the contiguous f32 host slices of `xs` when they all live on the CPU in that
/// form and fast paths are on; returns `None` otherwise (a fast path then falls back to
/// candle's ops).
pub fn with_host_slices<R>(xs: &[&Tensor], f: impl FnOnce(&[&[f32]]) -> R) -> Option<R> {
    if !fast_paths_enabled() {
        return None;
    }
    let guards: Vec<_> = xs.iter().map(|x| x.storage_and_layout()).collect();
    let mut slices = Vec::with_capacity(xs.len());
    for (storage, layout) in &guards {
        let (start, end) = layout.contiguous_offsets()?;
        match &**storage {
            Storage::Cpu(cpu) => slices.push(&cpu.as_slice::<f32>().ok()?[start..end]),
            _ => return None,
        }
    }
    Some(f(&slices))
}

/// The contiguous `f32` elements of `s` that layout `l` covers.
///
/// # Errors
///
/// When the storage is not `f32` or the layout is not contiguous.
pub fn f32_data<'a>(s: &'a CpuStorage, l: &Layout) -> candle_core::Result<&'a [f32]> {
    let CpuStorage::F32(v) = s else {
        bail!("CPU kernel: only f32 is supported")
    };
    match l.contiguous_offsets() {
        Some((start, end)) => Ok(&v[start..end]),
        None => bail!("CPU kernel: the input must be contiguous"),
    }
}

/// A raw output pointer that may cross to candle's worker threads, for kernels whose tasks each
/// write a disjoint set of elements while the owner of the buffer waits for them.
#[derive(Clone, Copy, Debug)]
pub struct SendPtr(pub *mut f32);

// SAFETY: users write disjoint elements from each task and keep the buffer alive until the pool
// call returns (the contract stated on the type).
unsafe impl Send for SendPtr {}
// SAFETY: as above.
unsafe impl Sync for SendPtr {}

impl SendPtr {
    /// The pointer (a method, so that closures capture the whole `SendPtr`).
    pub fn ptr(self) -> *mut f32 {
        self.0
    }
}

/// e^x for f32 without a library call, so that loops over it vectorize: x = k ln 2 + r with
/// |r| ≤ ln 2 / 2, e^r by its degree-6 Taylor polynomial (relative error < 2·10⁻⁷), 2^k from
/// the exponent bits. Inputs are clamped to [−87, 88] (the normal range of f32).
#[inline(always)]
pub fn fast_exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    // Adding and subtracting 1.5·2²³ rounds to the nearest integer.
    const ROUND: f32 = 12_582_912.0;
    let x = x.clamp(-87.0, 88.0);
    let t = x * LOG2E + ROUND;
    let k = t - ROUND;
    let r = x - k * LN2_HI - k * LN2_LO;
    let p = 1.0
        + r * (1.0
            + r * (0.5
                + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (1.0 / 720.0))))));
    // 2^k: t = ROUND + k exactly, so the difference of their bits is k (integer arithmetic
    // that vectorizes, unlike a float-to-int cast); k + 127 is the biased exponent.
    let biased = t.to_bits().wrapping_sub(ROUND.to_bits()).wrapping_add(127);
    p * f32::from_bits(biased << 23)
}

/// A kernel's output buffer of `len` floats, left as the allocator hands it out (not zeroed).
///
/// Zeroing a fresh output costs one serial pass over it before the kernel's parallel pass;
/// candle's own CPU ops skip it the same way. The contents are unspecified bits (every bit
/// pattern is a valid `f32`) until written.
///
/// # Safety
///
/// The caller must write every element before any is read, and must not let the buffer escape
/// before then.
pub unsafe fn output_buffer(len: usize) -> Vec<f32> {
    let mut v = Vec::with_capacity(len);
    // SAFETY: the capacity is `len`; the caller writes every element before reading any.
    #[allow(clippy::uninit_vec)]
    unsafe {
        v.set_len(len)
    };
    v
}

/// Runs `f(i, part)` for the consecutive parts of `data` of length `part_len`, on candle's CPU
/// worker threads, each compiled for the CPU's widest vectors ([`vectorized`]; pass `f` as an
/// `#[inline(always)]` closure).
pub fn par_parts(data: &mut [f32], part_len: usize, f: impl Fn(usize, &mut [f32]) + Sync) {
    let parts: Vec<Mutex<&mut [f32]>> = data.chunks_mut(part_len.max(1)).map(Mutex::new).collect();
    candle_core::utils::barrier_pool().execute_chunked(parts.len(), |range| {
        vectorized(
            #[inline(always)]
            || {
                for i in range {
                    let mut part = parts[i].lock().unwrap_or_else(|e| e.into_inner());
                    f(i, &mut part);
                }
            },
        )
    });
}

/// Elements per task of the flat elementwise kernels ([`elementwise`]).
pub const ELEMENTWISE_PART: usize = 16 * 1024;

/// A new buffer of `len` floats filled by `f(at, part)` for its consecutive parts of
/// [`ELEMENTWISE_PART`] elements (`at` is the part's first index), in parallel as
/// [`par_parts`]: one pass for an elementwise map, without zeroing the buffer first. Pass `f`
/// as an `#[inline(always)]` closure that writes every element of its part.
pub fn elementwise(len: usize, f: impl Fn(usize, &mut [f32]) + Sync) -> Vec<f32> {
    // SAFETY: the parts of `par_parts` cover the buffer and `f` writes each of its part's
    // elements (the contract stated above) before the buffer is returned.
    let mut out = unsafe { output_buffer(len) };
    par_parts(
        &mut out,
        ELEMENTWISE_PART,
        #[inline(always)]
        |i, dst| f(i * ELEMENTWISE_PART, dst),
    );
    out
}

/// Runs `f`, compiled for AVX2 and FMA where the CPU has them.
///
/// The kernels' elementwise loops are written plainly so that the compiler vectorizes them;
/// built for the baseline x86-64 target that means 4-lane SSE. Passing such a loop here as an
/// `#[inline(always)]` closure compiles it a second time for 8-lane AVX2, chosen at run time.
#[inline(always)]
pub fn vectorized<R>(f: impl FnOnce() -> R) -> R {
    #[cfg(target_arch = "x86_64")]
    {
        if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
            // SAFETY: the CPU has the features `with_avx2` is compiled for.
            return unsafe { with_avx2(f) };
        }
    }
    f()
}

/// `f()` compiled with AVX2 and FMA enabled (`f` inlined into it).
///
/// # Safety
///
/// The CPU must support AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn with_avx2<R>(f: impl FnOnce() -> R) -> R {
    f()
}

/// A sum in `f64` over eight `f32` lanes (vectorizable, accurate enough for a mean or a
/// softmax normalizer).
#[inline(always)]
pub fn sum_f64(xs: &[f32]) -> f64 {
    let mut lanes = [0f64; 8];
    let mut chunks = xs.chunks_exact(8);
    for ch in &mut chunks {
        for (l, v) in lanes.iter_mut().zip(ch) {
            *l += f64::from(*v);
        }
    }
    let tail: f64 = chunks.remainder().iter().map(|&v| f64::from(v)).sum();
    lanes.iter().sum::<f64>() + tail
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fast_exp_is_accurate() {
        for i in -8700..=8800 {
            let x = i as f32 / 100.0;
            let (got, want) = (fast_exp(x), x.exp());
            assert!((got - want).abs() <= 3e-7 * want, "{x}: {got} vs {want}");
        }
        assert_eq!(fast_exp(-1000.0), fast_exp(-87.0));
        assert_eq!(fast_exp(1000.0), fast_exp(88.0));
        assert!(fast_exp(88.0).is_finite() && fast_exp(-87.0) > 0.0);
    }

    #[test]
    fn elementwise_covers_every_element_once() {
        for len in [
            0,
            1,
            ELEMENTWISE_PART - 1,
            ELEMENTWISE_PART,
            3 * ELEMENTWISE_PART + 7,
        ] {
            let out = elementwise(
                len,
                #[inline(always)]
                |at, dst| {
                    for (j, d) in dst.iter_mut().enumerate() {
                        *d = (at + j) as f32;
                    }
                },
            );
            assert_eq!(out.len(), len);
            assert!(
                out.iter().enumerate().all(|(i, &v)| v == i as f32),
                "len {len}"
            );
        }
    }

    #[test]
    fn vectorized_runs_the_same_arithmetic() {
        let xs: Vec<f32> = (0..1000).map(|i| (i as f32 - 500.0) / 25.0).collect();
        let plain: Vec<f32> = xs.iter().map(|&x| fast_exp(x)).collect();
        let mut fast = vec![0f32; xs.len()];
        vectorized(
            #[inline(always)]
            || {
                for (d, &x) in fast.iter_mut().zip(&xs) {
                    *d = fast_exp(x);
                }
            },
        );
        assert_eq!(plain, fast);
    }
}
