//! The size and depth of values, for the `too_large` limits.
//!
//! A room keeps a running size of its state so that the state-size limit costs nothing per
//! op beyond measuring the subtrees an op moves in or out. The size is the length of the
//! state's most compact MessagePack encoding (the widths `rmp::encode::write_sint`,
//! `write_uint`, `write_str`, `write_bin`, `write_array_len` and `write_map_len` choose;
//! floats as 9-byte `f64`). The server's encoder may choose other widths, so treat it as a
//! close estimate of the wire size, not a promise about it.
//!
//! Invariants:
//! - Pure functions, no allocation; never panic.
//! - `Measure::of` recurses once per level of nesting: callers only measure values that the
//!   protocol decoder (which bounds nesting) or the room's own depth limit produced.

use crate::value::Value;

/// Bytes of the header of a string of `len` bytes (fixstr, str8, str16, str32).
pub fn str_header(len: usize) -> usize {
    if len < 32 {
        1
    } else if len < 1 << 8 {
        2
    } else if len < 1 << 16 {
        3
    } else {
        5
    }
}

/// Bytes of a string of `len` bytes, header included.
pub fn str_size(len: usize) -> usize {
    str_header(len) + len
}

/// Bytes of the header of a binary of `len` bytes (bin8, bin16, bin32).
pub fn bin_header(len: usize) -> usize {
    if len < 1 << 8 {
        2
    } else if len < 1 << 16 {
        3
    } else {
        5
    }
}

/// Bytes of the header of an array or map of `len` items (fix, 16-bit, 32-bit).
pub fn container_header(len: usize) -> usize {
    if len < 16 {
        1
    } else if len < 1 << 16 {
        3
    } else {
        5
    }
}

/// How much a container's header grows when its length goes from `len` to `len + 1`.
pub fn header_growth(len: usize) -> usize {
    container_header(len + 1) - container_header(len)
}

/// Bytes of a signed integer in its most compact encoding.
pub fn int_size(i: i64) -> usize {
    match i {
        -32..=127 => 1,
        -128..=255 => 2,
        -32_768..=65_535 => 3,
        -2_147_483_648..=4_294_967_295 => 5,
        _ => 9,
    }
}

/// The encoded size of a value and how deep its nesting goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Measure {
    /// Length of the value's most compact MessagePack encoding.
    pub bytes: usize,
    /// 0 for a scalar or an empty container; otherwise 1 + the deepest child's nesting.
    /// A value placed at a path of length `n` puts values at paths up to `n + nesting`.
    pub nesting: usize,
}

impl Measure {
    pub fn of(value: &Value) -> Measure {
        let scalar = |bytes| Measure { bytes, nesting: 0 };
        match value {
            Value::Nil | Value::Bool(_) => scalar(1),
            Value::Int(i) => scalar(int_size(*i)),
            Value::UInt(_) | Value::Float(_) => scalar(9),
            Value::Str(s) => scalar(str_size(s.len())),
            Value::Bin(b) => scalar(bin_header(b.len()) + b.len()),
            Value::Array(items) => {
                let mut m = Measure {
                    bytes: container_header(items.len()),
                    nesting: 0,
                };
                for item in items {
                    m.add_child(Measure::of(item));
                }
                m
            }
            Value::Map(map) => {
                let mut m = Measure {
                    bytes: container_header(map.len()),
                    nesting: 0,
                };
                for (key, item) in map {
                    m.bytes += str_size(key.len());
                    m.add_child(Measure::of(item));
                }
                m
            }
        }
    }

    fn add_child(&mut self, child: Measure) {
        self.bytes += child.bytes;
        self.nesting = self.nesting.max(child.nesting + 1);
    }
}

/// Bytes of a value (see [`Measure`]).
pub fn encoded_size(value: &Value) -> usize {
    Measure::of(value).bytes
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::value::Map;

    /// The value encoded with rmp's most compact writers: the reference the sizes must match.
    pub(crate) fn rmp_encode(value: &Value, out: &mut Vec<u8>) {
        use rmp::encode;
        let r = match value {
            Value::Nil => encode::write_nil(out).map_err(|_| ()),
            Value::Bool(b) => encode::write_bool(out, *b).map_err(|_| ()),
            Value::Int(i) => encode::write_sint(out, *i).map(|_| ()).map_err(|_| ()),
            Value::UInt(u) => encode::write_uint(out, *u).map(|_| ()).map_err(|_| ()),
            Value::Float(f) => encode::write_f64(out, *f).map_err(|_| ()),
            Value::Str(s) => encode::write_str(out, s).map_err(|_| ()),
            Value::Bin(b) => encode::write_bin(out, b).map_err(|_| ()),
            Value::Array(items) => {
                let r = encode::write_array_len(out, items.len() as u32)
                    .map(|_| ())
                    .map_err(|_| ());
                for item in items {
                    rmp_encode(item, out);
                }
                r
            }
            Value::Map(map) => {
                let r = encode::write_map_len(out, map.len() as u32)
                    .map(|_| ())
                    .map_err(|_| ());
                for (k, item) in map {
                    encode::write_str(out, k).expect("writing to a Vec");
                    rmp_encode(item, out);
                }
                r
            }
        };
        r.expect("writing to a Vec");
    }

    fn rmp_len(value: &Value) -> usize {
        let mut out = Vec::new();
        rmp_encode(value, &mut out);
        out.len()
    }

    #[test]
    fn integer_widths_match_rmp() {
        let edges = [
            0,
            127,
            128,
            255,
            256,
            65_535,
            65_536,
            4_294_967_295,
            4_294_967_296,
            -1,
            -32,
            -33,
            -128,
            -129,
            -32_768,
            -32_769,
            -2_147_483_648,
            -2_147_483_649,
            i64::MIN,
            i64::MAX,
        ];
        for i in edges {
            assert_eq!(int_size(i), rmp_len(&Value::Int(i)), "{i}");
        }
        assert_eq!(encoded_size(&Value::UInt(u64::MAX)), 9);
        assert_eq!(encoded_size(&Value::Float(0.5)), 9);
    }

    #[test]
    fn string_binary_and_container_widths_match_rmp() {
        for len in [0, 31, 32, 255, 256, 65_535, 65_536] {
            let s = Value::Str("x".repeat(len));
            assert_eq!(encoded_size(&s), rmp_len(&s), "str {len}");
            let b = Value::Bin(vec![7; len]);
            assert_eq!(encoded_size(&b), rmp_len(&b), "bin {len}");
        }
        for len in [0, 15, 16, 65_535, 65_536] {
            let a = Value::Array(vec![Value::Nil; len]);
            assert_eq!(encoded_size(&a), rmp_len(&a), "array {len}");
            let m = Value::Map((0..len).map(|i| (i.to_string(), Value::Nil)).collect());
            assert_eq!(encoded_size(&m), rmp_len(&m), "map {len}");
        }
    }

    #[test]
    fn nesting_counts_levels_below_the_value() {
        assert_eq!(Measure::of(&Value::Int(1)).nesting, 0);
        assert_eq!(Measure::of(&Value::Map(Map::new())).nesting, 0);
        assert_eq!(Measure::of(&Value::Array(vec![Value::Nil])).nesting, 1);
        let mut inner = Map::new();
        inner.insert("a".into(), Value::Array(vec![Value::Array(vec![])]));
        assert_eq!(Measure::of(&Value::Map(inner)).nesting, 2);
    }

    #[test]
    fn header_growth_at_the_boundaries() {
        assert_eq!(header_growth(0), 0);
        assert_eq!(header_growth(15), 2);
        assert_eq!(header_growth(65_535), 2);
        assert_eq!(header_growth(65_536), 0);
    }
}
