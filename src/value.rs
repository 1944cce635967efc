//! The value tree that room state, ops and messages are made of.
//!
//! One type serves both subprotocols: MessagePack carries every variant natively; JSON
//! carries `Bin` as a standard base64 string (RFC 4648, padded) and cannot produce `Bin`
//! when decoding. Integers are canonical: a value that fits `i64` is always `Int`, `UInt`
//! holds only values above `i64::MAX`, so derived equality is value equality.

use std::collections::BTreeMap;

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
