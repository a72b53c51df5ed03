//! `add_reader` / `add_writer` / `remove_*`: user callbacks on file
//! descriptor readiness. Pure Rust over a raw epoll fd, generic over the
//! callback handle so it is unit tested without Python.
//!
//! NOTE: asyncio's selector loop is level-triggered: a reader that does not
//! drain its fd is called again on the next tick. mio registers everything
//! edge-triggered, so user fds are registered here with `epoll_ctl` directly,
//! without `EPOLLET`, on mio's own epoll instance; mio's `Events` reports them
//! with their token like any other. Tokens `USER_TOKEN_BASE + fd` never
//! collide with mio's reserved tokens (waker, timerfd, signal fd).
//!
//! NOTE: removing an fd's last callback *parks* its registration instead of
//! deleting it: `EPOLL_CTL_MOD` to `EPOLLONESHOT` with no events, which
//! reports nothing but (at most once) EPOLLERR/EPOLLHUP, both ignored for an
//! fd without callbacks. The next callback for that fd re-arms it with one
//! `EPOLL_CTL_MOD`. asyncio's waits (`sock_recv`, `sock_sendall`, ...) add
//! and remove a callback per wait; a MOD pair costs ~0.7 µs where ADD + DEL
//! cost ~1.6 µs (they allocate and free the kernel's epitem). A parked
//! registration never needs deleting: closing the fd removes it, and if the
//! file outlives the fd (dup, fork), the oneshot flag keeps it silent after
//! one report, where a level-triggered leftover would wake every poll. A
//! parked fd number that now names another file answers MOD with ENOENT,
//! and is then added.
//!
//! NOTE: registration only needs the epoll fd, not the poller's lock (which
//! the loop holds while blocked in `epoll_wait`), so another thread calling
//! `add_reader` never waits for the loop to wake up. The caller serialises
//! registrations with the loop's core lock and checks the loop is not closed
//! (which closes the epoll fd) under that same lock.

use std::io;
use std::os::fd::RawFd;

use super::fd_set::FdSet;

/// Tokens at and above this value are user fds (`token - USER_TOKEN_BASE`).
pub const USER_TOKEN_BASE: usize = 1 << 32;

/// The fd a user-fd token stands for, if it is one.
pub fn token_fd(token: usize) -> Option<RawFd> {
    token
        .checked_sub(USER_TOKEN_BASE)
        .and_then(|fd| RawFd::try_from(fd).ok())
}

struct Watch<T> {
    reader: Option<T>,
    writer: Option<T>,
    /// Armed with EPOLLONESHOT for a reader that needs one wake-up (see
    /// `add_oneshot_reader`); only ever with no writer.
    oneshot: bool,
    /// A oneshot registration whose event was reported: the kernel has
    /// disabled it.
    fired: bool,
}

impl<T> Watch<T> {
    fn epoll_events(&self) -> u32 {
        let mut ev = 0;
        if self.reader.is_some() {
            ev |= libc::EPOLLIN as u32;
        }
        if self.writer.is_some() {
            ev |= libc::EPOLLOUT as u32;
        }
        ev
    }
}

/// Which direction a call is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    Read,
    Write,
}

/// A map keyed by fd: a vector indexed by the fd number (fds are small and
/// dense, and a lookup on every readiness event must be cheap).
struct FdMap<V> {
    slots: Vec<Option<V>>,
    len: usize,
}

impl<V> FdMap<V> {
    fn slot(fd: RawFd) -> usize {
        usize::try_from(fd).unwrap_or(usize::MAX)
    }

    fn get(&self, fd: RawFd) -> Option<&V> {
        self.slots.get(Self::slot(fd)).and_then(Option::as_ref)
    }

    fn get_mut(&mut self, fd: RawFd) -> Option<&mut V> {
        self.slots.get_mut(Self::slot(fd)).and_then(Option::as_mut)
    }

    /// `fd` must be non-negative (callers validate fds before registering).
    fn insert(&mut self, fd: RawFd, value: V) {
        let i = Self::slot(fd);
        if i >= self.slots.len() {
            self.slots.resize_with(i + 1, || None);
        }
        if self.slots[i].replace(value).is_none() {
            self.len += 1;
        }
    }

    fn remove(&mut self, fd: RawFd) -> Option<V> {
        let v = self.slots.get_mut(Self::slot(fd)).and_then(Option::take);
        if v.is_some() {
            self.len -= 1;
        }
        v
    }

    fn drain(&mut self) -> impl Iterator<Item = V> + '_ {
        self.len = 0;
        self.slots.drain(..).flatten()
    }

    fn values(&self) -> impl Iterator<Item = &V> {
        self.slots.iter().flatten()
    }
}

pub struct FdWatchers<T> {
    watches: FdMap<Watch<T>>,
    /// fds without callbacks whose registration is parked (see the NOTE at
    /// the top): a new callback re-arms them with MOD instead of ADD.
    parked: FdSet,
}

impl<T> Default for FdWatchers<T> {
    fn default() -> Self {
        Self {
            watches: FdMap {
                slots: Vec::new(),
                len: 0,
            },
            parked: FdSet::default(),
        }
    }
}

fn epoll_ctl(epfd: RawFd, op: i32, fd: RawFd, events: u32) -> io::Result<()> {
    let mut ev = libc::epoll_event {
        events,
        u64: (USER_TOKEN_BASE + fd as usize) as u64,
    };
    // SAFETY: plain syscall on fds the caller vouches for; `ev` is a valid
    // epoll_event for the duration of the call.
    if unsafe { libc::epoll_ctl(epfd, op, fd, &mut ev) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

impl<T> FdWatchers<T> {
    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.watches.len == 0
    }

    /// Whether `fd` has a callback in `dir`.
    #[cfg(test)]
    pub fn has(&self, fd: RawFd, dir: Direction) -> bool {
        self.watches.get(fd).is_some_and(|w| match dir {
            Direction::Read => w.reader.is_some(),
            Direction::Write => w.writer.is_some(),
        })
    }

    /// Sets the callback for `fd` in `dir`. Returns the callback it replaced
    /// (the caller cancels it, as asyncio does) and whether `fd` is newly
    /// registered. On error nothing changes but `handle` is dropped (the
    /// caller keeps its own reference, so no Python code runs here).
    pub fn add(
        &mut self,
        epfd: RawFd,
        fd: RawFd,
        dir: Direction,
        handle: T,
    ) -> io::Result<(Option<T>, bool)> {
        match self.watches.get_mut(fd) {
            None => {
                let mut w = Watch {
                    reader: None,
                    writer: None,
                    oneshot: false,
                    fired: false,
                };
                match dir {
                    Direction::Read => w.reader = Some(handle),
                    Direction::Write => w.writer = Some(handle),
                }
                self.register(epfd, fd, w.epoll_events())?;
                self.watches.insert(fd, w);
                Ok((None, true))
            }
            Some(w) => {
                let had_dir = match dir {
                    Direction::Read => w.reader.is_some(),
                    Direction::Write => w.writer.is_some(),
                };
                // A new direction widens the registration; anything else on
                // a oneshot fd makes it level-triggered.
                if w.oneshot || !had_dir {
                    let wanted = w.epoll_events()
                        | match dir {
                            Direction::Read => libc::EPOLLIN as u32,
                            Direction::Write => libc::EPOLLOUT as u32,
                        };
                    modify(epfd, fd, wanted)?;
                    w.oneshot = false;
                    w.fired = false;
                }
                let slot = match dir {
                    Direction::Read => &mut w.reader,
                    Direction::Write => &mut w.writer,
                };
                Ok((slot.replace(handle), false))
            }
        }
    }

    /// `add` for a reader that needs one wake-up (a `sock_recv` wait): an fd
    /// with no other callback is armed with EPOLLONESHOT, so the kernel
    /// disables it when it reports the event and removing the reader after
    /// that costs no syscall. A reader that found nothing to read after all
    /// calls `rearm`.
    pub fn add_oneshot_reader(
        &mut self,
        epfd: RawFd,
        fd: RawFd,
        handle: T,
    ) -> io::Result<(Option<T>, bool)> {
        if self.watches.get(fd).is_some() {
            return self.add(epfd, fd, Direction::Read, handle);
        }
        self.register(epfd, fd, (libc::EPOLLIN | libc::EPOLLONESHOT) as u32)?;
        let w = Watch {
            reader: Some(handle),
            writer: None,
            oneshot: true,
            fired: false,
        };
        self.watches.insert(fd, w);
        Ok((None, true))
    }

    /// Registers `fd`, which has no callbacks, for `events`: a parked
    /// registration is re-armed, anything else added.
    fn register(&mut self, epfd: RawFd, fd: RawFd, events: u32) -> io::Result<()> {
        if self.parked.contains(fd) {
            modify(epfd, fd, events)?;
            self.parked.remove(fd);
            Ok(())
        } else {
            add(epfd, fd, events)
        }
    }

    /// Arms a fired oneshot registration of `fd` again (its reader woke up
    /// to nothing: a spurious wake-up). Anything else is left as it is.
    pub fn rearm(&mut self, epfd: RawFd, fd: RawFd) -> io::Result<()> {
        match self.watches.get_mut(fd) {
            Some(w) if w.oneshot && w.fired => {
                modify(epfd, fd, (libc::EPOLLIN | libc::EPOLLONESHOT) as u32)?;
                w.fired = false;
                Ok(())
            }
            _ => Ok(()),
        }
    }

    /// Removes the callback for `fd` in `dir`. Returns it (the caller cancels
    /// it) and whether `fd` is no longer registered at all.
    pub fn remove(
        &mut self,
        epfd: RawFd,
        fd: RawFd,
        dir: Direction,
    ) -> io::Result<(Option<T>, bool)> {
        let Some(w) = self.watches.get_mut(fd) else {
            return Ok((None, false));
        };
        let had = match dir {
            Direction::Read => w.reader.is_some(),
            Direction::Write => w.writer.is_some(),
        };
        if !had {
            return Ok((None, false));
        }
        let keep = match dir {
            Direction::Read => w.writer.is_some(),
            Direction::Write => w.reader.is_some(),
        };
        // A fired oneshot registration is disabled already: that is parked.
        let fired = w.oneshot && w.fired;
        if keep {
            let left = match dir {
                Direction::Read => libc::EPOLLOUT as u32,
                Direction::Write => libc::EPOLLIN as u32,
            };
            modify(epfd, fd, left)?;
            let old = match dir {
                Direction::Read => w.reader.take(),
                Direction::Write => w.writer.take(),
            };
            return Ok((old, false));
        }
        // NOTE: as selectors' unregister ignores a failing EPOLL_CTL_DEL, a
        // failing park (the fd was closed meanwhile, which already removed
        // it from the epoll set) only means there is nothing to park.
        if fired || epoll_ctl(epfd, libc::EPOLL_CTL_MOD, fd, libc::EPOLLONESHOT as u32).is_ok() {
            self.parked.insert(fd);
        }
        let w = self.watches.remove(fd);
        let old = w.and_then(|w| match dir {
            Direction::Read => w.reader,
            Direction::Write => w.writer,
        });
        Ok((old, true))
    }

    /// asyncio's `_process_events` for one fd: queue the reader and/or the
    /// writer, except cancelled ones, which are unregistered instead.
    /// `event` is `(fd, read, write)`, with selectors' EVENT_READ and
    /// EVENT_WRITE; live callbacks go to `queue` (cloned), cancelled ones are
    /// moved to `dropped` (the caller releases them outside its lock).
    /// Returns the number of fds that stopped being registered.
    pub fn on_ready(
        &mut self,
        epfd: RawFd,
        event: (RawFd, bool, bool),
        is_cancelled: impl Fn(&T) -> bool,
        mut queue: impl FnMut(&T, Direction),
        dropped: &mut Vec<T>,
    ) -> usize {
        let (fd, read, write) = event;
        if let Some(w) = self.watches.get_mut(fd) {
            w.fired |= w.oneshot;
        }
        let mut unregistered = 0;
        for (dir, wanted) in [(Direction::Read, read), (Direction::Write, write)] {
            if !wanted {
                continue;
            }
            let Some(w) = self.watches.get(fd) else {
                break;
            };
            let slot = match dir {
                Direction::Read => &w.reader,
                Direction::Write => &w.writer,
            };
            let Some(h) = slot else {
                continue;
            };
            if !is_cancelled(h) {
                queue(h, dir);
                continue;
            }
            // A failed unregistration leaves the cancelled callback in place;
            // the next event tries again (asyncio would raise from here).
            if let Ok((old, gone)) = self.remove(epfd, fd, dir) {
                dropped.extend(old);
                unregistered += usize::from(gone);
            }
        }
        unregistered
    }

    /// Every registered callback, leaving nothing registered (loop close:
    /// the epoll fd goes away with them).
    pub fn drain(&mut self) -> Vec<T> {
        self.parked = FdSet::default();
        let mut all = Vec::new();
        for w in self.watches.drain() {
            all.extend(w.reader);
            all.extend(w.writer);
        }
        all
    }

    /// Visits every registered callback (GC traversal).
    pub fn for_each(&self, mut f: impl FnMut(&T)) {
        for w in self.watches.values() {
            if let Some(r) = &w.reader {
                f(r);
            }
            if let Some(wr) = &w.writer {
                f(wr);
            }
        }
    }
}

/// EPOLL_CTL_ADD, falling back to EPOLL_CTL_MOD when the fd is already in
/// the set (parked under a number we no longer track as parked).
fn add(epfd: RawFd, fd: RawFd, events: u32) -> io::Result<()> {
    match epoll_ctl(epfd, libc::EPOLL_CTL_ADD, fd, events) {
        Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {
            epoll_ctl(epfd, libc::EPOLL_CTL_MOD, fd, events)
        }
        r => r,
    }
}

/// EPOLL_CTL_MOD, falling back to EPOLL_CTL_ADD when the fd left the epoll
/// set because it was closed and its number reused.
fn modify(epfd: RawFd, fd: RawFd, events: u32) -> io::Result<()> {
    match epoll_ctl(epfd, libc::EPOLL_CTL_MOD, fd, events) {
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
            epoll_ctl(epfd, libc::EPOLL_CTL_ADD, fd, events)
        }
        r => r,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

    fn epoll() -> OwnedFd {
        // SAFETY: plain syscall; the fd is checked and then owned.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        assert!(fd >= 0);
        // SAFETY: a new fd from epoll_create1, owned by nothing else.
        unsafe { OwnedFd::from_raw_fd(fd) }
    }

    fn pipe() -> (OwnedFd, OwnedFd) {
        let mut fds = [0; 2];
        // SAFETY: `fds` has room for the two fds pipe2 writes.
        let rc = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC | libc::O_NONBLOCK) };
        assert_eq!(rc, 0);
        // SAFETY: pipe2 succeeded, so both fds are new and owned by nothing else.
        unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) }
    }

    /// (fd, events) reported by a zero-timeout epoll_wait.
    fn wait(epfd: &OwnedFd) -> Vec<(RawFd, u32)> {
        let mut evs = [libc::epoll_event { events: 0, u64: 0 }; 8];
        // SAFETY: `evs` has room for 8 events.
        let n = unsafe { libc::epoll_wait(epfd.as_raw_fd(), evs.as_mut_ptr(), 8, 0) };
        assert!(n >= 0);
        evs[..n as usize]
            .iter()
            .map(|e| (token_fd(e.u64 as usize).unwrap(), e.events))
            .collect()
    }

    #[test]
    fn level_triggered_until_drained() {
        let ep = epoll();
        let (r, w) = pipe();
        let mut fw = FdWatchers::default();
        let (old, new) = fw
            .add(ep.as_raw_fd(), r.as_raw_fd(), Direction::Read, "reader")
            .unwrap();
        assert!(old.is_none() && new);
        assert!(wait(&ep).is_empty());
        // SAFETY: writes one byte from a static buffer to our pipe.
        let wrote = unsafe { libc::write(w.as_raw_fd(), b"x".as_ptr().cast(), 1) };
        assert_eq!(wrote, 1);
        // Not drained: reported again and again (edge-triggered would not).
        assert_eq!(wait(&ep).len(), 1);
        assert_eq!(wait(&ep).len(), 1);
        let mut buf = [0u8; 4];
        // SAFETY: reads at most 4 bytes into a 4-byte buffer.
        let read = unsafe { libc::read(r.as_raw_fd(), buf.as_mut_ptr().cast(), 4) };
        assert_eq!(read, 1);
        assert!(wait(&ep).is_empty());
    }

    #[test]
    fn replace_both_directions_and_remove() {
        let ep = epoll();
        let (_r, w) = pipe();
        let e = ep.as_raw_fd();
        let fd = w.as_raw_fd();
        let mut fw = FdWatchers::default();
        assert_eq!(fw.add(e, fd, Direction::Write, 1).unwrap(), (None, true));
        assert_eq!(
            fw.add(e, fd, Direction::Write, 2).unwrap(),
            (Some(1), false)
        );
        assert_eq!(fw.add(e, fd, Direction::Read, 3).unwrap(), (None, false));
        assert!(fw.has(fd, Direction::Read) && fw.has(fd, Direction::Write));
        assert_eq!(wait(&ep).len(), 1); // writable
        assert_eq!(
            fw.remove(e, fd, Direction::Write).unwrap(),
            (Some(2), false)
        );
        assert!(wait(&ep).is_empty()); // only EPOLLIN left, nothing to read
        assert_eq!(fw.remove(e, fd, Direction::Write).unwrap(), (None, false));
        assert_eq!(fw.remove(e, fd, Direction::Read).unwrap(), (Some(3), true));
        assert!(fw.is_empty());
        assert_eq!(fw.remove(e, fd, Direction::Read).unwrap(), (None, false));
    }

    #[test]
    fn on_ready_queues_live_and_unregisters_cancelled() {
        let ep = epoll();
        let (_r, w) = pipe();
        let e = ep.as_raw_fd();
        let fd = w.as_raw_fd();
        let mut fw = FdWatchers::default();
        fw.add(e, fd, Direction::Write, -1).unwrap(); // negative: "cancelled"
        fw.add(e, fd, Direction::Read, 7).unwrap();
        let (mut run, mut dropped) = (Vec::new(), Vec::new());
        let gone = fw.on_ready(
            e,
            (fd, true, true),
            |h| *h < 0,
            |h, dir| run.push((*h, dir)),
            &mut dropped,
        );
        assert_eq!(run, vec![(7, Direction::Read)]);
        assert_eq!(dropped, vec![-1]);
        assert_eq!(gone, 0);
        assert!(!fw.has(fd, Direction::Write));
        let mut dropped = Vec::new();
        fw.add(e, fd, Direction::Read, -2).unwrap();
        let gone = fw.on_ready(e, (fd, true, false), |h| *h < 0, |_, _| (), &mut dropped);
        assert_eq!(gone, 1);
        assert_eq!(dropped, vec![-2]);
        assert!(fw.is_empty());
    }

    #[test]
    fn closed_fd_is_forgotten_and_bad_fd_refused() {
        let ep = epoll();
        let e = ep.as_raw_fd();
        let (r, _w) = pipe();
        let fd = r.as_raw_fd();
        let mut fw = FdWatchers::default();
        fw.add(e, fd, Direction::Read, 1).unwrap();
        drop(r); // closing removes it from the epoll set behind our back
        assert_eq!(fw.remove(e, fd, Direction::Read).unwrap(), (Some(1), true));
        let err = fw.add(e, 1 << 20, Direction::Read, 2).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EBADF));
        assert!(fw.is_empty());
    }

    #[test]
    fn parked_registration_is_silent_and_rearmed() {
        let ep = epoll();
        let e = ep.as_raw_fd();
        let (r, w) = pipe();
        let fd = r.as_raw_fd();
        let mut fw = FdWatchers::default();
        fw.add(e, fd, Direction::Read, 1).unwrap();
        // SAFETY: writes one byte from a static buffer to our pipe.
        let rc = unsafe { libc::write(w.as_raw_fd(), b"x".as_ptr().cast(), 1) };
        assert_eq!(rc, 1);
        assert_eq!(wait(&ep).len(), 1);
        assert_eq!(fw.remove(e, fd, Direction::Read).unwrap(), (Some(1), true));
        assert!(fw.parked.contains(fd));
        // Parked: readable, yet nothing is reported.
        assert!(wait(&ep).is_empty());
        // Re-armed by MOD: level-triggered again.
        assert_eq!(fw.add(e, fd, Direction::Read, 2).unwrap(), (None, true));
        assert!(!fw.parked.contains(fd));
        assert_eq!(wait(&ep).len(), 1);
        assert_eq!(wait(&ep).len(), 1);
        fw.remove(e, fd, Direction::Read).unwrap();
        // The writer's hang-up reaches a parked reader at most once.
        drop(w);
        assert!(wait(&ep).len() <= 1);
        assert!(wait(&ep).is_empty());
        // A closed parked fd whose number is reused by another file is added.
        // NOTE: dup2 puts the new file at the number atomically; closing
        // `r` and hoping the next pipe gets its number raced with other
        // test threads opening fds.
        let (r2, _w2) = pipe();
        // SAFETY: dup2 of our own open fds; `r` keeps owning number `fd`,
        // which now names the new pipe's read end (the old file, whose only
        // fd this was, is closed by it).
        assert_eq!(unsafe { libc::dup2(r2.as_raw_fd(), fd) }, fd);
        drop(r2);
        assert_eq!(fw.add(e, fd, Direction::Write, 3).unwrap(), (None, true));
        assert_eq!(fw.add(e, fd, Direction::Read, 4).unwrap(), (None, false));
        assert!(!fw.parked.contains(fd));
    }

    #[test]
    fn parked_registration_of_a_file_outliving_its_fd_stays_quiet() {
        let ep = epoll();
        let e = ep.as_raw_fd();
        let (r, w) = pipe();
        let fd = r.as_raw_fd();
        // SAFETY: dup of our own open fd; the copy is owned below.
        let copy = unsafe { libc::dup(fd) };
        assert!(copy >= 0);
        // SAFETY: `copy` is a new fd owned by nothing else.
        let copy = unsafe { OwnedFd::from_raw_fd(copy) };
        let mut fw = FdWatchers::default();
        fw.add(e, fd, Direction::Read, 1).unwrap();
        fw.remove(e, fd, Direction::Read).unwrap();
        // The fd closes but its file lives on in `copy`: the registration
        // stays in the epoll set, and nobody can delete it any more.
        drop(r);
        // SAFETY: writes one byte from a static buffer to our pipe.
        let rc = unsafe { libc::write(w.as_raw_fd(), b"x".as_ptr().cast(), 1) };
        assert_eq!(rc, 1);
        drop(w);
        // Readable and hung up, yet reported at most once.
        assert!(wait(&ep).len() <= 1);
        assert!(wait(&ep).is_empty());
        assert!(wait(&ep).is_empty());
        drop(copy);
    }

    #[test]
    fn oneshot_reader_wakes_once_until_rearmed() {
        let ep = epoll();
        let e = ep.as_raw_fd();
        let (r, w) = pipe();
        let fd = r.as_raw_fd();
        let mut fw = FdWatchers::default();
        assert_eq!(fw.add_oneshot_reader(e, fd, 1).unwrap(), (None, true));
        // SAFETY: writes one byte from a static buffer to our pipe.
        let rc = unsafe { libc::write(w.as_raw_fd(), b"x".as_ptr().cast(), 1) };
        assert_eq!(rc, 1);
        let ev = wait(&ep);
        assert_eq!(ev.len(), 1);
        let mut run = Vec::new();
        fw.on_ready(
            e,
            (fd, true, false),
            |_| false,
            |h, _| run.push(*h),
            &mut Vec::new(),
        );
        assert_eq!(run, vec![1]);
        // Not drained, yet disabled until re-armed.
        assert!(wait(&ep).is_empty());
        fw.rearm(e, fd).unwrap();
        assert_eq!(wait(&ep).len(), 1);
        fw.on_ready(e, (fd, true, false), |_| false, |_, _| (), &mut Vec::new());
        // Removing a fired oneshot reader parks it (nothing to disable).
        assert_eq!(fw.remove(e, fd, Direction::Read).unwrap(), (Some(1), true));
        assert!(fw.parked.contains(fd));
        assert!(wait(&ep).is_empty());
        // A plain reader re-arms it level-triggered.
        fw.add(e, fd, Direction::Read, 2).unwrap();
        assert_eq!(wait(&ep).len(), 1);
        assert_eq!(wait(&ep).len(), 1);
        fw.remove(e, fd, Direction::Read).unwrap();
        // An unfired oneshot reader is parked by MOD; a second one re-arms.
        fw.add_oneshot_reader(e, fd, 3).unwrap();
        fw.remove(e, fd, Direction::Read).unwrap();
        assert!(wait(&ep).is_empty());
        fw.add_oneshot_reader(e, fd, 4).unwrap();
        assert_eq!(wait(&ep).len(), 1);
    }

    #[test]
    fn oneshot_reader_joined_by_a_writer_turns_level_triggered() {
        let ep = epoll();
        let e = ep.as_raw_fd();
        let (r, w) = pipe();
        let fd = r.as_raw_fd();
        let mut fw = FdWatchers::default();
        fw.add_oneshot_reader(e, fd, 1).unwrap();
        // SAFETY: writes one byte from a static buffer to our pipe.
        let rc = unsafe { libc::write(w.as_raw_fd(), b"x".as_ptr().cast(), 1) };
        assert_eq!(rc, 1);
        assert_eq!(wait(&ep).len(), 1);
        fw.on_ready(e, (fd, true, false), |_| false, |_, _| (), &mut Vec::new());
        // A second reader on the fd (fired and disabled) re-enables it.
        assert_eq!(fw.add(e, fd, Direction::Read, 2).unwrap(), (Some(1), false));
        assert_eq!(wait(&ep).len(), 1);
        assert_eq!(wait(&ep).len(), 1);
        // Rearm of a level-triggered fd does nothing.
        fw.rearm(e, fd).unwrap();
        assert_eq!(fw.remove(e, fd, Direction::Read).unwrap(), (Some(2), true));
        assert!(wait(&ep).is_empty());
        // Oneshot reader plus a writer: both level-triggered.
        fw.add_oneshot_reader(e, fd, 3).unwrap();
        fw.add(e, fd, Direction::Write, 4).unwrap();
        assert_eq!(wait(&ep).len(), 1);
        assert_eq!(wait(&ep).len(), 1);
        assert!(fw.has(fd, Direction::Read) && fw.has(fd, Direction::Write));
    }

    #[test]
    fn token_mapping() {
        assert_eq!(token_fd(USER_TOKEN_BASE + 5), Some(5));
        assert_eq!(token_fd(2), None);
    }
}
