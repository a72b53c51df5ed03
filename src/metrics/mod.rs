//! Loop metrics, always on: plain counters written by the loop thread, clock
//! reads per tick (not per callback), fixed-bucket histograms, and the slow
//! callback watchdog. Read from any thread without the GIL (the OpenMetrics
//! server) or through `loop.stats()`.
//!
//! Every writer holds the GIL (the loop thread in its tick, or a Python
//! thread calling into the loop), so counters are bumped with a relaxed
//! load and store rather than a locked add; readers may see a value one
//! update old, never a torn one. The one counter bumped by threads that may
//! not hold the GIL (wake-ups) uses `fetch_add`.

pub mod clock;
pub mod histogram;
pub mod openmetrics;
pub mod page;
pub mod serve;
pub mod slow;
pub mod task_steps;

use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Once, OnceLock, Weak};

use parking_lot::Mutex;

use histogram::Histogram;

/// A counter with one writer at a time (see the module docs).
#[derive(Default)]
pub struct Counter(AtomicU64);

impl Counter {
    #[inline(always)]
    pub fn add(&self, n: u64) {
        self.0.store(self.0.load(Relaxed).wrapping_add(n), Relaxed);
    }

    #[inline(always)]
    pub fn get(&self) -> u64 {
        self.0.load(Relaxed)
    }

    #[inline(always)]
    pub fn set(&self, v: u64) {
        self.0.store(v, Relaxed);
    }
}

/// What kind of callback a ready-queue entry is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    /// `call_soon` (and futures' done callbacks, task steps).
    Ready = 0,
    /// A `call_later` / `call_at` timer.
    Timer = 1,
    /// An fd watcher or a native transport's reader/writer.
    Io = 2,
    /// `call_soon_threadsafe` (and signal handlers).
    Threadsafe = 3,
}

pub const KIND_NAMES: [&str; 4] = ["ready", "timer", "io", "threadsafe"];

impl Kind {
    #[inline(always)]
    pub fn from_u8(v: u8) -> Kind {
        match v & 3 {
            0 => Kind::Ready,
            1 => Kind::Timer,
            2 => Kind::Io,
            _ => Kind::Threadsafe,
        }
    }

    pub fn name(self) -> &'static str {
        KIND_NAMES[self as usize]
    }
}

/// One loop's metrics. Shared (`Arc`) with the global registry, the
/// watchdog thread and the OpenMetrics server, so it outlives neither.
#[derive(Default)]
pub struct LoopMetrics {
    /// A process-unique number (the `loop` label).
    pub id: u64,
    /// The fork generation the loop was created in (see `event_loop`).
    pub fork_generation: u64,
    /// The OS thread id (`threading.get_native_id()`) of the thread running
    /// the loop, 0 when not running.
    pub native_thread: AtomicU64,
    /// `threading.get_ident()` of that thread, 0 when not running.
    pub thread_ident: AtomicU64,
    pub closed: AtomicBool,
    /// Off (`FERROLOOP_METRICS=0`): no per-tick clock reads, no per-callback
    /// counts and no slow-callback watch. Fixed at creation.
    pub enabled: bool,

    pub ticks: Counter,
    pub polls: Counter,
    /// Polls allowed to block (a timeout other than zero).
    pub polls_blocking: Counter,
    pub fd_read_events: Counter,
    pub fd_write_events: Counter,
    /// Callbacks run, by `Kind`.
    pub callbacks: [Counter; 4],
    /// Wake-ups of a sleeping loop by another thread (eventfd writes).
    pub wakeups: AtomicU64,
    pub timers_scheduled: Counter,
    pub timers_fired: Counter,
    pub timers_cancelled: Counter,
    pub tasks_created: Counter,
    /// Tasks that finished in one of their steps (see `task_steps`).
    pub tasks_finished: Counter,
    pub transports_opened: Counter,
    pub transports_closed: Counter,
    pub bytes_received: Counter,
    pub bytes_sent: Counter,
    pub tls_handshakes: Counter,
    pub ready_last: Counter,
    pub ready_max: Counter,

    /// Time in ticks (nanoseconds), split into blocking polls that were
    /// allowed to sleep (idle), all polls, and running the ready batch.
    pub run_ns: Counter,
    pub idle_ns: Counter,
    pub poll_ns: Counter,
    pub callbacks_ns: Counter,

    pub tick_ns: Histogram,
    pub poll_wait_ns: Histogram,
    pub callbacks_per_tick: Histogram,
    pub timer_lateness_ns: Histogram,
    /// Precise mode only: every callback timed.
    pub callback_ns: Histogram,
    pub precise: AtomicBool,
    /// Per-task stats (opt-in): task steps are timed and reported to
    /// `ferroloop._stats.task_step`.
    pub task_stats: AtomicBool,

    pub slow: slow::SlowState,

    /// The stats page `python -m ferroloop top` reads (created when the
    /// loop first runs), and when it was last written (a `clock::Stamp`).
    pub page: OnceLock<page::Page>,
    pub published: Counter,
    /// How many times the page was written.
    pub page_writes: Counter,
}

/// `FERROLOOP_METRICS`: `0`/`off` turns the per-tick and per-callback
/// metrics off (for measuring what they cost), `precise` starts every loop
/// in precise mode; anything else (or unset) is the default, on.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    On,
    Off,
    Precise,
}

impl Mode {
    fn from_env() -> Mode {
        match std::env::var("FERROLOOP_METRICS").as_deref() {
            Ok("0") | Ok("off") => Mode::Off,
            Ok("precise") => Mode::Precise,
            _ => Mode::On,
        }
    }
}

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// A loop's scalar counters and gauges, by name, in one place: the raw
/// snapshot behind `loop.stats()` has one key per entry, and the stats page
/// stores them in this order (`ferroloop._top` reads the names from here).
pub type Value = (&'static str, fn(&LoopMetrics) -> u64);

pub const VALUES: &[Value] = &[
    ("ticks", |m| m.ticks.get()),
    ("polls", |m| m.polls.get()),
    ("polls_blocking", |m| m.polls_blocking.get()),
    ("fd_read_events", |m| m.fd_read_events.get()),
    ("fd_write_events", |m| m.fd_write_events.get()),
    ("cb_ready", |m| m.callbacks[Kind::Ready as usize].get()),
    ("cb_timer", |m| m.callbacks[Kind::Timer as usize].get()),
    ("cb_io", |m| m.callbacks[Kind::Io as usize].get()),
    ("cb_threadsafe", |m| {
        m.callbacks[Kind::Threadsafe as usize].get()
    }),
    ("threadsafe_wakeups", |m| m.wakeups.load(Relaxed)),
    ("timers_scheduled", |m| m.timers_scheduled.get()),
    ("timers_fired", |m| m.timers_fired.get()),
    ("timers_cancelled", |m| m.timers_cancelled.get()),
    ("tasks_created", |m| m.tasks_created.get()),
    ("tasks_finished", |m| m.tasks_finished.get()),
    ("tasks_counted", |m| u64::from(m.tasks_counted())),
    ("tasks_alive", LoopMetrics::tasks_alive),
    ("transports_opened", |m| m.transports_opened.get()),
    ("transports_closed", |m| m.transports_closed.get()),
    ("bytes_received", |m| m.bytes_received.get()),
    ("bytes_sent", |m| m.bytes_sent.get()),
    ("tls_handshakes", |m| m.tls_handshakes.get()),
    ("ready_queue_depth", |m| m.ready_last.get()),
    ("ready_queue_depth_max", |m| m.ready_max.get()),
    ("run_ns", |m| m.run_ns.get()),
    ("idle_ns", |m| m.idle_ns.get()),
    ("poll_ns", |m| m.poll_ns.get()),
    ("callbacks_ns", |m| m.callbacks_ns.get()),
    ("slow_callbacks", |m| m.slow.total.load(Relaxed)),
    ("slow_threshold_ns", |m| m.slow.threshold_ns.load(Relaxed)),
    ("page_writes", |m| m.page_writes.get()),
];

/// Every live loop's metrics, for the exporters and the watchdog.
static REGISTRY: Mutex<Vec<Weak<LoopMetrics>>> = Mutex::new(Vec::new());

static FORK_HOOK: Once = Once::new();

extern "C" fn before_fork() {
    // The watchdog and the OpenMetrics server take the registry's lock
    // without the GIL: hold it across fork() so the child's copy is not
    // left locked by a thread that does not exist there.
    std::mem::forget(REGISTRY.lock());
}

extern "C" fn after_fork_in_parent() {
    // SAFETY: `before_fork` took the lock in this thread and forgot the guard.
    unsafe { REGISTRY.force_unlock(parking_lot::lock_api::GuardNoSend::new()) };
}

extern "C" fn after_fork_in_child() {
    // SAFETY: as in the parent: the forking thread (the child's only
    // thread) took the lock in `before_fork`.
    unsafe { REGISTRY.force_unlock(parking_lot::lock_api::GuardNoSend::new()) };
    slow::after_fork_in_child();
}

impl LoopMetrics {
    /// Whether tasks finishing are counted (metrics on and C tasks found,
    /// see `task_steps`).
    pub fn tasks_counted(&self) -> bool {
        self.enabled && task_steps::counted()
    }

    /// Tasks created and not finished (0 when not counted).
    pub fn tasks_alive(&self) -> u64 {
        if self.tasks_counted() {
            self.tasks_created
                .get()
                .saturating_sub(self.tasks_finished.get())
        } else {
            0
        }
    }

    pub fn new(fork_generation: u64) -> Arc<Self> {
        let mode = Mode::from_env();
        FORK_HOOK.call_once(|| {
            // SAFETY: the handlers only lock/unlock a parking_lot mutex and
            // store atomics; registered once per process.
            unsafe {
                libc::pthread_atfork(
                    Some(before_fork),
                    Some(after_fork_in_parent),
                    Some(after_fork_in_child),
                )
            };
        });
        if mode != Mode::Off {
            clock::init();
        }
        let m = Arc::new(Self {
            id: NEXT_ID.fetch_add(1, Relaxed),
            fork_generation,
            enabled: mode != Mode::Off,
            precise: AtomicBool::new(mode == Mode::Precise),
            ..Default::default()
        });
        let mut reg = REGISTRY.lock();
        reg.retain(|w| w.strong_count() > 0);
        reg.push(Arc::downgrade(&m));
        m
    }

    #[inline(always)]
    pub fn callback_ran(&self, kind: Kind) {
        // `& 3`: four kinds, no bounds check.
        self.callbacks[kind as usize & 3].add(1);
    }

    /// Creates the stats page if metrics are on and it does not exist yet
    /// (loop thread, when the loop starts running).
    pub fn ensure_page(&self) {
        if self.enabled && self.page.get().is_none() {
            if let Some(p) = page::Page::create(self) {
                let _ = self.page.set(p);
            }
        }
    }

    /// Rewrites the stats page if the last write is over 1 ms old (loop
    /// thread, at the end of a tick; `now` is that tick's last stamp).
    #[inline(always)]
    pub fn maybe_publish(&self, now: clock::Stamp) {
        if let Some(p) = self.page.get() {
            if clock::elapsed_ns(clock::Stamp::from_raw(self.published.get()), now) >= 1_000_000 {
                self.write_page(p, now);
            }
        }
    }

    /// Writes the stats page now (loop thread).
    pub fn publish_now(&self) {
        if let Some(p) = self.page.get() {
            self.write_page(p, clock::now());
        }
    }

    fn write_page(&self, p: &page::Page, now: clock::Stamp) {
        self.published.set(now.raw());
        self.page_writes.add(1);
        p.publish(self, clock::monotonic_now_ns());
    }

    /// The loop is (not) blocked in the poller with nothing to do.
    #[inline]
    pub fn set_polling(&self, polling: bool) {
        if let Some(p) = self.page.get() {
            p.set_polling_since(if polling {
                clock::monotonic_now_ns()
            } else {
                0
            });
        }
    }

    #[inline(always)]
    pub fn ready_depth(&self, n: usize) {
        let n = n as u64;
        self.ready_last.set(n);
        if n > self.ready_max.get() {
            self.ready_max.set(n);
        }
    }
}

/// The live loops' metrics (created in this process generation).
pub fn all_loops() -> Vec<Arc<LoopMetrics>> {
    let gen = crate::event_loop::fork_generation();
    REGISTRY
        .lock()
        .iter()
        .filter_map(Weak::upgrade)
        .filter(|m| m.fork_generation == gen && !m.closed.load(Relaxed))
        .collect()
}

thread_local! {
    /// The metrics of the loop running in this thread: the socket and pipe
    /// syscalls (`sock_io`) count their bytes there.
    static CURRENT: Cell<*const LoopMetrics> = const { Cell::new(std::ptr::null()) };
}

/// Sets (or with `None` clears) this thread's running loop. The caller keeps
/// the `Arc` alive until it clears it (the loop holds it for its lifetime
/// and clears it when it stops running).
pub fn set_current(m: Option<&Arc<LoopMetrics>>) {
    CURRENT.with(|c| c.set(m.map_or(std::ptr::null(), Arc::as_ptr)));
}

#[inline]
fn with_current(f: impl FnOnce(&LoopMetrics)) {
    CURRENT.with(|c| {
        let p = c.get();
        if !p.is_null() {
            // SAFETY: `p` is set by `set_current` from an `Arc` that the
            // running loop keeps alive and is cleared before the loop stops
            // running in this thread (see `_leave_running`).
            f(unsafe { &*p });
        }
    });
}

/// Bytes the running loop's thread received from a socket or pipe.
#[inline]
pub fn count_received(n: usize) {
    with_current(|m| m.bytes_received.add(n as u64));
}

/// Bytes the running loop's thread sent to a socket or pipe.
#[inline]
pub fn count_sent(n: usize) {
    with_current(|m| m.bytes_sent.add(n as u64));
}

/// A TLS handshake completed in the running loop's thread.
#[inline]
pub fn count_tls_handshake() {
    with_current(|m| m.tls_handshakes.add(1));
}

/// Every live loop's metrics as OpenMetrics text.
#[pyo3::pyfunction]
#[pyo3(name = "_openmetrics")]
pub fn py_openmetrics(py: pyo3::Python<'_>) -> String {
    py.detach(openmetrics::render)
}

/// `atexit`: the watchdog stops entering Python; this process's stats
/// pages are removed.
#[pyo3::pyfunction]
#[pyo3(name = "_python_exiting")]
pub fn py_python_exiting(py: pyo3::Python<'_>) {
    slow::python_exiting(py);
    for m in all_loops() {
        if let Some(p) = m.page.get() {
            p.unlink();
        }
    }
}

/// The names of `VALUES`, in the stats page's order.
#[pyo3::pyfunction]
#[pyo3(name = "_value_names")]
pub fn py_value_names() -> Vec<&'static str> {
    VALUES.iter().map(|(name, _)| *name).collect()
}

/// The largest value of each histogram bucket, in bucket order (for
/// `python -m ferroloop top`, which reads raw buckets from the page).
#[pyo3::pyfunction]
#[pyo3(name = "_histogram_bounds")]
pub fn py_histogram_bounds() -> Vec<u64> {
    (0..histogram::BUCKETS)
        .map(histogram::upper_bound)
        .collect()
}
