//! Transports: the native cores of asyncio's transports.
pub mod stream;
