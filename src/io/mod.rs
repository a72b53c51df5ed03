//! Readiness: the mio poller and, in later issues, fd watchers.
pub mod poller;
