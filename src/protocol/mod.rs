//! The messages of `PROTOCOL.md`.

pub mod types;

pub use types::{DeltaOp, ErrorCode, Op, Path, PathSeg, RoomId};
