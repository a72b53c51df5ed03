//! Echo load generator of benches/net (std only, no crates).
//!
//!     loadgen (--tcp HOST:PORT | --unix PATH) [--conns 10] [--size 1024]
//!             [--duration 3] [--warmup 0.5] [--timeout 10] [--server-pid PID]
//!             [--threads]
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
//! with poll(2)); costlier per round trip on a 2-CPU machine. Every echo is compared in full with what was sent (the message
//! carries the connection id and trip number, the rest is a non-constant
//! pattern), so a server that loses, reorders, duplicates or invents bytes
//! fails instead of looking fast. At the end each connection half-closes and
//! expects the server to close without sending more; `--timeout` seconds
//! without progress fail the run. TCP sockets use TCP_NODELAY. `gen_cpu` and `server_cpu` in the output are
//! the CPU time (user + system, from /proc) of this process and of
//! `--server-pid` over the measured interval, in CPUs (1.0 = one full CPU).
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
use std::time::{Duration, Instant};

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
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Conn::Tcp(s) => s.read(buf),
            Conn::Unix(s) => s.read(buf),
        }
    }
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Conn::Tcp(s) => s.write(buf),
            Conn::Unix(s) => s.write(buf),
        }
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
    };
    let mut have_addr = false;
    let mut size_given = false;
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    while i < args.len() {
        let key = args[i].as_str();
        if key == "--threads" {
            o.threads = true;
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
            _ => return Err(format!("unknown option {key}")),
        }
        i += 2;
    }
    if !have_addr {
        return Err("need --tcp HOST:PORT or --unix PATH".into());
    }
    if o.hold.is_some() && !size_given {
        o.size = 64;
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
struct Flow {
    conn: Conn,
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
        while self.sent < self.msg.len() {
            match self.conn.write(&self.msg[self.sent..]) {
                Ok(k) => self.sent += k,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(format!("write: {e}")),
            }
        }
        let want_out = self.sent < self.msg.len();
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

    /// Reads once; returns true when the whole echo is in (and verified).
    fn recv(&mut self) -> Result<bool, String> {
        let n = self.msg.len();
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
        if self.got < n {
            return Ok(false);
        }
        self.verified += verify(&self.msg, &self.buf)? as u64;
        Ok(true)
    }
}

/// CPU seconds of this process and of the server at one instant.
type CpuSample = (Option<f64>, Option<f64>, Instant);

fn cpu_sample(pid: &str) -> CpuSample {
    (cpu_seconds("self"), cpu_seconds(pid), Instant::now())
}

/// Echo mode: opens the connections, drives them (`--threads`: one blocking
/// thread each; default: one thread with epoll), prints the JSON report.
fn echo(o: Opts) {
    let mut flows = Vec::with_capacity(o.conns);
    for id in 0..o.conns {
        let conn = Conn::connect(&o.addr)
            .unwrap_or_else(|e| fail(&format!("connection {id}: connect: {e}")));
        let mut msg = vec![0u8; o.size];
        pattern(&mut msg, id as u32);
        flows.push(Flow {
            conn,
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
        Ok((lat, c0, c1, verified)) => report(&o, lat, c0, c1, verified),
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
                if bits & (EPOLLOUT | EPOLLERR | EPOLLHUP) != 0 && f.sent < f.msg.len() {
                    f.send(&ep, idx)?;
                }
                if bits & (EPOLLIN | EPOLLERR | EPOLLHUP) != 0 {
                    return f.recv();
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
        finish(&mut f.conn, o.timeout_ms).map_err(|e| format!("connection {i}: {e}"))?;
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
) {
    if lat.is_empty() {
        fail("no round trip completed in the measured interval");
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
        "{{\"ok\": true, \"driver\": \"{}\", \"conns\": {}, \"size\": {}, \"round_trips\": {}, \
         \"seconds\": {:.6}, \"rate\": {:.1}, \"bytes_compared\": {}, \"p50_us\": {:.1}, \
         \"p90_us\": {:.1}, \"p99_us\": {:.1}, \"max_us\": {:.1}, \"gen_cpu\": {}, \
         \"server_cpu\": {}}}",
        if o.threads { "threads" } else { "epoll" },
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
    match o.hold {
        Some(n) => hold(o, n),
        None => echo(o),
    }
}
