//! Encoding server messages (and, for clients, the bench and tests, client messages).
//!
//! One `Serialize` impl per message writes the wire shape of `PROTOCOL.md` straight from
//! borrowed data, with no intermediate value tree; rmp-serde and serde_json then produce
//! the two subprotocols from it. MessagePack maps have string keys, integers take their
//! smallest encoding, `Bin` is a bin; in JSON `Bin` is base64 and non-finite floats are null
//! (see `value`).
//!
//! Encoding cannot fail: the writer is a `Vec` (infallible), every map and array is written
//! with its length known (rmp-serde's only other error is for unknown lengths), every key is
//! a string (serde_json's only data error), and neither serializer bounds depth on this path.
//! The `expect`s below state that reasoning.
//!
//! Encoding recurses once per nesting level of the values it writes. Values from clients
//! nest at most [`Value::MAX_DEPTH`] levels; room state at most that plus the path-depth
//! limit, which must stay small for this reason.

use serde::ser::{Serialize, SerializeMap, Serializer};

use super::decode::ClientMessage;
use super::{DeltaOp, ErrorCode, Subprotocol};
use crate::value::Value;

/// A message from the server, borrowing everything it carries.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ServerMessage<'a> {
    /// `state: None` means resumed: the message carries `resumed: true` and no `state`.
    /// `resync` is written only when true.
    Joined {
        room: &'a str,
        tick: u64,
        epoch: u64,
        you: &'a str,
        members: &'a [String],
        state: Option<&'a Value>,
        resync: bool,
    },
    Delta {
        room: &'a str,
        tick: u64,
        epoch: u64,
        ops: &'a [DeltaOp],
    },
    /// A [`ServerMessage::Delta`] written straight from the room's state: the same bytes.
    DeltaOfState {
        room: &'a str,
        tick: u64,
        epoch: u64,
        ops: &'a [DeltaOp<&'a Value>],
    },
    Presence {
        room: &'a str,
        joined: &'a [String],
        left: &'a [String],
    },
    Msg {
        room: &'a str,
        from: &'a str,
        data: &'a Value,
    },
    Ack {
        room: &'a str,
        seq: u64,
        tick: u64,
    },
    /// `room` and `seq` are written only when present.
    Error {
        code: ErrorCode,
        message: &'a str,
        room: Option<&'a str>,
        seq: Option<u64>,
    },
    /// `reason` is written only when present (the server removed the client unasked).
    Left {
        room: &'a str,
        reason: Option<&'a str>,
    },
    Pong {
        id: &'a Value,
        time: u64,
    },
}

/// Appends the encoding of `msg` to `out`, leaving what `out` already holds (the caller's
/// frame header placeholder) untouched.
pub fn encode_into(msg: &ServerMessage<'_>, proto: Subprotocol, out: &mut Vec<u8>) {
    append(msg, proto, out);
}

/// Appends the encoding of a client message to `out`: what a client sends, for the bench,
/// the integration tests and the round-trip tests of [`super::decode_client`].
pub fn encode_client_into(msg: &ClientMessage, proto: Subprotocol, out: &mut Vec<u8>) {
    append(msg, proto, out);
}

fn append<T: Serialize + ?Sized>(msg: &T, proto: Subprotocol, out: &mut Vec<u8>) {
    match proto {
        Subprotocol::MsgPack => msg
            .serialize(&mut rmp_serde::Serializer::new(&mut *out))
            .expect("MessagePack into a Vec with known lengths cannot fail"),
        Subprotocol::Json => serde_json::to_writer(&mut *out, msg)
            .expect("JSON into a Vec with string keys cannot fail"),
    }
}

impl Serialize for ServerMessage<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match *self {
            ServerMessage::Joined {
                room,
                tick,
                epoch,
                you,
                members,
                state,
                resync,
            } => {
                let mut map = serializer.serialize_map(Some(7 + usize::from(resync)))?;
                map.serialize_entry("t", "joined")?;
                map.serialize_entry("room", room)?;
                map.serialize_entry("tick", &tick)?;
                map.serialize_entry("epoch", &epoch)?;
                map.serialize_entry("you", you)?;
                map.serialize_entry("members", members)?;
                match state {
                    Some(state) => map.serialize_entry("state", state)?,
                    None => map.serialize_entry("resumed", &true)?,
                }
                if resync {
                    map.serialize_entry("resync", &true)?;
                }
                map.end()
            }
            ServerMessage::Delta {
                room,
                tick,
                epoch,
                ops,
            } => serialize_delta(serializer, room, tick, epoch, ops),
            ServerMessage::DeltaOfState {
                room,
                tick,
                epoch,
                ops,
            } => serialize_delta(serializer, room, tick, epoch, ops),
            ServerMessage::Presence { room, joined, left } => {
                let mut map = serializer.serialize_map(Some(4))?;
                map.serialize_entry("t", "presence")?;
                map.serialize_entry("room", room)?;
                map.serialize_entry("joined", joined)?;
                map.serialize_entry("left", left)?;
                map.end()
            }
            ServerMessage::Msg { room, from, data } => {
                let mut map = serializer.serialize_map(Some(4))?;
                map.serialize_entry("t", "msg")?;
                map.serialize_entry("room", room)?;
                map.serialize_entry("from", from)?;
                map.serialize_entry("data", data)?;
                map.end()
            }
            ServerMessage::Ack { room, seq, tick } => {
                let mut map = serializer.serialize_map(Some(4))?;
                map.serialize_entry("t", "ack")?;
                map.serialize_entry("room", room)?;
                map.serialize_entry("seq", &seq)?;
                map.serialize_entry("tick", &tick)?;
                map.end()
            }
            ServerMessage::Error {
                code,
                message,
                room,
                seq,
            } => {
                let len = 3 + usize::from(room.is_some()) + usize::from(seq.is_some());
                let mut map = serializer.serialize_map(Some(len))?;
                map.serialize_entry("t", "error")?;
                map.serialize_entry("code", &code)?;
                map.serialize_entry("message", message)?;
                if let Some(room) = room {
                    map.serialize_entry("room", room)?;
                }
                if let Some(seq) = seq {
                    map.serialize_entry("seq", &seq)?;
                }
                map.end()
            }
            ServerMessage::Left { room, reason } => {
                let mut map = serializer.serialize_map(Some(2 + usize::from(reason.is_some())))?;
                map.serialize_entry("t", "left")?;
                map.serialize_entry("room", room)?;
                if let Some(reason) = reason {
                    map.serialize_entry("reason", reason)?;
                }
                map.end()
            }
            ServerMessage::Pong { id, time } => {
                let mut map = serializer.serialize_map(Some(3))?;
                map.serialize_entry("t", "pong")?;
                map.serialize_entry("id", id)?;
                map.serialize_entry("time", &time)?;
                map.end()
            }
        }
    }
}

/// The map of a `delta`, for owned or borrowed ops alike.
fn serialize_delta<S: Serializer, O: Serialize>(
    serializer: S,
    room: &str,
    tick: u64,
    epoch: u64,
    ops: &[O],
) -> Result<S::Ok, S::Error> {
    let mut map = serializer.serialize_map(Some(5))?;
    map.serialize_entry("t", "delta")?;
    map.serialize_entry("room", room)?;
    map.serialize_entry("tick", &tick)?;
    map.serialize_entry("epoch", &epoch)?;
    map.serialize_entry("ops", ops)?;
    map.end()
}

impl Serialize for ClientMessage {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            ClientMessage::Join { room, since, epoch } => {
                let len = 2 + usize::from(since.is_some()) + usize::from(epoch.is_some());
                let mut map = serializer.serialize_map(Some(len))?;
                map.serialize_entry("t", "join")?;
                map.serialize_entry("room", room)?;
                if let Some(since) = since {
                    map.serialize_entry("since", since)?;
                }
                if let Some(epoch) = epoch {
                    map.serialize_entry("epoch", epoch)?;
                }
                map.end()
            }
            ClientMessage::Leave { room } => {
                let mut map = serializer.serialize_map(Some(2))?;
                map.serialize_entry("t", "leave")?;
                map.serialize_entry("room", room)?;
                map.end()
            }
            ClientMessage::Op { room, seq, ops } => {
                let mut map = serializer.serialize_map(Some(4))?;
                map.serialize_entry("t", "op")?;
                map.serialize_entry("room", room)?;
                map.serialize_entry("seq", seq)?;
                map.serialize_entry("ops", ops)?;
                map.end()
            }
            ClientMessage::Msg { room, data } => {
                let mut map = serializer.serialize_map(Some(3))?;
                map.serialize_entry("t", "msg")?;
                map.serialize_entry("room", room)?;
                map.serialize_entry("data", data)?;
                map.end()
            }
            ClientMessage::Ping { id } => {
                let mut map = serializer.serialize_map(Some(2))?;
                map.serialize_entry("t", "ping")?;
                map.serialize_entry("id", id)?;
                map.end()
            }
        }
    }
}
