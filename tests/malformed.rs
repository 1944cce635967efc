//! Handcrafted frames: each RFC 6455 violation and limit closes its connection with the close
//! code of PROTOCOL.md, while another client of the same server keeps working.

mod common;

use common::{
    close_payload, frame, masked, to_msgpack, Client, Enc, Raw, Server, JSON, MASK, MSGPACK,
    OP_BINARY, OP_CLOSE, OP_CONT, OP_PING, OP_PONG, OP_TEXT,
};
use serde_json::{json, Value};

/// A JSON ping as a text payload.
const PING: &[u8] = br#"{"t":"ping","id":1}"#;

/// A healthy client in the same server, joined, to check the server is unaffected.
fn bystander(server: &Server) -> Client {
    let mut client = server.client(Enc::Msgpack);
    client.join("bystanders");
    client
}

/// Upgrades a raw connection, writes `bytes`, and checks the close code; the bystander's
/// ping must still get its pong afterwards.
fn expect_close_code(server: &Server, protocol: &str, bytes: &[u8], code: u16, what: &str) {
    let mut healthy = bystander(server);
    let mut raw = Raw::upgrade(server.addr(), Some(protocol));
    raw.write_lossy(bytes);
    let got = raw.expect_close();
    assert_eq!(got, Some(code), "{what}");
    // Complete the close handshake: the server must then close the TCP connection.
    raw.write_lossy(&masked(OP_CLOSE, &close_payload(code, "")));
    assert!(
        raw.reaches_eof(),
        "{what}: TCP still open after the close handshake"
    );
    healthy.assert_quiet(&format!("bystander after {what}"));
}

#[test]
fn unmasked_frame_closes_1002() {
    let server = Server::start(&[]);
    let bytes = frame(true, 0, OP_TEXT, PING, None);
    expect_close_code(&server, JSON, &bytes, 1002, "unmasked frame");
}

#[test]
fn reserved_bits_close_1002() {
    let server = Server::start(&[]);
    for rsv in [4, 2, 1] {
        let bytes = frame(true, rsv, OP_TEXT, PING, Some(MASK));
        expect_close_code(&server, JSON, &bytes, 1002, &format!("RSV bits {rsv:03b}"));
    }
}

#[test]
fn unknown_opcodes_close_1002() {
    let server = Server::start(&[]);
    for opcode in [0x3, 0x7, 0xB, 0xF] {
        let bytes = masked(opcode, b"x");
        expect_close_code(
            &server,
            MSGPACK,
            &bytes,
            1002,
            &format!("opcode {opcode:#x}"),
        );
    }
}

#[test]
fn fragmented_control_frame_closes_1002() {
    let server = Server::start(&[]);
    let bytes = frame(false, 0, OP_PING, b"x", Some(MASK));
    expect_close_code(&server, JSON, &bytes, 1002, "ping without FIN");
}

#[test]
fn control_frame_above_125_bytes_closes_1002() {
    let server = Server::start(&[]);
    let bytes = masked(OP_PING, &[b'p'; 126]);
    expect_close_code(&server, JSON, &bytes, 1002, "126-byte ping");
}

#[test]
fn continuation_without_start_closes_1002() {
    let server = Server::start(&[]);
    let bytes = masked(OP_CONT, PING);
    expect_close_code(&server, JSON, &bytes, 1002, "continuation first");
}

#[test]
fn new_data_frame_inside_a_fragmented_message_closes_1002() {
    let server = Server::start(&[]);
    let mut bytes = frame(false, 0, OP_TEXT, &PING[..5], Some(MASK));
    bytes.extend(masked(OP_TEXT, PING));
    expect_close_code(
        &server,
        JSON,
        &bytes,
        1002,
        "text frame before the final fragment",
    );
}

#[test]
fn length_with_top_bit_set_closes_1002() {
    let server = Server::start(&[]);
    let mut bytes = vec![0x80 | OP_BINARY, 0x80 | 127, 0x80, 0, 0, 0, 0, 0, 0, 1];
    bytes.extend_from_slice(&MASK);
    expect_close_code(
        &server,
        MSGPACK,
        &bytes,
        1002,
        "64-bit length with its top bit set",
    );
}

#[test]
fn invalid_close_codes_close_1002() {
    let server = Server::start(&[]);
    for code in [
        0u16, 999, 1004, 1005, 1006, 1015, 1016, 2000, 2999, 5000, 65535,
    ] {
        let bytes = masked(OP_CLOSE, &close_payload(code, ""));
        expect_close_code(&server, JSON, &bytes, 1002, &format!("close code {code}"));
    }
    // A one-byte close payload cannot hold a code.
    let bytes = masked(OP_CLOSE, &[0x03]);
    expect_close_code(&server, JSON, &bytes, 1002, "one-byte close payload");
}

#[test]
fn valid_close_codes_are_echoed() {
    let server = Server::start(&[]);
    for code in [1000u16, 1001, 1003, 1007, 1011, 1014, 3000, 4999] {
        let mut healthy = bystander(&server);
        let mut raw = Raw::upgrade(server.addr(), Some(JSON));
        raw.write_all(&masked(OP_CLOSE, &close_payload(code, "bye")));
        assert_eq!(
            raw.expect_close(),
            Some(code),
            "the server echoes close code {code}"
        );
        assert!(
            raw.reaches_eof(),
            "the server closes TCP after the close handshake"
        );
        healthy.assert_quiet("bystander after a close");
    }
}

#[test]
fn normal_close_handshake() {
    let server = Server::start(&[]);
    let mut raw = Raw::upgrade(server.addr(), Some(MSGPACK));
    raw.write_all(&masked(
        OP_BINARY,
        &to_msgpack(&json!({"t": "join", "room": "r"})),
    ));
    let joined = raw.read_frame().expect("joined frame");
    assert_eq!(joined.opcode, OP_BINARY);
    assert!(!joined.masked, "server frames are never masked");
    raw.write_all(&masked(OP_CLOSE, &close_payload(1000, "")));
    assert_eq!(raw.expect_close(), Some(1000));
    assert!(
        raw.reaches_eof(),
        "the server closes TCP after the close handshake"
    );
    // Through tungstenite as well.
    let mut client = server.client(Enc::Json);
    client.join("r");
    client.close(1000);
    assert_eq!(client.expect_close(), Some(1000));
}

#[test]
fn empty_close_is_answered_with_a_close() {
    let server = Server::start(&[]);
    let mut raw = Raw::upgrade(server.addr(), Some(JSON));
    raw.write_all(&masked(OP_CLOSE, &[]));
    let code = raw.expect_close();
    assert_eq!(
        code, None,
        "a close without a code is answered with an empty close (README, Protocol)"
    );
}

#[test]
fn invalid_utf8_text_closes_1007() {
    let server = Server::start(&[]);
    let bytes = masked(OP_TEXT, &[b'"', 0xff, 0xfe, b'"']);
    expect_close_code(&server, JSON, &bytes, 1007, "invalid UTF-8");
    // Invalid across fragments: a 3-byte sequence cut short by an ASCII byte.
    let mut bytes = frame(false, 0, OP_TEXT, &[b'"', 0xE2, 0x82], Some(MASK));
    bytes.extend(frame(true, 0, OP_CONT, b"A\"", Some(MASK)));
    expect_close_code(
        &server,
        JSON,
        &bytes,
        1007,
        "invalid UTF-8 across fragments",
    );
    // Overlong encoding and a surrogate are invalid too.
    for invalid in [&[0xC0u8, 0xAF][..], &[0xED, 0xA0, 0x80][..]] {
        let mut payload = vec![b'"'];
        payload.extend_from_slice(invalid);
        payload.push(b'"');
        expect_close_code(
            &server,
            JSON,
            &masked(OP_TEXT, &payload),
            1007,
            "invalid UTF-8 form",
        );
    }
}

/// Reads frames until a data frame; returns it decoded as JSON, with the frames before it.
fn next_json(raw: &mut Raw) -> (Value, Vec<common::RawFrame>) {
    let mut before = Vec::new();
    loop {
        let frame = raw.read_frame().expect("a frame");
        if frame.opcode == OP_TEXT {
            let value = serde_json::from_slice(&frame.payload).expect("JSON from the server");
            return (value, before);
        }
        assert_ne!(
            frame.opcode,
            OP_CLOSE,
            "unexpected close {:?}",
            frame.close_code()
        );
        before.push(frame);
    }
}

#[test]
fn fragments_with_interleaved_ping_and_split_utf8_are_accepted() {
    let server = Server::start(&[]);
    let mut raw = Raw::upgrade(server.addr(), Some(JSON));
    // `{"t":"ping","id":"€"}` cut inside the 3-byte euro sign, with a ping in between.
    let message = r#"{"t":"ping","id":"€"}"#.as_bytes();
    let cut = message.iter().position(|&b| b == 0xE2).expect("euro sign") + 1;
    let mut bytes = frame(false, 0, OP_TEXT, &message[..cut], Some(MASK));
    bytes.extend(masked(OP_PING, b"hi"));
    bytes.extend(frame(false, 0, OP_CONT, &message[cut..cut + 1], Some(MASK)));
    bytes.extend(frame(true, 0, OP_CONT, &message[cut + 1..], Some(MASK)));
    raw.write_all(&bytes);
    let (pong, before) = next_json(&mut raw);
    assert_eq!(pong["t"], "pong", "{pong}");
    assert_eq!(pong["id"], "€");
    assert!(
        before
            .iter()
            .any(|f| f.opcode == OP_PONG && f.payload == b"hi"),
        "the ping between fragments is answered by a pong with its payload: {before:?}"
    );
}

#[test]
fn frame_above_max_frame_bytes_closes_1009() {
    let server = Server::start(&["--max-frame-bytes", "1024", "--max-message-bytes", "4096"]);
    let mut payload = br#"{"t":"ping","id":""#.to_vec();
    payload.resize(2000, b'x');
    payload.extend_from_slice(br#""}"#);
    expect_close_code(
        &server,
        JSON,
        &masked(OP_TEXT, &payload),
        1009,
        "2 KB frame over 1 KB",
    );
}

#[test]
fn message_above_max_message_bytes_across_fragments_closes_1009() {
    let server = Server::start(&["--max-frame-bytes", "1024", "--max-message-bytes", "2048"]);
    let chunk = [b' '; 1000];
    let mut bytes = frame(false, 0, OP_TEXT, &chunk, Some(MASK));
    bytes.extend(frame(false, 0, OP_CONT, &chunk, Some(MASK)));
    bytes.extend(frame(true, 0, OP_CONT, &chunk, Some(MASK)));
    expect_close_code(
        &server,
        JSON,
        &bytes,
        1009,
        "3 KB message over 2 KB in 1 KB frames",
    );
}

#[test]
fn text_frame_on_msgpack_closes_1003() {
    let server = Server::start(&[]);
    expect_close_code(
        &server,
        MSGPACK,
        &masked(OP_TEXT, PING),
        1003,
        "text on msgpack",
    );
}

#[test]
fn binary_frame_on_json_closes_1003() {
    let server = Server::start(&[]);
    let bytes = masked(OP_BINARY, &to_msgpack(&json!({"t": "ping"})));
    expect_close_code(&server, JSON, &bytes, 1003, "binary on json");
}

#[test]
fn undecodable_msgpack_closes_1007() {
    let server = Server::start(&[]);
    expect_close_code(
        &server,
        MSGPACK,
        &masked(OP_BINARY, &[0xc1]),
        1007,
        "0xc1 marker",
    );
    expect_close_code(
        &server,
        MSGPACK,
        &masked(OP_BINARY, &[0x82, 0xa1, b't']),
        1007,
        "truncated map",
    );
}

#[test]
fn websocket_ping_gets_pong_with_payload() {
    let server = Server::start(&[]);
    let mut raw = Raw::upgrade(server.addr(), Some(JSON));
    raw.write_all(&masked(OP_PING, b"payload-123"));
    let pong = raw.read_frame().expect("a pong");
    assert_eq!(pong.opcode, OP_PONG);
    assert!(pong.fin);
    assert_eq!(pong.payload, b"payload-123");
    // An unsolicited pong is ignored.
    raw.write_all(&masked(OP_PONG, b"unasked"));
    raw.write_all(&masked(OP_TEXT, PING));
    let (answer, before) = next_json(&mut raw);
    assert_eq!(answer["t"], "pong");
    assert!(before.is_empty(), "{before:?}");
}

#[test]
fn handshake_and_frames_arriving_byte_by_byte_are_assembled() {
    let server = Server::start(&[]);
    let mut raw = Raw::connect(server.addr());
    let request = common::UpgradeRequest::default()
        .set("Sec-WebSocket-Protocol", JSON)
        .to_bytes();
    // One write per byte (TCP_NODELAY is on): the server sees many tiny reads.
    for byte in &request {
        raw.write_all(std::slice::from_ref(byte));
    }
    let response = raw.read_response(false);
    assert_eq!(response.status, 101, "{response:?}");
    let mut bytes = masked(OP_TEXT, br#"{"t":"join","room":"slow"}"#);
    bytes.extend(masked(OP_TEXT, PING));
    for byte in &bytes {
        raw.write_all(std::slice::from_ref(byte));
    }
    let (joined, _) = next_json(&mut raw);
    assert_eq!(joined["t"], "joined", "{joined}");
    let (pong, _) = next_json(&mut raw);
    assert_eq!(pong["t"], "pong", "{pong}");
}

#[test]
fn many_messages_in_one_write_are_all_answered_in_order() {
    let server = Server::start(&["--rate-limit", "10000", "--rate-burst", "10000"]);
    let mut raw = Raw::upgrade(server.addr(), Some(JSON));
    let mut bytes = Vec::new();
    for id in 0..200 {
        bytes.extend(masked(
            OP_TEXT,
            format!(r#"{{"t":"ping","id":{id}}}"#).as_bytes(),
        ));
    }
    raw.write_all(&bytes);
    for id in 0..200 {
        let (pong, _) = next_json(&mut raw);
        assert_eq!(pong["t"], "pong");
        assert_eq!(pong["id"], id, "pongs in order");
    }
}

#[test]
fn echo_mode_echoes_text_and_binary_on_any_path() {
    let server = Server::start_echo();
    let (mut client, response) =
        Client::connect_with(server.addr(), "/any/path?x=1", &[], &[]).expect("connect to echo");
    assert!(response.headers().get("Sec-WebSocket-Protocol").is_none());
    let big = "é".repeat(300_000);
    for message in [
        tungstenite::Message::Text("hello".into()),
        tungstenite::Message::Binary(vec![0, 1, 2, 255]),
        tungstenite::Message::Text(big),
    ] {
        let sent = message.clone();
        client.send_message(message);
        let echoed = client.recv_raw();
        assert_eq!(echoed, sent);
    }
    client.close(1000);
    assert_eq!(client.expect_close_raw(), Some(1000));
}

#[test]
fn frame_in_the_same_write_as_the_handshake_is_kept() {
    let server = Server::start(&[]);
    let mut raw = Raw::connect(server.addr());
    let mut bytes = common::UpgradeRequest::default()
        .set("Sec-WebSocket-Protocol", JSON)
        .to_bytes();
    bytes.extend(masked(OP_TEXT, PING));
    raw.write_all(&bytes);
    let response = raw.read_response(false);
    assert_eq!(response.status, 101, "{response:?}");
    let (pong, _) = next_json(&mut raw);
    assert_eq!(
        pong["t"], "pong",
        "the frame right behind the request is read: {pong}"
    );
}

#[test]
fn deeply_nested_values_do_not_crash_the_server() {
    let server = Server::start(&[]);
    let mut healthy = bystander(&server);
    // MessagePack: a `msg` whose data is ~60000 nested one-item arrays (0x91 each), within
    // the 64 KiB message limit: a recursive decoder without a bound would overflow its stack.
    let mut payload = vec![0x83];
    for (key, value) in [("t", "msg"), ("room", "bystanders")] {
        payload.extend(to_msgpack(&json!(key)));
        payload.extend(to_msgpack(&json!(value)));
    }
    payload.extend(to_msgpack(&json!("data")));
    payload.extend(std::iter::repeat_n(0x91u8, 60_000));
    payload.push(0x01);
    let mut raw = Raw::upgrade(server.addr(), Some(MSGPACK));
    raw.write_all(&masked(
        OP_BINARY,
        &to_msgpack(&json!({"t": "join", "room": "bystanders"})),
    ));
    raw.write_lossy(&masked(OP_BINARY, &payload));
    raw.expect_close();
    // JSON: 30000 nested arrays.
    let deep = format!(
        r#"{{"t":"msg","room":"bystanders","data":{}1{}}}"#,
        "[".repeat(30_000),
        "]".repeat(30_000)
    );
    let mut raw = Raw::upgrade(server.addr(), Some(JSON));
    raw.write_lossy(&masked(OP_TEXT, deep.as_bytes()));
    raw.expect_close();
    let seen = healthy.sync();
    assert!(
        seen.iter().all(|m| m["t"] == "presence"),
        "nothing of the deep messages reached others: {seen:?}"
    );
}

/// `PING` cut into exactly `count` fragments (the last ones may be empty).
fn fragmented_ping(count: usize) -> Vec<u8> {
    let chunk = PING.len().div_ceil(count);
    let mut parts: Vec<&[u8]> = PING.chunks(chunk).collect();
    parts.resize(count, &[]);
    let mut bytes = Vec::new();
    for (i, part) in parts.iter().enumerate() {
        let opcode = if i == 0 { OP_TEXT } else { OP_CONT };
        bytes.extend(frame(i + 1 == count, 0, opcode, part, Some(MASK)));
    }
    bytes
}

#[test]
fn fragment_count_limit() {
    let server = Server::start(&["--max-fragments", "4"]);
    let mut raw = Raw::upgrade(server.addr(), Some(JSON));
    raw.write_all(&fragmented_ping(4));
    let (pong, _) = next_json(&mut raw);
    assert_eq!(pong["t"], "pong", "4 fragments are within a limit of 4");
    // Past the limit the message is too big to assemble: 1009, like a size limit.
    expect_close_code(
        &server,
        JSON,
        &fragmented_ping(5),
        1009,
        "5 fragments over 4",
    );
}
