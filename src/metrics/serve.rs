//! `ferroloop.metrics.serve(port)`: an HTTP endpoint for the OpenMetrics
//! text, answered by a native thread that never takes the GIL, so a scrape
//! gets an answer while a loop blocks (or the whole interpreter does).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use parking_lot::Mutex;
use pyo3::prelude::*;

use crate::errors;

/// The exporter thread of `serve()`.
#[pyclass(frozen, module = "ferroloop._ferroloop")]
pub struct MetricsServer {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

const MAX_REQUEST: usize = 8192;
const IO_TIMEOUT: Duration = Duration::from_secs(5);

fn answer(mut conn: TcpStream) -> std::io::Result<()> {
    conn.set_read_timeout(Some(IO_TIMEOUT))?;
    conn.set_write_timeout(Some(IO_TIMEOUT))?;
    let mut req = Vec::with_capacity(1024);
    let mut buf = [0u8; 1024];
    while !req.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = conn.read(&mut buf)?;
        if n == 0 || req.len() + n > MAX_REQUEST {
            break;
        }
        req.extend_from_slice(&buf[..n]);
    }
    let line = req.split(|&b| b == b'\r').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let mut parts = line.split(' ');
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let path = path.split('?').next().unwrap_or("");
    let (status, ctype, body) = if method != "GET" && method != "HEAD" {
        (
            "405 Method Not Allowed",
            "text/plain",
            "GET only\n".to_string(),
        )
    } else if path == "/" || path == "/metrics" {
        (
            "200 OK",
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            super::openmetrics::render(),
        )
    } else {
        (
            "404 Not Found",
            "text/plain",
            "the metrics are at /metrics\n".to_string(),
        )
    };
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    conn.write_all(head.as_bytes())?;
    if method != "HEAD" {
        conn.write_all(body.as_bytes())?;
    }
    conn.flush()
}

fn serve_forever(listener: TcpListener, stop: Arc<AtomicBool>) {
    for conn in listener.incoming() {
        if stop.load(Ordering::Acquire) {
            return;
        }
        if let Ok(conn) = conn {
            // A client that fails or stalls costs it its answer only.
            let _ = answer(conn);
        }
    }
}

impl MetricsServer {
    pub fn start(host: &str, port: u16) -> std::io::Result<Self> {
        let listener = TcpListener::bind((host, port))?;
        let addr = listener.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name("ferroloop-metrics".into())
            .spawn(move || serve_forever(listener, flag))?;
        Ok(Self {
            addr,
            stop,
            thread: Mutex::new(Some(thread)),
        })
    }
}

#[pymethods]
impl MetricsServer {
    #[new]
    #[pyo3(signature = (port, host = "127.0.0.1"))]
    fn py_new(py: Python<'_>, port: u16, host: &str) -> PyResult<Self> {
        py.detach(|| Self::start(host, port))
            .map_err(errors::os_error)
    }

    #[getter]
    fn port(&self) -> u16 {
        self.addr.port()
    }

    #[getter]
    fn host(&self) -> String {
        self.addr.ip().to_string()
    }

    /// Stops the thread and closes the listening socket (idempotent).
    fn close(&self, py: Python<'_>) {
        let Some(thread) = self.thread.lock().take() else {
            return;
        };
        self.stop.store(true, Ordering::Release);
        py.detach(|| {
            // Wake the blocking accept(); it sees the flag and returns.
            let _ = TcpStream::connect_timeout(&self.addr, IO_TIMEOUT);
            let _ = thread.join();
        });
    }

    fn is_serving(&self) -> bool {
        self.thread.lock().is_some()
    }
}
