//! The ordered command stream of one shard to Redis.
//!
//! Why it exists: an owner's appends and everything it publishes after them (answers to
//! relayed requests, presence) must reach Redis in the order they were made, and a
//! relay's requests on `:in` in the order the clients sent them. The client pipelines
//! whatever is queued in one executor turn, but separate tasks would race for the queue.
//! Here every such command is queued synchronously, in order, with a [`Job`] that says
//! what its reply means; one task sends whatever accumulated as one pipeline, waits for
//! the replies and hands each to the shard. While one pipeline is in flight the next one
//! accumulates, so under load commands batch themselves.
//!
//! Invariant: commands leave in the order [`Writer::push`] was called, on one connection.

use std::cell::{Cell, RefCell};
use std::rc::Rc;

use redis::{Cmd, Value};

use crate::protocol::RoomId;
use crate::redis::{Client, Error};

use super::super::shard::{Origin, Shard};
use super::wire::ToKind;

/// What a queued command is for, so its reply can be acted on.
pub enum Job {
    /// The append of delta `tick` of `room`.
    Append {
        room: RoomId,
        tick: u64,
        generation: u64,
    },
    /// A request relayed to the owner; what its failure means depends on `request`.
    Relayed {
        room: RoomId,
        origin: Origin,
        request: Request,
    },
    /// An answer to connection `conn` (a host's id for another instance's member),
    /// published only if the log holds its tick: dropped when it does not.
    Answer {
        room: RoomId,
        conn: u64,
        kind: ToKind,
    },
    /// Nothing waits for the reply (publishes of answers, snapshots).
    Fire,
}

/// A relayed request, for what its failure to publish means: every request a client made
/// gets exactly one answer, so a repeat the relay made on its own is not answered again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Request {
    /// The client's join: answered `unavailable`.
    Join,
    /// A join sent again for a member (unanswered, or registered with a new owner):
    /// sent again later.
    Rejoin,
    /// An op, first or repeated: answered `unavailable` unless already answered.
    Op(u64),
    /// The client's leave: not answered here. It waits in the relay's `leaves`, is sent
    /// again, and is answered `left` at the latest a relay timeout and a lease later (or
    /// by a take-over).
    Leave,
    /// A `msg`: answered `unavailable`.
    Msg,
    /// A leave sent again: as `Leave`.
    LeaveAgain,
    /// A slow consumer's snapshot request: asked again after a pause.
    Resync,
}

#[derive(Default)]
pub struct Writer {
    queue: RefCell<Vec<(Cmd, Job)>>,
    waker: RefCell<Option<std::task::Waker>>,
    busy: Cell<bool>,
}

impl Writer {
    pub fn push(&self, cmd: Cmd, job: Job) {
        self.queue.borrow_mut().push((cmd, job));
        if let Some(waker) = self.waker.borrow_mut().take() {
            waker.wake();
        }
    }

    /// Nothing queued and nothing in flight.
    pub fn is_idle(&self) -> bool {
        !self.busy.get() && self.queue.borrow().is_empty()
    }

    async fn next_batch(&self) -> Vec<(Cmd, Job)> {
        std::future::poll_fn(|cx| {
            let mut queue = self.queue.borrow_mut();
            if queue.is_empty() {
                *self.waker.borrow_mut() = Some(cx.waker().clone());
                return std::task::Poll::Pending;
            }
            std::task::Poll::Ready(std::mem::take(&mut *queue))
        })
        .await
    }
}

/// Sends what the shard's writer accumulates, one pipeline at a time, forever.
pub async fn run(shard: Rc<Shard>, client: Rc<Client>) {
    let Some(fleet) = shard.fleet.as_ref() else {
        return;
    };
    loop {
        let batch = fleet.writer.next_batch().await;
        fleet.writer.busy.set(true);
        let mut pipe = redis::pipe();
        for (cmd, _) in &batch {
            pipe.add_command(cmd.clone());
        }
        let sent = std::time::Instant::now();
        let outcome = client.pipeline(&pipe).await;
        shard.telemetry.record(
            crate::server::telemetry::Stage::RedisRoundTrip,
            sent.elapsed(),
        );
        fleet.writer.busy.set(false);
        match outcome {
            Ok(replies) => {
                let mut replies = replies.into_iter();
                for (_, job) in batch {
                    let reply = match replies.next() {
                        Some(Value::ServerError(error)) => Err(Error::Server {
                            code: error.code().to_owned(),
                            detail: error.details().unwrap_or_default().to_owned(),
                        }),
                        Some(value) => Ok(value),
                        None => Err(Error::Disconnected),
                    };
                    shard.fleet_job_done(job, reply);
                }
            }
            Err(error) => {
                for (_, job) in batch {
                    shard.fleet_job_done(job, Err(error.clone()));
                }
            }
        }
    }
}
