//! Device parity: one computation on the CPU fast paths and on another path, compared.
//!
//! Every model, sampler and solver of recompose has two implementations: the hand-written CPU
//! kernels of [`crate::ops`] (the fast path, taken for `f32` tensors on the CPU) and candle's
//! ops (taken on every other device). A parity check runs a computation — a closure from a
//! [`Device`] to named output tensors — once on the CPU with the fast paths (the baseline) and
//! once on a [`Target`], and compares every output by its normwise relative error
//!
//! ```text
//! err(a, b) = max_i |a_i − b_i| / max(max_i |a_i|, 1e-30)
//! ```
//!
//! against a tolerance ([`DEFAULT_TOLERANCE`] = 10⁻⁴ unless a check states another bound and its
//! reason). The targets ([`targets`]): the CPU with the fast paths off
//! ([`Target::CpuReference`], the code a GPU runs, computed on the CPU; always available) and,
//! in builds with the `cuda` feature, the first CUDA device ([`Target::Cuda`]). Random draws
//! come from the seeded host generator on every target ([`crate::random`]), so the same seed
//! gives the same inputs.
//!
//! [`device_parity!`](crate::device_parity) writes the tests: one per check and target. The
//! checks switch the process-wide fast paths ([`crate::host::set_fast_paths`]), so they hold a
//! lock while they run; keep them in a test binary of their own.

use std::sync::Mutex;

use candle_core::{DType, Device, Tensor};

/// The tolerance of a parity check that states no other: 10⁻⁴ normwise relative error.
pub const DEFAULT_TOLERANCE: f64 = 1e-4;

/// Where a parity check runs its computation, next to the CPU fast paths.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// The CPU with every fast path off: candle's ops, as on a GPU.
    CpuReference,
    /// CUDA device `n` (builds with the `cuda` feature on a machine with a GPU).
    Cuda(usize),
}

impl Target {
    /// A short name for reports: `cpu-reference` or `cuda:N`.
    pub fn name(&self) -> String {
        match self {
            Self::CpuReference => "cpu-reference".into(),
            Self::Cuda(n) => format!("cuda:{n}"),
        }
    }

    /// The device the target computes on.
    ///
    /// # Errors
    ///
    /// When the CUDA device cannot be opened (a build without CUDA, no such GPU).
    pub fn device(&self) -> Result<Device, String> {
        match self {
            Self::CpuReference => Ok(Device::Cpu),
            Self::Cuda(n) => {
                Device::new_cuda(*n).map_err(|e| format!("cannot open CUDA device {n}: {e}"))
            }
        }
    }
}

/// The targets of this build: the CPU reference and, with the `cuda` feature, CUDA device 0.
pub fn targets() -> Vec<Target> {
    let mut t = vec![Target::CpuReference];
    if cfg!(feature = "cuda") {
        t.push(Target::Cuda(0));
    }
    t
}

/// The normwise relative error of `b` against `a` (see the [module documentation](self)).
/// Non-finite values or a length mismatch give infinity.
pub fn relative_error(a: &[f32], b: &[f32]) -> f64 {
    if a.len() != b.len() {
        return f64::INFINITY;
    }
    let mut scale = 0f64;
    let mut diff = 0f64;
    for (&x, &y) in a.iter().zip(b) {
        if !x.is_finite() || !y.is_finite() {
            return f64::INFINITY;
        }
        scale = scale.max(f64::from(x).abs());
        diff = diff.max((f64::from(x) - f64::from(y)).abs());
    }
    diff / scale.max(1e-30)
}

/// One compared output of a parity check.
#[derive(Debug, Clone, PartialEq)]
pub struct Compared {
    /// The output's name.
    pub name: String,
    /// Its shape.
    pub dims: Vec<usize>,
    /// The normwise relative error on the target against the CPU fast paths.
    pub error: f64,
}

/// Serializes the checks: they switch the process-wide fast paths.
static LOCK: Mutex<()> = Mutex::new(());

/// Restores the fast paths when a check ends, even by a panic.
struct FastPathsOn;

impl Drop for FastPathsOn {
    fn drop(&mut self) {
        crate::host::set_fast_paths(true);
    }
}

fn host_values(t: &Tensor) -> Result<Vec<f32>, String> {
    t.to_device(&Device::Cpu)
        .and_then(|t| t.to_dtype(DType::F32))
        .and_then(|t| t.flatten_all())
        .and_then(|t| t.to_vec1::<f32>())
        .map_err(|e| format!("reading an output back: {e}"))
}

/// Runs `outputs` on the CPU fast paths and on `target`, and compares the outputs by name,
/// shape and value (each within `tolerance`).
///
/// # Errors
///
/// A message naming the first failure: the computation's own error on either side, outputs
/// that differ in name or shape, an error above the tolerance, or a non-finite value.
pub fn compare<E: std::fmt::Display>(
    target: Target,
    tolerance: f64,
    outputs: impl Fn(&Device) -> Result<Vec<(String, Tensor)>, E>,
) -> Result<Vec<Compared>, String> {
    let _serial = LOCK.lock().unwrap_or_else(|p| p.into_inner());
    let _restore = FastPathsOn;
    crate::host::set_fast_paths(true);
    let base = outputs(&Device::Cpu).map_err(|e| format!("on the CPU fast paths: {e}"))?;
    let device = target.device()?;
    crate::host::set_fast_paths(target != Target::CpuReference);
    let other = outputs(&device).map_err(|e| format!("on {}: {e}", target.name()))?;
    crate::host::set_fast_paths(true);
    if base.len() != other.len() {
        return Err(format!(
            "{} outputs on the CPU, {} on {}",
            base.len(),
            other.len(),
            target.name()
        ));
    }
    let mut out = Vec::with_capacity(base.len());
    for ((na, a), (nb, b)) in base.iter().zip(&other) {
        if na != nb || a.dims() != b.dims() {
            return Err(format!(
                "output '{na}' {:?} on the CPU is '{nb}' {:?} on {}",
                a.dims(),
                b.dims(),
                target.name()
            ));
        }
        if !matches!(b.device(), Device::Cpu) && target == Target::CpuReference {
            return Err(format!("output '{nb}' left the CPU"));
        }
        let error = relative_error(&host_values(a)?, &host_values(b)?);
        if error.is_nan() || error > tolerance {
            return Err(format!(
                "output '{na}' {:?}: relative error {error:.3e} on {} exceeds {tolerance:.0e}",
                a.dims(),
                target.name()
            ));
        }
        out.push(Compared {
            name: na.clone(),
            dims: a.dims().to_vec(),
            error,
        });
    }
    Ok(out)
}

/// [`compare`], panicking with its message on failure and printing each output's error
/// otherwise: the body of the tests [`device_parity!`](crate::device_parity) writes.
///
/// # Panics
///
/// When the check fails.
pub fn assert_parity<E: std::fmt::Display>(
    check: &str,
    target: Target,
    tolerance: f64,
    outputs: impl Fn(&Device) -> Result<Vec<(String, Tensor)>, E>,
) {
    match compare(target, tolerance, outputs) {
        Ok(compared) => {
            for c in compared {
                println!(
                    "parity {check} {} {} {:?}: {:.3e}",
                    target.name(),
                    c.name,
                    c.dims,
                    c.error
                );
            }
        }
        Err(e) => panic!("parity {check} on {}: {e}", target.name()),
    }
}

/// Writes device parity tests: for each check, a module with one test per target — `cpu_reference`
/// always, `cuda` when the crate that uses the macro is built with its `cuda` feature.
///
/// Each check is a function from a device to named outputs (`Vec<(String, Tensor)>`) in any
/// `Result` whose error displays; an optional `tolerance = EXPR;` before it replaces
/// [`DEFAULT_TOLERANCE`](crate::parity::DEFAULT_TOLERANCE) (state the reason beside it).
///
/// ```
/// use candle_core::{Device, Tensor};
/// recompose_core::device_parity! {
///     fn squares(device: &Device) -> candle_core::Result<Vec<(String, Tensor)>> {
///         let x = Tensor::new(&[1f32, 2.0, 3.0], device)?;
///         Ok(vec![("x²".into(), x.sqr()?)])
///     }
/// }
/// # fn main() { squares::run(recompose_core::parity::Target::CpuReference); }
/// ```
#[macro_export]
macro_rules! device_parity {
    ($(
        $(#[$meta:meta])*
        $(tolerance = $tol:expr;)?
        fn $name:ident($dev:ident: &Device) -> $ret:ty $body:block
    )*) => {$(
        $(#[$meta])*
        #[allow(clippy::module_inception)]
        mod $name {
            #[allow(unused_imports)]
            use super::*;

            fn outputs($dev: &::candle_core::Device) -> $ret $body

            /// Runs the check on `target`, panicking on a failure.
            pub fn run(target: $crate::parity::Target) {
                #[allow(unused_mut, unused_assignments)]
                let mut tolerance = $crate::parity::DEFAULT_TOLERANCE;
                $(tolerance = $tol;)?
                $crate::parity::assert_parity(stringify!($name), target, tolerance, outputs);
            }

            #[test]
            fn cpu_reference() {
                run($crate::parity::Target::CpuReference);
            }

            #[cfg(feature = "cuda")]
            #[test]
            fn cuda() {
                run($crate::parity::Target::Cuda(0));
            }
        }
    )*};
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_error_is_normwise() {
        assert_eq!(relative_error(&[1.0, -4.0], &[1.0, -4.0]), 0.0);
        assert!((relative_error(&[1.0, -4.0], &[1.5, -4.0]) - 0.125).abs() < 1e-12);
        assert_eq!(relative_error(&[1.0], &[1.0, 2.0]), f64::INFINITY);
        assert_eq!(relative_error(&[1.0], &[f32::NAN]), f64::INFINITY);
        assert_eq!(relative_error(&[0.0], &[0.0]), 0.0);
    }

    #[test]
    fn a_difference_between_paths_fails_the_check() {
        // An output that depends on whether the fast paths are on must fail.
        let e = compare(Target::CpuReference, 1e-4, |d| {
            let v = if crate::host::fast_paths_enabled() {
                1f32
            } else {
                1.1
            };
            Ok::<_, candle_core::Error>(vec![("v".into(), Tensor::new(&[v], d)?)])
        })
        .unwrap_err();
        assert!(e.contains("relative error"), "{e}");
        assert!(crate::host::fast_paths_enabled());
        let ok = compare(Target::CpuReference, 1e-4, |d| {
            Ok::<_, candle_core::Error>(vec![("v".into(), Tensor::new(&[2f32], d)?)])
        })
        .unwrap();
        assert_eq!(ok[0].error, 0.0);
    }
}
