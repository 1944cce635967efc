//! [`ServerView`] read straight off a MessagePack message, without serde.
//!
//! Why not rmp-serde here: a coalesced delta carries dozens of ops, each with a 100-byte
//! padding string that rmp-serde checks as UTF-8 only for the bench to ignore it, behind a
//! visitor call per value. At `latency-10k`'s 500,000 deliveries/s decoding took about an
//! eighth of the generator's core (`perf`, 2026-12-07), and the generator shares its core
//! with the clients whose latency it measures. This reader walks the bytes once: the
//! fields the bench reads are decoded, everything else is skipped by its length prefix,
//! unchecked and uncopied. It runs 18% fewer instructions (callgrind, a delta of nine
//! 100-byte ops: 11,456 against 13,920): a modest saving, as skipping ~16 values per op
//! costs about what validating the padding did.
//!
//! Invariants: never panics and never reads past the slice, whatever the bytes; no
//! recursion (skipping keeps a count of the values still to skip); a length prefix larger
//! than the bytes left is an error before anything is reserved. The result equals what
//! rmp-serde makes of the same message (a property test checks this), except that a `ts`
//! that is not an unsigned integer is no stamp here where rmp-serde fails the message.

use std::borrow::Cow;

use crate::wire::{OpProbe, ServerView};

/// Decodes the fields of [`ServerView`] from one server message.
pub fn decode(payload: &[u8]) -> Result<ServerView<'_>, String> {
    decode_view(payload).map_err(|e| e.to_string())
}

/// What broke: a fixed text, so that the happy path carries no `String`.
type Malformed = &'static str;

fn decode_view(payload: &[u8]) -> Result<ServerView<'_>, Malformed> {
    let mut c = Cursor {
        bytes: payload,
        pos: 0,
    };
    let Head::Map(entries) = c.head()? else {
        return Err("a server message is not a map");
    };
    let mut view = ServerView {
        t: Cow::Borrowed(""),
        room: None,
        tick: None,
        seq: None,
        ops: None,
        you: None,
        resync: None,
        code: None,
    };
    let mut has_t = false;
    for _ in 0..entries {
        let key = match c.head()? {
            Head::Str(key) => key,
            other => {
                // Not a key the bench knows: skip it and its value.
                c.skip_children(other)?;
                c.skip()?;
                continue;
            }
        };
        match key {
            b"t" => {
                view.t = Cow::Borrowed(c.str()?);
                has_t = true;
            }
            b"room" => view.room = c.opt_str()?.map(Cow::Borrowed),
            b"you" => view.you = c.opt_str()?.map(Cow::Borrowed),
            b"code" => view.code = c.opt_str()?.map(Cow::Borrowed),
            b"tick" => view.tick = c.opt_uint()?,
            b"seq" => view.seq = c.opt_uint()?,
            b"resync" => {
                view.resync = match c.head()? {
                    Head::Nil => None,
                    Head::Bool(b) => Some(b),
                    _ => return Err("resync is not a bool"),
                }
            }
            b"ops" => view.ops = c.ops()?,
            _ => c.skip()?,
        }
    }
    if !has_t {
        return Err("missing field `t`");
    }
    Ok(view)
}

/// The start of one value: scalars whole, strings and binaries as their bytes, arrays and
/// maps as their counts (their elements follow).
enum Head<'a> {
    Nil,
    Bool(bool),
    Uint(u64),
    Int(i64),
    Other,
    Str(&'a [u8]),
    Array(u64),
    Map(u64),
}

struct Cursor<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    #[inline]
    fn take(&mut self, n: u64) -> Result<&'a [u8], Malformed> {
        let left = (self.bytes.len() - self.pos) as u64;
        if n > left {
            return Err("a length runs past the end of the message");
        }
        let start = self.pos;
        self.pos += n as usize;
        Ok(&self.bytes[start..self.pos])
    }

    /// A big-endian unsigned integer of `n` (1, 2, 4 or 8) bytes.
    #[inline]
    fn be(&mut self, n: u64) -> Result<u64, Malformed> {
        let b = self.take(n)?;
        Ok(match *b {
            [x] => u64::from(x),
            [x, y] => u64::from(u16::from_be_bytes([x, y])),
            [a, b, c, d] => u64::from(u32::from_be_bytes([a, b, c, d])),
            _ => b.iter().fold(0u64, |acc, &x| (acc << 8) | u64::from(x)),
        })
    }

    #[inline]
    fn head(&mut self) -> Result<Head<'a>, Malformed> {
        let marker = self.take(1)?[0];
        Ok(match marker {
            0x00..=0x7f => Head::Uint(u64::from(marker)),
            0x80..=0x8f => Head::Map(u64::from(marker & 0x0f)),
            0x90..=0x9f => Head::Array(u64::from(marker & 0x0f)),
            0xa0..=0xbf => Head::Str(self.take(u64::from(marker & 0x1f))?),
            0xc0 => Head::Nil,
            0xc1 => return Err("marker 0xc1 is never used"),
            0xc2 => Head::Bool(false),
            0xc3 => Head::Bool(true),
            0xc4..=0xc6 => {
                let len = self.be(1 << (marker - 0xc4))?;
                self.take(len)?;
                Head::Other
            }
            0xc7..=0xc9 => {
                // ext 8/16/32: length, then a type byte, then the data.
                let len = self.be(1 << (marker - 0xc7))?;
                self.take(len + 1)?;
                Head::Other
            }
            0xca => {
                self.take(4)?;
                Head::Other
            }
            0xcb => {
                self.take(8)?;
                Head::Other
            }
            0xcc..=0xcf => Head::Uint(self.be(1 << (marker - 0xcc))?),
            0xd0..=0xd3 => {
                let width = 1u64 << (marker - 0xd0);
                let raw = self.be(width)?;
                // Sign-extend from `width` bytes.
                let shift = 64 - 8 * width as u32;
                Head::Int(((raw << shift) as i64) >> shift)
            }
            0xd4..=0xd8 => {
                // fixext 1/2/4/8/16: a type byte, then the data.
                self.take(1 + (1 << (marker - 0xd4)))?;
                Head::Other
            }
            0xd9..=0xdb => {
                let len = self.be(1 << (marker - 0xd9))?;
                Head::Str(self.take(len)?)
            }
            0xdc | 0xdd => Head::Array(self.be(if marker == 0xdc { 2 } else { 4 })?),
            0xde | 0xdf => Head::Map(self.be(if marker == 0xde { 2 } else { 4 })?),
            0xe0..=0xff => Head::Int(i64::from(marker as i8)),
        })
    }

    /// Skips the elements of a value whose head was just read.
    #[inline]
    fn skip_children(&mut self, head: Head<'_>) -> Result<(), Malformed> {
        let mut pending = children(&head);
        while pending > 0 {
            pending -= 1;
            let head = self.head()?;
            pending = pending.saturating_add(children(&head));
        }
        Ok(())
    }

    /// Skips one whole value.
    #[inline]
    fn skip(&mut self) -> Result<(), Malformed> {
        let head = self.head()?;
        self.skip_children(head)
    }

    fn str(&mut self) -> Result<&'a str, Malformed> {
        self.opt_str()?.ok_or("expected a string")
    }

    fn opt_str(&mut self) -> Result<Option<&'a str>, Malformed> {
        match self.head()? {
            Head::Nil => Ok(None),
            Head::Str(bytes) => std::str::from_utf8(bytes)
                .map(Some)
                .map_err(|_| "a string is not UTF-8"),
            _ => Err("expected a string"),
        }
    }

    fn opt_uint(&mut self) -> Result<Option<u64>, Malformed> {
        match self.head()? {
            Head::Nil => Ok(None),
            head => unsigned(&head)
                .map(Some)
                .ok_or("expected an unsigned integer"),
        }
    }

    /// A delta's `ops`: each op's `ts` when its value (third element) is a map with one.
    fn ops(&mut self) -> Result<Option<Vec<OpProbe>>, Malformed> {
        let count = match self.head()? {
            Head::Nil => return Ok(None),
            Head::Array(n) => n,
            _ => return Err("ops is not an array"),
        };
        // Every op takes at least one byte: a count past the bytes left is a lie.
        let left = (self.bytes.len() - self.pos) as u64;
        if count > left {
            return Err("more ops announced than bytes left");
        }
        let mut ops = Vec::with_capacity(count as usize);
        for _ in 0..count {
            let Head::Array(len) = self.head()? else {
                return Err("an op is not an array");
            };
            let mut probe = OpProbe::default();
            for i in 0..len {
                if i == 2 {
                    probe = self.stamp()?;
                } else {
                    self.skip()?;
                }
            }
            ops.push(probe);
        }
        Ok(Some(ops))
    }

    /// An op's value: its `ts` and `at` when it is a map with unsigned ones.
    fn stamp(&mut self) -> Result<OpProbe, Malformed> {
        let entries = match self.head()? {
            Head::Map(n) => n,
            other => {
                self.skip_children(other)?;
                return Ok(OpProbe::default());
            }
        };
        let mut probe = OpProbe::default();
        for _ in 0..entries {
            match self.head()? {
                Head::Str(b"ts") => probe.ts = self.stamp_field()?,
                Head::Str(b"at") => probe.sent = self.stamp_field()?,
                other => {
                    self.skip_children(other)?;
                    self.skip()?;
                }
            }
        }
        Ok(probe)
    }

    /// A stamp's time: not one unless unsigned (the bench's own ops always are).
    fn stamp_field(&mut self) -> Result<Option<u64>, Malformed> {
        let head = self.head()?;
        let n = unsigned(&head);
        if n.is_none() {
            self.skip_children(head)?;
        }
        Ok(n)
    }
}

/// A non-negative integer's value, however it was encoded.
fn unsigned(head: &Head<'_>) -> Option<u64> {
    match *head {
        Head::Uint(n) => Some(n),
        Head::Int(n) if n >= 0 => Some(n as u64),
        _ => None,
    }
}

fn children(head: &Head<'_>) -> u64 {
    match *head {
        Head::Array(n) => n,
        Head::Map(n) => n.saturating_mul(2),
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kasagi::protocol::{encode_into, DeltaOp, ErrorCode, PathSeg, ServerMessage, Subprotocol};
    use kasagi::value::{Map, Value};
    use proptest::prelude::*;

    fn encode(msg: &ServerMessage<'_>) -> Vec<u8> {
        let mut out = Vec::new();
        encode_into(msg, Subprotocol::MsgPack, &mut out);
        out
    }

    /// What the bench reads of a view, comparable across the two decoders.
    fn fields(v: &ServerView<'_>) -> String {
        let ops: Option<Vec<(Option<u64>, Option<u64>)>> = v
            .ops
            .as_ref()
            .map(|ops| ops.iter().map(|o| (o.ts, o.sent)).collect());
        format!(
            "{} {:?} {:?} {:?} {:?} {:?} {:?} {:?}",
            v.t, v.room, v.tick, v.seq, ops, v.you, v.resync, v.code
        )
    }

    /// Ours reads every message the server can encode, and reads it as rmp-serde does
    /// wherever rmp-serde reads it (it refuses a `ts` that is not an unsigned integer).
    fn assert_same(bytes: &[u8]) {
        let ours = decode(bytes).expect("our decoder reads it");
        if let Ok(serde) = rmp_serde::from_slice::<ServerView<'_>>(bytes) {
            assert_eq!(fields(&ours), fields(&serde));
        }
    }

    fn timed(ts: u64, pad: &str) -> Value {
        let mut map = Map::new();
        map.insert("s".into(), Value::Int(3));
        map.insert("ts".into(), Value::Int(ts as i64));
        map.insert("at".into(), Value::Int(ts as i64 + 1));
        map.insert("pad".into(), Value::Str(pad.into()));
        Value::Map(map)
    }

    #[test]
    fn reads_every_kind_of_server_message_like_rmp_serde() {
        let state = timed(5, "state");
        let members = vec!["a".to_string(), "b".to_string()];
        let ops = vec![
            DeltaOp::Set(vec![PathSeg::Key("k".into())], timed(1 << 40, "xxxx")),
            DeltaOp::Del(vec![PathSeg::Key("gone".into()), PathSeg::Index(3)]),
            DeltaOp::Push(vec![PathSeg::Key("list".into())], Value::Float(1.5)),
        ];
        let messages = [
            ServerMessage::Joined {
                room: "r",
                tick: 9,
                epoch: 2,
                you: "c1",
                members: &members,
                state: Some(&state),
                resync: true,
            },
            ServerMessage::Delta {
                room: "r",
                tick: 70_000,
                epoch: 1,
                ops: &ops,
            },
            ServerMessage::Presence {
                room: "r",
                joined: &members,
                left: &[],
            },
            ServerMessage::Msg {
                room: "r",
                from: "c2",
                data: &state,
            },
            ServerMessage::Ack {
                room: "r",
                seq: u64::MAX,
                tick: 1,
            },
            ServerMessage::Error {
                code: ErrorCode::RateLimited,
                message: "slow down",
                room: Some("r"),
                seq: Some(4),
            },
            ServerMessage::Left {
                room: "r",
                reason: Some("kicked"),
            },
            ServerMessage::Pong {
                id: &Value::Bin(vec![1, 2, 3]),
                time: 12,
            },
        ];
        for msg in &messages {
            let bytes = encode(msg);
            assert_same(&bytes);
            assert!(rmp_serde::from_slice::<ServerView<'_>>(&bytes).is_ok());
        }
        let bytes = encode(&messages[1]);
        let delta = decode(&bytes).expect("decodes");
        let ops = delta.ops.expect("ops");
        let stamps: Vec<_> = ops.iter().map(|o| (o.ts, o.sent)).collect();
        assert_eq!(
            stamps,
            [
                (Some(1 << 40), Some((1 << 40) + 1)),
                (None, None),
                (None, None)
            ]
        );
    }

    #[test]
    fn a_time_that_is_not_unsigned_is_no_stamp() {
        let mut value = Map::new();
        value.insert("ts".into(), Value::Float(0.0));
        let ops = vec![
            DeltaOp::Set(vec![PathSeg::Key("a".into())], Value::Map(value)),
            DeltaOp::Set(vec![PathSeg::Key("b".into())], timed(9, "")),
        ];
        let bytes = encode(&ServerMessage::Delta {
            room: "r",
            tick: 1,
            epoch: 0,
            ops: &ops,
        });
        let view = decode(&bytes).expect("decodes");
        let stamps: Vec<_> = view
            .ops
            .expect("ops")
            .iter()
            .map(|o| (o.ts, o.sent))
            .collect();
        assert_eq!(stamps, [(None, None), (Some(9), Some(10))]);
    }

    #[test]
    fn a_cut_message_is_an_error_not_a_panic() {
        let ops = vec![DeltaOp::Set(
            vec![PathSeg::Key("k".into())],
            timed(77, "padding"),
        )];
        let bytes = encode(&ServerMessage::Delta {
            room: "room",
            tick: 3,
            epoch: 0,
            ops: &ops,
        });
        for cut in 0..bytes.len() {
            assert!(decode(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        assert!(decode(&bytes).is_ok());
    }

    #[test]
    fn huge_counts_fail_before_anything_is_reserved() {
        // {"t": "delta", "ops": array32 of 2^32-1 ops} in a dozen bytes.
        let mut bytes = vec![0x82, 0xa1, b't', 0xa5];
        bytes.extend_from_slice(b"delta");
        bytes.extend_from_slice(&[0xa3, b'o', b'p', b's', 0xdd, 0xff, 0xff, 0xff, 0xff]);
        assert!(decode(&bytes).is_err());
        // A map announcing 2^32-1 entries: skipped lazily, fails at the end of the bytes.
        let bytes = [0x81, 0xa1, b'x', 0xdf, 0xff, 0xff, 0xff, 0xff];
        assert!(decode(&bytes).is_err());
    }

    fn value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Nil),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::Int),
            (i64::MAX as u64 + 1..=u64::MAX).prop_map(Value::UInt),
            any::<f64>().prop_map(Value::Float),
            "[a-z\u{e9}\u{1F600}]{0,40}".prop_map(Value::Str),
            proptest::collection::vec(any::<u8>(), 0..300).prop_map(Value::Bin),
        ];
        leaf.prop_recursive(3, 40, 6, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                proptest::collection::btree_map("[a-z]{1,3}|ts", inner, 0..6)
                    .prop_map(|m| Value::Map(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
        #[test]
        fn deltas_of_any_values_read_like_rmp_serde(
            values in proptest::collection::vec(value(), 0..20),
            stamps in proptest::collection::vec(any::<u64>(), 0..20),
            tick in any::<u64>(),
        ) {
            let mut ops: Vec<DeltaOp> = values
                .into_iter()
                .map(|v| DeltaOp::Set(vec![PathSeg::Key("k".into())], v))
                .collect();
            ops.extend(stamps.iter().map(|&ts| {
                DeltaOp::Push(vec![PathSeg::Index(1)], timed(ts >> 1, "p"))
            }));
            let bytes = encode(&ServerMessage::Delta { room: "r", tick, epoch: 0, ops: &ops });
            assert_same(&bytes);
        }
    }
}
