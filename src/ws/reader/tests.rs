use super::*;
use crate::ws::frame::write_header;
use proptest::prelude::*;

const MASK: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

/// An owned copy of an event, to compare after the buffer moved on.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Event {
    Text(String),
    Binary(Vec<u8>),
    Ping(Vec<u8>),
    Pong(Vec<u8>),
    Close(Option<(u16, String)>),
}

impl From<Incoming<'_>> for Event {
    fn from(incoming: Incoming<'_>) -> Self {
        match incoming {
            Incoming::Text(text) => Event::Text(text.to_owned()),
            Incoming::Binary(bytes) => Event::Binary(bytes.to_vec()),
            Incoming::Ping(bytes) => Event::Ping(bytes.to_vec()),
            Incoming::Pong(bytes) => Event::Pong(bytes.to_vec()),
            Incoming::Close(close) => Event::Close(close.map(|c| (c.code, c.reason.to_owned()))),
        }
    }
}

/// A masked client frame; `first` is the whole first byte (FIN, RSV, opcode).
fn client_frame_raw(first: u8, payload: &[u8], mask: [u8; 4]) -> Vec<u8> {
    let mut out = Vec::new();
    write_header(&mut out, Opcode::Binary, true, payload.len());
    out[0] = first;
    out[1] |= 0x80;
    out.extend_from_slice(&mask);
    let start = out.len();
    out.extend_from_slice(payload);
    apply_mask(&mut out[start..], mask, 0);
    out
}

fn client_frame(opcode: Opcode, fin: bool, payload: &[u8]) -> Vec<u8> {
    let first = if fin { 0x80 } else { 0 } | opcode.as_u8();
    client_frame_raw(first, payload, MASK)
}

/// What a connection sees: the events, then the error if one came, and how many
/// input bytes had been received when it came.
#[derive(Debug)]
struct Run {
    events: Vec<Event>,
    error: Option<(ProtocolError, usize)>,
    /// Bytes left unconsumed at the end.
    leftover: usize,
}

/// Feeds `reads` to `reader` exactly as a connection task would.
fn run<'r>(reader: &mut Reader, reads: impl IntoIterator<Item = &'r [u8]>) -> Run {
    let mut buf: Vec<u8> = Vec::new();
    let mut events = Vec::new();
    let mut received = 0;
    for chunk in reads {
        buf.extend_from_slice(chunk);
        received += chunk.len();
        loop {
            let (consumed, more) = match reader.read(&mut buf) {
                Err(error) => {
                    return Run {
                        events,
                        error: Some((error, received)),
                        leftover: buf.len(),
                    }
                }
                Ok((consumed, event)) => {
                    let more = event.is_some();
                    events.extend(event.map(Event::from));
                    (consumed, more)
                }
            };
            assert!(consumed <= buf.len());
            buf.drain(..consumed);
            if !more {
                break;
            }
        }
    }
    Run {
        events,
        error: None,
        leftover: buf.len(),
    }
}

fn run_whole(limits: Limits, stream: &[u8]) -> Run {
    run(&mut Reader::new(limits), [stream])
}

fn run_bytewise(limits: Limits, stream: &[u8]) -> Run {
    run(&mut Reader::new(limits), stream.chunks(1))
}

fn text(s: &str) -> Event {
    Event::Text(s.to_owned())
}

#[test]
fn rfc_single_frame_masked_hello_is_zero_copy() {
    let mut buf = vec![
        0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58, 0x89,
    ];
    let range = buf.as_ptr_range();
    let mut reader = Reader::new(Limits::default());
    let (consumed, event) = reader.read(&mut buf).unwrap();
    assert_eq!(consumed, 11);
    let Some(Incoming::Text(text)) = event else {
        panic!("expected text, got {event:?}");
    };
    assert_eq!(text, "Hello");
    assert!(range.contains(&text.as_ptr()), "the text was copied");
}

#[test]
fn rfc_fragmented_hello_masked() {
    let mut stream = client_frame(Opcode::Text, false, b"Hel");
    stream.extend(client_frame(Opcode::Continuation, true, b"lo"));
    for result in [
        run_whole(Limits::default(), &stream),
        run_bytewise(Limits::default(), &stream),
    ] {
        assert_eq!(result.events, [text("Hello")]);
        assert_eq!((result.error, result.leftover), (None, 0));
    }
}

#[test]
fn rfc_ping_and_masked_pong() {
    let mut stream = client_frame(Opcode::Ping, true, b"Hello");
    stream.extend_from_slice(&[
        0x8a, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58,
    ]);
    let result = run_bytewise(Limits::default(), &stream);
    assert_eq!(
        result.events,
        [
            Event::Ping(b"Hello".to_vec()),
            Event::Pong(b"Hello".to_vec())
        ]
    );
}

#[test]
fn rfc_binary_length_encodings() {
    for len in [0, 125, 126, 256, 65_535, 65_536] {
        let payload: Vec<u8> = (0..len).map(|i| (i * 7) as u8).collect();
        let stream = client_frame(Opcode::Binary, true, &payload);
        let expected_header = match len {
            256 => Some(&[0x82, 0xFE, 0x01, 0x00][..]),
            65_536 => Some(&[0x82, 0xFF, 0, 0, 0, 0, 0, 1, 0, 0][..]),
            _ => None,
        };
        if let Some(header) = expected_header {
            assert_eq!(&stream[..header.len()], header);
        }
        let whole = run_whole(Limits::default(), &stream);
        assert_eq!(whole.events, [Event::Binary(payload.clone())], "len {len}");
        let split = run(&mut Reader::new(Limits::default()), stream.chunks(997));
        assert_eq!(split.events, [Event::Binary(payload)], "len {len}");
        assert_eq!((split.error, split.leftover), (None, 0));
    }
}

#[test]
fn close_frames() {
    let cases: [(Vec<u8>, Result<Event, ProtocolError>); 7] = [
        (Vec::new(), Ok(Event::Close(None))),
        (vec![0x03], Err(ProtocolError::InvalidClosePayload)),
        (
            vec![0x03, 0xe8],
            Ok(Event::Close(Some((1000, String::new())))),
        ),
        (
            [&[0x0b, 0xb8][..], "done ✓".as_bytes()].concat(),
            Ok(Event::Close(Some((3000, "done ✓".to_owned())))),
        ),
        (
            [&[0x03, 0xe8][..], &[b'*'; 123][..]].concat(),
            Ok(Event::Close(Some((1000, "*".repeat(123))))),
        ),
        (vec![0x03, 0xe7], Err(ProtocolError::BadCloseCode(999))),
        (
            [&[0x03, 0xe8][..], &[0xce, 0xba, 0xed, 0xa0, 0x80][..]].concat(),
            Err(ProtocolError::InvalidUtf8),
        ),
    ];
    for (payload, expected) in cases {
        let stream = client_frame(Opcode::Close, true, &payload);
        let result = run_bytewise(Limits::default(), &stream);
        match expected {
            Ok(event) => assert_eq!(result.events, [event]),
            Err(error) => {
                assert_eq!(result.error, Some((error, stream.len())), "{payload:x?}")
            }
        }
    }
}

#[test]
fn close_codes_of_autobahn_7_7_and_7_9() {
    for code in [
        1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 3000, 3999, 4000, 4999,
    ] {
        let stream = client_frame(Opcode::Close, true, &u16::to_be_bytes(code));
        let result = run_whole(Limits::default(), &stream);
        assert_eq!(result.events, [Event::Close(Some((code, String::new())))]);
    }
    for code in [0, 999, 1004, 1005, 1006, 1016, 1100, 2000, 2999] {
        let stream = client_frame(Opcode::Close, true, &u16::to_be_bytes(code));
        let error = run_whole(Limits::default(), &stream).error.unwrap().0;
        assert_eq!(error, ProtocolError::BadCloseCode(code));
        assert_eq!(error.close_code(), 1002);
    }
}

/// Every error class, each after a valid message that must still be delivered (as
/// Autobahn 3.x/4.x/5.x send a good frame, then a bad one, then a ping).
#[test]
fn every_protocol_error_through_the_reader() {
    let small = Limits {
        max_frame_size: 100,
        max_message_size: 150,
        max_fragments: 3,
    };
    let text_frame = |fin, payload: &[u8]| client_frame(Opcode::Text, fin, payload);
    let cont = |fin, payload: &[u8]| client_frame(Opcode::Continuation, fin, payload);
    let mut unmasked = vec![0x81, 0x02];
    unmasked.extend_from_slice(b"hi");
    let cases: Vec<(Vec<u8>, ProtocolError, u16)> = vec![
        (unmasked, ProtocolError::UnmaskedFrame, 1002),
        (
            client_frame_raw(0xC1, b"x", MASK),
            ProtocolError::ReservedBitsSet,
            1002,
        ),
        (
            client_frame_raw(0x85, b"x", MASK),
            ProtocolError::UnknownOpcode(5),
            1002,
        ),
        (
            client_frame_raw(0x8B, b"", MASK),
            ProtocolError::UnknownOpcode(0xB),
            1002,
        ),
        (
            client_frame_raw(0x09, b"", MASK),
            ProtocolError::FragmentedControlFrame,
            1002,
        ),
        (
            client_frame(Opcode::Ping, true, &[0; 126]),
            ProtocolError::ControlFrameTooLong(126),
            1002,
        ),
        (
            cont(true, b"x"),
            ProtocolError::UnexpectedContinuation,
            1002,
        ),
        (
            [text_frame(false, b"a"), text_frame(true, b"b")].concat(),
            ProtocolError::ExpectedContinuation,
            1002,
        ),
        (
            vec![0x82, 0xFF, 0x80, 0, 0, 0, 0, 0, 0, 0],
            ProtocolError::LengthTopBitSet,
            1002,
        ),
        (text_frame(true, &[0xff]), ProtocolError::InvalidUtf8, 1007),
        (
            client_frame(Opcode::Close, true, &[3]),
            ProtocolError::InvalidClosePayload,
            1002,
        ),
        (
            client_frame(Opcode::Close, true, &[0x03, 0xed]),
            ProtocolError::BadCloseCode(1005),
            1002,
        ),
        (
            client_frame(Opcode::Close, true, &[0x03, 0xe8, 0xc0]),
            ProtocolError::InvalidUtf8,
            1007,
        ),
        (
            client_frame(Opcode::Binary, true, &[0; 101]),
            ProtocolError::FrameTooLarge {
                size: 101,
                max: 100,
            },
            1009,
        ),
        (
            [text_frame(false, &[b'a'; 100]), cont(true, &[b'b'; 51])].concat(),
            ProtocolError::MessageTooLarge {
                size: 151,
                max: 150,
            },
            1009,
        ),
        (
            [
                text_frame(false, b"a"),
                cont(false, b"b"),
                cont(false, b"c"),
                cont(true, b"d"),
            ]
            .concat(),
            ProtocolError::TooManyFragments { max: 3 },
            1009,
        ),
    ];
    for (bad, error, code) in cases {
        let mut stream = client_frame(Opcode::Text, true, b"before");
        stream.extend_from_slice(&bad);
        stream.extend(client_frame(Opcode::Ping, true, b"after"));
        for result in [run_whole(small, &stream), run_bytewise(small, &stream)] {
            assert_eq!(result.events, [text("before")], "{error}");
            assert_eq!(result.error.as_ref().map(|e| &e.0), Some(&error));
        }
        assert_eq!(error.close_code(), code, "{error}");
    }
}

#[test]
fn header_errors_come_before_the_payload() {
    let small = Limits {
        max_frame_size: 100,
        max_message_size: 150,
        max_fragments: 128,
    };
    // The second byte announces a 101-byte payload: fail right there.
    let stream = client_frame(Opcode::Binary, true, &[0; 101]);
    let result = run_bytewise(small, &stream);
    assert_eq!(
        result.error,
        Some((
            ProtocolError::FrameTooLarge {
                size: 101,
                max: 100
            },
            2
        ))
    );
    // The message limit fails at the continuation header, before its mask.
    let mut stream = client_frame(Opcode::Binary, false, &[0; 100]);
    let first_len = stream.len();
    stream.extend(client_frame(Opcode::Continuation, true, &[0; 60]));
    let result = run_bytewise(small, &stream);
    assert_eq!(
        result.error,
        Some((
            ProtocolError::MessageTooLarge {
                size: 160,
                max: 150
            },
            first_len + 2
        ))
    );
}

/// The Autobahn 6.4.1 payload: valid, then U+110000 in its 4-byte form (invalid at
/// its second byte), then valid again.
fn autobahn_6_4_parts() -> (Vec<u8>, Vec<u8>, Vec<u8>) {
    let first = vec![
        0xce, 0xba, 0xe1, 0xbd, 0xb9, 0xcf, 0x83, 0xce, 0xbc, 0xce, 0xb5,
    ];
    (first, vec![0xf4, 0x90, 0x80, 0x80], b"edited".to_vec())
}

#[test]
fn utf8_fails_fast_across_fragments() {
    let (one, two, three) = autobahn_6_4_parts();
    let first = client_frame(Opcode::Text, false, &one);
    let second = client_frame(Opcode::Continuation, false, &two);
    let third = client_frame(Opcode::Continuation, true, &three);
    let mut reader = Reader::new(Limits::default());
    let result = run(&mut reader, [&first[..], &second[..], &third[..]]);
    assert_eq!(
        result.error,
        Some((ProtocolError::InvalidUtf8, first.len() + second.len()))
    );
    // Byte by byte: the failure comes with the 0x90, the second payload byte of the
    // second frame (header: 2 bytes + 4 of mask).
    let stream = [first.clone(), second, third].concat();
    let result = run_bytewise(Limits::default(), &stream);
    assert_eq!(
        result.error,
        Some((ProtocolError::InvalidUtf8, first.len() + 6 + 2))
    );
}

#[test]
fn utf8_fails_fast_inside_one_frame() {
    // Autobahn 6.4.3/6.4.4: one frame, sent in chops; fail on the chop with 0x90.
    let (one, two, three) = autobahn_6_4_parts();
    let payload = [one.clone(), two, three].concat();
    let stream = client_frame(Opcode::Text, true, &payload);
    let bad_at = 6 + one.len() + 2;
    let chops = [
        &stream[..6 + 12],
        &stream[6 + 12..6 + 13],
        &stream[6 + 13..],
    ];
    let result = run(&mut Reader::new(Limits::default()), chops);
    assert_eq!(result.error, Some((ProtocolError::InvalidUtf8, 6 + 13)));
    let result = run_bytewise(Limits::default(), &stream);
    assert_eq!(result.error, Some((ProtocolError::InvalidUtf8, bad_at)));
    assert!(result.events.is_empty());
}

#[test]
fn code_point_split_across_fragments_and_reads_is_fine() {
    let text_value = "a€b𝄞c";
    let bytes = text_value.as_bytes();
    for cut in 0..=bytes.len() {
        let mut stream = client_frame(Opcode::Text, false, &bytes[..cut]);
        stream.extend(client_frame(Opcode::Continuation, true, &bytes[cut..]));
        let result = run_bytewise(Limits::default(), &stream);
        assert_eq!(result.events, [text(text_value)], "cut {cut}");
        assert_eq!(result.error, None);
    }
}

#[test]
fn incomplete_code_point_at_message_end_is_invalid() {
    let euro = "€".as_bytes();
    for stream in [
        client_frame(Opcode::Text, true, &euro[..2]),
        [
            client_frame(Opcode::Text, false, &euro[..1]),
            client_frame(Opcode::Continuation, true, &euro[1..2]),
        ]
        .concat(),
    ] {
        for result in [
            run_whole(Limits::default(), &stream),
            run_bytewise(Limits::default(), &stream),
        ] {
            assert_eq!(result.error.map(|e| e.0), Some(ProtocolError::InvalidUtf8));
        }
    }
}

#[test]
fn control_frames_between_fragments_come_at_once() {
    let first = client_frame(Opcode::Text, false, b"frag");
    let ping = client_frame(Opcode::Ping, true, b"p");
    let pong = client_frame(Opcode::Pong, true, b"");
    let last = client_frame(Opcode::Continuation, true, b"ment");
    let mut reader = Reader::new(Limits::default());
    let result = run(&mut reader, [&first[..], &ping[..], &pong[..]]);
    assert_eq!(
        result.events,
        [Event::Ping(b"p".to_vec()), Event::Pong(Vec::new())]
    );
    let result = run(&mut reader, [&last[..]]);
    assert_eq!(result.events, [text("fragment")]);
}

#[test]
fn empty_messages_and_fragments() {
    let stream = [
        client_frame(Opcode::Text, true, b""),
        client_frame(Opcode::Binary, false, b""),
        client_frame(Opcode::Continuation, false, b""),
        client_frame(Opcode::Continuation, true, b""),
        client_frame(Opcode::Text, false, b""),
        client_frame(Opcode::Continuation, true, b"x"),
    ]
    .concat();
    let expected = [text(""), Event::Binary(Vec::new()), text("x")];
    assert_eq!(run_whole(Limits::default(), &stream).events, expected);
    assert_eq!(run_bytewise(Limits::default(), &stream).events, expected);
}

#[test]
fn leaves_only_incomplete_headers_and_control_frames() {
    let mut reader = Reader::new(Limits::default());
    let data = client_frame(Opcode::Binary, true, &[1; 1000]);
    // A partial data frame is consumed up to the end of the buffer.
    let mut buf = data[..500].to_vec();
    assert_eq!(reader.read(&mut buf).unwrap(), (500, None));
    let mut buf = data[500..].to_vec();
    let (consumed, event) = reader.read(&mut buf).unwrap();
    assert_eq!(
        (consumed, event),
        (data.len() - 500, Some(Incoming::Binary(&[1; 1000][..])))
    );
    // A partial control frame waits, so it can be handed out in place.
    let ping = client_frame(Opcode::Ping, true, b"abc");
    let mut buf = ping[..ping.len() - 1].to_vec();
    assert_eq!(reader.read(&mut buf).unwrap(), (0, None));
    // So does a partial header.
    let mut buf = data[..3].to_vec();
    assert_eq!(reader.read(&mut buf).unwrap(), (0, None));
}

#[test]
fn large_message_buffer_is_released() {
    let limits = Limits::unlimited_for_echo();
    let mut buf = [
        client_frame(Opcode::Binary, false, &[1; 100_000]),
        client_frame(Opcode::Continuation, true, &[2; 10]),
    ]
    .concat();
    let mut reader = Reader::new(limits);
    let (consumed, event) = reader.read(&mut buf).unwrap();
    assert!(matches!(event, Some(Incoming::Binary(b)) if b.len() == 100_010));
    assert_eq!(consumed, buf.len());
    assert!(reader.message.capacity() >= 100_010);
    assert_eq!(reader.read(&mut []).unwrap(), (0, None));
    assert_eq!(reader.message.capacity(), 0);
}

#[test]
fn echo_limits_take_autobahn_group_9_sizes() {
    let limits = Limits::unlimited_for_echo();
    // 9.1.6: 16 MiB of text in one frame, arriving in 64 KiB reads.
    let payload = "*".repeat(16 << 20);
    let stream = client_frame(Opcode::Text, true, payload.as_bytes());
    let mut reader = Reader::new(limits);
    let result = run(&mut reader, stream.chunks(64 << 10));
    assert_eq!(result.error, None);
    assert!(matches!(&result.events[..], [Event::Text(t)] if t.len() == 16 << 20));
    // 9.3.1: 4 MiB of text in 64-byte fragments, all in one buffer.
    let payload = "ĳ".repeat(2 << 20);
    let mut stream = Vec::with_capacity(payload.len() / 64 * 70);
    let chunks: Vec<&[u8]> = payload.as_bytes().chunks(64).collect();
    for (i, chunk) in chunks.iter().enumerate() {
        let opcode = if i == 0 {
            Opcode::Text
        } else {
            Opcode::Continuation
        };
        stream.extend(client_frame(opcode, i + 1 == chunks.len(), chunk));
    }
    let result = run(&mut reader, [&stream[..]]);
    assert_eq!(result.error, None);
    assert!(matches!(&result.events[..], [Event::Text(t)] if *t == payload));
}

#[derive(Debug, Clone)]
enum Control {
    Ping(Vec<u8>),
    Pong(Vec<u8>),
}

#[derive(Debug, Clone)]
struct Planned {
    text: bool,
    payload: Vec<u8>,
    /// Fragment boundaries (indexes into the payload).
    cuts: Vec<prop::sample::Index>,
    /// Control frames sent after a fragment (which one: an index into the gaps).
    controls: Vec<(prop::sample::Index, Control)>,
    mask: [u8; 4],
}

fn control() -> impl Strategy<Value = Control> {
    let payload = proptest::collection::vec(any::<u8>(), 0..=125);
    prop_oneof![
        payload.clone().prop_map(Control::Ping),
        payload.prop_map(Control::Pong),
    ]
}

fn planned() -> impl Strategy<Value = Planned> {
    let payload = prop_oneof![
        any::<String>().prop_map(|s| (true, s.into_bytes())),
        "[a-zé€𝄞]{0,300}".prop_map(|s| (true, s.into_bytes())),
        proptest::collection::vec(any::<u8>(), 0..400).prop_map(|b| (false, b)),
    ];
    (
        payload,
        proptest::collection::vec(any::<prop::sample::Index>(), 0..5),
        proptest::collection::vec((any::<prop::sample::Index>(), control()), 0..4),
        any::<[u8; 4]>(),
    )
        .prop_map(|((text, payload), cuts, controls, mask)| Planned {
            text,
            payload,
            cuts,
            controls,
            mask,
        })
}

/// Encodes the planned messages as a client would, with the events a server must see.
fn encode_plan(plan: &[Planned]) -> (Vec<u8>, Vec<Event>) {
    let mut stream = Vec::new();
    let mut expected = Vec::new();
    for (n, message) in plan.iter().enumerate() {
        let mut bounds: Vec<usize> = message
            .cuts
            .iter()
            .map(|cut| cut.index(message.payload.len() + 1))
            .collect();
        bounds.push(0);
        bounds.push(message.payload.len());
        bounds.sort_unstable();
        let fragments: Vec<&[u8]> = bounds
            .windows(2)
            .map(|pair| &message.payload[pair[0]..pair[1]])
            .collect();
        for (i, fragment) in fragments.iter().enumerate() {
            let opcode = match (i, message.text) {
                (0, true) => 0x1,
                (0, false) => 0x2,
                _ => 0x0,
            };
            let last = i + 1 == fragments.len();
            let first = if last { 0x80 } else { 0 } | opcode;
            let mask = message.mask.map(|b| b.wrapping_add(i as u8 * 31 + n as u8));
            stream.extend(client_frame_raw(first, fragment, mask));
            if last {
                break;
            }
            for (slot, control) in &message.controls {
                if slot.index(fragments.len() - 1) == i {
                    let (opcode, payload, event) = match control {
                        Control::Ping(p) => (0x89, p, Event::Ping(p.clone())),
                        Control::Pong(p) => (0x8A, p, Event::Pong(p.clone())),
                    };
                    stream.extend(client_frame_raw(opcode, payload, mask));
                    expected.push(event);
                }
            }
        }
        expected.push(if message.text {
            Event::Text(String::from_utf8(message.payload.clone()).unwrap())
        } else {
            Event::Binary(message.payload.clone())
        });
    }
    (stream, expected)
}

proptest! {
    #[test]
    fn round_trip_through_random_reads(
        plan in proptest::collection::vec(planned(), 0..6),
        close in proptest::option::of((1000u16..=1003, "[a-z✓]{0,20}")),
        splits in proptest::collection::vec(any::<prop::sample::Index>(), 0..24),
    ) {
        let (mut stream, mut expected) = encode_plan(&plan);
        if let Some((code, reason)) = &close {
            let payload = [&code.to_be_bytes()[..], reason.as_bytes()].concat();
            stream.extend(client_frame(Opcode::Close, true, &payload));
            expected.push(Event::Close(Some((*code, reason.clone()))));
        }
        let mut bounds: Vec<usize> =
            splits.iter().map(|s| s.index(stream.len() + 1)).collect();
        bounds.push(0);
        bounds.push(stream.len());
        bounds.sort_unstable();
        let reads = bounds.windows(2).map(|pair| &stream[pair[0]..pair[1]]);
        let result = run(&mut Reader::new(Limits::default()), reads);
        prop_assert_eq!(result.error, None);
        prop_assert_eq!(result.events, expected);
        prop_assert_eq!(result.leftover, 0);
    }

    #[test]
    fn never_panics_on_random_bytes(
        bytes in proptest::collection::vec(any::<u8>(), 0..300),
        splits in proptest::collection::vec(any::<prop::sample::Index>(), 0..8),
    ) {
        let mut bounds: Vec<usize> =
            splits.iter().map(|s| s.index(bytes.len() + 1)).collect();
        bounds.push(0);
        bounds.push(bytes.len());
        bounds.sort_unstable();
        let reads = bounds.windows(2).map(|pair| &bytes[pair[0]..pair[1]]);
        let _ = run(&mut Reader::new(Limits::default()), reads);
    }
}
