//! Client frames from byte and text literals: every message, every bad request, every
//! malformed frame, nesting bounds.

use serde_json::json;

use super::*;

// ---- subprotocol names ----

#[test]
fn subprotocol_names_and_indexes_agree() {
    assert_eq!(Subprotocol::NAMES, ["kasagi.v1.msgpack", "kasagi.v1.json"]);
    for (i, p) in Subprotocol::ALL.into_iter().enumerate() {
        assert_eq!(p.index(), i);
        assert_eq!(Subprotocol::NAMES[i], p.name());
        assert_eq!(Subprotocol::from_name(p.name()), Some(p));
    }
    assert_eq!(Subprotocol::from_name("KASAGI.V1.JSON"), None);
    assert_eq!(Subprotocol::from_name("kasagi.v1"), None);
    assert_eq!(Subprotocol::default(), MP);
    assert!(MP.uses_binary_frames() && !JS.uses_binary_frames());
}

// ---- client messages from MessagePack byte literals ----

#[test]
fn msgpack_join() {
    assert_eq!(
        mp(b"\x82\xa1t\xa4join\xa4room\xa2r1"),
        Ok(ClientMessage::Join {
            room: room("r1"),
            since: None,
            epoch: None
        })
    );
    // since 1522 as uint16, epoch 3 as a positive fixint.
    assert_eq!(
        mp(b"\x84\xa1t\xa4join\xa4room\xa2r1\xa5since\xcd\x05\xf2\xa5epoch\x03"),
        Ok(ClientMessage::Join {
            room: room("r1"),
            since: Some(1522),
            epoch: Some(3)
        })
    );
    // nil since/epoch read as absent.
    assert_eq!(
        mp(b"\x84\xa1t\xa4join\xa4room\xa2r1\xa5since\xc0\xa5epoch\xc0"),
        Ok(ClientMessage::Join {
            room: room("r1"),
            since: None,
            epoch: None
        })
    );
}

#[test]
fn msgpack_leave() {
    assert_eq!(
        mp(b"\x82\xa1t\xa5leave\xa4room\xa2r1"),
        Ok(ClientMessage::Leave { room: room("r1") })
    );
}

#[test]
fn msgpack_op() {
    let bytes = b"\x84\xa1t\xa2op\xa4room\xa2r1\xa3seq\x01\xa3ops\x91\x93\xa3set\x93\xa7players\xa2p1\xa1x\x0b";
    assert_eq!(
        mp(bytes),
        Ok(ClientMessage::Op {
            room: room("r1"),
            seq: 1,
            ops: vec![Op::Set(
                vec![key("players"), key("p1"), key("x")],
                Value::Int(11)
            )],
        })
    );
    // All four ops; seq u64::MAX; an index path; inc by a float.
    let bytes =
        b"\x84\xa1t\xa2op\xa4room\xa1r\xa3seq\xcf\xff\xff\xff\xff\xff\xff\xff\xff\xa3ops\x94\
        \x93\xa3set\x92\xa1a\x02\xc3\
        \x92\xa3del\x90\
        \x93\xa3inc\x91\xa1n\xcb\x3f\xf8\x00\x00\x00\x00\x00\x00\
        \x93\xa4push\x91\xa1l\xc4\x01\xff";
    assert_eq!(
        mp(bytes),
        Ok(ClientMessage::Op {
            room: room("r"),
            seq: u64::MAX,
            ops: vec![
                Op::Set(vec![key("a"), PathSeg::Index(2)], Value::Bool(true)),
                Op::Del(vec![]),
                Op::Inc(vec![key("n")], Value::Float(1.5)),
                Op::Push(vec![key("l")], Value::Bin(vec![0xff])),
            ],
        })
    );
}

#[test]
fn msgpack_msg_and_ping() {
    assert_eq!(
        mp(b"\x83\xa1t\xa3msg\xa4room\xa2r1\xa4data\xc4\x03\x01\x02\x03"),
        Ok(ClientMessage::Msg {
            room: room("r1"),
            data: Value::Bin(vec![1, 2, 3])
        })
    );
    assert_eq!(
        mp(b"\x82\xa1t\xa4ping\xa2id\x2a"),
        Ok(ClientMessage::Ping { id: Value::Int(42) })
    );
    assert_eq!(
        mp(b"\x81\xa1t\xa4ping"),
        Ok(ClientMessage::Ping { id: Value::Nil })
    );
    assert_eq!(
        mp(b"\x82\xa1t\xa4ping\xa2id\xc0"),
        Ok(ClientMessage::Ping { id: Value::Nil })
    );
}

#[test]
fn msgpack_numbers_are_canonical() {
    let data = |bytes: &[u8]| {
        let mut frame = b"\x83\xa1t\xa3msg\xa4room\xa1r\xa4data".to_vec();
        frame.extend_from_slice(bytes);
        match mp(&frame) {
            Ok(ClientMessage::Msg { data, .. }) => data,
            other => panic!("expected msg, got {other:?}"),
        }
    };
    assert_eq!(data(b"\xff"), Value::Int(-1));
    assert_eq!(data(b"\xd0\x80"), Value::Int(-128));
    assert_eq!(data(b"\xd1\x80\x00"), Value::Int(-32768));
    assert_eq!(
        data(b"\xd3\x80\x00\x00\x00\x00\x00\x00\x00"),
        Value::Int(i64::MIN)
    );
    // A small value in a wide unsigned encoding is still an Int.
    assert_eq!(data(b"\xcf\x00\x00\x00\x00\x00\x00\x00\x07"), Value::Int(7));
    assert_eq!(
        data(b"\xcf\x7f\xff\xff\xff\xff\xff\xff\xff"),
        Value::Int(i64::MAX)
    );
    assert_eq!(
        data(b"\xcf\x80\x00\x00\x00\x00\x00\x00\x00"),
        Value::UInt(1 << 63)
    );
    assert_eq!(data(b"\xce\xff\xff\xff\xff"), Value::Int(u32::MAX.into()));
    assert_eq!(data(b"\xca\x3f\xc0\x00\x00"), Value::Float(1.5));
    assert_eq!(
        data(b"\xcb\x40\x00\x00\x00\x00\x00\x00\x00"),
        Value::Float(2.0)
    );
    assert_eq!(data(b"\xa0"), Value::Str(String::new()));
    assert_eq!(data(b"\xd9\x01x"), Value::Str("x".into()));
    assert_eq!(data(b"\xc5\x00\x01\x09"), Value::Bin(vec![9]));
    assert_eq!(
        data(b"\x82\xa1b\x90\xa1a\x80"),
        Value::Map(Map::from([
            ("a".into(), Value::Map(Map::new())),
            ("b".into(), Value::Array(vec![]))
        ]))
    );
}

// ---- client messages from JSON text ----

#[test]
fn json_protocol_example() {
    assert_eq!(
        js(r#"{"t":"join","room":"arena-7"}"#),
        Ok(ClientMessage::Join {
            room: room("arena-7"),
            since: None,
            epoch: None
        })
    );
    assert_eq!(
        js(r#"{"t":"op","room":"arena-7","seq":1,"ops":[["set",["players","p1","x"],11]]}"#),
        Ok(ClientMessage::Op {
            room: room("arena-7"),
            seq: 1,
            ops: vec![Op::Set(
                vec![key("players"), key("p1"), key("x")],
                Value::Int(11)
            )],
        })
    );
}

#[test]
fn json_every_client_message() {
    assert_eq!(
        both(r#"{"t":"join","room":"a:b.c_d-e","since":7,"epoch":null}"#),
        Ok(ClientMessage::Join {
            room: room("a:b.c_d-e"),
            since: Some(7),
            epoch: None
        })
    );
    assert_eq!(
        both(r#"{"room":"x","t":"leave"}"#),
        Ok(ClientMessage::Leave { room: room("x") })
    );
    assert_eq!(
        both(
            r#"{"t":"op","room":"r","seq":18446744073709551615,"ops":[["del",[0,"k"]],["inc",["n"],-3],["push",["l"],{"a":[1.0]}]]}"#
        ),
        Ok(ClientMessage::Op {
            room: room("r"),
            seq: u64::MAX,
            ops: vec![
                Op::Del(vec![PathSeg::Index(0), key("k")]),
                Op::Inc(vec![key("n")], Value::Int(-3)),
                Op::Push(vec![key("l")], val(json!({"a": [1.0]}))),
            ],
        })
    );
    assert_eq!(
        both(r#"{"t":"op","room":"r","seq":0,"ops":[]}"#),
        Ok(ClientMessage::Op {
            room: room("r"),
            seq: 0,
            ops: vec![]
        })
    );
    assert_eq!(
        both(r#"{"t":"msg","room":"r","data":{"x":[null,true,-1,2.5,"s"]}}"#),
        Ok(ClientMessage::Msg {
            room: room("r"),
            data: val(json!({"x": [null, true, -1, 2.5, "s"]}))
        })
    );
    assert_eq!(
        both(r#"{"t":"msg","room":"r","data":null}"#),
        Ok(ClientMessage::Msg {
            room: room("r"),
            data: Value::Nil
        })
    );
    assert_eq!(
        both(r#"{"t":"ping","id":"abc"}"#),
        Ok(ClientMessage::Ping {
            id: Value::Str("abc".into())
        })
    );
    assert_eq!(
        both(r#"{"t":"ping"}"#),
        Ok(ClientMessage::Ping { id: Value::Nil })
    );
    // Whitespace around the value is JSON, not trailing bytes.
    assert_eq!(
        js(" \n{\"t\":\"ping\"}\r\n\t "),
        Ok(ClientMessage::Ping { id: Value::Nil })
    );
}

#[test]
fn json_numbers() {
    let data = |text: &str| match js(&format!(r#"{{"t":"msg","room":"r","data":{text}}}"#)) {
        Ok(ClientMessage::Msg { data, .. }) => data,
        other => panic!("expected msg, got {other:?}"),
    };
    assert_eq!(data("-1"), Value::Int(-1));
    assert_eq!(data("-9223372036854775808"), Value::Int(i64::MIN));
    assert_eq!(data("9223372036854775807"), Value::Int(i64::MAX));
    assert_eq!(data("9223372036854775808"), Value::UInt(1 << 63));
    assert_eq!(data("18446744073709551615"), Value::UInt(u64::MAX));
    // Beyond both ranges serde_json reads a float.
    assert_eq!(
        data("18446744073709551616"),
        Value::Float(18446744073709551616.0)
    );
    assert_eq!(data("1.0"), Value::Float(1.0));
    assert_eq!(data("1e3"), Value::Float(1000.0));
    assert_eq!(data("-0.5E-1"), Value::Float(-0.05));
    assert_eq!(data("0.1"), Value::Float(0.1));
}

#[test]
fn binary_in_both_modes() {
    // MessagePack carries bin; JSON has none, so base64 text stays text.
    assert_eq!(
        mp(b"\x83\xa1t\xa3msg\xa4room\xa1r\xa4data\xc4\x02\xfb\xff"),
        Ok(ClientMessage::Msg {
            room: room("r"),
            data: Value::Bin(vec![0xfb, 0xff])
        })
    );
    assert_eq!(
        js(r#"{"t":"msg","room":"r","data":"+/8="}"#),
        Ok(ClientMessage::Msg {
            room: room("r"),
            data: Value::Str("+/8=".into())
        })
    );
}

#[test]
fn unknown_keys_are_ignored_and_repeated_keys_keep_the_last() {
    assert_eq!(
        both(r#"{"v":2,"t":"ping","extra":{"a":[1,{"b":null}]},"id":1,"x":null}"#),
        Ok(ClientMessage::Ping { id: Value::Int(1) })
    );
    assert_eq!(
        js(r#"{"t":"leave","room":"a","room":"b"}"#),
        Ok(ClientMessage::Leave { room: room("b") })
    );
    assert_eq!(
        mp(b"\x83\xa1t\xa5leave\xa4room\xa1a\xa4room\xa1b"),
        Ok(ClientMessage::Leave { room: room("b") })
    );
}

// ---- bad requests ----

#[test]
fn not_a_map_is_a_bad_request() {
    for text in [
        "[1,2]", "5", "-5", "1.5", "\"join\"", "null", "true", "[]", "[[{}]]",
    ] {
        let (_, room, seq) = bad_request(both(text));
        assert_eq!((room, seq), (None, None), "{text}");
    }
    // A bin at top level (MessagePack only).
    bad_request(mp(b"\xc4\x01\x00"));
}

#[test]
fn missing_or_unknown_type() {
    let (message, r, seq) = bad_request(both(r#"{"room":"r","seq":3}"#));
    assert!(message.contains('t'), "{message}");
    assert_eq!((r, seq), (Some(room("r")), Some(3)));
    let (_, r, _) = bad_request(both(r#"{"t":1,"room":"r"}"#));
    assert_eq!(r, Some(room("r")));
    bad_request(both(r#"{"t":null}"#));
    bad_request(both("{}"));
    let (message, r, seq) = bad_request(both(r#"{"t":"jump","room":"r","seq":9}"#));
    assert!(message.contains("jump"), "{message}");
    assert_eq!((r, seq), (Some(room("r")), Some(9)));
    // A long type is cut short in the error text.
    let long = "x".repeat(10_000);
    let (message, _, _) = bad_request(js(&format!(r#"{{"t":"{long}"}}"#)));
    assert!(message.len() < 100, "{message}");
    // Types are case-sensitive.
    bad_request(both(r#"{"t":"JOIN","room":"r"}"#));
}

#[test]
fn bad_rooms() {
    for text in [
        r#"{"t":"join"}"#,
        r#"{"t":"join","room":null}"#,
        r#"{"t":"leave","room":5}"#,
        r#"{"t":"msg","room":["r"],"data":1}"#,
        r#"{"t":"op","room":"","seq":1,"ops":[]}"#,
        r#"{"t":"join","room":"has space"}"#,
        r#"{"t":"join","room":"slash/no"}"#,
        r#"{"t":"join","room":"é"}"#,
    ] {
        let (_, r, _) = bad_request(both(text));
        assert_eq!(r, None, "{text}");
    }
    let max = "a".repeat(RoomId::MAX_LEN);
    assert_eq!(
        both(&format!(r#"{{"t":"leave","room":"{max}"}}"#)),
        Ok(ClientMessage::Leave { room: room(&max) })
    );
    bad_request(both(&format!(r#"{{"t":"leave","room":"{max}a"}}"#)));
    // The seq of an op with a bad room is still answered.
    let (_, r, seq) = bad_request(both(r#"{"t":"op","room":"no way","seq":4,"ops":[]}"#));
    assert_eq!((r, seq), (None, Some(4)));
}

#[test]
fn bad_since_and_epoch() {
    for text in [
        r#"{"t":"join","room":"r","since":-1}"#,
        r#"{"t":"join","room":"r","since":"5"}"#,
        r#"{"t":"join","room":"r","since":1.0}"#,
        r#"{"t":"join","room":"r","epoch":[]}"#,
        r#"{"t":"join","room":"r","epoch":true}"#,
    ] {
        let (_, r, _) = bad_request(both(text));
        assert_eq!(r, Some(room("r")), "{text}");
    }
}

#[test]
fn bad_seq_and_ops() {
    let cases = [
        (r#"{"t":"op","room":"r","ops":[]}"#, None),
        (r#"{"t":"op","room":"r","seq":null,"ops":[]}"#, None),
        (r#"{"t":"op","room":"r","seq":-1,"ops":[]}"#, None),
        (r#"{"t":"op","room":"r","seq":1.0,"ops":[]}"#, None),
        (r#"{"t":"op","room":"r","seq":"1","ops":[]}"#, None),
        (
            r#"{"t":"op","room":"r","seq":18446744073709551616,"ops":[]}"#,
            None,
        ),
        (r#"{"t":"op","room":"r","seq":5}"#, Some(5)),
        (r#"{"t":"op","room":"r","seq":5,"ops":null}"#, Some(5)),
        (
            r#"{"t":"op","room":"r","seq":5,"ops":{"0":["del",[]]}}"#,
            Some(5),
        ),
        (r#"{"t":"op","room":"r","seq":5,"ops":["del"]}"#, Some(5)),
    ];
    for (text, expected_seq) in cases {
        let (_, r, seq) = bad_request(both(text));
        assert_eq!((r, seq), (Some(room("r")), expected_seq), "{text}");
    }
}

#[test]
fn bad_ops() {
    let cases = [
        // unknown op names
        r#"["mul",["a"],2]"#,
        r#"["SET",["a"],2]"#,
        r#"[1,["a"],2]"#,
        r#"[]"#,
        // wrong arity
        r#"["set",["a"]]"#,
        r#"["set",["a"],1,2]"#,
        r#"["del",["a"],1]"#,
        r#"["del"]"#,
        r#"["inc",["a"]]"#,
        r#"["push",["a"]]"#,
        // paths that are not arrays of strings and non-negative integers
        r#"["set","a",1]"#,
        r#"["set",null,1]"#,
        r#"["set",["a",-1],1]"#,
        r#"["set",[1.0],1]"#,
        r#"["del",[["a"]]]"#,
        r#"["del",[null]]"#,
        r#"["del",[true]]"#,
        r#"["del",[{}]]"#,
        // inc by a non-number
        r#"["inc",["a"],"1"]"#,
        r#"["inc",["a"],null]"#,
        r#"["inc",["a"],[1]]"#,
    ];
    for op in cases {
        let text = format!(r#"{{"t":"op","room":"r","seq":7,"ops":[["del",["ok"]],{op}]}}"#);
        let (message, r, seq) = bad_request(both(&text));
        assert!(message.starts_with("ops[1]"), "{op}: {message}");
        assert_eq!((r, seq), (Some(room("r")), Some(7)), "{op}");
    }
    // Inc accepts every kind of number.
    let text = r#"{"t":"op","room":"r","seq":1,"ops":[["inc",[],1],["inc",[],-1],["inc",[],0.5],["inc",[],18446744073709551615]]}"#;
    assert!(matches!(both(text), Ok(ClientMessage::Op { ops, .. }) if ops.len() == 4));
}

#[test]
fn msg_needs_data() {
    let (_, r, _) = bad_request(both(r#"{"t":"msg","room":"r"}"#));
    assert_eq!(r, Some(room("r")));
}

// ---- malformed frames ----

#[test]
fn malformed_msgpack() {
    assert_eq!(malformed(mp(b"")), Malformed::Truncated);
    assert_eq!(malformed(mp(b"\x82\xa1t")), Malformed::Truncated);
    assert_eq!(malformed(mp(b"\x81\xa1t\xa4pin")), Malformed::Truncated);
    assert_eq!(malformed(mp(b"\xcd\x01")), Malformed::Truncated);
    // Lengths that announce more than the frame holds fail before any allocation.
    assert_eq!(malformed(mp(b"\xdd\xff\xff\xff\xff")), Malformed::Truncated);
    assert_eq!(
        malformed(mp(b"\xdf\xff\xff\xff\xff\xa1t")),
        Malformed::Truncated
    );
    assert_eq!(
        malformed(mp(b"\xc6\xff\xff\xff\xff\x00")),
        Malformed::Truncated
    );
    assert_eq!(malformed(mp(b"\xc1")), Malformed::ReservedMarker);
    assert_eq!(
        malformed(mp(b"\x82\xa1t\xa4ping\xa2id\xc1")),
        Malformed::ReservedMarker
    );
    assert_eq!(
        malformed(mp(b"\x82\xa1t\xa4ping\xa2id\xd4\x01\x00")),
        Malformed::Extension
    );
    // The timestamp extension (-1) too.
    assert_eq!(
        malformed(mp(b"\x82\xa1t\xa4ping\xa2id\xd6\xff\x00\x00\x00\x01")),
        Malformed::Extension
    );
    assert_eq!(
        malformed(mp(b"\x82\xa1t\xa4ping\xa2id\xa2\xff\xfe")),
        Malformed::InvalidUtf8
    );
    assert_eq!(
        malformed(mp(b"\x82\xa1t\xa4ping\xa2\xc3\x28\x01")),
        Malformed::InvalidUtf8
    );
    assert_eq!(
        malformed(mp(b"\x82\xa1t\xa4ping\x01\x02")),
        Malformed::NonStringKey
    );
    assert_eq!(
        malformed(mp(b"\x82\xa1t\xa4ping\xa2id\x81\xc0\x01")),
        Malformed::NonStringKey
    );
    assert_eq!(
        malformed(mp(b"\x82\xa1t\xa4ping\xa2id\x81\xc4\x01a\x01")),
        Malformed::NonStringKey
    );
    assert_eq!(
        malformed(mp(b"\x81\xa1t\xa4ping\x00")),
        Malformed::TrailingBytes
    );
    assert_eq!(
        malformed(mp(b"\x81\xa1t\xa4ping\x81\xa1t\xa4ping")),
        Malformed::TrailingBytes
    );
    // Malformed wins over a bad request anywhere in the frame.
    assert_eq!(
        malformed(mp(b"\x82\xa1t\xa4nope\xa1x\xc1")),
        Malformed::ReservedMarker
    );
    assert_eq!(malformed(mp(b"\x92\x01\xc1")), Malformed::ReservedMarker);
}

#[test]
fn malformed_json() {
    for text in [
        "",
        "{",
        "{\"t\":\"ping\"",
        "nul",
        "{'t':'ping'}",
        "{\"t\":ping}",
        "[1,]",
        "{\"t\":\"ping\",}",
    ] {
        assert!(matches!(malformed(js(text)), Malformed::Json(_)), "{text}");
    }
    // A number beyond f64 is not JSON we can read (JavaScript would make it Infinity).
    assert!(matches!(
        malformed(js(r#"{"t":"ping","id":1e400}"#)),
        Malformed::Json(_)
    ));
    assert_eq!(malformed(js(r#"{"t":"ping"} x"#)), Malformed::TrailingBytes);
    assert_eq!(
        malformed(js(r#"{"t":"ping"}{"t":"ping"}"#)),
        Malformed::TrailingBytes
    );
    assert_eq!(malformed(js("[1] 2")), Malformed::TrailingBytes);
    // Not UTF-8 (the WebSocket layer checks text frames first; the decoder does not rely on it).
    assert!(matches!(
        malformed(decode_client(b"{\"t\":\"\xff\"}", JS)),
        Malformed::Json(_)
    ));
    // Malformed wins over a bad request.
    assert!(matches!(
        malformed(js(r#"{"t":"nope","x":[1,}"#)),
        Malformed::Json(_)
    ));
}

// ---- nesting ----

fn nested_json(depth: usize) -> String {
    format!("{}{}", "[".repeat(depth), "]".repeat(depth))
}

fn nested_msgpack(depth: usize) -> Vec<u8> {
    let mut bytes = vec![0x91; depth.saturating_sub(1)];
    if depth > 0 {
        bytes.push(0x90);
    }
    bytes
}

/// Runs `f` on a thread with a small stack: decoding hostile frames must not need more.
fn on_small_stack(f: impl FnOnce() + Send + 'static) {
    std::thread::Builder::new()
        .stack_size(256 * 1024)
        .spawn(f)
        .expect("spawn a test thread")
        .join()
        .expect("the test thread did not panic or overflow");
}

#[test]
fn a_64_kib_nest_is_malformed_without_overflowing_the_stack() {
    on_small_stack(|| {
        let mut bytes = vec![0x91; 64 * 1024 - 1];
        bytes.push(0xc0);
        assert_eq!(malformed(mp(&bytes)), Malformed::TooDeep);
        // Also inside a map, and as the value of an unknown key.
        let mut frame = b"\x82\xa1t\xa4ping\xa2id".to_vec();
        frame.extend_from_slice(&bytes);
        assert_eq!(malformed(mp(&frame)), Malformed::TooDeep);
        let mut frame = b"\x82\xa1t\xa4ping\xa5other".to_vec();
        frame.extend_from_slice(&bytes);
        assert_eq!(malformed(mp(&frame)), Malformed::TooDeep);
        // Maps nest too.
        let mut maps = b"\x81\xa1a".repeat(20_000);
        maps.push(0xc0);
        assert_eq!(malformed(mp(&maps)), Malformed::TooDeep);

        let text = nested_json(32 * 1024);
        assert!(matches!(
            malformed(js(&text)),
            Malformed::Json(_) | Malformed::TooDeep
        ));
        let text = format!(r#"{{"t":"ping","id":{}}}"#, nested_json(32 * 1024));
        assert!(matches!(
            malformed(js(&text)),
            Malformed::Json(_) | Malformed::TooDeep
        ));
        let text = format!(r#"{{"t":"ping","id":{}}}"#, "{\"a\":".repeat(20_000));
        assert!(matches!(
            malformed(js(&text)),
            Malformed::Json(_) | Malformed::TooDeep
        ));
    });
}

#[test]
fn values_nest_up_to_max_depth() {
    let limit = Value::MAX_DEPTH;
    on_small_stack(move || {
        for (field, prefix) in [
            ("id", b"\x82\xa1t\xa4ping\xa2id".as_slice()),
            ("x", b"\x82\xa1t\xa4ping\xa1x"),
        ] {
            let mut frame = prefix.to_vec();
            frame.extend_from_slice(&nested_msgpack(limit));
            assert!(mp(&frame).is_ok(), "{field} at depth {limit}");
            let mut frame = prefix.to_vec();
            frame.extend_from_slice(&nested_msgpack(limit + 1));
            assert_eq!(malformed(mp(&frame)), Malformed::TooDeep, "{field}");

            let text = format!(r#"{{"t":"ping","{field}":{}}}"#, nested_json(limit));
            assert!(js(&text).is_ok(), "{field} at depth {limit}");
            let text = format!(r#"{{"t":"ping","{field}":{}}}"#, nested_json(limit + 1));
            assert_eq!(malformed(js(&text)), Malformed::TooDeep, "{field}");
        }
        // An op's value gets the full depth inside the ops array and the op.
        let text = |depth| {
            format!(
                r#"{{"t":"op","room":"r","seq":1,"ops":[["set",[],{}]]}}"#,
                nested_json(depth)
            )
        };
        assert!(both(&text(limit)).is_ok());
        assert_eq!(malformed(js(&text(limit + 1))), Malformed::TooDeep);
        assert_eq!(
            malformed(mp(&msgpack_of(&text(limit + 1)))),
            Malformed::TooDeep
        );
        // A top-level array counts from itself.
        bad_request(mp(&nested_msgpack(limit)));
        bad_request(js(&nested_json(limit)));
        assert_eq!(
            malformed(mp(&nested_msgpack(limit + 1))),
            Malformed::TooDeep
        );
        assert_eq!(malformed(js(&nested_json(limit + 1))), Malformed::TooDeep);
    });
}

#[test]
fn dropping_a_decoded_value_at_max_depth_is_fine_on_a_small_stack() {
    on_small_stack(|| {
        let value = msgpack::decode_value(&nested_msgpack(Value::MAX_DEPTH), Value::MAX_DEPTH);
        assert!(value.is_ok());
        drop(value);
    });
}
