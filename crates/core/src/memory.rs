//! Memory guard: estimates of what a request will allocate, checked against a limit before
//! anything is allocated.
//!
//! Every library entry point that can be asked for an arbitrarily large allocation (a codebook
//! of a billion codewords, a batch of a million chains) computes an [`Estimate`] of its peak
//! working set from the request's sizes alone and compares it with a [`MemoryLimit`]. A request
//! that would not fit is refused with a [`MemoryError`] naming the estimate and the limit, so
//! that an absurd size costs an error message instead of swapping the machine to a halt.
//!
//! - [`Estimate`]: a byte count built with checked arithmetic; an overflow of the sizes (say
//!   D·M·F beyond 2⁶⁴) is kept as such and refused, never wrapped around.
//! - [`MemoryLimit`]: the limit a request must fit in. [`MemoryLimit::available`] is the memory
//!   the machine can still give: `MemAvailable` of `/proc/meminfo` (Linux, `proc(5)`), lowered
//!   to the head-room of the process's control group when one sets a limit (cgroup v2
//!   `memory.max − memory.current`, cgroup v1 `memory.limit_in_bytes − memory.usage_in_bytes`,
//!   Linux's `Documentation/admin-guide/cgroup-v2.rst` and `cgroup-v1/memory.rst`), and
//!   [`FALLBACK_LIMIT`] where none of these can be read.
//! - [`ByteSize`]: a byte count with a human-readable [`Display`](std::fmt::Display) (binary
//!   units: `1.5 GiB`) and a [`FromStr`] that accepts `512M`, `8G`,
//!   `1.5GiB`, `100MB` or plain bytes (every unit is a power of 1024).
//!
//! Estimates are upper-ish bounds: each one sums the buffers the code allocates at its peak,
//! with the formula written next to the code it describes, and leaves out small per-item
//! bookkeeping (a few bytes per trial or per file) and the fixed size of the program itself.

use std::fmt;
use std::str::FromStr;

/// The limit used by [`MemoryLimit::available`] when the machine's available memory cannot be
/// read (not Linux, or no `/proc`): 8 GiB.
pub const FALLBACK_LIMIT: u64 = 8 << 30;

/// A number of bytes, displayed with binary units (`512 MiB`, `1.5 GiB`) and parsed from the
/// same forms (see [`ByteSize::from_str`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ByteSize(pub u64);

const UNITS: [&str; 7] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];

impl fmt::Display for ByteSize {
    /// Whole bytes below 1 KiB, otherwise the largest binary unit with at most one decimal
    /// (`1023 B`, `1.5 KiB`, `7.6 GiB`).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0 < 1024 {
            return write!(f, "{} B", self.0);
        }
        let mut v = self.0 as f64;
        let mut unit = 0;
        while v >= 1024.0 && unit + 1 < UNITS.len() {
            v /= 1024.0;
            unit += 1;
        }
        let text = format!("{v:.1}");
        let text = text.strip_suffix(".0").unwrap_or(&text);
        write!(f, "{text} {}", UNITS[unit])
    }
}

/// Why a [`ByteSize`] could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid size '{0}': expected a positive number of bytes with an optional unit \
     (K, M, G, T, optionally followed by B or iB, all powers of 1024), e.g. 512M, 8G, 1.5GiB"
)]
pub struct ParseSizeError(pub String);

impl FromStr for ByteSize {
    type Err = ParseSizeError;

    /// A positive size: a decimal number (`1.5`, `512`) followed by an optional unit — `B`,
    /// `K`, `M`, `G`, `T`, `P`, each optionally followed by `B` or `iB`, case-insensitive — all
    /// powers of 1024 (`8G` = `8GB` = `8GiB` = 8·2³⁰ bytes). Fractions of a byte are rounded
    /// down; zero, negative, non-finite and sizes beyond 2⁶⁴ − 1 bytes are errors.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || ParseSizeError(s.to_string());
        let t = s.trim();
        let split = t
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(t.len());
        let (num, unit) = t.split_at(split);
        if num.is_empty() {
            return Err(err());
        }
        let unit = unit.trim().to_ascii_lowercase();
        let unit = unit
            .strip_suffix("ib")
            .or_else(|| unit.strip_suffix('b'))
            .unwrap_or(&unit);
        let shift = match unit {
            "" => 0,
            "k" => 10,
            "m" => 20,
            "g" => 30,
            "t" => 40,
            "p" => 50,
            _ => return Err(err()),
        };
        let bytes = if let Ok(whole) = num.parse::<u64>() {
            whole.checked_mul(1u64 << shift).ok_or_else(err)?
        } else {
            let v: f64 = num.parse().map_err(|_| err())?;
            let b = (v * (1u64 << shift) as f64).floor();
            // 2⁶⁴ itself is the first f64 that does not fit.
            if !(b.is_finite() && b < 18_446_744_073_709_551_616.0) {
                return Err(err());
            }
            b as u64
        };
        if bytes == 0 {
            return Err(err());
        }
        Ok(ByteSize(bytes))
    }
}

/// An estimate of the bytes a request allocates at its peak, built with checked arithmetic:
/// once any product or sum overflows `u64`, the estimate is [`Estimate::OVERFLOW`] and no limit
/// accepts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Estimate(Option<u64>);

impl Estimate {
    /// Nothing.
    pub const ZERO: Estimate = Estimate(Some(0));
    /// Sizes whose byte count does not fit in `u64`.
    pub const OVERFLOW: Estimate = Estimate(None);

    /// Exactly `n` bytes.
    pub fn bytes(n: u64) -> Self {
        Estimate(Some(n))
    }

    /// Exactly `n` bytes, in constant contexts.
    pub const fn bytes_const(n: u64) -> Self {
        Estimate(Some(n))
    }

    /// An array of the given shape with elements of `elem_bytes` bytes each: the product of
    /// every extent and the element size.
    pub fn array(shape: &[usize], elem_bytes: usize) -> Self {
        shape
            .iter()
            .fold(Estimate::bytes(elem_bytes as u64), |acc, &n| acc * n)
    }

    /// An `f32` array of the given shape (4 bytes an element).
    pub fn f32s(shape: &[usize]) -> Self {
        Self::array(shape, 4)
    }

    /// The byte count, `None` when the sizes overflowed.
    pub fn get(self) -> Option<u64> {
        self.0
    }

    /// The larger of two estimates (an overflow is larger than anything).
    pub fn max(self, other: Estimate) -> Estimate {
        match (self.0, other.0) {
            (Some(a), Some(b)) => Estimate(Some(a.max(b))),
            _ => Estimate::OVERFLOW,
        }
    }
}

impl std::ops::Add for Estimate {
    type Output = Estimate;
    fn add(self, rhs: Estimate) -> Estimate {
        Estimate(self.0.zip(rhs.0).and_then(|(a, b)| a.checked_add(b)))
    }
}

impl std::ops::AddAssign for Estimate {
    fn add_assign(&mut self, rhs: Estimate) {
        *self = *self + rhs;
    }
}

impl std::ops::Mul<usize> for Estimate {
    type Output = Estimate;
    fn mul(self, rhs: usize) -> Estimate {
        Estimate(self.0.and_then(|a| a.checked_mul(rhs as u64)))
    }
}

impl std::iter::Sum for Estimate {
    fn sum<I: Iterator<Item = Estimate>>(iter: I) -> Estimate {
        iter.fold(Estimate::ZERO, |a, b| a + b)
    }
}

impl fmt::Display for Estimate {
    /// The size as a [`ByteSize`], or "more than 16 EiB" after an overflow.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(b) => ByteSize(b).fmt(f),
            None => f.write_str("more than 16 EiB (the sizes overflow)"),
        }
    }
}

/// Where a [`MemoryLimit`] comes from; shown in refusals.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitSource {
    /// Set explicitly by the caller.
    Given,
    /// The machine's available memory, read when the limit was made.
    Available,
    /// [`FALLBACK_LIMIT`]: the available memory could not be read.
    Fallback,
}

/// The most memory a request may allocate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryLimit {
    bytes: u64,
    source: LimitSource,
}

impl MemoryLimit {
    /// A limit of `bytes`, set by the caller.
    pub fn new(bytes: u64) -> Self {
        MemoryLimit {
            bytes,
            source: LimitSource::Given,
        }
    }

    /// No limit at all (every estimate that did not overflow fits).
    pub fn unlimited() -> Self {
        Self::new(u64::MAX)
    }

    /// The memory the machine can give now: `MemAvailable` from `/proc/meminfo`, lowered to
    /// the head-room left by the process's cgroup (v2 or v1) when that is smaller, or
    /// [`FALLBACK_LIMIT`] when neither can be read.
    pub fn available() -> Self {
        let meminfo = std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|t| parse_meminfo_available(&t));
        let cgroup = cgroup_headroom();
        match (meminfo, cgroup) {
            (None, None) => MemoryLimit {
                bytes: FALLBACK_LIMIT,
                source: LimitSource::Fallback,
            },
            (a, b) => MemoryLimit {
                bytes: a.unwrap_or(u64::MAX).min(b.unwrap_or(u64::MAX)),
                source: LimitSource::Available,
            },
        }
    }

    /// The limit in bytes.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Where the limit comes from.
    pub fn source(&self) -> LimitSource {
        self.source
    }

    /// `Ok` when `estimate` fits in the limit; otherwise the error naming `what` (the request,
    /// e.g. "factorizing 10 trials of D = 1000, M = 50, F = 3"), the estimate and the limit.
    pub fn check(&self, what: impl fmt::Display, estimate: Estimate) -> Result<(), MemoryError> {
        match estimate.get() {
            Some(b) if b <= self.bytes => Ok(()),
            _ => Err(MemoryError {
                what: what.to_string(),
                estimate,
                limit: *self,
            }),
        }
    }
}

impl FromStr for MemoryLimit {
    type Err = ParseSizeError;
    /// A limit given as a [`ByteSize`] (`512M`, `8G`, `1.5GiB`, plain bytes).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(MemoryLimit::new(s.parse::<ByteSize>()?.0))
    }
}

impl fmt::Display for MemoryLimit {
    /// The size, and for a limit that was not given, where it comes from
    /// (`7.6 GiB available`).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.source {
            LimitSource::Given if self.bytes == u64::MAX => f.write_str("unlimited"),
            LimitSource::Given => ByteSize(self.bytes).fmt(f),
            LimitSource::Available => write!(f, "{} available", ByteSize(self.bytes)),
            LimitSource::Fallback => write!(
                f,
                "{} (the available memory could not be read)",
                ByteSize(self.bytes)
            ),
        }
    }
}

/// A request refused because its memory estimate exceeds the limit (or its sizes overflow).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{what} needs an estimated {estimate} of memory, more than the limit of {limit}")]
pub struct MemoryError {
    /// The request.
    pub what: String,
    /// Its estimate.
    pub estimate: Estimate,
    /// The limit it was checked against.
    pub limit: MemoryLimit,
}

/// `MemAvailable` of a `/proc/meminfo` text, in bytes.
pub fn parse_meminfo_available(text: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let mut parts = line["MemAvailable:".len()..].split_whitespace();
    let value: u64 = parts.next()?.parse().ok()?;
    match parts.next() {
        Some("kB") => value.checked_mul(1024),
        None => Some(value),
        Some(_) => None,
    }
}

/// The head-room `limit − usage` of a cgroup from the texts of its limit and usage files
/// (`memory.max` / `memory.current` in v2, `memory.limit_in_bytes` / `memory.usage_in_bytes`
/// in v1); `None` when the group sets no limit (`max`, or v1's "unlimited" value of about
/// 2⁶³) or a file is malformed.
pub fn parse_cgroup_headroom(limit: &str, usage: &str) -> Option<u64> {
    let limit = limit.trim();
    if limit == "max" {
        return None;
    }
    let limit: u64 = limit.parse().ok()?;
    // cgroup v1 reports "no limit" as the largest page-aligned i64.
    if limit >= 1 << 62 {
        return None;
    }
    let usage: u64 = usage.trim().parse().ok()?;
    Some(limit.saturating_sub(usage))
}

/// The smallest head-room of the process's cgroup and its ancestors, v2 or v1.
fn cgroup_headroom() -> Option<u64> {
    let own = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    let mut best: Option<u64> = None;
    let mut consider = |dir: &std::path::Path, limit: &str, usage: &str| {
        let read = |name: &str| std::fs::read_to_string(dir.join(name)).ok();
        if let (Some(l), Some(u)) = (read(limit), read(usage))
            && let Some(h) = parse_cgroup_headroom(&l, &u)
        {
            best = Some(best.map_or(h, |b| b.min(h)));
        }
    };
    for line in own.lines() {
        let mut fields = line.splitn(3, ':');
        let (Some(_), Some(controllers), Some(path)) =
            (fields.next(), fields.next(), fields.next())
        else {
            continue;
        };
        let (root, limit, usage) = if controllers.is_empty() {
            ("/sys/fs/cgroup", "memory.max", "memory.current")
        } else if controllers.split(',').any(|c| c == "memory") {
            (
                "/sys/fs/cgroup/memory",
                "memory.limit_in_bytes",
                "memory.usage_in_bytes",
            )
        } else {
            continue;
        };
        // The group itself and every ancestor up to the root (a limit may sit above us). In a
        // container the path may name the host's hierarchy while the root is mounted as the
        // group itself, which the root entry covers.
        let mut rel = std::path::PathBuf::from(path.trim_start_matches('/'));
        loop {
            consider(&std::path::Path::new(root).join(&rel), limit, usage);
            if !rel.pop() {
                break;
            }
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_in_binary_units() {
        let p = |s: &str| s.parse::<ByteSize>().map(|b| b.0);
        assert_eq!(p("512M"), Ok(512 << 20));
        assert_eq!(p("8G"), Ok(8 << 30));
        assert_eq!(p("8gb"), Ok(8 << 30));
        assert_eq!(p("1.5GiB"), Ok(3 << 29));
        assert_eq!(p("100"), Ok(100));
        assert_eq!(p("100B"), Ok(100));
        assert_eq!(p(" 2 KiB "), Ok(2048));
        assert_eq!(p("1T"), Ok(1 << 40));
        assert_eq!(p("0.5K"), Ok(512));
        assert_eq!(p("16383P"), Ok(16383 << 50));
        for bad in [
            "",
            "0",
            "0M",
            "-1G",
            "G",
            "1.2.3G",
            "12X",
            "1e9",
            "nan",
            ".",
            "16384P",
            "1GG",
            "99999999999999999999",
        ] {
            assert!(p(bad).is_err(), "{bad:?} parsed");
        }
    }

    #[test]
    fn sizes_display_in_binary_units() {
        let d = |b: u64| ByteSize(b).to_string();
        assert_eq!(d(0), "0 B");
        assert_eq!(d(1023), "1023 B");
        assert_eq!(d(1024), "1 KiB");
        assert_eq!(d(1536), "1.5 KiB");
        assert_eq!(d(3 << 29), "1.5 GiB");
        assert_eq!(d(1_200_000_000_000), "1.1 TiB");
        // Display and parse agree on round values.
        for b in [1u64 << 20, 3 << 29, 5 << 40] {
            assert_eq!(d(b).replace(' ', "").parse::<ByteSize>(), Ok(ByteSize(b)));
        }
    }

    #[test]
    fn estimates_overflow_instead_of_wrapping() {
        assert_eq!(Estimate::f32s(&[3, 1000, 1000]).get(), Some(12_000_000));
        let huge = Estimate::f32s(&[usize::MAX / 2, 3]);
        assert_eq!(huge, Estimate::OVERFLOW);
        assert_eq!((huge + Estimate::bytes(1)).get(), None);
        assert_eq!((Estimate::bytes(u64::MAX) + Estimate::bytes(1)).get(), None);
        assert_eq!(Estimate::bytes(5).max(Estimate::bytes(7)).get(), Some(7));
        assert_eq!(
            Estimate::bytes(5).max(Estimate::OVERFLOW),
            Estimate::OVERFLOW
        );
        let total: Estimate = [1u64, 2, 3].into_iter().map(Estimate::bytes).sum();
        assert_eq!(total.get(), Some(6));
        // No limit accepts an overflow, not even an unlimited one.
        assert!(MemoryLimit::unlimited().check("x", huge).is_err());
        assert!(
            MemoryLimit::unlimited()
                .check("x", Estimate::bytes(u64::MAX))
                .is_ok()
        );
    }

    #[test]
    fn check_names_estimate_and_limit() {
        let limit: MemoryLimit = "1M".parse().unwrap();
        assert!(limit.check("small", Estimate::bytes(1 << 20)).is_ok());
        let e = limit
            .check("a codebook of 10 codewords", Estimate::bytes((1 << 20) + 1))
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "a codebook of 10 codewords needs an estimated 1 MiB of memory, more than the \
             limit of 1 MiB"
        );
        let e = limit.check("x", Estimate::bytes(3 << 29)).unwrap_err();
        assert!(e.to_string().contains("1.5 GiB"), "{e}");
    }

    #[test]
    fn meminfo_and_cgroup_files_parse() {
        let text = "MemTotal:       16318412 kB\nMemFree:         1021776 kB\n\
                    MemAvailable:    7812344 kB\nBuffers:          204124 kB\n";
        assert_eq!(parse_meminfo_available(text), Some(7_812_344 * 1024));
        assert_eq!(parse_meminfo_available("MemTotal: 1 kB\n"), None);
        assert_eq!(parse_cgroup_headroom("max\n", "123\n"), None);
        assert_eq!(parse_cgroup_headroom("1000\n", "300\n"), Some(700));
        assert_eq!(parse_cgroup_headroom("1000", "3000"), Some(0));
        assert_eq!(
            parse_cgroup_headroom("9223372036854771712\n", "300\n"),
            None
        );
        assert_eq!(parse_cgroup_headroom("x", "1"), None);
    }

    #[test]
    fn available_is_positive_here() {
        let a = MemoryLimit::available();
        assert!(a.bytes() > 0);
        if std::path::Path::new("/proc/meminfo").exists() {
            let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap();
            let avail = parse_meminfo_available(&meminfo).unwrap();
            // The cgroup can only lower it (and memory may have been freed meanwhile).
            assert!(a.bytes() <= avail + (256 << 20), "{} > {avail}", a.bytes());
            assert_eq!(a.source(), LimitSource::Available);
        }
    }
}
