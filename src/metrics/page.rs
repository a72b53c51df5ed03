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
use std::sync::atomic::{fence, AtomicBool, AtomicU64, Ordering};

use super::histogram::BUCKETS;
use super::slow::SlowRecord;
use super::LoopMetrics;

pub const SIZE: usize = 8192;
pub const MAGIC: &[u8; 8] = b"FLSTATS1";
pub const VERSION: u64 = 3;

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

// The page has room for every entry of `VALUES`.
const _: () = assert!(super::VALUES.len() <= COUNTERS);

/// A mapped stats page.
pub struct Page {
    base: *mut u8,
    path: CString,
    pid: u32,
    unlinked: AtomicBool,
    /// The slow-callback ring's version last written (see `publish_slow`).
    slow_written: AtomicU64,
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
            unlinked: AtomicBool::new(false),
            slow_written: AtomicU64::new(u64::MAX),
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
            self.word(off + i)
                .store(u64::from_le_bytes(chunk), Ordering::Relaxed);
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
        self.word(OFF_PUBLISHED)
            .store(now_mono_ns, Ordering::Relaxed);
        for (i, (_, get)) in super::VALUES.iter().enumerate() {
            self.word(OFF_COUNTERS + i * 8)
                .store(get(m), Ordering::Relaxed);
        }
        // Straight from the atomics: no allocation on the loop thread.
        let h = &m.timer_lateness_ns;
        let (sum, max) = h.sum_max();
        let mut count = 0;
        for (i, c) in h.bucket_counts().enumerate().take(BUCKETS) {
            count += c;
            self.word(OFF_LATENESS + 24 + i * 8)
                .store(c, Ordering::Relaxed);
        }
        self.word(OFF_LATENESS).store(count, Ordering::Relaxed);
        self.word(OFF_LATENESS + 8).store(sum, Ordering::Relaxed);
        self.word(OFF_LATENESS + 16).store(max, Ordering::Relaxed);
        self.publish_slow(m);
        fence(Ordering::Release);
        seq.store((s | 1) + 1, Ordering::Release);
    }

    /// The newest slow-callback records, rewritten only when the ring
    /// changed since the last publish.
    fn publish_slow(&self, m: &LoopMetrics) {
        let version = m.slow.version();
        if self.slow_written.swap(version, Ordering::Relaxed) == version {
            return;
        }
        let records = m.slow.last(SLOW_SLOTS);
        self.word(OFF_SLOW)
            .store(records.len() as u64, Ordering::Relaxed);
        for (i, r) in records.iter().enumerate() {
            let off = OFF_SLOW + 8 + i * SLOT;
            self.word(off)
                .store((r.start * 1e9) as u64, Ordering::Relaxed);
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

/// `handle \x1f task \x1f location \x1f innermost frame`, cut to fit. The
/// innermost frame of the captured stack reads `file:line in func: code`.
fn slot_text(r: &SlowRecord) -> Vec<u8> {
    let task = match (&r.task, &r.coro) {
        (Some(t), Some(c)) => format!("{t} ({c})"),
        _ => String::new(),
    };
    let inner = r.stack.as_deref().map(innermost_frame).unwrap_or_default();
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

/// `file:line in func: code` from the last frame of a
/// `traceback.format_stack()` text (`  File "f", line N, in func\n    code`).
fn innermost_frame(stack: &str) -> String {
    let lines: Vec<&str> = stack.lines().collect();
    let Some(i) = lines
        .iter()
        .rposition(|l| l.trim_start().starts_with("File \""))
    else {
        return String::new();
    };
    let head = lines[i].trim_start().trim_start_matches("File \"");
    let (file, rest) = head.split_once("\", line ").unwrap_or((head, ""));
    let (line, func) = rest.split_once(", in ").unwrap_or((rest, ""));
    let code = lines.get(i + 1).map(|l| l.trim()).unwrap_or("");
    let mut out = format!("{file}:{line}");
    if !func.is_empty() {
        out += &format!(" in {func}");
    }
    if !code.is_empty() {
        out += &format!(": {code}");
    }
    out
}

impl Page {
    /// Removes the file (the loop closed, or the process exits); the
    /// mapping stays until the page is dropped. Only the process that
    /// created it removes it (a forked child leaves the parent's).
    pub fn unlink(&self) {
        if std::process::id() == self.pid && !self.unlinked.swap(true, Ordering::Relaxed) {
            // SAFETY: `path` is a valid C string.
            unsafe { libc::unlink(self.path.as_ptr()) };
        }
    }
}

impl Drop for Page {
    fn drop(&mut self) {
        self.unlink();
        // SAFETY: `base` is our SIZE-byte mapping, unmapped once, here,
        // when nothing can reach it any more (the page is owned by its
        // loop's metrics, which the watchdog only borrows while holding an
        // `Arc`).
        unsafe { libc::munmap(self.base.cast(), SIZE) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn innermost_frame_of_a_formatted_stack() {
        let stack = "  File \"/a.py\", line 3, in main\n    run()\n  File \"/b.py\", line 7, in run\n    time.sleep(1)\n";
        assert_eq!(innermost_frame(stack), "/b.py:7 in run: time.sleep(1)");
        assert_eq!(innermost_frame(""), "");
    }

    #[test]
    fn slot_text_fits_its_slot() {
        let r = SlowRecord {
            start: 1.0,
            duration: 0.1,
            kind: super::super::Kind::Ready,
            repr: "é".repeat(400),
            task: None,
            coro: None,
            started_at: None,
            location: None,
            stack: None,
        };
        let t = slot_text(&r);
        assert!(t.len() < SLOT_TEXT);
        assert!(std::str::from_utf8(&t).is_ok());
    }
}
