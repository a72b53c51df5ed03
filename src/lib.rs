//! ferroloop: asyncio's event loop, in Rust. Module registration only.

mod clock;
mod errors;
mod event_loop;
mod executor;
mod handles;
mod io;
mod py;
mod ready_queue;
mod timers;

use pyo3::prelude::*;

#[pymodule]
fn _ferroloop(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<event_loop::EventLoop>()?;
    m.add_class::<handles::Handle>()?;
    m.add_class::<executor::ThreadPool>()?;
    m.add_class::<handles::TimerHandle>()?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
