//! The loop's metrics as Python values: the raw snapshot behind
//! `Loop.stats()` (shaped into objects by `ferroloop._stats`) and the slow
//! callback records behind `ferroloop.slow_callbacks()`.

use std::sync::atomic::Ordering::Relaxed;

use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList, PyTuple};

use super::EventLoop;
use crate::metrics::histogram::{upper_bound, Histogram};
use crate::metrics::slow::{SlowRecord, MIN_THRESHOLD_NS};
use crate::metrics::{Kind, LoopMetrics, KIND_NAMES};

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
    (buckets, s.counts.iter().sum::<u64>(), s.sum, s.max).into_pyobject(py)
}

fn counters<'py>(py: Python<'py>, m: &LoopMetrics) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    let pairs: [(&str, u64); 24] = [
        ("loop_id", m.id),
        ("ticks", m.ticks.get()),
        ("polls", m.polls.get()),
        ("polls_blocking", m.polls_blocking.get()),
        ("fd_read_events", m.fd_read_events.get()),
        ("fd_write_events", m.fd_write_events.get()),
        ("threadsafe_wakeups", m.wakeups.load(Relaxed)),
        ("timers_scheduled", m.timers_scheduled.get()),
        ("timers_fired", m.timers_fired.get()),
        ("timers_cancelled", m.timers_cancelled.get()),
        ("tasks_created", m.tasks_created.get()),
        ("transports_opened", m.transports_opened.get()),
        ("transports_closed", m.transports_closed.get()),
        ("bytes_received", m.bytes_received.get()),
        ("bytes_sent", m.bytes_sent.get()),
        ("tls_handshakes", m.tls_handshakes.get()),
        ("ready_queue_depth", m.ready_last.get()),
        ("ready_queue_depth_max", m.ready_max.get()),
        ("run_ns", m.run_ns.get()),
        ("idle_ns", m.idle_ns.get()),
        ("poll_ns", m.poll_ns.get()),
        ("callbacks_ns", m.callbacks_ns.get()),
        ("slow_callbacks", m.slow.total.load(Relaxed)),
        ("slow_threshold_ns", m.slow.threshold_ns.load(Relaxed)),
    ];
    for (k, v) in pairs {
        d.set_item(k, v)?;
    }
    let cb = PyDict::new(py);
    for (k, c) in KIND_NAMES.iter().zip(&m.callbacks) {
        cb.set_item(*k, c.get())?;
    }
    d.set_item("callbacks", cb)?;
    d.set_item("precise", m.precise.load(Relaxed))?;
    d.set_item("enabled", m.enabled)?;
    d.set_item("page_writes", m.page_writes.get())?;
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
        for r in self.metrics.slow.records() {
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
