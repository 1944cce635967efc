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

use std::collections::VecDeque;
use std::task::Waker;
use std::time::Instant;

use bytes::Bytes;

use super::telemetry::{Recorder, Stage};

/// Largest gathered write; a frame at least this big is written straight from its `Bytes`.
pub const GATHER_BYTES: usize = 16 * 1024;

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

#[derive(Debug, Default)]
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
}

impl Outbound {
    pub fn new(limit: usize) -> Outbound {
        Outbound {
            limit,
            ..Outbound::default()
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

    /// The bytes to write next, gathering small frames into one buffer. Empty when idle.
    /// Deltas taken for writing are recorded in `telemetry` (flush -> write).
    pub fn next_chunk(&mut self, telemetry: Option<&Recorder>) -> &[u8] {
        if self.direct.is_none() && self.committed_at >= self.committed.len() {
            self.refill(telemetry);
        }
        match &self.direct {
            Some((frame, at)) => &frame[*at..],
            None => &self.committed[self.committed_at..],
        }
    }

    /// Takes queued frames for the next write: small ones copied into one buffer (one
    /// syscall for many frames), a large one on its own without a copy.
    fn refill(&mut self, telemetry: Option<&Recorder>) {
        let now = telemetry.and(self.queue.front()).map(|_| Instant::now());
        let record = |q: &Queued| {
            if let (Some(t), Some(now), Some(at)) = (telemetry, now, q.flushed_at) {
                t.record(Stage::FlushToWrite, now.saturating_duration_since(at));
            }
        };
        self.committed.clear();
        self.committed_at = 0;
        if self.committed.capacity() > 4 * GATHER_BYTES {
            self.committed = Vec::new();
        }
        while let Some(front) = self.queue.front() {
            let len = front.frame.len();
            if self.committed.is_empty() && len >= GATHER_BYTES {
                let q = self.take_front();
                record(&q);
                self.direct = Some((q.frame, 0));
                return;
            }
            if !self.committed.is_empty() && self.committed.len() + len > GATHER_BYTES {
                return;
            }
            let q = self.take_front();
            record(&q);
            self.committed.extend_from_slice(&q.frame);
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

    /// Records that `n` bytes of the last chunk were written.
    pub fn advance(&mut self, n: usize) {
        if let Some((frame, at)) = &mut self.direct {
            *at += n;
            if *at >= frame.len() {
                self.direct = None;
            }
        } else {
            self.committed_at += n;
        }
    }

    /// Bytes held for this connection (queued or committed and unwritten).
    #[cfg(test)]
    pub fn held_bytes(&self) -> usize {
        let direct = self.direct.as_ref().map_or(0, |(f, at)| f.len() - at);
        self.queued_bytes + (self.committed.len() - self.committed_at) + direct
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drain(out: &mut Outbound) -> Vec<u8> {
        let mut all = Vec::new();
        loop {
            let chunk = out.next_chunk(None).to_vec();
            if chunk.is_empty() {
                return all;
            }
            // Write in two halves to exercise partial writes.
            let half = chunk.len().div_ceil(2);
            all.extend_from_slice(&chunk[..half]);
            out.advance(half);
            let rest = out.next_chunk(None).to_vec();
            assert_eq!(rest, chunk[half..]);
            all.extend_from_slice(&rest);
            out.advance(rest.len());
        }
    }

    #[test]
    fn writes_frames_in_order_gathering_small_ones() {
        let mut out = Outbound::new(1 << 20);
        out.push_control(Bytes::from_static(b"ab"));
        out.push_delta(Bytes::from_static(b"cd"), None);
        out.push_delta(Bytes::from(vec![b'x'; GATHER_BYTES + 1]), None);
        out.push_control(Bytes::from_static(b"ef"));
        let mut want = b"abcd".to_vec();
        want.extend(vec![b'x'; GATHER_BYTES + 1]);
        want.extend_from_slice(b"ef");
        assert_eq!(drain(&mut out), want);
        assert!(out.is_empty());
        assert_eq!(out.held_bytes(), 0);
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
        assert_eq!(drain(&mut out), b"ack");
    }

    #[test]
    fn committed_bytes_survive_an_overflow() {
        let mut out = Outbound::new(8);
        out.push_delta(Bytes::from_static(b"12345678"), None);
        assert_eq!(out.next_chunk(None), b"12345678");
        out.advance(3);
        assert_eq!(
            out.push_delta(Bytes::from_static(b"abcdefgh"), None),
            Pushed::Queued
        );
        assert_eq!(
            out.push_delta(Bytes::from_static(b"z"), None),
            Pushed::DroppedDeltas
        );
        assert_eq!(drain(&mut out), b"45678");
    }

    #[test]
    fn control_frames_alone_congest() {
        let mut out = Outbound::new(4);
        out.push_control(Bytes::from_static(b"12345"));
        assert!(out.is_congested());
        let _ = drain(&mut out);
        assert!(!out.is_congested());
    }
}
