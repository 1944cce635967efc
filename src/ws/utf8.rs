//! Incremental, fail-fast UTF-8 validation of a text message that grows in pieces.
//!
//! RFC 6455 section 8.1 wants the connection failed as soon as text is known to be
//! invalid, and Autobahn|Testsuite (cases 6.4.x) checks that a server does so in the
//! middle of a frame. The message buffer grows as payload bytes arrive; this validator
//! remembers how far the buffer is known to be valid and, on each call, checks only what
//! lies after that point: the new bytes plus at most 3 bytes of a code point left
//! incomplete by the previous piece. Validating a message therefore costs O(length) no
//! matter how it is split.
//!
//! std's `from_utf8` reports, for an invalid input, whether the input merely ends inside
//! a sequence that could still complete (`error_len() == None`) or holds a byte that no
//! continuation can fix (`Some(_)`, which also covers overlong forms, surrogates and code
//! points above U+10FFFF as early as their second byte). That is exactly "is this a prefix
//! of valid UTF-8".

use std::str::Utf8Error;

/// The text is not valid UTF-8 (or, at the end of a message, ends inside a code point).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct InvalidUtf8;

/// Validation progress over one growing buffer. Reset it whenever the buffer is cleared.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Utf8Validator {
    /// `bytes[..valid_up_to]` is valid UTF-8 ending on a code point boundary.
    valid_up_to: usize,
}

impl Utf8Validator {
    /// Forgets all progress (for a new, empty buffer).
    pub(crate) fn reset(&mut self) {
        self.valid_up_to = 0;
    }

    /// Checks the bytes appended to `bytes` since the last call. Fails as soon as `bytes`
    /// cannot be the beginning of valid UTF-8; an incomplete code point at the end is fine.
    pub(crate) fn advance(&mut self, bytes: &[u8]) -> Result<(), InvalidUtf8> {
        let unchecked = bytes.get(self.valid_up_to..).ok_or(InvalidUtf8)?;
        match std::str::from_utf8(unchecked) {
            Ok(_) => {
                self.valid_up_to = bytes.len();
                Ok(())
            }
            Err(error) if is_incomplete(&error) => {
                self.valid_up_to += error.valid_up_to();
                Ok(())
            }
            Err(_) => Err(InvalidUtf8),
        }
    }

    /// Checks that the whole of `bytes` (already fed to [`Self::advance`]) is valid, with
    /// no code point left incomplete, and returns it as text.
    pub(crate) fn finish<'b>(&mut self, bytes: &'b [u8]) -> Result<&'b str, InvalidUtf8> {
        self.advance(bytes)?;
        if self.valid_up_to != bytes.len() {
            return Err(InvalidUtf8);
        }
        // A second pass, because safe code cannot turn checked bytes into `&str` for free;
        // it is one linear pass per message and cannot fail here.
        std::str::from_utf8(bytes).map_err(|_| InvalidUtf8)
    }
}

/// The input ends inside a code point that more bytes could complete.
fn is_incomplete(error: &Utf8Error) -> bool {
    error.error_len().is_none()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Brute-force reference: can `bytes` be extended into valid UTF-8?
    fn is_valid_prefix(bytes: &[u8]) -> bool {
        match std::str::from_utf8(bytes) {
            Ok(_) => true,
            Err(error) => is_incomplete(&error),
        }
    }

    fn feed_bytewise(bytes: &[u8]) -> Result<(), (usize, InvalidUtf8)> {
        let mut validator = Utf8Validator::default();
        for end in 1..=bytes.len() {
            validator.advance(&bytes[..end]).map_err(|e| (end, e))?;
        }
        Ok(())
    }

    #[test]
    fn fails_on_the_first_impossible_byte() {
        // Autobahn 6.4.1: "κόσμε" then U+110000 in its 4-byte form, invalid at its 2nd byte.
        let mut text = vec![
            0xce, 0xba, 0xe1, 0xbd, 0xb9, 0xcf, 0x83, 0xce, 0xbc, 0xce, 0xb5,
        ];
        let bad_at = text.len() + 2;
        text.extend_from_slice(&[0xf4, 0x90, 0x80, 0x80]);
        text.extend_from_slice(b"edited");
        assert_eq!(feed_bytewise(&text), Err((bad_at, InvalidUtf8)));

        let cases: [(&[u8], usize); 7] = [
            (&[0xed, 0xa0, 0x80], 2),       // surrogate U+D800
            (&[0xe0, 0x80, 0x80], 2),       // overlong
            (&[0xc0, 0xaf], 1),             // overlong, impossible lead byte
            (&[0xf5, 0x80], 1),             // lead byte above U+10FFFF
            (&[0x80], 1),                   // lone continuation
            (&[0xe2, 0x82, 0x41], 3),       // truncated then ASCII
            (&[0x61, 0xf0, 0x90, 0x28], 4), // bad 3rd byte of a 4-byte sequence
        ];
        for (bytes, bad_at) in cases {
            assert_eq!(
                feed_bytewise(bytes),
                Err((bad_at, InvalidUtf8)),
                "{bytes:x?}"
            );
        }
    }

    #[test]
    fn incomplete_end_is_fine_until_finish() {
        let mut validator = Utf8Validator::default();
        let euro = "€".as_bytes();
        assert_eq!(validator.advance(&euro[..2]), Ok(()));
        assert_eq!(validator.finish(&euro[..2]), Err(InvalidUtf8));
        let mut validator = Utf8Validator::default();
        assert_eq!(validator.advance(&euro[..1]), Ok(()));
        assert_eq!(validator.advance(&euro[..2]), Ok(()));
        assert_eq!(validator.finish(euro), Ok("€"));
    }

    #[test]
    fn reset_starts_over() {
        let mut validator = Utf8Validator::default();
        assert_eq!(validator.advance(b"abc"), Ok(()));
        validator.reset();
        assert_eq!(validator.finish(b"x"), Ok("x"));
    }

    fn text_with_noise() -> impl Strategy<Value = Vec<u8>> {
        (
            any::<String>(),
            proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..3),
        )
            .prop_map(|(text, noise)| {
                let mut bytes = text.into_bytes();
                for (at, byte) in noise {
                    let at = at.index(bytes.len() + 1);
                    bytes.insert(at, byte);
                }
                bytes
            })
    }

    proptest! {
        #[test]
        fn matches_the_reference_at_every_split(
            bytes in text_with_noise(),
            cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..8),
        ) {
            let mut ends: Vec<usize> = cuts.iter().map(|c| c.index(bytes.len() + 1)).collect();
            ends.push(bytes.len());
            ends.sort_unstable();
            let mut validator = Utf8Validator::default();
            let mut failed = false;
            for end in ends {
                let result = validator.advance(&bytes[..end]);
                prop_assert_eq!(result.is_ok(), is_valid_prefix(&bytes[..end]));
                if result.is_err() {
                    failed = true;
                    break;
                }
            }
            if !failed {
                let expected = std::str::from_utf8(&bytes).ok();
                prop_assert_eq!(validator.finish(&bytes).ok(), expected);
            }
        }
    }
}
