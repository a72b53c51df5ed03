//! Echo load generator of benches/net: plain TCP / Unix sockets, or TLS 1.3
//! (rustls with the ring provider; std otherwise).
//!
//!     loadgen (--tcp HOST:PORT | --unix PATH) [--conns 10] [--size 1024]
//!             [--duration 3] [--warmup 0.5] [--timeout 10] [--server-pid PID]
//!             [--threads]
//!             [--tls --ca PATH [--server-name localhost] [--handshakes]]
//!     loadgen (--tcp HOST:PORT | --unix PATH) --hold N [--size 64]
//!
//! Echo mode: all connections are opened first; then each connection repeats
//! round trips (send one message of `size` bytes, read back exactly `size`
//! bytes, send the next) until `warmup + duration` seconds have passed. Round
//! trips completing in the last `duration` seconds are counted and timed
//! (latency: from the first write to the last byte read). One thread drives
//! all connections with level-triggered epoll on non-blocking sockets: no
//! thread switches, so the generator costs little CPU next to the server,
//! and a large message can never deadlock against a server that echoes while
//! it reads. `--threads`: one thread per connection instead (each waiting
//! with poll(2)); costlier per round trip on a 2-CPU machine. Every echo is
//! compared in full with what was sent (the message carries the connection
//! id and trip number, the rest is a non-constant pattern), so a server that
//! loses, reorders, duplicates or invents bytes fails instead of looking
//! fast. At the end each connection half-closes and expects the server to
//! close without sending more; `--timeout` seconds without progress fail the
//! run. TCP sockets use TCP_NODELAY. `gen_cpu` and `server_cpu` in the output
//! are the CPU time (user + system, from /proc) of this process and of
//! `--server-pid` over the measured interval, in CPUs (1.0 = one full CPU).
//!
//! TLS (`--tls`): the same echo over TLS 1.3 with the one cipher suite
//! TLS13_AES_128_GCM_SHA256 (key exchange: rustls' default groups, X25519
//! first), the server's certificate verified against the CA certificate(s) in
//! the PEM file `--ca` for the name `--server-name`, no session resumption.
//! Each `rustls::ClientConnection` is driven by hand on the same non-blocking
//! sockets and epoll loop (`read_tls` / `process_new_packets` / `reader()`,
//! `writer()` / `write_tls`). The handshakes are done during connection
//! setup, before the warm-up. At the end each connection sends close_notify,
//! half-closes, and expects the server to close (TCP EOF or its close_notify)
//! without sending more plaintext. Not with `--threads` or `--hold`.
//!
//! Handshake mode (`--tls --handshakes`): each of `--conns` slots repeats a
//! cycle: connect (blocking: on loopback the kernel completes it without the
//! server's help), a full TLS 1.3 handshake (no resumption), one verified
//! round trip of `size` (default 64) bytes, close_notify + half-close, wait
//! for the server to close, close. The slots run concurrently on one epoll
//! loop; cycles completing in the measured interval are counted (`rate` =
//! handshakes per second) and timed (latency: from connect to the server's
//! close).
//!
//! Hold mode: opens N connections one after the other, does one verified
//! round trip on each, prints a JSON line, then keeps them open (idle) until
//! stdin reaches EOF.
//!
//! Output: one JSON object on stdout; {"ok": false, "error": ...} and exit
//! status 1 on any failure.

use std::io::{self, BufRead, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::os::raw::{c_int, c_long, c_short, c_ulong};
use std::os::unix::io::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::process::exit;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{CipherSuite, ClientConfig, ClientConnection, ProtocolVersion};

#[repr(C)]
struct PollFd {
    fd: c_int,
    events: c_short,
    revents: c_short,
}

extern "C" {
    fn poll(fds: *mut PollFd, nfds: c_ulong, timeout: c_int) -> c_int;
    fn sysconf(name: c_int) -> c_long;
}

const POLLIN: c_short = 0x1;
const POLLOUT: c_short = 0x4;
const POLLERR: c_short = 0x8;
const POLLHUP: c_short = 0x10;
const SC_CLK_TCK: c_int = 2; // Linux

#[derive(Clone)]
enum Addr {
    Tcp(String),
    Unix(String),
}

enum Conn {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl Conn {
    fn connect(addr: &Addr) -> io::Result<Conn> {
        let conn = match addr {
            Addr::Tcp(a) => {
                let s = TcpStream::connect(a)?;
                s.set_nodelay(true)?;
                Conn::Tcp(s)
            }
            Addr::Unix(p) => Conn::Unix(UnixStream::connect(p)?),
        };
        match &conn {
            Conn::Tcp(s) => s.set_nonblocking(true)?,
            Conn::Unix(s) => s.set_nonblocking(true)?,
        }
        Ok(conn)
    }
    fn shutdown_write(&self) -> io::Result<()> {
        match self {
            Conn::Tcp(s) => s.shutdown(Shutdown::Write),
            Conn::Unix(s) => s.shutdown(Shutdown::Write),
        }
    }
    fn fd(&self) -> RawFd {
        match self {
            Conn::Tcp(s) => s.as_raw_fd(),
            Conn::Unix(s) => s.as_raw_fd(),
        }
    }
}

impl Read for Conn {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Conn::Tcp(s) => s.read(buf),
            Conn::Unix(s) => s.read(buf),
        }
    }
}

impl Write for Conn {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Conn::Tcp(s) => s.write(buf),
            Conn::Unix(s) => s.write(buf),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Waits for `events` on `fd`; returns the revents, or an error on timeout.
fn wait(fd: RawFd, events: c_short, timeout_ms: c_int) -> Result<c_short, String> {
    loop {
        let mut p = PollFd {
            fd,
            events,
            revents: 0,
        };
        // SAFETY: one valid pollfd, nfds = 1.
        let rc = unsafe { poll(&mut p, 1, timeout_ms) };
        if rc > 0 {
            return Ok(p.revents);
        }
        if rc == 0 {
            return Err(format!("timed out after {} ms", timeout_ms));
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(format!("poll: {err}"));
        }
    }
}

/// One round trip: sends `msg`, reads back exactly `msg.len()` bytes into
/// `buf` and checks they are equal.
fn round_trip(
    conn: &mut Conn,
    msg: &[u8],
    buf: &mut [u8],
    timeout_ms: c_int,
) -> Result<usize, String> {
    let n = msg.len();
    let (mut w, mut r) = (0usize, 0usize);
    let (mut writable, mut readable) = (true, false);
    loop {
        if w < n && writable {
            match conn.write(&msg[w..]) {
                Ok(k) => w += k,
                Err(e) if is_retry(&e) => {}
                Err(e) => return Err(format!("write: {e}")),
            }
        }
        if readable {
            match conn.read(&mut buf[r..n]) {
                Ok(0) => {
                    return Err(format!(
                        "server closed the connection after echoing {r} of {n} bytes"
                    ))
                }
                Ok(k) => r += k,
                Err(e) if is_retry(&e) => {}
                Err(e) => return Err(format!("read: {e}")),
            }
            if r == n {
                break;
            }
        }
        let events = if w < n { POLLIN | POLLOUT } else { POLLIN };
        let rev = wait(conn.fd(), events, timeout_ms)
            .map_err(|e| format!("waiting for the echo ({w}/{n} bytes sent, {r} echoed): {e}"))?;
        readable = rev & (POLLIN | POLLHUP | POLLERR) != 0;
        writable = rev & (POLLOUT | POLLHUP | POLLERR) != 0;
    }
    verify(msg, &buf[..n])
}

/// Compares the echo with the message, in full (a memcmp: measured to make
/// no difference to the rate even at 100 KiB); returns the bytes compared.
fn verify(msg: &[u8], buf: &[u8]) -> Result<usize, String> {
    if buf != msg {
        let at = buf.iter().zip(msg).position(|(a, b)| a != b).unwrap_or(0);
        return Err(format!(
            "wrong echo: first difference at byte {at} of {}",
            msg.len()
        ));
    }
    Ok(msg.len())
}

fn is_retry(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
    )
}

/// Half-closes and expects the server to close the connection without
/// sending anything more.
fn finish(conn: &mut Conn, timeout_ms: c_int) -> Result<(), String> {
    conn.shutdown_write()
        .map_err(|e| format!("shutdown: {e}"))?;
    let mut extra = 0usize;
    let mut buf = [0u8; 4096];
    loop {
        match conn.read(&mut buf) {
            Ok(0) => break,
            Ok(k) => extra += k,
            Err(e) if is_retry(&e) => {
                wait(conn.fd(), POLLIN, timeout_ms)
                    .map_err(|e| format!("server did not close after EOF: {e}"))?;
            }
            // A reset after our FIN is a close too (the server may abort).
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => break,
            Err(e) => return Err(format!("read after EOF: {e}")),
        }
    }
    if extra > 0 {
        return Err(format!(
            "server sent {extra} unexpected bytes after the last echo"
        ));
    }
    Ok(())
}

// -- TLS -------------------------------------------------------------------------

/// What every TLS connection must negotiate (checked after each handshake).
const TLS_VERSION: ProtocolVersion = ProtocolVersion::TLSv1_3;
const TLS_SUITE: CipherSuite = CipherSuite::TLS13_AES_128_GCM_SHA256;
const TLS_DESC: &str = "TLSv1.3 TLS13_AES_128_GCM_SHA256";

/// The client side of `--tls`: one shared configuration, one server name.
struct Tls {
    config: Arc<ClientConfig>,
    name: ServerName<'static>,
}

impl Tls {
    /// TLS 1.3 only, the one suite TLS13_AES_128_GCM_SHA256 (ring), server
    /// certificates verified against the CA certificates of the PEM file
    /// `ca`, no session resumption (every handshake is a full one).
    fn new(ca: &str, server_name: &str) -> Result<Tls, String> {
        let mut roots = rustls::RootCertStore::empty();
        let certs = CertificateDer::pem_file_iter(ca).map_err(|e| format!("--ca {ca}: {e}"))?;
        for cert in certs {
            let cert = cert.map_err(|e| format!("--ca {ca}: {e}"))?;
            roots
                .add(cert)
                .map_err(|e| format!("--ca {ca}: bad CA certificate: {e}"))?;
        }
        if roots.is_empty() {
            return Err(format!("--ca {ca}: no certificate in the file"));
        }
        let mut provider = rustls::crypto::ring::default_provider();
        provider.cipher_suites = vec![rustls::crypto::ring::cipher_suite::TLS13_AES_128_GCM_SHA256];
        let mut config = ClientConfig::builder_with_provider(Arc::new(provider))
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| format!("TLS configuration: {e}"))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.resumption = rustls::client::Resumption::disabled();
        config.enable_early_data = false;
        let name = ServerName::try_from(server_name.to_string())
            .map_err(|e| format!("--server-name {server_name}: {e}"))?;
        Ok(Tls {
            config: Arc::new(config),
            name,
        })
    }

    fn client(&self) -> Result<ClientConnection, String> {
        ClientConnection::new(self.config.clone(), self.name.clone())
            .map_err(|e| format!("TLS client: {e}"))
    }
}

/// After the handshake: fails unless TLS 1.3 with TLS13_AES_128_GCM_SHA256.
fn check_negotiated(tls: &ClientConnection) -> Result<(), String> {
    let version = tls.protocol_version();
    let suite = tls.negotiated_cipher_suite().map(|s| s.suite());
    if version != Some(TLS_VERSION) || suite != Some(TLS_SUITE) {
        return Err(format!(
            "negotiated {version:?} {suite:?}, expected {TLS_DESC}"
        ));
    }
    Ok(())
}

/// Writes out what rustls has to send, waiting (poll) while the socket is full.
fn flush_tls(conn: &mut Conn, tls: &mut ClientConnection, timeout_ms: c_int) -> Result<(), String> {
    while tls.wants_write() {
        match tls.write_tls(conn) {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                wait(conn.fd(), POLLOUT, timeout_ms)
                    .map_err(|e| format!("waiting to write: {e}"))?;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(format!("write: {e}")),
        }
    }
    Ok(())
}

/// The handshake of one connection during setup, waiting with poll(2).
fn tls_handshake(
    conn: &mut Conn,
    tls: &mut ClientConnection,
    timeout_ms: c_int,
) -> Result<(), String> {
    loop {
        flush_tls(conn, tls, timeout_ms).map_err(|e| format!("TLS handshake: {e}"))?;
        if !tls.is_handshaking() {
            return check_negotiated(tls);
        }
        wait(conn.fd(), POLLIN, timeout_ms)
            .map_err(|e| format!("TLS handshake: waiting for the server: {e}"))?;
        match tls.read_tls(conn) {
            Ok(0) => return Err("TLS handshake: the server closed the connection".into()),
            Ok(_) => {
                tls.process_new_packets()
                    .map_err(|e| format!("TLS handshake: {e}"))?;
            }
            Err(e) if is_retry(&e) => {}
            Err(e) => return Err(format!("TLS handshake: read: {e}")),
        }
    }
}

/// The end of a TLS connection: close_notify, half-close, then expects the
/// server to close (its close_notify, a TCP EOF or a reset) without sending
/// more plaintext.
fn finish_tls(
    conn: &mut Conn,
    tls: &mut ClientConnection,
    timeout_ms: c_int,
) -> Result<(), String> {
    tls.send_close_notify();
    flush_tls(conn, tls, timeout_ms).map_err(|e| format!("sending close_notify: {e}"))?;
    conn.shutdown_write()
        .map_err(|e| format!("shutdown: {e}"))?;
    let mut extra = 0usize;
    let mut buf = [0u8; 4096];
    'closed: loop {
        loop {
            match tls.reader().read(&mut buf) {
                Ok(0) => break 'closed, // close_notify
                Ok(k) => extra += k,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => break 'closed, // TCP EOF
                Err(e) => return Err(format!("read after close_notify: {e}")),
            }
        }
        match tls.read_tls(conn) {
            // Ok(0), a TCP EOF: the reader reports it next
            Ok(_) => {
                tls.process_new_packets()
                    .map_err(|e| format!("TLS after close_notify: {e}"))?;
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                wait(conn.fd(), POLLIN, timeout_ms)
                    .map_err(|e| format!("server did not close after close_notify: {e}"))?;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => break,
            Err(e) => return Err(format!("read after close_notify: {e}")),
        }
    }
    if extra > 0 {
        return Err(format!(
            "server sent {extra} unexpected bytes after the last echo"
        ));
    }
    Ok(())
}

/// Fills `msg` with a pattern that differs between connections and bytes.
fn pattern(msg: &mut [u8], id: u32) {
    for (i, b) in msg.iter_mut().enumerate() {
        *b = (i as u32)
            .wrapping_mul(131)
            .wrapping_add(id.wrapping_mul(7919) >> 3) as u8
            ^ 0x5a;
    }
}

/// Stamps connection id and trip number into the message header.
fn stamp(msg: &mut [u8], id: u32, trip: u64) {
    msg[0..4].copy_from_slice(&id.to_le_bytes());
    msg[4..12].copy_from_slice(&trip.to_le_bytes());
}

/// CPU seconds (user + system, all threads) of a process, from /proc.
fn cpu_seconds(pid: &str) -> Option<f64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &s[s.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { sysconf(SC_CLK_TCK) };
    Some(ticks / if hz > 0 { hz as f64 } else { 100.0 })
}

struct Opts {
    addr: Addr,
    conns: usize,
    size: usize,
    duration: f64,
    warmup: f64,
    timeout_ms: c_int,
    server_pid: Option<String>,
    hold: Option<usize>,
    threads: bool,
    tls: bool,
    ca: Option<String>,
    server_name: String,
    handshakes: bool,
}

fn parse_args() -> Result<Opts, String> {
    let mut o = Opts {
        addr: Addr::Tcp(String::new()),
        conns: 10,
        size: 1024,
        duration: 3.0,
        warmup: 0.5,
        timeout_ms: 10_000,
        server_pid: None,
        hold: None,
        threads: false,
        tls: false,
        ca: None,
        server_name: "localhost".into(),
        handshakes: false,
    };
    let mut have_addr = false;
    let mut size_given = false;
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    while i < args.len() {
        let key = args[i].as_str();
        let flag = match key {
            "--threads" => Some(&mut o.threads),
            "--tls" => Some(&mut o.tls),
            "--handshakes" => Some(&mut o.handshakes),
            _ => None,
        };
        if let Some(flag) = flag {
            *flag = true;
            i += 1;
            continue;
        }
        let val = args
            .get(i + 1)
            .ok_or_else(|| format!("{key} needs a value"))?;
        let num = |v: &str| {
            v.parse::<f64>()
                .map_err(|_| format!("bad value for {key}: {v}"))
        };
        match key {
            "--tcp" => {
                o.addr = Addr::Tcp(val.clone());
                have_addr = true
            }
            "--unix" => {
                o.addr = Addr::Unix(val.clone());
                have_addr = true
            }
            "--conns" => o.conns = num(val)? as usize,
            "--size" => {
                o.size = num(val)? as usize;
                size_given = true
            }
            "--duration" => o.duration = num(val)?,
            "--warmup" => o.warmup = num(val)?,
            "--timeout" => o.timeout_ms = (num(val)? * 1000.0) as c_int,
            "--server-pid" => o.server_pid = Some(val.clone()),
            "--hold" => o.hold = Some(num(val)? as usize),
            "--ca" => o.ca = Some(val.clone()),
            "--server-name" => o.server_name = val.clone(),
            _ => return Err(format!("unknown option {key}")),
        }
        i += 2;
    }
    if !have_addr {
        return Err("need --tcp HOST:PORT or --unix PATH".into());
    }
    if (o.hold.is_some() || o.handshakes) && !size_given {
        o.size = 64;
    }
    if o.tls && o.ca.is_none() {
        return Err("--tls needs --ca PATH".into());
    }
    if o.tls && (o.threads || o.hold.is_some()) {
        return Err("--tls works with the epoll echo driver only (not --threads, --hold)".into());
    }
    if o.handshakes && !o.tls {
        return Err("--handshakes needs --tls".into());
    }
    if o.size < 16 || o.conns == 0 || o.duration <= 0.0 {
        return Err("need --size >= 16, --conns >= 1, --duration > 0".into());
    }
    Ok(o)
}

fn json_str(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn fail(msg: &str) -> ! {
    println!("{{\"ok\": false, \"error\": {}}}", json_str(msg));
    exit(1)
}

#[path = "../../epoll.rs"]
mod epoll;
use epoll::{
    Epoll, EpollEvent, EPOLLERR, EPOLLHUP, EPOLLIN, EPOLLOUT, EPOLL_CTL_ADD, EPOLL_CTL_DEL,
    EPOLL_CTL_MOD,
};

/// Epoll errors as the generator reports them.
fn epoll_err(what: &str) -> impl FnOnce(io::Error) -> String + '_ {
    move |e| format!("{what}: {e}")
}

/// One connection of echo mode: the message in flight and how far it got.
/// With `tls`, `sent` counts the plaintext handed to rustls, and `want_out`
/// also covers the records rustls has yet to write.
struct Flow {
    conn: Conn,
    tls: Option<ClientConnection>,
    id: u32,
    msg: Vec<u8>,
    buf: Vec<u8>,
    sent: usize,
    got: usize,
    trip: u64,
    t0: Instant,
    want_out: bool,
    done: bool,
    verified: u64,
}

impl Flow {
    /// Stamps and sends (as far as the socket takes it) the next message.
    fn begin(&mut self, ep: &Epoll, idx: u64) -> Result<(), String> {
        stamp(&mut self.msg, self.id, self.trip);
        self.sent = 0;
        self.got = 0;
        self.t0 = Instant::now();
        self.send(ep, idx)
    }

    fn send(&mut self, ep: &Epoll, idx: u64) -> Result<(), String> {
        let n = self.msg.len();
        let want_out = match &mut self.tls {
            None => {
                while self.sent < n {
                    match self.conn.write(&self.msg[self.sent..]) {
                        Ok(k) => self.sent += k,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                        Err(e) => return Err(format!("write: {e}")),
                    }
                }
                self.sent < n
            }
            Some(tls) => {
                // Encrypt as much as rustls buffers (64 KiB of records by
                // default), write the records out, repeat.
                loop {
                    if tls.wants_write() {
                        match tls.write_tls(&mut self.conn) {
                            Ok(_) => {}
                            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                            Err(e) => return Err(format!("write: {e}")),
                        }
                    } else if self.sent < n {
                        match tls.writer().write(&self.msg[self.sent..]) {
                            Ok(0) => return Err("rustls took no plaintext".into()),
                            Ok(k) => self.sent += k,
                            Err(e) => return Err(format!("TLS write: {e}")),
                        }
                    } else {
                        break;
                    }
                }
                self.sent < n || tls.wants_write()
            }
        };
        if want_out != self.want_out {
            let ev = if want_out {
                EPOLLIN | EPOLLOUT
            } else {
                EPOLLIN
            };
            ep.ctl(EPOLL_CTL_MOD, self.conn.fd(), ev, idx)
                .map_err(epoll_err("epoll_ctl"))?;
            self.want_out = want_out;
        }
        Ok(())
    }

    /// Reads once (TLS: until the socket is drained or the echo is in);
    /// returns true when the whole echo is in (and verified).
    fn recv(&mut self, ep: &Epoll, idx: u64) -> Result<bool, String> {
        let n = self.msg.len();
        if self.tls.is_some() {
            self.recv_tls()?;
            if self.tls.as_ref().is_some_and(|t| t.wants_write()) && !self.want_out {
                self.send(ep, idx)?; // e.g. a reply to a key update
            }
        } else {
            match self.conn.read(&mut self.buf[self.got..n]) {
                Ok(0) => {
                    return Err(format!(
                        "server closed the connection after echoing {} of {n} bytes",
                        self.got
                    ))
                }
                Ok(k) => self.got += k,
                Err(e) if is_retry(&e) => {}
                Err(e) => return Err(format!("read: {e}")),
            }
        }
        if self.got < n {
            return Ok(false);
        }
        self.verified += verify(&self.msg, &self.buf)? as u64;
        Ok(true)
    }

    /// TLS: plaintext from rustls into `buf`, records from the socket into
    /// rustls, until the echo is complete or the socket has nothing more.
    /// Plaintext beyond the echo stays in rustls: the next trip (or the
    /// final close) finds it and fails.
    fn recv_tls(&mut self) -> Result<(), String> {
        let n = self.msg.len();
        let tls = self.tls.as_mut().expect("TLS flow");
        loop {
            while self.got < n {
                match tls.reader().read(&mut self.buf[self.got..n]) {
                    Ok(0) => {
                        return Err(format!(
                            "server sent close_notify after echoing {} of {n} bytes",
                            self.got
                        ))
                    }
                    Ok(k) => self.got += k,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                        return Err(format!(
                            "server closed the connection (no close_notify) after echoing \
                             {} of {n} bytes",
                            self.got
                        ))
                    }
                    Err(e) => return Err(format!("TLS read: {e}")),
                }
            }
            if self.got == n {
                return Ok(());
            }
            match tls.read_tls(&mut self.conn) {
                // Ok(0), a TCP EOF: the reader reports it next
                Ok(_) => {
                    tls.process_new_packets().map_err(|e| format!("TLS: {e}"))?;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(format!("read: {e}")),
            }
        }
    }
}

/// CPU seconds of this process and of the server at one instant.
type CpuSample = (Option<f64>, Option<f64>, Instant);

fn cpu_sample(pid: &str) -> CpuSample {
    (cpu_seconds("self"), cpu_seconds(pid), Instant::now())
}

/// Echo mode: opens the connections, drives them (`--threads`: one blocking
/// thread each; default: one thread with epoll), prints the JSON report.
fn echo(o: Opts, tls: Option<Tls>) {
    let mut flows = Vec::with_capacity(o.conns);
    for id in 0..o.conns {
        let mut conn = Conn::connect(&o.addr)
            .unwrap_or_else(|e| fail(&format!("connection {id}: connect: {e}")));
        let client = tls.as_ref().map(|t| {
            let mut c = t.client().unwrap_or_else(|e| fail(&e));
            tls_handshake(&mut conn, &mut c, o.timeout_ms)
                .unwrap_or_else(|e| fail(&format!("connection {id}: {e}")));
            c
        });
        let mut msg = vec![0u8; o.size];
        pattern(&mut msg, id as u32);
        flows.push(Flow {
            conn,
            tls: client,
            id: id as u32,
            msg,
            buf: vec![0u8; o.size],
            sent: 0,
            got: 0,
            trip: 0,
            t0: Instant::now(),
            want_out: false,
            done: false,
            verified: 0,
        });
    }
    let res = if o.threads {
        drive_threads(&o, flows)
    } else {
        drive_epoll(&o, &mut flows)
    };
    match res {
        Ok((lat, c0, c1, verified)) => report(&o, lat, c0, c1, verified, tls.is_some()),
        Err(e) => fail(&e),
    }
}

/// (latencies of the measured trips in ns, CPU samples at warm and end, bytes compared)
type Driven = Result<(Vec<u64>, Option<CpuSample>, Option<CpuSample>, u64), String>;

fn drive_epoll(o: &Opts, flows: &mut [Flow]) -> Driven {
    let ep = Epoll::new().map_err(epoll_err("epoll_create1"))?;
    for (i, f) in flows.iter().enumerate() {
        ep.ctl(EPOLL_CTL_ADD, f.conn.fd(), EPOLLIN, i as u64)
            .map_err(epoll_err("epoll_ctl"))?;
    }
    let pid = o.server_pid.clone().unwrap_or_default();
    let start = Instant::now();
    let warm = start + Duration::from_secs_f64(o.warmup);
    let end = warm + Duration::from_secs_f64(o.duration);
    let (mut cpu0, mut cpu1) = (None, None);
    let mut lat: Vec<u64> = Vec::with_capacity(1 << 20);
    let mut active = flows.len();
    for (i, f) in flows.iter_mut().enumerate() {
        f.begin(&ep, i as u64)
            .map_err(|e| format!("connection {i}: {e}"))?;
    }
    let mut events = vec![EpollEvent { events: 0, data: 0 }; flows.len().max(1)];
    while active > 0 {
        let n = ep
            .wait(&mut events, o.timeout_ms)
            .map_err(epoll_err("epoll_wait"))?;
        if n == 0 {
            let f = flows.iter().position(|f| !f.done).unwrap_or(0);
            let fl = &flows[f];
            return Err(format!(
                "no progress for {} ms: connection {f} trip {} has {}/{} bytes sent, {} echoed",
                o.timeout_ms,
                fl.trip,
                fl.sent,
                fl.msg.len(),
                fl.got
            ));
        }
        for ev in &events[..n] {
            let (bits, idx) = (ev.events, ev.data);
            let f = &mut flows[idx as usize];
            if f.done {
                continue;
            }
            let res: Result<bool, String> = (|| {
                if bits & (EPOLLOUT | EPOLLERR | EPOLLHUP) != 0 && f.want_out {
                    f.send(&ep, idx)?;
                }
                if bits & (EPOLLIN | EPOLLERR | EPOLLHUP) != 0 {
                    return f.recv(&ep, idx);
                }
                Ok(false)
            })();
            let complete = res.map_err(|e| format!("connection {idx} trip {}: {e}", f.trip))?;
            if !complete {
                continue;
            }
            let t1 = Instant::now();
            f.trip += 1;
            if t1 >= warm && cpu0.is_none() {
                cpu0 = Some(cpu_sample(&pid));
            }
            if t1 >= end {
                if cpu1.is_none() {
                    cpu1 = Some(cpu_sample(&pid));
                }
                f.done = true;
                active -= 1;
                ep.ctl(EPOLL_CTL_DEL, f.conn.fd(), 0, idx)
                    .map_err(epoll_err("epoll_ctl"))?;
                continue;
            }
            if t1 >= warm {
                lat.push((t1 - f.t0).as_nanos() as u64);
            }
            f.begin(&ep, idx)
                .map_err(|e| format!("connection {idx} trip {}: {e}", f.trip))?;
        }
    }
    for (i, f) in flows.iter_mut().enumerate() {
        match &mut f.tls {
            Some(tls) => finish_tls(&mut f.conn, tls, o.timeout_ms),
            None => finish(&mut f.conn, o.timeout_ms),
        }
        .map_err(|e| format!("connection {i}: {e}"))?;
    }
    let verified = flows.iter().map(|f| f.verified).sum();
    Ok((lat, cpu0, cpu1, verified))
}

fn drive_threads(o: &Opts, flows: Vec<Flow>) -> Driven {
    let start = Instant::now();
    let warm = start + Duration::from_secs_f64(o.warmup);
    let end = warm + Duration::from_secs_f64(o.duration);
    let timeout_ms = o.timeout_ms;
    let handles: Vec<_> = flows
        .into_iter()
        .map(|mut f| {
            std::thread::Builder::new()
                .stack_size(256 * 1024)
                .spawn(move || -> Result<(Vec<u64>, u64), String> {
                    let mut lat = Vec::with_capacity(1 << 16);
                    let mut verified = 0u64;
                    loop {
                        stamp(&mut f.msg, f.id, f.trip);
                        let t0 = Instant::now();
                        verified += round_trip(&mut f.conn, &f.msg, &mut f.buf, timeout_ms)
                            .map_err(|e| format!("connection {} trip {}: {e}", f.id, f.trip))?
                            as u64;
                        let t1 = Instant::now();
                        f.trip += 1;
                        if t1 >= end {
                            break;
                        }
                        if t1 >= warm {
                            lat.push((t1 - t0).as_nanos() as u64);
                        }
                    }
                    finish(&mut f.conn, timeout_ms)
                        .map_err(|e| format!("connection {}: {e}", f.id))?;
                    Ok((lat, verified))
                })
                .map_err(|e| format!("spawn: {e}"))
        })
        .collect::<Result<_, _>>()?;
    let pid = o.server_pid.clone().unwrap_or_default();
    std::thread::sleep(warm.saturating_duration_since(Instant::now()));
    let cpu0 = cpu_sample(&pid);
    std::thread::sleep(end.saturating_duration_since(Instant::now()));
    let cpu1 = cpu_sample(&pid);
    let (mut lat, mut verified) = (Vec::new(), 0);
    for h in handles {
        let (l, v) = h
            .join()
            .map_err(|_| "connection thread panicked".to_string())??;
        lat.extend(l);
        verified += v;
    }
    Ok((lat, Some(cpu0), Some(cpu1), verified))
}

fn report(
    o: &Opts,
    mut lat: Vec<u64>,
    cpu0: Option<CpuSample>,
    cpu1: Option<CpuSample>,
    verified: u64,
    tls: bool,
) {
    let what = if o.handshakes {
        "handshakes"
    } else {
        "round_trips"
    };
    if lat.is_empty() {
        fail(&format!(
            "no {} completed in the measured interval",
            if o.handshakes {
                "handshake cycle"
            } else {
                "round trip"
            }
        ));
    }
    lat.sort_unstable();
    let pct = |q: f64| {
        let idx = ((q * lat.len() as f64).ceil() as usize).clamp(1, lat.len()) - 1;
        lat[idx] as f64 / 1000.0
    };
    let cpu = |server: bool| match (cpu0, cpu1) {
        (Some(a), Some(b)) => {
            let (x, y) = if server { (a.1, b.1) } else { (a.0, b.0) };
            match (x, y) {
                (Some(x), Some(y)) => format!("{:.3}", (y - x) / (b.2 - a.2).as_secs_f64()),
                _ => "null".into(),
            }
        }
        _ => "null".into(),
    };
    let n = lat.len();
    println!(
        "{{\"ok\": true, \"driver\": \"{}\", \"tls\": {}, \"conns\": {}, \"size\": {}, \
         \"{what}\": {}, \"seconds\": {:.6}, \"rate\": {:.1}, \"bytes_compared\": {}, \
         \"p50_us\": {:.1}, \"p90_us\": {:.1}, \"p99_us\": {:.1}, \"max_us\": {:.1}, \
         \"gen_cpu\": {}, \"server_cpu\": {}}}",
        if o.threads { "threads" } else { "epoll" },
        if tls {
            json_str(TLS_DESC)
        } else {
            "null".into()
        },
        o.conns,
        o.size,
        n,
        o.duration,
        n as f64 / o.duration,
        verified,
        pct(0.50),
        pct(0.90),
        pct(0.99),
        pct(1.0),
        cpu(false),
        cpu(true),
    );
}

// -- handshake mode ------------------------------------------------------------

#[derive(Clone, Copy, PartialEq, Eq)]
enum Phase {
    Handshake,
    Echo,
    Closing,
}

impl Phase {
    fn name(self) -> &'static str {
        match self {
            Phase::Handshake => "handshake",
            Phase::Echo => "echo",
            Phase::Closing => "close",
        }
    }
}

/// One cycle of handshake mode on a fresh connection: the handshake, one
/// round trip, close_notify + half-close, the server's close.
struct Cycle {
    conn: Conn,
    tls: ClientConnection,
    phase: Phase,
    got: usize,
    t0: Instant,
    want_out: bool,
    shut: bool,
}

impl Cycle {
    fn start(o: &Opts, t: &Tls, ep: &Epoll, idx: u64) -> Result<Cycle, String> {
        let t0 = Instant::now();
        let conn = Conn::connect(&o.addr).map_err(|e| format!("connect: {e}"))?;
        let tls = t.client()?;
        ep.ctl(EPOLL_CTL_ADD, conn.fd(), EPOLLIN, idx)
            .map_err(epoll_err("epoll_ctl"))?;
        Ok(Cycle {
            conn,
            tls,
            phase: Phase::Handshake,
            got: 0,
            t0,
            want_out: false,
            shut: false,
        })
    }

    /// Does all that can be done without blocking; returns true once the
    /// server has closed after the verified echo.
    fn step(&mut self, ep: &Epoll, idx: u64, msg: &[u8], buf: &mut [u8]) -> Result<bool, String> {
        let n = msg.len();
        let mut scratch = [0u8; 512];
        loop {
            if self.phase == Phase::Handshake && !self.tls.is_handshaking() {
                check_negotiated(&self.tls)?;
                self.tls
                    .writer()
                    .write_all(msg)
                    .map_err(|e| format!("TLS write: {e}"))?;
                self.phase = Phase::Echo;
            }
            // Plaintext: the echo and nothing else.
            loop {
                let echo = self.phase == Phase::Echo;
                let room: &mut [u8] = if echo {
                    &mut buf[self.got..n]
                } else {
                    &mut scratch
                };
                if room.is_empty() {
                    break;
                }
                match self.tls.reader().read(room) {
                    Ok(0) if self.phase == Phase::Closing => return Ok(true),
                    Ok(0) => {
                        return Err(format!(
                            "server sent close_notify during the {} ({} of {n} bytes echoed)",
                            self.phase.name(),
                            self.got
                        ))
                    }
                    Ok(k) if echo => self.got += k,
                    Ok(k) => {
                        return Err(format!(
                            "server sent {k} unexpected bytes during the {}",
                            self.phase.name()
                        ))
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                        if self.phase == Phase::Closing {
                            return Ok(true);
                        }
                        return Err(format!(
                            "server closed the connection (no close_notify) during the {} \
                             ({} of {n} bytes echoed)",
                            self.phase.name(),
                            self.got
                        ));
                    }
                    Err(e) => return Err(format!("TLS read: {e}")),
                }
            }
            if self.phase == Phase::Echo && self.got == n {
                verify(msg, buf)?;
                self.tls.send_close_notify();
                self.phase = Phase::Closing;
            }
            // Records out; the half-close once close_notify is out.
            while self.tls.wants_write() {
                match self.tls.write_tls(&mut self.conn) {
                    Ok(_) => {}
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) => return Err(format!("write: {e}")),
                }
            }
            if self.phase == Phase::Closing && !self.shut && !self.tls.wants_write() {
                self.conn
                    .shutdown_write()
                    .map_err(|e| format!("shutdown: {e}"))?;
                self.shut = true;
            }
            match self.tls.read_tls(&mut self.conn) {
                // Ok(0), a TCP EOF: the reader reports it next
                Ok(_) => {
                    self.tls
                        .process_new_packets()
                        .map_err(|e| format!("TLS ({}): {e}", self.phase.name()))?;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::ConnectionReset && self.shut => {
                    return Ok(true)
                }
                Err(e) => return Err(format!("read ({}): {e}", self.phase.name())),
            }
        }
        let want_out = self.tls.wants_write();
        if want_out != self.want_out {
            let ev = if want_out {
                EPOLLIN | EPOLLOUT
            } else {
                EPOLLIN
            };
            ep.ctl(EPOLL_CTL_MOD, self.conn.fd(), ev, idx)
                .map_err(epoll_err("epoll_ctl"))?;
            self.want_out = want_out;
        }
        Ok(false)
    }
}

/// A handshake-mode connection slot: its message and the cycle in progress.
struct Slot {
    id: u32,
    msg: Vec<u8>,
    buf: Vec<u8>,
    cycles: u64,
    cycle: Option<Cycle>,
}

impl Slot {
    fn begin(&mut self, o: &Opts, t: &Tls, ep: &Epoll, idx: u64) -> Result<(), String> {
        stamp(&mut self.msg, self.id, self.cycles);
        let c = self.cycle.insert(Cycle::start(o, t, ep, idx)?);
        c.step(ep, idx, &self.msg, &mut self.buf)?; // sends the ClientHello
        Ok(())
    }
}

/// Handshake mode: `--conns` slots cycling concurrently on one epoll loop.
fn handshakes(o: Opts, t: Tls) {
    match drive_handshakes(&o, &t) {
        Ok((lat, c0, c1, verified)) => report(&o, lat, c0, c1, verified, true),
        Err(e) => fail(&e),
    }
}

fn drive_handshakes(o: &Opts, t: &Tls) -> Driven {
    let ep = Epoll::new().map_err(epoll_err("epoll_create1"))?;
    let pid = o.server_pid.clone().unwrap_or_default();
    let mut slots: Vec<Slot> = (0..o.conns)
        .map(|id| {
            let mut msg = vec![0u8; o.size];
            pattern(&mut msg, id as u32);
            Slot {
                id: id as u32,
                msg,
                buf: vec![0u8; o.size],
                cycles: 0,
                cycle: None,
            }
        })
        .collect();
    let start = Instant::now();
    let warm = start + Duration::from_secs_f64(o.warmup);
    let end = warm + Duration::from_secs_f64(o.duration);
    let (mut cpu0, mut cpu1) = (None, None);
    let mut lat: Vec<u64> = Vec::with_capacity(1 << 16);
    let mut verified = 0u64;
    let mut active = slots.len();
    for (i, s) in slots.iter_mut().enumerate() {
        s.begin(o, t, &ep, i as u64)
            .map_err(|e| format!("connection {i} cycle 0: {e}"))?;
    }
    let mut events = vec![EpollEvent { events: 0, data: 0 }; slots.len()];
    while active > 0 {
        let n = ep
            .wait(&mut events, o.timeout_ms)
            .map_err(epoll_err("epoll_wait"))?;
        if n == 0 {
            let (i, s) = slots
                .iter()
                .enumerate()
                .find(|(_, s)| s.cycle.is_some())
                .expect("an active slot");
            let c = s.cycle.as_ref().expect("an active cycle");
            return Err(format!(
                "no progress for {} ms: connection {i} cycle {} is in its {} ({} of {} bytes echoed)",
                o.timeout_ms,
                s.cycles,
                c.phase.name(),
                c.got,
                s.msg.len()
            ));
        }
        for ev in &events[..n] {
            let idx = ev.data;
            let s = &mut slots[idx as usize];
            let Some(c) = s.cycle.as_mut() else {
                continue;
            };
            let done = c
                .step(&ep, idx, &s.msg, &mut s.buf)
                .map_err(|e| format!("connection {idx} cycle {}: {e}", s.cycles))?;
            if !done {
                continue;
            }
            let t1 = Instant::now();
            let c = s.cycle.take().expect("the cycle just stepped");
            ep.ctl(EPOLL_CTL_DEL, c.conn.fd(), 0, idx)
                .map_err(epoll_err("epoll_ctl"))?;
            let took = (t1 - c.t0).as_nanos() as u64;
            drop(c); // closes the socket
            verified += s.msg.len() as u64;
            s.cycles += 1;
            if t1 >= warm && cpu0.is_none() {
                cpu0 = Some(cpu_sample(&pid));
            }
            if t1 >= end {
                if cpu1.is_none() {
                    cpu1 = Some(cpu_sample(&pid));
                }
                active -= 1;
                continue;
            }
            if t1 >= warm {
                lat.push(took);
            }
            s.begin(o, t, &ep, idx)
                .map_err(|e| format!("connection {idx} cycle {}: {e}", s.cycles))?;
        }
    }
    Ok((lat, cpu0, cpu1, verified))
}

// -- hold mode -----------------------------------------------------------------

fn hold(o: Opts, count: usize) {
    let t0 = Instant::now();
    let mut conns = Vec::with_capacity(count);
    let mut msg = vec![0u8; o.size];
    let mut buf = vec![0u8; o.size];
    for id in 0..count {
        let mut c = Conn::connect(&o.addr)
            .unwrap_or_else(|e| fail(&format!("connection {id} of {count}: connect: {e}")));
        pattern(&mut msg, id as u32);
        stamp(&mut msg, id as u32, 0);
        round_trip(&mut c, &msg, &mut buf, o.timeout_ms)
            .unwrap_or_else(|e| fail(&format!("connection {id} of {count}: {e}")));
        conns.push(c);
    }
    println!(
        "{{\"ok\": true, \"held\": {}, \"size\": {}, \"seconds\": {:.3}}}",
        count,
        o.size,
        t0.elapsed().as_secs_f64()
    );
    io::stdout().flush().ok();
    // Idle until the runner closes our stdin.
    let mut sink = String::new();
    while io::stdin()
        .lock()
        .read_line(&mut sink)
        .map(|k| k > 0)
        .unwrap_or(false)
    {
        sink.clear();
    }
    drop(conns);
}

fn main() {
    let o = parse_args().unwrap_or_else(|e| {
        eprintln!("usage: loadgen (--tcp HOST:PORT | --unix PATH) [options]; see the source");
        fail(&e)
    });
    let tls =
        o.ca.as_deref()
            .filter(|_| o.tls)
            .map(|ca| Tls::new(ca, &o.server_name).unwrap_or_else(|e| fail(&e)));
    match (o.hold, tls) {
        (Some(n), _) => hold(o, n),
        (None, Some(t)) if o.handshakes => handshakes(o, t),
        (None, tls) => echo(o, tls),
    }
}
