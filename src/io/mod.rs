//! Readiness: the mio poller and the user fd watchers.
pub mod fd_set;
pub mod fd_watchers;
pub mod poller;
