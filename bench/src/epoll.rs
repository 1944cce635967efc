//! Read readiness for the bench's sockets through one epoll set per shard, polled by a
//! task on the shard's executor instead of signalled by the kernel.
//!
//! Why not glommio's own readiness: glommio arms an io_uring poll per socket, and the
//! kernel completes it with task work that interrupts the generator's thread (an
//! inter-processor interrupt) even while that thread is running, unless the ring was made
//! with `IORING_SETUP_COOP_TASKRUN`, which glommio does not set. On loopback the *sender*
//! pays for that interrupt inside its `send`, so every frame the server writes to the
//! bench cost the server a cross-core interrupt: on this project's VM 13-25 µs of the
//! server's CPU per write, more than the server's own work. With epoll, a socket becoming
//! readable only links it into the ready list; nobody is woken, so the server's write
//! no longer pays for interrupting the generator.
//!
//! A task polls the set with a zero timeout. While it finds sockets ready it polls again
//! behind the readers it woke, for up to 50 µs, then lets the executor fire its timers
//! (the senders' schedule) and reap its own I/O; when it finds none it sleeps 20 µs on a
//! timer, so an idle generator sleeps on its own clock instead of being woken by the
//! server's writes.
//!
//! The set and its waiting readers are `kasagi_shards::SocketSet`, the same the server's
//! shards read through; only this poller is the bench's own.

use std::cell::RefCell;
use std::io;
use std::rc::Rc;
use std::time::{Duration, Instant};

use kasagi_shards::socketset::{SocketSet, NO_EVENT};

/// Events taken per `epoll_wait`.
const BATCH: usize = 256;

/// Longest the poller keeps polling within one executor turn while it finds sockets
/// ready, before it lets the executor fire timers and reap its own I/O.
const BUSY_SLICE: Duration = Duration::from_micros(50);

/// How long the poller steps aside after a busy slice, so that the executor gets to its
/// reactor (see [`poll_forever`]). Not a nanosecond: a glommio timer already due when it is
/// first polled is ready at once, and a few nanoseconds pass between making one and
/// polling it. The readers woken in the slice take longer than this, so it has expired by
/// the time the queue drains and costs no sleep.
const BUSY_PAUSE: Duration = Duration::from_micros(2);

/// How long the poller sleeps after it found nothing ready: the most it adds to a
/// delivery's latency when traffic resumes.
const IDLE_PAUSE: Duration = Duration::from_micros(20);

thread_local! {
    static REACTOR: RefCell<Option<Rc<SocketSet>>> = const { RefCell::new(None) };
}

/// This shard's set, created (and its poller task spawned) on first use.
pub fn current() -> io::Result<Rc<SocketSet>> {
    if let Some(r) = REACTOR.with(|r| r.borrow().clone()) {
        return Ok(r);
    }
    let set = Rc::new(SocketSet::new()?);
    REACTOR.with(|r| *r.borrow_mut() = Some(set.clone()));
    glommio::spawn_local(poll_forever(Rc::downgrade(&set))).detach();
    Ok(set)
}

async fn poll_forever(reactor: std::rc::Weak<SocketSet>) {
    let mut events = vec![NO_EVENT; BATCH];
    let mut slice_start = Instant::now();
    loop {
        let Some(r) = reactor.upgrade() else { return };
        let n = r.wake_ready(&mut events);
        drop(r);
        if n > 0 && slice_start.elapsed() < BUSY_SLICE {
            // Behind the readers just woken, in the same executor turn.
            futures_lite::future::yield_now().await;
            continue;
        }
        // A timer that is not yet due, so this task leaves the run queue: once the readers
        // it woke are done the queue drains and the executor runs its reactor, which fires
        // the timers (the senders' schedule) and reaps and submits I/O. glommio visits its
        // reactor only when the queue drains (or every 100 ms by its preemption timer), and
        // a sleep already due is ready at once without leaving the queue, so with a zero one
        // here the senders' timers waited until a poll found nothing ready.
        let pause = if n > 0 { BUSY_PAUSE } else { IDLE_PAUSE };
        glommio::timer::sleep(pause).await;
        slice_start = Instant::now();
    }
}
