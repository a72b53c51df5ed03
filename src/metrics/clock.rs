//! The metrics' clock: nanoseconds on CLOCK_MONOTONIC's scale, read with
//! `rdtsc` where the TSC is invariant (a few instructions instead of a vDSO
//! `clock_gettime`), with `clock_gettime` elsewhere.
//!
//! NOTE: the loop reads this clock four times per tick. Through the vDSO a
//! read is ~70 instructions; `rdtsc` plus a fixed-point multiply is ~10. The
//! TSC's rate is measured once per process against CLOCK_MONOTONIC over
//! 2 ms (an error of a few parts per million: the two reads of each pair
//! are back to back) and only used if `/proc/cpuinfo` lists `constant_tsc`
//! and `nonstop_tsc` (the rate does not change with power states and the
//! counter does not stop in sleep), which is what Linux itself requires
//! before it makes the TSC its clocksource.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Once;

/// How cycles become nanoseconds: `ns = (cycles * mult) >> 32`.
#[derive(Clone, Copy, Debug)]
struct TscScale {
    mult: u64,
}

/// The TSC's `mult` once measured; 0 while unknown or if the TSC is not
/// used (then stamps are CLOCK_MONOTONIC nanoseconds). A plain atomic: the
/// hot path reads it with one load.
static MULT: AtomicU64 = AtomicU64::new(0);
static INIT: Once = Once::new();

fn monotonic_ns() -> u64 {
    let ts = crate::clock::monotonic_timespec();
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn cycles() -> u64 {
    // SAFETY: rdtsc has no memory effects and is available on every x86_64
    // CPU; user-mode reads are only disabled by a kernel that also makes
    // `tsc_usable` false (no constant_tsc flag is reported then).
    unsafe { core::arch::x86_64::_rdtsc() }
}

#[cfg(target_arch = "x86_64")]
fn tsc_usable() -> bool {
    let Ok(info) = std::fs::read_to_string("/proc/cpuinfo") else {
        return false;
    };
    let Some(flags) = info.lines().find(|l| l.starts_with("flags")) else {
        return false;
    };
    let has = |f: &str| flags.split_whitespace().any(|w| w == f);
    has("constant_tsc") && has("nonstop_tsc")
}

#[cfg(target_arch = "x86_64")]
fn calibrate() -> Option<TscScale> {
    if !tsc_usable() {
        return None;
    }
    let (c0, n0) = (cycles(), monotonic_ns());
    std::thread::sleep(std::time::Duration::from_millis(2));
    let (c1, n1) = (cycles(), monotonic_ns());
    let (dc, dn) = (c1.checked_sub(c0)?, n1.checked_sub(n0)?);
    if dc == 0 || dn == 0 {
        return None;
    }
    // mult = 2^32 * ns per cycle; a 100 MHz..100 GHz TSC fits easily.
    let mult = ((dn as u128) << 32) / dc as u128;
    (mult > 0 && mult < u64::MAX as u128).then_some(TscScale { mult: mult as u64 })
}

#[cfg(not(target_arch = "x86_64"))]
fn calibrate() -> Option<TscScale> {
    None
}

#[cfg(not(target_arch = "x86_64"))]
#[inline(always)]
fn cycles() -> u64 {
    0
}

/// Measures the TSC's rate (once per process; ~2 ms the first time).
///
/// NOTE: stamps taken before `init` (none are: a loop's metrics call it
/// when they are made) would be nanoseconds, not cycles.
pub fn init() {
    INIT.call_once(|| {
        if let Some(s) = calibrate() {
            MULT.store(s.mult, Relaxed);
        }
    });
}

/// A timestamp for measuring durations: opaque units, see `to_ns`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct Stamp(u64);

impl Stamp {
    pub const ZERO: Stamp = Stamp(0);

    /// For keeping a stamp in an atomic.
    pub fn raw(self) -> u64 {
        self.0
    }

    pub fn from_raw(v: u64) -> Stamp {
        Stamp(v)
    }
}

/// Now, cheaply.
#[inline(always)]
pub fn now() -> Stamp {
    if MULT.load(Relaxed) != 0 {
        Stamp(cycles())
    } else {
        Stamp(monotonic_ns())
    }
}

/// Nanoseconds from `a` to `b` (0 if `b` is not after `a`).
#[inline(always)]
pub fn elapsed_ns(a: Stamp, b: Stamp) -> u64 {
    let d = b.0.saturating_sub(a.0);
    match MULT.load(Relaxed) {
        0 => d,
        mult => ((d as u128 * mult as u128) >> 32) as u64,
    }
}

/// Nanoseconds on CLOCK_MONOTONIC (the loop's `time()` times 1e9): for the
/// rare events that need an absolute time (slow callbacks, timer lateness).
pub fn monotonic_now_ns() -> u64 {
    monotonic_ns()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_follow_the_monotonic_clock() {
        init();
        let (s0, n0) = (now(), monotonic_ns());
        std::thread::sleep(std::time::Duration::from_millis(20));
        let (s1, n1) = (now(), monotonic_ns());
        let measured = elapsed_ns(s0, s1) as f64;
        let truth = (n1 - n0) as f64;
        // Within 1% (the pairs are read back to back; the rate is exact to
        // a few ppm, the rest is the reads' own jitter).
        assert!(
            (measured - truth).abs() < truth * 0.01,
            "{measured} vs {truth}"
        );
        assert_eq!(elapsed_ns(s1, s0), 0);
    }
}
