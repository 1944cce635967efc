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
//! behind the readers it woke; when it finds none it sleeps up to 20 µs on a timer, so an
//! idle generator sleeps on its own clock instead of being woken by the server's writes.
//!
//! The same task keeps the senders' schedule ([`sleep_until`]): it wakes every sender
//! whose time has come each time it polls. glommio's own timers fire only when its
//! executor visits its reactor, which it does when the run queue drains, and each visit
//! re-arms the executor's preemption timer through io_uring (a timer the VM's kernel
//! programs with an exit). With the senders on glommio's timers the poller had to leave
//! the run queue every 50 µs of work to let them fire. Now, while it has work (ready
//! sockets or due senders), it leaves the queue once per millisecond, for glommio's own
//! I/O and timers; only its idle pauses still go through the reactor. At `latency-10k`'s
//! load that took the generator from 86,000 to 54,000 `io_uring_enter` calls per second
//! and from 0.96 to 0.86 of its core.
//!
//! The set and its waiting readers are `kasagi_shards::SocketSet`, the same the server's
//! shards read through; only this poller is the bench's own.

use std::cell::RefCell;
use std::cmp::Ordering;
use std::collections::BinaryHeap;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use kasagi_shards::socketset::{SocketSet, NO_EVENT};

use crate::runner::now_us;

/// Events taken per `epoll_wait`.
const BATCH: usize = 256;

/// Longest the poller keeps the executor from its reactor while it has work (ready
/// sockets or due senders): glommio's own I/O and timers wait at most this long.
const REACTOR_EVERY: Duration = Duration::from_millis(1);

/// How long the poller steps aside after a busy slice, so that the executor gets to its
/// reactor (see [`poll_forever`]). Not a nanosecond: a glommio timer already due when it is
/// first polled is ready at once, and a few nanoseconds pass between making one and
/// polling it. The tasks woken in the slice take longer than this, so it has expired by
/// the time the queue drains and costs no sleep.
const BUSY_PAUSE: Duration = Duration::from_micros(2);

/// The longest the poller sleeps after it found nothing to do: the most it adds to a
/// delivery's latency when traffic resumes.
const IDLE_PAUSE: Duration = Duration::from_micros(20);

thread_local! {
    static REACTOR: RefCell<Option<Rc<SocketSet>>> = const { RefCell::new(None) };
    static SCHEDULE: RefCell<Schedule> = RefCell::new(Schedule::default());
}

/// Senders waiting for their time, soonest first.
#[derive(Default)]
struct Schedule {
    due: BinaryHeap<Due>,
    /// Ties on the same microsecond wake in the order they were scheduled.
    next_seq: u64,
}

struct Due {
    at_us: u64,
    seq: u64,
    waker: Waker,
}

impl Ord for Due {
    fn cmp(&self, other: &Self) -> Ordering {
        // Reversed: `BinaryHeap` is a max-heap and the soonest must come out first.
        (other.at_us, other.seq).cmp(&(self.at_us, self.seq))
    }
}

impl PartialOrd for Due {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl PartialEq for Due {
    fn eq(&self, other: &Self) -> bool {
        (self.at_us, self.seq) == (other.at_us, other.seq)
    }
}

impl Eq for Due {}

impl Schedule {
    /// Wakes every sender due by `now`; returns how many, and when the next one is due.
    fn fire(&mut self, now: u64) -> (usize, Option<u64>) {
        let mut fired = 0;
        while let Some(top) = self.due.peek() {
            if top.at_us > now {
                return (fired, Some(top.at_us));
            }
            if let Some(due) = self.due.pop() {
                due.waker.wake();
                fired += 1;
            }
        }
        (fired, None)
    }
}

/// Sleeps until `at_us` on the bench clock through this shard's poller, or `None` when the
/// shard has no poller (uring readiness): then the caller sleeps on glommio's timers.
pub fn sleep_until(at_us: u64) -> Option<impl Future<Output = ()>> {
    REACTOR.with(|r| r.borrow().is_some()).then_some(Sleep {
        at_us,
        armed: false,
    })
}

/// A sender waiting for its time (see [`sleep_until`]).
struct Sleep {
    at_us: u64,
    armed: bool,
}

impl Future for Sleep {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if now_us() >= self.at_us {
            return Poll::Ready(());
        }
        if !self.armed {
            // A task's waker stays the same for its life, so one entry is enough; an
            // entry left by a dropped sleep only wakes its task once for nothing.
            self.armed = true;
            let at_us = self.at_us;
            SCHEDULE.with(|s| {
                let mut s = s.borrow_mut();
                let seq = s.next_seq;
                s.next_seq += 1;
                s.due.push(Due {
                    at_us,
                    seq,
                    waker: cx.waker().clone(),
                });
            });
        }
        Poll::Pending
    }
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
        let ready = r.wake_ready(&mut events);
        drop(r);
        let now = now_us();
        let (fired, next_due) = SCHEDULE.with(|s| s.borrow_mut().fire(now));
        let busy = ready > 0 || fired > 0;
        if busy && slice_start.elapsed() < REACTOR_EVERY {
            // Behind the tasks just woken, in the same executor turn.
            futures_lite::future::yield_now().await;
            continue;
        }
        // A timer that is not yet due, so this task leaves the run queue: once the tasks
        // it woke are done the queue drains and the executor runs its reactor, which reaps
        // and submits I/O and fires glommio's timers. glommio visits its reactor only when
        // the queue drains (or every 100 ms by its preemption timer), and a sleep already
        // due is ready at once without leaving the queue.
        let pause = if busy {
            BUSY_PAUSE
        } else {
            next_due.map_or(IDLE_PAUSE, |at| {
                Duration::from_micros(at.saturating_sub(now)).clamp(BUSY_PAUSE, IDLE_PAUSE)
            })
        };
        glommio::timer::sleep(pause).await;
        slice_start = Instant::now();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_schedule_wakes_senders_in_time_order_and_only_when_due() {
        let handle = glommio::LocalExecutorBuilder::default()
            .spawn(|| async {
                let _set = current().unwrap();
                let order = Rc::new(RefCell::new(Vec::new()));
                let start = now_us();
                let mut tasks = Vec::new();
                for (label, delay) in [("c", 3_000u64), ("a", 1_000), ("b", 2_000)] {
                    let order = order.clone();
                    tasks.push(glommio::spawn_local(async move {
                        let at = start + delay;
                        sleep_until(at).expect("a poller runs").await;
                        assert!(now_us() >= at, "{label} woke before its time");
                        order.borrow_mut().push(label);
                    }));
                }
                for t in tasks {
                    t.await;
                }
                assert_eq!(*order.borrow(), ["a", "b", "c"]);
            })
            .unwrap();
        handle.join().unwrap();
    }

    #[test]
    fn without_a_poller_the_caller_is_told_to_use_glommio_timers() {
        let handle = glommio::LocalExecutorBuilder::default()
            .spawn(|| async { sleep_until(now_us() + 1_000).is_none() })
            .unwrap();
        assert!(handle.join().unwrap());
    }
}
