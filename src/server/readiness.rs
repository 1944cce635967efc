//! A shard's sockets, on one epoll set polled by the shard: the listener, and every
//! connection from accept to close. glommio never sees them.
//!
//! Why not glommio's own: glommio waits for a readable socket with an io_uring poll, armed
//! when it wraps a socket and again after every read that leaves its buffer unfilled, so
//! nearly every message a client sends completes one, and so does a new connection's
//! first. It accepts through an io_uring request as well whenever no connection is
//! queued. The kernel completes those requests with task work, and without
//! `IORING_SETUP_COOP_TASKRUN` (glommio does not set it) that task work interrupts the
//! shard's core, busy or not: one inter-processor interrupt per client message, charged
//! to whichever core ran the client's packet through TCP. On this project's VM that was a
//! fifth of the bench generator's CPU at 20,000 ops/s, and about one interrupt each way
//! per connection in a join storm.
//!
//! Here a socket becoming readable (or a listener getting a connection) only links it
//! into the shard's epoll set ([`SocketSet`]), and a task polls the set with a zero
//! timeout and wakes the tasks that wait. It polls in every executor turn in which the
//! shard did anything with its sockets (a read or accept, or the last poll found sockets
//! ready), so a busy shard notices a ready socket within a turn and is never interrupted
//! for it. When a turn passes with neither, it parks: one io_uring poll on the epoll
//! descriptor itself, so an idle shard sleeps in the kernel and the first ready socket
//! wakes it, with one interrupt for the whole set. A connection that reads while the
//! poller is parked wakes it at once: parking ends with the shard's first sign of work,
//! not only with the kernel's poll, which glommio may hand to the kernel only when it
//! next submits. Writes go straight to `send`; only a full send buffer makes a writer wait
//! on the set.
//!
//! A connection's first read may find its bytes without the poller (the listeners defer
//! accept until the request is in), so a new connection first lets the connections whose
//! sockets are already ready run ([`Socket::catch_up`]): it cannot overtake what
//! earlier connections sent, such as a departure before its own join.
//!
//! Parking uses a glommio stream made on a duplicate of the epoll descriptor: glommio arms
//! a read poll on every stream it wraps, and the stream's first read completes when that
//! poll does (the read itself then fails, as an epoll descriptor is not a socket; only
//! the wake-up matters). Should a glommio version stop arming that poll, the read fails at
//! once; the poller notices parks that return with nothing ready and falls back to a short
//! timer, so the server keeps working, only less efficiently, and says so in its log.
//!
//! The set and its wakers are `kasagi_shards::SocketSet`; this module decides when to poll
//! it and how to wait.

use std::cell::{Cell, RefCell};
use std::future::poll_fn;
use std::io;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, IntoRawFd, OwnedFd, RawFd};
use std::rc::{Rc, Weak};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use futures_lite::AsyncReadExt;
use kasagi_shards::socketset::{SocketSet, NO_EVENT};
use tracing::warn;

/// Events taken per `epoll_wait`.
const BATCH: usize = 256;

/// Parks in a row that end with nothing ready before the poller stops trusting them.
const SUSPECT_PARKS: u32 = 8;

/// How long the poller sleeps instead of parking once parks are not trusted.
const FALLBACK_PAUSE: Duration = Duration::from_micros(200);

/// A shard's epoll set and the connections waiting on it.
pub struct Readiness {
    set: SocketSet,
    /// Reads tried by connections: the poller compares it between turns.
    reads: Cell<u64>,
    /// The poller, while it is parked.
    parked: RefCell<Option<Waker>>,
    /// False once parking proved unreliable and the poller fell back to a timer.
    parking_works: Cell<bool>,
}

thread_local! {
    static READINESS: RefCell<Option<Rc<Readiness>>> = const { RefCell::new(None) };
}

/// This shard's set, created (and its poller spawned) on first use.
pub fn current() -> io::Result<Rc<Readiness>> {
    if let Some(r) = READINESS.with(|r| r.borrow().clone()) {
        return Ok(r);
    }
    let readiness = Rc::new(Readiness {
        set: SocketSet::new()?,
        reads: Cell::new(0),
        parked: RefCell::new(None),
        parking_works: Cell::new(true),
    });
    READINESS.with(|r| *r.borrow_mut() = Some(readiness.clone()));
    glommio::spawn_local(poll_forever(Rc::downgrade(&readiness))).detach();
    Ok(readiness)
}

impl Readiness {
    /// Takes an accepted, non-blocking socket into the set (edge-triggered, both
    /// directions). The returned [`Socket`] owns it from here: dropping it closes the
    /// socket, which also takes it out of the set.
    pub fn adopt(self: &Rc<Self>, fd: OwnedFd) -> io::Result<Socket> {
        self.set.register(fd.as_raw_fd())?;
        Ok(Socket {
            readiness: self.clone(),
            fd,
        })
    }

    /// Counts a read (or accept) attempt, which tells the poller the shard is busy with
    /// its sockets, and ends its park.
    fn note_read(&self) {
        self.reads.set(self.reads.get().wrapping_add(1));
        if let Some(poller) = self.parked.borrow_mut().take() {
            poller.wake();
        }
    }

    /// Reads what `fd` has into `buf`, or waits for it to become readable.
    fn poll_recv(&self, fd: RawFd, cx: &Context<'_>, buf: &mut [u8]) -> Poll<io::Result<usize>> {
        self.note_read();
        self.set.poll_recv(fd, cx, buf)
    }

    /// Waits until the set has a ready socket, through one io_uring poll on a duplicate of
    /// the epoll descriptor (see the module docs).
    async fn park(&self) -> io::Result<()> {
        let dup = self.set.as_fd().try_clone_to_owned()?;
        // SAFETY: `dup` is a fresh descriptor that nothing else refers to; the stream owns
        // it from here and closes it when dropped (closing a duplicate leaves the set).
        let mut watch = unsafe { glommio::net::UnixStream::from_raw_fd(dup.into_raw_fd()) };
        let mut byte = [0u8; 1];
        // Ends when the epoll descriptor turns readable; the read itself fails (ENOTSOCK).
        let _ = watch.read(&mut byte).await;
        Ok(())
    }
}

/// A shard's listening socket, accepting through the shard's set.
pub struct Listener {
    readiness: Rc<Readiness>,
    socket: socket2::Socket,
}

impl Listener {
    /// Puts `socket`, bound and listening, into non-blocking mode and into this shard's
    /// set.
    pub fn new(socket: socket2::Socket) -> io::Result<Listener> {
        socket.set_nonblocking(true)?;
        let readiness = current()?;
        readiness.set.register(socket.as_raw_fd())?;
        Ok(Listener { readiness, socket })
    }

    /// The next connection, in this shard's set.
    pub async fn accept(&self) -> io::Result<Socket> {
        let fd = poll_fn(|cx| {
            self.readiness.note_read();
            self.readiness.set.poll_accept(self.socket.as_raw_fd(), cx)
        })
        .await?;
        self.readiness.adopt(fd)
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.readiness.set.forget(self.socket.as_raw_fd());
    }
}

/// An accepted connection's socket in its shard's set: reads wait on the set, writes go
/// straight to `send` and wait on the set only when the socket's buffer is full.
pub struct Socket {
    readiness: Rc<Readiness>,
    fd: OwnedFd,
}

impl Socket {
    /// Wakes the connections whose sockets turned ready before this one was accepted and
    /// lets them run first, so a new connection's requests are handled after what
    /// earlier ones already sent (a departure before a later join, say).
    pub async fn catch_up(&self) {
        if self.wake_ready() {
            futures_lite::future::yield_now().await;
        }
    }

    /// The synchronous half of [`Socket::catch_up`]: its event buffer lives on the stack
    /// of this call, not in the connection's future for the connection's life.
    fn wake_ready(&self) -> bool {
        let mut events = [NO_EVENT; 64];
        self.readiness.set.wake_ready(&mut events) > 0
    }

    /// Reads what the socket has into `buf`, or waits for it to become readable.
    pub fn poll_recv(&self, cx: &Context<'_>, buf: &mut [u8]) -> Poll<io::Result<usize>> {
        self.readiness.poll_recv(self.fd.as_raw_fd(), cx, buf)
    }

    /// Lets the next read ask the socket even if the last one drained it (see
    /// `SocketSet::retry`).
    pub fn retry(&self) {
        self.readiness.set.retry(self.fd.as_raw_fd());
    }

    /// Reads what the socket has into `buf`, waiting until it has something (0: end of
    /// stream).
    pub async fn recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        poll_fn(|cx| self.poll_recv(cx, buf)).await
    }

    /// Sends what the socket takes of `bytes` now, or waits for room.
    pub fn poll_send(&self, cx: &Context<'_>, bytes: &[u8]) -> Poll<io::Result<usize>> {
        self.readiness.set.poll_send(self.fd.as_raw_fd(), cx, bytes)
    }

    /// Sends all of `bytes`, waiting for room as often as it takes.
    pub async fn send_all(&self, mut bytes: &[u8]) -> io::Result<()> {
        while !bytes.is_empty() {
            let n = poll_fn(|cx| self.poll_send(cx, bytes)).await?;
            if n == 0 {
                return Err(io::ErrorKind::WriteZero.into());
            }
            bytes = &bytes[n..];
        }
        Ok(())
    }

    /// Ends our direction of the stream (a FIN after what is queued).
    pub fn shutdown_write(&self) -> io::Result<()> {
        socket2::SockRef::from(&self.fd).shutdown(std::net::Shutdown::Write)
    }

    /// The client's address.
    pub fn peer_addr(&self) -> io::Result<std::net::SocketAddr> {
        socket2::SockRef::from(&self.fd)
            .peer_addr()?
            .as_socket()
            .ok_or_else(|| io::Error::other("not an IP socket"))
    }
}

impl Drop for Socket {
    /// Forgets the socket's waiters; the close that follows takes it out of the set
    /// without an `epoll_ctl` (see `SocketSet::forget`), a tenth of a short connection's
    /// syscalls.
    fn drop(&mut self) {
        self.readiness.set.forget(self.fd.as_raw_fd());
    }
}

async fn poll_forever(readiness: Weak<Readiness>) {
    let mut events = vec![NO_EVENT; BATCH];
    let mut suspect = 0u32;
    let mut reads_seen = 0u64;
    let mut park_failing = false;
    loop {
        let Some(r) = readiness.upgrade() else { return };
        let ready = r.set.wake_ready(&mut events);
        let reads = r.reads.get();
        if ready > 0 || reads != reads_seen {
            // The shard is busy with its sockets: poll again in the next turn.
            reads_seen = reads;
            suspect = 0;
            drop(r);
            futures_lite::future::yield_now().await;
            continue;
        }
        if !r.parking_works.get() {
            drop(r);
            glommio::timer::sleep(FALLBACK_PAUSE).await;
            continue;
        }
        let woke = futures_lite::future::or(
            async { r.park().await.map(|()| Wake::Kernel) },
            poll_fn(|cx| {
                if r.reads.get() != reads_seen {
                    Poll::Ready(Ok(Wake::Read))
                } else {
                    *r.parked.borrow_mut() = Some(cx.waker().clone());
                    Poll::Pending
                }
            }),
        )
        .await;
        r.parked.borrow_mut().take();
        match woke {
            Ok(Wake::Read) => suspect = 0,
            Ok(Wake::Kernel) => {
                // The kernel's poll ends only when the set has a ready socket; if it keeps
                // ending with none, glommio no longer waits on the descriptor.
                if r.set.wake_ready(&mut events) > 0 {
                    suspect = 0;
                } else {
                    suspect += 1;
                    if suspect >= SUSPECT_PARKS {
                        warn!("parking on the epoll set returns with nothing ready; polling it on a timer instead");
                        r.parking_works.set(false);
                    }
                }
            }
            // Parking needs a descriptor (the duplicate), and a process out of them (a
            // connection flood against `RLIMIT_NOFILE`) fails here for as long as that
            // lasts: sleep on the timer meanwhile, and park again once it is over.
            Err(err) => {
                if !park_failing {
                    warn!(cause = %err, "cannot park on the epoll set for now; polling it on a timer meanwhile");
                    park_failing = true;
                }
                drop(r);
                glommio::timer::sleep(FALLBACK_PAUSE).await;
                continue;
            }
        }
        park_failing = false;
        drop(r);
        futures_lite::future::yield_now().await;
    }
}

/// What ended a park.
enum Wake {
    /// The io_uring poll on the epoll descriptor.
    Kernel,
    /// A connection read while the poller was parked.
    Read,
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::unix::net::UnixStream;

    #[test]
    fn an_idle_shard_parks_and_a_write_wakes_its_reader() {
        let handle = glommio::LocalExecutorBuilder::default()
            .spawn(|| async {
                let (ours, mut theirs) = UnixStream::pair().unwrap();
                ours.set_nonblocking(true).unwrap();
                let readiness = current().unwrap();
                let socket = readiness.adopt(OwnedFd::from(ours)).unwrap();
                let reader = glommio::spawn_local(async move {
                    let mut buf = [0u8; 16];
                    let n = socket.recv(&mut buf).await.unwrap();
                    buf[..n].to_vec()
                });
                // Nothing to read: the reader waits and the poller parks (no busy loop).
                let mut turns = 0;
                while readiness.parked.borrow().is_none() {
                    turns += 1;
                    assert!(turns < 1_000, "the poller never parked");
                    futures_lite::future::yield_now().await;
                }
                theirs.write_all(b"hello").unwrap();
                let got = reader.await;
                assert_eq!(got, b"hello");
                assert!(
                    readiness.parking_works.get(),
                    "fell back to polling on a timer"
                );
            })
            .unwrap();
        handle.join().unwrap();
    }
}
