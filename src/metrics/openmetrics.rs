//! Every live loop's metrics as OpenMetrics text (which Prometheus also
//! reads): rendered from the atomics alone, without the GIL, so the
//! exporter thread answers while a loop blocks.

use std::fmt::Write;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use super::histogram::{Histogram, BUCKETS};
use super::{all_loops, LoopMetrics, KIND_NAMES};

/// Histogram `le` bounds: powers of two. Durations from 2^10 ns (~1 µs) to
/// 2^36 ns (~69 s); counts from 0 to 2^20 - 1.
const DURATION_EXPONENTS: std::ops::RangeInclusive<u32> = 10..=36;
const COUNT_EXPONENTS: std::ops::RangeInclusive<u32> = 0..=20;

/// How a family's values are kept and shown.
#[derive(Clone, Copy, PartialEq)]
enum Unit {
    /// An integer.
    One,
    /// Nanoseconds, shown as seconds.
    Seconds,
}

impl Unit {
    fn show(self, v: u64) -> String {
        match self {
            Unit::One => v.to_string(),
            Unit::Seconds => (v as f64 * 1e-9).to_string(),
        }
    }
}

/// A family whose samples are one value per loop.
struct Scalar {
    name: &'static str,
    kind: &'static str,
    unit: Unit,
    help: &'static str,
    get: fn(&LoopMetrics) -> u64,
}

const fn counter(name: &'static str, help: &'static str, get: fn(&LoopMetrics) -> u64) -> Scalar {
    Scalar {
        name,
        kind: "counter",
        unit: Unit::One,
        help,
        get,
    }
}

const fn seconds(name: &'static str, help: &'static str, get: fn(&LoopMetrics) -> u64) -> Scalar {
    Scalar {
        name,
        kind: "counter",
        unit: Unit::Seconds,
        help,
        get,
    }
}

const fn gauge(name: &'static str, help: &'static str, get: fn(&LoopMetrics) -> u64) -> Scalar {
    Scalar {
        name,
        kind: "gauge",
        unit: Unit::One,
        help,
        get,
    }
}

const SCALARS: &[Scalar] = &[
    gauge("ferroloop_running", "1 while the loop runs.", |m| {
        (m.native_thread.load(Relaxed) != 0) as u64
    }),
    counter("ferroloop_ticks", "Loop iterations.", |m| m.ticks.get()),
    counter("ferroloop_polls", "Polls of the OS for I/O.", |m| {
        m.polls.get()
    }),
    counter("ferroloop_polls_blocking", "Polls allowed to sleep.", |m| {
        m.polls_blocking.get()
    }),
    counter(
        "ferroloop_threadsafe_wakeups",
        "Wake-ups of the sleeping loop by other threads.",
        |m| m.wakeups.load(Relaxed),
    ),
    counter(
        "ferroloop_timers_scheduled",
        "Timers scheduled (call_later, call_at).",
        |m| m.timers_scheduled.get(),
    ),
    counter("ferroloop_timers_fired", "Timers that ran.", |m| {
        m.timers_fired.get()
    }),
    counter(
        "ferroloop_timers_cancelled",
        "Scheduled timers cancelled.",
        |m| m.timers_cancelled.get(),
    ),
    counter(
        "ferroloop_tasks_created",
        "Tasks created by the loop.",
        |m| m.tasks_created.get(),
    ),
    counter(
        "ferroloop_tasks_finished",
        "Tasks of the loop that finished.",
        |m| m.tasks_finished.get(),
    ),
    gauge(
        "ferroloop_tasks_alive",
        "Tasks created and not finished yet.",
        LoopMetrics::tasks_alive,
    ),
    gauge(
        "ferroloop_transports_open",
        "Native transports open.",
        |m| {
            m.transports_opened
                .get()
                .saturating_sub(m.transports_closed.get())
        },
    ),
    counter(
        "ferroloop_received_bytes",
        "Bytes read from sockets and pipes.",
        |m| m.bytes_received.get(),
    ),
    counter(
        "ferroloop_sent_bytes",
        "Bytes written to sockets and pipes.",
        |m| m.bytes_sent.get(),
    ),
    counter(
        "ferroloop_tls_handshakes",
        "TLS handshakes completed.",
        |m| m.tls_handshakes.get(),
    ),
    gauge(
        "ferroloop_ready_queue_depth",
        "Ready callbacks at the last tick.",
        |m| m.ready_last.get(),
    ),
    gauge(
        "ferroloop_ready_queue_depth_max",
        "Most ready callbacks in one tick.",
        |m| m.ready_max.get(),
    ),
    seconds("ferroloop_run_seconds", "Time in loop iterations.", |m| {
        m.run_ns.get()
    }),
    seconds(
        "ferroloop_idle_seconds",
        "Time blocked in the poller with nothing to do.",
        |m| m.idle_ns.get(),
    ),
    seconds(
        "ferroloop_busy_seconds",
        "Time in iterations minus idle time.",
        |m| m.run_ns.get().saturating_sub(m.idle_ns.get()),
    ),
    seconds(
        "ferroloop_callbacks_seconds",
        "Time running ready callbacks.",
        |m| m.callbacks_ns.get(),
    ),
    seconds(
        "ferroloop_overhead_seconds",
        "Time in iterations outside callbacks and polls.",
        |m| {
            m.run_ns
                .get()
                .saturating_sub(m.poll_ns.get())
                .saturating_sub(m.callbacks_ns.get())
        },
    ),
    counter(
        "ferroloop_slow_callbacks",
        "Callbacks that ran past the slow-callback threshold.",
        |m| m.slow.total.load(Relaxed),
    ),
];

/// A histogram family.
struct HistogramFamily {
    name: &'static str,
    unit: Unit,
    help: &'static str,
    get: fn(&LoopMetrics) -> &Histogram,
}

const fn hist(
    name: &'static str,
    unit: Unit,
    help: &'static str,
    get: fn(&LoopMetrics) -> &Histogram,
) -> HistogramFamily {
    HistogramFamily {
        name,
        unit,
        help,
        get,
    }
}

const HISTOGRAMS: &[HistogramFamily] = &[
    hist(
        "ferroloop_tick_duration_seconds",
        Unit::Seconds,
        "Duration of loop iterations.",
        |m| &m.tick_ns,
    ),
    hist(
        "ferroloop_poll_wait_seconds",
        Unit::Seconds,
        "Time blocked in polls allowed to sleep.",
        |m| &m.poll_wait_ns,
    ),
    hist(
        "ferroloop_callbacks_per_tick",
        Unit::One,
        "Callbacks run per iteration.",
        |m| &m.callbacks_per_tick,
    ),
    hist(
        "ferroloop_timer_lateness_seconds",
        Unit::Seconds,
        "Time from a timer's deadline to its callback's start (the loop's lag).",
        |m| &m.timer_lateness_ns,
    ),
    hist(
        "ferroloop_callback_duration_seconds",
        Unit::Seconds,
        "Duration of each callback (precise mode only).",
        |m| &m.callback_ns,
    ),
];

struct Renderer {
    out: String,
    loops: Vec<Arc<LoopMetrics>>,
}

impl Renderer {
    fn header(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.out, "# TYPE {name} {kind}\n# HELP {name} {help}");
    }

    fn scalar(&mut self, f: &Scalar) {
        self.header(f.name, f.kind, f.help);
        let suffix = if f.kind == "counter" { "_total" } else { "" };
        for m in &self.loops {
            let v = f.unit.show((f.get)(m));
            let _ = writeln!(self.out, "{}{suffix}{{loop=\"{}\"}} {v}", f.name, m.id);
        }
    }

    /// A counter family with one extra label (`label` = each of `values`).
    fn labelled(
        &mut self,
        name: &str,
        help: &str,
        label: &str,
        values: &[&str],
        get: impl Fn(&LoopMetrics, usize) -> u64,
    ) {
        self.header(name, "counter", help);
        for m in &self.loops {
            for (i, v) in values.iter().enumerate() {
                let n = get(m, i);
                let _ = writeln!(
                    self.out,
                    "{name}_total{{loop=\"{}\",{label}=\"{v}\"}} {n}",
                    m.id
                );
            }
        }
    }

    fn histogram(&mut self, f: &HistogramFamily) {
        self.header(f.name, "histogram", f.help);
        let name = f.name;
        for m in &self.loops {
            let s = (f.get)(m).snapshot();
            let l = format!("loop=\"{}\"", m.id);
            let exps = match f.unit {
                Unit::Seconds => DURATION_EXPONENTS,
                Unit::One => COUNT_EXPONENTS,
            };
            for e in exps {
                // Values below 2^e: for counts, "le" 2^e - 1 exactly; for
                // nanoseconds, "le" 2^e ns (a value of exactly 2^e ns is
                // counted in the next bucket: below the clock's precision).
                let below = s.count_below(1u64 << e);
                let le = match f.unit {
                    Unit::Seconds => format!("{:e}", (1u64 << e) as f64 * 1e-9),
                    Unit::One => format!("{}.0", (1u64 << e) - 1),
                };
                let _ = writeln!(self.out, "{name}_bucket{{{l},le=\"{le}\"}} {below}");
            }
            let total = s.count;
            let sum = f.unit.show(s.sum);
            let _ = writeln!(self.out, "{name}_bucket{{{l},le=\"+Inf\"}} {total}");
            let _ = writeln!(self.out, "{name}_count{{{l}}} {total}");
            let _ = writeln!(self.out, "{name}_sum{{{l}}} {sum}");
        }
    }
}

/// The whole exposition, ending with `# EOF`.
pub fn render() -> String {
    let loops = all_loops();
    let out = String::with_capacity(4096 + loops.len() * BUCKETS * 16);
    let mut r = Renderer { out, loops };
    for f in &SCALARS[..4] {
        r.scalar(f);
    }
    r.labelled(
        "ferroloop_fd_events",
        "Ready file descriptor events.",
        "direction",
        &["read", "write"],
        |m, i| [&m.fd_read_events, &m.fd_write_events][i].get(),
    );
    r.labelled(
        "ferroloop_callbacks",
        "Callbacks run, by kind.",
        "kind",
        &KIND_NAMES,
        |m, i| m.callbacks[i].get(),
    );
    for f in &SCALARS[4..] {
        r.scalar(f);
    }
    for f in HISTOGRAMS {
        r.histogram(f);
    }
    r.out.push_str("# EOF\n");
    r.out
}
