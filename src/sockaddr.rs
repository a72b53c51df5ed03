//! Socket addresses: a compact owned copy of a kernel `sockaddr`, and its
//! conversion to the Python object CPython's `socket` module returns from
//! `getsockname()` / `getpeername()` / `accept()` on Linux.
//!
//! NOTE: `SockAddr::to_py` mirrors `makesockaddr()` in CPython's
//! Modules/socketmodule.c for AF_INET, AF_INET6 and AF_UNIX only:
//!
//! * AF_INET:  `(host, port)`, host from `inet_ntop`.
//! * AF_INET6: `(host, port, flowinfo, scope_id)`, host from `inet_ntop`
//!   (so `'::1'`, `'::ffff:1.2.3.4'`, and no `%scope` suffix even for
//!   link-local addresses), flowinfo in host byte order.
//! * AF_UNIX:  a `bytes` of the whole path for the Linux abstract namespace
//!   (`sun_path[0] == 0` and a non-empty path), else a `str` of the path up
//!   to its first NUL decoded with the filesystem encoding (surrogateescape),
//!   `''` for an unnamed socket.
//! * an empty address (length 0): `None`, as CPython does.
//!
//! Any other family gives `Ok(None)` (the Rust `None`): the caller has to
//! ask Python's `socket` module instead.
//!
//! CPython converts from a buffer it zeroed first, so an address shorter
//! than its family's struct reads as zero-padded; `to_py` does the same.

use std::io;
use std::mem::{offset_of, size_of};
use std::os::fd::RawFd;

use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyString, PyTuple};

use crate::errors;

/// Addresses up to this many bytes are stored inline (`sockaddr_in6` is 28).
const INLINE_CAP: usize = 28;

/// Longest address kept: a `sockaddr_storage`. A kernel length beyond it
/// only means the address was truncated to it.
const MAX_LEN: usize = size_of::<libc::sockaddr_storage>();

/// `INET6_ADDRSTRLEN` from <netinet/in.h> (46; not in the libc crate).
const INET6_ADDRSTRLEN: usize = 46;

// Not exported by the libc crate; glibc's and musl's prototype.
extern "C" {
    fn inet_ntop(
        af: libc::c_int,
        src: *const libc::c_void,
        dst: *mut libc::c_char,
        size: libc::socklen_t,
    ) -> *const libc::c_char;
}

/// Offset of `sun_path` in `sockaddr_un` (= `sizeof(sa_family_t)`).
const SUN_PATH_OFFSET: usize = offset_of!(libc::sockaddr_un, sun_path);

/// An owned copy of a raw `sockaddr` (bytes and length, as the kernel gave
/// them). IPv4 and IPv6 addresses are stored inline; only longer ones
/// (AF_UNIX paths) allocate.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct SockAddr(Repr);

#[derive(Clone, PartialEq, Eq, Hash)]
enum Repr {
    /// `bytes[..len]` is the address; the rest is zero.
    Inline {
        len: u8,
        bytes: [u8; INLINE_CAP],
    },
    Heap(Box<[u8]>),
}

impl SockAddr {
    /// Copies the first `len` bytes of `storage` (at most its size).
    pub fn from_raw(storage: &libc::sockaddr_storage, len: libc::socklen_t) -> SockAddr {
        let len = (len as usize).min(MAX_LEN);
        // SAFETY: `storage` is a live `sockaddr_storage` of MAX_LEN bytes and
        // `len <= MAX_LEN`. Its padding fields are `MaybeUninit` in the libc
        // crate, but a value can only be made zeroed (`Default`,
        // `mem::zeroed`) and the kernel filled the first `len` bytes, so
        // those bytes are initialised.
        let raw = unsafe {
            std::slice::from_raw_parts((storage as *const libc::sockaddr_storage).cast::<u8>(), len)
        };
        Self::from_bytes(raw)
    }

    fn from_bytes(raw: &[u8]) -> SockAddr {
        debug_assert!(raw.len() <= MAX_LEN);
        if raw.len() <= INLINE_CAP {
            let mut bytes = [0u8; INLINE_CAP];
            bytes[..raw.len()].copy_from_slice(raw);
            SockAddr(Repr::Inline {
                len: raw.len() as u8,
                bytes,
            })
        } else {
            SockAddr(Repr::Heap(raw.into()))
        }
    }

    /// The socket's own address (`getsockname(2)`).
    pub fn local(fd: RawFd) -> io::Result<SockAddr> {
        Self::query(fd, libc::getsockname)
    }

    /// The connected peer's address (`getpeername(2)`).
    pub fn peer(fd: RawFd) -> io::Result<SockAddr> {
        Self::query(fd, libc::getpeername)
    }

    fn query(
        fd: RawFd,
        call: unsafe extern "C" fn(
            libc::c_int,
            *mut libc::sockaddr,
            *mut libc::socklen_t,
        ) -> libc::c_int,
    ) -> io::Result<SockAddr> {
        // SAFETY: `sockaddr_storage` is plain integers; all-zero is valid.
        let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
        let mut len = MAX_LEN as libc::socklen_t;
        // SAFETY: `storage` is writable for `len` bytes and `len` is a valid
        // in/out length; the kernel writes at most `len` bytes. A bad fd is
        // reported as EBADF/ENOTSOCK.
        let rc = unsafe {
            call(
                fd,
                (&mut storage as *mut libc::sockaddr_storage).cast(),
                &mut len,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Self::from_raw(&storage, len))
    }

    /// The address bytes, exactly as long as the kernel's address length
    /// (capped at `sizeof(sockaddr_storage)`).
    pub fn as_bytes(&self) -> &[u8] {
        match &self.0 {
            Repr::Inline { len, bytes } => &bytes[..*len as usize],
            Repr::Heap(bytes) => bytes,
        }
    }

    /// The address length (`socklen_t` as returned by the kernel).
    pub fn len(&self) -> usize {
        self.as_bytes().len()
    }

    /// True for an empty address (length 0).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// `sa_family`, or AF_UNSPEC for an empty address.
    pub fn family(&self) -> i32 {
        if self.is_empty() {
            return libc::AF_UNSPEC;
        }
        i32::from(self.storage().ss_family)
    }

    /// A zero-padded `sockaddr_storage` holding the address (as CPython's
    /// memset buffer).
    fn storage(&self) -> libc::sockaddr_storage {
        // SAFETY: `sockaddr_storage` is plain integers; all-zero is valid.
        let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
        let raw = self.as_bytes();
        // SAFETY: `raw.len() <= MAX_LEN` (enforced on construction), the
        // destination is a distinct local of MAX_LEN bytes.
        unsafe {
            std::ptr::copy_nonoverlapping(
                raw.as_ptr(),
                (&mut storage as *mut libc::sockaddr_storage).cast::<u8>(),
                raw.len(),
            );
        }
        storage
    }

    /// The Python object CPython's `socket` module gives for this address,
    /// or `Ok(None)` when the family is not handled here (ask Python's
    /// `socket` module then).
    pub fn to_py<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyAny>>> {
        if self.is_empty() {
            // makesockaddr(): "No address -- may be recvfrom() from known socket".
            return Ok(Some(py.None().into_bound(py)));
        }
        let storage = self.storage();
        let obj = match self.family() {
            libc::AF_INET => {
                // SAFETY: `storage` is a zero-padded sockaddr_storage, large
                // and aligned enough for a sockaddr_in.
                let sin = unsafe {
                    &*(&storage as *const libc::sockaddr_storage).cast::<libc::sockaddr_in>()
                };
                let host = ntop(py, libc::AF_INET, &sin.sin_addr)?;
                let port = i32::from(u16::from_be(sin.sin_port));
                (host, port).into_pyobject(py)?.into_any()
            }
            libc::AF_INET6 => {
                // SAFETY: as above, for a sockaddr_in6.
                let sin6 = unsafe {
                    &*(&storage as *const libc::sockaddr_storage).cast::<libc::sockaddr_in6>()
                };
                let host = ntop(py, libc::AF_INET6, &sin6.sin6_addr)?;
                let port = i32::from(u16::from_be(sin6.sin6_port));
                let flowinfo = u32::from_be(sin6.sin6_flowinfo);
                (host, port, flowinfo, sin6.sin6_scope_id)
                    .into_pyobject(py)?
                    .into_any()
            }
            libc::AF_UNIX => unix_path(py, self.as_bytes())?,
            _ => return Ok(None),
        };
        Ok(Some(obj))
    }
}

impl std::fmt::Debug for SockAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SockAddr")
            .field("family", &self.family())
            .field("bytes", &self.as_bytes())
            .finish()
    }
}

/// `inet_ntop(family, addr)` as a Python `str` (CPython's make_ipv4_addr /
/// make_ipv6_addr).
fn ntop<'py, T>(py: Python<'py>, family: i32, addr: &T) -> PyResult<Bound<'py, PyString>> {
    let mut buf = [0 as libc::c_char; INET6_ADDRSTRLEN];
    // SAFETY: `addr` points to an in_addr / in6_addr matching `family`; `buf`
    // is writable for its length (INET6_ADDRSTRLEN covers both families).
    let rc = unsafe {
        inet_ntop(
            family,
            (addr as *const T).cast(),
            buf.as_mut_ptr(),
            buf.len() as libc::socklen_t,
        )
    };
    if rc.is_null() {
        return Err(errors::os_error(io::Error::last_os_error()));
    }
    // SAFETY: on success inet_ntop wrote a NUL-terminated string into `buf`.
    let text = unsafe { std::ffi::CStr::from_ptr(buf.as_ptr()) };
    // inet_ntop output is ASCII.
    Ok(PyString::new(py, &text.to_string_lossy()))
}

/// An AF_UNIX address (`raw` is the whole sockaddr_un, kernel length) as
/// CPython gives it on Linux.
fn unix_path<'py>(py: Python<'py>, raw: &[u8]) -> PyResult<Bound<'py, PyAny>> {
    let path = raw.get(SUN_PATH_OFFSET..).unwrap_or(&[]);
    if path.first() == Some(&0) {
        // Linux abstract namespace: every byte of the length, NULs included.
        return Ok(PyBytes::new(py, path).into_any());
    }
    // A regular NUL-terminated path ('' when unnamed: length == offset).
    let end = path.iter().position(|&b| b == 0).unwrap_or(path.len());
    let path = &path[..end];
    // SAFETY: `path` is a valid readable slice of `path.len()` bytes (at most
    // MAX_LEN); the GIL is held (`py`). The result is a new reference or
    // NULL with an exception set, which from_owned_ptr_or_err handles.
    unsafe {
        Bound::from_owned_ptr_or_err(
            py,
            ffi::PyUnicode_DecodeFSDefaultAndSize(
                path.as_ptr().cast(),
                path.len() as ffi::Py_ssize_t,
            ),
        )
    }
}

/// Test helper: `(local, peer)` addresses of `fd` converted by `to_py`,
/// each None when the family is not handled here or the syscall fails.
#[pyfunction]
fn sockaddr_names<'py>(py: Python<'py>, fd: RawFd) -> PyResult<Bound<'py, PyTuple>> {
    let convert = |addr: io::Result<SockAddr>| -> PyResult<Option<Bound<'py, PyAny>>> {
        match addr {
            Ok(addr) => addr.to_py(py),
            Err(_) => Ok(None),
        }
    };
    let local = convert(SockAddr::local(fd))?;
    let peer = convert(SockAddr::peer(fd))?;
    (local, peer).into_pyobject(py)
}

pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(sockaddr_names, m)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv6Addr, SocketAddr, TcpListener, TcpStream};
    use std::os::fd::AsRawFd;
    use std::os::linux::net::SocketAddrExt;
    use std::os::unix::net::{SocketAddr as UnixAddr, UnixListener, UnixStream};

    fn port_of(addr: &SockAddr) -> u16 {
        u16::from_be_bytes([addr.as_bytes()[2], addr.as_bytes()[3]])
    }

    #[test]
    fn size_is_compact() {
        assert!(size_of::<SockAddr>() <= 32, "{}", size_of::<SockAddr>());
        assert!(size_of::<libc::sockaddr_in6>() <= INLINE_CAP);
    }

    #[test]
    fn tcp_ipv4_pair() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, _) = listener.accept().unwrap();

        let local = SockAddr::local(client.as_raw_fd()).unwrap();
        let peer = SockAddr::peer(client.as_raw_fd()).unwrap();
        assert_eq!(local.family(), libc::AF_INET);
        assert_eq!(local.len(), size_of::<libc::sockaddr_in>());
        assert!(matches!(local.0, Repr::Inline { .. }));
        assert_eq!(port_of(&local), client.local_addr().unwrap().port());
        assert_eq!(port_of(&peer), listener.local_addr().unwrap().port());
        assert_eq!(&peer.as_bytes()[4..8], &[127, 0, 0, 1]);
        // The two ends see each other.
        assert_eq!(SockAddr::local(server.as_raw_fd()).unwrap(), peer);
        assert_eq!(SockAddr::peer(server.as_raw_fd()).unwrap(), local);
    }

    #[test]
    fn tcp_ipv6_pair() {
        let Ok(listener) = TcpListener::bind((Ipv6Addr::LOCALHOST, 0)) else {
            eprintln!("skipped: ::1 not available");
            return;
        };
        let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let local = SockAddr::local(client.as_raw_fd()).unwrap();
        let peer = SockAddr::peer(client.as_raw_fd()).unwrap();
        assert_eq!(local.family(), libc::AF_INET6);
        assert_eq!(local.len(), size_of::<libc::sockaddr_in6>());
        assert!(matches!(peer.0, Repr::Inline { .. }));
        let SocketAddr::V6(expected) = listener.local_addr().unwrap() else {
            unreachable!()
        };
        assert_eq!(port_of(&peer), expected.port());
        assert_eq!(&peer.as_bytes()[8..24], &Ipv6Addr::LOCALHOST.octets());
    }

    #[test]
    fn unix_unnamed_pair() {
        let (a, _b) = UnixStream::pair().unwrap();
        for addr in [
            SockAddr::local(a.as_raw_fd()).unwrap(),
            SockAddr::peer(a.as_raw_fd()).unwrap(),
        ] {
            assert_eq!(addr.family(), libc::AF_UNIX);
            assert_eq!(addr.len(), SUN_PATH_OFFSET);
        }
    }

    #[test]
    fn unix_path_is_heap_allocated() {
        let dir = std::env::temp_dir().join(format!("ferroloop-sockaddr-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("a-rather-long-socket-name.sock");
        let _ = std::fs::remove_file(&path);
        let listener = UnixListener::bind(&path).unwrap();
        let client = UnixStream::connect(&path).unwrap();

        let local = SockAddr::local(listener.as_raw_fd()).unwrap();
        let peer = SockAddr::peer(client.as_raw_fd()).unwrap();
        let raw_path = path.as_os_str().as_encoded_bytes();
        // Linux reports the path with its terminating NUL.
        assert_eq!(local.len(), SUN_PATH_OFFSET + raw_path.len() + 1);
        assert!(matches!(local.0, Repr::Heap(_)));
        assert_eq!(local.family(), libc::AF_UNIX);
        assert_eq!(
            &local.as_bytes()[SUN_PATH_OFFSET..local.len() - 1],
            raw_path
        );
        assert_eq!(local, peer);
        // The client is unbound.
        assert_eq!(
            SockAddr::local(client.as_raw_fd()).unwrap().len(),
            SUN_PATH_OFFSET
        );

        drop(listener);
        let _ = std::fs::remove_file(&path);
        let _ = std::fs::remove_dir(&dir);
    }

    #[test]
    fn unix_abstract() {
        let name = format!("ferroloop-sockaddr-{}", std::process::id());
        let addr = UnixAddr::from_abstract_name(name.as_bytes()).unwrap();
        let listener = UnixListener::bind_addr(&addr).unwrap();
        let local = SockAddr::local(listener.as_raw_fd()).unwrap();
        // Leading NUL, then the name, no terminator.
        assert_eq!(local.len(), SUN_PATH_OFFSET + 1 + name.len());
        assert_eq!(local.as_bytes()[SUN_PATH_OFFSET], 0);
        assert_eq!(&local.as_bytes()[SUN_PATH_OFFSET + 1..], name.as_bytes());
    }

    #[test]
    fn unconnected_peer_fails() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let err = SockAddr::peer(listener.as_raw_fd()).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::ENOTCONN));
        let err = SockAddr::local(-1).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EBADF));
    }

    #[test]
    fn from_raw_lengths() {
        // SAFETY: all-zero is a valid sockaddr_storage.
        let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
        storage.ss_family = libc::AF_INET6 as libc::sa_family_t;
        let empty = SockAddr::from_raw(&storage, 0);
        assert!(empty.is_empty());
        assert_eq!(empty.family(), libc::AF_UNSPEC);
        let inline = SockAddr::from_raw(&storage, INLINE_CAP as libc::socklen_t);
        assert!(matches!(inline.0, Repr::Inline { .. }));
        assert_eq!(inline.family(), libc::AF_INET6);
        let heap = SockAddr::from_raw(&storage, INLINE_CAP as libc::socklen_t + 1);
        assert!(matches!(heap.0, Repr::Heap(_)));
        assert_eq!(heap.len(), INLINE_CAP + 1);
        // A truncated (over-long) kernel length is capped.
        let big = SockAddr::from_raw(&storage, 1000);
        assert_eq!(big.len(), MAX_LEN);
        assert_eq!(big.clone(), big);
    }
}
