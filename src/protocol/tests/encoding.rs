//! Server messages encoded in both subprotocols and read back with generic decoders.

use serde_json::json;

use super::*;

// ---- server messages ----

fn encoded(msg: &ServerMessage<'_>, proto: Subprotocol) -> Vec<u8> {
    let mut out = Vec::new();
    encode_into(msg, proto, &mut out);
    out
}

/// Encodes in both subprotocols and reads each back with a generic decoder.
fn read_back(msg: &ServerMessage<'_>) -> (serde_json::Value, Value) {
    let json = serde_json::from_slice(&encoded(msg, JS)).expect("our JSON parses");
    let bytes = encoded(msg, MP);
    let value =
        msgpack::decode_value(&bytes, usize::from(u8::MAX)).expect("our MessagePack decodes");
    // Debug text, so that NaN agrees with itself.
    let generic = rmp_serde::from_slice::<Value>(&bytes).ok();
    assert_eq!(
        format!("{generic:?}"),
        format!("{:?}", Some(&value)),
        "rmp-serde agrees"
    );
    (json, value)
}

fn assert_encodes(msg: ServerMessage<'_>, expected: serde_json::Value) {
    let (json, value) = read_back(&msg);
    assert_eq!(json, expected);
    assert_eq!(value, val(expected));
}

#[test]
fn protocol_example_encodes_byte_for_byte() {
    let ops = [DeltaOp::Set(
        vec![key("players"), key("p1"), key("x")],
        Value::Int(11),
    )];
    let delta = ServerMessage::Delta {
        room: "arena-7",
        tick: 1523,
        epoch: 0,
        ops: &ops,
    };
    assert_eq!(
        String::from_utf8(encoded(&delta, JS)).ok().as_deref(),
        Some(
            r#"{"t":"delta","room":"arena-7","tick":1523,"epoch":0,"ops":[["set",["players","p1","x"],11]]}"#
        )
    );
    let ack = ServerMessage::Ack {
        room: "arena-7",
        seq: 1,
        tick: 1523,
    };
    assert_eq!(
        String::from_utf8(encoded(&ack, JS)).ok().as_deref(),
        Some(r#"{"t":"ack","room":"arena-7","seq":1,"tick":1523}"#)
    );
    let ack = ServerMessage::Ack {
        room: "r",
        seq: 1,
        tick: 2,
    };
    assert_eq!(
        encoded(&ack, MP),
        b"\x84\xa1t\xa3ack\xa4room\xa1r\xa3seq\x01\xa4tick\x02"
    );

    let members = ["c42".to_owned(), "c7".to_owned()];
    let state = val(json!({"players": {"p1": {"x": 10, "y": 14, "hp": 100}}, "objects": {}}));
    let joined = ServerMessage::Joined {
        room: "arena-7",
        tick: 1522,
        epoch: 0,
        you: "c42",
        members: &members,
        state: Some(&state),
        resync: false,
    };
    let expected = json!({"t":"joined","room":"arena-7","tick":1522,"epoch":0,"you":"c42","members":["c42","c7"],
        "state":{"players":{"p1":{"x":10,"y":14,"hp":100}},"objects":{}}});
    assert_encodes(joined, expected);
    // Keys in the order of PROTOCOL.md, `t` first; state maps in key order.
    assert_eq!(
        String::from_utf8(encoded(&joined, JS)).ok().as_deref(),
        Some(
            r#"{"t":"joined","room":"arena-7","tick":1522,"epoch":0,"you":"c42","members":["c42","c7"],"state":{"objects":{},"players":{"p1":{"hp":100,"x":10,"y":14}}}}"#
        )
    );
}

#[test]
fn joined_variants() {
    let members = ["me".to_owned()];
    let state = Value::Map(Map::new());
    let base = |state, resync| ServerMessage::Joined {
        room: "r",
        tick: 9,
        epoch: 2,
        you: "me",
        members: &members,
        state,
        resync,
    };
    assert_encodes(
        base(None, false),
        json!({"t":"joined","room":"r","tick":9,"epoch":2,"you":"me","members":["me"],"resumed":true}),
    );
    assert_encodes(
        base(Some(&state), true),
        json!({"t":"joined","room":"r","tick":9,"epoch":2,"you":"me","members":["me"],"state":{},"resync":true}),
    );
}

#[test]
fn every_other_server_message() {
    let ops = [
        DeltaOp::Set(vec![key("a"), PathSeg::Index(3)], Value::UInt(u64::MAX)),
        DeltaOp::Del(vec![]),
        DeltaOp::Push(vec![key("l")], Value::Int(-7)),
    ];
    assert_encodes(
        ServerMessage::Delta {
            room: "r",
            tick: u64::MAX,
            epoch: 1,
            ops: &ops,
        },
        json!({"t":"delta","room":"r","tick":u64::MAX,"epoch":1,
               "ops":[["set",["a",3],u64::MAX],["del",[]],["push",["l"],-7]]}),
    );
    let joined = ["a".to_owned(), "b".to_owned()];
    assert_encodes(
        ServerMessage::Presence {
            room: "r",
            joined: &joined,
            left: &[],
        },
        json!({"t":"presence","room":"r","joined":["a","b"],"left":[]}),
    );
    let data = val(json!({"k": [1, 2.5, null]}));
    assert_encodes(
        ServerMessage::Msg {
            room: "r",
            from: "c1",
            data: &data,
        },
        json!({"t":"msg","room":"r","from":"c1","data":{"k":[1,2.5,null]}}),
    );
    assert_encodes(
        ServerMessage::Ack {
            room: "r",
            seq: 3,
            tick: 4,
        },
        json!({"t":"ack","room":"r","seq":3,"tick":4}),
    );
    assert_encodes(
        ServerMessage::Error {
            code: ErrorCode::Conflict,
            message: "no",
            room: Some("r"),
            seq: Some(8),
        },
        json!({"t":"error","code":"conflict","message":"no","room":"r","seq":8}),
    );
    assert_encodes(
        ServerMessage::Error {
            code: ErrorCode::BadRequest,
            message: "m",
            room: None,
            seq: None,
        },
        json!({"t":"error","code":"bad_request","message":"m"}),
    );
    assert_encodes(
        ServerMessage::Error {
            code: ErrorCode::NotJoined,
            message: "m",
            room: Some("r"),
            seq: None,
        },
        json!({"t":"error","code":"not_joined","message":"m","room":"r"}),
    );
    assert_encodes(
        ServerMessage::Left {
            room: "r",
            reason: None,
        },
        json!({"t":"left","room":"r"}),
    );
    assert_encodes(
        ServerMessage::Left {
            room: "r",
            reason: Some("kicked"),
        },
        json!({"t":"left","room":"r","reason":"kicked"}),
    );
    assert_encodes(
        ServerMessage::Pong {
            id: &Value::Nil,
            time: 1_700_000_000_000_000,
        },
        json!({"t":"pong","id":null,"time":1_700_000_000_000_000u64}),
    );
    assert_encodes(
        ServerMessage::Pong {
            id: &Value::Str("x".into()),
            time: 0,
        },
        json!({"t":"pong","id":"x","time":0}),
    );
}

#[test]
fn every_error_code_is_its_string() {
    let codes = [
        (ErrorCode::BadRequest, "bad_request"),
        (ErrorCode::Unauthorized, "unauthorized"),
        (ErrorCode::Forbidden, "forbidden"),
        (ErrorCode::NotJoined, "not_joined"),
        (ErrorCode::Conflict, "conflict"),
        (ErrorCode::TooLarge, "too_large"),
        (ErrorCode::RateLimited, "rate_limited"),
        (ErrorCode::RoomFull, "room_full"),
        (ErrorCode::Unavailable, "unavailable"),
        (ErrorCode::Internal, "internal"),
    ];
    for (code, name) in codes {
        let msg = ServerMessage::Error {
            code,
            message: "",
            room: None,
            seq: None,
        };
        assert_eq!(read_back(&msg).0["code"], name);
    }
}

#[test]
fn binary_and_non_finite_values_in_server_messages() {
    let data = Value::Array(vec![
        Value::Bin(vec![1, 2, 3]),
        Value::Float(f64::NAN),
        Value::Float(f64::NEG_INFINITY),
    ]);
    let msg = ServerMessage::Msg {
        room: "r",
        from: "c",
        data: &data,
    };
    let (json, value) = read_back(&msg);
    assert_eq!(json["data"], json!(["AQID", null, null]));
    let Some(Value::Array(items)) = value.as_map().and_then(|m| m.get("data")) else {
        panic!("data is an array: {value:?}");
    };
    assert_eq!(items[0], Value::Bin(vec![1, 2, 3]));
    assert!(matches!(items[1], Value::Float(f) if f.is_nan()));
    assert_eq!(items[2], Value::Float(f64::NEG_INFINITY));
    // bin8 on the wire.
    let bytes = encoded(&msg, MP);
    assert!(bytes.windows(5).any(|w| w == b"\xc4\x03\x01\x02\x03"));
}

#[test]
fn encode_into_appends() {
    for proto in Subprotocol::ALL {
        let mut out = vec![0xaa; 10];
        encode_into(
            &ServerMessage::Ack {
                room: "r",
                seq: 1,
                tick: 2,
            },
            proto,
            &mut out,
        );
        assert_eq!(&out[..10], &[0xaa; 10]);
        assert_eq!(
            out[10..],
            encoded(
                &ServerMessage::Ack {
                    room: "r",
                    seq: 1,
                    tick: 2
                },
                proto
            )[..]
        );
    }
}
