//! One WebSocket client connection on a glommio executor: connect, upgrade, then a
//! [`WsReader`] and a [`WsWriter`] that share the socket.
//!
//! The two halves share the [`Socket`] through an `Rc`. With epoll readiness (the
//! default) glommio only connects it: the socket then leaves glommio before glommio's
//! first read poll on it reaches the kernel, and both halves go through the shard's
//! epoll set, so the server's first write to it does not pay for an io_uring completion
//! that interrupts the generator. With uring readiness both halves use glommio's stream,
//! borrowed only inside a single `poll_*` call, never across an `.await`, so a receiver
//! task and a sender task of one connection never conflict (glommio keeps separate read
//! and write sources).

use std::cell::RefCell;
use std::future::poll_fn;
use std::io;
use std::io::IoSliceMut;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::pin::Pin;
use std::rc::Rc;
use std::time::Duration;

use futures_lite::{AsyncRead, AsyncWrite};
use glommio::net::TcpStream;
use kasagi_shards::SocketSet;
use thiserror::Error;

use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};
use nix::sys::time::TimeSpec;

use crate::epoll;
use crate::runner;
use crate::wire::Proto;
use crate::wsclient::{self, ClientWsError, MaskKeys, Upgrade};

/// The largest frame or message the bench accepts from the server (a `joined` of a big
/// room is about as large as the server's state limit).
pub const MAX_MESSAGE_BYTES: usize = 64 << 20;

#[derive(Debug, Error)]
pub enum ConnError {
    #[error("i/o: {0}")]
    Io(#[from] io::Error),
    #[error("websocket: {0}")]
    Ws(#[from] ClientWsError),
    #[error("the server closed the connection")]
    Eof,
    #[error("the server sent close {0:?}")]
    Closed(Option<u16>),
    #[error("a {got} frame on subprotocol {proto}")]
    WrongFrameType {
        got: &'static str,
        proto: &'static str,
    },
    #[error("glommio: {0}")]
    Glommio(String),
    #[error("no upgrade within {0:?}")]
    HandshakeTimeout(Duration),
}

/// How long [`connect`] waits for the TCP connection and the `101` together: a server out
/// of file descriptors leaves connections in its backlog unanswered, and a bench that
/// waits forever for them never reports.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Where and how to connect.
#[derive(Debug, Clone)]
pub struct Target {
    pub addr: SocketAddr,
    pub host: String,
    pub path: String,
    pub proto: Proto,
    pub readiness: Readiness,
}

/// Where a connection's read readiness comes from (see [`crate::epoll`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Readiness {
    Epoll,
    Uring,
}

impl Readiness {
    pub fn name(self) -> &'static str {
        match self {
            Readiness::Epoll => "epoll",
            Readiness::Uring => "uring",
        }
    }
}

/// Opens a TCP connection and completes the upgrade, within [`HANDSHAKE_TIMEOUT`].
pub async fn connect(target: &Target, nonce: u64) -> Result<(WsReader, WsWriter), ConnError> {
    futures_lite::future::or(connect_untimed(target, nonce), async {
        glommio::timer::sleep(HANDSHAKE_TIMEOUT).await;
        Err(ConnError::HandshakeTimeout(HANDSHAKE_TIMEOUT))
    })
    .await
}

async fn connect_untimed(target: &Target, nonce: u64) -> Result<(WsReader, WsWriter), ConnError> {
    let socket = Rc::new(Socket::connect(target.addr, target.readiness).await?);
    let mut writer = WsWriter {
        socket: socket.clone(),
        keys: MaskKeys::new(nonce ^ 0xA5A5_5A5A_1234_8765),
        out: Vec::with_capacity(256),
    };
    let mut request = Vec::with_capacity(256);
    let upgrade: Upgrade = wsclient::write_upgrade(
        &mut request,
        &target.host,
        &target.path,
        Some(target.proto.name()),
        nonce,
    );
    writer.write_raw(&request).await?;
    let mut reader = WsReader::new(socket, target.proto);
    loop {
        if let Some(len) = wsclient::read_upgrade_response(reader.filled(), &upgrade)? {
            reader.start += len;
            break;
        }
        reader.fill().await?;
    }
    Ok((reader, writer))
}

/// A connection's socket: shared by a WebSocket connection's two halves, and the bare
/// TCP echo's (`ack`), so both go through the same reads and writes.
pub enum Socket {
    /// Read and written through glommio (uring readiness).
    Glommio(RefCell<TcpStream>),
    /// Read and written directly, waiting on the shard's epoll set.
    Epoll { fd: OwnedFd, set: Rc<SocketSet> },
}

impl Socket {
    /// Connects to `addr` (`TCP_NODELAY` on) and reads and writes through `readiness`.
    pub async fn connect(addr: SocketAddr, readiness: Readiness) -> Result<Socket, ConnError> {
        let stream = TcpStream::connect(addr)
            .await
            .map_err(|e| ConnError::Glommio(e.to_string()))?;
        stream
            .set_nodelay(true)
            .map_err(|e| ConnError::Glommio(e.to_string()))?;
        Ok(match readiness {
            Readiness::Epoll => Socket::leave_glommio(stream)?,
            Readiness::Uring => Socket::Glommio(RefCell::new(stream)),
        })
    }

    /// Takes a freshly connected stream away from glommio: a duplicate of its descriptor
    /// goes into the shard's epoll set and the stream is dropped. glommio queued a read
    /// poll when it made the stream, but only submits it at its next reactor turn, so
    /// dropping the stream now withdraws it before the kernel sees it. Two syscalls (the
    /// `dup` and the original's `close`) against an io_uring completion per connection.
    fn leave_glommio(stream: TcpStream) -> io::Result<Socket> {
        // SAFETY: the descriptor is open for as long as `stream` lives, past this call.
        let fd = unsafe { BorrowedFd::borrow_raw(stream.as_raw_fd()) }.try_clone_to_owned()?;
        drop(stream);
        let set = epoll::current()?;
        set.register(fd.as_raw_fd())?;
        Ok(Socket::Epoll { fd, set })
    }

    fn poll_send(
        &self,
        cx: &mut std::task::Context<'_>,
        bytes: &[u8],
    ) -> std::task::Poll<io::Result<usize>> {
        match self {
            Socket::Glommio(stream) => Pin::new(&mut *stream.borrow_mut()).poll_write(cx, bytes),
            Socket::Epoll { fd, set } => set.poll_send(fd.as_raw_fd(), cx, bytes),
        }
    }

    /// Writes all of `bytes`.
    pub async fn send_all(&self, mut bytes: &[u8]) -> Result<(), ConnError> {
        while !bytes.is_empty() {
            let n = poll_fn(|cx| self.poll_send(cx, bytes)).await?;
            if n == 0 {
                return Err(ConnError::Eof);
            }
            bytes = &bytes[n..];
        }
        Ok(())
    }

    /// Fills `buf` (an error if the peer closes first).
    pub async fn recv_exact(&self, buf: &mut [u8]) -> Result<(), ConnError> {
        match self {
            Socket::Glommio(stream) => {
                let mut filled = 0;
                while filled < buf.len() {
                    let n = poll_fn(|cx| {
                        Pin::new(&mut *stream.borrow_mut()).poll_read(cx, &mut buf[filled..])
                    })
                    .await?;
                    if n == 0 {
                        return Err(ConnError::Eof);
                    }
                    filled += n;
                }
                Ok(())
            }
            Socket::Epoll { fd, set } => Ok(set.recv_exact(fd.as_raw_fd(), buf).await?),
        }
    }
}

impl Drop for Socket {
    fn drop(&mut self) {
        if let Socket::Epoll { fd, set } = self {
            // Closing the descriptor right after takes it out of the set.
            set.forget(fd.as_raw_fd());
        }
    }
}

/// The receiving half: whole messages, with control frames handled.
pub struct WsReader {
    socket: Rc<Socket>,
    proto: Proto,
    buf: Vec<u8>,
    start: usize,
    end: usize,
    /// Payload of a fragmented message being assembled (servers rarely fragment).
    fragments: Vec<u8>,
    fragmented_opcode: Option<u8>,
    /// Bytes of the last message, when it had to be assembled.
    assembled: Vec<u8>,
    /// Room for the receive timestamp of a `recvmsg`, once [`Self::stamp_receives`]
    /// turned stamps on (epoll readiness only).
    cmsg: Option<Vec<u8>>,
    /// The kernel's receive time of the last bytes read, when it stamps them.
    rx_us: Option<RxStamp>,
}

/// A message as the bench sees it: a data payload, or the server's close.
pub enum Incoming<'a> {
    /// The payload, and when the kernel received the last bytes the bench read before it
    /// was whole (see [`WsReader::fill`]).
    Data(&'a [u8], Option<RxStamp>),
    Close(Option<u16>),
}

/// When the kernel queued received bytes on the socket, in µs on the bench clock
/// (`SO_TIMESTAMPNS`): the time a message reached the client's socket, before the
/// generator got round to reading it.
pub type RxStamp = u64;

impl WsReader {
    fn new(socket: Rc<Socket>, proto: Proto) -> Self {
        WsReader {
            socket,
            proto,
            buf: vec![0; 2048],
            start: 0,
            end: 0,
            fragments: Vec::new(),
            fragmented_opcode: None,
            assembled: Vec::new(),
            cmsg: None,
            rx_us: None,
        }
    }

    /// Has the kernel stamp what this connection receives, so that each [`Incoming::Data`]
    /// carries when its bytes reached the socket. Only with epoll readiness (glommio's
    /// reads take no ancillary data); a no-op otherwise. It costs the generator a
    /// `setsockopt` per connection and a `recvmsg` instead of a `recv` per read.
    pub fn stamp_receives(&mut self) -> io::Result<()> {
        if let Socket::Epoll { fd, .. } = &*self.socket {
            SocketSet::stamp_receives(fd.as_raw_fd())?;
            self.cmsg = Some(nix::cmsg_space!(TimeSpec));
        }
        Ok(())
    }

    fn filled(&self) -> &[u8] {
        &self.buf[self.start..self.end]
    }

    /// Reads more bytes from the socket into the buffer (growing it when full). Once
    /// [`Self::stamp_receives`] turned stamps on, the read is a `recvmsg` that also takes
    /// the kernel's receive timestamp of the newest bytes read; a message whole in the
    /// buffer before this read is credited with this read's (later) time, so the stamp
    /// errs late, never early.
    async fn fill(&mut self) -> Result<(), ConnError> {
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        } else if self.start > 0 && self.end == self.buf.len() {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        if self.end == self.buf.len() {
            let grown = (self.buf.len() * 2).min(MAX_MESSAGE_BYTES + 16);
            if grown == self.buf.len() {
                return Err(ClientWsError::FrameTooLarge(self.buf.len() as u64).into());
            }
            self.buf.resize(grown, 0);
        }
        let buf = &mut self.buf[self.end..];
        let n = match (&*self.socket, &mut self.cmsg) {
            (Socket::Epoll { fd, set: reactor }, Some(cmsg)) => {
                let fd = fd.as_raw_fd();
                let want = buf.len();
                let short = |&(n, _): &(usize, _)| n > 0 && n < want;
                let (n, stamp) = poll_fn(|cx| {
                    reactor.poll_read_with(fd, cx, short, || recv_stamped(fd, buf, cmsg))
                })
                .await?;
                if stamp.is_some() {
                    self.rx_us = stamp;
                }
                n
            }
            (Socket::Epoll { fd, set: reactor }, None) => {
                let fd = fd.as_raw_fd();
                poll_fn(|cx| reactor.poll_recv(fd, cx, buf)).await?
            }
            (Socket::Glommio(stream), _) => {
                poll_fn(|cx| Pin::new(&mut *stream.borrow_mut()).poll_read(cx, buf)).await?
            }
        };
        if n == 0 {
            return Err(ConnError::Eof);
        }
        self.end += n;
        Ok(())
    }

    /// The next data message or close. Pings are answered by the server's own keepalive
    /// rules only; the bench ignores them (the server does not ping).
    pub async fn next_message(&mut self) -> Result<Incoming<'_>, ConnError> {
        loop {
            let parsed = wsclient::read_frame(self.filled(), MAX_MESSAGE_BYTES as u64)?;
            let Some((head, len)) = parsed else {
                self.fill().await?;
                continue;
            };
            let frame_start = self.start;
            self.start += len;
            let payload = frame_start + head.payload.start..frame_start + head.payload.end;
            match head.opcode {
                wsclient::OP_CLOSE => {
                    let p = &self.buf[payload];
                    let code = (p.len() >= 2).then(|| u16::from_be_bytes([p[0], p[1]]));
                    return Ok(Incoming::Close(code));
                }
                wsclient::OP_PING | wsclient::OP_PONG => continue,
                wsclient::OP_CONTINUATION => {
                    self.fragments.extend_from_slice(&self.buf[payload]);
                    if head.fin {
                        self.fragmented_opcode = None;
                        self.assembled = std::mem::take(&mut self.fragments);
                        return Ok(Incoming::Data(&self.assembled, self.rx_us));
                    }
                }
                opcode => {
                    self.check_type(opcode)?;
                    if head.fin {
                        return Ok(Incoming::Data(&self.buf[payload], self.rx_us));
                    }
                    self.fragmented_opcode = Some(opcode);
                    self.fragments.clear();
                    self.fragments.extend_from_slice(&self.buf[payload]);
                }
            }
        }
    }

    fn check_type(&self, opcode: u8) -> Result<(), ConnError> {
        let binary = opcode == wsclient::OP_BINARY;
        if binary != self.proto.binary() {
            return Err(ConnError::WrongFrameType {
                got: if binary { "binary" } else { "text" },
                proto: self.proto.name(),
            });
        }
        Ok(())
    }
}

/// One non-blocking `recvmsg` into `buf`: the bytes read and the kernel's receive
/// timestamp of the newest of them, on the bench clock.
fn recv_stamped(
    fd: RawFd,
    buf: &mut [u8],
    cmsg: &mut Vec<u8>,
) -> io::Result<(usize, Option<RxStamp>)> {
    let mut iov = [IoSliceMut::new(buf)];
    let msg = recvmsg::<()>(fd, &mut iov, Some(cmsg), MsgFlags::MSG_DONTWAIT)?;
    let stamp = msg.cmsgs().find_map(|c| match c {
        ControlMessageOwned::ScmTimestampns(ts) => {
            let wall_us = ts.tv_sec() as u64 * 1_000_000 + ts.tv_nsec() as u64 / 1_000;
            Some(runner::wall_to_bench_us(wall_us))
        }
        _ => None,
    });
    Ok((msg.bytes, stamp))
}

/// The sending half: each message goes out as one masked frame.
pub struct WsWriter {
    socket: Rc<Socket>,
    keys: MaskKeys,
    out: Vec<u8>,
}

impl WsWriter {
    /// Sends one message: `encode` appends its payload to the buffer it is given.
    pub async fn send_with(
        &mut self,
        proto: Proto,
        encode: impl FnOnce(&mut Vec<u8>),
    ) -> Result<(), ConnError> {
        let mut payload = std::mem::take(&mut self.out);
        payload.clear();
        encode(&mut payload);
        let opcode = if proto.binary() {
            wsclient::OP_BINARY
        } else {
            wsclient::OP_TEXT
        };
        let mut frame = Vec::with_capacity(payload.len() + 14);
        wsclient::write_frame(&mut frame, opcode, &payload, self.keys.next_key());
        self.out = payload;
        self.write_raw(&frame).await
    }

    /// Sends a close frame with `code` (1000: normal).
    pub async fn close(&mut self, code: u16) -> Result<(), ConnError> {
        let mut frame = Vec::with_capacity(8);
        wsclient::write_frame(
            &mut frame,
            wsclient::OP_CLOSE,
            &code.to_be_bytes(),
            self.keys.next_key(),
        );
        self.write_raw(&frame).await
    }

    async fn write_raw(&mut self, bytes: &[u8]) -> Result<(), ConnError> {
        self.socket.send_all(bytes).await
    }
}
