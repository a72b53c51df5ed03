//! The ready queue (asyncio's `_ready` deque) with tick batching. Pure Rust,
//! generic over the item so it is unit tested without Python.
//!
//! NOTE: a tick runs exactly the handles that were ready when it began; what
//! they schedule waits for the next tick. `take_batch` swaps the queue with a
//! spare deque (no allocation in steady state); if a handle raises
//! KeyboardInterrupt/SystemExit mid-batch, `requeue_front` puts the rest back
//! ahead of anything scheduled meanwhile, in order, as asyncio's deque keeps
//! them.

use std::collections::VecDeque;

pub struct ReadyQueue<T> {
    queue: VecDeque<T>,
    spare: VecDeque<T>,
}

impl<T> Default for ReadyQueue<T> {
    fn default() -> Self {
        Self {
            queue: VecDeque::new(),
            spare: VecDeque::new(),
        }
    }
}

impl<T> ReadyQueue<T> {
    pub fn push(&mut self, item: T) {
        self.queue.push_back(item);
    }

    pub fn len(&self) -> usize {
        self.queue.len()
    }

    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = &T> {
        self.queue.iter()
    }

    /// Everything ready now, leaving the queue empty for what runs next tick.
    pub fn take_batch(&mut self) -> VecDeque<T> {
        let spare = std::mem::take(&mut self.spare);
        std::mem::replace(&mut self.queue, spare)
    }

    /// Puts an unfinished batch back in front of the queue, in order.
    pub fn requeue_front(&mut self, mut rest: VecDeque<T>) {
        while let Some(item) = rest.pop_back() {
            self.queue.push_front(item);
        }
    }

    /// Returns a drained batch's allocation for reuse.
    pub fn recycle(&mut self, batch: VecDeque<T>) {
        debug_assert!(batch.is_empty());
        if batch.is_empty() && self.spare.capacity() < batch.capacity() {
            self.spare = batch;
        }
    }

    /// Empties the queue, handing back the items (dropped by the caller,
    /// outside any lock).
    pub fn drain(&mut self) -> Vec<T> {
        let mut out: Vec<T> = self.queue.drain(..).collect();
        out.extend(self.spare.drain(..));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_holds_only_what_was_ready() {
        let mut q = ReadyQueue::default();
        q.push(1);
        q.push(2);
        let mut batch = q.take_batch();
        assert!(q.is_empty());
        // Scheduled while the batch runs: next tick.
        q.push(3);
        assert_eq!(batch.pop_front(), Some(1));
        assert_eq!(batch.pop_front(), Some(2));
        assert_eq!(batch.pop_front(), None);
        q.recycle(batch);
        assert_eq!(q.take_batch().into_iter().collect::<Vec<_>>(), vec![3]);
    }

    #[test]
    fn interrupted_batch_goes_back_first_in_order() {
        let mut q = ReadyQueue::default();
        for i in 0..5 {
            q.push(i);
        }
        let mut batch = q.take_batch();
        assert_eq!(batch.pop_front(), Some(0)); // this one raised
        q.push(10); // scheduled by it before raising
        q.requeue_front(batch);
        assert_eq!(q.len(), 5);
        assert_eq!(
            q.take_batch().into_iter().collect::<Vec<_>>(),
            vec![1, 2, 3, 4, 10]
        );
    }

    #[test]
    fn fifo_over_many_ticks_reuses_allocation() {
        let mut q = ReadyQueue::default();
        let mut seen = Vec::new();
        for tick in 0..100 {
            for i in 0..10 {
                q.push(tick * 10 + i);
            }
            let mut batch = q.take_batch();
            while let Some(x) = batch.pop_front() {
                seen.push(x);
            }
            q.recycle(batch);
        }
        assert_eq!(seen, (0..1000).collect::<Vec<_>>());
    }

    #[test]
    fn drain_returns_everything() {
        let mut q = ReadyQueue::default();
        q.push("a");
        q.push("b");
        assert_eq!(q.drain(), vec!["a", "b"]);
        assert!(q.is_empty());
    }
}
