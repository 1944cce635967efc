//! The pipelined command connection of one shard.
//!
//! A [`Client`] owns a background glommio task, the connection manager: it connects (with
//! a deadline), runs the handshake, then serves the connection until it breaks, and
//! reconnects with jittered exponential backoff. Callers never touch the socket:
//! [`Client::query`] appends the packed command to a shared output buffer and waits for its
//! reply in a FIFO of waiters.
//!
//! # Behaviour callers rely on
//!
//! - **Pipelining.** Commands queued by any number of tasks in one executor turn leave in one
//!   socket write (the writer runs after them and takes the whole buffer). Replies come back
//!   in the order commands were written, so the FIFO of waiters matches them.
//! - **Fail fast.** While the connection is down (connecting, handshaking, backing off) every
//!   request fails at once with [`Error::Unavailable`]; nothing is queued for later.
//! - **Bounded.** At most [`ClientOptions::max_in_flight`] requests (default 4096) are queued
//!   or awaiting replies; past that a request fails at once with [`Error::Overloaded`].
//! - **Deadlines.** Every request waits at most [`ClientOptions::request_timeout`] (default
//!   1 s), then fails with [`Error::Timeout`]. A timeout also breaks the connection: the late
//!   reply would otherwise be matched to the next waiter.
//! - **Unknown fate.** When the connection breaks (I/O error, Redis gone, a timeout), every
//!   request in flight fails with [`Error::Disconnected`]: it may or may not have run. The
//!   caller decides (Kasagi's appends are idempotent by tick and epoch).
//!
//! Dropping the last `Rc<Client>` cancels the manager task and closes the connection.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::mem;
use std::rc::Rc;
use std::time::Duration;

use glommio::Task;
use redis::{Cmd, FromRedisValue, Pipeline, ToRedisArgs, Value};
use tracing::{debug, info, warn};

use super::conn::{self, ConnectionError, Link, Slot};
use super::resp::{self, Limits};
use super::url::{RedisUrl, UrlError};

/// Settings of a [`Client`] (and of a [`Subscriber`](super::subscriber::Subscriber)).
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// How long a request waits for its reply. Default 1 s.
    pub request_timeout: Duration,
    /// How long connecting plus the handshake may take. Default 1 s.
    pub connect_timeout: Duration,
    /// Most requests queued or awaiting replies at once (a pipeline counts as one).
    /// Default 4096.
    pub max_in_flight: usize,
    /// First reconnect delay; doubles after each failed attempt. Default 50 ms.
    pub backoff_min: Duration,
    /// Largest reconnect delay. Default 2 s. Each delay is jittered down to half.
    pub backoff_max: Duration,
    /// Sent as `CLIENT SETNAME` when set, so `CLIENT LIST` shows which shard is which.
    /// Default none.
    pub client_name: Option<String>,
    /// Bounds on replies (see [`Limits`]).
    pub limits: Limits,
    /// Subscriber only: how often a subscriber connection sends `PING`; one left
    /// unanswered until the next resets the connection, so a silent dead link is found
    /// within two intervals. Default 1 s.
    pub health_check_interval: Duration,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            request_timeout: Duration::from_secs(1),
            connect_timeout: Duration::from_secs(1),
            max_in_flight: 4096,
            backoff_min: Duration::from_millis(50),
            backoff_max: Duration::from_secs(2),
            client_name: None,
            limits: Limits::default(),
            health_check_interval: Duration::from_secs(1),
        }
    }
}

/// Why a request got no reply value.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Error {
    /// The connection is down (the client is reconnecting). The request was not sent.
    #[error("Redis is unavailable (reconnecting); the request was not sent")]
    Unavailable,
    /// The connection broke while the request was in flight: it may or may not have run.
    #[error(
        "the connection to Redis broke with the request in flight; it may or may not have run"
    )]
    Disconnected,
    /// No reply within the request timeout (the connection is then reset).
    #[error("Redis did not answer within {0:?}")]
    Timeout(Duration),
    /// Too many requests in flight; the request was not sent.
    #[error("more than {limit} Redis requests in flight; the request was not sent")]
    Overloaded { limit: usize },
    /// Redis answered with an error reply, e.g. `code` = `"WRONGTYPE"`.
    #[error("Redis error {code}: {detail}")]
    Server { code: String, detail: String },
    /// A `MULTI`/`EXEC` pipeline was aborted because a `WATCH`ed key changed.
    #[error("transaction aborted (a watched key changed)")]
    TransactionAborted,
    /// The reply does not convert to the requested type.
    #[error("unexpected reply type: {0}")]
    Type(String),
}

impl Error {
    fn from_reply(value: &Value) -> Option<Error> {
        match value {
            Value::ServerError(error) => Some(Error::Server {
                code: error.code().to_owned(),
                detail: error.details().unwrap_or_default().to_owned(),
            }),
            _ => None,
        }
    }
}

/// A Lua script run by `EVALSHA`, loaded with `SCRIPT LOAD` when Redis does not know it.
#[derive(Debug, Clone)]
pub struct Script {
    code: String,
    hash: String,
}

impl Script {
    pub fn new(code: &str) -> Script {
        Script {
            code: code.to_owned(),
            hash: redis::Script::new(code).get_hash().to_owned(),
        }
    }

    /// SHA-1 of the code, hex, as `EVALSHA` wants it.
    pub fn hash(&self) -> &str {
        &self.hash
    }

    fn evalsha(&self, keys: Vec<Vec<u8>>, args: Vec<Vec<u8>>) -> Cmd {
        let mut cmd = redis::cmd("EVALSHA");
        cmd.arg(&self.hash).arg(keys.len()).arg(keys).arg(args);
        cmd
    }

    fn load(&self) -> Cmd {
        let mut cmd = redis::cmd("SCRIPT");
        cmd.arg("LOAD").arg(&self.code);
        cmd
    }
}

type Reply = Result<Vec<Value>, Error>;

/// One request in flight: how many replies it still needs, and who waits for them.
struct Waiter {
    expected: usize,
    replies: Vec<Value>,
    slot: Rc<Slot<Reply>>,
}

struct Shared {
    url: RedisUrl,
    options: ClientOptions,
    link: RefCell<Link>,
    /// Requests written or about to be, in write order.
    waiting: RefCell<VecDeque<Waiter>>,
    reconnects: Cell<u64>,
}

/// The command connection of one shard. See the module doc.
pub struct Client {
    shared: Rc<Shared>,
    _manager: Task<()>,
}

impl Client {
    /// Starts the connection manager on the current glommio executor and returns at once;
    /// the first connection is made in the background (until then requests get
    /// [`Error::Unavailable`]). Must be called inside a glommio executor.
    pub fn new(url: &str, options: ClientOptions) -> Result<Rc<Client>, UrlError> {
        let url = RedisUrl::parse(url)?;
        let shared = Rc::new(Shared {
            url,
            options,
            link: RefCell::new(Link::default()),
            waiting: RefCell::new(VecDeque::new()),
            reconnects: Cell::new(0),
        });
        let manager = glommio::spawn_local(manage(Rc::clone(&shared)));
        Ok(Rc::new(Client {
            shared,
            _manager: manager,
        }))
    }

    /// Whether the connection is up (requests are being sent).
    pub fn is_connected(&self) -> bool {
        self.shared.link.borrow().up
    }

    /// Connections made after the first one.
    pub fn reconnects(&self) -> u64 {
        self.shared.reconnects.get()
    }

    /// Socket writes made so far: with pipelining, far fewer than requests.
    pub fn writes(&self) -> u64 {
        self.shared.link.borrow().writes
    }

    /// Requests queued or awaiting replies.
    pub fn in_flight(&self) -> usize {
        self.shared.waiting.borrow().len()
    }

    pub fn url(&self) -> &RedisUrl {
        &self.shared.url
    }

    /// Sends one command and returns its reply. An error reply is [`Error::Server`].
    pub async fn query(&self, cmd: &Cmd) -> Result<Value, Error> {
        let mut replies = self.request(&cmd.get_packed_command(), 1).await?;
        let reply = replies.pop().unwrap_or(Value::Nil);
        match Error::from_reply(&reply) {
            Some(error) => Err(error),
            None => Ok(reply),
        }
    }

    /// [`query`](Self::query), converting the reply with `redis::FromRedisValue`.
    pub async fn query_as<T: FromRedisValue>(&self, cmd: &Cmd) -> Result<T, Error> {
        let reply = self.query(cmd).await?;
        T::from_owned_redis_value(reply).map_err(|error| Error::Type(error.to_string()))
    }

    /// Sends a pipeline in one write and returns one reply per command, error replies
    /// included as `Value::ServerError`. For an atomic pipeline (`.atomic()`, MULTI/EXEC)
    /// the replies are EXEC's; an aborted transaction is [`Error::TransactionAborted`] and a
    /// rejected one (EXECABORT) is [`Error::Server`].
    ///
    /// `Pipeline::ignore()` is not honoured: the crate does not expose which commands were
    /// ignored, so every command's reply is returned.
    pub async fn pipeline(&self, pipeline: &Pipeline) -> Result<Vec<Value>, Error> {
        let packed = pipeline.get_packed_pipeline();
        let commands = pipeline.cmd_iter().count();
        let sent = count_frames(&packed);
        if sent == 0 {
            return Ok(Vec::new());
        }
        let mut replies = self.request(&packed, sent).await?;
        if sent != commands + 2 {
            return Ok(replies);
        }
        // MULTI, QUEUED…, then EXEC's reply holds the results.
        match replies.pop() {
            Some(Value::Array(items)) => Ok(items),
            Some(Value::Nil) => Err(Error::TransactionAborted),
            Some(other) => Err(Error::from_reply(&other)
                .unwrap_or_else(|| Error::Type(format!("EXEC answered {other:?}")))),
            None => Err(Error::Disconnected),
        }
    }

    /// Runs `script` by `EVALSHA`; when Redis answers `NOSCRIPT` (after a restart or
    /// `SCRIPT FLUSH`), loads it with `SCRIPT LOAD` and runs it again.
    pub async fn eval(
        &self,
        script: &Script,
        keys: impl ToRedisArgs,
        args: impl ToRedisArgs,
    ) -> Result<Value, Error> {
        let evalsha = script.evalsha(keys.to_redis_args(), args.to_redis_args());
        match self.query(&evalsha).await {
            Err(Error::Server { code, .. }) if code == "NOSCRIPT" => {
                debug!(script = script.hash(), "NOSCRIPT: loading the script");
                self.query(&script.load()).await?;
                self.query(&evalsha).await
            }
            outcome => outcome,
        }
    }

    /// Queues `packed` (which yields `expected` replies) and waits for them.
    async fn request(&self, packed: &[u8], expected: usize) -> Reply {
        let (slot, generation) = self.shared.submit(packed, expected)?;
        let timeout = self.shared.options.request_timeout;
        let outcome = conn::deadline(timeout, async { slot.wait().await }, || {
            Error::Timeout(timeout)
        })
        .await;
        if matches!(outcome, Err(Error::Timeout(_))) {
            self.shared.link.borrow_mut().break_connection(generation);
        }
        outcome
    }
}

impl Shared {
    fn submit(&self, packed: &[u8], expected: usize) -> Result<(Rc<Slot<Reply>>, u64), Error> {
        let mut link = self.link.borrow_mut();
        if !link.up {
            return Err(Error::Unavailable);
        }
        let mut waiting = self.waiting.borrow_mut();
        if waiting.len() >= self.options.max_in_flight {
            return Err(Error::Overloaded {
                limit: self.options.max_in_flight,
            });
        }
        let slot = Slot::new();
        link.queue(packed);
        waiting.push_back(Waiter {
            expected,
            replies: Vec::with_capacity(expected),
            slot: Rc::clone(&slot),
        });
        Ok((slot, link.generation))
    }

    /// Marks the connection down and fails every request in flight.
    fn go_down(&self) {
        self.link.borrow_mut().go_down();
        let waiting = mem::take(&mut *self.waiting.borrow_mut());
        for waiter in waiting {
            waiter.slot.fill(Err(Error::Disconnected));
        }
    }

    /// Hands one reply to the oldest waiter.
    fn deliver(&self, value: Value) -> Result<(), ConnectionError> {
        if let Value::Push { kind, .. } = &value {
            // RESP3 pushes (e.g. client-side caching invalidations) answer no request.
            debug!(%kind, "ignoring push on the command connection");
            return Ok(());
        }
        let finished = {
            let mut waiting = self.waiting.borrow_mut();
            let waiter = waiting
                .front_mut()
                .ok_or(ConnectionError::UnexpectedReply)?;
            waiter.replies.push(value);
            if waiter.replies.len() < waiter.expected {
                return Ok(());
            }
            waiting.pop_front()
        };
        if let Some(waiter) = finished {
            waiter.slot.fill(Ok(waiter.replies));
        }
        Ok(())
    }
}

/// Number of complete RESP frames in packed commands (commands are arrays of bulks).
fn count_frames(mut packed: &[u8]) -> usize {
    let limits = Limits::default();
    let mut frames = 0;
    while let Ok(Some((_, used))) = resp::decode(packed, &limits) {
        packed = &packed[used..];
        frames += 1;
    }
    frames
}

/// The connection manager: connect, serve until broken, back off, again. Ends only when
/// the client is dropped (the task is cancelled).
async fn manage(shared: Rc<Shared>) {
    let shared = &shared;
    conn::keep_connected(
        &shared.url,
        &shared.options,
        &shared.reconnects,
        "redis",
        |stream, reader, _| async move {
            info!(redis = %shared.url, "redis connected");
            shared.link.borrow_mut().go_up();
            let cause = conn::serve(
                &shared.link,
                stream,
                reader,
                |value| shared.deliver(value),
                std::future::pending(),
            )
            .await;
            shared.go_down();
            warn!(redis = %shared.url, %cause, "redis connection lost");
        },
    )
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_tell_an_atomic_pipeline_from_a_plain_one() {
        let mut plain = redis::pipe();
        plain.cmd("INCR").arg("a").cmd("GET").arg("a");
        assert_eq!(count_frames(&plain.get_packed_pipeline()), 2);
        plain.atomic();
        assert_eq!(count_frames(&plain.get_packed_pipeline()), 4);
        assert_eq!(count_frames(&redis::pipe().get_packed_pipeline()), 0);
    }

    #[test]
    fn script_packs_evalsha_with_the_number_of_keys() {
        let script = Script::new("return 1");
        assert_eq!(script.hash(), "e0e1f9fabfc9d4800c877a703b823ac0578ff8db");
        let cmd = script.evalsha(vec![b"k".to_vec()], vec![b"a".to_vec(), b"b".to_vec()]);
        assert_eq!(
            cmd.get_packed_command(),
            b"*6\r\n$7\r\nEVALSHA\r\n$40\r\ne0e1f9fabfc9d4800c877a703b823ac0578ff8db\r\n\
              $1\r\n1\r\n$1\r\nk\r\n$1\r\na\r\n$1\r\nb\r\n"
        );
    }
}
