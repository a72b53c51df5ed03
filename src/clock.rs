//! The loop's clock: `CLOCK_MONOTONIC`, the clock behind `time.monotonic()`,
//! read with nanosecond resolution.

/// Seconds since an unspecified epoch, as `time.monotonic()` reports them.
pub fn monotonic() -> f64 {
    let ts = monotonic_timespec();
    ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9
}

pub fn monotonic_timespec() -> libc::timespec {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; CLOCK_MONOTONIC always
    // exists on Linux, so the call cannot fail.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts
}

/// The absolute `CLOCK_MONOTONIC` time for a deadline in seconds, rounded up
/// to the next nanosecond so a timer armed with it never fires early.
/// Non-finite or huge deadlines are clamped to `max_secs` ahead of now.
pub fn deadline_timespec(when: f64, max_secs: f64) -> libc::timespec {
    let now = monotonic();
    let when = if when.is_finite() {
        when.min(now + max_secs)
    } else {
        now + max_secs
    };
    let when = when.max(0.0);
    let secs = when.floor();
    let mut nsec = ((when - secs) * 1e9).ceil();
    let mut secs = secs as libc::time_t;
    if nsec >= 1e9 {
        secs += 1;
        nsec -= 1e9;
    }
    libc::timespec {
        tv_sec: secs,
        tv_nsec: nsec as libc::c_long,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn monotonic_advances() {
        let a = monotonic();
        let b = monotonic();
        assert!(b >= a);
        assert!(a > 0.0);
    }

    #[test]
    fn deadline_rounds_up_and_clamps() {
        let now = monotonic();
        let ts = deadline_timespec(now + 0.5, 86400.0);
        let back = ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9;
        assert!(back >= now + 0.5 - 1e-9);
        assert!(ts.tv_nsec < 1_000_000_000);
        let far = deadline_timespec(f64::INFINITY, 10.0);
        assert!((far.tv_sec as f64) <= now + 11.0);
        let huge = deadline_timespec(1e300, 10.0);
        assert!((huge.tv_sec as f64) <= now + 11.0);
    }
}
