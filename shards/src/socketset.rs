//! [`SocketSet`]: one epoll set of sockets and the tasks waiting to read, write or
//! accept on each.
//!
//! It only holds the set and the wakers: whoever owns it decides when to poll it
//! ([`SocketSet::wake_ready`]) and how to wait when nothing is ready. The server polls it
//! in every busy executor turn and parks on it when idle (`src/server/readiness.rs`);
//! the bench polls it on a short timer (`bench/src/epoll.rs`). Either way a socket
//! turning ready only links it into the set: no io_uring request completes, so nothing
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
//!
//! Writes need no bookkeeping: a writer sends until the kernel says `EAGAIN`, and TCP
//! raises a write-space edge only for a socket whose send once found its buffer full, so
//! registering for it (`EPOLLOUT`) adds one event per socket (the first report that it
//! is writable) and otherwise only the wake-ups of writers that wait.

use std::cell::RefCell;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::task::{Context, Poll, Waker};

/// One ready socket as `epoll_wait` reports it.
pub type Event = libc::epoll_event;

/// An empty [`Event`], to fill buffers for [`SocketSet::wake_ready`] with.
pub const NO_EVENT: Event = libc::epoll_event { events: 0, u64: 0 };

/// An epoll set and the tasks waiting on each of its sockets. Single-threaded.
pub struct SocketSet {
    epfd: OwnedFd,
    /// What the set knows of each registered fd, indexed by fd number.
    slots: RefCell<Vec<Slot>>,
}

/// What the set knows of one registered fd.
#[derive(Default)]
struct Slot {
    /// The task waiting for the fd to turn readable (or, for a listener, to have a
    /// connection).
    waker: Option<Waker>,
    /// The task waiting for the fd to take more bytes.
    writer: Option<Waker>,
    /// The last read found the socket empty, and no edge has arrived since.
    drained: bool,
}

impl SocketSet {
    /// An empty set.
    ///
    /// # Errors
    ///
    /// The error of `epoll_create1` (out of descriptors, say).
    pub fn new() -> io::Result<SocketSet> {
        // SAFETY: plain syscall; the result is checked before use.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(SocketSet {
            // SAFETY: `fd` is a fresh descriptor this function owns.
            epfd: unsafe { OwnedFd::from_raw_fd(fd) },
            slots: RefCell::new(Vec::new()),
        })
    }

    /// Adds `fd` (edge-triggered, readable and writable, hang-up included). Call [`Self::deregister`]
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
            events: (libc::EPOLLIN | libc::EPOLLOUT | libc::EPOLLRDHUP | libc::EPOLLET) as u32,
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
                slot.wait_read(cx);
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
                        slot.wait_read(cx);
                    }
                    return Poll::Pending;
                }
                Err(err) => return Poll::Ready(Err(err)),
            }
        }
    }

    /// Sends what `fd` takes of `bytes` now, or waits (until [`Self::wake_ready`] sees
    /// room) when its send buffer is full. `MSG_NOSIGNAL`: a peer that went away is an
    /// `EPIPE` error, not a signal.
    pub fn poll_send(&self, fd: RawFd, cx: &Context<'_>, bytes: &[u8]) -> Poll<io::Result<usize>> {
        loop {
            // SAFETY: `bytes` is valid for `bytes.len()` bytes for the call.
            let n = unsafe {
                libc::send(
                    fd,
                    bytes.as_ptr().cast(),
                    bytes.len(),
                    libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
                )
            };
            if n >= 0 {
                return Poll::Ready(Ok(n as usize));
            }
            let err = io::Error::last_os_error();
            match err.kind() {
                io::ErrorKind::Interrupted => continue,
                io::ErrorKind::WouldBlock => {
                    if let Some(slot) = self.slots.borrow_mut().get_mut(fd as usize) {
                        keep_waker(&mut slot.writer, cx);
                    }
                    return Poll::Pending;
                }
                _ => return Poll::Ready(Err(err)),
            }
        }
    }

    /// Accepts a connection on `fd`, a registered non-blocking listener, or waits (until
    /// [`Self::wake_ready`] sees one arrive). The new socket is non-blocking and
    /// close-on-exec; `accept4` copies the listener's `TCP_NODELAY` to it.
    pub fn poll_accept(&self, fd: RawFd, cx: &Context<'_>) -> Poll<io::Result<OwnedFd>> {
        self.poll_read_with(
            fd,
            cx,
            |_| false,
            || {
                // SAFETY: a null address asks for no peer address; the result is checked.
                let new = unsafe {
                    libc::accept4(
                        fd,
                        std::ptr::null_mut(),
                        std::ptr::null_mut(),
                        libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                    )
                };
                if new < 0 {
                    return Err(io::Error::last_os_error());
                }
                // SAFETY: `new` is a descriptor `accept4` just created for us alone.
                Ok(unsafe { OwnedFd::from_raw_fd(new) })
            },
        )
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
        const READABLE: u32 =
            (libc::EPOLLIN | libc::EPOLLRDHUP | libc::EPOLLHUP | libc::EPOLLERR) as u32;
        const WRITABLE: u32 = (libc::EPOLLOUT | libc::EPOLLHUP | libc::EPOLLERR) as u32;
        let mut slots = self.slots.borrow_mut();
        for e in &events[..n as usize] {
            let Some(slot) = slots.get_mut(e.u64 as usize) else {
                continue;
            };
            // Every report carries the socket's whole state: a byte's edge says
            // `EPOLLOUT` too while there is room, which wakes only a writer that waits.
            if e.events & READABLE != 0 {
                slot.drained = false;
                if let Some(w) = slot.waker.take() {
                    w.wake();
                }
            }
            if e.events & WRITABLE != 0 {
                if let Some(w) = slot.writer.take() {
                    w.wake();
                }
            }
        }
        n as usize
    }
}

impl Slot {
    /// Has `cx`'s task woken when the fd turns readable.
    fn wait_read(&mut self, cx: &Context<'_>) {
        keep_waker(&mut self.waker, cx);
    }
}

/// Keeps `cx`'s waker in `slot`, cloning it only when the slot holds another.
fn keep_waker(slot: &mut Option<Waker>, cx: &Context<'_>) {
    match slot {
        Some(w) if w.will_wake(cx.waker()) => {}
        _ => *slot = Some(cx.waker().clone()),
    }
}

/// The epoll descriptor: readable while the set has a ready socket, so an owner can
/// wait on the whole set with one poll of it.
impl AsFd for SocketSet {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.epfd.as_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
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

    impl Count {
        /// A waker that counts its wake-ups, and the count.
        fn waker() -> (Arc<Count>, Waker) {
            let count = Arc::new(Count(AtomicUsize::new(0)));
            (count.clone(), Waker::from(count))
        }

        fn get(&self) -> usize {
            self.0.load(Ordering::SeqCst)
        }
    }

    /// A set with `fd` registered, and a waker that counts its wake-ups.
    fn watching(fd: RawFd) -> (SocketSet, Arc<Count>, Waker) {
        let set = SocketSet::new().unwrap();
        set.register(fd).unwrap();
        let (count, waker) = Count::waker();
        (set, count, waker)
    }

    #[test]
    fn a_reader_waits_until_its_socket_is_ready_and_is_woken_once() {
        let (ours, mut theirs) = UnixStream::pair().unwrap();
        let fd = ours.as_raw_fd();
        let (set, count, waker) = watching(fd);
        let cx = Context::from_waker(&waker);
        let mut buf = [0u8; 8];
        let mut events = [NO_EVENT; 4];

        assert!(set.poll_recv(fd, &cx, &mut buf).is_pending());
        // A new socket is reported once, as writable: that wakes no reader.
        assert_eq!(set.wake_ready(&mut events), 1);
        assert_eq!(events[0].events & libc::EPOLLIN as u32, 0);
        assert_eq!(count.get(), 0);
        assert_eq!(set.wake_ready(&mut events), 0);

        theirs.write_all(b"hi").unwrap();
        assert_eq!(set.wake_ready(&mut events), 1);
        assert_eq!(count.get(), 1);
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
        let (ours, mut theirs) = UnixStream::pair().unwrap();
        let fd = ours.as_raw_fd();
        let (set, count, waker) = watching(fd);
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
        assert_eq!(count.get(), 0);
        assert_eq!(set.wake_ready(&mut events), 1);
        assert_eq!(count.get(), 1);
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

    #[test]
    fn an_acceptor_waits_for_a_connection_and_gets_a_non_blocking_socket() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let fd = listener.as_raw_fd();
        let (set, count, waker) = watching(fd);
        let cx = Context::from_waker(&waker);
        let mut events = [NO_EVENT; 4];

        assert!(set.poll_accept(fd, &cx).is_pending());
        let _client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        assert_eq!(set.wake_ready(&mut events), 1);
        assert_eq!(count.get(), 1);
        let Poll::Ready(Ok(accepted)) = set.poll_accept(fd, &cx) else {
            panic!("the connection was not accepted");
        };
        // SAFETY: reading the flags of a descriptor we own.
        let flags = unsafe { libc::fcntl(accepted.as_raw_fd(), libc::F_GETFL) };
        assert_ne!(flags & libc::O_NONBLOCK, 0, "the accepted socket blocks");
        assert!(set.poll_accept(fd, &cx).is_pending());
    }

    #[test]
    fn a_writer_waits_for_room_and_is_woken_when_the_peer_reads() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let mut peer = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (ours, _) = listener.accept().unwrap();
        ours.set_nonblocking(true).unwrap();
        let fd = ours.as_raw_fd();
        let (set, count, waker) = watching(fd);
        let cx = Context::from_waker(&waker);
        let mut events = [NO_EVENT; 4];
        // The first report of a new socket says it is writable; nobody waits yet.
        set.wake_ready(&mut events);
        assert_eq!(count.get(), 0);

        let chunk = vec![7u8; 64 * 1024];
        let mut sent = 0usize;
        loop {
            match set.poll_send(fd, &cx, &chunk) {
                Poll::Ready(Ok(n)) => sent += n,
                Poll::Pending => break,
                Poll::Ready(Err(err)) => panic!("send failed: {err}"),
            }
            assert!(sent < 1 << 30, "the send buffer never filled");
        }
        assert_eq!(count.get(), 0);
        let mut sink = vec![0u8; sent];
        peer.read_exact(&mut sink).unwrap();
        assert!(sink.iter().all(|&b| b == 7));
        assert!(set.wake_ready(&mut events) >= 1);
        assert_eq!(count.get(), 1, "the writer was not woken");
        assert!(matches!(set.poll_send(fd, &cx, &chunk), Poll::Ready(Ok(n)) if n > 0));
    }
}
