//! Process settings for the programs that train, sample and factorize on the CPU (feature
//! `process`; libraries never enable it, the `recompose` binary, `cargo xtask` and the benchmarks
//! do, first thing in `main`).
//!
//! - **Thread count.** candle sizes its CPU thread pool from `RAYON_NUM_THREADS` when it is set
//!   and otherwise reads `/proc/cpuinfo` on every matmul, which costs several percent of a
//!   resonator loop. [`pin_threads`] sets the variable once.
//! - **Freed memory.** Every step of a CPU training or sampling loop allocates and frees the same
//!   large activation buffers. mimalloc (the global allocator of the binaries) by default returns
//!   freed memory to the operating system after a delay (1 s in the bundled v3), so each step
//!   faults the pages back in and the kernel zeroes them again: on a Decomp Diffusion training
//!   step that was ~100 000 page faults per six steps and ~30% of the wall time.
//!   [`keep_freed_memory`] turns that off, so freed buffers are reused by the next step; the
//!   process then keeps its peak memory until it exits.
//! - **Allocation cap.** [`CappedAlloc`] wraps a global allocator and refuses any single request
//!   above a fixed size, so that a reader trusting a size declared by its input aborts the
//!   process (`memory allocation of N bytes failed`) instead of exhausting the machine; the
//!   fuzz program of `cargo xtask fuzz` runs under it.

/// mimalloc's `mi_option_purge_delay` (its position in `mi_option_e`, the same in the v2 and v3
/// sources bundled with `libmimalloc-sys` 0.1.49).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Asks mimalloc never to return freed memory to the operating system (purge delay −1, as
/// `MIMALLOC_PURGE_DELAY=-1` does). Harmless where mimalloc is not the global allocator.
pub fn keep_freed_memory() {
    // SAFETY: setting an option is thread-safe and takes effect for later purges.
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1) }
}

/// Whether this process runs a single thread, as far as the operating system says (Linux:
/// `/proc/self/task` has one entry); `false` where that cannot be read.
fn single_threaded() -> bool {
    std::fs::read_dir("/proc/self/task").is_ok_and(|d| d.count() == 1)
}

/// Sets `RAYON_NUM_THREADS` (candle's CPU thread count) to `threads`, or to the available
/// parallelism when `None` and the variable is not set yet. Returns whether the variable now
/// holds the wanted count.
///
/// Changing the environment is sound only while no other thread can read it, so the variable
/// is set only when the process still runs a single thread (checked through `/proc`; elsewhere
/// nothing is set). Call it first thing in `main`, before candle starts its pool: the pool reads
/// the variable once.
pub fn pin_threads(threads: Option<usize>) -> bool {
    let want = match threads {
        Some(n) => n.max(1),
        None => match std::env::var_os("RAYON_NUM_THREADS") {
            Some(_) => return true,
            None => std::thread::available_parallelism().map_or(1, |n| n.get()),
        },
    };
    if !single_threaded() {
        return std::env::var("RAYON_NUM_THREADS").is_ok_and(|v| v == want.to_string());
    }
    // SAFETY: the process runs a single thread (checked just above, and only this thread could
    // start another), so no other thread reads or writes the environment concurrently.
    unsafe { std::env::set_var("RAYON_NUM_THREADS", want.to_string()) };
    true
}

/// The set-up of every CPU binary of the workspace: [`pin_threads`] to the available cores
/// (unless `RAYON_NUM_THREADS` is set) and [`keep_freed_memory`].
pub fn prepare() {
    pin_threads(None);
    keep_freed_memory();
}

/// A global allocator that refuses (returns null for) any single allocation or reallocation
/// larger than `cap` bytes and hands every other request to `inner`. The refusal ends in
/// Rust's allocation-failure handler, which prints the size and aborts; fallible requests
/// (`try_reserve`) see an ordinary error.
#[derive(Debug)]
pub struct CappedAlloc<A> {
    inner: A,
    cap: usize,
}

impl<A> CappedAlloc<A> {
    /// `inner` with requests above `cap` bytes refused.
    pub const fn new(inner: A, cap: usize) -> Self {
        Self { inner, cap }
    }
}

// SAFETY: every request within the cap is forwarded unchanged to `inner`, which upholds the
// `GlobalAlloc` contract; a refused request returns null, which the contract allows.
unsafe impl<A: std::alloc::GlobalAlloc> std::alloc::GlobalAlloc for CappedAlloc<A> {
    unsafe fn alloc(&self, layout: std::alloc::Layout) -> *mut u8 {
        if layout.size() > self.cap {
            return std::ptr::null_mut();
        }
        // SAFETY: the caller's layout is passed on as received.
        unsafe { self.inner.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: std::alloc::Layout) -> *mut u8 {
        if layout.size() > self.cap {
            return std::ptr::null_mut();
        }
        // SAFETY: as in `alloc`.
        unsafe { self.inner.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: std::alloc::Layout) {
        // SAFETY: `ptr` came from `inner` (refused requests never hand out a pointer).
        unsafe { self.inner.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: std::alloc::Layout, new_size: usize) -> *mut u8 {
        if new_size > self.cap {
            return std::ptr::null_mut();
        }
        // SAFETY: `ptr` and `layout` came from `inner`, as the caller guarantees.
        unsafe { self.inner.realloc(ptr, layout, new_size) }
    }
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

    /// Requests within the cap succeed; a larger one is refused, also when growing a buffer.
    #[test]
    fn the_cap_refuses_large_requests_only() {
        use std::alloc::{GlobalAlloc, Layout, System};
        let a = super::CappedAlloc::new(System, 1 << 20);
        let small = Layout::from_size_align(1024, 8).expect("layout");
        let big = Layout::from_size_align((1 << 20) + 1, 8).expect("layout");
        // SAFETY: each pointer is checked and freed with the layout it was allocated with.
        unsafe {
            assert!(a.alloc(big).is_null());
            assert!(a.alloc_zeroed(big).is_null());
            let p = a.alloc_zeroed(small);
            assert!(!p.is_null());
            assert_eq!(*p.add(1023), 0);
            assert!(a.realloc(p, small, (1 << 20) + 1).is_null());
            let q = a.realloc(p, small, 4096);
            assert!(!q.is_null());
            a.dealloc(q, Layout::from_size_align(4096, 8).expect("layout"));
        }
    }

    /// The test harness runs several threads, so the environment is left alone.
    #[test]
    fn a_threaded_process_keeps_its_environment() {
        let before = std::env::var_os("RAYON_NUM_THREADS");
        let _worker = std::thread::spawn(|| std::thread::sleep(std::time::Duration::from_secs(1)));
        assert!(!super::single_threaded());
        super::pin_threads(Some(3));
        assert_eq!(std::env::var_os("RAYON_NUM_THREADS"), before);
    }
}
