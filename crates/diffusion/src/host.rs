//! Host-side settings for the binaries that train and sample on the CPU.
//!
//! Every step of a CPU training or sampling loop allocates and frees the same large activation
//! buffers. mimalloc (the global allocator of the `recompose` binary, `cargo xtask` and the
//! benchmarks) by default returns freed memory to the operating system after a delay (1 s in the
//! bundled v3), so each step faults the pages back in and the kernel zeroes them again: on a Decomp Diffusion
//! training step that was ~100 000 page faults per six steps and ~30% of the wall time.
//! [`keep_freed_memory`] turns that off, so freed buffers are reused by the next step; the
//! process then keeps its peak memory until it exits.

/// mimalloc's `mi_option_purge_delay` (its position in `mi_option_e`, the same in the v2 and v3
/// sources bundled with `libmimalloc-sys` 0.1.49).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Asks mimalloc never to return freed memory to the operating system (purge delay −1, as
/// `MIMALLOC_PURGE_DELAY=-1` does). Harmless where mimalloc is not the global allocator.
pub fn keep_freed_memory() {
    // SAFETY: setting an option is thread-safe and takes effect for later purges.
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1) }
}

#[cfg(test)]
mod tests {
    /// The option at that position has the purge delay's default (1000 ms in the bundled v3;
    /// its neighbours default to 0 or 1) until [`super::keep_freed_memory`] sets it to −1.
    #[test]
    fn the_option_is_the_purge_delay() {
        // SAFETY: reading an option is thread-safe.
        let get = |o| unsafe { libmimalloc_sys::mi_option_get(o) };
        if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
            assert_eq!(get(super::MI_OPTION_PURGE_DELAY), 1000);
        }
        super::keep_freed_memory();
        assert_eq!(get(super::MI_OPTION_PURGE_DELAY), -1);
    }
}
