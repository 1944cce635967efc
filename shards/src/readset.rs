//! [`ReadSet`]: one epoll set of sockets and the task waiting to read each.
//!
//! It only holds the set and the wakers: whoever owns it decides when to poll it
//! ([`ReadSet::wake_ready`]) and how to wait when nothing is ready. The server polls it
//! in every busy executor turn and parks on it when idle (`src/server/readiness.rs`);
//! the bench polls it on a short timer (`bench/src/epoll.rs`). Either way a socket
//! turning readable only links it into the set: no io_uring poll completes, so nothing
//! interrupts the thread that owns it.
//!
//! Sockets are registered edge-triggered, and the set remembers which sockets a read
//! left drained, so a reader does not pay a `recv` only to be told `EAGAIN`. A socket is
//! drained after a read that returned fewer bytes than it asked for (TCP and Unix stream
//! sockets return short only when their receive queue is empty) or that would block; it
//! is ready again once `epoll_wait` reports it, which happens for any byte, hang-up or
//! error that arrives after that read (the kernel queues an edge for each). The one case
//! that breaks the rule is a TCP urgent byte: a read stops short in front of it, and a
//! client that sends one stalls its own connection until it sends anything more. Nobody
//! else waits on it. An edge that reports bytes a read already took costs one `recv` that
//! finds nothing.

use std::cell::RefCell;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::task::{Context, Poll, Waker};

/// One ready socket as `epoll_wait` reports it.
pub type Event = libc::epoll_event;

/// An empty [`Event`], to fill buffers for [`ReadSet::wake_ready`] with.
pub const NO_EVENT: Event = libc::epoll_event { events: 0, u64: 0 };

/// An epoll set and the task waiting on each of its sockets. Single-threaded.
pub struct ReadSet {
    epfd: OwnedFd,
    /// Each registered fd's reader, indexed by fd number.
    slots: RefCell<Vec<Slot>>,
}

/// What the set knows of one registered fd.
#[derive(Default)]
struct Slot {
    /// The task waiting for the fd to turn ready.
    waker: Option<Waker>,
    /// The last read found the socket empty, and no edge has arrived since.
    drained: bool,
}

impl ReadSet {
    /// An empty set.
    ///
    /// # Errors
    ///
    /// The error of `epoll_create1` (out of descriptors, say).
    pub fn new() -> io::Result<ReadSet> {
        // SAFETY: plain syscall; the result is checked before use.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(ReadSet {
            // SAFETY: `fd` is a fresh descriptor this function owns.
            epfd: unsafe { OwnedFd::from_raw_fd(fd) },
            slots: RefCell::new(Vec::new()),
        })
    }

    /// Adds `fd` (edge-triggered readable, hang-up included). Call [`Self::deregister`]
    /// or [`Self::forget`] before `fd` closes: fd numbers are reused.
    ///
    /// # Errors
    ///
    /// The error of `epoll_ctl` (`fd` not open, or already in the set).
    pub fn register(&self, fd: RawFd) -> io::Result<()> {
        {
            let mut slots = self.slots.borrow_mut();
            let i = fd as usize;
            if slots.len() <= i {
                slots.resize_with(i + 1, Slot::default);
            }
            slots[i] = Slot::default();
        }
        let mut event = libc::epoll_event {
            events: (libc::EPOLLIN | libc::EPOLLRDHUP | libc::EPOLLET) as u32,
            u64: fd as u64,
        };
        // SAFETY: `event` outlives the call; both fds are open.
        let rc =
            unsafe { libc::epoll_ctl(self.epfd.as_raw_fd(), libc::EPOLL_CTL_ADD, fd, &mut event) };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Takes `fd` out of the set and forgets its waiter.
    pub fn deregister(&self, fd: RawFd) {
        self.forget(fd);
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

    /// Lets the next read of `fd` ask the socket even when the last one drained it, for a
    /// reader woken for another reason (bytes to write, say) that may as well look: what
    /// arrived since is then read in this turn, instead of the next one's `epoll_wait`.
    pub fn retry(&self, fd: RawFd) {
        if let Some(slot) = self.slots.borrow_mut().get_mut(fd as usize) {
            slot.drained = false;
        }
    }

    /// Forgets `fd`'s waiter without an `epoll_ctl`, for an fd about to be closed: the
    /// kernel takes a file out of every epoll set when its last reference goes. Should
    /// something still hold the file (an io_uring request in flight on it, say), its late
    /// edges name an fd number that a new socket may have taken by then; they cost that
    /// socket one `recv` that finds nothing, as registrations are kept per open file and
    /// the new socket's own is separate.
    pub fn forget(&self, fd: RawFd) {
        if let Some(slot) = self.slots.borrow_mut().get_mut(fd as usize) {
            *slot = Slot::default();
        }
    }

    /// Reads what `fd` has into `buf`, or waits (until [`Self::wake_ready`] sees it
    /// ready) when it has nothing yet.
    pub fn poll_recv(
        &self,
        fd: RawFd,
        cx: &Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        let want = buf.len();
        self.poll_read_with(
            fd,
            cx,
            |&n| n > 0 && n < want,
            || {
                // SAFETY: `buf` is valid for `buf.len()` bytes for the call.
                let n = unsafe {
                    libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), libc::MSG_DONTWAIT)
                };
                if n >= 0 {
                    Ok(n as usize)
                } else {
                    Err(io::Error::last_os_error())
                }
            },
        )
    }

    /// Runs `read`, a non-blocking read of `fd` (a `recvmsg` with ancillary data, say),
    /// again while it is interrupted; when it would block, or when an earlier read left
    /// `fd` drained and no edge came since, waits (until [`Self::wake_ready`] sees `fd`
    /// ready). `short` tells from a read's result whether it drained the socket: it got
    /// fewer bytes than it had room for, but not none (end of stream).
    pub fn poll_read_with<T>(
        &self,
        fd: RawFd,
        cx: &Context<'_>,
        short: impl Fn(&T) -> bool,
        mut read: impl FnMut() -> io::Result<T>,
    ) -> Poll<io::Result<T>> {
        if let Some(slot) = self.slots.borrow_mut().get_mut(fd as usize) {
            if slot.drained {
                slot.wait(cx);
                return Poll::Pending;
            }
        }
        loop {
            match read() {
                Ok(v) => {
                    if short(&v) {
                        if let Some(slot) = self.slots.borrow_mut().get_mut(fd as usize) {
                            slot.drained = true;
                        }
                    }
                    return Poll::Ready(Ok(v));
                }
                Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => {
                    if let Some(slot) = self.slots.borrow_mut().get_mut(fd as usize) {
                        slot.drained = true;
                        slot.wait(cx);
                    }
                    return Poll::Pending;
                }
                Err(err) => return Poll::Ready(Err(err)),
            }
        }
    }

    /// Has the kernel stamp what `fd` receives with its arrival time (`SO_TIMESTAMPNS`),
    /// for a reader that takes the stamps with `recvmsg` through [`Self::poll_read_with`].
    pub fn stamp_receives(fd: RawFd) -> io::Result<()> {
        crate::listener::set_int_option(fd, libc::SOL_SOCKET, libc::SO_TIMESTAMPNS, 1)
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

    /// Takes up to `events.len()` ready sockets without blocking and wakes their
    /// waiters; returns how many were ready.
    pub fn wake_ready(&self, events: &mut [Event]) -> usize {
        // SAFETY: `events` is valid for its length; a zero timeout never blocks.
        let n = unsafe {
            libc::epoll_wait(
                self.epfd.as_raw_fd(),
                events.as_mut_ptr(),
                events.len().min(i32::MAX as usize) as i32,
                0,
            )
        };
        if n <= 0 {
            return 0;
        }
        let mut slots = self.slots.borrow_mut();
        for e in &events[..n as usize] {
            if let Some(slot) = slots.get_mut(e.u64 as usize) {
                slot.drained = false;
                if let Some(w) = slot.waker.take() {
                    w.wake();
                }
            }
        }
        n as usize
    }
}

impl Slot {
    /// Has `cx`'s task woken when the fd turns ready.
    fn wait(&mut self, cx: &Context<'_>) {
        match &self.waker {
            Some(w) if w.will_wake(cx.waker()) => {}
            _ => self.waker = Some(cx.waker().clone()),
        }
    }
}

/// The epoll descriptor: readable while the set has a ready socket, so an owner can
/// wait on the whole set with one poll of it.
impl AsFd for ReadSet {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.epfd.as_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::unix::net::UnixStream;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::task::Wake;

    struct Count(AtomicUsize);

    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn a_reader_waits_until_its_socket_is_ready_and_is_woken_once() {
        let set = ReadSet::new().unwrap();
        let (ours, mut theirs) = UnixStream::pair().unwrap();
        let fd = ours.as_raw_fd();
        set.register(fd).unwrap();
        let count = Arc::new(Count(AtomicUsize::new(0)));
        let waker = Waker::from(count.clone());
        let cx = Context::from_waker(&waker);
        let mut buf = [0u8; 8];
        let mut events = [NO_EVENT; 4];

        assert!(set.poll_recv(fd, &cx, &mut buf).is_pending());
        assert_eq!(set.wake_ready(&mut events), 0);
        assert_eq!(count.0.load(Ordering::SeqCst), 0);

        theirs.write_all(b"hi").unwrap();
        assert_eq!(set.wake_ready(&mut events), 1);
        assert_eq!(count.0.load(Ordering::SeqCst), 1);
        match set.poll_recv(fd, &cx, &mut buf) {
            Poll::Ready(Ok(n)) => assert_eq!(&buf[..n], b"hi"),
            other => panic!("expected the bytes, got {other:?}"),
        }
        // Edge-triggered: nothing new, nothing reported.
        assert_eq!(set.wake_ready(&mut events), 0);

        set.deregister(fd);
        theirs.write_all(b"more").unwrap();
        assert_eq!(
            set.wake_ready(&mut events),
            0,
            "a deregistered fd still reported"
        );
    }

    #[test]
    fn a_short_read_waits_for_the_next_edge_and_a_full_one_reads_on() {
        let set = ReadSet::new().unwrap();
        let (ours, mut theirs) = UnixStream::pair().unwrap();
        let fd = ours.as_raw_fd();
        set.register(fd).unwrap();
        let count = Arc::new(Count(AtomicUsize::new(0)));
        let waker = Waker::from(count.clone());
        let cx = Context::from_waker(&waker);
        let mut events = [NO_EVENT; 4];
        let mut buf = [0u8; 4];

        // A full buffer may have left bytes behind: the next read goes to the socket.
        theirs.write_all(b"abcdef").unwrap();
        assert!(matches!(
            set.poll_recv(fd, &cx, &mut buf),
            Poll::Ready(Ok(4))
        ));
        match set.poll_recv(fd, &cx, &mut buf) {
            Poll::Ready(Ok(n)) => assert_eq!(&buf[..n], b"ef"),
            other => panic!("expected the rest, got {other:?}"),
        }
        // That read came back short: until an edge arrives the set does not ask the
        // socket, so bytes written now stay there until `wake_ready` reports them.
        theirs.write_all(b"gh").unwrap();
        assert!(set.poll_recv(fd, &cx, &mut buf).is_pending());
        assert_eq!(count.0.load(Ordering::SeqCst), 0);
        assert_eq!(set.wake_ready(&mut events), 1);
        assert_eq!(count.0.load(Ordering::SeqCst), 1);
        match set.poll_recv(fd, &cx, &mut buf) {
            Poll::Ready(Ok(n)) => assert_eq!(&buf[..n], b"gh"),
            other => panic!("expected the new bytes, got {other:?}"),
        }
        // The peer's hang-up is an edge too: the drained reader sees the end of stream.
        drop(theirs);
        assert!(set.poll_recv(fd, &cx, &mut buf).is_pending());
        assert_eq!(set.wake_ready(&mut events), 1);
        assert!(matches!(
            set.poll_recv(fd, &cx, &mut buf),
            Poll::Ready(Ok(0))
        ));
    }
}
