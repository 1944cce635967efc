//! The hand-rolled RFC 6455 stack.
