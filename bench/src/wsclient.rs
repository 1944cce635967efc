//! The client side of RFC 6455, sans-IO: the upgrade request, the check of the `101`, a
//! masked frame writer and an unmasked frame reader.
//!
//! The server's stack (`kasagi::ws`) is server-only (it requires masked frames), so the
//! bench carries this small mirror image. It is tuned for a load generator: the writer
//! appends a whole frame to a caller's buffer in one pass, the reader returns borrowed
//! payloads of unfragmented messages without copying.
//!
//! Invariants:
//! - [`read_frame`] never panics on server bytes; "need more bytes" is `Ok(None)`.
//! - Every frame [`write_frame`] produces is masked with a fresh key (a client MUST mask
//!   every frame it sends, RFC 6455 5.3).

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use sha1::{Digest, Sha1};
use thiserror::Error;

/// The GUID of RFC 6455 4.2.2, appended to the key to compute `Sec-WebSocket-Accept`.
const ACCEPT_GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

pub const OP_CONTINUATION: u8 = 0x0;
pub const OP_TEXT: u8 = 0x1;
pub const OP_BINARY: u8 = 0x2;
pub const OP_CLOSE: u8 = 0x8;
pub const OP_PING: u8 = 0x9;
pub const OP_PONG: u8 = 0xA;

/// Why the server's bytes are not a WebSocket the bench can talk to.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum ClientWsError {
    #[error("the upgrade response is not valid HTTP: {0}")]
    BadResponse(String),
    #[error("the server answered {0} instead of 101")]
    NotSwitching(u16),
    #[error("Sec-WebSocket-Accept does not match the key")]
    AcceptMismatch,
    #[error("the server picked subprotocol {got:?}, the bench offered {offered:?}")]
    SubprotocolMismatch {
        offered: String,
        got: Option<String>,
    },
    #[error("the upgrade response is larger than {0} bytes")]
    ResponseTooLarge(usize),
    #[error("a frame from the server is masked (a server MUST NOT mask, RFC 6455 5.1)")]
    MaskedServerFrame,
    #[error("reserved bits set in a server frame")]
    ReservedBits,
    #[error("a frame of {0} bytes is above the bench's limit")]
    FrameTooLarge(u64),
}

/// What the client keeps between sending the upgrade and reading its answer.
#[derive(Debug, Clone)]
pub struct Upgrade {
    key: String,
    subprotocol: Option<String>,
}

/// Writes the upgrade request for `path` on `host` into `out` and returns what the
/// response must match. `nonce` seeds the 16-byte key; keys need not be secret here.
pub fn write_upgrade(
    out: &mut Vec<u8>,
    host: &str,
    path: &str,
    subprotocol: Option<&str>,
    nonce: u64,
) -> Upgrade {
    let mut raw = [0u8; 16];
    raw[..8].copy_from_slice(&nonce.to_le_bytes());
    raw[8..].copy_from_slice(
        &nonce
            .rotate_left(29)
            .wrapping_mul(0x9E37_79B9_7F4A_7C15)
            .to_le_bytes(),
    );
    let key = BASE64.encode(raw);
    out.extend_from_slice(b"GET ");
    out.extend_from_slice(path.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\nHost: ");
    out.extend_from_slice(host.as_bytes());
    out.extend_from_slice(
        b"\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: ",
    );
    out.extend_from_slice(key.as_bytes());
    if let Some(name) = subprotocol {
        out.extend_from_slice(b"\r\nSec-WebSocket-Protocol: ");
        out.extend_from_slice(name.as_bytes());
    }
    out.extend_from_slice(b"\r\n\r\n");
    Upgrade {
        key,
        subprotocol: subprotocol.map(str::to_owned),
    }
}

/// The largest upgrade response the bench reads before giving up.
pub const MAX_RESPONSE_BYTES: usize = 16 << 10;

/// Checks the server's answer to [`write_upgrade`]. `Ok(None)`: need more bytes;
/// `Ok(Some(n))`: the response took the first `n` bytes, frames follow.
pub fn read_upgrade_response(
    buf: &[u8],
    upgrade: &Upgrade,
) -> Result<Option<usize>, ClientWsError> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut response = httparse::Response::new(&mut headers);
    let len = match response.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) if buf.len() > MAX_RESPONSE_BYTES => {
            return Err(ClientWsError::ResponseTooLarge(MAX_RESPONSE_BYTES))
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(err) => return Err(ClientWsError::BadResponse(err.to_string())),
    };
    let code = response.code.unwrap_or(0);
    if code != 101 {
        return Err(ClientWsError::NotSwitching(code));
    }
    let header = |name: &str| {
        response
            .headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .and_then(|h| std::str::from_utf8(h.value).ok())
            .map(str::trim)
    };
    if header("sec-websocket-accept") != Some(accept_for(&upgrade.key).as_str()) {
        return Err(ClientWsError::AcceptMismatch);
    }
    let got = header("sec-websocket-protocol");
    // With no offer the server names none; with an offer it names the one we sent.
    if got != upgrade.subprotocol.as_deref() {
        return Err(ClientWsError::SubprotocolMismatch {
            offered: upgrade.subprotocol.clone().unwrap_or_default(),
            got: got.map(str::to_owned),
        });
    }
    Ok(Some(len))
}

/// `Sec-WebSocket-Accept` for a key (RFC 6455 4.2.2).
pub fn accept_for(key: &str) -> String {
    let mut sha = Sha1::new();
    sha.update(key.as_bytes());
    sha.update(ACCEPT_GUID.as_bytes());
    BASE64.encode(sha.finalize())
}

/// A cheap generator of masking keys (xorshift64*): masking guards proxies, not secrets.
#[derive(Debug, Clone)]
pub struct MaskKeys(u64);

impl MaskKeys {
    pub fn new(seed: u64) -> Self {
        MaskKeys(seed | 1)
    }

    pub fn next_key(&mut self) -> [u8; 4] {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        let v = self.0.wrapping_mul(0x2545_F491_4F6C_DD1D);
        (v as u32).to_le_bytes()
    }
}

/// Appends one final, masked frame of `opcode` carrying `payload` to `out`.
pub fn write_frame(out: &mut Vec<u8>, opcode: u8, payload: &[u8], key: [u8; 4]) {
    let start = write_frame_header(out, opcode, payload.len(), key);
    out.extend_from_slice(payload);
    mask_in_place(&mut out[start..], key);
}

/// Appends the header of a final masked frame of `len` payload bytes; returns where the
/// payload starts. The caller appends the payload and masks it with [`mask_in_place`].
pub fn write_frame_header(out: &mut Vec<u8>, opcode: u8, len: usize, key: [u8; 4]) -> usize {
    out.push(0x80 | opcode);
    match len {
        0..=125 => out.push(0x80 | len as u8),
        126..=0xFFFF => {
            out.push(0x80 | 126);
            out.extend_from_slice(&(len as u16).to_be_bytes());
        }
        _ => {
            out.push(0x80 | 127);
            out.extend_from_slice(&(len as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(&key);
    out.len()
}

/// XORs `data` with the repeated 4-byte key, in words where it can.
pub fn mask_in_place(data: &mut [u8], key: [u8; 4]) {
    let word = u32::from_ne_bytes(key);
    let mut chunks = data.chunks_exact_mut(4);
    for chunk in &mut chunks {
        let v = u32::from_ne_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]) ^ word;
        chunk.copy_from_slice(&v.to_ne_bytes());
    }
    for (i, b) in chunks.into_remainder().iter_mut().enumerate() {
        *b ^= key[i];
    }
}

/// One frame read from the server; the payload is `buf[payload]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FrameHead {
    pub fin: bool,
    pub opcode: u8,
    pub payload: std::ops::Range<usize>,
}

/// Reads one server frame from the front of `buf`. `Ok(None)`: need more bytes;
/// `Ok(Some((head, n)))`: the frame took `n` bytes.
pub fn read_frame(
    buf: &[u8],
    max_payload: u64,
) -> Result<Option<(FrameHead, usize)>, ClientWsError> {
    if buf.len() < 2 {
        return Ok(None);
    }
    let (b0, b1) = (buf[0], buf[1]);
    if b0 & 0x70 != 0 {
        return Err(ClientWsError::ReservedBits);
    }
    if b1 & 0x80 != 0 {
        return Err(ClientWsError::MaskedServerFrame);
    }
    let (len, header) = match b1 & 0x7F {
        126 => match buf.get(2..4) {
            Some(b) => (u64::from(u16::from_be_bytes([b[0], b[1]])), 4),
            None => return Ok(None),
        },
        127 => match buf.get(2..10) {
            Some(b) => {
                let mut raw = [0u8; 8];
                raw.copy_from_slice(b);
                (u64::from_be_bytes(raw), 10)
            }
            None => return Ok(None),
        },
        short => (u64::from(short), 2),
    };
    if len > max_payload {
        return Err(ClientWsError::FrameTooLarge(len));
    }
    // `len <= max_payload`, which the caller keeps within memory.
    let end = header + len as usize;
    if buf.len() < end {
        return Ok(None);
    }
    Ok(Some((
        FrameHead {
            fin: b0 & 0x80 != 0,
            opcode: b0 & 0x0F,
            payload: header..end,
        },
        end,
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_matches_the_rfc_example() {
        assert_eq!(
            accept_for("dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    #[test]
    fn upgrade_round_trip() {
        let mut out = Vec::new();
        let up = write_upgrade(&mut out, "h", "/ws", Some("kasagi.v1.json"), 7);
        let text = String::from_utf8(out).expect("ascii");
        assert!(text.starts_with("GET /ws HTTP/1.1\r\n"));
        assert!(text.contains("Sec-WebSocket-Protocol: kasagi.v1.json\r\n"));
        let resp = format!(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {}\r\nSec-WebSocket-Protocol: kasagi.v1.json\r\n\r\nXY",
            accept_for(&up.key)
        );
        let n = read_upgrade_response(resp.as_bytes(), &up)
            .expect("valid")
            .expect("complete");
        assert_eq!(&resp.as_bytes()[n..], b"XY");
        assert_eq!(read_upgrade_response(&resp.as_bytes()[..20], &up), Ok(None));
        let refused = b"HTTP/1.1 400 Bad Request\r\n\r\n";
        assert_eq!(
            read_upgrade_response(refused, &up),
            Err(ClientWsError::NotSwitching(400))
        );
    }

    #[test]
    fn masked_frames_unmask_to_the_payload() {
        for len in [0usize, 5, 125, 126, 1000, 70_000] {
            let payload: Vec<u8> = (0..len).map(|i| i as u8).collect();
            let key = MaskKeys::new(len as u64).next_key();
            let mut out = Vec::new();
            write_frame(&mut out, OP_BINARY, &payload, key);
            assert_eq!(out[0], 0x82);
            assert_ne!(out[1] & 0x80, 0);
            let header = out.len() - len;
            let mut body = out[header..].to_vec();
            mask_in_place(&mut body, key);
            assert_eq!(body, payload);
        }
    }

    #[test]
    fn server_frames_parse_and_need_more_bytes() {
        let mut frame = vec![0x81, 126, 0x01, 0x00];
        frame.extend(std::iter::repeat_n(b'a', 256));
        for cut in 0..frame.len() {
            assert_eq!(read_frame(&frame[..cut], 1 << 20), Ok(None));
        }
        let (head, n) = read_frame(&frame, 1 << 20)
            .expect("valid")
            .expect("complete");
        assert_eq!(n, frame.len());
        assert_eq!(head.opcode, OP_TEXT);
        assert!(head.fin);
        assert_eq!(head.payload, 4..260);
        assert_eq!(
            read_frame(&frame, 10),
            Err(ClientWsError::FrameTooLarge(256))
        );
        assert_eq!(
            read_frame(&[0x82, 0x81, 0, 0, 0, 0, 0], 10),
            Err(ClientWsError::MaskedServerFrame)
        );
    }
}
