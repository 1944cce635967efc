//! The HTTP/1.1 side of the port: request parsing, the upgrade decision and the answers.
//!
//! One port serves plain HTTP and WebSocket (`PROTOCOL.md`, "HTTP and the handshake").
//! The connection task feeds its read buffer to [`parse_request`] until it returns a
//! request, routes on [`Request::path`], and for the WebSocket path asks
//! [`check_upgrade`], then writes [`write_accept`] or [`write_refusal`].
//!
//! The refusal order of `PROTOCOL.md` is: method and HTTP version, path, `Upgrade` and
//! `Connection` tokens, `Sec-WebSocket-Key`, `Sec-WebSocket-Version`, subprotocol,
//! `Origin`, token. The path is the caller's (it decides between HTTP and upgrade; call
//! [`check_request_line`] before routing to keep the order), and so is the token check:
//! [`check_upgrade`] extracts the token and the caller verifies it ([`Refusal::Unauthorized`]).
//! The header limits (431) apply before any of these, while the request is being read.
//!
//! Invariants: never panics on client bytes; no I/O; header names and the
//! `Upgrade`/`Connection` tokens compare case-insensitively.

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use sha1::{Digest, Sha1};

/// The GUID of RFC 6455 section 1.3, appended to the key to compute the accept value.
const ACCEPT_GUID: &[u8] = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// Bounds on the request header block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HandshakeLimits {
    /// Largest header block in bytes, request line and final empty line included.
    /// Default: 8 KiB (8 192 bytes).
    pub max_header_bytes: usize,
    /// Most header fields. Default: 64.
    pub max_headers: usize,
}

impl Default for HandshakeLimits {
    fn default() -> Self {
        HandshakeLimits {
            max_header_bytes: 8 << 10,
            max_headers: 64,
        }
    }
}

/// Why a request gets no `101`. Each variant is one row of the refusal table of
/// `PROTOCOL.md`; [`Refusal::status`] is its HTTP status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The header block did not end within [`HandshakeLimits::max_header_bytes`] (431).
    #[error("header block larger than {max} bytes")]
    HeaderBlockTooLarge {
        /// The limit.
        max: usize,
    },
    /// More header fields than [`HandshakeLimits::max_headers`] (431).
    #[error("more than {max} header fields")]
    TooManyHeaders {
        /// The limit.
        max: usize,
    },
    /// Not an HTTP/1.x request (400).
    #[error("malformed request: {0}")]
    Malformed(httparse::Error),
    /// The method is not `GET` (400).
    #[error("method must be GET")]
    MethodNotGet,
    /// The version is not HTTP/1.1 (400).
    #[error("version must be HTTP/1.1")]
    NotHttp11,
    /// No `Upgrade: websocket` (400).
    #[error("missing Upgrade: websocket")]
    MissingUpgradeToken,
    /// No `upgrade` token in `Connection` (400).
    #[error("missing Connection: Upgrade")]
    MissingConnectionToken,
    /// `Sec-WebSocket-Key` missing, repeated, or not base64 of 16 bytes (400).
    #[error("missing or malformed Sec-WebSocket-Key")]
    BadKey,
    /// `Sec-WebSocket-Version` missing, repeated or not 13 (426, with
    /// `Sec-WebSocket-Version: 13` in the answer).
    #[error("Sec-WebSocket-Version must be 13")]
    UnsupportedVersion,
    /// A subprotocol offer that names none of ours (400).
    #[error("no supported subprotocol offered")]
    NoCommonSubprotocol,
    /// `Origin` not in the allow-list (403).
    #[error("origin not allowed")]
    OriginNotAllowed,
    /// Token missing or invalid, when auth is on (401). Decided by the caller.
    #[error("missing or invalid token")]
    Unauthorized,
}

impl Refusal {
    /// The HTTP status to answer with.
    pub fn status(&self) -> u16 {
        match self {
            Refusal::HeaderBlockTooLarge { .. } | Refusal::TooManyHeaders { .. } => 431,
            Refusal::Malformed(_)
            | Refusal::MethodNotGet
            | Refusal::NotHttp11
            | Refusal::MissingUpgradeToken
            | Refusal::MissingConnectionToken
            | Refusal::BadKey
            | Refusal::NoCommonSubprotocol => 400,
            Refusal::UnsupportedVersion => 426,
            Refusal::OriginNotAllowed => 403,
            Refusal::Unauthorized => 401,
        }
    }
}

/// A parsed request head, borrowing the read buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request<'a> {
    method: &'a str,
    version: u8,
    path: &'a str,
    query: Option<&'a str>,
    headers: Vec<(&'a str, &'a [u8])>,
}

impl<'a> Request<'a> {
    /// The method, as sent (methods are case-sensitive).
    pub fn method(&self) -> &'a str {
        self.method
    }

    /// The HTTP minor version: 1 for HTTP/1.1, 0 for HTTP/1.0.
    pub fn version(&self) -> u8 {
        self.version
    }

    /// The request target up to `?`.
    pub fn path(&self) -> &'a str {
        self.path
    }

    /// The request target after the first `?`, if there is one (not percent-decoded).
    pub fn query(&self) -> Option<&'a str> {
        self.query
    }

    /// The first value of header `name` (case-insensitive), surrounding whitespace removed.
    pub fn header(&self, name: &str) -> Option<&'a [u8]> {
        self.header_values(name).next()
    }

    /// Every value of header `name` (case-insensitive), in order, whitespace removed.
    pub fn header_values<'r>(&'r self, name: &'r str) -> impl Iterator<Item = &'a [u8]> + 'r {
        self.headers
            .iter()
            .filter(move |(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, value)| value.trim_ascii())
    }

    /// All header fields, in order, as sent.
    pub fn headers(&self) -> &[(&'a str, &'a [u8])] {
        &self.headers
    }
}

/// Parses the request head at the start of `buf`.
///
/// `Ok(None)`: the header block is not complete yet and still within limits; read more.
/// `Ok(Some((request, len)))`: `len` is the length of the header block; bytes after it
/// (a client may send frames right behind its request) belong to the WebSocket stream and
/// must be kept. `Err`: answer with [`write_refusal`] and close; [`Refusal::HeaderBlockTooLarge`]
/// comes as soon as `buf` holds more than `max_header_bytes` without a complete block.
pub fn parse_request<'a>(
    buf: &'a [u8],
    limits: &HandshakeLimits,
) -> Result<Option<(Request<'a>, usize)>, Refusal> {
    // Parsing only the first `max_header_bytes` makes a longer block look incomplete,
    // which the length of `buf` then turns into 431.
    let window = &buf[..buf.len().min(limits.max_header_bytes)];
    let mut storage = vec![httparse::EMPTY_HEADER; limits.max_headers];
    let mut parsed = httparse::Request::new(&mut storage);
    let len = match parsed.parse(window) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) if buf.len() > limits.max_header_bytes => {
            return Err(Refusal::HeaderBlockTooLarge {
                max: limits.max_header_bytes,
            })
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => {
            return Err(Refusal::TooManyHeaders {
                max: limits.max_headers,
            })
        }
        Err(error) => return Err(Refusal::Malformed(error)),
    };
    let (Some(method), Some(target), Some(version)) = (parsed.method, parsed.path, parsed.version)
    else {
        return Err(Refusal::Malformed(httparse::Error::Token));
    };
    let (path, query) = match target.split_once('?') {
        Some((path, query)) => (path, Some(query)),
        None => (target, None),
    };
    let headers = parsed
        .headers
        .iter()
        .map(|header| (header.name, header.value))
        .collect();
    let request = Request {
        method,
        version,
        path,
        query,
        headers,
    };
    Ok(Some((request, len)))
}

/// What we support and allow, for [`check_upgrade`].
#[derive(Debug, Clone, Copy, Default)]
pub struct UpgradePolicy<'p> {
    /// Our subprotocols, e.g. `["kasagi.v1.msgpack", "kasagi.v1.json"]`. Empty: accept any
    /// offer and select none (the echo mode of conformance runs). Default: empty.
    pub subprotocols: &'p [&'p str],
    /// Allowed `Origin` values (compared ASCII case-insensitively). Empty: any origin.
    /// A request without `Origin` is allowed even with a list: only browsers send it, and
    /// the check exists to stop browsers on foreign pages; other clients could send any
    /// value anyway. Default: empty.
    pub allowed_origins: &'p [String],
}

/// An accepted upgrade: what the `101` needs and what the caller still has to check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upgrade<'a> {
    /// The `Sec-WebSocket-Accept` value: base64(SHA-1(key + GUID)).
    pub accept: String,
    /// The selected subprotocol, as an index into [`UpgradePolicy::subprotocols`].
    /// `None` when the client offered none (`PROTOCOL.md`: then speak
    /// `kasagi.v1.msgpack`, and name no subprotocol in the `101`), or in echo mode.
    pub subprotocol: Option<usize>,
    /// The auth token: query parameter `token=` (taken as is, not percent-decoded; JWTs
    /// need no encoding), else `Authorization: Bearer <token>`. Empty values count as
    /// absent. The caller verifies it and refuses with [`Refusal::Unauthorized`].
    pub token: Option<&'a str>,
}

impl Upgrade<'_> {
    /// The name of the selected subprotocol in `policy` (the one given to [`check_upgrade`]).
    pub fn subprotocol_name<'p>(&self, policy: &UpgradePolicy<'p>) -> Option<&'p str> {
        self.subprotocol
            .and_then(|index| policy.subprotocols.get(index).copied())
    }
}

/// The first check of the refusal order: `GET` over HTTP/1.1 (400 otherwise). Call it
/// before routing on the path; [`check_upgrade`] repeats it.
pub fn check_request_line(request: &Request<'_>) -> Result<(), Refusal> {
    if request.method != "GET" {
        return Err(Refusal::MethodNotGet);
    }
    if request.version != 1 {
        return Err(Refusal::NotHttp11);
    }
    Ok(())
}

/// Decides on an upgrade request, first failing check first (see the module docs).
pub fn check_upgrade<'a>(
    request: &Request<'a>,
    policy: &UpgradePolicy<'_>,
) -> Result<Upgrade<'a>, Refusal> {
    check_request_line(request)?;

    if !has_token(request, "upgrade", b"websocket") {
        return Err(Refusal::MissingUpgradeToken);
    }
    if !has_token(request, "connection", b"upgrade") {
        return Err(Refusal::MissingConnectionToken);
    }

    // "The |Sec-WebSocket-Key| header field MUST NOT appear more than once" (section 11.3.1)
    let key = single_value(request, "sec-websocket-key").ok_or(Refusal::BadKey)?;
    if !is_valid_key(key) {
        return Err(Refusal::BadKey);
    }

    // Also at most once in a request (section 11.3.5); we speak version 13 only.
    match single_value(request, "sec-websocket-version") {
        Some(b"13") => {}
        _ => return Err(Refusal::UnsupportedVersion),
    }

    let subprotocol = select_subprotocol(request, policy.subprotocols)?;

    if !policy.allowed_origins.is_empty() {
        if let Some(origin) = request.header("origin") {
            let allowed = policy
                .allowed_origins
                .iter()
                .any(|allowed| allowed.as_bytes().eq_ignore_ascii_case(origin));
            if !allowed {
                return Err(Refusal::OriginNotAllowed);
            }
        }
    }

    Ok(Upgrade {
        accept: accept_key(key),
        subprotocol,
        token: token(request),
    })
}

/// `Sec-WebSocket-Accept` for a client key (RFC 6455 section 4.2.2).
pub fn accept_key(key: &[u8]) -> String {
    let mut sha1 = Sha1::new();
    sha1.update(key);
    sha1.update(ACCEPT_GUID);
    BASE64.encode(sha1.finalize())
}

/// Writes the `101` answer. `subprotocol_name` is [`Upgrade::subprotocol_name`]; it is
/// named only when one was selected. Extensions are never negotiated, so no
/// `Sec-WebSocket-Extensions` (declining `permessage-deflate`).
pub fn write_accept(out: &mut Vec<u8>, upgrade: &Upgrade<'_>, subprotocol_name: Option<&str>) {
    out.extend_from_slice(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: ");
    out.extend_from_slice(upgrade.accept.as_bytes());
    out.extend_from_slice(b"\r\n");
    if let Some(name) = subprotocol_name {
        out.extend_from_slice(b"Sec-WebSocket-Protocol: ");
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// Writes the answer to a refused request: a short plain-text body naming the problem,
/// `Connection: close`, plus `Sec-WebSocket-Version: 13` on 426 and
/// `WWW-Authenticate: Bearer` on 401 (RFC 9110 requires it).
pub fn write_refusal(out: &mut Vec<u8>, refusal: &Refusal) {
    let extra: &[u8] = match refusal.status() {
        426 => b"Sec-WebSocket-Version: 13\r\n",
        401 => b"WWW-Authenticate: Bearer\r\n",
        _ => b"",
    };
    let body = format!("{refusal}\n");
    write_head(
        out,
        refusal.status(),
        "text/plain; charset=utf-8",
        body.len(),
        extra,
    );
    out.extend_from_slice(body.as_bytes());
}

/// Writes a plain HTTP answer (health, metrics, 404) with `Connection: close`.
pub fn write_response(out: &mut Vec<u8>, status: u16, content_type: &str, body: &[u8]) {
    write_head(out, status, content_type, body.len(), b"");
    out.extend_from_slice(body);
}

fn write_head(out: &mut Vec<u8>, status: u16, content_type: &str, len: usize, extra: &[u8]) {
    let head = format!(
        "HTTP/1.1 {status} {}\r\nContent-Type: {content_type}\r\nContent-Length: {len}\r\nConnection: close\r\n",
        reason_phrase(status)
    );
    out.extend_from_slice(head.as_bytes());
    out.extend_from_slice(extra);
    out.extend_from_slice(b"\r\n");
}

/// The standard reason phrase; empty (allowed by HTTP/1.1) for statuses we do not use.
fn reason_phrase(status: u16) -> &'static str {
    match status {
        101 => "Switching Protocols",
        200 => "OK",
        204 => "No Content",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        413 => "Content Too Large",
        426 => "Upgrade Required",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "",
    }
}

/// Comma-separated tokens of every `name` header, whitespace removed, empty ones skipped.
fn tokens<'a, 'r>(request: &'r Request<'a>, name: &'r str) -> impl Iterator<Item = &'a [u8]> + 'r {
    request
        .header_values(name)
        .flat_map(|value| value.split(|&byte| byte == b','))
        .map(<[u8]>::trim_ascii)
        .filter(|token| !token.is_empty())
}

fn has_token(request: &Request<'_>, name: &str, wanted: &[u8]) -> bool {
    tokens(request, name).any(|token| token.eq_ignore_ascii_case(wanted))
}

/// The value of a header that must appear exactly once.
fn single_value<'a>(request: &Request<'a>, name: &str) -> Option<&'a [u8]> {
    let mut values = request.header_values(name);
    let value = values.next()?;
    values.next().is_none().then_some(value)
}

/// "a base64-encoded ... value that, when decoded, is 16 bytes in length" (section 4.1).
fn is_valid_key(key: &[u8]) -> bool {
    // 16 bytes are 24 base64 characters with padding; the strict engine rejects
    // non-canonical forms.
    let mut decoded = [0u8; 18];
    key.len() == 24 && BASE64.decode_slice(key, &mut decoded) == Ok(16)
}

/// The first offer (in the client's order) that is ours. No offer at all: `None`.
fn select_subprotocol(request: &Request<'_>, ours: &[&str]) -> Result<Option<usize>, Refusal> {
    let mut offers = tokens(request, "sec-websocket-protocol").peekable();
    if offers.peek().is_none() || ours.is_empty() {
        return Ok(None);
    }
    offers
        .find_map(|offer| ours.iter().position(|name| name.as_bytes() == offer))
        .map(Some)
        .ok_or(Refusal::NoCommonSubprotocol)
}

fn token<'a>(request: &Request<'a>) -> Option<&'a str> {
    let from_query = request.query.and_then(|query| {
        query
            .split('&')
            .find_map(|pair| pair.strip_prefix("token="))
    });
    let from_header = || {
        let value = std::str::from_utf8(request.header("authorization")?).ok()?;
        let (scheme, token) = value.split_once(' ')?;
        scheme
            .eq_ignore_ascii_case("bearer")
            .then(|| token.trim_ascii())
    };
    from_query
        .filter(|token| !token.is_empty())
        .or_else(|| from_header().filter(|token| !token.is_empty()))
}

#[cfg(test)]
mod tests;
