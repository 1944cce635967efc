//! The messages of `PROTOCOL.md`, in both subprotocols.
//!
//! - [`types`]: room ids, paths, ops, delta ops, error codes (shared with rooms).
//! - [`decode`]: a client frame -> [`ClientMessage`], or why not ([`DecodeError`]:
//!   malformed -> close 1007, bad request -> `error bad_request`).
//! - [`encode`]: a [`ServerMessage`] -> bytes appended to a buffer.
//! - [`msgpack`]: the direct MessagePack reader behind decoding.
//!
//! Invariants: decoding never panics on any bytes and recurses at most a fixed number of
//! levels ([`crate::value::Value::MAX_DEPTH`] plus the envelope); encoding never fails.

pub mod decode;
pub mod encode;
pub mod msgpack;
pub mod types;

#[cfg(test)]
mod tests;

pub use decode::{decode_client, ClientMessage, DecodeError};
pub use encode::{encode_client_into, encode_into, ServerMessage};
pub use msgpack::Malformed;
pub use types::{DeltaOp, ErrorCode, Op, Path, PathSeg, RoomId};

/// The two subprotocols a client can pick in the handshake.
///
/// The default (no subprotocol offered) is MessagePack.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Subprotocol {
    /// `kasagi.v1.msgpack`: one MessagePack value per binary frame.
    #[default]
    MsgPack,
    /// `kasagi.v1.json`: one JSON value per text frame.
    Json,
}

impl Subprotocol {
    /// Every subprotocol, in the order of [`Subprotocol::NAMES`].
    pub const ALL: [Subprotocol; 2] = [Subprotocol::MsgPack, Subprotocol::Json];

    /// The `Sec-WebSocket-Protocol` names; `NAMES[p.index()] == p.name()`.
    pub const NAMES: [&'static str; 2] = ["kasagi.v1.msgpack", "kasagi.v1.json"];

    pub const fn name(self) -> &'static str {
        Self::NAMES[self.index()]
    }

    /// The subprotocol named exactly `name` (subprotocol names are case-sensitive).
    pub fn from_name(name: &str) -> Option<Subprotocol> {
        Self::ALL.into_iter().find(|p| p.name() == name)
    }

    pub const fn index(self) -> usize {
        match self {
            Subprotocol::MsgPack => 0,
            Subprotocol::Json => 1,
        }
    }

    /// Whether messages travel in binary frames (MessagePack) rather than text frames (JSON);
    /// a frame of the other kind closes the connection with 1003.
    pub const fn uses_binary_frames(self) -> bool {
        matches!(self, Subprotocol::MsgPack)
    }
}
