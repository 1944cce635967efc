//! The stack against an independent RFC 6455 implementation (tungstenite as the client).

use super::frame::{encode_frame, frame_in_place, payload_buffer, write_header};
use super::handshake::{check_upgrade, parse_request, write_accept};
use super::*;
use std::io::{self, Read, Write};
use tungstenite::client::IntoClientRequest;
use tungstenite::handshake::HandshakeError;
use tungstenite::protocol::frame::coding::{Data, OpCode};
use tungstenite::protocol::frame::{CloseFrame as TCloseFrame, Frame};
use tungstenite::Message;

/// An in-memory socket: reads what the test put in `incoming` (`WouldBlock` when
/// empty), collects writes in `outgoing`.
#[derive(Default)]
struct Pipe {
    incoming: Vec<u8>,
    outgoing: Vec<u8>,
}

impl Read for Pipe {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.incoming.is_empty() {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let n = buf.len().min(self.incoming.len());
        buf[..n].copy_from_slice(&self.incoming[..n]);
        self.incoming.drain(..n);
        Ok(n)
    }
}

impl Write for Pipe {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.outgoing.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[test]
fn tungstenite_client_handshake_and_frames() {
    let mut request = "ws://localhost/ws?token=abc".into_client_request().unwrap();
    // No space after the comma: tungstenite 0.24 does not trim the offers it keeps to
    // verify our choice against.
    request.headers_mut().insert(
        "Sec-WebSocket-Protocol",
        "other,kasagi.v1.json".parse().unwrap(),
    );
    let Err(HandshakeError::Interrupted(mut mid)) = tungstenite::client(request, Pipe::default())
    else {
        panic!("the client should wait for our answer");
    };
    let sent = std::mem::take(&mut mid.get_mut().get_mut().outgoing);
    let (request, len) = parse_request(&sent, &HandshakeLimits::default())
        .unwrap()
        .unwrap();
    assert_eq!((request.path(), len), ("/ws", sent.len()));
    let policy = UpgradePolicy {
        subprotocols: &["kasagi.v1.msgpack", "kasagi.v1.json"],
        allowed_origins: &[],
    };
    let upgrade = check_upgrade(&request, &policy).unwrap();
    assert_eq!(upgrade.token, Some("abc"));
    let mut answer = Vec::new();
    write_accept(&mut answer, &upgrade, upgrade.subprotocol_name(&policy));
    mid.get_mut().get_mut().incoming = answer;
    let (mut client, response) = mid.handshake().unwrap();
    assert_eq!(
        response.headers()["Sec-WebSocket-Protocol"],
        "kasagi.v1.json"
    );

    // Client to server, read back in 7-byte pieces.
    let big: Vec<u8> = (0..60_000u32).map(|i| (i % 251) as u8).collect();
    client.send(Message::Text("hello €".into())).unwrap();
    client.send(Message::Binary(big.clone())).unwrap();
    client
        .send(Message::Frame(Frame::message(
            "fr€".as_bytes().to_vec(),
            OpCode::Data(Data::Text),
            false,
        )))
        .unwrap();
    client.send(Message::Ping(b"p".to_vec())).unwrap();
    client
        .send(Message::Frame(Frame::message(
            b"agment".to_vec(),
            OpCode::Data(Data::Continue),
            true,
        )))
        .unwrap();
    client
        .send(Message::Close(Some(TCloseFrame {
            code: 4000.into(),
            reason: "bye".into(),
        })))
        .unwrap();
    let stream = std::mem::take(&mut client.get_mut().outgoing);
    let mut reader = Reader::new(Limits::default());
    let mut buf = Vec::new();
    let mut events = Vec::new();
    for piece in stream.chunks(7) {
        buf.extend_from_slice(piece);
        loop {
            let (consumed, event) = reader.read(&mut buf).unwrap();
            let event = event.map(|event| format!("{event:?}"));
            buf.drain(..consumed);
            match event {
                Some(event) => events.push(event),
                None => break,
            }
        }
    }
    let expected = [
        format!("{:?}", Incoming::Text("hello €")),
        format!("{:?}", Incoming::Binary(&big)),
        format!("{:?}", Incoming::Ping(b"p")),
        format!("{:?}", Incoming::Text("fr€agment")),
        format!(
            "{:?}",
            Incoming::Close(Some(CloseFrame {
                code: 4000,
                reason: "bye"
            }))
        ),
    ];
    assert_eq!(events, expected);

    // Server to client.
    let mut server = encode_frame(Opcode::Text, "hi ✓".as_bytes());
    let mut shared = payload_buffer(3);
    shared.extend_from_slice(&[1, 2, 3]);
    server.extend_from_slice(&frame_in_place(shared, Opcode::Binary));
    write_header(&mut server, Opcode::Text, false, 2);
    server.extend_from_slice(b"ab");
    server.extend_from_slice(&encode_frame(Opcode::Ping, b"q"));
    write_header(&mut server, Opcode::Continuation, true, 1);
    server.extend_from_slice(b"c");
    server.extend_from_slice(&frame::close_frame(1001, "going away"));
    client.get_mut().incoming = server;
    let mut received = Vec::new();
    while let Ok(message) = client.read() {
        received.push(message);
    }
    let close = TCloseFrame {
        code: 1001.into(),
        reason: "going away".into(),
    };
    assert_eq!(
        received,
        [
            Message::Text("hi ✓".into()),
            Message::Binary(vec![1, 2, 3]),
            Message::Ping(b"q".to_vec()),
            Message::Text("abc".into()),
            Message::Close(Some(close)),
        ]
    );
}
