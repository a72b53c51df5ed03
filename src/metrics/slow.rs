//! Slow callbacks without debug mode: one native watchdog thread per process
//! samples every running loop's callback sequence number; a callback still
//! running after the threshold is flagged and the loop thread's Python stack
//! is captured then, while it still blocks (once per callback). The loop
//! thread pays a store and a load per callback (and a store per tick), and
//! reads the clock only when a callback it ran was flagged.
//!
//! Precision: the watchdog samples every threshold / 4 (0.25..25 ms), so a
//! callback's start is known within one sampling period (the record uses the
//! middle of the window it started in); its end is read when it returns.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use pyo3::prelude::*;

use super::{all_loops, clock, Kind, LoopMetrics};

/// Default threshold: 50 ms.
pub const DEFAULT_THRESHOLD_NS: u64 = 50_000_000;
/// The lowest threshold allowed: 1 ms.
pub const MIN_THRESHOLD_NS: u64 = 1_000_000;
/// Records kept per loop.
pub const RING: usize = 256;

/// One slow callback.
#[derive(Clone, Debug)]
pub struct SlowRecord {
    /// Its start and duration in seconds on the loop's clock (`loop.time()`).
    pub start: f64,
    pub duration: f64,
    pub kind: Kind,
    /// The handle's repr (or the transport method's).
    pub repr: String,
    /// For a task step: the task's name, the coroutine's qualified name, and
    /// `file:line` where the coroutine starts and where it was suspended (or
    /// returned) when the step ended.
    pub task: Option<String>,
    pub coro: Option<String>,
    pub started_at: Option<String>,
    pub location: Option<String>,
    /// The loop thread's Python stack, captured while the callback blocked.
    pub stack: Option<String>,
}

/// What the watchdog knows of one loop (touched by the watchdog only).
#[derive(Default)]
struct Watch {
    seq: u64,
    first_seen: u64,
    last_seen_other: u64,
}

pub struct SlowState {
    /// Bumped before and after every callback: odd while one runs.
    seq: AtomicU64,
    /// The `seq` of the running callback the watchdog found slow, and its
    /// estimated start (CLOCK_MONOTONIC ns).
    flagged: AtomicU64,
    flagged_start_ns: AtomicU64,
    pub threshold_ns: AtomicU64,
    pub total: AtomicU64,
    /// Bumped on every push to the ring (the stats page rewrites its copy).
    version: AtomicU64,
    stack: Mutex<Option<(u64, String)>>,
    ring: Mutex<VecDeque<SlowRecord>>,
    watch: Mutex<Watch>,
}

impl Default for SlowState {
    fn default() -> Self {
        Self {
            seq: AtomicU64::new(0),
            flagged: AtomicU64::new(u64::MAX),
            flagged_start_ns: AtomicU64::new(0),
            threshold_ns: AtomicU64::new(DEFAULT_THRESHOLD_NS),
            total: AtomicU64::new(0),
            version: AtomicU64::new(0),
            stack: Mutex::new(None),
            ring: Mutex::new(VecDeque::new()),
            watch: Mutex::new(Watch::default()),
        }
    }
}

/// What the loop thread learns when a flagged callback returns.
pub struct Finished {
    pub start_ns: u64,
    pub end_ns: u64,
    pub stack: Option<String>,
}

impl SlowState {
    /// The sequence number at the start of a tick (loop thread): even, no
    /// callback running. Callbacks get the odd numbers after it.
    #[inline(always)]
    pub fn current(&self) -> u64 {
        self.seq.load(Ordering::Relaxed) & !1
    }

    /// Callback `s` (odd) starts (loop thread).
    #[inline(always)]
    pub fn enter(&self, s: u64) {
        self.seq.store(s, Ordering::Release);
    }

    /// No callback runs from now on (loop thread, after a batch): `s` even.
    #[inline(always)]
    pub fn leave(&self, s: u64) {
        self.seq.store(s, Ordering::Release);
    }

    /// Whether the watchdog flagged callback `s` as slow (loop thread,
    /// after it returned).
    #[inline(always)]
    pub fn flagged(&self, s: u64) -> bool {
        self.flagged.load(Ordering::Acquire) == s
    }

    /// The flagged callback `s` returned: its times and captured stack.
    #[cold]
    pub fn finish(&self, s: u64) -> Finished {
        let end_ns = clock::monotonic_now_ns();
        let start_ns = self.flagged_start_ns.load(Ordering::Relaxed);
        let stack = match self.stack.lock().take() {
            Some((seq, text)) if seq == s => Some(text),
            _ => None,
        };
        self.total.fetch_add(1, Ordering::Relaxed);
        Finished {
            start_ns,
            end_ns,
            stack,
        }
    }

    pub fn push(&self, record: SlowRecord) {
        let mut ring = self.ring.lock();
        if ring.len() == RING {
            ring.pop_front();
        }
        ring.push_back(record);
        self.version.fetch_add(1, Ordering::Relaxed);
    }

    /// The newest `n` records (at most `RING`), oldest first.
    pub fn last(&self, n: usize) -> Vec<SlowRecord> {
        let ring = self.ring.lock();
        ring.iter()
            .skip(ring.len().saturating_sub(n))
            .cloned()
            .collect()
    }

    pub fn version(&self) -> u64 {
        self.version.load(Ordering::Relaxed)
    }

    /// The watchdog's look at this loop at `now`: flags a slow callback and
    /// returns its `seq` and estimated start when it does (then its stack
    /// is captured).
    fn observe(&self, now: u64, period: u64) -> Option<(u64, u64)> {
        let s = self.seq.load(Ordering::Acquire);
        let mut w = self.watch.lock();
        if s & 1 == 0 {
            w.seq = s;
            w.last_seen_other = now;
            return None;
        }
        if s != w.seq {
            // A callback we have not seen before: it started after the last
            // look that saw something else.
            w.seq = s;
            w.first_seen = now;
            w.last_seen_other = w.last_seen_other.max(now.saturating_sub(period));
            return None;
        }
        let start = w.last_seen_other + (w.first_seen - w.last_seen_other) / 2;
        let threshold = self.threshold_ns.load(Ordering::Relaxed);
        let ran = now.saturating_sub(start);
        if ran >= threshold && self.flagged.load(Ordering::Relaxed) != s {
            self.flagged_start_ns.store(start, Ordering::Relaxed);
            self.flagged.store(s, Ordering::Release);
            return Some((s, start));
        }
        None
    }

    fn still_running(&self, s: u64) -> bool {
        self.seq.load(Ordering::Acquire) == s
    }
}

const PERIOD_MIN_NS: u64 = 250_000;
const PERIOD_MAX_NS: u64 = 25_000_000;

/// The watchdog thread: it runs while this process has an open loop with
/// metrics on, and is joined when the last one closes (so a process that
/// forks after its loops are closed has no thread of ours: Python 3.12+
/// warns about fork() in a multi-threaded process).
struct Watchdog {
    thread: std::thread::JoinHandle<()>,
    stop: Arc<AtomicBool>,
    pid: u32,
}

static WATCHDOG: Mutex<Option<Watchdog>> = Mutex::new(None);
/// False once the interpreter is exiting (set from `atexit`).
static PYTHON_OK: AtomicBool = AtomicBool::new(true);
/// The watchdog is inside Python (or about to enter it).
static IN_PYTHON: AtomicBool = AtomicBool::new(false);

/// Starts the watchdog in this process if it is not running, and wakes it
/// (a loop started running).
pub fn ensure_watchdog() {
    let pid = std::process::id();
    let mut wd = WATCHDOG.lock();
    match wd.take() {
        Some(w) if w.pid == pid => {
            w.thread.thread().unpark();
            *wd = Some(w);
            return;
        }
        // The parent's, copied by fork(): that thread does not exist here,
        // so its handle is neither joined nor detached.
        Some(w) => std::mem::forget(w),
        None => {}
    }
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    let spawned = std::thread::Builder::new()
        .name("ferroloop-watchdog".into())
        .spawn(move || watchdog_main(&flag));
    if let Ok(thread) = spawned {
        *wd = Some(Watchdog { thread, stop, pid });
    }
}

/// Stops and joins the watchdog if no open loop is left (a loop closed).
pub fn stop_watchdog_if_unused(py: Python<'_>) {
    if !all_loops().is_empty() {
        return;
    }
    let Some(w) = WATCHDOG.lock().take() else {
        return;
    };
    if w.pid != std::process::id() {
        std::mem::forget(w);
        return;
    }
    w.stop.store(true, Ordering::Release);
    w.thread.thread().unpark();
    // Without the GIL: the watchdog may be waiting for it to take a stack.
    py.detach(|| {
        let _ = w.thread.join();
    });
}

fn watchdog_main(stop: &AtomicBool) {
    while !stop.load(Ordering::Acquire) {
        let loops: Vec<Arc<LoopMetrics>> = all_loops()
            .into_iter()
            .filter(|m| m.native_thread.load(Ordering::Relaxed) != 0)
            .collect();
        if loops.is_empty() {
            std::thread::park_timeout(Duration::from_secs(1));
            continue;
        }
        let threshold = loops
            .iter()
            .map(|m| m.slow.threshold_ns.load(Ordering::Relaxed))
            .min()
            .unwrap_or(DEFAULT_THRESHOLD_NS);
        let period = (threshold / 4).clamp(PERIOD_MIN_NS, PERIOD_MAX_NS);
        drop(loops); // a closed loop is not kept alive while we sleep
        std::thread::park_timeout(Duration::from_nanos(period));
        let now = clock::monotonic_now_ns();
        for m in all_loops() {
            if m.native_thread.load(Ordering::Relaxed) == 0 {
                continue;
            }
            if let Some((s, start)) = m.slow.observe(now, period) {
                if let Some(page) = m.page.get() {
                    page.set_slow_since(start);
                }
                capture_stack(&m, s);
            }
        }
    }
}

/// Captures the loop thread's Python stack for the still-running callback
/// `s` (`sys._current_frames()` through `ferroloop._loop._capture_stack`).
fn capture_stack(m: &LoopMetrics, s: u64) {
    IN_PYTHON.store(true, Ordering::SeqCst);
    if PYTHON_OK.load(Ordering::SeqCst) {
        Python::attach(|py| {
            if !m.slow.still_running(s) {
                return;
            }
            let ident = m.thread_ident.load(Ordering::Relaxed);
            let text = crate::py::call_helper(py, "_capture_stack", (ident,))
                .and_then(|t| t.extract::<String>());
            match text {
                Ok(text) if m.slow.still_running(s) => *m.slow.stack.lock() = Some((s, text)),
                Ok(_) => {}
                Err(e) => e.write_unraisable(py, None),
            }
        });
    }
    IN_PYTHON.store(false, Ordering::SeqCst);
}

/// The interpreter is exiting (`atexit`): the watchdog must not enter
/// Python from now on. Waits (without the GIL) until it is out.
pub fn python_exiting(py: Python<'_>) {
    PYTHON_OK.store(false, Ordering::SeqCst);
    py.detach(|| {
        while IN_PYTHON.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_micros(100));
        }
    });
}

/// In a forked child: no watchdog thread exists (it is started again by the
/// next loop that runs), and the parent's was not in our Python.
pub fn after_fork_in_child() {
    IN_PYTHON.store(false, Ordering::SeqCst);
}
