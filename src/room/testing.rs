//! Test helpers: values and paths from JSON literals, and bitwise value comparison.

use crate::protocol::types::{Path, PathSeg};
use crate::value::Value;

/// A value from a JSON literal (integers canonical, no binaries).
pub(crate) fn j(json: &str) -> Value {
    from_json(serde_json::from_str(json).expect("a JSON literal in a test"))
}

fn from_json(json: serde_json::Value) -> Value {
    match json {
        serde_json::Value::Null => Value::Nil,
        serde_json::Value::Bool(b) => Value::Bool(b),
        serde_json::Value::Number(n) => match (n.as_i64(), n.as_u64(), n.as_f64()) {
            (Some(i), _, _) => Value::Int(i),
            (None, Some(u), _) => Value::UInt(u),
            (_, _, f) => Value::Float(f.unwrap_or(f64::NAN)),
        },
        serde_json::Value::String(s) => Value::Str(s),
        serde_json::Value::Array(items) => Value::Array(items.into_iter().map(from_json).collect()),
        serde_json::Value::Object(map) => {
            Value::Map(map.into_iter().map(|(k, v)| (k, from_json(v))).collect())
        }
    }
}

/// A path from a JSON array literal of strings and non-negative integers.
pub(crate) fn p(json: &str) -> Path {
    let Value::Array(items) = j(json) else {
        panic!("a path literal is a JSON array: {json}");
    };
    items
        .into_iter()
        .map(|item| match item {
            Value::Str(s) => PathSeg::Key(s),
            other => PathSeg::Index(other.as_u64().expect("a non-negative index")),
        })
        .collect()
}

/// Equality that tells floats apart by their bits (so NaN equals itself and -0.0 differs
/// from 0.0): "bit-for-bit the same state".
pub(crate) fn identical(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Float(x), Value::Float(y)) => x.to_bits() == y.to_bits(),
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(x, y)| identical(x, y))
        }
        (Value::Map(x), Value::Map(y)) => {
            x.len() == y.len()
                && x.iter()
                    .zip(y)
                    .all(|((kx, vx), (ky, vy))| kx == ky && identical(vx, vy))
        }
        _ => a == b,
    }
}
