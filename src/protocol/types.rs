//! The typed pieces of the protocol that rooms and the server share: room ids, paths,
//! client ops, state-based delta ops and error codes.

use crate::value::Value;

/// A validated room id: 1 to 128 bytes of `A-Z a-z 0-9 _ . : -`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RoomId(String);

impl RoomId {
    pub const MAX_LEN: usize = 128;

    /// The id, when `s` is a valid room id.
    pub fn parse(s: &str) -> Option<RoomId> {
        let ok = !s.is_empty()
            && s.len() <= Self::MAX_LEN
            && s
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b':' | b'-'));
        ok.then(|| RoomId(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for RoomId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// One step of a path: a map key or an array index.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PathSeg {
    Key(String),
    Index(u64),
}

/// A path from the root; `[]` is the root.
pub type Path = Vec<PathSeg>;

/// A client op, as decoded from an `op` message.
#[derive(Debug, Clone, PartialEq)]
pub enum Op {
    Set(Path, Value),
    Del(Path),
    /// The amount is always a number (`Int`, `UInt` or `Float`); decoding rejects anything else.
    Inc(Path, Value),
    Push(Path, Value),
}

/// A state-based op of a delta: what every member applies to its copy.
#[derive(Debug, Clone, PartialEq)]
pub enum DeltaOp {
    Set(Path, Value),
    Del(Path),
    Push(Path, Value),
}

/// The error codes of `PROTOCOL.md`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    BadRequest,
    Unauthorized,
    Forbidden,
    NotJoined,
    Conflict,
    TooLarge,
    RateLimited,
    RoomFull,
    Unavailable,
    Internal,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::NotJoined => "not_joined",
            ErrorCode::Conflict => "conflict",
            ErrorCode::TooLarge => "too_large",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::RoomFull => "room_full",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::Internal => "internal",
        }
    }
}
