//! A connection's bounded outbound queue.
//!
//! Frames are `Bytes` shared with every other socket that gets the same delta; the queue
//! holds references, never copies, until the writer gathers small frames into one write.
//!
//! Invariants:
//! - Bytes already handed to the writer (`committed`) are never dropped: a frame is either
//!   written whole or the connection dies.
//! - When queued deltas would pass `limit`, every queued delta is dropped and the caller
//!   resynchronizes the client with snapshots (a snapshot supersedes every delta before
//!   it). Control frames (acks, errors, replies) are never dropped; the connection stops
//!   reading requests while they alone pass the limit, so a client that does not read its
//!   answers cannot make the server hold more.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::io;
use std::task::{ready, Poll, Waker};
use std::time::Instant;

use bytes::Bytes;

use super::metrics::AllMetrics;
use super::telemetry::{Recorder, Stage};

/// Largest gathered write; a frame at least this big, or alone in the queue, is written
/// straight from its `Bytes`.
pub const GATHER_BYTES: usize = 16 * 1024;

thread_local! {
    /// Every connection of a shard gathers its small frames here (one executor per thread).
    static GATHER: RefCell<Vec<u8>> = RefCell::new(Vec::with_capacity(GATHER_BYTES));
}

fn record(telemetry: Option<&Recorder>, now: Option<Instant>, q: &Queued) {
    if let (Some(t), Some(now), Some(at)) = (telemetry, now, q.flushed_at) {
        t.record(Stage::FlushToWrite, now.saturating_duration_since(at));
    }
}

/// One write; a socket that takes nothing is an error, not progress.
fn write_some(
    write: &mut impl FnMut(&[u8]) -> Poll<io::Result<usize>>,
    bytes: &[u8],
) -> Poll<io::Result<usize>> {
    match ready!(write(bytes)) {
        Ok(0) => Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
        other => Poll::Ready(other),
    }
}

#[derive(Debug)]
struct Queued {
    frame: Bytes,
    is_delta: bool,
    /// When the delta was flushed, for the flush -> write latency.
    flushed_at: Option<Instant>,
}

/// What a push did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pushed {
    Queued,
    /// The queue passed its limit: the queued deltas (and this one) were dropped.
    DroppedDeltas,
}

#[derive(Default)]
pub struct Outbound {
    queue: VecDeque<Queued>,
    queued_bytes: usize,
    control_bytes: usize,
    limit: usize,
    /// Bytes taken off the queue for the current write, and how many are written.
    committed: Vec<u8>,
    committed_at: usize,
    /// A large frame being written without a copy, and how much of it is written.
    direct: Option<(Bytes, usize)>,
    waker: Option<Waker>,
    closed: bool,
    /// The most bytes this connection has held, and the shard gauge it raises
    /// (`kasagi_outbound_peak_bytes`): one relaxed `fetch_max` per new personal record.
    peak: usize,
    peak_gauge: Option<(AllMetrics, usize)>,
}

impl Outbound {
    pub fn new(limit: usize) -> Outbound {
        Outbound {
            limit,
            ..Outbound::default()
        }
    }

    /// Reports this queue's high-water mark to shard `shard`'s `outbound_peak`.
    pub fn with_peak_gauge(mut self, metrics: AllMetrics, shard: usize) -> Outbound {
        self.peak_gauge = Some((metrics, shard));
        self
    }

    fn note_peak(&mut self) {
        let held = self.held_bytes();
        if held > self.peak {
            self.peak = held;
            if let Some((metrics, shard)) = &self.peak_gauge {
                metrics[*shard]
                    .outbound_peak
                    .fetch_max(held as u64, std::sync::atomic::Ordering::Relaxed);
            }
        }
    }

    /// Queues a frame that must reach the client (ack, error, snapshot, close).
    pub fn push_control(&mut self, frame: Bytes) {
        if self.closed {
            return;
        }
        self.queued_bytes += frame.len();
        self.control_bytes += frame.len();
        self.queue.push_back(Queued {
            frame,
            is_delta: false,
            flushed_at: None,
        });
        self.note_peak();
        self.wake();
    }

    /// Queues a fan-out frame (a delta when `flushed_at` is set, else presence or `msg`);
    /// past the limit every queued fan-out frame is dropped instead.
    pub fn push_delta(&mut self, frame: Bytes, flushed_at: Option<Instant>) -> Pushed {
        if self.closed {
            return Pushed::Queued;
        }
        if self.queued_bytes + frame.len() > self.limit {
            self.queue.retain(|q| !q.is_delta);
            self.queued_bytes = self.control_bytes;
            return Pushed::DroppedDeltas;
        }
        self.queued_bytes += frame.len();
        self.queue.push_back(Queued {
            frame,
            is_delta: true,
            flushed_at,
        });
        self.note_peak();
        self.wake();
        Pushed::Queued
    }

    /// Stops taking frames (after a close frame was queued).
    pub fn close(&mut self) {
        self.closed = true;
    }

    /// True when control frames alone fill the queue: the reader should pause.
    pub fn is_congested(&self) -> bool {
        self.control_bytes > self.limit
    }

    /// True when nothing is waiting to be written.
    pub fn is_empty(&self) -> bool {
        self.queue.is_empty() && self.committed_at >= self.committed.len() && self.direct.is_none()
    }

    pub fn set_waker(&mut self, waker: &Waker) {
        match &self.waker {
            Some(w) if w.will_wake(waker) => {}
            _ => self.waker = Some(waker.clone()),
        }
    }

    fn wake(&mut self) {
        if let Some(w) = self.waker.take() {
            w.wake();
        }
    }

    /// Writes queued frames through `write` (a socket's `poll_write`) until the queue is
    /// empty (`Ready(Ok(bytes written))`) or the socket is full (`Pending`). Small frames
    /// are gathered into the shard's scratch buffer, so one write carries many of them and
    /// an idle connection holds no write buffer; only bytes a full socket did not take are
    /// copied into the connection's own. Deltas handed to the socket are recorded in
    /// `telemetry` (flush -> write).
    pub fn write_with(
        &mut self,
        telemetry: Option<&Recorder>,
        mut write: impl FnMut(&[u8]) -> Poll<io::Result<usize>>,
    ) -> Poll<io::Result<usize>> {
        let mut total = 0;
        loop {
            if let Some((frame, at)) = &mut self.direct {
                let n = ready!(write_some(&mut write, &frame[*at..]))?;
                total += n;
                *at += n;
                if *at >= frame.len() {
                    self.direct = None;
                }
                continue;
            }
            if self.committed_at < self.committed.len() {
                let n = ready!(write_some(&mut write, &self.committed[self.committed_at..]))?;
                total += n;
                self.committed_at += n;
                if self.committed_at >= self.committed.len() {
                    self.committed = Vec::new();
                    self.committed_at = 0;
                }
                continue;
            }
            let Some(front) = self.queue.front() else {
                return Poll::Ready(Ok(total));
            };
            let now = telemetry.map(|_| Instant::now());
            // A lone frame (the usual case: one delta per socket per turn) or a big one is
            // written from its shared `Bytes`; gathering would only copy it.
            if front.frame.len() >= GATHER_BYTES || self.queue.len() == 1 {
                let q = self.take_front();
                record(telemetry, now, &q);
                self.direct = Some((q.frame, 0));
                continue;
            }
            let written = GATHER.with(|gather| {
                let mut gather = gather.borrow_mut();
                gather.clear();
                while let Some(front) = self.queue.front() {
                    if !gather.is_empty() && gather.len() + front.frame.len() > GATHER_BYTES {
                        break;
                    }
                    let q = self.take_front();
                    record(telemetry, now, &q);
                    gather.extend_from_slice(&q.frame);
                }
                let written = match write_some(&mut write, &gather) {
                    Poll::Ready(Ok(n)) => n,
                    Poll::Pending => 0,
                    Poll::Ready(Err(e)) => return Err(e),
                };
                if written < gather.len() {
                    self.committed.extend_from_slice(&gather[written..]);
                }
                Ok(written)
            })?;
            total += written;
            if written == 0 {
                // The socket is full; what was gathered waits in `committed`.
                return Poll::Pending;
            }
        }
    }

    fn take_front(&mut self) -> Queued {
        let q = self.queue.pop_front().expect("front checked by caller");
        self.queued_bytes -= q.frame.len();
        if !q.is_delta {
            self.control_bytes -= q.frame.len();
        }
        q
    }

    /// Bytes held for this connection (queued or committed and unwritten).
    pub fn held_bytes(&self) -> usize {
        let direct = self.direct.as_ref().map_or(0, |(f, at)| f.len() - at);
        self.queued_bytes + (self.committed.len() - self.committed_at) + direct
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Drains through a socket that takes at most `step` bytes per write and is full
    /// every other call.
    fn drain(out: &mut Outbound, step: usize) -> Vec<u8> {
        let mut all = Vec::new();
        let mut full = false;
        loop {
            let polled = out.write_with(None, |bytes| {
                full = !full;
                if full {
                    return Poll::Pending;
                }
                let n = bytes.len().min(step);
                all.extend_from_slice(&bytes[..n]);
                Poll::Ready(Ok(n))
            });
            match polled {
                Poll::Ready(Ok(_)) if out.is_empty() => return all,
                Poll::Ready(Ok(_)) | Poll::Pending => {}
                Poll::Ready(Err(e)) => panic!("{e}"),
            }
        }
    }

    #[test]
    fn writes_frames_in_order_through_partial_and_blocked_writes() {
        for step in [1, 3, 7, 1000, usize::MAX] {
            let mut out = Outbound::new(1 << 20);
            out.push_control(Bytes::from_static(b"ab"));
            out.push_delta(Bytes::from_static(b"cd"), None);
            out.push_delta(Bytes::from(vec![b'x'; GATHER_BYTES + 1]), None);
            out.push_control(Bytes::from_static(b"ef"));
            let mut want = b"abcd".to_vec();
            want.extend(vec![b'x'; GATHER_BYTES + 1]);
            want.extend_from_slice(b"ef");
            assert_eq!(drain(&mut out, step), want, "step {step}");
            assert!(out.is_empty());
            assert_eq!(out.held_bytes(), 0);
            assert_eq!(out.committed.capacity(), 0, "leftover buffer freed");
        }
    }

    #[test]
    fn one_write_carries_many_small_frames() {
        let mut out = Outbound::new(1 << 20);
        for _ in 0..100 {
            out.push_delta(Bytes::from_static(b"0123456789"), None);
        }
        let mut writes = 0;
        let polled = out.write_with(None, |bytes| {
            writes += 1;
            Poll::Ready(Ok(bytes.len()))
        });
        assert!(matches!(polled, Poll::Ready(Ok(1000))));
        assert_eq!(writes, 1);
    }

    #[test]
    fn a_lone_frame_is_written_from_its_own_bytes() {
        let frame = Bytes::from(b"0123456789".to_vec());
        let mut out = Outbound::new(1 << 20);
        out.push_delta(frame.clone(), None);
        // The socket takes 4 bytes per call: every slice it sees is the shared frame's.
        let mut seen = Vec::new();
        while !out.is_empty() {
            let polled = out.write_with(None, |bytes| {
                seen.push(bytes.as_ptr());
                Poll::Ready(Ok(bytes.len().min(4)))
            });
            assert!(matches!(polled, Poll::Ready(Ok(_)) | Poll::Pending));
        }
        let base = frame.as_ptr();
        assert_eq!(seen, [base, base.wrapping_add(4), base.wrapping_add(8)]);
    }

    #[test]
    fn a_socket_that_takes_nothing_is_an_error() {
        let mut out = Outbound::new(1 << 20);
        out.push_control(Bytes::from_static(b"ab"));
        let polled = out.write_with(None, |_| Poll::Ready(Ok(0)));
        assert!(matches!(polled, Poll::Ready(Err(e)) if e.kind() == io::ErrorKind::WriteZero));
    }

    #[test]
    fn overflow_drops_queued_deltas_but_keeps_control_frames() {
        let mut out = Outbound::new(10);
        out.push_delta(Bytes::from_static(b"d1d1"), None);
        out.push_control(Bytes::from_static(b"ack"));
        out.push_delta(Bytes::from_static(b"d2"), None);
        assert_eq!(
            out.push_delta(Bytes::from_static(b"d3d3"), None),
            Pushed::DroppedDeltas
        );
        assert_eq!(drain(&mut out, usize::MAX), b"ack");
    }

    #[test]
    fn bytes_handed_to_the_writer_survive_an_overflow() {
        let mut out = Outbound::new(8);
        out.push_delta(Bytes::from_static(b"12345678"), None);
        // The socket takes 3 bytes, then is full: 5 bytes wait in the connection.
        let mut calls = 0;
        let polled = out.write_with(None, |_| {
            calls += 1;
            if calls == 1 {
                Poll::Ready(Ok(3))
            } else {
                Poll::Pending
            }
        });
        assert!(polled.is_pending());
        assert_eq!(
            out.push_delta(Bytes::from_static(b"abcdefgh"), None),
            Pushed::Queued
        );
        assert_eq!(
            out.push_delta(Bytes::from_static(b"z"), None),
            Pushed::DroppedDeltas
        );
        assert_eq!(drain(&mut out, usize::MAX), b"45678");
    }

    #[test]
    fn control_frames_alone_congest() {
        let mut out = Outbound::new(4);
        out.push_control(Bytes::from_static(b"12345"));
        assert!(out.is_congested());
        let _ = drain(&mut out, usize::MAX);
        assert!(!out.is_congested());
    }

    #[test]
    fn the_peak_gauge_keeps_the_most_one_connection_held() {
        let metrics = super::super::metrics::new_all(2);
        let peak = |m: &AllMetrics| {
            m[1].outbound_peak
                .load(std::sync::atomic::Ordering::Relaxed)
        };
        let mut out = Outbound::new(8).with_peak_gauge(metrics.clone(), 1);
        out.push_delta(Bytes::from_static(b"1234"), None);
        out.push_control(Bytes::from_static(b"ack"));
        assert_eq!(peak(&metrics), 7);
        let _ = drain(&mut out, usize::MAX);
        out.push_delta(Bytes::from_static(b"12"), None);
        assert_eq!(peak(&metrics), 7, "a high-water mark does not fall");
        // A second connection on the same shard raises it only past its own record.
        let mut other = Outbound::new(8).with_peak_gauge(metrics.clone(), 1);
        other.push_delta(Bytes::from_static(b"12345678"), None);
        assert_eq!(peak(&metrics), 8);
        assert_eq!(
            metrics[0]
                .outbound_peak
                .load(std::sync::atomic::Ordering::Relaxed),
            0
        );
    }
}
