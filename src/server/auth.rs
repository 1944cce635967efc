//! Optional token auth: HS256 JWTs checked at the upgrade.
//!
//! Claims Kasagi reads (all optional): `exp` (seconds since the Unix epoch; the upgrade is
//! refused once it has passed, and an open connection is closed with 1008 when it passes),
//! `sub` (logged), `rooms` (room ids the holder may join; an entry ending in `*` is a
//! prefix). Without `rooms` every room may be joined.

use jsonwebtoken::{decode, Algorithm, DecodingKey, Validation};
use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
struct Claims {
    exp: Option<u64>,
    sub: Option<String>,
    rooms: Option<Vec<String>>,
}

/// What a valid token grants.
#[derive(Debug, Clone, Default)]
pub struct Grant {
    /// When the grant ends, in seconds since the Unix epoch.
    pub expires_at: Option<u64>,
    pub subject: Option<String>,
    rooms: Option<Vec<String>>,
}

impl Grant {
    /// Whether this grant allows joining `room`.
    pub fn may_join(&self, room: &str) -> bool {
        match &self.rooms {
            None => true,
            Some(rooms) => rooms.iter().any(|pattern| match pattern.strip_suffix('*') {
                Some(prefix) => room.starts_with(prefix),
                None => pattern == room,
            }),
        }
    }
}

/// Verifies tokens with one shared secret.
pub struct Verifier {
    key: DecodingKey,
    validation: Validation,
}

impl Verifier {
    pub fn new(secret: &str) -> Verifier {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.required_spec_claims.clear();
        validation.validate_exp = true;
        validation.leeway = 0;
        Verifier {
            key: DecodingKey::from_secret(secret.as_bytes()),
            validation,
        }
    }

    /// The grant of a valid, unexpired token.
    pub fn verify(&self, token: &str) -> Result<Grant, jsonwebtoken::errors::Error> {
        let claims = decode::<Claims>(token, &self.key, &self.validation)?.claims;
        Ok(Grant {
            expires_at: claims.exp,
            subject: claims.sub,
            rooms: claims.rooms,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{encode, EncodingKey, Header};
    use serde::Serialize;

    #[derive(Serialize)]
    struct Out {
        exp: u64,
        rooms: Vec<&'static str>,
    }

    fn now() -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
    }

    fn token(secret: &str, exp: u64) -> String {
        let claims = Out {
            exp,
            rooms: vec!["lobby", "arena-*"],
        };
        encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(secret.as_bytes()),
        )
        .unwrap()
    }

    #[test]
    fn valid_token_grants_listed_rooms_and_prefixes() {
        let v = Verifier::new("s3cret");
        let grant = v.verify(&token("s3cret", now() + 60)).unwrap();
        assert!(grant.may_join("lobby"));
        assert!(grant.may_join("arena-7"));
        assert!(!grant.may_join("lobby2"));
        assert!(!grant.may_join("other"));
    }

    #[test]
    fn wrong_secret_and_expired_tokens_are_refused() {
        let v = Verifier::new("s3cret");
        assert!(v.verify(&token("other", now() + 60)).is_err());
        assert!(v.verify(&token("s3cret", now() - 10)).is_err());
        assert!(v.verify("not.a.token").is_err());
    }
}
