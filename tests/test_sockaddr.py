"""Socket addresses converted in Rust (src/sockaddr.rs) against CPython's socket module.

``sockaddr_names(fd)`` returns ``(local, peer)`` as ``getsockname()`` /
``getpeername()`` would, each None when the family is not handled in Rust
or the syscall fails.
"""

import contextlib
import os
import socket
import sys
import tempfile
import uuid

import pytest
from ferroloop._ferroloop import sockaddr_names

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="Linux address rules")


def _ipv6_loopback_available():
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::1", 0))
    except OSError:
        return False
    return True


HAS_IPV6 = _ipv6_loopback_available()
needs_ipv6 = pytest.mark.skipif(not HAS_IPV6, reason="IPv6 loopback ::1 is not available")


def assert_same(got, expected):
    """Equal, and of identical types all the way down (str vs bytes, int)."""
    assert got == expected
    assert type(got) is type(expected), (got, expected)
    if isinstance(expected, tuple):
        for g, e in zip(got, expected):
            assert_same(g, e)


def python_names(sock):
    local = sock.getsockname()
    try:
        peer = sock.getpeername()
    except OSError:
        peer = None
    return local, peer


def check(sock):
    got = sockaddr_names(sock.fileno())
    expected = python_names(sock)
    assert_same(got, expected)
    return got


@contextlib.contextmanager
def connected(family, listen_addr):
    """Yields (listener, client, accepted, address from accept()) for a stream connection."""
    with contextlib.ExitStack() as stack:
        srv = stack.enter_context(socket.socket(family, socket.SOCK_STREAM))
        srv.bind(listen_addr)
        srv.listen(1)
        cli = stack.enter_context(socket.socket(family, socket.SOCK_STREAM))
        cli.connect(srv.getsockname())
        acc, accept_addr = srv.accept()
        stack.enter_context(acc)
        yield srv, cli, acc, accept_addr


@pytest.fixture
def short_tmpdir():
    # sun_path holds 107 bytes; pytest's tmp_path can be longer than that.
    with tempfile.TemporaryDirectory(prefix="fl-", dir="/tmp") as d:
        yield d


def test_tcp_ipv4_pair():
    with connected(socket.AF_INET, ("127.0.0.1", 0)) as (srv, cli, acc, accept_addr):
        local, peer = check(cli)
        assert local[0] == "127.0.0.1" and peer == srv.getsockname()
        check(acc)
        assert_same(sockaddr_names(acc.fileno())[1], accept_addr)
        assert check(srv)[1] is None


@needs_ipv6
def test_tcp_ipv6_pair():
    with connected(socket.AF_INET6, ("::1", 0)) as (srv, cli, acc, accept_addr):
        local, peer = check(cli)
        assert local[0] == "::1" and len(local) == 4
        assert peer == srv.getsockname()
        check(acc)
        assert_same(sockaddr_names(acc.fileno())[1], accept_addr)
        check(srv)


@needs_ipv6
def test_ipv6_wildcard_listener():
    with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
        s.bind(("::", 0))
        assert check(s)[0][0] == "::"


@needs_ipv6
@pytest.mark.parametrize(
    ("target", "text"),
    [
        ("::ffff:127.0.0.2", "::ffff:127.0.0.2"),
        ("0:0:0:0:0:0:0:1", "::1"),
        ("2001:db8:0:0:1:0:0:1", "2001:db8::1:0:0:1"),
        ("2001:db8:0:1:0:0:0:0", "2001:db8:0:1::"),
    ],
)
def test_ipv6_text_form(target, text):
    # inet_ntop's form: the leftmost longest zero run is compressed, the
    # IPv4-mapped form keeps a dotted quad. Connecting a UDP socket sends nothing.
    with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as s:
        try:
            s.connect((target, 9))
        except OSError as exc:
            pytest.skip(f"no route to {target}: {exc}")
        _, peer = check(s)
        assert peer[0] == text


@needs_ipv6
def test_ipv4_mapped_ipv6_peer():
    with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as srv:
        try:
            srv.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            srv.bind(("::", 0))
        except OSError as exc:
            pytest.skip(f"dual-stack IPv6 listener not available: {exc}")
        srv.listen(1)
        with socket.create_connection(("127.0.0.1", srv.getsockname()[1])) as cli:
            acc, accept_addr = srv.accept()
            with acc:
                local, peer = check(acc)
                assert local[0] == "::ffff:127.0.0.1"
                assert peer[0] == "::ffff:127.0.0.1"
                assert peer[1] == cli.getsockname()[1]
                assert_same(peer, accept_addr)
                check(cli)


def test_unix_socketpair_unnamed():
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    with a, b:
        assert check(a) == ("", "")
        assert check(b) == ("", "")


@pytest.mark.parametrize("name", ["plain.sock", "s\u00f6ck-\u00fc\u20ac-\U0001f600.sock"])
def test_unix_path_pair(short_tmpdir, name):
    path = os.path.join(short_tmpdir, name)
    with connected(socket.AF_UNIX, path) as (srv, cli, acc, accept_addr):
        assert check(srv) == (path, None)
        assert check(cli) == ("", path)
        assert check(acc) == (path, "")
        assert_same(sockaddr_names(acc.fileno())[1], accept_addr)


def test_unix_path_undecodable_bytes(short_tmpdir):
    # Bytes that are not valid in the filesystem encoding come back as
    # surrogate escapes, as os.fsdecode gives.
    path = os.fsencode(short_tmpdir) + b"/bad-\xff\xfe.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.bind(path)
        local, _ = check(s)
        assert local == os.fsdecode(path)


def test_unix_path_longest(short_tmpdir):
    # 107 bytes plus the NUL fill sun_path (108 bytes) exactly.
    path = short_tmpdir + "/" + "x" * (107 - len(short_tmpdir) - 1)
    assert len(os.fsencode(path)) == 107
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.bind(path)
        assert check(s)[0] == path


def test_unix_abstract():
    name = b"\0ferroloop-test-" + uuid.uuid4().hex.encode()
    with connected(socket.AF_UNIX, name) as (srv, cli, acc, accept_addr):
        assert check(srv) == (name, None)
        assert check(cli) == ("", name)
        assert check(acc) == (name, "")
        assert_same(sockaddr_names(acc.fileno())[1], accept_addr)
        assert type(check(srv)[0]) is bytes


def test_unix_abstract_with_embedded_nuls():
    name = b"\0fl\0" + uuid.uuid4().hex.encode() + b"\0"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.bind(name)
        assert check(s)[0] == name


def test_unix_abstract_longest():
    # b"\0" and 107 more bytes fill sun_path; no terminator.
    name = (b"\0fl-" + uuid.uuid4().hex.encode() * 4)[:108]
    with connected(socket.AF_UNIX, name) as (srv, cli, acc, _):
        assert check(srv)[0] == name
        assert check(cli)[1] == name
        check(acc)


def test_unix_autobind():
    # Binding to '' autobinds to an abstract name: b'\0' and 5 hex digits.
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.bind("")
        local, _ = check(s)
        assert type(local) is bytes and local[:1] == b"\0" and len(local) == 6


def test_unconnected_peer_is_none():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        with pytest.raises(OSError):
            s.getpeername()
        assert_same(sockaddr_names(s.fileno()), (("0.0.0.0", 0), None))
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        assert_same(sockaddr_names(s.fileno()), ("", None))


def test_udp_connected():
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as a:
        a.bind(("127.0.0.1", 0))
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as b:
            b.connect(a.getsockname())
            check(b)


def test_unsupported_family_is_none():
    try:
        s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
    except (AttributeError, OSError) as exc:
        pytest.skip(f"AF_NETLINK sockets not available: {exc}")
    with s:
        s.bind((0, 0))
        assert s.getsockname()  # Python handles it...
        assert sockaddr_names(s.fileno()) == (None, None)  # ...Rust leaves it to Python.


def test_bad_fd():
    r, w = os.pipe()
    try:
        assert sockaddr_names(r) == (None, None)
    finally:
        os.close(r)
        os.close(w)
