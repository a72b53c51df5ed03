//! Fixed-bucket, HDR-style histograms of `u64` values (nanoseconds or
//! counts), O(1) to record, written by one thread and read by any.
//!
//! Buckets: the values 0..=3 each have their own; above, every power of two
//! is split into 4 equal sub-buckets, so a bucket is at most 25 % wide
//! (a recorded value is known within 25 %; `ferroloop._stats` reports a
//! percentile as its bucket's upper bound, never below the true value). 252 buckets cover
//! the whole `u64` range in 2 KiB.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

pub const BUCKETS: usize = 252;

/// The bucket of `v`.
#[inline(always)]
pub fn index(v: u64) -> usize {
    if v < 4 {
        return v as usize;
    }
    let e = 63 - v.leading_zeros() as usize; // >= 2
    let m = ((v >> (e - 2)) & 3) as usize;
    4 + (e - 2) * 4 + m
}

/// The smallest value of bucket `i`.
pub fn lower_bound(i: usize) -> u64 {
    if i < 4 {
        return i as u64;
    }
    let e = (i - 4) / 4 + 2;
    let m = ((i - 4) % 4) as u64;
    (4 + m) << (e - 2)
}

/// The largest value of bucket `i`.
pub fn upper_bound(i: usize) -> u64 {
    if i + 1 >= BUCKETS {
        u64::MAX
    } else {
        lower_bound(i + 1) - 1
    }
}

/// One writer (the loop thread, holding the GIL), any number of readers:
/// each field is an atomic so a reader never sees a torn value, and the
/// writer uses plain load+store instead of locked read-modify-writes.
pub struct Histogram {
    counts: [AtomicU64; BUCKETS],
    sum: AtomicU64,
    max: AtomicU64,
}

impl Default for Histogram {
    fn default() -> Self {
        Self {
            counts: std::array::from_fn(|_| AtomicU64::new(0)),
            sum: AtomicU64::new(0),
            max: AtomicU64::new(0),
        }
    }
}

#[inline(always)]
fn bump(a: &AtomicU64, n: u64) {
    a.store(a.load(Relaxed).wrapping_add(n), Relaxed);
}

/// A copy of a histogram at one moment.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HistogramSnapshot {
    pub counts: Vec<u64>,
    pub count: u64,
    pub sum: u64,
    pub max: u64,
}

impl Histogram {
    #[inline(always)]
    pub fn record(&self, v: u64) {
        bump(&self.counts[index(v)], 1);
        bump(&self.sum, v);
        if v > self.max.load(Relaxed) {
            self.max.store(v, Relaxed);
        }
    }

    /// `(sum, max)`, without allocating (the count is the buckets' sum).
    pub fn sum_max(&self) -> (u64, u64) {
        (self.sum.load(Relaxed), self.max.load(Relaxed))
    }

    pub fn bucket_counts(&self) -> impl Iterator<Item = u64> + '_ {
        self.counts.iter().map(|c| c.load(Relaxed))
    }

    pub fn snapshot(&self) -> HistogramSnapshot {
        let counts: Vec<u64> = self.bucket_counts().collect();
        HistogramSnapshot {
            count: counts.iter().sum(),
            counts,
            sum: self.sum.load(Relaxed),
            max: self.max.load(Relaxed),
        }
    }
}

impl HistogramSnapshot {
    /// How many recorded values are below `bound`.
    pub fn count_below(&self, bound: u64) -> u64 {
        let mut n = 0;
        for (i, c) in self.counts.iter().enumerate() {
            if upper_bound(i) >= bound {
                break;
            }
            n += c;
        }
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_tile_the_range() {
        assert_eq!(index(0), 0);
        assert_eq!(index(3), 3);
        assert_eq!(index(4), 4);
        assert_eq!(index(7), 7);
        assert_eq!(index(8), 8);
        assert_eq!(index(u64::MAX), BUCKETS - 1);
        for i in 0..BUCKETS - 1 {
            assert_eq!(index(lower_bound(i)), i);
            assert_eq!(index(upper_bound(i)), i);
            assert_eq!(upper_bound(i) + 1, lower_bound(i + 1));
        }
        // At most 25 % wide above 4.
        for i in 4..BUCKETS - 1 {
            let (lo, hi) = (lower_bound(i), upper_bound(i));
            assert!((hi - lo + 1) * 4 <= lo, "bucket {i}: {lo}..={hi}");
        }
    }

    #[test]
    fn quantiles_and_counts() {
        let h = Histogram::default();
        for v in 1..=1000u64 {
            h.record(v * 1000);
        }
        let s = h.snapshot();
        assert_eq!(s.count, 1000);
        assert_eq!(s.sum, 1000 * 1001 / 2 * 1000);
        assert_eq!(s.max, 1_000_000);
        assert_eq!(s.count_below(1 << 20), 1000);
        assert_eq!(s.count_below(1 << 19), 524);
        assert_eq!(Histogram::default().snapshot().count_below(u64::MAX), 0);
    }
}
