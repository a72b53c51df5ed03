//! Sets pyo3's cfgs for the interpreter being built for (`Py_GIL_DISABLED`
//! on a free-threaded one, `Py_3_x`), so that this crate's own
//! `#[cfg(...)]`s see them as pyo3's do.

fn main() {
    pyo3_build_config::use_pyo3_cfgs();
}
