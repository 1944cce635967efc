//! Why an `op` message was rejected: one variant per rule of `PROTOCOL.md` "Ops", each
//! mapped to its error code in [`OpError::code`].

use crate::protocol::types::ErrorCode;

/// The rule an op broke.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OpError {
    /// Segment `at` of the path is applied to a value that is not a map or an array.
    #[error("the path runs through a value that is not a container (segment {at})")]
    ThroughNonContainer { at: usize },
    #[error("an integer index into a map (segment {at})")]
    IndexIntoMap { at: usize },
    #[error("a string key into an array (segment {at})")]
    KeyIntoArray { at: usize },
    #[error("array index {index} is beyond the array's length {len} (segment {at})")]
    IndexBeyondLength { at: usize, index: u64, len: usize },
    /// Only maps are created for missing parents, so an index into a missing container
    /// cannot be satisfied.
    #[error("an array index into a missing container (segment {at}); only maps are created")]
    IndexIntoMissing { at: usize },
    #[error("inc on a value that is not a number")]
    IncOnNonNumber,
    #[error("push on a value that is not an array")]
    PushOnNonArray,
    #[error("integer overflow")]
    IntegerOverflow,
    #[error("set [] with a value that is not a map")]
    RootNotMap,
    #[error("inc on []")]
    IncOnRoot,
    #[error("push on []")]
    PushOnRoot,
    /// The decoder rejects this already; kept so that a hand-built `Op` cannot panic.
    #[error("inc by a value that is not a number")]
    IncByNonNumber,
    #[error("path depth {depth} is above the limit {max}")]
    PathTooDeep { depth: usize, max: usize },
    /// The op would put values at paths deeper than the path depth limit, where no op
    /// could reach them (and where recursive walks of the state would grow without bound).
    #[error("the value would reach path depth {depth}, above the limit {max}")]
    ValueTooDeep { depth: usize, max: usize },
    #[error("the state would be {size} bytes, above the limit {max}")]
    StateTooLarge { size: usize, max: usize },
}

impl OpError {
    /// The `error` code the client gets.
    pub fn code(&self) -> ErrorCode {
        match self {
            OpError::IncByNonNumber => ErrorCode::BadRequest,
            OpError::PathTooDeep { .. }
            | OpError::ValueTooDeep { .. }
            | OpError::StateTooLarge { .. } => ErrorCode::TooLarge,
            _ => ErrorCode::Conflict,
        }
    }
}

/// A rejected `op` message: the state is as it was before the message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("op {index}: {rule}")]
pub struct ApplyError {
    /// The op (0-based) at which the message failed. For [`OpError::StateTooLarge`], which
    /// is checked on the state after the whole message, the last op.
    pub index: usize,
    pub rule: OpError,
}

impl ApplyError {
    pub fn code(&self) -> ErrorCode {
        self.rule.code()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_and_messages() {
        let e = ApplyError {
            index: 2,
            rule: OpError::IndexBeyondLength {
                at: 1,
                index: 5,
                len: 3,
            },
        };
        assert_eq!(e.code(), ErrorCode::Conflict);
        assert_eq!(
            e.to_string(),
            "op 2: array index 5 is beyond the array's length 3 (segment 1)"
        );
        assert_eq!(OpError::IncByNonNumber.code(), ErrorCode::BadRequest);
        assert_eq!(
            OpError::StateTooLarge { size: 2, max: 1 }.code(),
            ErrorCode::TooLarge
        );
        assert_eq!(
            OpError::PathTooDeep { depth: 33, max: 32 }.code(),
            ErrorCode::TooLarge
        );
    }
}
