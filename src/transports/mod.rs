//! Transports: the native cores of asyncio's transports.
pub mod accept;
pub mod face;
pub mod stream;
pub mod tls;
