//! Every live loop's metrics as OpenMetrics text (which Prometheus also
//! reads): rendered from the atomics alone, without the GIL, so the
//! exporter thread answers while a loop blocks.

use std::fmt::Write;
use std::sync::atomic::Ordering::Relaxed;

use super::histogram::{HistogramSnapshot, BUCKETS};
use super::{all_loops, Counter, LoopMetrics, KIND_NAMES};

/// Histogram `le` bounds: powers of two. Durations from 2^10 ns (~1 µs) to
/// 2^36 ns (~69 s); counts from 0 to 2^20 - 1.
const DURATION_EXPONENTS: std::ops::RangeInclusive<u32> = 10..=36;
const COUNT_EXPONENTS: std::ops::RangeInclusive<u32> = 0..=20;

struct Family<'a> {
    out: &'a mut String,
}

impl Family<'_> {
    fn header(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.out, "# TYPE {name} {kind}\n# HELP {name} {help}");
    }
}

fn label(m: &LoopMetrics) -> String {
    format!("loop=\"{}\"", m.id)
}

fn counter(
    out: &mut String,
    loops: &[std::sync::Arc<LoopMetrics>],
    name: &str,
    help: &str,
    get: impl Fn(&LoopMetrics) -> u64,
) {
    Family { out }.header(name, "counter", help);
    for m in loops {
        let _ = writeln!(out, "{name}_total{{{}}} {}", label(m), get(m));
    }
}

fn seconds_counter(
    out: &mut String,
    loops: &[std::sync::Arc<LoopMetrics>],
    name: &str,
    help: &str,
    get: impl Fn(&LoopMetrics) -> u64,
) {
    Family { out }.header(name, "counter", help);
    for m in loops {
        let _ = writeln!(out, "{name}_total{{{}}} {}", label(m), get(m) as f64 * 1e-9);
    }
}

fn gauge(
    out: &mut String,
    loops: &[std::sync::Arc<LoopMetrics>],
    name: &str,
    help: &str,
    get: impl Fn(&LoopMetrics) -> u64,
) {
    Family { out }.header(name, "gauge", help);
    for m in loops {
        let _ = writeln!(out, "{name}{{{}}} {}", label(m), get(m));
    }
}

/// A histogram family; `seconds` turns nanoseconds into seconds.
fn histogram(
    out: &mut String,
    loops: &[std::sync::Arc<LoopMetrics>],
    name: &str,
    help: &str,
    seconds: bool,
    get: impl Fn(&LoopMetrics) -> HistogramSnapshot,
) {
    Family { out }.header(name, "histogram", help);
    for m in loops {
        let s = get(m);
        let l = label(m);
        let exps = if seconds {
            DURATION_EXPONENTS
        } else {
            COUNT_EXPONENTS
        };
        for e in exps {
            // Values below 2^e: for counts, "le" 2^e - 1 exactly; for
            // nanoseconds, "le" 2^e ns (a value of exactly 2^e ns is
            // counted in the next bucket: below the clock's precision).
            let below = s.count_below(1u64 << e);
            if seconds {
                let le = (1u64 << e) as f64 * 1e-9;
                let _ = writeln!(out, "{name}_bucket{{{l},le=\"{le:e}\"}} {below}");
            } else {
                let le = (1u64 << e) - 1;
                let _ = writeln!(out, "{name}_bucket{{{l},le=\"{le}.0\"}} {below}");
            }
        }
        let total: u64 = s.counts.iter().sum();
        let _ = writeln!(out, "{name}_bucket{{{l},le=\"+Inf\"}} {total}");
        let _ = writeln!(out, "{name}_count{{{l}}} {total}");
        if seconds {
            let _ = writeln!(out, "{name}_sum{{{l}}} {}", s.sum as f64 * 1e-9);
        } else {
            let _ = writeln!(out, "{name}_sum{{{l}}} {}", s.sum);
        }
    }
}

fn get(c: &Counter) -> u64 {
    c.get()
}

/// The whole exposition, ending with `# EOF`.
pub fn render() -> String {
    let loops = all_loops();
    let mut out = String::with_capacity(4096 + loops.len() * BUCKETS * 16);
    let o = &mut out;
    gauge(
        o,
        &loops,
        "ferroloop_running",
        "1 while the loop runs.",
        |m| (m.native_thread.load(Relaxed) != 0) as u64,
    );
    counter(o, &loops, "ferroloop_ticks", "Loop iterations.", |m| {
        get(&m.ticks)
    });
    counter(
        o,
        &loops,
        "ferroloop_polls",
        "Polls of the OS for I/O.",
        |m| get(&m.polls),
    );
    counter(
        o,
        &loops,
        "ferroloop_polls_blocking",
        "Polls allowed to sleep.",
        |m| get(&m.polls_blocking),
    );
    Family { out: o }.header(
        "ferroloop_fd_events",
        "counter",
        "Ready file descriptor events.",
    );
    for m in &loops {
        for (dir, c) in [("read", &m.fd_read_events), ("write", &m.fd_write_events)] {
            let _ = writeln!(
                o,
                "ferroloop_fd_events_total{{{},direction=\"{dir}\"}} {}",
                label(m),
                c.get()
            );
        }
    }
    Family { out: o }.header("ferroloop_callbacks", "counter", "Callbacks run, by kind.");
    for m in &loops {
        for (kind, c) in KIND_NAMES.iter().zip(&m.callbacks) {
            let _ = writeln!(
                o,
                "ferroloop_callbacks_total{{{},kind=\"{kind}\"}} {}",
                label(m),
                c.get()
            );
        }
    }
    counter(
        o,
        &loops,
        "ferroloop_threadsafe_wakeups",
        "Wake-ups of the sleeping loop by other threads.",
        |m| m.wakeups.load(Relaxed),
    );
    counter(
        o,
        &loops,
        "ferroloop_timers_scheduled",
        "Timers scheduled (call_later, call_at).",
        |m| get(&m.timers_scheduled),
    );
    counter(
        o,
        &loops,
        "ferroloop_timers_fired",
        "Timers that ran.",
        |m| get(&m.timers_fired),
    );
    counter(
        o,
        &loops,
        "ferroloop_timers_cancelled",
        "Scheduled timers cancelled.",
        |m| get(&m.timers_cancelled),
    );
    counter(
        o,
        &loops,
        "ferroloop_tasks_created",
        "Tasks created by the loop.",
        |m| get(&m.tasks_created),
    );
    gauge(
        o,
        &loops,
        "ferroloop_transports_open",
        "Native transports open.",
        |m| {
            m.transports_opened
                .get()
                .saturating_sub(m.transports_closed.get())
        },
    );
    counter(
        o,
        &loops,
        "ferroloop_received_bytes",
        "Bytes read from sockets and pipes.",
        |m| get(&m.bytes_received),
    );
    counter(
        o,
        &loops,
        "ferroloop_sent_bytes",
        "Bytes written to sockets and pipes.",
        |m| get(&m.bytes_sent),
    );
    counter(
        o,
        &loops,
        "ferroloop_tls_handshakes",
        "TLS handshakes completed.",
        |m| get(&m.tls_handshakes),
    );
    gauge(
        o,
        &loops,
        "ferroloop_ready_queue_depth",
        "Ready callbacks at the last tick.",
        |m| get(&m.ready_last),
    );
    gauge(
        o,
        &loops,
        "ferroloop_ready_queue_depth_max",
        "Most ready callbacks in one tick.",
        |m| get(&m.ready_max),
    );
    seconds_counter(
        o,
        &loops,
        "ferroloop_run_seconds",
        "Time in loop iterations.",
        |m| get(&m.run_ns),
    );
    seconds_counter(
        o,
        &loops,
        "ferroloop_idle_seconds",
        "Time blocked in the poller with nothing to do.",
        |m| get(&m.idle_ns),
    );
    seconds_counter(
        o,
        &loops,
        "ferroloop_busy_seconds",
        "Time in iterations minus idle time.",
        |m| m.run_ns.get().saturating_sub(m.idle_ns.get()),
    );
    seconds_counter(
        o,
        &loops,
        "ferroloop_callbacks_seconds",
        "Time running ready callbacks.",
        |m| get(&m.callbacks_ns),
    );
    seconds_counter(
        o,
        &loops,
        "ferroloop_overhead_seconds",
        "Time in iterations outside callbacks and polls.",
        |m| {
            m.run_ns
                .get()
                .saturating_sub(m.poll_ns.get())
                .saturating_sub(m.callbacks_ns.get())
        },
    );
    counter(
        o,
        &loops,
        "ferroloop_slow_callbacks",
        "Callbacks that ran past the slow-callback threshold.",
        |m| m.slow.total.load(Relaxed),
    );
    histogram(
        o,
        &loops,
        "ferroloop_tick_duration_seconds",
        "Duration of loop iterations.",
        true,
        |m| m.tick_ns.snapshot(),
    );
    histogram(
        o,
        &loops,
        "ferroloop_poll_wait_seconds",
        "Time blocked in polls allowed to sleep.",
        true,
        |m| m.poll_wait_ns.snapshot(),
    );
    histogram(
        o,
        &loops,
        "ferroloop_callbacks_per_tick",
        "Callbacks run per iteration.",
        false,
        |m| m.callbacks_per_tick.snapshot(),
    );
    histogram(
        o,
        &loops,
        "ferroloop_timer_lateness_seconds",
        "Time from a timer's deadline to its callback's start (the loop's lag).",
        true,
        |m| m.timer_lateness_ns.snapshot(),
    );
    histogram(
        o,
        &loops,
        "ferroloop_callback_duration_seconds",
        "Duration of each callback (precise mode only).",
        true,
        |m| m.callback_ns.snapshot(),
    );
    out.push_str("# EOF\n");
    out
}
