//! The incoming-message state machine: client bytes in, one event out.
//!
//! The connection task keeps a read buffer, appends what the socket returns and hands the
//! whole unconsumed part to [`Reader::read`]:
//!
//! ```text
//! loop {
//!     let (consumed, event) = reader.read(&mut read_buf)?;   // Err: close with err.close_code()
//!     let more = event.is_some();
//!     if let Some(event) = event { handle(event) }            // borrows read_buf or the reader
//!     read_buf.drain(..consumed);
//!     if !more { read more bytes from the socket into read_buf }
//! }
//! ```
//!
//! # Contract of [`Reader::read`]
//!
//! - It consumes bytes from the front of `buf` and returns how many; the caller removes
//!   exactly that many (after it is done with the event) and keeps the rest for the next
//!   call, followed by whatever the socket delivers next.
//! - It returns at most one event. `(n, Some(event))`: call again (after draining `n`),
//!   more events may already be in the buffer. `(n, None)`: everything usable has been
//!   consumed (`n` may be 0 or not); read more bytes before calling again.
//! - What it leaves unconsumed is only ever an incomplete frame header (at most 14 bytes)
//!   or an incomplete control frame (at most 14 + 125 bytes). Payload bytes of data frames
//!   are consumed as they arrive, so the read buffer never has to hold a large frame and
//!   invalid UTF-8 is detected in the middle of a frame (fail fast).
//! - Events borrow either `buf` (a complete, unfragmented data frame, or a control frame:
//!   unmasked in place, zero copy) or the reader's message buffer (a fragmented message,
//!   or a frame whose payload arrived over several calls). Either way the event lives
//!   until the caller drains or calls again.
//! - Control frames between the fragments of a message are delivered as they arrive.
//! - On `Err`, or after an [`Incoming::Close`], the caller stops reading: the reader's
//!   state is unspecified afterwards.
//!
//! # Invariants
//!
//! - Never panics on client bytes; every broken rule is a [`ProtocolError`].
//! - Work and copies are linear in the input: every payload byte is unmasked once and
//!   copied at most once; text is validated once incrementally (plus one pass when an
//!   assembled message is handed out as `&str`).

use super::frame::{apply_mask, decode_header_with, FrameHeader, Opcode};
use super::utf8::Utf8Validator;
use super::{is_valid_close_code, Limits, ProtocolError};

/// A message buffer grown beyond this is dropped once its message has been handed out,
/// so one large message does not pin its memory for the life of the connection.
const RETAINED_CAPACITY: usize = 16 << 10;

/// One thing received from the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Incoming<'a> {
    /// A complete text message, validated UTF-8.
    Text(&'a str),
    /// A complete binary message.
    Binary(&'a [u8]),
    /// A ping; answer with a pong carrying the same payload.
    Ping(&'a [u8]),
    /// A pong (unsolicited or answering our ping).
    Pong(&'a [u8]),
    /// A close frame, with its code and reason when it has a body. Answer with a close
    /// frame and stop reading.
    Close(Option<CloseFrame<'a>>),
}

/// The body of a close frame: an allowed code ([`is_valid_close_code`]) and a UTF-8 reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CloseFrame<'a> {
    /// The close code.
    pub code: u16,
    /// The reason, possibly empty.
    pub reason: &'a str,
}

/// Kind of a data message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DataKind {
    Text,
    Binary,
}

/// A data frame whose payload is still arriving.
#[derive(Debug, Clone, Copy)]
struct PartialFrame {
    fin: bool,
    mask: [u8; 4],
    /// Payload bytes already unmasked (the masking key phase).
    received: usize,
    /// Payload bytes still to come; never 0 while the frame is pending.
    remaining: usize,
}

/// What `advance` found, as positions, so `read` can borrow it for the caller.
#[derive(Debug, Clone, Copy)]
enum Ready {
    /// A payload in the caller's buffer, already unmasked.
    InPlace {
        opcode: Opcode,
        start: usize,
        end: usize,
    },
    /// The message in `Reader::message` is complete.
    Assembled(DataKind),
}

/// Assembles client frames into messages. One per connection.
#[derive(Debug)]
pub struct Reader {
    limits: Limits,
    /// The data frame whose payload is being received, if any.
    partial: Option<PartialFrame>,
    /// Kind of the fragmented message awaiting continuation frames, if any.
    open: Option<DataKind>,
    /// Kind of the message in `message`.
    kind: DataKind,
    /// Payload of a message being assembled from several frames or reads.
    message: Vec<u8>,
    /// Frames of the current message so far.
    fragments: usize,
    /// UTF-8 progress over `message` when `kind` is text.
    utf8: Utf8Validator,
    /// `message` was handed out by the previous call and may be released.
    delivered: bool,
}

impl Reader {
    /// A reader enforcing `limits`.
    pub fn new(limits: Limits) -> Self {
        Reader {
            limits,
            partial: None,
            open: None,
            kind: DataKind::Binary,
            message: Vec::new(),
            fragments: 0,
            utf8: Utf8Validator::default(),
            delivered: false,
        }
    }

    /// The limits this reader enforces.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Consumes bytes from the front of `buf` and returns at most one event; see the
    /// module docs for the exact contract. `buf` is modified in place (unmasking).
    pub fn read<'a>(
        &'a mut self,
        buf: &'a mut [u8],
    ) -> Result<(usize, Option<Incoming<'a>>), ProtocolError> {
        let (consumed, ready) = self.advance(buf)?;
        let event = match ready {
            None => None,
            Some(Ready::InPlace { opcode, start, end }) => {
                let buf: &'a [u8] = buf;
                Some(in_place_event(
                    opcode,
                    buf.get(start..end).unwrap_or_default(),
                )?)
            }
            Some(Ready::Assembled(DataKind::Binary)) => Some(Incoming::Binary(&self.message)),
            Some(Ready::Assembled(DataKind::Text)) => {
                let text = self
                    .utf8
                    .finish(&self.message)
                    .map_err(|_| ProtocolError::InvalidUtf8)?;
                Some(Incoming::Text(text))
            }
        };
        Ok((consumed, event))
    }

    /// Consumes frames from `buf` until one yields an event or more bytes are needed.
    fn advance(&mut self, buf: &mut [u8]) -> Result<(usize, Option<Ready>), ProtocolError> {
        if self.delivered {
            self.release_message();
        }
        let mut pos = 0;
        loop {
            if let Some(frame) = self.partial {
                let take = frame.remaining.min(buf.len() - pos);
                if take == 0 {
                    return Ok((pos, None));
                }
                let chunk = &mut buf[pos..pos + take];
                apply_mask(chunk, frame.mask, frame.received);
                self.append(chunk)?;
                pos += take;
                if take < frame.remaining {
                    self.partial = Some(PartialFrame {
                        received: frame.received + take,
                        remaining: frame.remaining - take,
                        ..frame
                    });
                    return Ok((pos, None));
                }
                self.partial = None;
                if frame.fin {
                    return Ok((pos, Some(self.complete_message())));
                }
                continue;
            }

            let decoded = decode_header_with(&buf[pos..], &self.limits, |opcode, _fin, len| {
                self.check_data_frame(opcode, len).map(drop)
            })?;
            let Some((header, header_len)) = decoded else {
                return Ok((pos, None));
            };
            let start = pos + header_len;
            let end = start + header.payload_len;

            if header.opcode.is_control() {
                // Control frames are at most 125 bytes: wait for the whole frame and hand
                // it out in place.
                if end > buf.len() {
                    return Ok((pos, None));
                }
                apply_mask(&mut buf[start..end], header.mask, 0);
                let ready = Ready::InPlace {
                    opcode: header.opcode,
                    start,
                    end,
                };
                return Ok((end, Some(ready)));
            }

            let kind = self.begin_data_frame(&header)?;
            let unfragmented = header.fin && header.opcode != Opcode::Continuation;
            if unfragmented && end <= buf.len() {
                // The hot path: a whole message in one frame, all in the buffer.
                apply_mask(&mut buf[start..end], header.mask, 0);
                let opcode = match kind {
                    DataKind::Text => Opcode::Text,
                    DataKind::Binary => Opcode::Binary,
                };
                return Ok((end, Some(Ready::InPlace { opcode, start, end })));
            }
            pos = start;
            if header.payload_len > 0 {
                self.partial = Some(PartialFrame {
                    fin: header.fin,
                    mask: header.mask,
                    received: 0,
                    remaining: header.payload_len,
                });
            } else if header.fin {
                return Ok((pos, Some(self.complete_message())));
            }
        }
    }

    /// The rules a data frame header must satisfy given the reader's state: fragmentation
    /// (section 5.4) and the message limits. Returns the kind of the message the frame
    /// belongs to; `None` for a control frame, which none of these rules concern.
    fn check_data_frame(
        &self,
        opcode: Opcode,
        payload_len: usize,
    ) -> Result<Option<DataKind>, ProtocolError> {
        let (kind, received) = match opcode {
            Opcode::Continuation => {
                // A continuation frame continues "a fragmented message"; there must be one.
                let kind = self.open.ok_or(ProtocolError::UnexpectedContinuation)?;
                if self.fragments >= self.limits.max_fragments.max(1) {
                    return Err(ProtocolError::TooManyFragments {
                        max: self.limits.max_fragments,
                    });
                }
                (kind, self.message.len())
            }
            Opcode::Text | Opcode::Binary => {
                // "The fragments of one message MUST NOT be interleaved between the
                // fragments of another message" (section 5.4).
                if self.open.is_some() {
                    return Err(ProtocolError::ExpectedContinuation);
                }
                let kind = if opcode == Opcode::Text {
                    DataKind::Text
                } else {
                    DataKind::Binary
                };
                (kind, 0)
            }
            Opcode::Close | Opcode::Ping | Opcode::Pong => return Ok(None),
        };
        let size = received.saturating_add(payload_len);
        if size > self.limits.max_message_size {
            return Err(ProtocolError::MessageTooLarge {
                size,
                max: self.limits.max_message_size,
            });
        }
        Ok(Some(kind))
    }

    /// Checks a complete data frame header and updates the message state for it.
    fn begin_data_frame(&mut self, header: &FrameHeader) -> Result<DataKind, ProtocolError> {
        // Control frames never get here; refusing one keeps this total without a panic.
        let kind = self
            .check_data_frame(header.opcode, header.payload_len)?
            .ok_or(ProtocolError::UnknownOpcode(header.opcode.as_u8()))?;
        if header.opcode == Opcode::Continuation {
            self.fragments += 1;
        } else {
            self.message.clear();
            self.utf8.reset();
            self.kind = kind;
            self.fragments = 1;
        }
        self.open = if header.fin { None } else { Some(kind) };
        Ok(kind)
    }

    /// Appends unmasked payload bytes to the message, failing fast on invalid text.
    fn append(&mut self, payload: &[u8]) -> Result<(), ProtocolError> {
        self.message.extend_from_slice(payload);
        if self.kind == DataKind::Text {
            self.utf8
                .advance(&self.message)
                .map_err(|_| ProtocolError::InvalidUtf8)?;
        }
        Ok(())
    }

    /// The last frame of the message in `message` has been received.
    fn complete_message(&mut self) -> Ready {
        self.delivered = true;
        Ready::Assembled(self.kind)
    }

    /// Empties the message buffer after its message was handed out, dropping it if a
    /// large message made it grow.
    fn release_message(&mut self) {
        self.delivered = false;
        if self.message.capacity() > RETAINED_CAPACITY {
            self.message = Vec::new();
        } else {
            self.message.clear();
        }
        self.utf8.reset();
    }
}

/// Builds the event for an unmasked payload lying in the caller's buffer.
fn in_place_event(opcode: Opcode, payload: &[u8]) -> Result<Incoming<'_>, ProtocolError> {
    Ok(match opcode {
        Opcode::Text => {
            Incoming::Text(std::str::from_utf8(payload).map_err(|_| ProtocolError::InvalidUtf8)?)
        }
        Opcode::Binary | Opcode::Continuation => Incoming::Binary(payload),
        Opcode::Ping => Incoming::Ping(payload),
        Opcode::Pong => Incoming::Pong(payload),
        Opcode::Close => Incoming::Close(parse_close(payload)?),
    })
}

/// Validates a close frame body (section 5.5.1): empty, or a 2-byte code followed by a
/// UTF-8 reason.
fn parse_close(payload: &[u8]) -> Result<Option<CloseFrame<'_>>, ProtocolError> {
    let (code, reason) = match payload {
        [] => return Ok(None),
        [_] => return Err(ProtocolError::InvalidClosePayload),
        [high, low, reason @ ..] => (u16::from_be_bytes([*high, *low]), reason),
    };
    if !is_valid_close_code(code) {
        return Err(ProtocolError::BadCloseCode(code));
    }
    let reason = std::str::from_utf8(reason).map_err(|_| ProtocolError::InvalidUtf8)?;
    Ok(Some(CloseFrame { code, reason }))
}

#[cfg(test)]
mod tests;
