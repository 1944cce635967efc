//! The hand-rolled, sans-IO RFC 6455 stack.
//!
//! Nothing in this module touches a socket, a clock or a logger: bytes go in, events come
//! out; frames go in, bytes come out. The connection task owns the socket and the read
//! buffer and drives these pieces:
//!
//! - [`handshake`]: parses the HTTP/1.1 upgrade request ([`handshake::parse_request`]),
//!   decides on it in the order of `PROTOCOL.md` ([`handshake::check_upgrade`]) and writes
//!   the `101` or the refusal.
//! - [`frame`]: the frame codec: header decoding with every RFC 6455 rule a server must
//!   enforce, masking, and unmasked server frame encoding (including the zero-copy
//!   [`frame::frame_in_place`] used to frame a payload encoded once for many sockets).
//! - [`reader`]: the incoming-message state machine: fragmentation, control frames between
//!   fragments, size limits, fail-fast UTF-8 validation of text, close frame validation.
//!
//! # Invariants
//!
//! - Nothing here panics on client bytes; every broken rule is a [`ProtocolError`] that
//!   maps to exactly one close code ([`ProtocolError::close_code`]).
//! - Every limit is checked as soon as the bytes that break it have arrived (a frame
//!   header announcing too much fails before its payload arrives).
//! - No extension is ever negotiated, so the RSV bits must always be 0.

pub mod frame;
pub mod handshake;
pub mod reader;
mod utf8;

pub use frame::{Opcode, MAX_HEADER_LEN};
pub use handshake::{HandshakeLimits, Refusal, Request, Upgrade, UpgradePolicy};
pub use reader::{CloseFrame, Incoming, Reader};

/// Size limits for incoming frames and messages.
///
/// "Size" always means payload bytes (frame headers are not counted).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest payload of one frame. A header announcing more fails with
    /// [`ProtocolError::FrameTooLarge`] (close code 1009) before the payload arrives.
    /// Default: 64 KiB (65 536 bytes).
    pub max_frame_size: usize,
    /// Largest payload of one message, counted across all its fragments. Exceeding it
    /// fails with [`ProtocolError::MessageTooLarge`] (1009) as soon as a frame header
    /// announces the excess. Default: 64 KiB (65 536 bytes).
    pub max_message_size: usize,
    /// Most frames one data message may be made of (the first frame included; a value
    /// below 1 behaves as 1). More fails with [`ProtocolError::TooManyFragments`] (1009).
    /// Default: 128.
    pub max_fragments: usize,
}

impl Limits {
    /// Limits for the echo mode used by conformance runs (Autobahn|Testsuite): its
    /// performance cases send 16 MiB messages in one frame, and 4 MiB messages in
    /// fragments as small as 64 bytes (65 536 fragments).
    ///
    /// frame and message: 32 MiB; fragments: 1 048 576.
    pub fn unlimited_for_echo() -> Self {
        Limits {
            max_frame_size: 32 << 20,
            max_message_size: 32 << 20,
            max_fragments: 1 << 20,
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_frame_size: 64 << 10,
            max_message_size: 64 << 10,
            max_fragments: 128,
        }
    }
}

/// Close codes (RFC 6455 section 7.4.1) as used in `PROTOCOL.md`.
pub mod close_code {
    /// Normal close.
    pub const NORMAL: u16 = 1000;
    /// The server is going away (shutdown, drain).
    pub const GOING_AWAY: u16 = 1001;
    /// An RFC 6455 rule was broken.
    pub const PROTOCOL: u16 = 1002;
    /// A data frame of the wrong kind for the subprotocol.
    pub const UNSUPPORTED: u16 = 1003;
    /// Invalid UTF-8, or a message that does not decode.
    pub const INVALID_PAYLOAD: u16 = 1007;
    /// Policy violation (auth expired, sustained rate abuse).
    pub const POLICY: u16 = 1008;
    /// A frame or message above the size limit.
    pub const TOO_BIG: u16 = 1009;
    /// Internal server error.
    pub const INTERNAL: u16 = 1011;
}

/// Whether a peer may send `code` in a close frame.
///
/// Valid: 1000-1003, 1007-1014 (1012-1014 are registered with IANA) and 3000-4999
/// (registered and private use). Everything else is invalid and closes with 1002:
/// 0-999 are unused, 1004 is reserved, 1005 and 1006 must never be sent on the wire
/// (RFC 6455 section 7.4.1), 1015 is reserved for TLS failures, 1016-2999 are reserved
/// for future RFCs, and 5000 and above are undefined.
pub fn is_valid_close_code(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999)
}

/// A broken rule of RFC 6455 (or of our limits) in the bytes a client sent.
///
/// Each variant maps to one close code in [`ProtocolError::close_code`]; after any of them
/// the connection is failed (close frame with that code, then the socket is closed).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    /// "The server MUST close the connection upon receiving a frame that is not masked."
    /// (RFC 6455 section 5.1)
    #[error("client frame is not masked")]
    UnmaskedFrame,
    /// RSV1-3 "MUST be 0 unless an extension is negotiated" (section 5.2); we never
    /// negotiate one.
    #[error("reserved bits set without a negotiated extension")]
    ReservedBitsSet,
    /// Opcodes 0x3-0x7 and 0xB-0xF are reserved (section 5.2).
    #[error("unknown opcode {0:#x}")]
    UnknownOpcode(u8),
    /// "Control frames themselves MUST NOT be fragmented." (section 5.5)
    #[error("fragmented control frame")]
    FragmentedControlFrame,
    /// "All control frames MUST have a payload length of 125 bytes or less" (section 5.5).
    #[error("control frame payload of {0} bytes (at most 125)")]
    ControlFrameTooLong(u64),
    /// A continuation frame arrived while no fragmented message was open.
    #[error("continuation frame without a message to continue")]
    UnexpectedContinuation,
    /// A text or binary frame arrived while a fragmented message was still open: the
    /// fragments of one message must not interleave with another message (section 5.4).
    #[error("new data frame while a fragmented message is open")]
    ExpectedContinuation,
    /// "the most significant bit MUST be 0" of a 64-bit payload length (section 5.2).
    #[error("64-bit payload length with its most significant bit set")]
    LengthTopBitSet,
    /// A text message (or a close reason) that is not valid UTF-8 (sections 5.6, 8.1).
    #[error("invalid UTF-8 in text")]
    InvalidUtf8,
    /// A close frame whose payload is 1 byte: a body must start with a 2-byte code
    /// (section 5.5.1).
    #[error("close frame payload of 1 byte")]
    InvalidClosePayload,
    /// A close code a peer must not send (see [`is_valid_close_code`]).
    #[error("invalid close code {0}")]
    BadCloseCode(u16),
    /// A frame header announced a payload above [`Limits::max_frame_size`].
    #[error("frame payload of {size} bytes exceeds the limit of {max}")]
    FrameTooLarge {
        /// Announced payload length.
        size: u64,
        /// The limit.
        max: usize,
    },
    /// A message (counted across its fragments) above [`Limits::max_message_size`].
    #[error("message of at least {size} bytes exceeds the limit of {max}")]
    MessageTooLarge {
        /// Bytes received plus bytes announced by the frame that broke the limit.
        size: usize,
        /// The limit.
        max: usize,
    },
    /// A message made of more frames than [`Limits::max_fragments`].
    #[error("message of more than {max} fragments")]
    TooManyFragments {
        /// The limit.
        max: usize,
    },
}

impl ProtocolError {
    /// The close code to fail the connection with (`PROTOCOL.md`, "Close codes").
    pub fn close_code(&self) -> u16 {
        match self {
            ProtocolError::UnmaskedFrame
            | ProtocolError::ReservedBitsSet
            | ProtocolError::UnknownOpcode(_)
            | ProtocolError::FragmentedControlFrame
            | ProtocolError::ControlFrameTooLong(_)
            | ProtocolError::UnexpectedContinuation
            | ProtocolError::ExpectedContinuation
            | ProtocolError::LengthTopBitSet
            | ProtocolError::InvalidClosePayload
            | ProtocolError::BadCloseCode(_) => close_code::PROTOCOL,
            ProtocolError::InvalidUtf8 => close_code::INVALID_PAYLOAD,
            ProtocolError::FrameTooLarge { .. }
            | ProtocolError::MessageTooLarge { .. }
            | ProtocolError::TooManyFragments { .. } => close_code::TOO_BIG,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn close_code_validity_follows_protocol_md() {
        let valid = [
            1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014, 3000, 3999,
            4000, 4999,
        ];
        for code in valid {
            assert!(is_valid_close_code(code), "{code} should be valid");
        }
        let invalid = [
            0, 1, 999, 1004, 1005, 1006, 1015, 1016, 1100, 2000, 2999, 5000, 65535,
        ];
        for code in invalid {
            assert!(!is_valid_close_code(code), "{code} should be invalid");
        }
    }

    #[test]
    fn every_error_maps_to_its_close_code() {
        let cases = [
            (ProtocolError::UnmaskedFrame, 1002),
            (ProtocolError::ReservedBitsSet, 1002),
            (ProtocolError::UnknownOpcode(3), 1002),
            (ProtocolError::FragmentedControlFrame, 1002),
            (ProtocolError::ControlFrameTooLong(126), 1002),
            (ProtocolError::UnexpectedContinuation, 1002),
            (ProtocolError::ExpectedContinuation, 1002),
            (ProtocolError::LengthTopBitSet, 1002),
            (ProtocolError::InvalidClosePayload, 1002),
            (ProtocolError::BadCloseCode(999), 1002),
            (ProtocolError::InvalidUtf8, 1007),
            (ProtocolError::FrameTooLarge { size: 1, max: 0 }, 1009),
            (ProtocolError::MessageTooLarge { size: 1, max: 0 }, 1009),
            (ProtocolError::TooManyFragments { max: 1 }, 1009),
        ];
        for (error, code) in cases {
            assert_eq!(error.close_code(), code, "{error}");
        }
    }

    #[test]
    fn default_limits() {
        let limits = Limits::default();
        assert_eq!(limits.max_frame_size, 65_536);
        assert_eq!(limits.max_message_size, 65_536);
        assert_eq!(limits.max_fragments, 128);
        let echo = Limits::unlimited_for_echo();
        assert!(echo.max_frame_size >= 16 << 20);
        assert!(echo.max_message_size >= 16 << 20);
        assert!(echo.max_fragments >= 65_536);
    }
}

#[cfg(test)]
mod interop_tests;
