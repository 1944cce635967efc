//! Server messages to ready-to-write WebSocket frames.
//!
//! A message is encoded straight after a reserved header gap and framed in place, so each
//! frame is one allocation and the payload is never copied; the resulting `Bytes` is shared
//! by every socket (and shard) that sends it.

use bytes::Bytes;

use crate::protocol::{encode_into, ServerMessage, Subprotocol};
use crate::ws::frame::{frame_in_place, payload_buffer, Opcode};

/// The WebSocket opcode a subprotocol's messages travel in.
pub fn opcode_of(proto: Subprotocol) -> Opcode {
    match proto {
        Subprotocol::MsgPack => Opcode::Binary,
        Subprotocol::Json => Opcode::Text,
    }
}

/// Encodes and frames one message for one subprotocol.
pub fn frame(msg: &ServerMessage<'_>, proto: Subprotocol) -> Bytes {
    let mut buf = payload_buffer(128);
    encode_into(msg, proto, &mut buf);
    frame_in_place(buf, opcode_of(proto))
}

/// The JSON frame of a message from its MessagePack frame (for deltas whose value tree was
/// released). `None` if the frame is not one this server made.
pub fn msgpack_frame_to_json(frame: &Bytes) -> Option<Bytes> {
    // Our own output: depth is bounded by the state's depth limit, far below this.
    let value = crate::protocol::msgpack::decode_value(payload_of(frame)?, 1024).ok()?;
    let mut buf = payload_buffer(frame.len() * 2);
    serde_json::to_writer(&mut buf, &value).ok()?;
    Some(frame_in_place(buf, Opcode::Text))
}

/// The payload of a single unmasked frame this server made.
fn payload_of(frame: &[u8]) -> Option<&[u8]> {
    let header = match *frame.get(1)? & 0x7f {
        126 => 4,
        127 => 10,
        _ => 2,
    };
    frame.get(header..)
}

/// A `joined` frame this server made, with `resync: true` added: for an answer that reaches
/// a client unasked (a re-registration with a new owner). Decoded and encoded again, so it
/// costs the size of the state; it happens once per member per owner change. `None` if the
/// frame is not a map or object.
pub fn mark_resync(frame: &Bytes) -> Option<Bytes> {
    let payload = payload_of(frame)?;
    let mut buf = payload_buffer(frame.len() + 16);
    if *frame.first()? & 0x0f == Opcode::Binary.as_u8() {
        let mut value = crate::protocol::msgpack::decode_value(payload, 1024).ok()?;
        let crate::value::Value::Map(map) = &mut value else {
            return None;
        };
        map.insert("resync".into(), crate::value::Value::Bool(true));
        rmp_serde::encode::write(&mut buf, &value).ok()?;
        Some(frame_in_place(buf, Opcode::Binary))
    } else {
        let mut value: serde_json::Value = serde_json::from_slice(payload).ok()?;
        value
            .as_object_mut()?
            .insert("resync".into(), serde_json::Value::Bool(true));
        serde_json::to_writer(&mut buf, &value).ok()?;
        Some(frame_in_place(buf, Opcode::Text))
    }
}

/// Encodes a message once per subprotocol that `wanted` marks, for fan-out.
pub fn frames(msg: &ServerMessage<'_>, wanted: [bool; 2]) -> [Option<Bytes>; 2] {
    let mut out = [None, None];
    for proto in Subprotocol::ALL {
        if wanted[proto.index()] {
            out[proto.index()] = Some(frame(msg, proto));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{DeltaOp, PathSeg};
    use crate::value::Value;

    #[test]
    fn json_from_a_msgpack_frame_equals_direct_json() {
        let ops = vec![
            DeltaOp::Set(
                vec![PathSeg::Key("p".into()), PathSeg::Index(2)],
                Value::Bin(vec![0, 255]),
            ),
            DeltaOp::Del(vec![PathSeg::Key("gone".into())]),
            DeltaOp::Push(vec![PathSeg::Key("log".into())], Value::UInt(u64::MAX)),
        ];
        let msg = ServerMessage::Delta {
            room: "r1",
            tick: 7,
            epoch: 2,
            ops: &ops,
        };
        let direct = frame(&msg, Subprotocol::Json);
        let transcoded = msgpack_frame_to_json(&frame(&msg, Subprotocol::MsgPack)).unwrap();
        assert_eq!(transcoded[0], direct[0], "a text frame");
        let parse = |f: &Bytes| -> serde_json::Value {
            let header = if f[1] & 0x7f == 126 { 4 } else { 2 };
            serde_json::from_slice(&f[header..]).unwrap()
        };
        assert_eq!(parse(&transcoded), parse(&direct));
    }

    #[test]
    fn a_joined_answer_marked_unasked_keeps_everything_else() {
        let mut state = crate::value::Map::new();
        state.insert("blob".into(), Value::Bin(vec![1, 2, 3]));
        state.insert("n".into(), Value::Float(0.5));
        state.insert("big".into(), Value::UInt(u64::MAX));
        let state = Value::Map(state);
        let members = ["a.s0c1".to_string(), "b.s1c2".to_string()];
        let joined = |resync| ServerMessage::Joined {
            room: "r1",
            tick: 9,
            epoch: 3,
            you: "b.s1c2",
            members: &members,
            state: Some(&state),
            resync,
        };
        for proto in Subprotocol::ALL {
            let marked = mark_resync(&frame(&joined(false), proto)).unwrap();
            let direct = frame(&joined(true), proto);
            assert_eq!(marked[0], direct[0], "{proto:?}: same opcode");
            let payload = |f: &Bytes| payload_of(f).unwrap().to_vec();
            match proto {
                Subprotocol::MsgPack => assert_eq!(
                    crate::protocol::msgpack::decode_value(&payload(&marked), 64).unwrap(),
                    crate::protocol::msgpack::decode_value(&payload(&direct), 64).unwrap()
                ),
                Subprotocol::Json => assert_eq!(
                    serde_json::from_slice::<serde_json::Value>(&payload(&marked)).unwrap(),
                    serde_json::from_slice::<serde_json::Value>(&payload(&direct)).unwrap()
                ),
            }
        }
        assert!(mark_resync(&Bytes::from_static(b"\x82\x01[")).is_none());
    }
}
