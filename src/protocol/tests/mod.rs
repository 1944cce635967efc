//! Byte-level tests of the protocol: every client message and failure class from literals in
//! both subprotocols ([`decoding`]), every server message encoded and read back
//! ([`encoding`]), and round-trip properties ([`properties`]). Shared helpers live here.

mod decoding;
mod encoding;
mod properties;

use super::*;
use crate::value::{Map, Value};

const MP: Subprotocol = Subprotocol::MsgPack;
const JS: Subprotocol = Subprotocol::Json;

fn room(id: &str) -> RoomId {
    RoomId::parse(id).expect("test room ids are valid")
}

fn key(k: &str) -> PathSeg {
    PathSeg::Key(k.to_owned())
}

fn mp(bytes: &[u8]) -> Result<ClientMessage, DecodeError> {
    decode_client(bytes, MP)
}

fn js(text: &str) -> Result<ClientMessage, DecodeError> {
    decode_client(text.as_bytes(), JS)
}

/// Our value of a JSON literal (integers canonical, no Bin).
fn val(json: serde_json::Value) -> Value {
    serde_json::from_value(json).expect("JSON literals convert")
}

/// The MessagePack encoding of a JSON text (through serde_json's tree, which nests deeper
/// than ours).
fn msgpack_of(text: &str) -> Vec<u8> {
    let value: serde_json::Value = serde_json::from_str(text).expect("test JSON is valid");
    rmp_serde::to_vec(&value).expect("values encode")
}

/// Decodes a JSON text in JSON mode and, converted, in MessagePack mode; both must agree.
fn both(text: &str) -> Result<ClientMessage, DecodeError> {
    let from_json = js(text);
    let from_msgpack = mp(&msgpack_of(text));
    assert_eq!(
        from_json, from_msgpack,
        "the two subprotocols disagree on {text}"
    );
    from_json
}

fn bad_request(
    result: Result<ClientMessage, DecodeError>,
) -> (String, Option<RoomId>, Option<u64>) {
    match result {
        Err(DecodeError::BadRequest { message, room, seq }) => (message, room, seq),
        other => panic!("expected bad_request, got {other:?}"),
    }
}

fn malformed(result: Result<ClientMessage, DecodeError>) -> Malformed {
    match result {
        Err(DecodeError::Malformed(why)) => why,
        other => panic!("expected malformed, got {other:?}"),
    }
}
