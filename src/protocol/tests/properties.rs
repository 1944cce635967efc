//! Round-trip properties and decoding of arbitrary or damaged bytes.

use proptest::collection::{btree_map, vec};
use proptest::prelude::*;

use super::*;

// ---- properties ----

fn value_strategy(json: bool) -> impl Strategy<Value = Value> {
    let mut leaves = vec![
        Just(Value::Nil).boxed(),
        any::<bool>().prop_map(Value::Bool).boxed(),
        any::<i64>().prop_map(Value::Int).boxed(),
        ((1u64 << 63)..=u64::MAX).prop_map(Value::UInt).boxed(),
        ".{0,10}".prop_map(Value::Str).boxed(),
    ];
    if json {
        leaves.push(
            any::<f64>()
                .prop_filter("JSON floats are finite", |f| f.is_finite())
                .prop_map(Value::Float)
                .boxed(),
        );
    } else {
        leaves.push(
            any::<f64>()
                .prop_filter("NaN is not equal to itself", |f| !f.is_nan())
                .prop_map(Value::Float)
                .boxed(),
        );
        leaves.push(vec(any::<u8>(), 0..10).prop_map(Value::Bin).boxed());
    }
    prop::strategy::Union::new(leaves).prop_recursive(5, 48, 6, |inner| {
        prop_oneof![
            vec(inner.clone(), 0..6).prop_map(Value::Array),
            btree_map(".{0,6}", inner, 0..6).prop_map(Value::Map),
        ]
    })
}

/// What JSON makes of a value: base64 text for `Bin`, nil for non-finite floats.
fn through_json(value: &Value) -> Value {
    use base64::Engine as _;
    match value {
        Value::Bin(b) => Value::Str(base64::engine::general_purpose::STANDARD.encode(b)),
        Value::Float(f) if !f.is_finite() => Value::Nil,
        Value::Array(items) => Value::Array(items.iter().map(through_json).collect()),
        Value::Map(map) => Value::Map(
            map.iter()
                .map(|(k, v)| (k.clone(), through_json(v)))
                .collect(),
        ),
        other => other.clone(),
    }
}

fn path_strategy() -> impl Strategy<Value = Path> {
    vec(
        prop_oneof![
            ".{0,6}".prop_map(PathSeg::Key),
            any::<u64>().prop_map(PathSeg::Index)
        ],
        0..4,
    )
}

fn client_message_strategy(json: bool) -> impl Strategy<Value = ClientMessage> {
    let room = "[A-Za-z0-9_.:-]{1,20}".prop_map(|s| room(&s));
    let number = prop_oneof![
        any::<i64>().prop_map(Value::Int),
        ((1u64 << 63)..=u64::MAX).prop_map(Value::UInt),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::Float),
    ];
    let op = prop_oneof![
        (path_strategy(), value_strategy(json)).prop_map(|(p, v)| Op::Set(p, v)),
        path_strategy().prop_map(Op::Del),
        (path_strategy(), number).prop_map(|(p, n)| Op::Inc(p, n)),
        (path_strategy(), value_strategy(json)).prop_map(|(p, v)| Op::Push(p, v)),
    ];
    prop_oneof![
        (room.clone(), any::<Option<u64>>(), any::<Option<u64>>())
            .prop_map(|(room, since, epoch)| ClientMessage::Join { room, since, epoch }),
        room.clone().prop_map(|room| ClientMessage::Leave { room }),
        (room.clone(), any::<u64>(), vec(op, 0..5))
            .prop_map(|(room, seq, ops)| ClientMessage::Op { room, seq, ops }),
        (room, value_strategy(json)).prop_map(|(room, data)| ClientMessage::Msg { room, data }),
        value_strategy(json).prop_map(|id| ClientMessage::Ping { id }),
    ]
}

proptest! {
    #[test]
    fn values_round_trip_through_msgpack(value in value_strategy(false)) {
        let bytes = rmp_serde::to_vec(&value).expect("values encode");
        prop_assert_eq!(msgpack::decode_value(&bytes, Value::MAX_DEPTH), Ok(value.clone()));
        prop_assert_eq!(rmp_serde::from_slice::<Value>(&bytes).ok(), Some(value));
    }

    #[test]
    fn values_round_trip_through_json(value in value_strategy(false)) {
        let text = serde_json::to_vec(&value).expect("values encode");
        prop_assert_eq!(serde_json::from_slice::<Value>(&text).ok(), Some(through_json(&value)));
    }

    #[test]
    fn client_messages_round_trip_through_msgpack(msg in client_message_strategy(false)) {
        let mut out = Vec::new();
        encode_client_into(&msg, MP, &mut out);
        prop_assert_eq!(mp(&out), Ok(msg));
    }

    #[test]
    fn client_messages_round_trip_through_json(msg in client_message_strategy(true)) {
        let mut out = Vec::new();
        encode_client_into(&msg, JS, &mut out);
        prop_assert_eq!(js(std::str::from_utf8(&out).expect("JSON is UTF-8")), Ok(msg));
    }

    #[test]
    fn any_bytes_decode_or_fail_without_panicking(bytes in vec(any::<u8>(), 0..256)) {
        for proto in Subprotocol::ALL {
            let _ = decode_client(&bytes, proto);
        }
    }

    #[test]
    fn damaged_frames_decode_or_fail_without_panicking(
        msg in client_message_strategy(false),
        cut in any::<prop::sample::Index>(),
        flip in any::<prop::sample::Index>(),
        byte in any::<u8>(),
    ) {
        for proto in Subprotocol::ALL {
            let mut out = Vec::new();
            encode_client_into(&msg, proto, &mut out);
            let mut damaged = out.clone();
            let at = flip.index(damaged.len());
            damaged[at] = byte;
            let _ = decode_client(&damaged, proto);
            let truncated = &out[..cut.index(out.len())];
            prop_assert!(decode_client(truncated, proto).is_err());
        }
    }
}
