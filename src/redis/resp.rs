//! Sans-IO RESP2/RESP3 reply decoder (and the matching encoder, used by tests and fakes).
//!
//! # Why our own decoder
//!
//! The issue offered two ways to parse replies arriving on a glommio socket: (a) the
//! `redis` crate's `Parser` behind a reader that reports `WouldBlock` once drained, or (b) a
//! small decoder of our own that answers `Ok(None)` when the bytes end mid-reply. We chose
//! (b), for four reasons:
//!
//! - **One return shape.** `decode(buf, limits) -> Result<Option<(Value, usize)>, RespError>`
//!   is the shape of every codec in Kasagi (STYLE.md habit 2): "need more bytes" is `Ok(None)`,
//!   the caller knows exactly how many bytes one reply used, and a fuzz target is three lines.
//! - **No hidden state across an I/O error.** With (a), a `WouldBlock` surfaces as a
//!   `RedisError` of kind `IoError` from inside `combine`'s partial-state machinery; whether
//!   the half-parsed reply survives it is an internal of `combine` that the crate itself
//!   does not rely on (its async path uses a tokio codec instead). Here nothing survives a
//!   call: the caller keeps the bytes, we keep nothing.
//! - **No extra copy.** The crate's `Parser` copies every byte into its own buffer before
//!   parsing; we parse the connection's read buffer in place and copy only payloads out.
//! - **Bounded input.** Bulk lengths, nesting depth and line lengths are checked against
//!   [`Limits`] before anything is allocated, so a broken or hostile peer cannot make us
//!   reserve gigabytes or recurse without end.
//!
//! We still produce the crate's [`redis::Value`], so `redis::FromRedisValue` works on our
//! replies. Two leaf types wrap types the crate does not export (`ServerError` for `-` and
//! `!`, `BigInt` for `(`): for those, once we have found the complete frame, we hand exactly
//! its bytes to `redis::parse_redis_value`, so the crate builds them the way it always does.
//!
//! A reply that is still incomplete is re-scanned from its start on the next call. Reads are
//! large (64 KiB), so a reply of `n` bytes is scanned at most `n / 64 KiB + 1` times; replies
//! on Kasagi's paths are small.
//!
//! # Invariants
//!
//! - Never panics, whatever the bytes; never allocates more than the bytes present justify
//!   (a declared element count only reserves up to the bytes left in the buffer).
//! - `Ok(Some((_, n)))` has `0 < n <= buf.len()`; `Ok(None)` means a prefix of a valid reply.

use redis::{PushKind, Value, VerbatimFormat};

/// Bounds on what one reply may contain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Largest bulk string, verbatim string or blob error. Default 512 MiB (Redis's own
    /// `proto-max-bulk-len` default).
    pub max_bulk_bytes: usize,
    /// Deepest nesting of aggregates (arrays, maps, sets, pushes, attributes). Default 64.
    pub max_depth: usize,
    /// Longest line (simple string, error, number) before its CRLF. Default 64 KiB: a line
    /// that long without CRLF is a broken stream, not a reply still arriving.
    pub max_line_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_bulk_bytes: 512 * 1024 * 1024,
            max_depth: 64,
            max_line_bytes: 64 * 1024,
        }
    }
}

/// Why bytes are not a RESP reply. Each names the rule broken.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RespError {
    #[error("unknown RESP type byte 0x{0:02x}")]
    UnknownType(u8),
    #[error("a line does not end with CRLF")]
    BadLineEnding,
    #[error("a line is longer than {max} bytes")]
    LineTooLong { max: usize },
    #[error("a length or integer is not a decimal i64")]
    BadNumber,
    #[error("a length of {len} is negative where that is not allowed")]
    NegativeLength { len: i64 },
    #[error("a bulk of {len} bytes exceeds the limit of {max}")]
    BulkTooLong { len: u64, max: usize },
    #[error("aggregates nested deeper than {max}")]
    TooDeep { max: usize },
    #[error("a simple string, double or verbatim string is not UTF-8")]
    InvalidUtf8,
    #[error("a boolean is neither `t` nor `f`")]
    BadBoolean,
    #[error("a double is not a number")]
    BadDouble,
    #[error("a verbatim string has no `fmt:` prefix")]
    BadVerbatim,
    #[error("a push has no kind string first")]
    BadPush,
    #[error("an error or big number the redis crate rejected")]
    BadLeaf,
}

/// Decodes one complete reply from the front of `buf`.
///
/// Returns the reply and the number of bytes it used, `Ok(None)` when `buf` holds only a
/// prefix of a reply, or the rule the bytes break.
pub fn decode(buf: &[u8], limits: &Limits) -> Result<Option<(Value, usize)>, RespError> {
    let mut cursor = Cursor {
        buf,
        pos: 0,
        limits,
    };
    Ok(cursor.value(1)?.map(|value| (value, cursor.pos)))
}

/// Unwraps an `Option` from a sub-parse, returning `Ok(None)` from the caller when the
/// bytes ran out.
macro_rules! need {
    ($e:expr) => {
        match $e? {
            Some(v) => v,
            None => return Ok(None),
        }
    };
}

struct Cursor<'a, 'l> {
    buf: &'a [u8],
    pos: usize,
    limits: &'l Limits,
}

type Step<T> = Result<Option<T>, RespError>;

impl<'a> Cursor<'a, '_> {
    fn value(&mut self, depth: usize) -> Step<Value> {
        if depth > self.limits.max_depth {
            return Err(RespError::TooDeep {
                max: self.limits.max_depth,
            });
        }
        let start = self.pos;
        let Some(&kind) = self.buf.get(self.pos) else {
            return Ok(None);
        };
        self.pos += 1;
        let value = match kind {
            b'+' => {
                let line = need!(self.line());
                let text = std::str::from_utf8(line).map_err(|_| RespError::InvalidUtf8)?;
                if text == "OK" {
                    Value::Okay
                } else {
                    Value::SimpleString(text.to_owned())
                }
            }
            b':' => Value::Int(parse_i64(need!(self.line()))?),
            b'$' => match need!(self.bulk(true)) {
                Some(bytes) => Value::BulkString(bytes.to_vec()),
                None => Value::Nil,
            },
            b'*' => match need!(self.length(true)) {
                Some(n) => Value::Array(need!(self.values(n, depth))),
                None => Value::Nil,
            },
            b'~' => match need!(self.length(true)) {
                Some(n) => Value::Set(need!(self.values(n, depth))),
                None => Value::Nil,
            },
            b'%' => {
                let n = need!(self.length(false)).unwrap_or(0);
                Value::Map(need!(self.pairs(n, depth)))
            }
            b'|' => {
                let n = need!(self.length(false)).unwrap_or(0);
                let attributes = need!(self.pairs(n, depth));
                let data = Box::new(need!(self.value(depth + 1)));
                Value::Attribute { data, attributes }
            }
            b'>' => need!(self.push(depth)),
            b'_' => {
                need!(self.line());
                Value::Nil
            }
            b'#' => match need!(self.line()) {
                b"t" => Value::Boolean(true),
                b"f" => Value::Boolean(false),
                _ => return Err(RespError::BadBoolean),
            },
            b',' => {
                let line = need!(self.line());
                let text = std::str::from_utf8(line).map_err(|_| RespError::InvalidUtf8)?;
                Value::Double(text.parse().map_err(|_| RespError::BadDouble)?)
            }
            b'=' => {
                let bytes = need!(self.bulk(false)).unwrap_or_default();
                verbatim(bytes)?
            }
            b'-' | b'(' => {
                need!(self.line());
                self.crate_leaf(start)?
            }
            b'!' => {
                need!(self.bulk(false));
                self.crate_leaf(start)?
            }
            other => return Err(RespError::UnknownType(other)),
        };
        Ok(Some(value))
    }

    /// Builds a leaf whose Rust type the `redis` crate keeps private, from the exact bytes
    /// of its (complete) frame.
    fn crate_leaf(&self, start: usize) -> Result<Value, RespError> {
        redis::parse_redis_value(&self.buf[start..self.pos]).map_err(|_| RespError::BadLeaf)
    }

    /// The bytes up to the next CRLF, consuming both.
    fn line(&mut self) -> Step<&'a [u8]> {
        let rest = &self.buf[self.pos..];
        let Some(newline) = rest.iter().position(|&b| b == b'\n') else {
            if rest.len() > self.limits.max_line_bytes {
                return Err(RespError::LineTooLong {
                    max: self.limits.max_line_bytes,
                });
            }
            return Ok(None);
        };
        if newline == 0 || rest[newline - 1] != b'\r' {
            return Err(RespError::BadLineEnding);
        }
        if newline - 1 > self.limits.max_line_bytes {
            return Err(RespError::LineTooLong {
                max: self.limits.max_line_bytes,
            });
        }
        self.pos += newline + 1;
        Ok(Some(&rest[..newline - 1]))
    }

    /// A length line: `Some(None)` for -1 (RESP2 null) when `nullable`.
    fn length(&mut self, nullable: bool) -> Step<Option<usize>> {
        let n = parse_i64(need!(self.line()))?;
        if n == -1 && nullable {
            return Ok(Some(None));
        }
        usize::try_from(n)
            .map(|n| Some(Some(n)))
            .map_err(|_| RespError::NegativeLength { len: n })
    }

    /// A length-prefixed payload followed by CRLF; `Some(None)` for a RESP2 null bulk.
    fn bulk(&mut self, nullable: bool) -> Step<Option<&'a [u8]>> {
        let Some(len) = need!(self.length(nullable)) else {
            return Ok(Some(None));
        };
        if len > self.limits.max_bulk_bytes {
            return Err(RespError::BulkTooLong {
                len: len as u64,
                max: self.limits.max_bulk_bytes,
            });
        }
        let rest = &self.buf[self.pos..];
        if rest.len() < len + 2 {
            return Ok(None);
        }
        if &rest[len..len + 2] != b"\r\n" {
            return Err(RespError::BadLineEnding);
        }
        self.pos += len + 2;
        Ok(Some(Some(&rest[..len])))
    }

    fn values(&mut self, n: usize, depth: usize) -> Step<Vec<Value>> {
        // Every element takes at least 3 bytes, so the bytes present bound the reservation.
        let mut items = Vec::with_capacity(n.min(self.buf.len() - self.pos));
        for _ in 0..n {
            items.push(need!(self.value(depth + 1)));
        }
        Ok(Some(items))
    }

    fn pairs(&mut self, n: usize, depth: usize) -> Step<Vec<(Value, Value)>> {
        let mut pairs = Vec::with_capacity(n.min(self.buf.len() - self.pos));
        for _ in 0..n {
            let key = need!(self.value(depth + 1));
            let value = need!(self.value(depth + 1));
            pairs.push((key, value));
        }
        Ok(Some(pairs))
    }

    fn push(&mut self, depth: usize) -> Step<Value> {
        let n = need!(self.length(false)).unwrap_or(0);
        if n == 0 {
            // What the redis crate makes of an empty push; Redis never sends one.
            return Ok(Some(Value::Push {
                kind: PushKind::Other(String::new()),
                data: Vec::new(),
            }));
        }
        let mut data = need!(self.values(n, depth));
        let kind = match data.remove(0) {
            Value::BulkString(bytes) => String::from_utf8(bytes).map_err(|_| RespError::BadPush)?,
            Value::SimpleString(text) => text,
            Value::Okay => "OK".to_owned(),
            _ => return Err(RespError::BadPush),
        };
        Ok(Some(Value::Push {
            kind: push_kind(kind),
            data,
        }))
    }
}

fn parse_i64(line: &[u8]) -> Result<i64, RespError> {
    std::str::from_utf8(line)
        .ok()
        .and_then(|text| text.parse().ok())
        .ok_or(RespError::BadNumber)
}

fn verbatim(bytes: &[u8]) -> Result<Value, RespError> {
    let text = std::str::from_utf8(bytes).map_err(|_| RespError::InvalidUtf8)?;
    let (format, text) = text.split_once(':').ok_or(RespError::BadVerbatim)?;
    let format = match format {
        "txt" => VerbatimFormat::Text,
        "mkd" => VerbatimFormat::Markdown,
        other => VerbatimFormat::Unknown(other.to_owned()),
    };
    Ok(Value::VerbatimString {
        format,
        text: text.to_owned(),
    })
}

/// The crate's names for push kinds (its own mapping function is private).
fn push_kind(kind: String) -> PushKind {
    match kind.as_str() {
        "invalidate" => PushKind::Invalidate,
        "message" => PushKind::Message,
        "pmessage" => PushKind::PMessage,
        "smessage" => PushKind::SMessage,
        "unsubscribe" => PushKind::Unsubscribe,
        "punsubscribe" => PushKind::PUnsubscribe,
        "sunsubscribe" => PushKind::SUnsubscribe,
        "subscribe" => PushKind::Subscribe,
        "psubscribe" => PushKind::PSubscribe,
        "ssubscribe" => PushKind::SSubscribe,
        _ => PushKind::Other(kind),
    }
}

/// Appends the RESP encoding of `value` to `out`: RESP2 forms where RESP2 has one (`Nil` is
/// `$-1`), RESP3 forms otherwise. Used by tests and fake servers; commands are packed by the
/// `redis` crate.
///
/// A `SimpleString`, error or push kind containing CR or LF cannot be encoded faithfully;
/// such values are written as given and will not decode back.
pub fn encode(value: &Value, out: &mut Vec<u8>) {
    fn header(out: &mut Vec<u8>, kind: u8, n: impl std::fmt::Display) {
        out.push(kind);
        out.extend_from_slice(n.to_string().as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    fn blob(out: &mut Vec<u8>, kind: u8, bytes: &[u8]) {
        header(out, kind, bytes.len());
        out.extend_from_slice(bytes);
        out.extend_from_slice(b"\r\n");
    }
    match value {
        Value::Nil => out.extend_from_slice(b"$-1\r\n"),
        Value::Int(n) => header(out, b':', n),
        Value::BulkString(bytes) => blob(out, b'$', bytes),
        Value::Array(items) | Value::Set(items) => {
            header(
                out,
                if matches!(value, Value::Set(_)) {
                    b'~'
                } else {
                    b'*'
                },
                items.len(),
            );
            items.iter().for_each(|item| encode(item, out));
        }
        Value::SimpleString(text) => header(out, b'+', text),
        Value::Okay => out.extend_from_slice(b"+OK\r\n"),
        Value::Map(pairs) => {
            header(out, b'%', pairs.len());
            for (key, value) in pairs {
                encode(key, out);
                encode(value, out);
            }
        }
        Value::Attribute { data, attributes } => {
            header(out, b'|', attributes.len());
            for (key, value) in attributes {
                encode(key, out);
                encode(value, out);
            }
            encode(data, out);
        }
        Value::Double(x) => header(out, b',', x),
        Value::Boolean(b) => out.extend_from_slice(if *b { b"#t\r\n" } else { b"#f\r\n" }),
        Value::VerbatimString { format, text } => {
            blob(out, b'=', format!("{format}:{text}").as_bytes())
        }
        Value::BigNumber(n) => header(out, b'(', n),
        Value::Push { kind, data } => {
            header(out, b'>', data.len() + 1);
            blob(out, b'$', kind.to_string().as_bytes());
            data.iter().for_each(|item| encode(item, out));
        }
        Value::ServerError(error) => {
            out.push(b'-');
            out.extend_from_slice(error.code().as_bytes());
            if let Some(details) = error.details() {
                out.push(b' ');
                out.extend_from_slice(details.as_bytes());
            }
            out.extend_from_slice(b"\r\n");
        }
    }
}

#[cfg(test)]
mod tests;
