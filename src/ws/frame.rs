//! The RFC 6455 frame codec, server side.
//!
//! Decoding reads the header of a client frame and enforces every header rule a server
//! must ([`decode_header`]); the payload is unmasked with [`apply_mask`]. Encoding writes
//! server frames, which are never masked ("A server MUST NOT mask any frames that it sends
//! to the client", section 5.1), so a server header is at most [`MAX_HEADER_LEN`] bytes.
//!
//! ```text
//!  0               1               2               3
//!  0 1 2 3 4 5 6 7 0 1 2 3 4 5 6 7 0 1 2 3 4 5 6 7 0 1 2 3 4 5 6 7
//! +-+-+-+-+-------+-+-------------+-------------------------------+
//! |F|R|R|R| opcode|M| Payload len |    Extended payload length    |
//! |I|S|S|S|  (4)  |A|     (7)     |             (16/64)           |
//! |N|V|V|V|       |S|             |   (if payload len==126/127)   |
//! | |1|2|3|       |K|             |                               |
//! +-+-+-+-+-------+-+-------------+ - - - - - - - - - - - - - - - +
//! |     Extended payload length continued, if payload len == 127  |
//! + - - - - - - - - - - - - - - - +-------------------------------+
//! |                               | Masking-key, if MASK set to 1 |
//! +-------------------------------+-------------------------------+
//! ```
//!
//! Non-minimal length encodings (say, 5 written in the 16-bit form) are accepted: the
//! RFC puts the minimal encoding on the sender, Autobahn|Testsuite does not test it, and
//! refusing them protects nothing since the length limits apply to the decoded value.

use bytes::{Buf, Bytes};

use super::{Limits, ProtocolError};

/// Longest header of a server frame: 2 bytes plus a 64-bit length, no masking key.
pub const MAX_HEADER_LEN: usize = 10;

/// Longest payload of a control frame (section 5.5).
pub const MAX_CONTROL_PAYLOAD: usize = 125;

/// Frame opcodes defined by RFC 6455 (section 5.2); the others are reserved.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Opcode {
    /// 0x0: continues a fragmented message.
    Continuation,
    /// 0x1: first (or only) frame of a UTF-8 text message.
    Text,
    /// 0x2: first (or only) frame of a binary message.
    Binary,
    /// 0x8: close.
    Close,
    /// 0x9: ping.
    Ping,
    /// 0xA: pong.
    Pong,
}

impl Opcode {
    /// The opcode for the low 4 bits of a frame's first byte, `None` if reserved.
    pub fn from_u8(value: u8) -> Option<Opcode> {
        match value {
            0x0 => Some(Opcode::Continuation),
            0x1 => Some(Opcode::Text),
            0x2 => Some(Opcode::Binary),
            0x8 => Some(Opcode::Close),
            0x9 => Some(Opcode::Ping),
            0xA => Some(Opcode::Pong),
            _ => None,
        }
    }

    /// The wire value.
    pub fn as_u8(self) -> u8 {
        match self {
            Opcode::Continuation => 0x0,
            Opcode::Text => 0x1,
            Opcode::Binary => 0x2,
            Opcode::Close => 0x8,
            Opcode::Ping => 0x9,
            Opcode::Pong => 0xA,
        }
    }

    /// Close, ping and pong: never fragmented, at most 125 payload bytes.
    pub fn is_control(self) -> bool {
        self.as_u8() & 0x8 != 0
    }
}

/// The decoded header of a client frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    /// Last frame of its message.
    pub fin: bool,
    /// The frame's opcode.
    pub opcode: Opcode,
    /// Masking key; client frames always carry one.
    pub mask: [u8; 4],
    /// Payload length, already checked against [`Limits::max_frame_size`] (and against
    /// 125 for control frames).
    pub payload_len: usize,
}

/// Decodes the header of a client frame at the start of `buf`.
///
/// Returns `Ok(None)` while `buf` does not yet hold the whole header, else the header and
/// its length in bytes (the payload starts right after it). Each rule is checked as soon
/// as the bytes it depends on are present, so a bad frame fails before the rest of its
/// header (or any of its payload) arrives.
pub fn decode_header(
    buf: &[u8],
    limits: &Limits,
) -> Result<Option<(FrameHeader, usize)>, ProtocolError> {
    decode_header_with(buf, limits, |_, _, _| Ok(()))
}

/// [`decode_header`] with one more rule: `check(opcode, fin, payload_len)` runs as soon as
/// the length is known (before the masking key arrives), so the reader can fail rules
/// that depend on its state (fragmentation, message size) as early as the header allows.
/// It may run more than once for one header while more bytes are awaited.
pub(crate) fn decode_header_with(
    buf: &[u8],
    limits: &Limits,
    check: impl FnOnce(Opcode, bool, usize) -> Result<(), ProtocolError>,
) -> Result<Option<(FrameHeader, usize)>, ProtocolError> {
    let Some(&first) = buf.first() else {
        return Ok(None);
    };
    let fin = first & 0x80 != 0;
    if first & 0x70 != 0 {
        return Err(ProtocolError::ReservedBitsSet);
    }
    let opcode = Opcode::from_u8(first & 0x0F).ok_or(ProtocolError::UnknownOpcode(first & 0x0F))?;
    if opcode.is_control() && !fin {
        return Err(ProtocolError::FragmentedControlFrame);
    }

    let Some(&second) = buf.get(1) else {
        return Ok(None);
    };
    // "The server MUST close the connection upon receiving a frame that is not masked."
    if second & 0x80 == 0 {
        return Err(ProtocolError::UnmaskedFrame);
    }
    let (len, mask_at) = match second & 0x7F {
        126 => {
            let Some(&[high, low]) = buf.get(2..4) else {
                return Ok(None);
            };
            (u64::from(u16::from_be_bytes([high, low])), 4)
        }
        127 => {
            let Some(bytes) = buf.get(2..10).and_then(|b| <[u8; 8]>::try_from(b).ok()) else {
                return Ok(None);
            };
            let len = u64::from_be_bytes(bytes);
            // "the most significant bit MUST be 0"
            if len >> 63 != 0 {
                return Err(ProtocolError::LengthTopBitSet);
            }
            (len, 10)
        }
        short => (u64::from(short), 2),
    };
    if opcode.is_control() && len > MAX_CONTROL_PAYLOAD as u64 {
        return Err(ProtocolError::ControlFrameTooLong(len));
    }
    let too_large = ProtocolError::FrameTooLarge {
        size: len,
        max: limits.max_frame_size,
    };
    if len > limits.max_frame_size as u64 {
        return Err(too_large);
    }
    let payload_len = usize::try_from(len).map_err(|_| too_large)?;
    check(opcode, fin, payload_len)?;

    let Some(mask) = buf
        .get(mask_at..mask_at + 4)
        .and_then(|b| <[u8; 4]>::try_from(b).ok())
    else {
        return Ok(None);
    };
    let header = FrameHeader {
        fin,
        opcode,
        mask,
        payload_len,
    };
    Ok(Some((header, mask_at + 4)))
}

/// XORs `buf` with the masking key (section 5.3), in place; masking and unmasking are
/// the same operation.
///
/// `offset` is the number of payload bytes of this frame already processed by earlier
/// calls, so a payload that arrives in pieces can be unmasked piece by piece: byte `i` of
/// `buf` is payload byte `offset + i` and is XORed with `key[(offset + i) % 4]`.
pub fn apply_mask(buf: &mut [u8], key: [u8; 4], offset: usize) {
    let phase = offset % 4;
    let rotated = [
        key[phase],
        key[(phase + 1) % 4],
        key[(phase + 2) % 4],
        key[(phase + 3) % 4],
    ];
    // Eight bytes at a time: 8 is a multiple of 4, so every chunk starts at phase 0 of
    // the rotated key.
    let [a, b, c, d] = rotated;
    let wide = u64::from_ne_bytes([a, b, c, d, a, b, c, d]);
    let mut chunks = buf.chunks_exact_mut(8);
    for chunk in &mut chunks {
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        let masked = u64::from_ne_bytes(word) ^ wide;
        chunk.copy_from_slice(&masked.to_ne_bytes());
    }
    for (byte, key_byte) in chunks
        .into_remainder()
        .iter_mut()
        .zip(rotated.iter().cycle())
    {
        *byte ^= key_byte;
    }
}

/// Length of the header [`write_header`] writes for a payload of `len` bytes.
pub fn header_len(len: usize) -> usize {
    if len < 126 {
        2
    } else if len <= usize::from(u16::MAX) {
        4
    } else {
        10
    }
}

/// Appends an unmasked server frame header (minimal length encoding) to `out`.
pub fn write_header(out: &mut Vec<u8>, opcode: Opcode, fin: bool, len: usize) {
    let (header, used) = encode_header(opcode, fin, len);
    out.extend_from_slice(&header[..used]);
}

/// The header bytes (left-aligned) and their count.
fn encode_header(opcode: Opcode, fin: bool, len: usize) -> ([u8; MAX_HEADER_LEN], usize) {
    let mut header = [0u8; MAX_HEADER_LEN];
    header[0] = if fin { 0x80 } else { 0 } | opcode.as_u8();
    let used = if len < 126 {
        // `len < 126` fits in the 7-bit field.
        header[1] = len as u8;
        2
    } else if let Ok(short) = u16::try_from(len) {
        header[1] = 126;
        header[2..4].copy_from_slice(&short.to_be_bytes());
        4
    } else {
        header[1] = 127;
        header[2..10].copy_from_slice(&(len as u64).to_be_bytes());
        10
    };
    (header, used)
}

/// A complete, unfragmented server frame.
pub fn encode_frame(opcode: Opcode, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(header_len(payload.len()) + payload.len());
    write_header(&mut out, opcode, true, payload.len());
    out.extend_from_slice(payload);
    out
}

/// A close frame with `code` and `reason`.
///
/// The reason is cut at the last character boundary that keeps the payload within the
/// 125 bytes allowed for a control frame (2 bytes of code + at most 123 of reason).
pub fn close_frame(code: u16, reason: &str) -> Vec<u8> {
    let mut end = reason.len().min(MAX_CONTROL_PAYLOAD - 2);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    let reason = &reason.as_bytes()[..end];
    let mut out = Vec::with_capacity(2 + 2 + reason.len());
    write_header(&mut out, Opcode::Close, true, 2 + reason.len());
    out.extend_from_slice(&code.to_be_bytes());
    out.extend_from_slice(reason);
    out
}

/// A buffer for [`frame_in_place`]: `MAX_HEADER_LEN` placeholder bytes, room for
/// `capacity` payload bytes after them. Append the payload (e.g. serialize into it).
pub fn payload_buffer(capacity: usize) -> Vec<u8> {
    let mut buf = Vec::with_capacity(MAX_HEADER_LEN + capacity);
    buf.resize(MAX_HEADER_LEN, 0);
    buf
}

/// Turns a buffer from [`payload_buffer`] (placeholder, then payload) into a complete
/// unfragmented frame without copying the payload: the header is written right-aligned
/// into the placeholder and the returned `Bytes` starts at it. Cloning the result to send
/// the same frame to many sockets copies nothing either.
///
/// # Panics
///
/// If `buf` is shorter than [`MAX_HEADER_LEN`], i.e. does not start with the placeholder:
/// a bug in the caller, never a consequence of client bytes.
pub fn frame_in_place(mut buf: Vec<u8>, opcode: Opcode) -> Bytes {
    assert!(
        buf.len() >= MAX_HEADER_LEN,
        "frame_in_place needs a buffer from payload_buffer"
    );
    let payload_len = buf.len() - MAX_HEADER_LEN;
    let (header, used) = encode_header(opcode, true, payload_len);
    let start = MAX_HEADER_LEN - used;
    buf[start..MAX_HEADER_LEN].copy_from_slice(&header[..used]);
    let mut bytes = Bytes::from(buf);
    bytes.advance(start);
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn limits() -> Limits {
        Limits::default()
    }

    #[test]
    fn rfc_single_frame_masked_hello() {
        let mut frame = [
            0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58,
        ];
        let (header, len) = decode_header(&frame, &limits()).unwrap().unwrap();
        assert_eq!(len, 6);
        assert_eq!(
            header,
            FrameHeader {
                fin: true,
                opcode: Opcode::Text,
                mask: [0x37, 0xfa, 0x21, 0x3d],
                payload_len: 5,
            }
        );
        apply_mask(&mut frame[6..], header.mask, 0);
        assert_eq!(&frame[6..], b"Hello");
    }

    #[test]
    fn header_needs_every_byte() {
        let frame = [0x82, 0xFE, 0x01, 0x00, 1, 2, 3, 4];
        for cut in 0..frame.len() {
            assert_eq!(
                decode_header(&frame[..cut], &limits()),
                Ok(None),
                "cut {cut}"
            );
        }
        let (header, len) = decode_header(&frame, &limits()).unwrap().unwrap();
        assert_eq!((header.payload_len, len), (256, 8));
    }

    #[test]
    fn sixty_four_bit_length() {
        let frame = [0x82, 0xFF, 0, 0, 0, 0, 0, 1, 0, 0, 9, 9, 9, 9];
        let (header, len) = decode_header(&frame, &limits()).unwrap().unwrap();
        assert_eq!((header.payload_len, len), (65_536, 14));
    }

    #[test]
    fn non_minimal_length_is_accepted() {
        let frame = [0x81, 0xFE, 0x00, 0x05, 1, 2, 3, 4];
        let (header, _) = decode_header(&frame, &limits()).unwrap().unwrap();
        assert_eq!(header.payload_len, 5);
        let frame = [0x89, 0xFF, 0, 0, 0, 0, 0, 0, 0, 7, 1, 2, 3, 4];
        let (header, _) = decode_header(&frame, &limits()).unwrap().unwrap();
        assert_eq!((header.opcode, header.payload_len), (Opcode::Ping, 7));
    }

    #[test]
    fn header_rules_fail_fast() {
        let cases: [(&[u8], ProtocolError); 11] = [
            (&[0xC1], ProtocolError::ReservedBitsSet),
            (&[0xA1], ProtocolError::ReservedBitsSet),
            (&[0x91], ProtocolError::ReservedBitsSet),
            (&[0x83], ProtocolError::UnknownOpcode(3)),
            (&[0x87], ProtocolError::UnknownOpcode(7)),
            (&[0x8B], ProtocolError::UnknownOpcode(0xB)),
            (&[0x8F], ProtocolError::UnknownOpcode(0xF)),
            (&[0x09], ProtocolError::FragmentedControlFrame),
            (&[0x81, 0x05], ProtocolError::UnmaskedFrame),
            (
                &[0x89, 0xFE, 0x00, 0x7E],
                ProtocolError::ControlFrameTooLong(126),
            ),
            (
                &[0x82, 0xFF, 0x80, 0, 0, 0, 0, 0, 0, 1],
                ProtocolError::LengthTopBitSet,
            ),
        ];
        for (bytes, error) in cases {
            assert_eq!(
                decode_header(bytes, &limits()),
                Err(error.clone()),
                "{bytes:x?}"
            );
        }
        assert_eq!(
            decode_header(&[0x8A, 0xFE], &limits()),
            Ok(None),
            "a 16-bit control length may still be small"
        );
    }

    #[test]
    fn frame_size_limit_before_payload_and_mask() {
        let frame = [0x82, 0xFF, 0, 0, 0, 0, 0, 1, 0, 1];
        assert_eq!(
            decode_header(&frame, &limits()),
            Err(ProtocolError::FrameTooLarge {
                size: 65_537,
                max: 65_536
            })
        );
        let small = Limits {
            max_frame_size: 10,
            ..Limits::default()
        };
        assert_eq!(
            decode_header(&[0x82, 0x8B], &small),
            Err(ProtocolError::FrameTooLarge { size: 11, max: 10 })
        );
        assert!(decode_header(&[0x82, 0x8A, 0, 0, 0, 0], &small)
            .unwrap()
            .is_some());
    }

    #[test]
    fn rfc_unmasked_examples_encode() {
        assert_eq!(encode_frame(Opcode::Text, b"Hello"), b"\x81\x05Hello");
        let mut first = Vec::new();
        write_header(&mut first, Opcode::Text, false, 3);
        first.extend_from_slice(b"Hel");
        assert_eq!(first, b"\x01\x03Hel");
        let mut last = Vec::new();
        write_header(&mut last, Opcode::Continuation, true, 2);
        last.extend_from_slice(b"lo");
        assert_eq!(last, b"\x80\x02lo");
        assert_eq!(encode_frame(Opcode::Ping, b"Hello"), b"\x89\x05Hello");
        assert_eq!(encode_frame(Opcode::Pong, b"Hello"), b"\x8a\x05Hello");
    }

    #[test]
    fn rfc_length_encodings() {
        let frame = encode_frame(Opcode::Binary, &[7; 256]);
        assert_eq!(&frame[..4], &[0x82, 0x7E, 0x01, 0x00]);
        assert_eq!(frame.len(), 4 + 256);
        let frame = encode_frame(Opcode::Binary, &vec![7; 65_536]);
        assert_eq!(&frame[..10], &[0x82, 0x7F, 0, 0, 0, 0, 0, 1, 0, 0]);
        assert_eq!(frame.len(), 10 + 65_536);
        for (len, header) in [(0, 2), (125, 2), (126, 4), (65_535, 4), (65_536, 10)] {
            assert_eq!(header_len(len), header);
            let mut out = Vec::new();
            write_header(&mut out, Opcode::Binary, true, len);
            assert_eq!(out.len(), header);
        }
    }

    #[test]
    fn close_frame_truncates_at_char_boundary() {
        assert_eq!(close_frame(1000, ""), b"\x88\x02\x03\xe8");
        assert_eq!(close_frame(1001, "bye"), b"\x88\x05\x03\xe9bye");
        // 61 two-byte characters = 122 bytes; the 62nd would end at byte 124 > 123.
        let reason = "é".repeat(80);
        let frame = close_frame(1002, &reason);
        assert_eq!(frame[1] as usize, 2 + 122);
        assert_eq!(frame.len(), 2 + 2 + 122);
        assert!(std::str::from_utf8(&frame[4..]).is_ok());
        let frame = close_frame(1000, &"a".repeat(200));
        assert_eq!(frame[1], 125);
    }

    #[test]
    fn frame_in_place_matches_encode_frame() {
        for len in [0usize, 1, 125, 126, 65_535, 65_536, 70_000] {
            let payload: Vec<u8> = (0..len).map(|i| i as u8).collect();
            let mut buf = payload_buffer(len);
            assert_eq!(buf.len(), MAX_HEADER_LEN);
            buf.extend_from_slice(&payload);
            let payload_ptr = buf[MAX_HEADER_LEN..].as_ptr();
            let framed = frame_in_place(buf, Opcode::Binary);
            assert_eq!(&framed[..], &encode_frame(Opcode::Binary, &payload)[..]);
            let header = header_len(len);
            assert_eq!(framed[header..].as_ptr(), payload_ptr, "payload was copied");
        }
    }

    fn mask_reference(buf: &mut [u8], key: [u8; 4], offset: usize) {
        for (i, byte) in buf.iter_mut().enumerate() {
            *byte ^= key[(offset + i) % 4];
        }
    }

    proptest! {
        #[test]
        fn mask_matches_reference(
            data in proptest::collection::vec(any::<u8>(), 0..200),
            key in any::<[u8; 4]>(),
            offset in 0usize..1000,
        ) {
            let mut fast = data.clone();
            let mut slow = data.clone();
            apply_mask(&mut fast, key, offset);
            mask_reference(&mut slow, key, offset);
            prop_assert_eq!(&fast, &slow);
        }

        #[test]
        fn mask_in_pieces_equals_mask_at_once(
            data in proptest::collection::vec(any::<u8>(), 0..200),
            key in any::<[u8; 4]>(),
            cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..6),
        ) {
            let mut whole = data.clone();
            apply_mask(&mut whole, key, 0);
            let mut cuts: Vec<usize> = cuts.iter().map(|c| c.index(data.len() + 1)).collect();
            cuts.push(0);
            cuts.push(data.len());
            cuts.sort_unstable();
            let mut pieces = data.clone();
            for pair in cuts.windows(2) {
                apply_mask(&mut pieces[pair[0]..pair[1]], key, pair[0]);
            }
            prop_assert_eq!(whole, pieces);
        }

        #[test]
        fn header_round_trip(
            opcode in prop::sample::select(vec![
                Opcode::Continuation, Opcode::Text, Opcode::Binary,
                Opcode::Close, Opcode::Ping, Opcode::Pong,
            ]),
            fin in any::<bool>(),
            len in prop_oneof![0usize..200, 60_000usize..70_000],
            mask in any::<[u8; 4]>(),
        ) {
            let fin = fin || opcode.is_control();
            let len = if opcode.is_control() { len % 126 } else { len };
            // A server header plus the MASK bit and a key is a client header.
            let mut bytes = Vec::new();
            write_header(&mut bytes, opcode, fin, len);
            bytes[1] |= 0x80;
            bytes.extend_from_slice(&mask);
            let decoded = decode_header(&bytes, &Limits::unlimited_for_echo()).unwrap();
            prop_assert_eq!(
                decoded,
                Some((FrameHeader { fin, opcode, mask, payload_len: len }, bytes.len()))
            );
        }

        #[test]
        fn decode_header_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..16)) {
            let _ = decode_header(&bytes, &limits());
        }
    }
}
