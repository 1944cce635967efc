//! Round-trip properties (client messages through random WebSocket fragments and reads,
//! deltas against PROTOCOL.md's wire form) and decoding of arbitrary or damaged bytes.

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

/// A client's WebSocket frames of one message: `payload` cut at `cuts` into fragments,
/// each masked with its own key.
fn client_frames(payload: &[u8], proto: Subprotocol, cuts: &[prop::sample::Index]) -> Vec<u8> {
    use crate::ws::frame::{apply_mask, write_header, Opcode};
    let mut bounds: Vec<usize> = cuts.iter().map(|c| c.index(payload.len() + 1)).collect();
    bounds.push(0);
    bounds.push(payload.len());
    bounds.sort_unstable();
    bounds.dedup();
    if bounds.len() == 1 {
        bounds.push(0); // an empty payload is one empty frame
    }
    let pieces: Vec<&[u8]> = bounds.windows(2).map(|w| &payload[w[0]..w[1]]).collect();
    let first = match proto {
        Subprotocol::Json => Opcode::Text,
        Subprotocol::MsgPack => Opcode::Binary,
    };
    let mut out = Vec::new();
    for (i, piece) in pieces.iter().enumerate() {
        let opcode = if i == 0 { first } else { Opcode::Continuation };
        let start = out.len();
        write_header(&mut out, opcode, i + 1 == pieces.len(), piece.len());
        out[start + 1] |= 0x80;
        let key = [i as u8, 0x5a, 0xc3, (i as u8).wrapping_mul(31)];
        out.extend_from_slice(&key);
        let at = out.len();
        out.extend_from_slice(piece);
        apply_mask(&mut out[at..], key, 0);
    }
    out
}

/// Feeds `stream` to a server-side WebSocket reader in reads cut at `cuts` and returns the
/// payload of the one data message it holds.
fn read_one_message(stream: &[u8], cuts: &[prop::sample::Index]) -> Vec<u8> {
    use crate::ws::reader::{Incoming, Reader};
    let mut bounds: Vec<usize> = cuts.iter().map(|c| c.index(stream.len() + 1)).collect();
    bounds.push(0);
    bounds.push(stream.len());
    bounds.sort_unstable();
    let mut reader = Reader::new(crate::ws::Limits::default());
    let mut buf = Vec::new();
    let mut messages = Vec::new();
    for read in bounds.windows(2) {
        buf.extend_from_slice(&stream[read[0]..read[1]]);
        loop {
            let (consumed, event) = reader.read(&mut buf).expect("our frames are valid");
            let got = event.is_some();
            match event {
                Some(Incoming::Text(text)) => messages.push(text.as_bytes().to_vec()),
                Some(Incoming::Binary(bytes)) => messages.push(bytes.to_vec()),
                Some(other) => panic!("unexpected {other:?}"),
                None => {}
            }
            buf.drain(..consumed);
            if !got {
                break;
            }
        }
    }
    assert!(buf.is_empty(), "{} bytes left over", buf.len());
    assert_eq!(messages.len(), 1, "one message in, one out");
    messages.pop().expect("checked")
}

fn delta_op_strategy() -> impl Strategy<Value = DeltaOp> {
    prop_oneof![
        (path_strategy(), value_strategy(false)).prop_map(|(p, v)| DeltaOp::Set(p, v)),
        path_strategy().prop_map(DeltaOp::Del),
        (path_strategy(), value_strategy(false)).prop_map(|(p, v)| DeltaOp::Push(p, v)),
    ]
}

/// What PROTOCOL.md says a delta op is on the wire: `[kind, path, value?]`.
fn delta_op_wire(op: &DeltaOp) -> Value {
    let path = |p: &Path| {
        Value::Array(
            p.iter()
                .map(|seg| match seg {
                    PathSeg::Key(k) => Value::Str(k.clone()),
                    PathSeg::Index(i) => Value::from_u64(*i),
                })
                .collect(),
        )
    };
    match op {
        DeltaOp::Set(p, v) => Value::Array(vec![Value::Str("set".into()), path(p), v.clone()]),
        DeltaOp::Del(p) => Value::Array(vec![Value::Str("del".into()), path(p)]),
        DeltaOp::Push(p, v) => Value::Array(vec![Value::Str("push".into()), path(p), v.clone()]),
    }
}

proptest! {
    #[test]
    fn client_messages_survive_random_fragments_and_reads(
        msgpack_msg in client_message_strategy(false),
        json_msg in client_message_strategy(true),
        fragments in vec(any::<prop::sample::Index>(), 0..6),
        reads in vec(any::<prop::sample::Index>(), 0..12),
    ) {
        for (proto, msg) in [(MP, msgpack_msg), (JS, json_msg)] {
            let mut payload = Vec::new();
            encode_client_into(&msg, proto, &mut payload);
            let stream = client_frames(&payload, proto, &fragments);
            let received = read_one_message(&stream, &reads);
            prop_assert_eq!(&received, &payload);
            prop_assert_eq!(decode_client(&received, proto), Ok(msg));
        }
    }

    #[test]
    fn deltas_read_back_as_protocol_md_writes_them(
        room in "[A-Za-z0-9_.:-]{1,20}",
        tick in any::<u64>(),
        epoch in any::<u64>(),
        ops in vec(delta_op_strategy(), 0..6),
    ) {
        let owned = ServerMessage::Delta { room: &room, tick, epoch, ops: &ops };
        let borrowed_ops: Vec<DeltaOp<&Value>> = ops
            .iter()
            .map(|op| match op {
                DeltaOp::Set(p, v) => DeltaOp::Set(p.clone(), v),
                DeltaOp::Del(p) => DeltaOp::Del(p.clone()),
                DeltaOp::Push(p, v) => DeltaOp::Push(p.clone(), v),
            })
            .collect();
        let of_state = ServerMessage::DeltaOfState { room: &room, tick, epoch, ops: &borrowed_ops };
        let mut expected = Map::new();
        expected.insert("t".into(), Value::Str("delta".into()));
        expected.insert("room".into(), Value::Str(room.clone()));
        expected.insert("tick".into(), Value::from_u64(tick));
        expected.insert("epoch".into(), Value::from_u64(epoch));
        expected.insert("ops".into(), Value::Array(ops.iter().map(delta_op_wire).collect()));
        let expected = Value::Map(expected);
        for proto in Subprotocol::ALL {
            let (mut a, mut b) = (Vec::new(), Vec::new());
            encode_into(&owned, proto, &mut a);
            encode_into(&of_state, proto, &mut b);
            prop_assert_eq!(&a, &b, "a delta from the state is the same bytes");
            let read = match proto {
                Subprotocol::MsgPack => msgpack::decode_value(&a, usize::from(u8::MAX))
                    .expect("our MessagePack decodes"),
                Subprotocol::Json => serde_json::from_slice::<Value>(&a).expect("our JSON parses"),
            };
            let want = match proto {
                Subprotocol::MsgPack => expected.clone(),
                Subprotocol::Json => through_json(&expected),
            };
            prop_assert_eq!(read, want);
        }
    }

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
