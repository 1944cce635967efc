//! Decoding client messages from one whole frame.
//!
//! Two stages, so that the two failure classes of `PROTOCOL.md` stay apart:
//!
//! 1. **Envelope**: the frame must be exactly one value of the subprotocol, or it is
//!    [`DecodeError::Malformed`] (close 1007). The top-level map is read directly from the
//!    bytes; the fields the protocol knows are kept as [`Value`]s, every other field is
//!    decoded (so a malformed or too deep value anywhere is caught) and dropped.
//! 2. **Interpretation**: the kept fields are checked against the message type. Anything
//!    wrong here is [`DecodeError::BadRequest`] (an `error bad_request`, the connection
//!    stays open), carrying the `room` and `seq` of the request whenever they could be read.
//!
//! Client-facing choices (copy into the README):
//! - Unknown keys are ignored; a repeated key keeps its last value.
//! - `join`'s optional `since` and `epoch`: nil is read as absent (many encoders write
//!   `undefined`/`None` fields as nil); any other non-u64 is a `bad_request`.
//! - `ping` without `id` is answered with `id: nil`. Every other field is required; for
//!   those, nil is a wrong type.
//! - A value nesting deeper than [`Value::MAX_DEPTH`] levels (the `ops` field gets two
//!   more levels for the ops array and each op) is malformed: close 1007, since the server
//!   refuses to hold it. MessagePack extension types and strings that are not UTF-8 are
//!   malformed too.
//! - The error's `room` is the request's room when it is a valid room id; its `seq` is the
//!   request's `seq` when it is a u64, whatever the message type.

use std::fmt;

use serde::de::{self, DeserializeSeed, MapAccess, SeqAccess, Visitor};
use serde::Deserializer as _;

use super::msgpack::{Malformed, Reader};
use super::{Op, Path, PathSeg, RoomId, Subprotocol};
use crate::value::{Value, ValueSeed};

/// A request from a client.
#[derive(Debug, Clone, PartialEq)]
pub enum ClientMessage {
    Join {
        room: RoomId,
        since: Option<u64>,
        epoch: Option<u64>,
    },
    Leave {
        room: RoomId,
    },
    Op {
        room: RoomId,
        seq: u64,
        ops: Vec<Op>,
    },
    Msg {
        room: RoomId,
        data: Value,
    },
    Ping {
        id: Value,
    },
}

/// Why a frame is not a client message.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DecodeError {
    /// The bytes are not one value of the subprotocol, or not one we can hold: close 1007.
    #[error("malformed frame: {0}")]
    Malformed(#[from] Malformed),
    /// A well-formed value that is not a valid request: answer `error bad_request`.
    #[error("bad request: {message}")]
    BadRequest {
        message: String,
        room: Option<RoomId>,
        seq: Option<u64>,
    },
}

/// Decodes one whole frame (a binary frame's payload in MessagePack, a text frame's in JSON).
pub fn decode_client(payload: &[u8], proto: Subprotocol) -> Result<ClientMessage, DecodeError> {
    let envelope = match proto {
        Subprotocol::MsgPack => envelope_from_msgpack(payload)?,
        Subprotocol::Json => envelope_from_json(payload)?,
    };
    match envelope {
        Envelope::Map(fields) => fields.into_message(),
        Envelope::NotMap => Err(bad("a message must be a map", None, None)),
    }
}

/// The top-level value of a frame, reduced to what interpretation needs.
// Built once per frame and moved once: boxing the fields would only add an allocation.
#[allow(clippy::large_enum_variant)]
enum Envelope {
    Map(Fields),
    NotMap,
}

/// The fields any client message type reads, as sent.
#[derive(Default)]
struct Fields {
    t: Option<Value>,
    room: Option<Value>,
    since: Option<Value>,
    epoch: Option<Value>,
    seq: Option<Value>,
    ops: Option<Value>,
    data: Option<Value>,
    id: Option<Value>,
}

#[derive(Clone, Copy)]
enum Field {
    T,
    Room,
    Since,
    Epoch,
    Seq,
    Ops,
    Data,
    Id,
    Unknown,
}

impl Field {
    fn of(key: &str) -> Field {
        match key {
            "t" => Field::T,
            "room" => Field::Room,
            "since" => Field::Since,
            "epoch" => Field::Epoch,
            "seq" => Field::Seq,
            "ops" => Field::Ops,
            "data" => Field::Data,
            "id" => Field::Id,
            _ => Field::Unknown,
        }
    }

    /// The nesting bound of this field's value: `ops` holds the ops array and each op
    /// around the values they carry, so those values get the full [`Value::MAX_DEPTH`].
    fn max_depth(self) -> usize {
        match self {
            Field::Ops => Value::MAX_DEPTH + 2,
            _ => Value::MAX_DEPTH,
        }
    }
}

impl Fields {
    fn store(&mut self, field: Field, value: Value) {
        let slot = match field {
            Field::T => &mut self.t,
            Field::Room => &mut self.room,
            Field::Since => &mut self.since,
            Field::Epoch => &mut self.epoch,
            Field::Seq => &mut self.seq,
            Field::Ops => &mut self.ops,
            Field::Data => &mut self.data,
            Field::Id => &mut self.id,
            Field::Unknown => return,
        };
        *slot = Some(value);
    }

    fn into_message(self) -> Result<ClientMessage, DecodeError> {
        let room = match self.room {
            None => Err("missing field room"),
            Some(Value::Str(s)) => RoomId::parse_owned(s).ok_or("invalid room id"),
            Some(_) => Err("field room must be a string"),
        };
        let seq_hint = self.seq.as_ref().and_then(Value::as_u64);
        let t = match self.t {
            Some(Value::Str(t)) => t,
            None => return Err(bad("missing field t", room.ok().as_ref(), seq_hint)),
            Some(_) => {
                return Err(bad(
                    "field t must be a string",
                    room.ok().as_ref(),
                    seq_hint,
                ))
            }
        };
        // Every type but ping needs a room: check it first, so later errors can answer it.
        let kind = match t.as_str() {
            "ping" => {
                return Ok(ClientMessage::Ping {
                    id: self.id.unwrap_or(Value::Nil),
                })
            }
            "join" => Kind::Join,
            "leave" => Kind::Leave,
            "op" => Kind::Op,
            "msg" => Kind::Msg,
            other => {
                let message = format!("unknown message type {}", Excerpt(other));
                return Err(bad(message, room.ok().as_ref(), seq_hint));
            }
        };
        let room = room.map_err(|m| bad(m, None, seq_hint))?;
        match kind {
            Kind::Join => {
                let since = optional_u64(self.since, "since", &room, seq_hint)?;
                let epoch = optional_u64(self.epoch, "epoch", &room, seq_hint)?;
                Ok(ClientMessage::Join { room, since, epoch })
            }
            Kind::Leave => Ok(ClientMessage::Leave { room }),
            Kind::Msg => match self.data {
                Some(data) => Ok(ClientMessage::Msg { room, data }),
                None => Err(bad("missing field data", Some(&room), seq_hint)),
            },
            Kind::Op => op_message(room, self.seq, self.ops),
        }
    }
}

/// The message types that need a room.
enum Kind {
    Join,
    Leave,
    Op,
    Msg,
}

fn op_message(
    room: RoomId,
    seq: Option<Value>,
    ops: Option<Value>,
) -> Result<ClientMessage, DecodeError> {
    let seq = match seq {
        None => return Err(bad("missing field seq", Some(&room), None)),
        Some(seq) => seq.as_u64().ok_or_else(|| {
            bad(
                "field seq must be an integer in the u64 range",
                Some(&room),
                None,
            )
        })?,
    };
    let ops = match ops {
        Some(Value::Array(ops)) => ops,
        None => return Err(bad("missing field ops", Some(&room), Some(seq))),
        Some(_) => return Err(bad("field ops must be an array", Some(&room), Some(seq))),
    };
    let ops = ops
        .into_iter()
        .enumerate()
        .map(|(i, op)| {
            decode_op(op).map_err(|m| bad(format!("ops[{i}]: {m}"), Some(&room), Some(seq)))
        })
        .collect::<Result<Vec<Op>, DecodeError>>()?;
    Ok(ClientMessage::Op { room, seq, ops })
}

fn bad(message: impl Into<String>, room: Option<&RoomId>, seq: Option<u64>) -> DecodeError {
    DecodeError::BadRequest {
        message: message.into(),
        room: room.cloned(),
        seq,
    }
}

/// An optional u64 field: absent and nil are `None`.
fn optional_u64(
    value: Option<Value>,
    name: &str,
    room: &RoomId,
    seq: Option<u64>,
) -> Result<Option<u64>, DecodeError> {
    match value {
        None | Some(Value::Nil) => Ok(None),
        Some(v) => v.as_u64().map(Some).ok_or_else(|| {
            bad(
                format!("field {name} must be an integer in the u64 range"),
                Some(room),
                seq,
            )
        }),
    }
}

/// One op: `[name, path]` or `[name, path, value]`.
fn decode_op(op: Value) -> Result<Op, String> {
    let Value::Array(items) = op else {
        return Err("an op must be an array".into());
    };
    let mut items = items.into_iter();
    let name = match items.next() {
        Some(Value::Str(name)) => name,
        _ => return Err("an op must start with its name, a string".into()),
    };
    let args = items.len();
    let expected = match name.as_str() {
        "set" | "inc" | "push" => 2,
        "del" => 1,
        other => return Err(format!("unknown op {}", Excerpt(other))),
    };
    if args != expected {
        return Err(format!("op {name} takes {expected} arguments, not {args}"));
    }
    let path = decode_path(items.next().unwrap_or_default())?;
    match (name.as_str(), items.next()) {
        ("del", _) => Ok(Op::Del(path)),
        ("set", Some(value)) => Ok(Op::Set(path, value)),
        ("push", Some(value)) => Ok(Op::Push(path, value)),
        ("inc", Some(amount)) if amount.is_number() => Ok(Op::Inc(path, amount)),
        ("inc", Some(_)) => Err("inc takes a number".into()),
        // The arity check above guarantees the operand of set, push and inc.
        _ => Err(format!("op {name} takes {expected} arguments")),
    }
}

fn decode_path(path: Value) -> Result<Path, String> {
    let Value::Array(segments) = path else {
        return Err("a path must be an array".into());
    };
    segments
        .into_iter()
        .map(|segment| match segment {
            Value::Str(key) => Ok(PathSeg::Key(key)),
            Value::Int(i) => u64::try_from(i)
                .map(PathSeg::Index)
                .map_err(|_| "a path index must not be negative".to_owned()),
            Value::UInt(u) => Ok(PathSeg::Index(u)),
            _ => Err("a path holds only strings and non-negative integers".to_owned()),
        })
        .collect()
}

/// A client string quoted in an error message, cut short so an error never echoes a frame.
struct Excerpt<'a>(&'a str);

impl fmt::Display for Excerpt<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const MAX_CHARS: usize = 32;
        let mut chars = self.0.char_indices();
        match chars.nth(MAX_CHARS) {
            Some((end, _)) => write!(f, "{:?}…", &self.0[..end]),
            None => write!(f, "{:?}", self.0),
        }
    }
}

fn envelope_from_msgpack(payload: &[u8]) -> Result<Envelope, Malformed> {
    let mut reader = Reader::new(payload);
    let marker = reader.next_marker()?;
    let envelope = match reader.map_len(marker)? {
        Some(len) => {
            let mut fields = Fields::default();
            for _ in 0..len {
                let field = Field::of(reader.key()?);
                let value = reader.value(field.max_depth())?;
                fields.store(field, value);
            }
            Envelope::Map(fields)
        }
        None => {
            reader.value_after(marker, Value::MAX_DEPTH)?;
            Envelope::NotMap
        }
    };
    reader.finish()?;
    Ok(envelope)
}

fn envelope_from_json(payload: &[u8]) -> Result<Envelope, Malformed> {
    let mut deserializer = serde_json::Deserializer::from_slice(payload);
    let envelope = deserializer
        .deserialize_any(EnvelopeVisitor)
        .map_err(|err| {
            // Our visitors raise one data error, the depth bound; serde_json's own failures
            // (syntax, end of input, its recursion limit) are of other categories.
            if err.is_data() {
                Malformed::TooDeep
            } else {
                Malformed::Json(err.to_string())
            }
        })?;
    // `end` fails only on something other than whitespace after the value.
    deserializer.end().map_err(|_| Malformed::TrailingBytes)?;
    Ok(envelope)
}

struct EnvelopeVisitor;

impl<'de> Visitor<'de> for EnvelopeVisitor {
    type Value = Envelope;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Envelope, A::Error> {
        let mut fields = Fields::default();
        while let Some(field) = map.next_key_seed(FieldSeed)? {
            let max_depth = field.max_depth();
            fields.store(field, map.next_value_seed(ValueSeed { max_depth })?);
        }
        Ok(Envelope::Map(fields))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Envelope, A::Error> {
        // Read to the end so that a malformed or too deep array is still malformed.
        let max_depth = Value::MAX_DEPTH - 1;
        while seq.next_element_seed(ValueSeed { max_depth })?.is_some() {}
        Ok(Envelope::NotMap)
    }

    fn visit_unit<E>(self) -> Result<Envelope, E> {
        Ok(Envelope::NotMap)
    }

    fn visit_bool<E>(self, _: bool) -> Result<Envelope, E> {
        Ok(Envelope::NotMap)
    }

    fn visit_i64<E>(self, _: i64) -> Result<Envelope, E> {
        Ok(Envelope::NotMap)
    }

    fn visit_u64<E>(self, _: u64) -> Result<Envelope, E> {
        Ok(Envelope::NotMap)
    }

    fn visit_f64<E>(self, _: f64) -> Result<Envelope, E> {
        Ok(Envelope::NotMap)
    }

    fn visit_str<E>(self, _: &str) -> Result<Envelope, E> {
        Ok(Envelope::NotMap)
    }
}

struct FieldSeed;

impl<'de> DeserializeSeed<'de> for FieldSeed {
    type Value = Field;

    fn deserialize<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<Field, D::Error> {
        deserializer.deserialize_str(self)
    }
}

impl Visitor<'_> for FieldSeed {
    type Value = Field;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string key")
    }

    fn visit_str<E>(self, key: &str) -> Result<Field, E> {
        Ok(Field::of(key))
    }
}
