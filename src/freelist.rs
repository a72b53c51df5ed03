//! Free lists for `Handle` and `TimerHandle` objects, as CPython keeps for
//! its own short-lived objects (tuples, floats, frames).
//!
//! NOTE: every `call_soon` allocates a handle that usually dies right after
//! it runs. Allocating through `PyType_GenericAlloc` and freeing through
//! `PyObject_GC_Del` cost ~150 instructions of a ~2,400 instruction
//! call_soon+run, and each allocation counts towards a gen-0 collection.
//! pyo3's own `freelist` option costs about as much as it saves (a lazily
//! initialised mutex per access), so the types get these `tp_alloc` /
//! `tp_free` slots instead. The lists are only touched with the GIL held
//! (CPython calls both slots with it), which is what makes the `static`
//! storage sound: the module declares that it needs the GIL
//! (`gil_used = true` in lib.rs), and on a free-threaded build the lists
//! are not installed at all (CPython's per-thread allocator is used).

use std::cell::UnsafeCell;
use std::ffi::c_void;
use std::ptr;

use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::type_object::PyTypeInfo;

/// Objects kept per type: enough for a burst of callbacks in one tick.
const CAPACITY: usize = 1024;

pub(crate) struct Pool {
    ty: UnsafeCell<*mut ffi::PyTypeObject>,
    items: UnsafeCell<Vec<*mut ffi::PyObject>>,
}

// SAFETY: both cells are only accessed with the GIL held (see module docs),
// which serialises every access.
unsafe impl Sync for Pool {}

impl Pool {
    const fn new() -> Self {
        Self {
            ty: UnsafeCell::new(ptr::null_mut()),
            items: UnsafeCell::new(Vec::new()),
        }
    }
}

pub(crate) static HANDLES: Pool = Pool::new();
pub(crate) static TIMER_HANDLES: Pool = Pool::new();

/// A pyclass whose instances are recycled through a `Pool`.
pub(crate) trait Pooled: PyTypeInfo {
    fn pool() -> &'static Pool;
}

unsafe extern "C" fn alloc<T: Pooled>(
    subtype: *mut ffi::PyTypeObject,
    nitems: ffi::Py_ssize_t,
) -> *mut ffi::PyObject {
    let pool = T::pool();
    // SAFETY: tp_alloc is called with the GIL held, so the pool is ours; a
    // pooled object is a freed instance of exactly `subtype` (checked on
    // free) with its memory intact, re-initialised here as a new object
    // (type, reference count).
    // NOTE: unlike PyType_GenericAlloc, the payload is not zeroed and the
    // object is not GC-tracked: pyo3 writes the whole payload (value, borrow
    // flag, weakref slot) before anything reads it, and every creation site
    // either queues the handle, where it is untracked anyway (see
    // `handles::untrack`), or tracks it (`handles::track`).
    unsafe {
        if nitems == 0 && subtype == *pool.ty.get() {
            if let Some(obj) = (*pool.items.get()).pop() {
                ffi::PyObject_Init(obj, subtype);
                return obj;
            }
        }
        ffi::PyType_GenericAlloc(subtype, nitems)
    }
}

unsafe extern "C" fn free<T: Pooled>(obj: *mut c_void) {
    let pool = T::pool();
    // SAFETY: tp_free is called with the GIL held on an object whose
    // deallocation is complete (fields dropped, GC-untracked by pyo3's
    // tp_dealloc); its memory is either kept for `alloc` or released with
    // the inverse of PyType_GenericAlloc.
    unsafe {
        let o = obj.cast::<ffi::PyObject>();
        let items = &mut *pool.items.get();
        if ffi::Py_TYPE(o) == *pool.ty.get() && items.len() < CAPACITY {
            items.push(o);
            return;
        }
        ffi::PyObject_GC_Del(obj);
    }
}

/// Points `T`'s allocation slots at its pool. Called once at module import,
/// before any instance exists.
pub(crate) fn install<T: Pooled>(py: Python<'_>) {
    let ty = T::type_object_raw(py);
    let pool = T::pool();
    // SAFETY: the GIL is held; `ty` is the live heap type pyo3 created for
    // `T`, and no instance exists yet, so switching its allocator pair is
    // consistent (every instance is allocated and freed by the same pair).
    unsafe {
        *pool.ty.get() = ty;
        (*pool.items.get()).reserve(CAPACITY);
        (*ty).tp_alloc = Some(alloc::<T>);
        (*ty).tp_free = Some(free::<T>);
    }
}
