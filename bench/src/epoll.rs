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
//! Correctness does not rest on the edge-triggered events: a reader always tries `recv`
//! before it waits, and only an `EAGAIN` makes it wait, so an event that arrives while
//! nobody waits loses nothing (the next `recv` finds the bytes).

use std::cell::RefCell;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::rc::Rc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

/// Events taken per `epoll_wait`.
const BATCH: usize = 256;

/// Longest the poller keeps polling within one executor turn while it finds sockets
/// ready, before it lets the executor fire timers and reap its own I/O.
const BUSY_SLICE: Duration = Duration::from_micros(50);

/// How long the poller sleeps after it found nothing ready: the most it adds to a
/// delivery's latency when traffic resumes.
const IDLE_PAUSE: Duration = Duration::from_micros(20);

pub struct Reactor {
    epfd: OwnedFd,
    /// The task waiting on each fd, indexed by fd number.
    wakers: RefCell<Vec<Option<Waker>>>,
}

thread_local! {
    static REACTOR: RefCell<Option<Rc<Reactor>>> = const { RefCell::new(None) };
}

/// This shard's reactor, created (and its poller task spawned) on first use.
pub fn current() -> io::Result<Rc<Reactor>> {
    if let Some(r) = REACTOR.with(|r| r.borrow().clone()) {
        return Ok(r);
    }
    // SAFETY: plain syscall; the result is checked before use.
    let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    let reactor = Rc::new(Reactor {
        // SAFETY: `fd` is a fresh descriptor this function owns.
        epfd: unsafe { OwnedFd::from_raw_fd(fd) },
        wakers: RefCell::new(Vec::new()),
    });
    REACTOR.with(|r| *r.borrow_mut() = Some(reactor.clone()));
    glommio::spawn_local(poll_forever(Rc::downgrade(&reactor))).detach();
    Ok(reactor)
}

impl Reactor {
    /// Adds `fd` to the set (edge-triggered readable, hang-up included).
    pub fn register(&self, fd: RawFd) -> io::Result<()> {
        {
            let mut wakers = self.wakers.borrow_mut();
            let i = fd as usize;
            if wakers.len() <= i {
                wakers.resize(i + 1, None);
            }
            wakers[i] = None;
        }
        let mut event = libc::epoll_event {
            events: (libc::EPOLLIN | libc::EPOLLRDHUP | libc::EPOLLET) as u32,
            u64: fd as u64,
        };
        // SAFETY: `event` outlives the call; both fds are valid.
        let rc =
            unsafe { libc::epoll_ctl(self.epfd.as_raw_fd(), libc::EPOLL_CTL_ADD, fd, &mut event) };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Forgets `fd` (call before the socket closes: fd numbers are reused).
    pub fn deregister(&self, fd: RawFd) {
        if let Some(slot) = self.wakers.borrow_mut().get_mut(fd as usize) {
            *slot = None;
        }
        // SAFETY: removing an fd; a failure (already closed) leaves nothing to undo.
        unsafe {
            libc::epoll_ctl(
                self.epfd.as_raw_fd(),
                libc::EPOLL_CTL_DEL,
                fd,
                std::ptr::null_mut(),
            );
        }
    }

    /// Reads what `fd` has, or waits for it to become readable.
    pub fn poll_recv(
        &self,
        fd: RawFd,
        cx: &Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        loop {
            // SAFETY: `buf` is valid for `buf.len()` bytes for the call.
            let n =
                unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), libc::MSG_DONTWAIT) };
            if n >= 0 {
                return Poll::Ready(Ok(n as usize));
            }
            let err = io::Error::last_os_error();
            match err.kind() {
                io::ErrorKind::Interrupted => continue,
                io::ErrorKind::WouldBlock => {
                    if let Some(slot) = self.wakers.borrow_mut().get_mut(fd as usize) {
                        *slot = Some(cx.waker().clone());
                    }
                    return Poll::Pending;
                }
                _ => return Poll::Ready(Err(err)),
            }
        }
    }

    /// Fills `buf` from `fd` (an error if the peer closes first).
    pub async fn recv_exact(&self, fd: RawFd, mut buf: &mut [u8]) -> io::Result<()> {
        while !buf.is_empty() {
            let n = std::future::poll_fn(|cx| self.poll_recv(fd, cx, buf)).await?;
            if n == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            buf = &mut buf[n..];
        }
        Ok(())
    }
}

async fn poll_forever(reactor: std::rc::Weak<Reactor>) {
    let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; BATCH];
    let mut slice_start = Instant::now();
    loop {
        let Some(r) = reactor.upgrade() else { return };
        // SAFETY: `events` holds BATCH entries; a zero timeout never blocks.
        let n =
            unsafe { libc::epoll_wait(r.epfd.as_raw_fd(), events.as_mut_ptr(), BATCH as i32, 0) };
        if n > 0 {
            let mut wakers = r.wakers.borrow_mut();
            for e in &events[..n as usize] {
                if let Some(w) = wakers.get_mut(e.u64 as usize).and_then(Option::take) {
                    w.wake();
                }
            }
        }
        drop(r);
        if n > 0 && slice_start.elapsed() < BUSY_SLICE {
            // Behind the readers just woken, in the same executor turn.
            futures_lite::future::yield_now().await;
            continue;
        }
        // A timer: the executor reaps its own I/O and fires its timers (the senders'
        // schedule) before this polls again.
        let pause = if n > 0 { Duration::ZERO } else { IDLE_PAUSE };
        glommio::timer::sleep(pause).await;
        slice_start = Instant::now();
    }
}
