//! What the command and the subscriber connection share: connecting with a deadline, the
//! AUTH/SELECT/HELLO handshake, a read buffer that yields replies, a one-shot reply slot,
//! and the reconnect backoff.
//!
//! Invariants: nothing here waits without a deadline (connect and handshake run under the
//! connect timeout; the reader only waits for the socket inside loops whose owner races it
//! against a timer or a teardown); host names are resolved on glommio's blocking thread
//! pool, never on the executor.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use futures_lite::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use glommio::net::TcpStream;
use glommio::timer::Timer;
use redis::Value;
use tracing::{debug, info, warn};

use super::client::ClientOptions;
use super::resp::{self, Limits, RespError};
use super::url::{Protocol, RedisUrl};

/// Why a connection could not be set up or stopped working. Logged by the connection
/// managers; callers see only `Unavailable` / `Disconnected`.
#[derive(Debug, thiserror::Error)]
pub enum ConnectionError {
    #[error("cannot resolve {host}: {cause}")]
    Resolve { host: String, cause: String },
    #[error("connect or handshake took longer than {0:?}")]
    ConnectTimeout(Duration),
    #[error("socket error: {0}")]
    Io(#[from] io::Error),
    #[error("Redis closed the connection")]
    Closed,
    #[error("Redis rejected {step}: {message}")]
    Handshake { step: &'static str, message: String },
    #[error("malformed reply: {0}")]
    Protocol(#[from] RespError),
    #[error("reply with no request waiting for it")]
    UnexpectedReply,
    #[error("a request timed out, so replies can no longer be matched to requests")]
    RequestTimedOut,
    #[error("no answer to a health-check PING within {0:?}")]
    HealthCheck(Duration),
}

impl From<glommio::GlommioError<()>> for ConnectionError {
    fn from(error: glommio::GlommioError<()>) -> Self {
        ConnectionError::Io(error.into())
    }
}

/// Opens a TCP connection to `url` and runs the handshake, all within `timeout`.
pub(super) async fn connect(
    url: &RedisUrl,
    client_name: Option<&str>,
    limits: &Limits,
    timeout: Duration,
) -> Result<(TcpStream, ReplyReader), ConnectionError> {
    let attempt = async {
        let mut last_error = None;
        // A name may resolve to several addresses (`localhost`: ::1 and 127.0.0.1): try
        // each in turn, all within the one deadline.
        for address in resolve(url).await? {
            match TcpStream::connect_timeout(address, timeout).await {
                Ok(stream) => {
                    // Requests are batched per executor turn already; Nagle would only
                    // add latency.
                    stream.set_nodelay(true)?;
                    return handshake(stream, url, client_name, limits).await;
                }
                Err(error) => last_error = Some(ConnectionError::from(error)),
            }
        }
        Err(last_error.unwrap_or(ConnectionError::Resolve {
            host: url.host.clone(),
            cause: "no address".into(),
        }))
    };
    deadline(timeout, attempt, || {
        ConnectionError::ConnectTimeout(timeout)
    })
    .await
}

async fn resolve(url: &RedisUrl) -> Result<Vec<SocketAddr>, ConnectionError> {
    if let Ok(ip) = url.host.parse::<IpAddr>() {
        return Ok(vec![SocketAddr::new(ip, url.port)]);
    }
    let host = url.host.clone();
    let port = url.port;
    // getaddrinfo blocks: run it on glommio's blocking thread pool, off the executor.
    glommio::executor()
        .spawn_blocking(move || {
            (host.as_str(), port)
                .to_socket_addrs()
                .map(Iterator::collect)
        })
        .await
        .map_err(|error| ConnectionError::Resolve {
            host: url.host.clone(),
            cause: error.to_string(),
        })
}

/// The commands that make a fresh connection ready, sent in one write.
fn handshake_commands(
    url: &RedisUrl,
    client_name: Option<&str>,
) -> Vec<(&'static str, redis::Cmd)> {
    let mut commands = Vec::new();
    match url.protocol {
        Protocol::Resp3 => {
            let mut hello = redis::cmd("HELLO");
            hello.arg(3);
            if let Some(password) = &url.password {
                hello
                    .arg("AUTH")
                    .arg(url.username.as_deref().unwrap_or("default"))
                    .arg(password);
            }
            commands.push(("HELLO", hello));
        }
        Protocol::Resp2 => {
            if let Some(password) = &url.password {
                let mut auth = redis::cmd("AUTH");
                if let Some(user) = &url.username {
                    auth.arg(user);
                }
                auth.arg(password);
                commands.push(("AUTH", auth));
            }
        }
    }
    if url.db != 0 {
        let mut select = redis::cmd("SELECT");
        select.arg(url.db);
        commands.push(("SELECT", select));
    }
    if let Some(name) = client_name {
        let mut setname = redis::cmd("CLIENT");
        setname.arg("SETNAME").arg(name);
        commands.push(("CLIENT SETNAME", setname));
    }
    commands
}

async fn handshake(
    mut stream: TcpStream,
    url: &RedisUrl,
    client_name: Option<&str>,
    limits: &Limits,
) -> Result<(TcpStream, ReplyReader), ConnectionError> {
    let mut reader = ReplyReader::new(limits.clone());
    let commands = handshake_commands(url, client_name);
    if commands.is_empty() {
        return Ok((stream, reader));
    }
    let mut packed = Vec::new();
    for (_, command) in &commands {
        packed.extend_from_slice(&command.get_packed_command());
    }
    stream.write_all(&packed).await?;
    for (step, _) in &commands {
        if let Value::ServerError(error) = reader.next(&mut stream).await? {
            return Err(ConnectionError::Handshake {
                step,
                message: format!("{} {}", error.code(), error.details().unwrap_or_default()),
            });
        }
    }
    Ok((stream, reader))
}

/// Races `future` against a timer; `on_timeout` makes the error when the timer wins.
pub(super) async fn deadline<T, E>(
    timeout: Duration,
    future: impl Future<Output = Result<T, E>>,
    on_timeout: impl FnOnce() -> E,
) -> Result<T, E> {
    let timer = async {
        Timer::new(timeout).await;
        Err(on_timeout())
    };
    futures_lite::future::or(future, timer).await
}

/// The bytes read off a connection and not yet decoded.
///
/// `buf[start..end]` is pending input; the buffer is allocated (and zeroed) once and grows
/// only when one reply is larger than it.
pub(super) struct ReplyReader {
    buf: Vec<u8>,
    start: usize,
    end: usize,
    limits: Limits,
}

/// Size of the read buffer, and so of one socket read.
const READ_CHUNK: usize = 64 * 1024;

impl ReplyReader {
    pub(super) fn new(limits: Limits) -> ReplyReader {
        ReplyReader {
            buf: vec![0; READ_CHUNK],
            start: 0,
            end: 0,
            limits,
        }
    }

    /// The next reply already in the buffer, if a complete one is there.
    pub(super) fn next_buffered(&mut self) -> Result<Option<Value>, ConnectionError> {
        match resp::decode(&self.buf[self.start..self.end], &self.limits)? {
            Some((value, used)) => {
                self.start += used;
                if self.start == self.end {
                    self.start = 0;
                    self.end = 0;
                }
                Ok(Some(value))
            }
            None => Ok(None),
        }
    }

    /// Reads more bytes from `stream` (at least one, or an error; end of stream is
    /// [`ConnectionError::Closed`]).
    pub(super) async fn read_more<R: AsyncRead + Unpin>(
        &mut self,
        stream: &mut R,
    ) -> Result<(), ConnectionError> {
        if self.end == self.buf.len() {
            if self.start > 0 {
                self.buf.copy_within(self.start..self.end, 0);
                self.end -= self.start;
                self.start = 0;
            } else {
                // One reply fills the whole buffer: grow. resp::Limits bounds how far.
                self.buf.resize(self.buf.len() * 2, 0);
            }
        }
        let read = stream.read(&mut self.buf[self.end..]).await?;
        if read == 0 {
            return Err(ConnectionError::Closed);
        }
        self.end += read;
        Ok(())
    }

    /// The next reply, reading as needed. Used only under a deadline.
    pub(super) async fn next<R: AsyncRead + Unpin>(
        &mut self,
        stream: &mut R,
    ) -> Result<Value, ConnectionError> {
        loop {
            if let Some(value) = self.next_buffered()? {
                return Ok(value);
            }
            self.read_more(stream).await?;
        }
    }
}

/// The writing side of one connection, shared by the tasks that queue requests and the
/// connection's writer: whether requests are accepted, the bytes waiting to be written, and
/// the flag that asks the manager to tear the connection down.
#[derive(Default)]
pub(super) struct Link {
    /// Connected and handshaken: requests are accepted.
    pub(super) up: bool,
    /// Counts connections, so a late timeout breaks only the connection it happened on.
    pub(super) generation: u64,
    /// Packed commands not yet written.
    outbound: Vec<u8>,
    /// Socket writes made, over all connections (pipelining shows as few writes).
    pub(super) writes: u64,
    writer: Option<Waker>,
    broken: bool,
    breaker: Option<Waker>,
}

impl Link {
    /// Appends packed commands and wakes the writer, which runs after the tasks already
    /// scheduled in this turn: everything they queue leaves in the same write.
    pub(super) fn queue(&mut self, packed: &[u8]) {
        self.outbound.extend_from_slice(packed);
        if let Some(writer) = self.writer.take() {
            writer.wake();
        }
    }

    pub(super) fn go_up(&mut self) {
        self.up = true;
        self.broken = false;
        self.generation += 1;
    }

    pub(super) fn go_down(&mut self) {
        self.up = false;
        self.outbound.clear();
        self.writer = None;
        self.breaker = None;
    }

    /// Asks for the connection of `generation` to be torn down, if it is still the current
    /// one. Requests fail fast from now on.
    pub(super) fn break_connection(&mut self, generation: u64) {
        if self.up && self.generation == generation {
            self.up = false;
            self.broken = true;
            if let Some(breaker) = self.breaker.take() {
                breaker.wake();
            }
        }
    }
}

/// Resolves when [`Link::break_connection`] asked for a teardown.
pub(super) async fn broken(link: &RefCell<Link>) -> Result<(), ConnectionError> {
    std::future::poll_fn(|cx| {
        let mut link = link.borrow_mut();
        if link.broken {
            Poll::Ready(Err(ConnectionError::RequestTimedOut))
        } else {
            link.breaker = Some(cx.waker().clone());
            Poll::Pending
        }
    })
    .await
}

/// Writes whatever was queued since the last write, in one write each time.
pub(super) async fn write_loop(
    link: &RefCell<Link>,
    mut writer: impl futures_lite::io::AsyncWrite + Unpin,
) -> Result<(), ConnectionError> {
    let mut batch = Vec::new();
    loop {
        std::future::poll_fn(|cx| {
            let mut link = link.borrow_mut();
            if link.outbound.is_empty() {
                link.writer = Some(cx.waker().clone());
                Poll::Pending
            } else {
                // Swap buffers: both allocations are reused for the life of the connection.
                std::mem::swap(&mut link.outbound, &mut batch);
                link.writes += 1;
                Poll::Ready(())
            }
        })
        .await;
        writer.write_all(&batch).await?;
        batch.clear();
    }
}

/// A one-shot, executor-local hand-over of a reply to the task waiting for it.
pub(super) struct Slot<T> {
    state: RefCell<SlotState<T>>,
}

struct SlotState<T> {
    value: Option<T>,
    waker: Option<Waker>,
}

impl<T> Slot<T> {
    pub(super) fn new() -> Rc<Slot<T>> {
        Rc::new(Slot {
            state: RefCell::new(SlotState {
                value: None,
                waker: None,
            }),
        })
    }

    /// Stores the value and wakes the waiter. A second fill replaces the first (never
    /// happens: each waiter is filled by exactly one owner).
    pub(super) fn fill(&self, value: T) {
        let waker = {
            let mut state = self.state.borrow_mut();
            state.value = Some(value);
            state.waker.take()
        };
        if let Some(waker) = waker {
            waker.wake();
        }
    }

    pub(super) fn wait(self: &Rc<Self>) -> SlotWait<T> {
        SlotWait {
            slot: Rc::clone(self),
        }
    }
}

pub(super) struct SlotWait<T> {
    slot: Rc<Slot<T>>,
}

impl<T> Future for SlotWait<T> {
    type Output = T;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<T> {
        let mut state = self.slot.state.borrow_mut();
        match state.value.take() {
            Some(value) => Poll::Ready(value),
            None => {
                state.waker = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    }
}

/// Keeps a connection up for the life of the task: connects with `options`, runs `session`
/// on the connection until it returns (the connection broke), waits out a backoff that
/// every successful connection resets, and starts over. `session` is told whether the
/// connection is a reconnection; `reconnects` counts those. `what` names the connection
/// in the log.
pub(super) async fn keep_connected<F, Fut>(
    url: &RedisUrl,
    options: &ClientOptions,
    reconnects: &Cell<u64>,
    what: &str,
    mut session: F,
) where
    F: FnMut(TcpStream, ReplyReader, bool) -> Fut,
    Fut: Future<Output = ()>,
{
    let mut backoff = Backoff::new(options.backoff_min, options.backoff_max);
    let mut failures = FailureReport::default();
    let mut connected_before = false;
    loop {
        let attempt = connect(
            url,
            options.client_name.as_deref(),
            &options.limits,
            options.connect_timeout,
        )
        .await;
        match attempt {
            Ok((stream, reader)) => {
                if let Some(attempts) = failures.connected() {
                    info!(
                        redis = %url.host_port(),
                        connection = what,
                        attempts,
                        "Redis reachable again"
                    );
                }
                backoff.reset();
                if connected_before {
                    reconnects.set(reconnects.get() + 1);
                }
                session(stream, reader, connected_before).await;
                connected_before = true;
            }
            Err(cause) => match failures.failed(Instant::now()) {
                Some(attempts) => warn!(
                    redis = %url.host_port(),
                    connection = what,
                    %cause,
                    attempts,
                    "cannot connect to Redis; retrying"
                ),
                None => debug!(redis = %url.host_port(), %cause, "{what} connect failed"),
            },
        }
        Timer::new(backoff.next_delay()).await;
    }
}

/// Runs one connection until it breaks and returns why: every reply goes to `receive` in
/// order, whatever the link queues is written as it comes, and a teardown asked on the
/// link, or `watchdog` failing, ends it.
pub(super) async fn serve(
    link: &RefCell<Link>,
    stream: TcpStream,
    mut reader: ReplyReader,
    mut receive: impl FnMut(Value) -> Result<(), ConnectionError>,
    watchdog: impl Future<Output = Result<(), ConnectionError>>,
) -> ConnectionError {
    let (mut read_half, write_half) = futures_lite::io::split(stream);
    let read_loop = async {
        loop {
            while let Some(value) = reader.next_buffered()? {
                receive(value)?;
            }
            reader.read_more(&mut read_half).await?;
        }
    };
    let watchdogs = futures_lite::future::or(broken(link), watchdog);
    let outcome: Result<(), ConnectionError> = futures_lite::future::or(
        futures_lite::future::or(read_loop, write_loop(link, write_half)),
        watchdogs,
    )
    .await;
    match outcome {
        Err(cause) => cause,
        Ok(()) => ConnectionError::Closed,
    }
}

/// How often a connection that keeps failing is reported again at `warn`.
const FAILURE_REPORT_EVERY: Duration = Duration::from_secs(30);

/// Which failed connect attempts are worth a warning: the first of a run of failures (an
/// instance started without Redis says so at once), then one every
/// [`FAILURE_REPORT_EVERY`], so a long outage does not flood the log at every backoff step.
#[derive(Debug, Default)]
pub(super) struct FailureReport {
    /// Failed attempts since the last successful connect.
    attempts: u64,
    /// When the last warning was due.
    reported_at: Option<Instant>,
}

impl FailureReport {
    /// An attempt failed at `now`: `Some(attempts so far)` when it is to be reported.
    pub(super) fn failed(&mut self, now: Instant) -> Option<u64> {
        self.attempts += 1;
        let due = self
            .reported_at
            .is_none_or(|at| now.duration_since(at) >= FAILURE_REPORT_EVERY);
        if due {
            self.reported_at = Some(now);
            return Some(self.attempts);
        }
        None
    }

    /// An attempt succeeded: `Some(failed attempts)` when failures were reported before.
    pub(super) fn connected(&mut self) -> Option<u64> {
        let reported = self.reported_at.take().map(|_| self.attempts);
        self.attempts = 0;
        reported
    }
}

/// Exponential backoff with jitter: each delay is drawn from `[d/2, d]` where `d` doubles
/// from `min` to `max`, so instances that lost Redis together do not return in lockstep.
pub(super) struct Backoff {
    min: Duration,
    max: Duration,
    current: Duration,
    rng: u64,
}

impl Backoff {
    pub(super) fn new(min: Duration, max: Duration) -> Backoff {
        // Seed from the clock and this value's address: distinct across shards and runs.
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        let here = &nanos as *const u64 as u64;
        Backoff {
            min,
            max: max.max(min),
            current: min,
            rng: nanos ^ here.rotate_left(32) ^ 0x9e37_79b9_7f4a_7c15,
        }
    }

    pub(super) fn reset(&mut self) {
        self.current = self.min;
    }

    pub(super) fn next_delay(&mut self) -> Duration {
        let ceiling = self.current;
        self.current = (self.current * 2).min(self.max);
        // splitmix64: tiny, good enough for jitter, no dependency.
        self.rng = self.rng.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.rng;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        let half = ceiling / 2;
        let spread = (ceiling - half).as_micros().max(1) as u64;
        half + Duration::from_micros(z % spread)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connect_failures_are_reported_first_then_every_so_often() {
        let start = Instant::now();
        let mut report = FailureReport::default();
        assert_eq!(report.connected(), None, "nothing failed: nothing to tell");
        assert_eq!(
            report.failed(start),
            Some(1),
            "the first failure is reported"
        );
        let second = Duration::from_secs(1);
        assert_eq!(report.failed(start + second), None);
        assert_eq!(report.failed(start + 2 * second), None);
        assert_eq!(
            report.failed(start + FAILURE_REPORT_EVERY),
            Some(4),
            "again once the period passed, with the count"
        );
        assert_eq!(report.failed(start + FAILURE_REPORT_EVERY + second), None);
        assert_eq!(
            report.connected(),
            Some(5),
            "back: how many attempts failed"
        );
        assert_eq!(report.connected(), None);
        // A new outage is reported at once again.
        let later = start + 3 * FAILURE_REPORT_EVERY;
        assert_eq!(report.failed(later), Some(1));
    }

    #[test]
    fn backoff_doubles_to_the_cap_with_jitter() {
        let mut backoff = Backoff::new(Duration::from_millis(50), Duration::from_secs(2));
        let ceilings = [50u64, 100, 200, 400, 800, 1600, 2000, 2000];
        for ceiling in ceilings {
            let delay = backoff.next_delay();
            let ceiling = Duration::from_millis(ceiling);
            assert!(
                delay >= ceiling / 2 && delay <= ceiling,
                "{delay:?} vs {ceiling:?}"
            );
        }
        backoff.reset();
        assert!(backoff.next_delay() <= Duration::from_millis(50));
    }

    fn packed(commands: &[(&'static str, redis::Cmd)]) -> Vec<String> {
        commands
            .iter()
            .map(|(_, cmd)| String::from_utf8_lossy(&cmd.get_packed_command()).into_owned())
            .collect()
    }

    #[test]
    fn handshake_sends_only_what_the_url_asks_for() {
        let url = RedisUrl::parse("redis://127.0.0.1").expect("url");
        assert!(handshake_commands(&url, None).is_empty());

        let url = RedisUrl::parse("redis://:pw@127.0.0.1/2").expect("url");
        assert_eq!(
            packed(&handshake_commands(&url, Some("kasagi"))),
            [
                "*2\r\n$4\r\nAUTH\r\n$2\r\npw\r\n",
                "*2\r\n$6\r\nSELECT\r\n$1\r\n2\r\n",
                "*3\r\n$6\r\nCLIENT\r\n$7\r\nSETNAME\r\n$6\r\nkasagi\r\n",
            ]
        );

        let url = RedisUrl::parse("redis://u:pw@127.0.0.1?protocol=resp3").expect("url");
        assert_eq!(
            packed(&handshake_commands(&url, None)),
            ["*5\r\n$5\r\nHELLO\r\n$1\r\n3\r\n$4\r\nAUTH\r\n$1\r\nu\r\n$2\r\npw\r\n"]
        );
    }
}
