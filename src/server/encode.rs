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
    let header = match *frame.get(1)? & 0x7f {
        126 => 4,
        127 => 10,
        _ => 2,
    };
    // Our own output: depth is bounded by the state's depth limit, far below this.
    let value = crate::protocol::msgpack::decode_value(frame.get(header..)?, 1024).ok()?;
    let mut buf = payload_buffer(frame.len() * 2);
    serde_json::to_writer(&mut buf, &value).ok()?;
    Some(frame_in_place(buf, Opcode::Text))
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
}
