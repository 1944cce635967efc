//! What instances of a fleet say to each other through Redis, and the key names.
//!
//! Everything is MessagePack written by Kasagi itself (rmp-serde, structs as arrays). Room
//! states and delta ops travel as nested MessagePack bytes, decoded with an explicit depth
//! bound ([`STATE_DEPTH`]) since a state can nest deeper than a client value may.
//!
//! Invariants: decoding never panics on any bytes (a peer may run another version, or
//! something else may publish on our channels): a message that does not decode is
//! dropped with a warning by the caller.

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;

use crate::protocol::msgpack::decode_value;
use crate::protocol::{DeltaOp, Path, PathSeg, RoomId};
use crate::value::Value;

/// Deepest nesting accepted in a stored state or delta: the path depth limit's ceiling
/// plus a client value's, with room for the op envelope.
pub const STATE_DEPTH: usize = 256 + Value::MAX_DEPTH;

/// The Redis keys and channels of one room. The `{room}` hash tag keeps them on one
/// Redis Cluster slot.
pub struct Keys {
    pub owner: String,
    pub epoch: String,
    pub snap: String,
    pub log: String,
    pub input: String,
    pub output: String,
}

impl Keys {
    pub fn of(room: &RoomId) -> Keys {
        let base = format!("kasagi:{{{room}}}");
        Keys {
            owner: format!("{base}:owner"),
            epoch: format!("{base}:epoch"),
            snap: format!("{base}:snap"),
            log: format!("{base}:log"),
            input: format!("{base}:in"),
            output: format!("{base}:out"),
        }
    }
}

/// Which channel of which room a Pub/Sub channel name is.
pub enum Channel {
    In(RoomId),
    Out(RoomId),
}

impl Channel {
    pub fn parse(name: &[u8]) -> Option<Channel> {
        let name = std::str::from_utf8(name).ok()?;
        let rest = name.strip_prefix("kasagi:{")?;
        let (room, suffix) = rest.rsplit_once('}')?;
        let room = RoomId::parse(room)?;
        match suffix {
            ":in" => Some(Channel::In(room)),
            ":out" => Some(Channel::Out(room)),
            _ => None,
        }
    }
}

/// A connection of some instance: where an answer goes.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct RemoteAddr {
    pub instance: String,
    pub shard: u32,
    pub conn: u64,
}

/// A request relayed to a room's owner on `kasagi:{room}:in`.
#[derive(Debug, Serialize, Deserialize)]
pub struct InMsg {
    pub from: RemoteAddr,
    /// The subprotocol index of the connection: answers come back framed in it.
    pub proto: u8,
    pub member: String,
    pub kind: InKind,
}

#[derive(Debug, Serialize, Deserialize)]
pub enum InKind {
    Join {
        since: Option<u64>,
        epoch: Option<u64>,
    },
    Leave {
        reply: bool,
    },
    /// An `op` or `msg` exactly as a client sends it (MessagePack), decoded again by the
    /// owner with the client limits.
    Client(ByteBuf),
    /// An op sent again (its answer never came): the owner applies it only when it has
    /// not seen this request id (connection, `seq`) yet.
    Resent(ByteBuf),
    Resync,
}

/// An `ack` carried by a delta, for a connection of another instance.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AckTo {
    pub to: RemoteAddr,
    pub seq: u64,
    pub proto: u8,
}

/// What answers a relayed request.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub enum ToKind {
    /// `joined` (and the deltas of a resume) answering a join.
    Joined,
    /// `joined` with `resync: true`, unasked.
    Resync,
    Left,
    Refused,
    Reply,
}

/// What a room's owner publishes on `kasagi:{room}:out`.
#[derive(Debug, Serialize, Deserialize)]
pub enum OutMsg {
    /// A delta, exactly as logged: `ops` is the MessagePack array of delta ops.
    Delta {
        tick: u64,
        epoch: u64,
        ops: ByteBuf,
        acks: Vec<AckTo>,
    },
    /// Ready-to-write WebSocket frames for one connection.
    To {
        to: RemoteAddr,
        kind: ToKind,
        frames: Vec<ByteBuf>,
        /// The epoch of the owner that answers (0 from an instance that predates it).
        #[serde(default)]
        epoch: u64,
    },
    /// Frames for every member (presence, `msg`), per subprotocol.
    Deliver {
        frames: [Option<ByteBuf>; 2],
        exclude: Option<RemoteAddr>,
    },
    /// A new owner serves the room from `epoch` on: register your members with it.
    Owner { epoch: u64 },
}

pub fn encode<T: Serialize>(msg: &T) -> Vec<u8> {
    rmp_serde::to_vec(msg).expect("MessagePack into a Vec cannot fail")
}

pub fn decode<'a, T: Deserialize<'a>>(bytes: &'a [u8]) -> Option<T> {
    rmp_serde::from_slice(bytes).ok()
}

pub fn bytes_of(buf: &Bytes) -> ByteBuf {
    ByteBuf::from(buf.to_vec())
}

/// Why stored bytes are not a delta or a state.
#[derive(Debug, thiserror::Error)]
pub enum StoredError {
    #[error("not MessagePack: {0}")]
    Malformed(#[from] crate::protocol::Malformed),
    #[error("not a delta op array")]
    NotOps,
    #[error("the state is not a map")]
    NotMap,
}

pub fn encode_ops(ops: &[DeltaOp]) -> Vec<u8> {
    encode(&ops)
}

/// Delta ops from their MessagePack array (`[["set", path, value], ["del", path], …]`).
pub fn decode_ops(bytes: &[u8]) -> Result<Vec<DeltaOp>, StoredError> {
    let Value::Array(items) = decode_value(bytes, STATE_DEPTH)? else {
        return Err(StoredError::NotOps);
    };
    items.into_iter().map(delta_op).collect()
}

fn delta_op(item: Value) -> Result<DeltaOp, StoredError> {
    let Value::Array(parts) = item else {
        return Err(StoredError::NotOps);
    };
    let mut parts = parts.into_iter();
    let name = parts.next();
    let path = parts.next().ok_or(StoredError::NotOps).and_then(path_of)?;
    let value = parts.next();
    match (name.as_ref().and_then(Value::as_str), value) {
        (Some("set"), Some(value)) => Ok(DeltaOp::Set(path, value)),
        (Some("push"), Some(value)) => Ok(DeltaOp::Push(path, value)),
        (Some("del"), None) => Ok(DeltaOp::Del(path)),
        _ => Err(StoredError::NotOps),
    }
}

fn path_of(value: Value) -> Result<Path, StoredError> {
    let Value::Array(segments) = value else {
        return Err(StoredError::NotOps);
    };
    segments
        .into_iter()
        .map(|segment| match segment {
            Value::Str(key) => Ok(PathSeg::Key(key.to_string())),
            other => other
                .as_u64()
                .map(PathSeg::Index)
                .ok_or(StoredError::NotOps),
        })
        .collect()
}

pub fn encode_state(state: &Value) -> Vec<u8> {
    encode(state)
}

pub fn decode_state(bytes: &[u8]) -> Result<crate::value::Map, StoredError> {
    match decode_value(bytes, STATE_DEPTH)? {
        Value::Map(map) => Ok(map),
        _ => Err(StoredError::NotMap),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channel_names_round_trip() {
        let room = RoomId::parse("arena-7").expect("valid");
        let keys = Keys::of(&room);
        assert_eq!(keys.owner, "kasagi:{arena-7}:owner");
        assert!(matches!(Channel::parse(keys.input.as_bytes()), Some(Channel::In(r)) if r == room));
        assert!(
            matches!(Channel::parse(keys.output.as_bytes()), Some(Channel::Out(r)) if r == room)
        );
        assert!(Channel::parse(b"kasagi:{x}:snap").is_none());
        assert!(Channel::parse(b"other").is_none());
    }

    #[test]
    fn delta_ops_round_trip() {
        let ops = vec![
            DeltaOp::Set(
                vec![PathSeg::Key("a".into()), PathSeg::Index(2)],
                Value::Int(-3),
            ),
            DeltaOp::Del(vec![]),
            DeltaOp::Push(vec![PathSeg::Key("l".into())], Value::Bin(vec![1, 2])),
        ];
        assert_eq!(decode_ops(&encode_ops(&ops)).expect("decodes"), ops);
        assert!(decode_ops(b"\xc1").is_err());
        assert!(decode_ops(&encode(&vec![vec!["bogus"]])).is_err());
    }

    #[test]
    fn messages_round_trip() {
        let msg = OutMsg::Delta {
            tick: 7,
            epoch: 2,
            ops: ByteBuf::from(vec![0x90]),
            acks: vec![AckTo {
                to: RemoteAddr {
                    instance: "i1".into(),
                    shard: 0,
                    conn: 3,
                },
                seq: 9,
                proto: 1,
            }],
        };
        let back: OutMsg = decode(&encode(&msg)).expect("decodes");
        assert!(matches!(
            back,
            OutMsg::Delta {
                tick: 7,
                epoch: 2,
                ..
            }
        ));
        assert!(decode::<OutMsg>(b"\x00\x01").is_none());
    }
}
