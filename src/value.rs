//! The value tree that room state, ops and messages are made of.
//!
//! One type serves both subprotocols: MessagePack carries every variant natively; JSON
//! carries `Bin` as a standard base64 string (RFC 4648, padded) and cannot produce `Bin`
//! when decoding. Integers are canonical: a value that fits `i64` is always `Int`, `UInt`
//! holds only values above `i64::MAX`, so derived equality is value equality.
//!
//! # Serde
//!
//! `Serialize` and `Deserialize` are written by hand so that one impl serves both formats:
//!
//! - `Bin` serializes as bytes (MessagePack bin) when the serializer is not human-readable
//!   (rmp-serde) and as a standard padded base64 string when it is (serde_json).
//! - Non-finite floats (NaN, ±inf) serialize as nil in human-readable formats: JSON has no
//!   way to write them. MessagePack carries them as they are.
//! - Decoding is canonical: an integer that fits `i64` is `Int`, a larger one `UInt`; a
//!   float in the source is `Float` even when it is integral (`1.0` in JSON, f32/f64 in
//!   MessagePack). JSON integers beyond the `u64`/`i64` range become `Float` (serde_json
//!   parses them as f64). JSON decoding never produces `Bin`: a base64 string stays a string.
//! - Map keys must be strings; any other key is a decode error.
//! - MessagePack extension types are not part of the value model: a decode error.
//! - Nesting is bounded by [`Value::MAX_DEPTH`] (see there); [`ValueSeed`] decodes with
//!   another bound (snapshots written by the server itself, for instance).
//!
//! Protocol frames are not decoded through these impls for MessagePack:
//! `protocol::msgpack` reads them directly, with the same rules plus a strict UTF-8 check
//! that rmp-serde cannot offer (it hands invalid UTF-8 strings to visitors as bytes, which
//! this impl would take for `Bin`).

use std::collections::BTreeMap;
use std::fmt;

use base64::display::Base64Display;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde::de::{self, DeserializeSeed, MapAccess, SeqAccess, Visitor};
use serde::ser::{SerializeMap, SerializeSeq};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A map of string keys. Ordered so that encodings and comparisons are deterministic.
pub type Map = BTreeMap<String, Value>;

#[derive(Debug, Clone, PartialEq, Default)]
pub enum Value {
    #[default]
    Nil,
    Bool(bool),
    /// Any integer in `i64` range.
    Int(i64),
    /// Only integers above `i64::MAX`.
    UInt(u64),
    Float(f64),
    Str(String),
    Bin(Vec<u8>),
    Array(Vec<Value>),
    Map(Map),
}

impl Value {
    /// The deepest nesting of arrays and maps that decoding accepts: `[[…]]` with 64 pairs of
    /// brackets decodes, 65 do not (a scalar has depth 0, `[]` and `{}` depth 1).
    ///
    /// Why a bound: decoding, encoding and dropping a value recurse once per level, and a
    /// 64 KiB MessagePack frame can nest 65 536 arrays (`0x91 0x91 …`), enough to overflow a
    /// thread's stack. A deeper value is refused as a frame we cannot hold: the protocol
    /// layer treats it as malformed (close 1007), like bytes that do not decode.
    ///
    /// The bound applies to each value of a message (`data`, an op's value, a ping `id`,
    /// and every ignored field), not to the envelope around it. Room state can grow deeper
    /// than this (a value set at a path); its depth is bounded by the path-depth limit plus
    /// this constant.
    pub const MAX_DEPTH: usize = 64;

    /// The canonical value of an unsigned integer.
    pub fn from_u64(n: u64) -> Value {
        match i64::try_from(n) {
            Ok(i) => Value::Int(i),
            Err(_) => Value::UInt(n),
        }
    }

    /// The canonical value of a 128-bit integer, or `None` when it fits neither `i64` nor `u64`.
    pub fn from_i128(n: i128) -> Option<Value> {
        if let Ok(i) = i64::try_from(n) {
            Some(Value::Int(i))
        } else {
            u64::try_from(n).ok().map(Value::UInt)
        }
    }

    pub fn as_map(&self) -> Option<&Map> {
        match self {
            Value::Map(m) => Some(m),
            _ => None,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }

    /// The value as a `u64`, when it is a non-negative integer.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Value::Int(i) => u64::try_from(i).ok(),
            Value::UInt(u) => Some(u),
            _ => None,
        }
    }

    pub fn is_number(&self) -> bool {
        matches!(self, Value::Int(_) | Value::UInt(_) | Value::Float(_))
    }
}

impl Serialize for Value {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Value::Nil => serializer.serialize_unit(),
            Value::Bool(b) => serializer.serialize_bool(*b),
            Value::Int(i) => serializer.serialize_i64(*i),
            Value::UInt(u) => serializer.serialize_u64(*u),
            // JSON has no NaN or infinity; nil is the one value every JSON client can parse.
            Value::Float(f) if !f.is_finite() && serializer.is_human_readable() => {
                serializer.serialize_unit()
            }
            Value::Float(f) => serializer.serialize_f64(*f),
            Value::Str(s) => serializer.serialize_str(s),
            Value::Bin(b) if serializer.is_human_readable() => {
                serializer.collect_str(&Base64Display::new(b, &BASE64))
            }
            Value::Bin(b) => serializer.serialize_bytes(b),
            Value::Array(items) => {
                let mut seq = serializer.serialize_seq(Some(items.len()))?;
                for item in items {
                    seq.serialize_element(item)?;
                }
                seq.end()
            }
            Value::Map(map) => {
                let mut out = serializer.serialize_map(Some(map.len()))?;
                for (key, value) in map {
                    out.serialize_entry(key, value)?;
                }
                out.end()
            }
        }
    }
}

impl<'de> Deserialize<'de> for Value {
    /// Decodes with the default nesting bound, [`Value::MAX_DEPTH`].
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        ValueSeed::default().deserialize(deserializer)
    }
}

/// Decodes a [`Value`] whose arrays and maps nest at most `max_depth` levels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ValueSeed {
    pub max_depth: usize,
}

impl Default for ValueSeed {
    fn default() -> Self {
        ValueSeed {
            max_depth: Value::MAX_DEPTH,
        }
    }
}

impl<'de> DeserializeSeed<'de> for ValueSeed {
    type Value = Value;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        deserializer.deserialize_any(ValueVisitor {
            depth_left: self.max_depth,
        })
    }
}

/// The error text of a value nested deeper than its bound; `protocol` matches on nothing
/// but the error's kind, the text is for logs.
const TOO_DEEP: &str = "value nested too deeply";

/// Never pre-allocate more than this many items from a length the peer announced.
const MAX_PREALLOCATED: usize = 1024;

struct ValueVisitor {
    depth_left: usize,
}

impl ValueVisitor {
    fn inner<E: de::Error>(&self) -> Result<ValueSeed, E> {
        match self.depth_left.checked_sub(1) {
            Some(max_depth) => Ok(ValueSeed { max_depth }),
            None => Err(E::custom(TOO_DEEP)),
        }
    }
}

impl<'de> Visitor<'de> for ValueVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("nil, a bool, a number, a string, bytes, an array or a map with string keys")
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Nil)
    }

    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Nil)
    }

    fn visit_some<D: Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        deserializer.deserialize_any(self)
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::Int(v))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from_u64(v))
    }

    fn visit_i128<E: de::Error>(self, v: i128) -> Result<Value, E> {
        Value::from_i128(v).ok_or_else(|| E::custom("integer out of the i64 and u64 range"))
    }

    fn visit_u128<E: de::Error>(self, v: u128) -> Result<Value, E> {
        u64::try_from(v)
            .map(Value::from_u64)
            .map_err(|_| E::custom("integer out of the u64 range"))
    }

    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(Value::Float(v))
    }

    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::Str(v.to_owned()))
    }

    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::Str(v))
    }

    fn visit_bytes<E>(self, v: &[u8]) -> Result<Value, E> {
        Ok(Value::Bin(v.to_vec()))
    }

    fn visit_byte_buf<E>(self, v: Vec<u8>) -> Result<Value, E> {
        Ok(Value::Bin(v))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let inner = self.inner()?;
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(MAX_PREALLOCATED));
        while let Some(item) = seq.next_element_seed(inner)? {
            items.push(item);
        }
        Ok(Value::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<Value, A::Error> {
        let inner = self.inner()?;
        let mut map = Map::new();
        while let Some(key) = access.next_key_seed(StringKey)? {
            // A repeated key keeps its last value, as JavaScript's JSON.parse does.
            map.insert(key, access.next_value_seed(inner)?);
        }
        Ok(Value::Map(map))
    }
}

/// A map key: a string and nothing else (no integer keys, no bytes).
struct StringKey;

impl<'de> DeserializeSeed<'de> for StringKey {
    type Value = String;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<String, D::Error> {
        deserializer.deserialize_string(self)
    }
}

impl Visitor<'_> for StringKey {
    type Value = String;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string map key")
    }

    fn visit_str<E>(self, v: &str) -> Result<String, E> {
        Ok(v.to_owned())
    }

    fn visit_string<E>(self, v: String) -> Result<String, E> {
        Ok(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Records what a serializer says of itself.
    struct HumanReadableProbe;

    impl Serialize for HumanReadableProbe {
        fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
            let human = serializer.is_human_readable();
            serializer.serialize_bool(human)
        }
    }

    #[test]
    fn serde_json_is_human_readable_and_rmp_serde_is_not() {
        assert_eq!(
            serde_json::to_string(&HumanReadableProbe).ok().as_deref(),
            Some("true")
        );
        assert_eq!(
            rmp_serde::to_vec(&HumanReadableProbe).ok(),
            Some(vec![0xc2])
        );
    }

    #[test]
    fn bin_is_msgpack_bin_and_json_base64() {
        let bin = Value::Bin(vec![1, 2, 3]);
        assert_eq!(
            rmp_serde::to_vec(&bin).ok(),
            Some(b"\xc4\x03\x01\x02\x03".to_vec())
        );
        assert_eq!(
            serde_json::to_string(&bin).ok().as_deref(),
            Some("\"AQID\"")
        );
        assert_eq!(
            serde_json::to_string(&Value::Bin(vec![1, 2]))
                .ok()
                .as_deref(),
            Some("\"AQI=\"")
        );
        assert_eq!(
            serde_json::to_string(&Value::Bin(vec![])).ok().as_deref(),
            Some("\"\"")
        );
        assert_eq!(
            rmp_serde::from_slice::<Value>(b"\xc4\x03\x01\x02\x03").ok(),
            Some(bin)
        );
        assert_eq!(
            serde_json::from_str::<Value>("\"AQID\"").ok(),
            Some(Value::Str("AQID".into()))
        );
    }

    #[test]
    fn non_finite_floats_are_json_null_and_msgpack_floats() {
        for f in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
            assert_eq!(
                serde_json::to_string(&Value::Float(f)).ok().as_deref(),
                Some("null")
            );
            let bytes = rmp_serde::to_vec(&Value::Float(f)).unwrap_or_default();
            assert_eq!(bytes.first(), Some(&0xcb));
            let back = rmp_serde::from_slice::<Value>(&bytes).ok();
            assert!(matches!(back, Some(Value::Float(g)) if g.to_bits() == f.to_bits()));
        }
        assert_eq!(
            serde_json::to_string(&Value::Float(1.0)).ok().as_deref(),
            Some("1.0")
        );
    }

    #[test]
    fn integers_decode_canonically() {
        let json = |text: &str| serde_json::from_str::<Value>(text).ok();
        assert_eq!(json("1"), Some(Value::Int(1)));
        assert_eq!(json("-1"), Some(Value::Int(-1)));
        assert_eq!(json("9223372036854775808"), Some(Value::UInt(1 << 63)));
        assert_eq!(json("1.0"), Some(Value::Float(1.0)));
        assert_eq!(json("2e0"), Some(Value::Float(2.0)));
        let msgpack = |bytes: &[u8]| rmp_serde::from_slice::<Value>(bytes).ok();
        assert_eq!(
            msgpack(b"\xcf\x00\x00\x00\x00\x00\x00\x00\x01"),
            Some(Value::Int(1))
        );
        assert_eq!(
            msgpack(b"\xcf\xff\xff\xff\xff\xff\xff\xff\xff"),
            Some(Value::UInt(u64::MAX))
        );
        assert_eq!(msgpack(b"\xd0\xff"), Some(Value::Int(-1)));
        assert_eq!(msgpack(b"\xca\x3f\x80\x00\x00"), Some(Value::Float(1.0)));
        assert_eq!(rmp_serde::to_vec(&Value::Int(5)).ok(), Some(vec![5]));
        assert_eq!(rmp_serde::to_vec(&Value::Int(-1)).ok(), Some(vec![0xff]));
        assert_eq!(
            rmp_serde::to_vec(&Value::Int(300)).ok(),
            Some(vec![0xcd, 0x01, 0x2c])
        );
        assert_eq!(
            serde_json::to_string(&Value::UInt(u64::MAX))
                .ok()
                .as_deref(),
            Some("18446744073709551615")
        );
    }

    #[test]
    fn keys_must_be_strings_and_extensions_are_refused() {
        assert!(rmp_serde::from_slice::<Value>(b"\x81\x01\x02").is_err());
        assert!(rmp_serde::from_slice::<Value>(b"\x81\xc4\x01a\x02").is_err());
        assert!(rmp_serde::from_slice::<Value>(b"\xd4\x01\x00").is_err());
        let map = Value::Map(Map::from([("k".to_owned(), Value::Nil)]));
        assert_eq!(
            rmp_serde::from_slice::<Value>(b"\x81\xa1k\xc0").ok(),
            Some(map)
        );
    }

    #[test]
    fn nesting_is_bounded() {
        let nested = |depth: usize| format!("{}{}", "[".repeat(depth), "]".repeat(depth));
        assert!(serde_json::from_str::<Value>(&nested(Value::MAX_DEPTH)).is_ok());
        assert!(serde_json::from_str::<Value>(&nested(Value::MAX_DEPTH + 1)).is_err());
        let mut bytes = vec![0x91; Value::MAX_DEPTH + 1];
        bytes.push(0xc0);
        assert!(rmp_serde::from_slice::<Value>(&bytes[1..]).is_ok());
        assert!(rmp_serde::from_slice::<Value>(&bytes).is_err());
        // A seed decodes deeper values when the caller trusts them.
        let seed = ValueSeed { max_depth: 100 };
        let mut deserializer = rmp_serde::Deserializer::from_read_ref(&bytes);
        assert!(seed.deserialize(&mut deserializer).is_ok());
    }
}
