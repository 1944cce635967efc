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
