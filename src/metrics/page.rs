//! The per-loop stats page that `python -m ferroloop top PID` reads: a file
//! in tmpfs (`/dev/shm/ferroloop-<pid>-<loop>.stats`, mode 0600) mapped
//! shared, which the loop thread rewrites at most once per millisecond,
//! at the end of a tick, under a seqlock (odd sequence: being written). No
//! code runs in the observed process on the reader's behalf and nothing
//! needs enabling there; `FERROLOOP_STATS_PAGE=0` (or `FERROLOOP_METRICS=0`)
//! turns it off.
//!
//! The layout (little-endian `u64`s at fixed offsets) is read by
//! `python/ferroloop/_top.py`; bump `VERSION` on any change. The page is
//! created when the loop first runs and unlinked when it is closed or
//! dropped, or at exit; pages left by a killed process are removed by the
//! next process that creates one.

use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{fence, AtomicU64, Ordering};

use super::histogram::BUCKETS;
use super::slow::SlowRecord;
use super::LoopMetrics;

pub const SIZE: usize = 8192;
pub const MAGIC: &[u8; 8] = b"FLSTATS1";
pub const VERSION: u64 = 1;

// Header offsets.
const OFF_SEQ: usize = 8;
const OFF_VERSION: usize = 16;
const OFF_PID: usize = 24;
const OFF_LOOP: usize = 32;
const OFF_TID: usize = 40;
const OFF_PUBLISHED: usize = 48;
/// CLOCK_MONOTONIC ns since which the loop is blocked in the poller with
/// nothing to do (0: it is not). Written outside the seqlock.
const OFF_POLLING_SINCE: usize = 56;
/// CLOCK_MONOTONIC ns since which a callback the watchdog found slow is
/// running (0: none). Written outside the seqlock.
const OFF_SLOW_SINCE: usize = 64;
const OFF_COUNTERS: usize = 128;
const COUNTERS: usize = 40;
const OFF_LATENESS: usize = OFF_COUNTERS + COUNTERS * 8; // count, sum, max, buckets
const OFF_SLOW: usize = 2560; // total, then SLOW_SLOTS slots
pub const SLOW_SLOTS: usize = 8;
const SLOT: usize = 512;
const SLOT_TEXT: usize = SLOT - 24; // after start, duration, kind

/// The counters, in page order (`_top.COUNTERS` lists the same names).
fn counters(m: &LoopMetrics) -> [u64; 27] {
    [
        m.ticks.get(),
        m.polls.get(),
        m.polls_blocking.get(),
        m.fd_read_events.get(),
        m.fd_write_events.get(),
        m.callbacks[0].get(),
        m.callbacks[1].get(),
        m.callbacks[2].get(),
        m.callbacks[3].get(),
        m.wakeups.load(Ordering::Relaxed),
        m.timers_scheduled.get(),
        m.timers_fired.get(),
        m.timers_cancelled.get(),
        m.tasks_created.get(),
        m.transports_opened.get(),
        m.transports_closed.get(),
        m.bytes_received.get(),
        m.bytes_sent.get(),
        m.tls_handshakes.get(),
        m.ready_last.get(),
        m.ready_max.get(),
        m.run_ns.get(),
        m.idle_ns.get(),
        m.poll_ns.get(),
        m.callbacks_ns.get(),
        m.slow.total.load(Ordering::Relaxed),
        m.slow.threshold_ns.load(Ordering::Relaxed),
    ]
}

/// A mapped stats page.
pub struct Page {
    base: *mut u8,
    path: CString,
    pid: u32,
}

// SAFETY: the mapping is owned by this value alone (unmapped in Drop); the
// page's words are only accessed through atomics (`word`), so sharing it
// between the loop thread (writer) and the watchdog (two header words) is
// sound.
unsafe impl Send for Page {}
// SAFETY: see `Send`.
unsafe impl Sync for Page {}

fn dir() -> &'static str {
    "/dev/shm"
}

fn enabled_by_env() -> bool {
    !matches!(
        std::env::var("FERROLOOP_STATS_PAGE").as_deref(),
        Ok("0") | Ok("off")
    )
}

/// Removes the pages of processes that no longer exist.
fn sweep_stale() {
    let Ok(entries) = std::fs::read_dir(dir()) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name();
        let Some(name) = name.to_str() else { continue };
        let Some(rest) = name.strip_prefix("ferroloop-") else {
            continue;
        };
        if !rest.ends_with(".stats") {
            continue;
        }
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<i32>().ok()) else {
            continue;
        };
        // SAFETY: kill with signal 0 only checks that the process exists.
        let gone = unsafe { libc::kill(pid, 0) } != 0
            && std::io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH);
        if gone {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

static SWEPT: std::sync::Once = std::sync::Once::new();

impl Page {
    /// Creates and maps the page of loop `m` (None if turned off or if
    /// tmpfs is not there: the loop runs the same without it).
    pub fn create(m: &LoopMetrics) -> Option<Page> {
        if !enabled_by_env() {
            return None;
        }
        SWEPT.call_once(sweep_stale);
        let pid = std::process::id();
        let path = CString::new(format!("{}/ferroloop-{pid}-{}.stats", dir(), m.id)).ok()?;
        // SAFETY: `path` is a valid C string; the flags create a new file
        // readable only by this user, closed on exec.
        let fd = unsafe {
            libc::open(
                path.as_ptr(),
                libc::O_RDWR | libc::O_CREAT | libc::O_TRUNC | libc::O_CLOEXEC | libc::O_NOFOLLOW,
                0o600,
            )
        };
        if fd < 0 {
            return None;
        }
        // SAFETY: `fd` was just opened and is owned here (closed on drop).
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: ftruncate on our own fd; mmap of SIZE bytes of it, shared,
        // checked for MAP_FAILED below.
        let base = unsafe {
            if libc::ftruncate(fd.as_raw_fd(), SIZE as libc::off_t) != 0 {
                libc::unlink(path.as_ptr());
                return None;
            }
            libc::mmap(
                std::ptr::null_mut(),
                SIZE,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        drop(fd); // the mapping keeps the file's pages
        if base == libc::MAP_FAILED {
            // SAFETY: `path` is a valid C string.
            unsafe { libc::unlink(path.as_ptr()) };
            return None;
        }
        let page = Page {
            base: base.cast(),
            path,
            pid,
        };
        // SAFETY: the first 8 bytes of our fresh mapping.
        unsafe { std::ptr::copy_nonoverlapping(MAGIC.as_ptr(), page.base, 8) };
        page.word(OFF_VERSION).store(VERSION, Ordering::Relaxed);
        page.word(OFF_PID).store(pid as u64, Ordering::Relaxed);
        page.word(OFF_LOOP).store(m.id, Ordering::Relaxed);
        Some(page)
    }

    /// The `u64` at byte offset `off` (8-aligned, inside the page).
    fn word(&self, off: usize) -> &AtomicU64 {
        debug_assert!(off % 8 == 0 && off + 8 <= SIZE);
        // SAFETY: `base` is a page-aligned mapping of SIZE bytes that lives
        // as long as `self`; `off` is 8-aligned and in bounds; other
        // processes only read it.
        unsafe { &*self.base.add(off).cast::<AtomicU64>() }
    }

    fn write_bytes(&self, off: usize, len: usize, text: &[u8]) {
        let n = text.len().min(len);
        for i in (0..len).step_by(8) {
            let mut chunk = [0u8; 8];
            for (j, b) in chunk.iter_mut().enumerate() {
                if i + j < n {
                    *b = text[i + j];
                }
            }
            self.word(off + i).store(u64::from_le_bytes(chunk), Ordering::Relaxed);
        }
    }

    /// Rewrites the page from `m` under the seqlock (loop thread only).
    pub fn publish(&self, m: &LoopMetrics, now_mono_ns: u64) {
        let seq = self.word(OFF_SEQ);
        let s = seq.load(Ordering::Relaxed);
        seq.store(s | 1, Ordering::Relaxed);
        fence(Ordering::Release);
        self.word(OFF_TID)
            .store(m.native_thread.load(Ordering::Relaxed), Ordering::Relaxed);
        self.word(OFF_PUBLISHED).store(now_mono_ns, Ordering::Relaxed);
        for (i, v) in counters(m).into_iter().enumerate() {
            self.word(OFF_COUNTERS + i * 8).store(v, Ordering::Relaxed);
        }
        let h = m.timer_lateness_ns.snapshot();
        self.word(OFF_LATENESS).store(h.count, Ordering::Relaxed);
        self.word(OFF_LATENESS + 8).store(h.sum, Ordering::Relaxed);
        self.word(OFF_LATENESS + 16).store(h.max, Ordering::Relaxed);
        for (i, c) in h.counts.iter().enumerate().take(BUCKETS) {
            self.word(OFF_LATENESS + 24 + i * 8).store(*c, Ordering::Relaxed);
        }
        self.publish_slow(m);
        fence(Ordering::Release);
        seq.store((s | 1) + 1, Ordering::Release);
    }

    fn publish_slow(&self, m: &LoopMetrics) {
        let records = m.slow.last(SLOW_SLOTS);
        self.word(OFF_SLOW)
            .store(records.len() as u64, Ordering::Relaxed);
        for (i, r) in records.iter().enumerate() {
            let off = OFF_SLOW + 8 + i * SLOT;
            self.word(off).store((r.start * 1e9) as u64, Ordering::Relaxed);
            self.word(off + 8)
                .store((r.duration * 1e9) as u64, Ordering::Relaxed);
            self.word(off + 16).store(r.kind as u64, Ordering::Relaxed);
            self.write_bytes(off + 24, SLOT_TEXT, &slot_text(r));
        }
    }

    pub fn set_polling_since(&self, mono_ns: u64) {
        self.word(OFF_POLLING_SINCE)
            .store(mono_ns, Ordering::Relaxed);
    }

    pub fn set_slow_since(&self, mono_ns: u64) {
        self.word(OFF_SLOW_SINCE).store(mono_ns, Ordering::Relaxed);
    }
}

/// `handle \x1f task \x1f location \x1f innermost stack line`, cut to fit.
fn slot_text(r: &SlowRecord) -> Vec<u8> {
    let task = match (&r.task, &r.coro) {
        (Some(t), Some(c)) => format!("{t} ({c})"),
        _ => String::new(),
    };
    let inner = r
        .stack
        .as_deref()
        .and_then(|s| s.lines().rev().find(|l| l.trim_start().starts_with("File ")))
        .map(str::trim)
        .unwrap_or("");
    let loc = r.location.as_deref().unwrap_or("");
    let mut text = format!("{}\x1f{task}\x1f{loc}\x1f{inner}", r.repr).into_bytes();
    if text.len() >= SLOT_TEXT {
        text.truncate(SLOT_TEXT - 1);
        // Never end inside a UTF-8 sequence.
        while text.last().is_some_and(|b| b & 0xC0 == 0x80) {
            text.pop();
        }
        text.pop();
    }
    text
}

impl Drop for Page {
    fn drop(&mut self) {
        // SAFETY: `base` is our SIZE-byte mapping, unmapped once here;
        // the file is unlinked only by the process that created it (a
        // forked child dropping an inherited loop leaves the parent's).
        unsafe {
            libc::munmap(self.base.cast(), SIZE);
            if std::process::id() == self.pid {
                libc::unlink(self.path.as_ptr());
            }
        }
    }
}
