//! The Pub/Sub connection of one shard.
//!
//! A [`Subscriber`] keeps the set of channels and patterns it should be subscribed to, and a
//! background task (the connection manager) that makes Redis agree: on every new
//! connection it subscribes the whole set again. Messages go to a handler, in the order
//! Redis sent them, from the connection's read loop (the handler must not block; it is a
//! plain `FnMut`, so it cannot await).
//!
//! Pub/Sub is at-most-once: whatever is published while the connection is down is lost.
//! The handler is told: [`SubscriberEvent::Disconnected`] when the connection breaks, and
//! [`SubscriberEvent::Reconnected`] once a new connection has every channel and pattern
//! subscribed again (confirmed by Redis): from then on nothing is missed, and a gap before
//! it is repaired from the log (see DESIGN.md, "Gap repair").
//!
//! A connection that goes quiet is checked: every
//! [`health_check_interval`](ClientOptions::health_check_interval) the subscriber sends a
//! `PING`; if the previous one got no answer by then, the connection is torn down.
//!
//! Dropping the last `Rc<Subscriber>` cancels the manager and closes the connection.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeSet, VecDeque};
use std::rc::Rc;

use bytes::Bytes;
use glommio::timer::Timer;
use glommio::Task;
use redis::Value;
use tracing::{info, warn};

use super::client::{ClientOptions, Error};
use super::conn::{self, ConnectionError, Link, Slot};
use super::url::{RedisUrl, UrlError};

/// What the subscriber tells its handler.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SubscriberEvent {
    /// A message published on a subscribed channel.
    Message { channel: Bytes, payload: Bytes },
    /// A message on a channel matching a subscribed pattern.
    PatternMessage {
        pattern: Bytes,
        channel: Bytes,
        payload: Bytes,
    },
    /// The connection broke: messages published from now until `Reconnected` are lost.
    Disconnected,
    /// A new connection is up and every channel and pattern is subscribed again: messages
    /// published from now on arrive; repair what was missed before. Also sent after the
    /// first connection when channels were subscribed while it was not yet up.
    Reconnected,
}

/// Which subscription command a confirmation answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Subscribe,
    Unsubscribe,
    PSubscribe,
    PUnsubscribe,
    Pong,
}

impl Kind {
    fn command(self) -> &'static str {
        match self {
            Kind::Subscribe => "SUBSCRIBE",
            Kind::Unsubscribe => "UNSUBSCRIBE",
            Kind::PSubscribe => "PSUBSCRIBE",
            Kind::PUnsubscribe => "PUNSUBSCRIBE",
            Kind::Pong => "PING",
        }
    }

    fn of_reply(kind: &[u8]) -> Option<Kind> {
        match kind {
            b"subscribe" => Some(Kind::Subscribe),
            b"unsubscribe" => Some(Kind::Unsubscribe),
            b"psubscribe" => Some(Kind::PSubscribe),
            b"punsubscribe" => Some(Kind::PUnsubscribe),
            b"pong" | b"PONG" => Some(Kind::Pong),
            _ => None,
        }
    }
}

/// Who waits for a confirmation.
enum Then {
    Caller(Rc<Slot<Result<(), Error>>>),
    /// Part of re-subscribing after a connect; the last one sends `Reconnected`.
    Resubscribed {
        last: bool,
    },
    Nothing,
}

/// A confirmation Redis owes us, in the order the commands were written.
struct Pending {
    kind: Kind,
    name: Bytes,
    then: Then,
}

#[derive(Default)]
struct Wanted {
    channels: BTreeSet<Bytes>,
    patterns: BTreeSet<Bytes>,
}

type Handler = Box<dyn FnMut(SubscriberEvent)>;

struct Shared {
    url: RedisUrl,
    options: ClientOptions,
    link: RefCell<Link>,
    wanted: RefCell<Wanted>,
    pending: RefCell<VecDeque<Pending>>,
    /// A PING was sent and its PONG has not come back yet.
    ping_outstanding: Cell<bool>,
    handler: RefCell<Handler>,
    reconnects: Cell<u64>,
}

/// The Pub/Sub connection of one shard. See the module doc.
pub struct Subscriber {
    shared: Rc<Shared>,
    _manager: Task<()>,
}

impl Subscriber {
    /// Starts the connection manager on the current glommio executor; `handler` gets every
    /// event. Returns at once. Must be called inside a glommio executor.
    ///
    /// The URL's db is irrelevant to Pub/Sub but still selected; `?protocol=resp3` is
    /// honoured (messages then arrive as pushes, handled the same).
    pub fn new(
        url: &str,
        options: ClientOptions,
        handler: impl FnMut(SubscriberEvent) + 'static,
    ) -> Result<Rc<Subscriber>, UrlError> {
        let url = RedisUrl::parse(url)?;
        let shared = Rc::new(Shared {
            url,
            options,
            link: RefCell::new(Link::default()),
            wanted: RefCell::new(Wanted::default()),
            pending: RefCell::new(VecDeque::new()),
            ping_outstanding: Cell::new(false),
            handler: RefCell::new(Box::new(handler)),
            reconnects: Cell::new(0),
        });
        let manager = glommio::spawn_local(manage(Rc::clone(&shared)));
        Ok(Rc::new(Subscriber {
            shared,
            _manager: manager,
        }))
    }

    pub fn is_connected(&self) -> bool {
        self.shared.link.borrow().up
    }

    /// Connections made after the first one.
    pub fn reconnects(&self) -> u64 {
        self.shared.reconnects.get()
    }

    /// The channels this subscriber keeps subscribed.
    pub fn channels(&self) -> Vec<Bytes> {
        self.shared
            .wanted
            .borrow()
            .channels
            .iter()
            .cloned()
            .collect()
    }

    /// Subscribes to `channel` and waits until Redis confirms.
    ///
    /// The channel is added to the set first, whatever happens next. While the connection
    /// is down this returns [`Error::Unavailable`] at once, and the channel is subscribed
    /// with the next connection (a `Reconnected` event tells when).
    pub async fn subscribe(&self, channel: impl Into<Bytes>) -> Result<(), Error> {
        let channel = channel.into();
        self.shared
            .wanted
            .borrow_mut()
            .channels
            .insert(channel.clone());
        self.confirm(Kind::Subscribe, channel).await
    }

    /// Unsubscribes from `channel` and waits until Redis confirms. While the connection is
    /// down this is `Ok`: the channel will not be subscribed again.
    pub async fn unsubscribe(&self, channel: impl AsRef<[u8]>) -> Result<(), Error> {
        let channel = Bytes::copy_from_slice(channel.as_ref());
        self.shared.wanted.borrow_mut().channels.remove(&channel);
        match self.confirm(Kind::Unsubscribe, channel).await {
            Err(Error::Unavailable) => Ok(()),
            outcome => outcome,
        }
    }

    /// [`subscribe`](Self::subscribe) for a glob pattern (`PSUBSCRIBE`).
    pub async fn psubscribe(&self, pattern: impl Into<Bytes>) -> Result<(), Error> {
        let pattern = pattern.into();
        self.shared
            .wanted
            .borrow_mut()
            .patterns
            .insert(pattern.clone());
        self.confirm(Kind::PSubscribe, pattern).await
    }

    /// [`unsubscribe`](Self::unsubscribe) for a pattern (`PUNSUBSCRIBE`).
    pub async fn punsubscribe(&self, pattern: impl AsRef<[u8]>) -> Result<(), Error> {
        let pattern = Bytes::copy_from_slice(pattern.as_ref());
        self.shared.wanted.borrow_mut().patterns.remove(&pattern);
        match self.confirm(Kind::PUnsubscribe, pattern).await {
            Err(Error::Unavailable) => Ok(()),
            outcome => outcome,
        }
    }

    async fn confirm(&self, kind: Kind, name: Bytes) -> Result<(), Error> {
        let slot = Slot::new();
        let generation = {
            let mut link = self.shared.link.borrow_mut();
            if !link.up {
                return Err(Error::Unavailable);
            }
            let mut cmd = redis::cmd(kind.command());
            cmd.arg(name.as_ref());
            link.queue(&cmd.get_packed_command());
            self.shared.pending.borrow_mut().push_back(Pending {
                kind,
                name,
                then: Then::Caller(Rc::clone(&slot)),
            });
            link.generation
        };
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
    fn emit(&self, event: SubscriberEvent) {
        (self.handler.borrow_mut())(event);
    }

    /// Marks the connection up and queues the subscription of the whole set, so that
    /// `subscribe` calls from now on go out after it, on the same connection.
    /// Returns whether anything was queued.
    fn go_up(&self) -> bool {
        let mut link = self.link.borrow_mut();
        link.go_up();
        let wanted = self.wanted.borrow();
        let mut pending = self.pending.borrow_mut();
        let total = wanted.channels.len() + wanted.patterns.len();
        let mut queued = 0;
        for (kind, names) in [
            (Kind::Subscribe, &wanted.channels),
            (Kind::PSubscribe, &wanted.patterns),
        ] {
            if names.is_empty() {
                continue;
            }
            let mut cmd = redis::cmd(kind.command());
            for name in names {
                cmd.arg(name.as_ref());
                queued += 1;
                pending.push_back(Pending {
                    kind,
                    name: name.clone(),
                    then: Then::Resubscribed {
                        last: queued == total,
                    },
                });
            }
            link.queue(&cmd.get_packed_command());
        }
        total > 0
    }

    fn go_down(&self) {
        self.link.borrow_mut().go_down();
        self.ping_outstanding.set(false);
        let pending = std::mem::take(&mut *self.pending.borrow_mut());
        for entry in pending {
            if let Then::Caller(slot) = entry.then {
                slot.fill(Err(Error::Disconnected));
            }
        }
    }

    /// Handles one frame from Redis: a message, or the confirmation of our oldest command.
    fn receive(&self, value: Value) -> Result<(), ConnectionError> {
        let mut items = match value {
            Value::Array(items) => items,
            Value::Push { kind, data } => {
                let mut items = vec![Value::BulkString(kind.to_string().into_bytes())];
                items.extend(data);
                items
            }
            // `PING` outside subscribed mode answers a plain `+PONG`.
            Value::SimpleString(pong) if pong == "PONG" => {
                vec![Value::BulkString(b"pong".to_vec())]
            }
            _ => return Err(ConnectionError::UnexpectedReply),
        }
        .into_iter()
        .map(bytes_of);
        let kind = items
            .next()
            .flatten()
            .ok_or(ConnectionError::UnexpectedReply)?;
        match &kind[..] {
            b"message" => {
                let (Some(Some(channel)), Some(Some(payload))) = (items.next(), items.next())
                else {
                    return Err(ConnectionError::UnexpectedReply);
                };
                self.emit(SubscriberEvent::Message { channel, payload });
                Ok(())
            }
            b"pmessage" => {
                let (Some(Some(pattern)), Some(Some(channel)), Some(Some(payload))) =
                    (items.next(), items.next(), items.next())
                else {
                    return Err(ConnectionError::UnexpectedReply);
                };
                self.emit(SubscriberEvent::PatternMessage {
                    pattern,
                    channel,
                    payload,
                });
                Ok(())
            }
            other => {
                let kind = Kind::of_reply(other).ok_or(ConnectionError::UnexpectedReply)?;
                let name = items.next().flatten().unwrap_or_default();
                self.confirmed(kind, name)
            }
        }
    }

    fn confirmed(&self, kind: Kind, name: Bytes) -> Result<(), ConnectionError> {
        let entry = {
            let mut pending = self.pending.borrow_mut();
            match pending.front() {
                // A PONG carries no name worth comparing ("" or the PING argument).
                Some(front) if front.kind == kind && (kind == Kind::Pong || front.name == name) => {
                    pending.pop_front()
                }
                _ => return Err(ConnectionError::UnexpectedReply),
            }
        };
        let Some(entry) = entry else {
            return Err(ConnectionError::UnexpectedReply);
        };
        if kind == Kind::Pong {
            self.ping_outstanding.set(false);
        }
        match entry.then {
            Then::Caller(slot) => slot.fill(Ok(())),
            Then::Resubscribed { last: true } => self.emit(SubscriberEvent::Reconnected),
            Then::Resubscribed { last: false } | Then::Nothing => {}
        }
        Ok(())
    }

    /// Sends a PING every health-check interval; fails when the previous one is still
    /// unanswered.
    async fn health_check(&self) -> Result<(), ConnectionError> {
        loop {
            Timer::new(self.options.health_check_interval).await;
            if self.ping_outstanding.get() {
                return Err(ConnectionError::HealthCheck(
                    self.options.health_check_interval,
                ));
            }
            self.ping_outstanding.set(true);
            self.link
                .borrow_mut()
                .queue(&redis::cmd("PING").get_packed_command());
            self.pending.borrow_mut().push_back(Pending {
                kind: Kind::Pong,
                name: Bytes::new(),
                then: Then::Nothing,
            });
        }
    }
}

fn bytes_of(value: Value) -> Option<Bytes> {
    match value {
        Value::BulkString(bytes) => Some(Bytes::from(bytes)),
        Value::SimpleString(text) => Some(Bytes::from(text)),
        _ => None,
    }
}

/// Connect, re-subscribe, serve until broken, back off, again.
async fn manage(shared: Rc<Shared>) {
    let shared = &shared;
    conn::keep_connected(
        &shared.url,
        &shared.options,
        &shared.reconnects,
        "redis subscriber",
        |stream, reader, reconnect| async move {
            info!(redis = %shared.url, "redis subscriber connected");
            let resubscribing = shared.go_up();
            if !resubscribing && reconnect {
                shared.emit(SubscriberEvent::Reconnected);
            }
            let cause = conn::serve(
                &shared.link,
                stream,
                reader,
                |value| shared.receive(value),
                shared.health_check(),
            )
            .await;
            shared.go_down();
            shared.emit(SubscriberEvent::Disconnected);
            warn!(redis = %shared.url, %cause, "redis subscriber connection lost");
        },
    )
    .await;
}
