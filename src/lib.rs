//! ferroloop: asyncio's event loop, in Rust. Module registration only.
#![warn(clippy::undocumented_unsafe_blocks)]

mod clock;
mod errors;
mod event_loop;
mod executor;
mod freelist;
mod handles;
mod io;
mod metrics;
mod py;
mod ready_queue;
mod sock_io;
mod sockaddr;
mod timers;
mod transports;

use pyo3::prelude::*;

// NOTE: `gil_used = true` declares that the module needs the GIL: on a
// free-threaded interpreter (3.14t) importing it turns the GIL back on.
// pyo3 0.30's default is the opposite. What must change before this can be
// lifted is listed in docs/python-versions.md ("Free-threading").
#[pymodule(gil_used = true)]
fn _ferroloop(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<event_loop::EventLoop>()?;
    m.add_class::<handles::Handle>()?;
    m.add_class::<executor::ThreadPool>()?;
    m.add_class::<handles::TimerHandle>()?;
    m.add_class::<transports::stream::StreamTransport>()?;
    // The free lists are guarded by the GIL alone (see freelist.rs).
    #[cfg(not(Py_GIL_DISABLED))]
    {
        freelist::install::<handles::Handle>(m.py());
        freelist::install::<handles::TimerHandle>(m.py());
    }
    event_loop::fastcall::install(m)?;
    transports::stream::install(m.py())?;
    m.add_function(wrap_pyfunction!(sock_io::recv_nowait, m)?)?;
    m.add_function(wrap_pyfunction!(sock_io::send_nowait, m)?)?;
    sockaddr::register(m)?;
    m.add_class::<transports::accept::Acceptor>()?;
    m.add_function(wrap_pyfunction!(transports::face::install_face, m)?)?;
    m.add_function(wrap_pyfunction!(transports::tls::install_tls, m)?)?;
    m.add_class::<transports::tls::TlsCore>()?;
    m.add_class::<metrics::serve::MetricsServer>()?;
    m.add_function(wrap_pyfunction!(metrics::py_openmetrics, m)?)?;
    m.add_function(wrap_pyfunction!(metrics::py_python_exiting, m)?)?;
    m.add_function(wrap_pyfunction!(metrics::py_histogram_bounds, m)?)?;
    m.add_function(wrap_pyfunction!(metrics::py_value_names, m)?)?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    // True in the `checked` profile (Cargo.toml): debug assertions and
    // overflow checks on; scripts/test asserts it for the build it runs the
    // behaviour suite on.
    m.add("_debug_assertions", cfg!(debug_assertions))?;
    Ok(())
}
