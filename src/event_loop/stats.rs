//! The loop's metrics as Python values: the raw snapshot behind
//! `Loop.stats()` (shaped into objects by `ferroloop._stats`) and the slow
//! callback records behind `ferroloop.slow_callbacks()`.

use std::sync::atomic::Ordering::Relaxed;

use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList, PyTuple};

use super::EventLoop;
use crate::metrics::histogram::{upper_bound, Histogram};
use crate::metrics::slow::{SlowRecord, MIN_THRESHOLD_NS};
use crate::metrics::{Kind, LoopMetrics, KIND_NAMES, VALUES};

/// A slow-callback record as Python sees it (`SlowCallback`'s fields):
/// `(start, duration, kind, repr, task, coro, started_at, location, stack)`.
pub(crate) type SlowTuple = (
    f64,
    f64,
    String,
    String,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<String>,
);

/// `(buckets, count, sum, max)`, buckets as `(upper bound, count)` pairs of
/// the non-empty ones.
fn histogram<'py>(py: Python<'py>, h: &Histogram) -> PyResult<Bound<'py, PyTuple>> {
    let s = h.snapshot();
    let buckets = PyList::empty(py);
    for (i, &c) in s.counts.iter().enumerate() {
        if c > 0 {
            buckets.append((upper_bound(i), c))?;
        }
    }
    (buckets, s.count, s.sum, s.max).into_pyobject(py)
}

fn counters<'py>(py: Python<'py>, m: &LoopMetrics) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    d.set_item("loop_id", m.id)?;
    for (k, get) in VALUES {
        d.set_item(*k, get(m))?;
    }
    let cb = PyDict::new(py);
    for (k, c) in KIND_NAMES.iter().zip(&m.callbacks) {
        cb.set_item(*k, c.get())?;
    }
    d.set_item("callbacks", cb)?;
    d.set_item("precise", m.precise.load(Relaxed))?;
    d.set_item("enabled", m.enabled)?;
    d.set_item("tick_duration", histogram(py, &m.tick_ns)?)?;
    d.set_item("poll_wait", histogram(py, &m.poll_wait_ns)?)?;
    d.set_item("callbacks_per_tick", histogram(py, &m.callbacks_per_tick)?)?;
    d.set_item("timer_lateness", histogram(py, &m.timer_lateness_ns)?)?;
    d.set_item("callback_duration", histogram(py, &m.callback_ns)?)?;
    Ok(d)
}

impl EventLoop {
    pub(crate) fn stats_raw<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        counters(py, &self.metrics)
    }

    /// The slow-callback records, oldest first, as `SlowTuple`s.
    pub(crate) fn slow_records<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        let out = PyList::empty(py);
        for r in self.metrics.slow.last(crate::metrics::slow::RING) {
            let t: SlowTuple = (
                r.start,
                r.duration,
                r.kind.name().to_string(),
                r.repr,
                r.task,
                r.coro,
                r.started_at,
                r.location,
                r.stack,
            );
            out.append(t)?;
        }
        Ok(out)
    }

    /// Adds a record to the ring (`ferroloop._stats.slow_callback` built it).
    pub(crate) fn push_slow_record(&self, record: SlowTuple) {
        let (start, duration, kind, repr, task, coro, started_at, location, stack) = record;
        let kind = KIND_NAMES
            .iter()
            .position(|k| *k == kind)
            .map_or(Kind::Ready, |i| Kind::from_u8(i as u8));
        self.metrics.slow.push(SlowRecord {
            start,
            duration,
            kind,
            repr,
            task,
            coro,
            started_at,
            location,
            stack,
        });
    }

    /// Sets the slow-callback threshold (seconds, at least 1 ms).
    pub(crate) fn set_slow_threshold(&self, seconds: f64) -> PyResult<()> {
        if !seconds.is_finite() || seconds * 1e9 < MIN_THRESHOLD_NS as f64 {
            return Err(pyo3::exceptions::PyValueError::new_err(format!(
                "slow callback threshold must be at least 0.001 seconds, got {seconds}"
            )));
        }
        let ns = (seconds * 1e9).min(u64::MAX as f64 / 4.0) as u64;
        self.metrics.slow.threshold_ns.store(ns, Relaxed);
        Ok(())
    }
}
