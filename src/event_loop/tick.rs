//! One iteration of the loop, in asyncio's `_run_once` order: drop cancelled
//! timers, compute the timeout, poll (GIL released only if it blocks), move
//! due timers to the ready queue, then run exactly the handles that were ready
//! at that point; what they schedule waits for the next tick.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::time::Duration;

use pyo3::exceptions::PyRuntimeError;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::PyTuple;

use super::sock_recv::SockRecvWaiter;
use super::watcher::Ready;
use super::{Core, EventLoop};
use crate::clock;
use crate::errors;
use crate::handles::{self, Handle, TimerHandle};
use crate::io::poller::{IoEvent, PollOutcome};
use crate::metrics::clock as mclock;
use crate::metrics::{Counter, Kind, LoopMetrics};
use crate::py;
use crate::timers;
use crate::transports::stream::StreamTransport;

/// asyncio's `_clock_resolution` for CLOCK_MONOTONIC on Linux.
const CLOCK_RESOLUTION: f64 = 1e-9;

impl EventLoop {
    /// Runs ticks until `stop()` (asyncio's `while True: _run_once()`).
    pub(crate) fn run_ticks(slf: &Bound<'_, Self>) -> PyResult<()> {
        let this = slf.get();
        loop {
            this.check_not_forked()?;
            Self::run_once(slf)?;
            if this.stopping.load(Ordering::Relaxed) {
                return Ok(());
            }
        }
    }

    /// Drops cancelled timers from the head of the heap, or rebuilds the heap
    /// when most of it is cancelled. Returns the dropped handles so they are
    /// released after the lock.
    fn sweep_timers(&self, py: Python<'_>) -> Vec<Py<TimerHandle>> {
        let mut core = self.core.lock();
        if let Some(removed) = self.compact_locked(py, &mut core) {
            return removed;
        }
        let mut removed = Vec::new();
        while let Some(top) = core.timers.peek() {
            if !timer_cancelled(py, &top.item) {
                break;
            }
            if let Some(e) = core.timers.pop() {
                e.item.get().set_unscheduled();
                removed.push(e.item);
            }
            self.uncount_cancelled_timer();
        }
        removed
    }

    /// asyncio's heap rebuild: when more than half of a heap of over 100
    /// timers is cancelled, drop every cancelled one.
    fn compact_locked(&self, py: Python<'_>, core: &mut Core) -> Option<Vec<Py<TimerHandle>>> {
        let cancelled = self.timer_cancelled.load(Ordering::Relaxed);
        if !timers::should_compact(core.timers.len(), cancelled) {
            return None;
        }
        let removed = core.timers.extract_if(|t| timer_cancelled(py, t));
        for t in &removed {
            t.get().set_unscheduled();
        }
        self.timer_cancelled.store(0, Ordering::Relaxed);
        Some(removed)
    }

    /// A scheduled timer was cancelled: rebuild the heap now if asyncio's
    /// rule says so.
    ///
    /// NOTE: asyncio applies the rule at the start of the next tick; applying
    /// it at `cancel()` keeps the heap (and memory) bounded by the live
    /// timers even while one callback creates and cancels many, and freed
    /// handles go back to the free list while still in cache. Which tick
    /// drops a cancelled timer is not observable through public API.
    pub(crate) fn timer_was_cancelled(&self, py: Python<'_>) {
        self.timer_cancelled.fetch_add(1, Ordering::Relaxed);
        self.metrics.timers_cancelled.add(1);
        let removed = {
            let mut core = self.core.lock();
            self.compact_locked(py, &mut core)
        };
        // Released after the lock: freeing a handle may run Python code.
        for t in removed.into_iter().flatten() {
            handles::release(py, t);
        }
    }

    /// A cancelled timer left the heap (asyncio's `_timer_cancelled_count -= 1`).
    fn uncount_cancelled_timer(&self) {
        let _ = self
            .timer_cancelled
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1));
    }

    /// Polls for I/O, blocking when there is nothing to run. Ready user fds
    /// are appended to `io`.
    fn wait_for_work(&self, py: Python<'_>, io: &mut Vec<IoEvent>) -> PyResult<PollOutcome> {
        // Announce the sleep first, then look: a thread that queues work
        // after our look sees `sleeping` and wakes us (see `wake`).
        self.sleeping.store(true, Ordering::SeqCst);
        let (has_ready, deadline) = {
            let core = self.core.lock();
            (!core.ready.is_empty(), core.timers.next_deadline())
        };
        let must_poll_io = self.io_sources.load(Ordering::Relaxed) > 0;
        let due_now = deadline.is_some_and(|d| d <= clock::monotonic());
        if has_ready || self.stopping.load(Ordering::SeqCst) || due_now {
            self.sleeping.store(false, Ordering::SeqCst);
            if !must_poll_io {
                return Ok(PollOutcome::default());
            }
            self.metrics.polls.add(1);
            return self.poll(Some(Duration::ZERO), io);
        }
        let mut guard = self.poller.lock();
        let Some(poller) = guard.as_mut() else {
            self.sleeping.store(false, Ordering::SeqCst);
            return Err(PyRuntimeError::new_err("Event loop is closed"));
        };
        if must_poll_io && self.io_busy.load(Ordering::Relaxed) {
            // NOTE: while I/O keeps coming (the last poll had user fd
            // events), the next event is often already there: a zero-timeout
            // poll finds it without releasing and re-taking the GIL. An idle
            // loop goes straight to the blocking poll.
            self.metrics.polls.add(1);
            let outcome = poller.poll(Some(Duration::ZERO), io);
            if outcome
                .as_ref()
                .map_or(true, |o| o.events > 0 || o.interrupted)
            {
                self.sleeping.store(false, Ordering::SeqCst);
                self.io_busy.store(!io.is_empty(), Ordering::Relaxed);
                return outcome.map_err(errors::os_error);
            }
        }
        if let Some(d) = deadline {
            if let Err(e) = poller.arm_timer(d) {
                self.sleeping.store(false, Ordering::SeqCst);
                return Err(errors::os_error(e));
            }
        }
        let m = &self.metrics;
        m.polls.add(1);
        m.polls_blocking.add(1);
        let before = if m.enabled {
            m.set_polling(true);
            mclock::now()
        } else {
            mclock::Stamp::ZERO
        };
        let res = py.detach(|| poller.poll(None, io));
        if m.enabled {
            m.set_polling(false);
            let waited = mclock::elapsed_ns(before, mclock::now());
            m.idle_ns.add(waited);
            m.poll_wait_ns.record(waited);
        }
        self.sleeping.store(false, Ordering::SeqCst);
        self.io_busy.store(!io.is_empty(), Ordering::Relaxed);
        res.map_err(errors::os_error)
    }

    /// A poll that does not block: the GIL is kept.
    fn poll(&self, timeout: Option<Duration>, io: &mut Vec<IoEvent>) -> PyResult<PollOutcome> {
        let mut guard = self.poller.lock();
        match guard.as_mut() {
            Some(p) => p.poll(timeout, io).map_err(errors::os_error),
            None => Err(PyRuntimeError::new_err("Event loop is closed")),
        }
    }

    /// Moves due timers to the ready queue and takes what is ready now: the
    /// handles this tick runs. With timers, also the time it read (and, with
    /// metrics on, a stamp read with it: timer lateness is measured from
    /// that pair, see `record_lateness`).
    fn take_ready(&self, py: Python<'_>) -> (VecDeque<Ready>, Option<TimeAnchor>) {
        let mut core = self.core.lock();
        let mut anchor = None;
        if !core.timers.is_empty() {
            let now = clock::monotonic();
            if self.metrics.enabled {
                anchor = Some(TimeAnchor {
                    mono: now,
                    stamp: mclock::now(),
                });
            }
            let end_time = now + CLOCK_RESOLUTION;
            while let Some(e) = core.timers.pop_due(end_time) {
                let timer = e.item;
                timer.get().set_unscheduled();
                if timer_cancelled(py, &timer) {
                    self.uncount_cancelled_timer();
                } else {
                    self.metrics.timers_fired.add(1);
                }
                core.ready
                    .push(Ready::Handle(timer.into_bound(py).into_super().unbind()));
            }
        }
        (core.ready.take_batch(), anchor)
    }

    pub(crate) fn run_once(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        let m = &*this.metrics;
        let on = m.enabled;
        let now = || {
            if on {
                mclock::now()
            } else {
                mclock::Stamp::ZERO
            }
        };
        let t0 = now();
        this.sweep_timers(py)
            .into_iter()
            .for_each(|h| handles::release(py, h));

        // The I/O event buffer is reused tick after tick (loop thread only).
        let mut io = std::mem::take(&mut *this.io_events.lock());
        io.clear();
        let tp = now();
        let outcome = this.wait_for_work(py, &mut io);
        let outcome = match outcome {
            Ok(o) => o,
            Err(e) => {
                *this.io_events.lock() = io;
                return Err(e);
            }
        };
        if on {
            m.poll_ns.add(mclock::elapsed_ns(tp, now()));
        }
        if outcome.interrupted {
            // NOTE: a signal interrupted the poll (PEP 475): run Python's
            // handlers now; KeyboardInterrupt from SIGINT leaves the loop.
            py.check_signals()?;
        }
        if outcome.signal_ready {
            // Signal numbers written by CPython's C handler to the wakeup
            // fd: a callback of this tick reads them and schedules the
            // add_signal_handler callbacks (asyncio's _read_from_self, an
            // I/O callback). Read here, before the tick, they would run
            // ahead of what this tick's callbacks schedule, one tick early,
            // and a handler's SystemExit would leave run_until_complete()'s
            // stop behind for the next run (the API fuzzer found both).
            let read = slf.getattr(intern!(py, "_read_signal_fd"))?;
            Self::schedule_soon(slf, read, PyTuple::empty(py), None, false)?;
        }

        if !io.is_empty() {
            this.process_io_events(py, &io);
        }
        *this.io_events.lock() = io;

        let (mut batch, anchor) = this.take_ready(py);
        if !on {
            let ran = Self::run_batch::<OFF>(slf, &mut batch, m, None);
            this.core.lock().ready.recycle(batch);
            m.ticks.add(1);
            return ran.map(drop);
        }
        m.ready_depth(batch.len());
        let tc = now();
        let ran = if m.task_stats.load(Ordering::Relaxed) {
            Self::run_batch::<TASKS>(slf, &mut batch, m, anchor)?
        } else if m.precise.load(Ordering::Relaxed) {
            Self::run_batch::<PRECISE>(slf, &mut batch, m, anchor)?
        } else {
            Self::run_batch::<ON>(slf, &mut batch, m, anchor)?
        };
        this.core.lock().ready.recycle(batch);
        m.ticks.add(1);
        let t1 = now();
        let tick = mclock::elapsed_ns(t0, t1);
        m.run_ns.add(tick);
        m.callbacks_ns.add(mclock::elapsed_ns(tc, t1));
        m.tick_ns.record(tick);
        m.callbacks_per_tick.record(ran);
        m.maybe_publish(t1);
        Ok(())
    }

    /// Runs the tick's batch (`MODE`: metrics `OFF`, `ON`, `PRECISE` or
    /// `TASKS`, one copy of the loop each, so the off and on paths test
    /// nothing per callback). Returns how many callbacks ran; on an error the rest of
    /// the batch goes back to the front of the ready queue.
    #[inline(always)]
    fn run_batch<const MODE: u8>(
        slf: &Bound<'_, Self>,
        batch: &mut VecDeque<Ready>,
        m: &LoopMetrics,
        anchor: Option<TimeAnchor>,
    ) -> PyResult<u64> {
        let py = slf.py();
        let on = MODE != OFF;
        let mut meter = TickMeter {
            seq: m.slow.current() | 1,
            others: 0,
            anchor,
        };
        let mut ran = 0u64;
        while let Some(item) = batch.pop_front() {
            let result = match item {
                Ready::Handle(handle) => {
                    let h = handle.get();
                    if h.is_cancelled() {
                        handles::release(py, handle);
                        continue;
                    }
                    let finished = on.then_some(&m.tasks_finished);
                    let run = || Self::run_handle(slf, handle.bind(py), finished);
                    let result = if MODE == TASKS {
                        Self::run_task_step(slf, m, &mut meter, &handle, run)
                    } else if on {
                        let kind = h.kind_raw();
                        if kind != Kind::Ready as u8 {
                            meter.count(py, m, Kind::from_u8(kind), &handle);
                        }
                        let r = meter.run::<MODE>(m, run);
                        meter.check_slow(slf, m, r, kind, || Ok(handle.bind(py).clone().into_any()))
                    } else {
                        outcome(run())
                    };
                    handles::release(py, handle);
                    result
                }
                Ready::Stream(transport, dir) => {
                    let run = || StreamTransport::on_ready(transport.bind(py), slf, dir);
                    if on {
                        meter.count_io(m);
                        let r = meter.run::<MODE>(m, run);
                        meter.check_slow(slf, m, r, Kind::Io as u8, || {
                            StreamTransport::ready_method(transport.bind(py), dir)
                        })
                    } else {
                        outcome(run())
                    }
                }
                Ready::SockRecv(waiter) => {
                    let run = || match SockRecvWaiter::on_ready(waiter.bind(py)) {
                        Err(err) if !errors::is_exit(py, &err) => {
                            Self::report_error(slf, "Exception in sock_recv's reader", err)
                        }
                        result => result,
                    };
                    if on {
                        meter.count_io(m);
                        let r = meter.run::<MODE>(m, run);
                        meter.check_slow(slf, m, r, Kind::Io as u8, || {
                            Ok(waiter.bind(py).clone().into_any())
                        })
                    } else {
                        outcome(run())
                    }
                }
            };
            ran += 1;
            if let Err(err) = result {
                if on {
                    meter.finish(m, ran);
                }
                // Leave the rest for the next run, in order (asyncio's deque).
                slf.get()
                    .core
                    .lock()
                    .ready
                    .requeue_front(std::mem::take(batch));
                return Err(*err);
            }
        }
        if on {
            meter.finish(m, ran);
        }
        Ok(ran)
    }

    /// A handle run with per-task stats on: metered as in precise mode, and
    /// if it is a task's step, its start, end and scheduling time go to
    /// `ferroloop._stats.task_step` (a Python call per callback: opt-in).
    #[inline(never)]
    fn run_task_step(
        slf: &Bound<'_, Self>,
        m: &LoopMetrics,
        meter: &mut TickMeter,
        handle: &Py<Handle>,
        run: impl FnOnce() -> PyResult<()>,
    ) -> Outcome {
        let py = slf.py();
        let h = handle.get();
        let kind = h.kind_raw();
        if kind != Kind::Ready as u8 {
            meter.count(py, m, Kind::from_u8(kind), handle);
        }
        let func = h.callback_func(py);
        let start = crate::metrics::clock::monotonic_now_ns();
        let result = meter.run::<TASKS>(m, run);
        let end = crate::metrics::clock::monotonic_now_ns();
        let result = meter.check_slow(slf, m, result, kind, || {
            Ok(handle.bind(py).clone().into_any())
        });
        if let Some(func) = func {
            let args = (slf, func, start, end, h.scheduled_ns());
            if let Err(err) = py::call_helper(py, "_task_step", args) {
                if errors::is_exit(py, &err) {
                    return Err(Box::new(err));
                }
                err.write_unraisable(py, None);
            }
        }
        result
    }

    /// A callback the watchdog flagged as slow returned: record it (its
    /// description is built by `ferroloop._loop._slow_callback`, which also
    /// schedules the loop's slow-callback handler). `obj` is what it ran:
    /// the handle, or the transport's bound ready method.
    #[cold]
    #[inline(never)]
    fn slow_callback(
        slf: &Bound<'_, Self>,
        obj: PyResult<Bound<'_, PyAny>>,
        kind: Kind,
        seq: u64,
    ) -> PyResult<()> {
        let py = slf.py();
        let m = &slf.get().metrics;
        let done = m.slow.finish(seq);
        if let Some(page) = m.page.get() {
            page.set_slow_since(0);
        }
        let start = done.start_ns as f64 * 1e-9;
        let duration = done.end_ns.saturating_sub(done.start_ns) as f64 * 1e-9;
        let reported = obj.and_then(|obj| {
            py::call_helper(
                py,
                "_slow_callback",
                (slf, obj, kind.name(), start, duration, done.stack),
            )
        });
        match reported {
            Ok(_) => Ok(()),
            Err(err) if errors::is_exit(py, &err) => Err(err),
            Err(err) => {
                err.write_unraisable(py, None);
                Ok(())
            }
        }
    }

    /// Runs one handle (asyncio's `Handle._run` plus `_run_once`'s debug
    /// bookkeeping): its exception goes to the exception handler; only
    /// KeyboardInterrupt, SystemExit and an error raised while reporting
    /// escape.
    /// `tasks_finished`: count a task that finished in it (metrics on).
    pub(crate) fn run_handle(
        slf: &Bound<'_, Self>,
        handle: &Bound<'_, Handle>,
        tasks_finished: Option<&Counter>,
    ) -> PyResult<()> {
        let py = slf.py();
        if !slf.get().debug_enabled() {
            return Self::run_and_report(slf, handle, tasks_finished);
        }
        let current = intern!(py, "_current_handle");
        slf.setattr(current, handle)?;
        let t0 = clock::monotonic();
        let result = Self::run_and_report(slf, handle, tasks_finished);
        let dt = clock::monotonic() - t0;
        slf.setattr(current, py.None())?;
        result?;
        let limit: f64 = slf
            .getattr(intern!(py, "slow_callback_duration"))?
            .extract()?;
        if dt >= limit {
            py::call_helper(py, "_log_slow_callback", (handle, dt))?;
        }
        Ok(())
    }

    fn run_and_report(
        slf: &Bound<'_, Self>,
        handle: &Bound<'_, Handle>,
        tasks_finished: Option<&Counter>,
    ) -> PyResult<()> {
        let py = slf.py();
        let Err(err) = handle.get().run(py, tasks_finished) else {
            return Ok(());
        };
        if errors::is_exit(py, &err) {
            return Err(err);
        }
        py::call_helper(
            py,
            "_report_callback_error",
            (slf, handle, err.into_value(py)),
        )?;
        Ok(())
    }
}

impl EventLoop {
    /// `call_exception_handler({'message': message, 'exception': err})`.
    fn report_error(slf: &Bound<'_, Self>, message: &str, err: PyErr) -> PyResult<()> {
        let py = slf.py();
        let context = pyo3::types::PyDict::new(py);
        context.set_item("message", message)?;
        context.set_item("exception", err.into_value(py))?;
        slf.call_method1(intern!(py, "call_exception_handler"), (context,))?;
        Ok(())
    }
}

/// A callback's outcome in one word: the (rare) error boxed, so the batch
/// loop moves 8 bytes per callback instead of a 72-byte `PyResult<()>`
/// (each move of which is ~10 instructions).
type Outcome = Result<(), Box<PyErr>>;

#[inline(always)]
fn outcome(r: PyResult<()>) -> Outcome {
    r.map_err(Box::new)
}

/// `run_batch` modes.
const OFF: u8 = 0;
const ON: u8 = 1;
const PRECISE: u8 = 2;
/// Precise, plus per-task stats (opt-in).
const TASKS: u8 = 3;

/// The metered run's state during one tick's batch (loop thread).
struct TickMeter {
    /// The slow watch's sequence number: odd while a callback runs.
    seq: u64,
    /// Callbacks of the batch that are not `Kind::Ready` (counted as they
    /// run; the ready ones are the rest, counted once per tick).
    others: u64,
    /// The loop time read when due timers were taken, and a stamp with it.
    anchor: Option<TimeAnchor>,
}

/// A loop time (`clock::monotonic`) and a metrics stamp read together.
#[derive(Clone, Copy)]
struct TimeAnchor {
    mono: f64,
    stamp: mclock::Stamp,
}

impl TickMeter {
    /// A handle of `kind` (not `Ready`) is about to run.
    #[inline(always)]
    fn count(&mut self, py: Python<'_>, m: &LoopMetrics, kind: Kind, handle: &Py<Handle>) {
        self.others += 1;
        m.callback_ran(kind);
        if kind == Kind::Timer {
            record_lateness(py, m, handle, self.anchor);
        }
    }

    /// A transport's (or sock_recv's) I/O callback is about to run.
    #[inline(always)]
    fn count_io(&mut self, m: &LoopMetrics) {
        self.others += 1;
        m.callback_ran(Kind::Io);
    }

    /// Runs one callback with its sequence number published to the watchdog
    /// and, in `PRECISE` mode, its duration recorded.
    #[inline(always)]
    fn run<const MODE: u8>(
        &mut self,
        m: &LoopMetrics,
        run: impl FnOnce() -> PyResult<()>,
    ) -> Outcome {
        self.seq += 2;
        m.slow.enter(self.seq);
        if MODE != PRECISE && MODE != TASKS {
            return outcome(run());
        }
        let started = mclock::now();
        let result = outcome(run());
        m.callback_ns
            .record(mclock::elapsed_ns(started, mclock::now()));
        result
    }

    /// The callback returned `result`: if the watchdog flagged it, record
    /// it as slow (`obj`: what it ran, `kind`: a `Kind as u8`).
    #[inline(always)]
    fn check_slow<'py>(
        &self,
        slf: &Bound<'py, EventLoop>,
        m: &LoopMetrics,
        result: Outcome,
        kind: u8,
        obj: impl FnOnce() -> PyResult<Bound<'py, PyAny>>,
    ) -> Outcome {
        if !m.slow.flagged(self.seq) {
            return result;
        }
        Self::after_slow(slf, result, obj(), Kind::from_u8(kind), self.seq)
    }

    #[cold]
    #[inline(never)]
    fn after_slow<'py>(
        slf: &Bound<'py, EventLoop>,
        result: Outcome,
        obj: PyResult<Bound<'py, PyAny>>,
        kind: Kind,
        seq: u64,
    ) -> Outcome {
        let reported = EventLoop::slow_callback(slf, obj, kind, seq);
        result.and(outcome(reported))
    }

    /// The batch ended after `ran` callbacks: count the ready ones and tell
    /// the watchdog no callback runs.
    #[inline(always)]
    fn finish(&self, m: &LoopMetrics, ran: u64) {
        m.callbacks[Kind::Ready as usize].add(ran - self.others);
        m.slow.leave(self.seq + 1);
    }
}

/// A timer's lateness: from its deadline to now, when its callback starts.
/// Now is the tick's anchor plus the stamps' difference (a few instructions
/// instead of a clock_gettime per timer).
fn record_lateness(
    py: Python<'_>,
    m: &LoopMetrics,
    handle: &Py<Handle>,
    anchor: Option<TimeAnchor>,
) {
    if let Ok(t) = handle.bind(py).cast::<TimerHandle>() {
        let now = match anchor {
            Some(a) => a.mono + mclock::elapsed_ns(a.stamp, mclock::now()) as f64 * 1e-9,
            None => clock::monotonic(),
        };
        let late = now - t.get().when_secs();
        // Early (negative, within the clock's resolution) counts as 0.
        m.timer_lateness_ns.record((late.max(0.0) * 1e9) as u64);
    }
}

fn timer_cancelled(py: Python<'_>, t: &Py<TimerHandle>) -> bool {
    t.bind(py).as_super().get().is_cancelled()
}
