//! The default executor's work queue and worker loop.
//!
//! `run_in_executor(None, func, *args)` queues a job on a crossbeam channel;
//! worker threads (Python threads named `asyncio_N`, started by
//! `ferroloop._loop._DefaultExecutor`) wait on it with the GIL released, run
//! `func(*args)`, hand the outcome to the loop with `call_soon_threadsafe` and
//! at once release the GIL again by waiting for the next job. With
//! concurrent.futures, a worker keeps running Python bookkeeping after waking
//! the loop, so the loop thread first waits for the GIL.

use std::sync::atomic::{AtomicUsize, Ordering};

use crossbeam_channel::{Receiver, Sender};
use parking_lot::Mutex;
use pyo3::exceptions::PyRuntimeError;
use pyo3::prelude::*;
use pyo3::types::PyTuple;

use crate::event_loop::EventLoop;
use crate::py;

/// How long an idle worker polls for a job before it blocks.
const SPIN_BEFORE_BLOCKING: std::time::Duration = std::time::Duration::from_micros(50);

struct Job {
    func: Py<PyAny>,
    args: Py<PyTuple>,
    /// The asyncio Future `run_in_executor` returned.
    future: Py<PyAny>,
    event_loop: Py<EventLoop>,
}

#[pyclass(frozen, module = "ferroloop._ferroloop")]
pub struct ThreadPool {
    tx: Mutex<Option<Sender<Job>>>,
    rx: Receiver<Job>,
    max_workers: usize,
    started: AtomicUsize,
    /// Workers waiting for a job (in `next_job`); a worker leaves the count
    /// as soon as it has taken one, without waiting for the GIL.
    idle: AtomicUsize,
}

impl ThreadPool {
    /// Waits for the next job, spinning briefly first.
    ///
    /// NOTE: a loop awaiting executor calls one after another submits the
    /// next job a few microseconds after the previous result reached it;
    /// blocking at once would add a futex wake-up (tens of microseconds on
    /// a VM) to every round trip. The spin is bounded, yields the CPU, and
    /// runs without the GIL.
    fn next_job(&self) -> Result<Job, crossbeam_channel::RecvError> {
        let start = std::time::Instant::now();
        while start.elapsed() < SPIN_BEFORE_BLOCKING {
            match self.rx.try_recv() {
                Ok(job) => return Ok(job),
                Err(crossbeam_channel::TryRecvError::Disconnected) => {
                    return Err(crossbeam_channel::RecvError)
                }
                Err(crossbeam_channel::TryRecvError::Empty) => std::thread::yield_now(),
            }
        }
        self.rx.recv()
    }

    fn run_job(py: Python<'_>, job: Job) -> PyResult<()> {
        let future = job.future.bind(py);
        // NOTE: as with concurrent.futures, a job whose future was cancelled
        // before a worker picked it up never runs.
        if future
            .call_method0(pyo3::intern!(py, "cancelled"))?
            .is_truthy()?
        {
            return Ok(());
        }
        let (ok, value) = match job.func.bind(py).call1(job.args.bind(py)) {
            Ok(v) => (true, v),
            Err(e) => (false, e.into_value(py).into_bound(py).into_any()),
        };
        let event_loop = job.event_loop.bind(py);
        if event_loop.get().closed_flag() {
            return Ok(()); // nobody can receive the outcome any more
        }
        let setter = py::helpers(py)?.getattr(pyo3::intern!(py, "_set_future_state"))?;
        let args = PyTuple::new(
            py,
            [
                future.clone(),
                ok.into_pyobject(py)?.to_owned().into_any(),
                value,
            ],
        )?;
        match EventLoop::schedule_soon(event_loop, setter, args, None, true) {
            Ok(_) => Ok(()),
            // The loop was closed meanwhile: as above.
            Err(_) if event_loop.get().closed_flag() => Ok(()),
            Err(e) => Err(e),
        }
    }
}

#[pymethods]
impl ThreadPool {
    #[new]
    fn new(max_workers: usize) -> PyResult<Self> {
        if max_workers == 0 {
            return Err(pyo3::exceptions::PyValueError::new_err(
                "max_workers must be greater than 0",
            ));
        }
        let (tx, rx) = crossbeam_channel::unbounded();
        Ok(Self {
            tx: Mutex::new(Some(tx)),
            rx,
            max_workers,
            started: AtomicUsize::new(0),
            idle: AtomicUsize::new(0),
        })
    }

    /// Queues `func(*args)` for `future`. Returns whether the caller must
    /// start one more worker thread: more jobs wait than workers wait for
    /// them, and fewer than max_workers run.
    ///
    /// NOTE: counting waiting workers alone (grow only when none waits)
    /// ran a burst of jobs one after another on the one idle worker: every
    /// job of the burst saw it waiting. concurrent.futures claims an idle
    /// worker per job (a semaphore); comparing the queue with the waiting
    /// workers does the same without a lock.
    fn submit_job(
        &self,
        event_loop: Bound<'_, EventLoop>,
        future: Bound<'_, PyAny>,
        func: Bound<'_, PyAny>,
        args: Bound<'_, PyTuple>,
    ) -> PyResult<bool> {
        let job = Job {
            func: func.unbind(),
            args: args.unbind(),
            future: future.unbind(),
            event_loop: event_loop.unbind(),
        };
        {
            let guard = self.tx.lock();
            let Some(tx) = guard.as_ref() else {
                drop(guard);
                drop(job);
                return Err(PyRuntimeError::new_err(
                    "cannot schedule new futures after shutdown",
                ));
            };
            // An unbounded channel with a live receiver (ours) cannot fail.
            let _ = tx.send(job);
        }
        if self.rx.len() <= self.idle.load(Ordering::Acquire) {
            return Ok(false);
        }
        let grew = self
            .started
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.max_workers).then_some(n + 1)
            })
            .is_ok();
        Ok(grew)
    }

    /// The body of one worker thread: runs jobs until `shutdown()` and the
    /// queue is drained.
    fn work(&self, py: Python<'_>) -> PyResult<()> {
        loop {
            self.idle.fetch_add(1, Ordering::AcqRel);
            let next = py.detach(|| {
                let next = self.next_job();
                // Before taking the GIL back (the loop thread may hold it
                // while it submits more jobs): this worker is busy now.
                self.idle.fetch_sub(1, Ordering::AcqRel);
                next
            });
            let Ok(job) = next else {
                return Ok(());
            };
            if let Err(e) = Self::run_job(py, job) {
                // Delivering the outcome failed: report it as
                // concurrent.futures reports a failing done-callback.
                e.write_unraisable(py, None);
            }
        }
    }

    /// Stops accepting jobs; workers exit once the queue is empty. With
    /// `cancel_futures`, queued jobs are dropped and their futures cancelled.
    #[pyo3(signature = (cancel_futures=false))]
    fn shutdown(&self, py: Python<'_>, cancel_futures: bool) -> PyResult<()> {
        let tx = self.tx.lock().take();
        drop(tx);
        if cancel_futures {
            while let Ok(job) = self.rx.try_recv() {
                let event_loop = job.event_loop.bind(py);
                if event_loop.get().closed_flag() {
                    continue;
                }
                let cancel = job.future.bind(py).getattr("cancel")?;
                let _ =
                    EventLoop::schedule_soon(event_loop, cancel, PyTuple::empty(py), None, true);
            }
        }
        Ok(())
    }

    #[getter]
    fn max_workers(&self) -> usize {
        self.max_workers
    }

    /// Worker threads started so far.
    #[getter]
    fn started(&self) -> usize {
        self.started.load(Ordering::Acquire)
    }
}
