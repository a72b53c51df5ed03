//! The timer heap: `call_later` / `call_at` handles ordered by
//! `(deadline, sequence)`. Pure Rust, generic over the payload so it is unit
//! tested without Python.
//!
//! NOTE: asyncio keeps cancelled `TimerHandle`s in its heap and only counts
//! them; when more than half of a heap of more than 100 entries is cancelled it
//! rebuilds the heap. We do the same: `cancel()` stays O(1) and the heap is
//! compacted in amortised O(1).

use std::cmp::Ordering;
use std::collections::BinaryHeap;

/// Below this many scheduled timers the heap is never compacted (asyncio's
/// `_MIN_SCHEDULED_TIMER_HANDLES`).
pub const MIN_SCHEDULED_FOR_COMPACTION: usize = 100;

/// One scheduled entry. Ordered so that `BinaryHeap` (a max-heap) pops the
/// earliest deadline first and, for equal deadlines, the first scheduled.
pub struct Entry<T> {
    pub when: f64,
    pub seq: u64,
    pub item: T,
}

impl<T> Entry<T> {
    /// NaN sorts first: asyncio treats a NaN deadline as due at once (its
    /// `when >= end_time` test is false for NaN).
    fn key(&self) -> f64 {
        if self.when.is_nan() {
            f64::NEG_INFINITY
        } else {
            self.when
        }
    }
}

impl<T> PartialEq for Entry<T> {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl<T> Eq for Entry<T> {}
impl<T> PartialOrd for Entry<T> {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl<T> Ord for Entry<T> {
    fn cmp(&self, other: &Self) -> Ordering {
        // Reversed: the smallest (key, seq) is the heap's maximum.
        other
            .key()
            .total_cmp(&self.key())
            .then_with(|| other.seq.cmp(&self.seq))
    }
}

/// A min-heap of timers keyed by `(deadline, sequence)`.
pub struct TimerHeap<T> {
    heap: BinaryHeap<Entry<T>>,
    next_seq: u64,
}

impl<T> Default for TimerHeap<T> {
    fn default() -> Self {
        Self {
            heap: BinaryHeap::new(),
            next_seq: 0,
        }
    }
}

impl<T> TimerHeap<T> {
    pub fn len(&self) -> usize {
        self.heap.len()
    }

    pub fn is_empty(&self) -> bool {
        self.heap.is_empty()
    }

    pub fn push(&mut self, when: f64, item: T) {
        let seq = self.next_seq;
        self.next_seq = self.next_seq.wrapping_add(1);
        self.heap.push(Entry { when, seq, item });
    }

    /// The earliest entry, if any.
    pub fn peek(&self) -> Option<&Entry<T>> {
        self.heap.peek()
    }

    /// The earliest deadline (NaN reported as -inf: due now).
    pub fn next_deadline(&self) -> Option<f64> {
        self.heap.peek().map(Entry::key)
    }

    pub fn pop(&mut self) -> Option<Entry<T>> {
        self.heap.pop()
    }

    /// Pops the earliest entry if it is due strictly before `end_time`.
    pub fn pop_due(&mut self, end_time: f64) -> Option<Entry<T>> {
        match self.heap.peek() {
            Some(e) if e.key() < end_time => self.heap.pop(),
            _ => None,
        }
    }

    /// Removes every entry for which `dead` holds and returns them, so the
    /// caller decides where they are dropped (never while holding a lock:
    /// dropping a Python object may run arbitrary code).
    pub fn extract_if(&mut self, mut dead: impl FnMut(&T) -> bool) -> Vec<T> {
        let mut removed = Vec::new();
        let mut kept = Vec::with_capacity(self.heap.len());
        for e in std::mem::take(&mut self.heap).into_vec() {
            if dead(&e.item) {
                removed.push(e.item);
            } else {
                kept.push(e);
            }
        }
        self.heap = BinaryHeap::from(kept);
        removed
    }

    /// Visits every item, in no particular order.
    pub fn for_each(&self, mut f: impl FnMut(&T)) {
        for e in self.heap.iter() {
            f(&e.item);
        }
    }

    /// Empties the heap, handing back the items.
    pub fn drain(&mut self) -> Vec<T> {
        std::mem::take(&mut self.heap)
            .into_vec()
            .into_iter()
            .map(|e| e.item)
            .collect()
    }
}

/// Whether a heap of `len` entries of which `cancelled` are cancelled should be
/// rebuilt (asyncio's rule: more than 100 entries and more than half cancelled).
pub fn should_compact(len: usize, cancelled: usize) -> bool {
    len > MIN_SCHEDULED_FOR_COMPACTION && cancelled * 2 > len
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drain_order(h: &mut TimerHeap<u32>) -> Vec<u32> {
        let mut out = Vec::new();
        while let Some(e) = h.pop() {
            out.push(e.item);
        }
        out
    }

    #[test]
    fn pops_in_deadline_order() {
        let mut h = TimerHeap::default();
        for (i, w) in [5.0, 1.0, 3.0, 2.0, 4.0].iter().enumerate() {
            h.push(*w, i as u32);
        }
        assert_eq!(drain_order(&mut h), vec![1, 3, 2, 4, 0]);
    }

    #[test]
    fn equal_deadlines_are_fifo() {
        let mut h = TimerHeap::default();
        for i in 0..1000u32 {
            h.push(7.5, i);
        }
        assert_eq!(drain_order(&mut h), (0..1000).collect::<Vec<_>>());
    }

    #[test]
    fn pop_due_respects_end_time() {
        let mut h = TimerHeap::default();
        h.push(1.0, 1);
        h.push(2.0, 2);
        h.push(f64::INFINITY, 3);
        assert_eq!(
            h.pop_due(1.0).map(|e| e.item),
            None,
            "due means strictly before end_time"
        );
        assert_eq!(h.pop_due(1.5).map(|e| e.item), Some(1));
        assert_eq!(h.pop_due(1.5).map(|e| e.item), None);
        assert_eq!(h.pop_due(1e300).map(|e| e.item), Some(2));
        assert_eq!(h.pop_due(f64::MAX).map(|e| e.item), None, "inf never fires");
        assert_eq!(h.len(), 1);
    }

    #[test]
    fn nan_is_due_immediately() {
        let mut h = TimerHeap::default();
        h.push(10.0, 1);
        h.push(f64::NAN, 2);
        assert_eq!(h.next_deadline(), Some(f64::NEG_INFINITY));
        assert_eq!(h.pop_due(0.0).map(|e| e.item), Some(2));
        assert_eq!(h.pop_due(0.0).map(|e| e.item), None);
    }

    #[test]
    fn extract_if_keeps_heap_order() {
        let mut h = TimerHeap::default();
        for i in 0..500u32 {
            h.push(f64::from((i * 7919) % 500), i);
        }
        let removed = h.extract_if(|i| i % 2 == 0);
        assert_eq!(removed.len(), 250);
        let mut last = f64::NEG_INFINITY;
        while let Some(e) = h.pop() {
            assert!(e.item % 2 == 1);
            assert!(e.when >= last);
            last = e.when;
        }
    }

    #[test]
    fn compaction_rule_matches_asyncio() {
        assert!(!should_compact(100, 100));
        assert!(!should_compact(101, 50));
        assert!(should_compact(101, 51));
        assert!(!should_compact(0, 0));
    }

    #[test]
    fn drain_empties() {
        let mut h = TimerHeap::default();
        h.push(1.0, 1u32);
        h.push(0.5, 2u32);
        let mut v = h.drain();
        v.sort();
        assert_eq!(v, vec![1, 2]);
        assert!(h.is_empty());
    }
}
