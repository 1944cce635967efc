//! `SO_REUSEPORT` listeners: one listening socket per shard, one port.
//!
//! Every shard accepts on its own socket and the kernel spreads incoming
//! connections over the group (by a hash of the 4-tuple), so there is no
//! acceptor thread and no hand-off between shards. The sockets are created in
//! `main`, before any shard exists, so a bad address or a port in use is an
//! ordinary error at startup, and `--listen 127.0.0.1:0` resolves to one real
//! port that every shard shares and that `main` can print.
//!
//! The hand-over to glommio ([`into_listener`]) and `setsockopt` for the options
//! socket2 does not wrap (`set_int_option`) are this module's only `unsafe`. The Kasagi
//! server does not hand its listeners to glommio: it makes them non-blocking and accepts
//! through its shard's epoll set ([`crate::SocketSet::poll_accept`]), which no incoming
//! connection can interrupt.
//!
//! # Blocking mode
//!
//! The sockets are left in blocking mode, on purpose, although nothing ever
//! blocks on them. glommio accepts through io_uring, which waits for a
//! connection by arming a poll internally. On an `O_NONBLOCK` file, io_uring
//! may instead hand back `EAGAIN` (it does for socket reads and writes on some
//! kernels; accept on the 6.x kernel here waits either way), which glommio
//! would report as a failed accept. glommio's own `bind` leaves sockets in
//! blocking mode, and its first, opportunistic accept sets `O_NONBLOCK` around
//! one syscall and then restores the flags. [`into_listener`] clears
//! `O_NONBLOCK` as well, so a socket made elsewhere works too.

use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, RawFd};

use glommio::net::TcpListener;
use socket2::{Domain, Protocol, Socket, Type};

/// Binds `count` listening sockets to `addr` with `SO_REUSEADDR` and
/// `SO_REUSEPORT`, each listening with `backlog`.
///
/// The sockets also carry `TCP_NODELAY`, which Linux copies to every socket
/// they accept: we write whole frames and never want Nagle to hold back a
/// delta, and setting it on the listener saves a `setsockopt` per connection.
///
/// They also carry `TCP_DEFER_ACCEPT` (see [`DEFER_ACCEPT_SECS`]): a connection
/// reaches `accept` only once its first bytes (the HTTP request) are in, so the
/// shard's first read of it finds data instead of arming a poll that the
/// client's next write has to complete, and a client that connects and never
/// speaks costs no accepted socket.
///
/// If `addr` has port 0, the first bind picks a free port and the others bind
/// that port. Returns the actual bound address and the sockets, ready for
/// [`into_listener`] (one per shard). Runs on any thread.
///
/// # Errors
///
/// `InvalidInput` if `count` is 0; otherwise the error of the failing socket
/// call (e.g. `AddrInUse` when another process holds the port without
/// `SO_REUSEPORT`, or under a different user).
pub fn bind_reuseport(
    addr: SocketAddr,
    count: usize,
    backlog: i32,
) -> io::Result<(SocketAddr, Vec<Socket>)> {
    if count == 0 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "cannot bind zero listeners",
        ));
    }
    let first = bind_one(addr, backlog)?;
    let bound = first
        .local_addr()?
        .as_socket()
        .ok_or_else(|| io::Error::other("bound socket has no IP address"))?;
    let mut sockets = Vec::with_capacity(count);
    sockets.push(first);
    for _ in 1..count {
        sockets.push(bind_one(bound, backlog)?);
    }
    Ok((bound, sockets))
}

fn bind_one(addr: SocketAddr, backlog: i32) -> io::Result<Socket> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    // Lets a restarted server bind while old connections sit in TIME_WAIT.
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.set_tcp_nodelay(true)?;
    set_defer_accept(&socket, DEFER_ACCEPT_SECS)?;
    socket.bind(&addr.into())?;
    socket.listen(backlog)?;
    Ok(socket)
}

/// How long Linux holds back a connection that has sent nothing, in seconds.
///
/// Linux turns it into a count of SYN-ACK retransmissions (1 s: one): a
/// client that connects and stays silent is accepted with its acknowledgement
/// of the retransmitted SYN-ACK, about a second after it connected, and from
/// then on the handshake deadline (`--handshake-timeout`) applies as usual.
pub const DEFER_ACCEPT_SECS: i32 = 1;

/// Sets `TCP_DEFER_ACCEPT` on a listening socket (socket2 has no setter).
fn set_defer_accept(socket: &Socket, secs: i32) -> io::Result<()> {
    set_int_option(
        socket.as_raw_fd(),
        libc::IPPROTO_TCP,
        libc::TCP_DEFER_ACCEPT,
        secs,
    )
}

/// `setsockopt` of an `int` option on an open socket `fd`: the crate's one wrapper, for
/// the options socket2 does not cover (`TCP_DEFER_ACCEPT` here, `SO_TIMESTAMPNS` in
/// [`crate::SocketSet::stamp_receives`]).
pub(crate) fn set_int_option(
    fd: RawFd,
    level: libc::c_int,
    name: libc::c_int,
    value: libc::c_int,
) -> io::Result<()> {
    // SAFETY: the option value is a live `c_int` and its exact size is passed with it; a
    // bad `fd` is an error from the kernel, not undefined behaviour.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            std::ptr::from_ref(&value).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Hands a listening socket from [`bind_reuseport`] to glommio.
///
/// # Panics
///
/// Outside a glommio executor: glommio ties the listener to the current
/// executor's reactor, so call this on the shard that will accept. In that
/// (buggy) case the descriptor is leaked, never closed twice.
pub fn into_listener(socket: Socket) -> TcpListener {
    // A failure here only means the flag could not be cleared; accept would
    // then report it, so there is nothing better to do with it now.
    let _ = socket.set_nonblocking(false);
    let fd = socket.into_raw_fd();
    // SAFETY: `fd` was just released by `into_raw_fd` from a `Socket` we owned
    // by value, so it is an open TCP socket that nothing else in the process
    // refers to or will close; ownership moves to the glommio listener exactly
    // once, which closes it on drop. glommio requires the fd to be bound and
    // listening: `bind_reuseport` guarantees it for its sockets, and for any
    // other socket `accept` fails with an ordinary `io::Error` (EINVAL), which
    // is not undefined behaviour. If `from_raw_fd` panics (no executor on this
    // thread), the fd is leaked, never closed twice.
    unsafe { TcpListener::from_raw_fd(fd) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, TcpListener as StdListener};

    fn loopback(port: u16) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, port))
    }

    #[test]
    fn port_zero_gives_every_socket_the_same_port() {
        let (addr, sockets) = bind_reuseport(loopback(0), 3, 128).unwrap();
        assert_ne!(addr.port(), 0);
        assert_eq!(sockets.len(), 3);
        for socket in &sockets {
            assert_eq!(socket.local_addr().unwrap().as_socket(), Some(addr));
            assert!(socket.reuse_port().unwrap());
            assert!(socket.reuse_address().unwrap());
        }
    }

    #[test]
    fn accepted_sockets_inherit_nodelay() {
        let (addr, mut sockets) = bind_reuseport(loopback(0), 1, 128).unwrap();
        let listener: StdListener = sockets.pop().unwrap().into();
        let mut client = std::net::TcpStream::connect(addr).unwrap();
        // Deferred accept: the connection is handed over with its first bytes.
        std::io::Write::write_all(&mut client, b"x").unwrap();
        let (accepted, _) = listener.accept().unwrap();
        assert!(accepted.nodelay().unwrap());
    }

    #[test]
    fn connections_reach_accept_with_their_first_bytes() {
        use std::io::{Read, Write};
        let (addr, mut sockets) = bind_reuseport(loopback(0), 1, 128).unwrap();
        let listener: StdListener = sockets.pop().unwrap().into();
        listener.set_nonblocking(true).unwrap();
        // On loopback the handshake is complete when `connect` returns, so
        // without the option the connection would already be acceptable.
        let mut client = std::net::TcpStream::connect(addr).unwrap();
        let silent = listener.accept().map(|_| ()).unwrap_err();
        assert_eq!(silent.kind(), io::ErrorKind::WouldBlock);
        client.write_all(b"GET / HTTP/1.1\r\n").unwrap();
        listener.set_nonblocking(false).unwrap();
        let (mut accepted, _) = listener.accept().unwrap();
        accepted.set_nonblocking(true).unwrap();
        let mut first = [0u8; 32];
        let n = accepted.read(&mut first).unwrap();
        assert_eq!(&first[..n], b"GET / HTTP/1.1\r\n");
    }

    #[test]
    fn zero_listeners_is_invalid_input() {
        let err = bind_reuseport(loopback(0), 0, 128).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
    }

    #[test]
    fn a_port_held_without_reuseport_is_address_in_use() {
        let holder = StdListener::bind(loopback(0)).unwrap();
        let port = holder.local_addr().unwrap().port();
        let err = bind_reuseport(loopback(port), 2, 128).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::AddrInUse);
    }
}
