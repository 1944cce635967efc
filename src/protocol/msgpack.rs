//! A direct MessagePack reader for client frames.
//!
//! Why not rmp-serde: it hands a string with invalid UTF-8 to the visitor as bytes (so it
//! would become `Bin`), and its errors do not say which rule broke. This reader works on the
//! frame's byte slice, allocates only the values it returns, and names every failure.
//!
//! Invariants:
//! - never panics and never reads past the slice, whatever the bytes;
//! - recursion is bounded by the caller's `max_depth` (see [`Value::MAX_DEPTH`]);
//! - a length prefix is checked against the bytes left before anything is allocated, so a
//!   tiny frame cannot announce a huge array;
//! - strings are valid UTF-8 and map keys are strings, or the value is malformed;
//! - extension types (including the timestamp extension) are malformed: they are not part of
//!   the value model.

use rmp::Marker;

use crate::value::{Map, Value};

/// Why a frame does not decode as one value we can hold. Every variant closes the
/// connection with 1007.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Malformed {
    #[error("the MessagePack value is truncated")]
    Truncated,
    #[error("bytes follow the message's value")]
    TrailingBytes,
    #[error("a MessagePack string is not valid UTF-8")]
    InvalidUtf8,
    #[error("a map key is not a string")]
    NonStringKey,
    #[error("values nest deeper than the depth limit")]
    TooDeep,
    #[error("MessagePack extension types are not supported")]
    Extension,
    #[error("the reserved MessagePack marker 0xc1")]
    ReservedMarker,
    #[error("invalid JSON: {0}")]
    Json(String),
}

/// Decodes `bytes` as exactly one MessagePack value nesting at most `max_depth` levels.
///
/// The depth is a recursion bound: pass [`Value::MAX_DEPTH`] for anything a client sent, and
/// a larger bound only for bytes the server wrote itself (a room snapshot).
pub fn decode_value(bytes: &[u8], max_depth: usize) -> Result<Value, Malformed> {
    let mut reader = Reader::new(bytes);
    let value = reader.value(max_depth)?;
    reader.finish()?;
    Ok(value)
}

/// A cursor over one frame.
pub(crate) struct Reader<'a> {
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    pub(crate) fn new(bytes: &'a [u8]) -> Self {
        Reader { rest: bytes }
    }

    /// Succeeds when every byte was read.
    pub(crate) fn finish(&self) -> Result<(), Malformed> {
        if self.rest.is_empty() {
            Ok(())
        } else {
            Err(Malformed::TrailingBytes)
        }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], Malformed> {
        if self.rest.len() < n {
            return Err(Malformed::Truncated);
        }
        let (head, tail) = self.rest.split_at(n);
        self.rest = tail;
        Ok(head)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], Malformed> {
        let mut out = [0; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    fn marker(&mut self) -> Result<Marker, Malformed> {
        let [byte] = self.array::<1>()?;
        Ok(Marker::from_u8(byte))
    }

    fn len8(&mut self) -> Result<usize, Malformed> {
        Ok(usize::from(self.array::<1>()?[0]))
    }

    fn len16(&mut self) -> Result<usize, Malformed> {
        Ok(usize::from(u16::from_be_bytes(self.array()?)))
    }

    fn len32(&mut self) -> Result<usize, Malformed> {
        // u32 always fits usize on the 32- and 64-bit targets we build for; saturating keeps
        // the bound check below meaningful anywhere else.
        Ok(usize::try_from(u32::from_be_bytes(self.array()?)).unwrap_or(usize::MAX))
    }

    fn str_body(&mut self, len: usize) -> Result<&'a str, Malformed> {
        std::str::from_utf8(self.take(len)?).map_err(|_| Malformed::InvalidUtf8)
    }

    /// The string length announced by `marker`, or `None` when it is not a string marker.
    fn str_len(&mut self, marker: Marker) -> Result<Option<usize>, Malformed> {
        Ok(Some(match marker {
            Marker::FixStr(n) => usize::from(n),
            Marker::Str8 => self.len8()?,
            Marker::Str16 => self.len16()?,
            Marker::Str32 => self.len32()?,
            _ => return Ok(None),
        }))
    }

    /// The map length announced by `marker`, or `None` when it is not a map marker.
    pub(crate) fn map_len(&mut self, marker: Marker) -> Result<Option<usize>, Malformed> {
        let len = match marker {
            Marker::FixMap(n) => usize::from(n),
            Marker::Map16 => self.len16()?,
            Marker::Map32 => self.len32()?,
            _ => return Ok(None),
        };
        // Every entry takes at least two bytes: refuse a lying length before looping on it.
        if len > self.rest.len() / 2 {
            return Err(Malformed::Truncated);
        }
        Ok(Some(len))
    }

    /// Reads the next marker, for callers that treat maps specially (the message envelope).
    pub(crate) fn next_marker(&mut self) -> Result<Marker, Malformed> {
        self.marker()
    }

    /// Reads a map key: a string, borrowed from the frame.
    pub(crate) fn key(&mut self) -> Result<&'a str, Malformed> {
        let marker = self.marker()?;
        match self.str_len(marker)? {
            Some(len) => self.str_body(len),
            None => Err(Malformed::NonStringKey),
        }
    }

    /// Reads one value nesting at most `depth_left` levels.
    pub(crate) fn value(&mut self, depth_left: usize) -> Result<Value, Malformed> {
        let marker = self.marker()?;
        self.value_after(marker, depth_left)
    }

    /// Reads the rest of a value whose marker was already read.
    pub(crate) fn value_after(
        &mut self,
        marker: Marker,
        depth_left: usize,
    ) -> Result<Value, Malformed> {
        if let Some(len) = self.str_len(marker)? {
            return Ok(Value::Str(self.str_body(len)?.to_owned()));
        }
        if let Some(len) = self.map_len(marker)? {
            return self.map_body(len, depth_left);
        }
        Ok(match marker {
            Marker::Null => Value::Nil,
            Marker::False => Value::Bool(false),
            Marker::True => Value::Bool(true),
            Marker::FixPos(n) => Value::Int(i64::from(n)),
            Marker::FixNeg(n) => Value::Int(i64::from(n)),
            Marker::U8 => Value::Int(i64::from(self.array::<1>()?[0])),
            Marker::U16 => Value::Int(i64::from(u16::from_be_bytes(self.array()?))),
            Marker::U32 => Value::Int(i64::from(u32::from_be_bytes(self.array()?))),
            Marker::U64 => Value::from_u64(u64::from_be_bytes(self.array()?)),
            Marker::I8 => Value::Int(i64::from(i8::from_be_bytes(self.array()?))),
            Marker::I16 => Value::Int(i64::from(i16::from_be_bytes(self.array()?))),
            Marker::I32 => Value::Int(i64::from(i32::from_be_bytes(self.array()?))),
            Marker::I64 => Value::Int(i64::from_be_bytes(self.array()?)),
            Marker::F32 => Value::Float(f64::from(f32::from_be_bytes(self.array()?))),
            Marker::F64 => Value::Float(f64::from_be_bytes(self.array()?)),
            Marker::Bin8 | Marker::Bin16 | Marker::Bin32 => {
                let len = match marker {
                    Marker::Bin8 => self.len8()?,
                    Marker::Bin16 => self.len16()?,
                    _ => self.len32()?,
                };
                Value::Bin(self.take(len)?.to_vec())
            }
            Marker::FixArray(_) | Marker::Array16 | Marker::Array32 => {
                let len = match marker {
                    Marker::FixArray(n) => usize::from(n),
                    Marker::Array16 => self.len16()?,
                    _ => self.len32()?,
                };
                self.array_body(len, depth_left)?
            }
            Marker::FixExt1
            | Marker::FixExt2
            | Marker::FixExt4
            | Marker::FixExt8
            | Marker::FixExt16
            | Marker::Ext8
            | Marker::Ext16
            | Marker::Ext32 => return Err(Malformed::Extension),
            // Strings and maps were handled above; only 0xc1 is left.
            _ => return Err(Malformed::ReservedMarker),
        })
    }

    fn array_body(&mut self, len: usize, depth_left: usize) -> Result<Value, Malformed> {
        let depth_left = depth_left.checked_sub(1).ok_or(Malformed::TooDeep)?;
        // Every item takes at least one byte.
        if len > self.rest.len() {
            return Err(Malformed::Truncated);
        }
        let mut items = Vec::with_capacity(len);
        for _ in 0..len {
            items.push(self.value(depth_left)?);
        }
        Ok(Value::Array(items))
    }

    /// Reads `len` entries of a map whose header was read.
    pub(crate) fn map_body(&mut self, len: usize, depth_left: usize) -> Result<Value, Malformed> {
        let depth_left = depth_left.checked_sub(1).ok_or(Malformed::TooDeep)?;
        let mut map = Map::new();
        for _ in 0..len {
            let key = self.key()?.to_owned();
            let value = self.value(depth_left)?;
            // A repeated key keeps its last value, as JavaScript's JSON.parse does.
            map.insert(key, value);
        }
        Ok(Value::Map(map))
    }
}
