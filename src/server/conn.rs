//! One accepted socket: the HTTP request, the upgrade, then the WebSocket loop.
//!
//! The WebSocket loop is a single task that polls the socket for reading and writing in
//! one `poll_fn`: no split stream, no lock, no second task. Reads go into a per-shard
//! scratch buffer, so an idle connection holds no read buffer at all; only the bytes of an
//! incomplete frame are copied into the connection's own buffer. Events are handled
//! synchronously as they are decoded (the shard never awaits), and answers are queued on
//! the connection's [`Outbound`](super::outbound::Outbound), written in the same loop.
//!
//! Invariants:
//! - Nothing a client sends can panic the task or make it hold more than the configured
//!   limits: frames and messages are bounded by the reader, answers by the outbound queue
//!   (reading pauses while answers alone fill it).
//! - A busy connection yields to the executor after a bounded number of reads per poll.

use std::cell::RefCell;
use std::future::poll_fn;
use std::io;
use std::rc::Rc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_lite::FutureExt;
use glommio::timer::Timer;
use tracing::{debug, info, warn};

use super::auth::Grant;
use super::metrics::{self, ShardMetrics};
use super::outbound::Outbound;
use super::ratelimit::{TokenBucket, Verdict};
use super::readiness::{Listener, Socket};
use super::shard::{Conn, Shard};
use crate::protocol::{decode_client, DecodeError, Subprotocol};
use crate::ws::frame::{encode_frame, Opcode};
use crate::ws::handshake::{
    check_request_line, check_upgrade, parse_request, write_accept, write_refusal, write_response,
    HandshakeLimits, Refusal, UpgradePolicy,
};
use crate::ws::reader::{Incoming, Reader};
use crate::ws::{close_code, Limits as WsLimits};

/// Reads per poll before a connection yields to the others.
const READS_PER_POLL: usize = 16;
/// Size of the per-shard read buffer.
const SCRATCH_BYTES: usize = 64 * 1024;
/// How long a closing connection waits for the client's close before dropping the socket.
const CLOSE_LINGER: Duration = Duration::from_secs(1);

thread_local! {
    /// Every connection of a shard reads into this buffer (one executor per thread).
    static SCRATCH: RefCell<Vec<u8>> = RefCell::new(vec![0; SCRATCH_BYTES]);
}

/// What to do after an event.
pub enum Flow {
    Continue,
    /// Close the connection with this code and reason.
    Close(u16, &'static str),
}

/// What a WebSocket connection does with its messages.
pub trait Session {
    /// A complete data message (`opcode` is `Text` or `Binary`).
    fn on_message(&mut self, conn: &Rc<Conn>, opcode: Opcode, payload: &[u8]) -> Flow;
    /// The outbound queue drained.
    fn on_drained(&mut self, conn: &Rc<Conn>);
}

/// How a connection ended.
enum Exit {
    /// The client closed the TCP stream (or it broke).
    Gone,
    /// We sent a close frame and it is written.
    CloseSent { answered: bool },
}

/// The request that opened a connection, once its header block is complete.
enum Opened {
    /// Answered (plain HTTP or a refusal); close the socket.
    Done,
    /// Upgraded: the subprotocol, the grant, and bytes that followed the request.
    Upgraded {
        proto: Subprotocol,
        grant: Grant,
        rest: Vec<u8>,
    },
}

/// What the server does on an accepted socket.
#[derive(Clone, Copy)]
pub enum Mode {
    /// The Kasagi protocol on `/ws`.
    Serve,
    /// RFC 6455 echo on any path (conformance runs).
    Echo,
}

/// Serves one accepted socket to its end.
pub async fn serve_socket(shard: Rc<Shard>, socket: Socket, mode: Mode) {
    // Everything a connection holds for its life sits in one box; the handshake and the
    // closing linger are boxed futures of their own, so they cost nothing once done.
    // This keeps an idle connection to its socket, its state and this small future.
    socket.catch_up().await;
    // getpeername is a syscall per connection: only when the debug lines will be written.
    let peer = tracing::enabled!(tracing::Level::DEBUG)
        .then(|| socket.peer_addr().ok())
        .flatten();
    let opened = match Box::pin(read_request(&shard, &socket, mode)).await {
        Ok(opened) => opened,
        Err(err) => {
            ShardMetrics::add(&shard.metrics().handshake_refusals, 1);
            debug!(cause = %err, shard = shard.id, peer = ?peer, "handshake failed");
            return;
        }
    };
    let Opened::Upgraded { proto, grant, rest } = opened else {
        let _ = socket.shutdown_write();
        return;
    };
    ShardMetrics::add(&shard.metrics().handshakes, 1);
    debug!(shard = shard.id, peer = ?peer, subject = ?grant.subject, proto = proto.name(), "upgraded");
    let conn = match mode {
        Mode::Serve => shard.open_conn(proto, grant),
        Mode::Echo => Rc::new(Conn::new(
            0,
            "echo".into(),
            proto,
            Outbound::new(usize::MAX),
            grant,
        )),
    };
    let (limits, session) = match mode {
        Mode::Serve => {
            let config = &shard.config.limits;
            let bucket = TokenBucket::new(
                config.rate_limit,
                config.rate_burst,
                config.rate_abuse_limit,
                Instant::now(),
            );
            let session = Sessions::Room(RoomSession {
                shard: shard.clone(),
                bucket,
            });
            (ws_limits(&shard), session)
        }
        Mode::Echo => (WsLimits::unlimited_for_echo(), Sessions::Echo(Echo)),
    };
    let mut live = Box::new(Live {
        io: WsIo {
            reader: Reader::new(limits),
            pending: rest,
            read_open: true,
            answered_close: false,
        },
        session,
    });
    let exit = live.run(&shard, &socket, &conn).await;
    drop(live);
    if let Mode::Serve = mode {
        shard.close_conn(&conn);
    }
    if let Exit::CloseSent { answered } = exit {
        Box::pin(linger(&socket, answered)).await;
    }
}

/// A connection's state while its WebSocket is open.
struct Live {
    io: WsIo,
    session: Sessions,
}

impl Live {
    async fn run(&mut self, shard: &Shard, socket: &Socket, conn: &Rc<Conn>) -> Exit {
        let Live { io, session } = self;
        // Bytes that arrived with the request head are frames already.
        if !io.pending.is_empty() {
            let mut data = std::mem::take(&mut io.pending);
            let consumed = io.process(shard, conn, session, &mut data);
            io.pending = data.split_off(consumed);
        }
        let mut woken = false;
        poll_fn(|cx| {
            // Woken, for bytes to write or to read: the first read asks the socket, so an
            // op that arrived since the last `epoll_wait` is handled in this turn. Reads
            // after a short one wait for the next edge instead of an `EAGAIN`, and so does
            // the first read after the handshake, whose request left the socket drained.
            if std::mem::replace(&mut woken, true) {
                socket.retry();
            }
            io.poll(cx, shard, socket, conn, session)
        })
        .await
    }
}

/// The sessions a connection can run.
enum Sessions {
    Room(RoomSession),
    Echo(Echo),
}

impl Session for Sessions {
    fn on_message(&mut self, conn: &Rc<Conn>, opcode: Opcode, payload: &[u8]) -> Flow {
        match self {
            Sessions::Room(s) => s.on_message(conn, opcode, payload),
            Sessions::Echo(s) => s.on_message(conn, opcode, payload),
        }
    }

    fn on_drained(&mut self, conn: &Rc<Conn>) {
        match self {
            Sessions::Room(s) => s.on_drained(conn),
            Sessions::Echo(s) => s.on_drained(conn),
        }
    }
}

fn ws_limits(shard: &Shard) -> WsLimits {
    let l = &shard.config.limits;
    WsLimits {
        max_frame_size: l.max_frame_bytes,
        max_message_size: l.max_message_bytes,
        max_fragments: l.max_fragments,
    }
}

/// After our close frame is written: when the client started the close, we close the TCP
/// stream first (RFC 6455 7.1.1: dropping the socket closes it, with a FIN after what is
/// queued); otherwise we end our direction and give the client a moment to answer with
/// its own close.
async fn linger(socket: &Socket, answered: bool) {
    if answered {
        return;
    }
    let _ = socket.shutdown_write();
    let deadline = Instant::now() + CLOSE_LINGER;
    let mut sink = [0u8; 512];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let read = socket
            .recv(&mut sink)
            .or(async {
                Timer::new(left).await;
                Ok(0)
            })
            .await;
        if !matches!(read, Ok(n) if n > 0) {
            return;
        }
    }
}

/// Reads the request head within the handshake deadline and answers it.
async fn read_request(shard: &Shard, socket: &Socket, mode: Mode) -> io::Result<Opened> {
    let limits = &shard.config.limits;
    let deadline = Instant::now() + limits.handshake_timeout;
    let head_limits = HandshakeLimits {
        max_header_bytes: limits.max_header_bytes,
        max_headers: limits.max_headers,
    };
    // Heap, not the task's stack frame: a future keeps its locals for its whole life.
    let mut buf = Vec::with_capacity(1024);
    loop {
        let mut response = Vec::new();
        let outcome = match parse_request(&buf, &head_limits) {
            Ok(Some((request, head_len))) => {
                Some(route(shard, &request, head_len, mode, &mut response))
            }
            Ok(None) => None,
            Err(refusal) => {
                ShardMetrics::add(&shard.metrics().handshake_refusals, 1);
                write_refusal(&mut response, &refusal);
                Some(Route::Answered)
            }
        };
        if let Some(outcome) = outcome {
            socket.send_all(&response).await?;
            return Ok(match outcome {
                Route::Answered => Opened::Done,
                Route::Upgrade {
                    proto,
                    grant,
                    head_len,
                } => Opened::Upgraded {
                    proto,
                    grant,
                    rest: buf.split_off(head_len),
                },
            });
        }
        let left = deadline.saturating_duration_since(Instant::now());
        let filled = buf.len();
        buf.resize(filled + 1024, 0);
        let read = socket
            .recv(&mut buf[filled..])
            .or(async {
                Timer::new(left).await;
                Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "handshake deadline passed",
                ))
            })
            .await;
        let n = read?;
        buf.truncate(filled + n);
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "closed during the handshake",
            ));
        }
    }
}

enum Route {
    Answered,
    Upgrade {
        proto: Subprotocol,
        grant: Grant,
        head_len: usize,
    },
}

/// Decides what a complete request gets, writing the HTTP answer into `out`.
fn route(
    shard: &Shard,
    request: &crate::ws::handshake::Request<'_>,
    head_len: usize,
    mode: Mode,
    out: &mut Vec<u8>,
) -> Route {
    let refuse = |out: &mut Vec<u8>, refusal: Refusal| {
        ShardMetrics::add(&shard.metrics().handshake_refusals, 1);
        write_refusal(out, &refusal);
        Route::Answered
    };
    let upgrade_path = match mode {
        Mode::Echo => true,
        Mode::Serve => request.path() == "/ws",
    };
    if !upgrade_path {
        if let Err(refusal) = check_request_line(request) {
            return refuse(out, refusal);
        }
        match request.path() {
            "/healthz" if !shard.stopping.get() => write_response(out, 200, "text/plain", b"ok\n"),
            "/healthz" => write_response(out, 503, "text/plain", b"draining\n"),
            "/metrics" => {
                // The answering shard's own figures are current; the others' a second old at most.
                shard.telemetry.publish(&shard.published, shard.id);
                let mut body = metrics::render(&shard.metrics);
                shard.published.render_prometheus(&mut body);
                write_response(out, 200, "text/plain; version=0.0.4", body.as_bytes());
            }
            "/debug/latency" => {
                shard.telemetry.publish(&shard.published, shard.id);
                let body = shard.published.render_hgrm();
                write_response(out, 200, "text/plain", body.as_bytes());
            }
            _ => write_response(out, 404, "text/plain", b"not found\n"),
        }
        return Route::Answered;
    }
    let names: &[&str] = match mode {
        Mode::Serve => &Subprotocol::NAMES,
        Mode::Echo => &[],
    };
    let policy = UpgradePolicy {
        subprotocols: names,
        allowed_origins: &shard.config.allowed_origins,
    };
    let upgrade = match check_upgrade(request, &policy) {
        Ok(upgrade) => upgrade,
        Err(refusal) => return refuse(out, refusal),
    };
    let grant = match (&shard.verifier, mode) {
        (Some(verifier), Mode::Serve) => match upgrade.token.map(|t| verifier.verify(t)) {
            Some(Ok(grant)) => grant,
            Some(Err(_)) | None => return refuse(out, Refusal::Unauthorized),
        },
        _ => Grant::default(),
    };
    let proto = upgrade
        .subprotocol
        .and_then(|i| Subprotocol::ALL.get(i).copied())
        .unwrap_or(Subprotocol::MsgPack);
    let name = upgrade.subprotocol.map(|i| names[i]);
    write_accept(out, &upgrade, name);
    Route::Upgrade {
        proto,
        grant,
        head_len,
    }
}

struct WsIo {
    reader: Reader,
    /// Bytes of an incomplete frame header or control frame, kept until the rest arrives.
    pending: Vec<u8>,
    read_open: bool,
    /// The client sent a close frame and ours answers it.
    answered_close: bool,
}

impl WsIo {
    fn poll(
        &mut self,
        cx: &mut Context<'_>,
        shard: &Shard,
        socket: &Socket,
        conn: &Rc<Conn>,
        session: &mut Sessions,
    ) -> Poll<Exit> {
        let metrics = shard.metrics();
        for _ in 0..READS_PER_POLL {
            // Write whatever is queued.
            {
                let mut out = conn.out.borrow_mut();
                let written =
                    out.write_with(Some(&shard.telemetry), |bytes| socket.poll_send(cx, bytes));
                match written {
                    Poll::Ready(Ok(n)) => ShardMetrics::add(&metrics.bytes_out, n as u64),
                    Poll::Ready(Err(_)) => return Poll::Ready(Exit::Gone),
                    Poll::Pending => {}
                }
                out.set_waker(cx.waker());
            }
            let drained = conn.out.borrow().is_empty();
            if drained {
                if conn.closing.get().is_some() {
                    return Poll::Ready(Exit::CloseSent {
                        answered: self.answered_close,
                    });
                }
                if conn.stale.get() {
                    session.on_drained(conn);
                    continue;
                }
            }
            if !self.read_open || conn.closing.get().is_some() || conn.out.borrow().is_congested() {
                return Poll::Pending;
            }
            match self.poll_read(cx, shard, socket, conn, session) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Exit::Gone),
                Poll::Ready(Ok(n)) => ShardMetrics::add(&metrics.bytes_in, n as u64),
                Poll::Ready(Err(_)) => return Poll::Ready(Exit::Gone),
                // Both directions wait: the socket wakes us for input, the outbound
                // queue for output.
                Poll::Pending => return Poll::Pending,
            }
        }
        // Busy: let the other connections run, then continue.
        cx.waker().wake_by_ref();
        Poll::Pending
    }

    /// Reads once and handles every complete event in what arrived.
    fn poll_read(
        &mut self,
        cx: &mut Context<'_>,
        shard: &Shard,
        socket: &Socket,
        conn: &Rc<Conn>,
        session: &mut Sessions,
    ) -> Poll<io::Result<usize>> {
        SCRATCH.with(|scratch| {
            let mut scratch = scratch.borrow_mut();
            // What the reader left unconsumed is only an incomplete frame header or control
            // frame (at most 139 bytes): it goes in front of the new bytes, so every read,
            // split frame or not, lands in the shard's buffer.
            let carried = self.pending.len();
            if scratch.len() < carried + SCRATCH_BYTES / 2 {
                scratch.resize(carried + SCRATCH_BYTES / 2, 0);
            }
            scratch[..carried].copy_from_slice(&self.pending);
            let n = match socket.poll_recv(cx, &mut scratch[carried..]) {
                Poll::Ready(Ok(n)) if n > 0 => n,
                other => return other,
            };
            self.pending.clear();
            let end = carried + n;
            let consumed = self.process(shard, conn, session, &mut scratch[..end]);
            if consumed < end && self.read_open {
                self.pending.extend_from_slice(&scratch[consumed..end]);
            }
            Poll::Ready(Ok(n))
        })
    }

    /// Decodes and handles events from `data`; returns how many bytes were consumed.
    fn process(
        &mut self,
        shard: &Shard,
        conn: &Rc<Conn>,
        session: &mut Sessions,
        data: &mut [u8],
    ) -> usize {
        let metrics = shard.metrics();
        let mut at = 0;
        while self.read_open {
            let (n, event) = match self.reader.read(&mut data[at..]) {
                Ok(step) => step,
                Err(err) => {
                    ShardMetrics::add(&metrics.protocol_errors, 1);
                    debug!(cause = %err, shard = shard.id, member = %conn.member, "closing on a protocol error");
                    conn.close(err.close_code(), "protocol error");
                    self.read_open = false;
                    break;
                }
            };
            let flow = match event {
                None => {
                    at += n;
                    if n == 0 {
                        break;
                    }
                    continue;
                }
                Some(Incoming::Text(text)) => {
                    ShardMetrics::add(&metrics.messages_in, 1);
                    session.on_message(conn, Opcode::Text, text.as_bytes())
                }
                Some(Incoming::Binary(bytes)) => {
                    ShardMetrics::add(&metrics.messages_in, 1);
                    session.on_message(conn, Opcode::Binary, bytes)
                }
                Some(Incoming::Ping(payload)) => {
                    conn.out
                        .borrow_mut()
                        .push_control(Bytes::from(encode_frame(Opcode::Pong, payload)));
                    Flow::Continue
                }
                Some(Incoming::Pong(_)) => Flow::Continue,
                Some(Incoming::Close(frame)) => {
                    self.answered_close = true;
                    self.read_open = false;
                    match frame {
                        Some(frame) => conn.close(frame.code, ""),
                        None => conn.close_empty(),
                    }
                    Flow::Continue
                }
            };
            at += n;
            if let Flow::Close(code, reason) = flow {
                ShardMetrics::add(&metrics.protocol_errors, 1);
                conn.close(code, reason);
                self.read_open = false;
            }
        }
        at
    }
}

/// The Kasagi protocol over one connection.
struct RoomSession {
    shard: Rc<Shard>,
    bucket: TokenBucket,
}

impl Session for RoomSession {
    fn on_message(&mut self, conn: &Rc<Conn>, opcode: Opcode, payload: &[u8]) -> Flow {
        let expected = super::encode::opcode_of(conn.proto);
        if opcode != expected {
            return Flow::Close(
                close_code::UNSUPPORTED,
                "wrong frame type for the subprotocol",
            );
        }
        let now = Instant::now();
        match self.bucket.take(now) {
            Verdict::Allow => {}
            Verdict::Refuse => {
                self.shard.on_rate_limited(conn);
                return Flow::Continue;
            }
            Verdict::Abuse => {
                warn!(shard = self.shard.id, member = %conn.member, "closing a connection that ignores rate limiting");
                return Flow::Close(close_code::POLICY, "sustained rate limit abuse");
            }
        }
        match decode_client(payload, conn.proto) {
            Ok(msg) => self.shard.on_request(conn, msg, now),
            Err(DecodeError::Malformed(_)) => {
                return Flow::Close(close_code::INVALID_PAYLOAD, "message does not decode");
            }
            Err(DecodeError::BadRequest { message, room, seq }) => {
                self.shard
                    .on_bad_request(conn, &message, room.as_ref(), seq);
            }
        }
        Flow::Continue
    }

    fn on_drained(&mut self, conn: &Rc<Conn>) {
        self.shard.request_resyncs(conn);
    }
}

/// RFC 6455 echo, for conformance runs.
struct Echo;

impl Session for Echo {
    fn on_message(&mut self, conn: &Rc<Conn>, opcode: Opcode, payload: &[u8]) -> Flow {
        conn.out
            .borrow_mut()
            .push_control(Bytes::from(encode_frame(opcode, payload)));
        Flow::Continue
    }

    fn on_drained(&mut self, conn: &Rc<Conn>) {
        conn.stale.set(false);
    }
}

/// Accepts connections until the shard cancels the task (at the start of a drain).
pub async fn accept_loop(shard: Rc<Shard>, listener: Listener, mode: Mode) {
    // Accept errors (out of descriptors, mostly) back off from 10 ms to 1 s and are logged
    // once per episode, not once per retry.
    let mut backoff = Duration::ZERO;
    loop {
        match listener.accept().await {
            Ok(socket) => {
                if !backoff.is_zero() {
                    info!(shard = shard.id, "accepting again");
                    backoff = Duration::ZERO;
                }
                glommio::spawn_local(serve_socket(shard.clone(), socket, mode)).detach();
            }
            // The client gave up between its handshake and our accept: nothing to back
            // off from.
            Err(err) if err.kind() == io::ErrorKind::ConnectionAborted => {}
            Err(err) => {
                if backoff.is_zero() {
                    warn!(cause = %err, shard = shard.id, "accept failed; backing off");
                }
                backoff = (backoff * 2).clamp(Duration::from_millis(10), Duration::from_secs(1));
                Timer::new(backoff).await;
            }
        }
    }
}
