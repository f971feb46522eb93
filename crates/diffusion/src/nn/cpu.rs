//! Small helpers for the CPU custom ops of this workspace (the convolution, group-norm and
//! attention kernels here, the batch-norm kernel of `recompose-decomp`): the contiguous `f32`
//! data of a candle storage, and a pointer that worker threads writing disjoint parts may share.

use candle_core::{CpuStorage, Layout, bail};

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
