//! Host access to tensor data for the CPU fast paths.
//!
//! A fast path reads and writes the contiguous `f32` memory behind candle tensors that live on
//! the CPU; anything else (another device or dtype, a strided view) takes the equivalent candle
//! ops instead, so results agree everywhere.

use candle_core::{Storage, Tensor};

/// Runs `f` on the contiguous f32 host slices of `xs` when they all live on the CPU in that
/// form; returns `None` otherwise (a fast path then falls back to candle's ops).
pub fn with_host_slices<R>(xs: &[&Tensor], f: impl FnOnce(&[&[f32]]) -> R) -> Option<R> {
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
