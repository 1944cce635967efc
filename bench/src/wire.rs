//! The bench's side of `PROTOCOL.md`: requests encoded with the server library's own
//! encoder, and a lean view of the server's messages that reads only what the bench
//! checks (type, room, tick, seq, the ops' timestamps) and skips the rest unparsed.
//!
//! The ops the bench sends are `["set", [key], {"ts": µs, "at": µs, "s": sender, "q": seq,
//! "pad": "…"}]`: a top-level key, so the server's delta carries the same op (a set under a
//! map created in the same flush would travel as the parent map instead). `ts` is the
//! intended send time in µs on the bench's clock, which every receiver subtracts from its
//! own `now`; `at` is when the generator actually sent it (see `--socket-stamps`).

use std::borrow::Cow;
use std::fmt;

use kasagi::protocol::{encode_client_into, ClientMessage, Op, PathSeg, RoomId, Subprotocol};
use kasagi::value::{Map, Value};
use serde::de::value::MapAccessDeserializer;
use serde::de::{self, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;

/// The subprotocol a run uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Proto {
    Msgpack,
    Json,
}

impl Proto {
    pub fn subprotocol(self) -> Subprotocol {
        match self {
            Proto::Msgpack => Subprotocol::MsgPack,
            Proto::Json => Subprotocol::Json,
        }
    }

    pub fn name(self) -> &'static str {
        self.subprotocol().name()
    }

    pub fn binary(self) -> bool {
        self.subprotocol().uses_binary_frames()
    }
}

impl fmt::Display for Proto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Proto::Msgpack => "msgpack",
            Proto::Json => "json",
        })
    }
}

pub fn room_id(name: &str) -> RoomId {
    RoomId::parse(name).unwrap_or_else(|| panic!("the bench made an invalid room id {name:?}"))
}

pub fn encode_join(out: &mut Vec<u8>, proto: Proto, room: &RoomId) {
    let msg = ClientMessage::Join {
        room: room.clone(),
        since: None,
        epoch: None,
    };
    encode_client_into(&msg, proto.subprotocol(), out);
}

pub fn encode_leave(out: &mut Vec<u8>, proto: Proto, room: &RoomId) {
    let msg = ClientMessage::Leave { room: room.clone() };
    encode_client_into(&msg, proto.subprotocol(), out);
}

/// What one timed op carries.
#[derive(Debug, Clone, Copy)]
pub struct Stamp {
    /// When the op was meant to be sent (the schedule), µs on the bench clock.
    pub ts_us: u64,
    /// When the generator actually sent it: `ts_us` plus its own lag.
    pub sent_us: u64,
    pub sender: u64,
    pub seq: u64,
}

/// One `op` message of `keys.len()` timed sets, each padded with `pad`.
pub fn encode_timed_op(
    out: &mut Vec<u8>,
    proto: Proto,
    room: &RoomId,
    keys: &[String],
    stamp: Stamp,
    pad: &str,
) {
    let ops = keys
        .iter()
        .map(|key| Op::Set(vec![PathSeg::Key(key.clone())], timed_value(stamp, pad)))
        .collect();
    let msg = ClientMessage::Op {
        room: room.clone(),
        seq: stamp.seq,
        ops,
    };
    encode_client_into(&msg, proto.subprotocol(), out);
}

fn timed_value(stamp: Stamp, pad: &str) -> Value {
    let mut map = Map::new();
    map.insert("ts".into(), Value::Int(stamp.ts_us as i64));
    map.insert("at".into(), Value::Int(stamp.sent_us as i64));
    map.insert("s".into(), Value::Int(stamp.sender as i64));
    map.insert("q".into(), Value::Int(stamp.seq as i64));
    map.insert("pad".into(), Value::Str(pad.to_owned()));
    Value::Map(map)
}

/// An untimed `op`: `set [key] value` (used to build big states).
pub fn encode_set(
    out: &mut Vec<u8>,
    proto: Proto,
    room: &RoomId,
    seq: u64,
    key: &str,
    value: Value,
) {
    let msg = ClientMessage::Op {
        room: room.clone(),
        seq,
        ops: vec![Op::Set(vec![PathSeg::Key(key.to_owned())], value)],
    };
    encode_client_into(&msg, proto.subprotocol(), out);
}

/// The padding that makes one delta op of `keys` about `op_bytes` long on the wire.
pub fn pad_for(proto: Proto, op_bytes: usize, key: &str) -> String {
    let stamp = Stamp {
        ts_us: 1 << 40,
        sent_us: 1 << 40,
        sender: 1 << 12,
        seq: 1 << 20,
    };
    let op = Op::Set(vec![PathSeg::Key(key.to_owned())], timed_value(stamp, ""));
    let mut one = Vec::new();
    let mut none = Vec::new();
    let room = room_id("x");
    let msg = |ops| ClientMessage::Op {
        room: room.clone(),
        seq: 1,
        ops,
    };
    encode_client_into(&msg(vec![op]), proto.subprotocol(), &mut one);
    encode_client_into(&msg(vec![]), proto.subprotocol(), &mut none);
    let bare = one.len().saturating_sub(none.len());
    "x".repeat(op_bytes.saturating_sub(bare))
}

/// A server message, as far as the bench reads it; every other field (a `joined`'s
/// `state`, `members`) is skipped without being built.
#[derive(Debug, Deserialize)]
pub struct ServerView<'a> {
    #[serde(borrow)]
    pub t: Cow<'a, str>,
    #[serde(default, borrow)]
    pub room: Option<Cow<'a, str>>,
    #[serde(default)]
    pub tick: Option<u64>,
    #[serde(default)]
    pub seq: Option<u64>,
    #[serde(default)]
    pub ops: Option<Vec<OpProbe>>,
    #[serde(default, borrow)]
    pub you: Option<Cow<'a, str>>,
    #[serde(default)]
    pub resync: Option<bool>,
    #[serde(default, borrow)]
    pub code: Option<Cow<'a, str>>,
}

impl<'a> ServerView<'a> {
    pub fn decode(payload: &'a [u8], proto: Proto) -> Result<Self, String> {
        match proto {
            Proto::Msgpack => crate::msgpack_view::decode(payload),
            Proto::Json => serde_json::from_slice(payload).map_err(|e| e.to_string()),
        }
    }
}

/// One op of a delta: its stamp when its value is one of the bench's timed maps.
#[derive(Debug, Default, Clone, Copy)]
pub struct OpProbe {
    pub ts: Option<u64>,
    /// When the op was actually sent (`at`).
    pub sent: Option<u64>,
}

impl<'de> Deserialize<'de> for OpProbe {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_seq(OpVisitor)
    }
}

struct OpVisitor;

impl<'de> Visitor<'de> for OpVisitor {
    type Value = OpProbe;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a delta op array")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<OpProbe, A::Error> {
        let _name: Option<IgnoredAny> = seq.next_element()?;
        let _path: Option<IgnoredAny> = seq.next_element()?;
        let value: Option<MaybeStamp> = seq.next_element()?;
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(value.map(|v| v.0).unwrap_or_default())
    }
}

#[derive(Default, Deserialize)]
struct StampFields {
    #[serde(default)]
    ts: Option<u64>,
    #[serde(default)]
    at: Option<u64>,
}

/// Any value; a map's `ts`/`s`/`q` are read, everything else is skipped.
struct MaybeStamp(OpProbe);

impl<'de> Deserialize<'de> for MaybeStamp {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(StampVisitor)
    }
}

struct StampVisitor;

macro_rules! ignore_scalar {
    ($($name:ident: $ty:ty),*) => {
        $(fn $name<E: de::Error>(self, _: $ty) -> Result<MaybeStamp, E> {
            Ok(MaybeStamp(OpProbe::default()))
        })*
    };
}

impl<'de> Visitor<'de> for StampVisitor {
    type Value = MaybeStamp;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any value")
    }

    ignore_scalar!(visit_bool: bool, visit_i64: i64, visit_u64: u64, visit_f64: f64,
        visit_str: &str, visit_bytes: &[u8]);

    fn visit_unit<E: de::Error>(self) -> Result<MaybeStamp, E> {
        Ok(MaybeStamp(OpProbe::default()))
    }

    fn visit_none<E: de::Error>(self) -> Result<MaybeStamp, E> {
        Ok(MaybeStamp(OpProbe::default()))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<MaybeStamp, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(MaybeStamp(OpProbe::default()))
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<MaybeStamp, A::Error> {
        let fields = StampFields::deserialize(MapAccessDeserializer::new(map))?;
        Ok(MaybeStamp(OpProbe {
            ts: fields.ts,
            sent: fields.at,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kasagi::protocol::{encode_into, DeltaOp, ServerMessage};

    fn delta_bytes(proto: Proto) -> Vec<u8> {
        let stamp = Stamp {
            ts_us: 123,
            sent_us: 130,
            sender: 4,
            seq: 9,
        };
        let ops = vec![
            DeltaOp::Set(vec![PathSeg::Key("4.1".into())], timed_value(stamp, "xx")),
            DeltaOp::Del(vec![PathSeg::Key("gone".into())]),
            DeltaOp::Set(vec![PathSeg::Key("n".into())], Value::Int(5)),
        ];
        let msg = ServerMessage::Delta {
            room: "r1",
            tick: 7,
            epoch: 0,
            ops: &ops,
        };
        let mut out = Vec::new();
        encode_into(&msg, proto.subprotocol(), &mut out);
        out
    }

    #[test]
    fn delta_stamps_decode_in_both_subprotocols() {
        for proto in [Proto::Msgpack, Proto::Json] {
            let bytes = delta_bytes(proto);
            let view = ServerView::decode(&bytes, proto).expect("decodes");
            assert_eq!(view.t, "delta");
            assert_eq!(view.tick, Some(7));
            let ops = view.ops.expect("ops");
            assert_eq!(ops.len(), 3);
            assert_eq!(ops[0].ts, Some(123));
            assert_eq!(ops[0].sent, Some(130));
            assert_eq!(ops[1].ts, None);
            assert_eq!(ops[2].ts, None);
        }
    }

    #[test]
    fn padding_reaches_the_requested_size() {
        for proto in [Proto::Msgpack, Proto::Json] {
            let pad = pad_for(proto, 100, "12.3");
            assert!(!pad.is_empty());
            let room = room_id("x");
            let stamp = Stamp {
                ts_us: 1 << 40,
                sent_us: 1 << 40,
                sender: 1 << 12,
                seq: 1 << 20,
            };
            let mut with = Vec::new();
            encode_timed_op(&mut with, proto, &room, &["12.3".into()], stamp, &pad);
            let mut without = Vec::new();
            encode_timed_op(&mut without, proto, &room, &[], stamp, &pad);
            let op_len = with.len() - without.len();
            assert!((95..=105).contains(&op_len), "{proto}: {op_len}");
        }
    }
}
