//! Native echo server: the ceiling of benches/net (std only, no crates).
//!
//!     native-echo HOST:PORT      (port 0: any free port)
//!     native-echo unix:PATH
//!
//! What an event loop does for an echo server, without Python: one thread,
//! level-triggered epoll, non-blocking sockets; each readable connection is
//! read once (up to 256 KiB, as asyncio and uvloop transports read) and the bytes written
//! straight back. A partial write keeps the rest, waits for writability and
//! stops reading that connection until it is flushed (back-pressure). The
//! connection is closed when the client closes. Prints
//! `READY tcp HOST:PORT loop=native` (or `READY unix PATH ...`) once
//! listening. Stops on SIGTERM/SIGINT (default action).

use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};

#[path = "../../epoll.rs"]
mod epoll;
use epoll::{Epoll, EpollEvent, EPOLLIN, EPOLLOUT, EPOLL_CTL_ADD, EPOLL_CTL_DEL, EPOLL_CTL_MOD};

const LISTENER: u64 = u64::MAX;

enum Listener {
    Tcp(TcpListener),
    Unix(UnixListener),
}

enum Stream {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.read(buf),
            Stream::Unix(s) => s.read(buf),
        }
    }
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.write(buf),
            Stream::Unix(s) => s.write(buf),
        }
    }
    fn fd(&self) -> RawFd {
        match self {
            Stream::Tcp(s) => s.as_raw_fd(),
            Stream::Unix(s) => s.as_raw_fd(),
        }
    }
}

struct Conn {
    stream: Stream,
    pending: Vec<u8>, // echo bytes the socket did not take yet
    off: usize,
}

enum Io {
    Open,
    Closed,
}

/// Writes as much of `data` as the socket takes; returns bytes written.
fn write_some(s: &mut Stream, data: &[u8]) -> io::Result<usize> {
    let mut w = 0;
    while w < data.len() {
        match s.write(&data[w..]) {
            Ok(k) => w += k,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(w)
}

fn on_event(c: &mut Conn, ep: &Epoll, slot: u64, buf: &mut [u8]) -> io::Result<Io> {
    if !c.pending.is_empty() {
        let w = write_some(&mut c.stream, &c.pending[c.off..])?;
        c.off += w;
        if c.off == c.pending.len() {
            c.pending.clear();
            c.off = 0;
            ep.ctl(EPOLL_CTL_MOD, c.stream.fd(), EPOLLIN, slot)
                .expect("epoll_ctl");
        }
        return Ok(Io::Open);
    }
    let n = match c.stream.read(buf) {
        Ok(0) => return Ok(Io::Closed),
        Ok(n) => n,
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
            ) =>
        {
            return Ok(Io::Open)
        }
        Err(e) => return Err(e),
    };
    let w = write_some(&mut c.stream, &buf[..n])?;
    if w < n {
        c.pending.extend_from_slice(&buf[w..n]);
        ep.ctl(EPOLL_CTL_MOD, c.stream.fd(), EPOLLOUT, slot)
            .expect("epoll_ctl"); // stop reading until flushed
    }
    Ok(Io::Open)
}

fn main() {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:0".into());
    let listener = if let Some(path) = addr.strip_prefix("unix:") {
        let _ = std::fs::remove_file(path);
        let l = UnixListener::bind(path).expect("bind");
        l.set_nonblocking(true).expect("nonblocking");
        println!("READY unix {path} loop=native");
        Listener::Unix(l)
    } else {
        let l = TcpListener::bind(&addr).expect("bind");
        l.set_nonblocking(true).expect("nonblocking");
        println!(
            "READY tcp {} loop=native",
            l.local_addr().expect("local_addr")
        );
        Listener::Tcp(l)
    };
    io::stdout().flush().ok();

    let ep = Epoll::new().expect("epoll_create1");
    let lfd = match &listener {
        Listener::Tcp(l) => l.as_raw_fd(),
        Listener::Unix(l) => l.as_raw_fd(),
    };
    ep.ctl(EPOLL_CTL_ADD, lfd, EPOLLIN, LISTENER)
        .expect("epoll_ctl");
    let mut conns: Vec<Option<Conn>> = Vec::new();
    let mut free: Vec<usize> = Vec::new();
    let mut buf = vec![0u8; 256 * 1024];
    let mut events = vec![EpollEvent { events: 0, data: 0 }; 256];
    loop {
        let n = ep.wait(&mut events, -1).expect("epoll_wait");
        for ev in &events[..n] {
            let slot = ev.data;
            if slot == LISTENER {
                loop {
                    let accepted = match &listener {
                        Listener::Tcp(l) => l.accept().map(|(s, _)| {
                            s.set_nodelay(true).ok();
                            Stream::Tcp(s)
                        }),
                        Listener::Unix(l) => l.accept().map(|(s, _)| Stream::Unix(s)),
                    };
                    let stream = match accepted {
                        Ok(s) => s,
                        Err(_) => break, // WouldBlock (or a transient error)
                    };
                    let nb = match &stream {
                        Stream::Tcp(s) => s.set_nonblocking(true),
                        Stream::Unix(s) => s.set_nonblocking(true),
                    };
                    if nb.is_err() {
                        continue;
                    }
                    let i = free.pop().unwrap_or_else(|| {
                        conns.push(None);
                        conns.len() - 1
                    });
                    ep.ctl(EPOLL_CTL_ADD, stream.fd(), EPOLLIN, i as u64)
                        .expect("epoll_ctl");
                    conns[i] = Some(Conn {
                        stream,
                        pending: Vec::new(),
                        off: 0,
                    });
                }
                continue;
            }
            let i = slot as usize;
            let Some(c) = conns[i].as_mut() else { continue };
            match on_event(c, &ep, slot, &mut buf) {
                Ok(Io::Open) => {}
                Ok(Io::Closed) | Err(_) => {
                    ep.ctl(EPOLL_CTL_DEL, c.stream.fd(), 0, slot)
                        .expect("epoll_ctl");
                    conns[i] = None; // closes the socket
                    free.push(i);
                }
            }
        }
    }
}
