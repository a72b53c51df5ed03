//! Owns `mio::Poll`, the cross-thread `mio::Waker` and the timerfd that gives
//! timers sub-millisecond precision. The only caller of `poll()`.
//!
//! NOTE: epoll's timeout (and so mio's) has millisecond resolution, which
//! would make every timer up to 1 ms late (asyncio rounds its selector timeout
//! up to whole milliseconds too). Instead the next deadline is armed on a
//! `timerfd` with an absolute `CLOCK_MONOTONIC` time and the poll blocks
//! without a timeout; the timerfd's readiness wakes it on time.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::Arc;
use std::time::Duration;

use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token, Waker};

use crate::clock;
use crate::io::fd_watchers;

pub const WAKER_TOKEN: Token = Token(0);
pub const TIMER_TOKEN: Token = Token(1);
/// The read end of the signal wakeup socketpair (`signal.set_wakeup_fd`),
/// registered by `watch_signal_fd`.
pub const SIGNAL_TOKEN: Token = Token(2);

/// The longest a timer is armed ahead (asyncio's MAXIMUM_SELECT_TIMEOUT): a
/// farther deadline re-arms when this one passes.
const MAX_ARM_SECS: f64 = 24.0 * 3600.0;

pub struct Poller {
    poll: Poll,
    events: Events,
    waker: Arc<Waker>,
    timerfd: OwnedFd,
    /// The deadline currently armed on the timerfd (NaN when disarmed).
    armed: f64,
}

/// What one poll saw besides user I/O.
#[derive(Default, Debug)]
pub struct PollOutcome {
    /// The poll was interrupted by a signal (EINTR): Python's signal
    /// handlers must run.
    pub interrupted: bool,
    /// The signal wakeup fd is readable: signal numbers are waiting.
    pub signal_ready: bool,
    /// Events of any kind the poll returned.
    pub events: usize,
}

/// A ready user fd: `(fd, read, write)` in selectors' terms.
pub type IoEvent = (RawFd, bool, bool);

impl Poller {
    pub fn new() -> io::Result<Self> {
        let poll = Poll::new()?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKER_TOKEN)?);
        // SAFETY: plain syscall; the returned fd is checked before use.
        let fd = unsafe {
            libc::timerfd_create(
                libc::CLOCK_MONOTONIC,
                libc::TFD_NONBLOCK | libc::TFD_CLOEXEC,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` was just created by timerfd_create and is owned by
        // nothing else.
        let timerfd = unsafe { OwnedFd::from_raw_fd(fd) };
        poll.registry().register(
            &mut SourceFd(&timerfd.as_raw_fd()),
            TIMER_TOKEN,
            Interest::READABLE,
        )?;
        Ok(Self {
            poll,
            events: Events::with_capacity(1024),
            waker,
            timerfd,
            armed: f64::NAN,
        })
    }

    /// The epoll instance's fd (for fd watchers; see `fd_watchers`).
    pub fn epoll_fd(&self) -> RawFd {
        self.poll.as_raw_fd()
    }

    pub fn waker(&self) -> Arc<Waker> {
        Arc::clone(&self.waker)
    }

    /// Arms the timerfd for `when` (absolute, loop clock) unless it already is.
    pub fn arm_timer(&mut self, when: f64) -> io::Result<()> {
        if when == self.armed {
            return Ok(());
        }
        let spec = libc::itimerspec {
            it_interval: libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            },
            it_value: clock::deadline_timespec(when, MAX_ARM_SECS),
        };
        // An absolute time of zero would disarm the timer: a deadline in the
        // past is due at once, which one nanosecond after the epoch also is.
        let mut spec = spec;
        if spec.it_value.tv_sec == 0 && spec.it_value.tv_nsec == 0 {
            spec.it_value.tv_nsec = 1;
        }
        // SAFETY: the fd is our live timerfd; `spec` is a valid itimerspec and
        // the old-value pointer may be null.
        let rc = unsafe {
            libc::timerfd_settime(
                self.timerfd.as_raw_fd(),
                libc::TFD_TIMER_ABSTIME,
                &spec,
                std::ptr::null_mut(),
            )
        };
        if rc < 0 {
            self.armed = f64::NAN;
            return Err(io::Error::last_os_error());
        }
        self.armed = when;
        Ok(())
    }

    /// Polls the OS once. `timeout` of `None` blocks until an event, the
    /// waker or the armed timer. Ready user fds are appended to `io`.
    pub fn poll(
        &mut self,
        timeout: Option<Duration>,
        io: &mut Vec<IoEvent>,
    ) -> io::Result<PollOutcome> {
        let mut outcome = PollOutcome::default();
        match self.poll.poll(&mut self.events, timeout) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {
                outcome.interrupted = true;
                return Ok(outcome);
            }
            Err(e) => return Err(e),
        }
        for ev in self.events.iter() {
            outcome.events += 1;
            match ev.token() {
                // The expiry is consumed by re-arming; note it is disarmed.
                TIMER_TOKEN => self.armed = f64::NAN,
                SIGNAL_TOKEN => outcome.signal_ready = true,
                Token(t) => {
                    if let Some(fd) = fd_watchers::token_fd(t) {
                        // selectors' mapping: anything but EPOLLIN counts
                        // as writable, anything but EPOLLOUT as readable
                        // (EPOLLHUP / EPOLLERR wake both directions).
                        let other = ev.is_error() || ev.is_read_closed() || ev.is_write_closed();
                        let read = ev.is_readable() || ev.is_priority() || other;
                        let write = ev.is_writable() || ev.is_priority() || other;
                        io.push((fd, read, write));
                    }
                }
            }
        }
        Ok(outcome)
    }
}

/// Watches `fd`, the read end of the signal wakeup socketpair, on the epoll
/// instance `epfd` (level-triggered), in place of `old` if one was watched.
///
/// NOTE: like `fd_watchers`, this takes only the epoll fd, not the poller's
/// lock, which the loop holds while blocked in `epoll_wait`: the main thread
/// adding a signal handler while the loop idles in another thread must not
/// wait for it (it would wait holding the GIL, which the loop needs to wake
/// up). The caller serialises with the core lock and checks `closed` there.
pub fn watch_signal_fd(epfd: RawFd, old: Option<RawFd>, fd: RawFd) -> io::Result<()> {
    if let Some(old) = old {
        unwatch_signal_fd(epfd, old);
    }
    let mut ev = libc::epoll_event {
        events: libc::EPOLLIN as u32,
        u64: SIGNAL_TOKEN.0 as u64,
    };
    // SAFETY: plain syscall on the loop's live epoll fd (the caller checked
    // the loop is not closed under the core lock) and an fd the caller keeps
    // open while watched; `ev` is valid for the duration of the call.
    if unsafe { libc::epoll_ctl(epfd, libc::EPOLL_CTL_ADD, fd, &mut ev) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Stops watching the signal wakeup fd `fd`. An fd already closed (which
/// removed it from the epoll set) is not an error.
pub fn unwatch_signal_fd(epfd: RawFd, fd: RawFd) {
    let mut ev = libc::epoll_event { events: 0, u64: 0 };
    // SAFETY: plain syscall on the loop's live epoll fd; a stale `fd` only
    // makes it fail with EBADF/ENOENT, which is what "not watched" means.
    unsafe { libc::epoll_ctl(epfd, libc::EPOLL_CTL_DEL, fd, &mut ev) };
}
