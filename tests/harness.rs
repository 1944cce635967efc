//! Checks of the test harness itself (no Kasagi server): the delta mirror, the MessagePack
//! conversion, frame encoding against RFC 6455's examples, and the client's timeouts against
//! a tungstenite server. A harness bug would otherwise show up as a false server bug.

mod common;

use std::net::TcpListener;
use std::time::{Duration, Instant};

use common::{
    apply_ops, bin, close_payload, frame, from_msgpack, masked, to_msgpack, Client, Enc, Event,
    Mirror, Raw, UpgradeRequest, MASK, OP_CLOSE, OP_PING, OP_TEXT,
};
use serde_json::json;
use tungstenite::handshake::server::{Request, Response};
use tungstenite::Message;

#[test]
fn mirror_applies_state_based_ops() {
    let mut state = json!({});
    apply_ops(
        &mut state,
        &json!([
            ["set", ["a", "b"], 1],
            ["push", ["l"], 1],
            ["push", ["l"], 2],
            ["set", ["l", 2], 3],
            ["set", ["l", 0], 0],
            ["del", ["l", 1]],
            ["del", ["missing", "deeper"]],
            ["del", ["a", "b", "c"]],
            ["push", ["m", "n"], true],
        ]),
    )
    .expect("valid ops");
    assert_eq!(
        state,
        json!({"a": {"b": 1}, "l": [0, 3], "m": {"n": [true]}})
    );
    apply_ops(&mut state, &json!([["del", []]])).expect("del []");
    assert_eq!(state, json!({}));
    apply_ops(&mut state, &json!([["set", [], {"x": 1}]])).expect("set []");
    assert_eq!(state, json!({"x": 1}));
    assert!(apply_ops(&mut state, &json!([["set", ["x", "y"], 1]])).is_err());
    assert!(
        apply_ops(&mut state, &json!([["inc", ["x"], 1]])).is_err(),
        "inc is not a delta op"
    );
    assert!(apply_ops(&mut state, &json!([["set", [], 1]])).is_err());
}

#[test]
fn mirror_detects_gaps_and_epoch_changes() {
    let joined = json!({"t": "joined", "room": "r", "tick": 4, "epoch": 0, "state": {}});
    let mut mirror = Mirror::from_joined(&joined);
    let delta = |tick: u64, epoch: u64| json!({"t": "delta", "room": "r", "tick": tick, "epoch": epoch, "ops": [["set", ["t"], tick]]});
    mirror.apply_delta(&delta(5, 0)).expect("next tick");
    assert!(mirror.apply_delta(&delta(7, 0)).is_err(), "gap");
    assert!(mirror.apply_delta(&delta(6, 1)).is_err(), "epoch change");
    mirror.apply_delta(&delta(6, 0)).expect("next tick");
    assert_eq!(mirror.state, json!({"t": 6}));
    assert_eq!(mirror.deltas, 2);
}

#[test]
fn msgpack_conversion_round_trips() {
    let value = json!({
        "t": "op",
        "max": u64::MAX,
        "min": i64::MIN,
        "f": 1.5,
        "s": "ünï",
        "nil": null,
        "b": bin(&[0, 255]),
        "l": [1, [2, {"x": false}]],
    });
    let bytes = to_msgpack(&value);
    assert_eq!(from_msgpack(&bytes).expect("decodes"), value);
    // Known encodings: fixmap, fixstr, positive fixint, bin8.
    assert_eq!(to_msgpack(&json!({"a": 1})), vec![0x81, 0xa1, b'a', 0x01]);
    assert_eq!(to_msgpack(&bin(&[7])), vec![0xc4, 0x01, 0x07]);
    assert_eq!(to_msgpack(&json!(u64::MAX))[0], 0xcf);
    assert!(from_msgpack(&[0xc1]).is_err());
    assert_eq!(common::base64(&[0, 1, 2, 255]), "AAEC/w==");
}

#[test]
fn frames_match_rfc_6455_examples() {
    // RFC 6455 section 5.7: a single-frame masked text message "Hello".
    assert_eq!(
        masked(OP_TEXT, b"Hello"),
        vec![0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58]
    );
    assert_eq!(MASK, [0x37, 0xfa, 0x21, 0x3d]);
    // Unmasked "Hello", and the first fragment of a fragmented one.
    assert_eq!(
        frame(true, 0, OP_TEXT, b"Hello", None),
        vec![0x81, 0x05, 0x48, 0x65, 0x6c, 0x6c, 0x6f]
    );
    assert_eq!(
        frame(false, 0, OP_TEXT, b"Hel", None),
        vec![0x01, 0x03, 0x48, 0x65, 0x6c]
    );
    // 256 bytes: 16-bit length; 65536 bytes: 64-bit length.
    assert_eq!(
        &frame(true, 0, 0x2, &[0; 256], None)[..4],
        &[0x82, 0x7E, 0x01, 0x00]
    );
    assert_eq!(
        &frame(true, 0, 0x2, &[0; 65536], None)[..10],
        &[0x82, 0x7F, 0, 0, 0, 0, 0, 1, 0, 0]
    );
    assert_eq!(frame(true, 4, OP_PING, b"", Some(MASK))[..2], [0xC9, 0x80]);
}

#[test]
fn member_ids_parse() {
    assert_eq!(common::member_shard("s1c42"), Some(1));
    assert_eq!(common::member_shard("s0c0"), Some(0));
    for bad in ["c42", "s1", "s1c", "sxc1", "s1c4x", ""] {
        assert_eq!(common::member_shard(bad), None, "{bad}");
    }
}

/// A one-connection tungstenite server speaking `kasagi.v1.json`: answers each text message
/// with the same text, closes with 1003 on "close-me".
fn tiny_server() -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { break };
            std::thread::spawn(move || serve_one(stream));
        }
    });
    addr
}

// The callback's `Result<Response, ErrorResponse>` shape is tungstenite's, not ours.
#[allow(clippy::result_large_err)]
fn serve_one(stream: std::net::TcpStream) {
    {
        let callback = |_: &Request, mut response: Response| {
            response.headers_mut().insert(
                "Sec-WebSocket-Protocol",
                common::JSON.parse().expect("header value"),
            );
            Ok(response)
        };
        let Ok(mut ws) = tungstenite::accept_hdr(stream, callback) else {
            return;
        };
        loop {
            match ws.read() {
                Ok(Message::Text(text)) if text.contains("close-me") => {
                    let _ = ws.close(Some(tungstenite::protocol::CloseFrame {
                        code: 1003.into(),
                        reason: "".into(),
                    }));
                    let _ = ws.flush();
                }
                Ok(Message::Text(text)) => {
                    let _ = ws.send(Message::Text(text));
                }
                Ok(_) => {}
                Err(_) => break,
            }
        }
    }
}

#[test]
fn client_read_timeout_returns_and_the_connection_survives() {
    let addr = tiny_server();
    let mut client = Client::connect(addr, Enc::Json);
    let started = Instant::now();
    assert!(client.read_event(Duration::from_millis(200)).is_none());
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(150) && waited < Duration::from_secs(3),
        "{waited:?}"
    );
    client.send(json!({"t": "pong", "id": 1}));
    assert_eq!(client.expect("pong")["id"], 1);
    client.send(json!({"t": "close-me"}));
    match client.read_event(Duration::from_secs(5)) {
        Some(Event::Close(code)) => assert_eq!(code, Some(1003)),
        other => panic!("expected the close frame, got {other:?}"),
    }
}

#[test]
fn raw_connection_against_tungstenite() {
    let addr = tiny_server();
    let mut raw = Raw::upgrade(addr, Some(common::JSON));
    raw.write_all(&masked(OP_TEXT, br#"{"t":"x"}"#));
    let echoed = raw.read_frame().expect("echo");
    assert_eq!(echoed.opcode, OP_TEXT);
    assert!(!echoed.masked && echoed.fin);
    assert_eq!(echoed.payload, br#"{"t":"x"}"#);
    raw.write_all(&masked(OP_CLOSE, &close_payload(4000, "done")));
    assert_eq!(raw.expect_close(), Some(4000));

    let (_, response) = UpgradeRequest::default().send(addr);
    assert_eq!(response.status, 101);
    assert_eq!(
        response.header("sec-websocket-accept"),
        Some(common::SAMPLE_ACCEPT)
    );
}
