//! `redis://` URLs: where a shard's connections go and how they authenticate.
//!
//! Parsing is the `redis` crate's (`IntoConnectionInfo`, pure, no I/O): the form is
//! `redis://[username][:password@]host[:port][/db][?protocol=resp3]`, port 6379 by default,
//! db 0 by default, user and password percent-decoded. We only narrow its result to what
//! this client supports (plain TCP) and keep the password out of `Debug` output, so a URL
//! can be logged.

use std::fmt;
use std::str::FromStr;

use redis::{ConnectionAddr, IntoConnectionInfo, ProtocolVersion};

/// Why a string is not a usable Redis URL.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UrlError {
    /// Not `redis://…` at all, or a part of it (host, port, db) is malformed.
    #[error("not a valid redis:// URL: {reason}")]
    Invalid { reason: String },
    /// `rediss://` (TLS) is not supported by this client yet.
    #[error("rediss:// (TLS) is not supported; use redis://")]
    TlsUnsupported,
    /// `unix://` / `redis+unix://` are not supported: shards connect over TCP.
    #[error("unix socket URLs are not supported; use redis://host:port")]
    UnixSocketUnsupported,
}

/// RESP version a connection speaks. RESP2 unless the URL has `?protocol=resp3`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Protocol {
    #[default]
    Resp2,
    Resp3,
}

/// A parsed `redis://` URL.
#[derive(Clone, PartialEq, Eq)]
pub struct RedisUrl {
    pub host: String,
    pub port: u16,
    /// ACL user (Redis 6+); `None` authenticates as `default` when a password is set.
    pub username: Option<String>,
    pub password: Option<String>,
    /// Database selected with `SELECT` after connecting (0: no `SELECT` is sent).
    pub db: i64,
    pub protocol: Protocol,
}

impl RedisUrl {
    pub fn parse(url: &str) -> Result<RedisUrl, UrlError> {
        let scheme = url.split("://").next().unwrap_or_default();
        match scheme.to_ascii_lowercase().as_str() {
            "rediss" => return Err(UrlError::TlsUnsupported),
            "unix" | "redis+unix" => return Err(UrlError::UnixSocketUnsupported),
            _ => {}
        }
        let info = url
            .into_connection_info()
            .map_err(|error| UrlError::Invalid {
                reason: error.to_string(),
            })?;
        let (host, port) = match info.addr {
            ConnectionAddr::Tcp(host, port) => (host, port),
            ConnectionAddr::TcpTls { .. } => return Err(UrlError::TlsUnsupported),
            ConnectionAddr::Unix(_) => return Err(UrlError::UnixSocketUnsupported),
        };
        Ok(RedisUrl {
            host,
            port,
            username: info.redis.username,
            password: info.redis.password,
            db: info.redis.db,
            protocol: match info.redis.protocol {
                ProtocolVersion::RESP2 => Protocol::Resp2,
                ProtocolVersion::RESP3 => Protocol::Resp3,
            },
        })
    }
}

impl FromStr for RedisUrl {
    type Err = UrlError;

    fn from_str(url: &str) -> Result<Self, Self::Err> {
        RedisUrl::parse(url)
    }
}

impl RedisUrl {
    /// `host:port` (`[host]:port` for an IPv6 address), for logs that name the server.
    pub fn host_port(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

/// `redis://user:***@host:port/db`: never the password.
impl fmt::Display for RedisUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("redis://")?;
        match (&self.username, &self.password) {
            (Some(user), Some(_)) => write!(f, "{user}:***@")?,
            (Some(user), None) => write!(f, "{user}@")?,
            (None, Some(_)) => f.write_str(":***@")?,
            (None, None) => {}
        }
        if self.host.contains(':') {
            write!(f, "[{}]:{}/{}", self.host, self.port, self.db)
        } else {
            write!(f, "{}:{}/{}", self.host, self.port, self.db)
        }
    }
}

impl fmt::Debug for RedisUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RedisUrl({self}, {:?})", self.protocol)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(url: &str) -> RedisUrl {
        RedisUrl::parse(url).unwrap_or_else(|error| panic!("{url}: {error}"))
    }

    #[test]
    fn host_only_takes_the_defaults() {
        let url = parse("redis://127.0.0.1");
        assert_eq!(url.host, "127.0.0.1");
        assert_eq!(url.port, 6379);
        assert_eq!(url.username, None);
        assert_eq!(url.password, None);
        assert_eq!(url.db, 0);
        assert_eq!(url.protocol, Protocol::Resp2);
    }

    #[test]
    fn every_part() {
        let url = parse("redis://alice:s%40cret@redis.example:6380/3?protocol=resp3");
        assert_eq!(url.host, "redis.example");
        assert_eq!(url.port, 6380);
        assert_eq!(url.username.as_deref(), Some("alice"));
        assert_eq!(url.password.as_deref(), Some("s@cret"));
        assert_eq!(url.db, 3);
        assert_eq!(url.protocol, Protocol::Resp3);
    }

    #[test]
    fn password_without_user() {
        let url = parse("redis://:hunter2@localhost:7000/1");
        assert_eq!(url.username, None);
        assert_eq!(url.password.as_deref(), Some("hunter2"));
        assert_eq!(url.db, 1);
    }

    #[test]
    fn ipv6_host_has_no_brackets() {
        let url = parse("redis://[::1]:6390");
        assert_eq!(url.host, "::1");
        assert_eq!(url.port, 6390);
        assert_eq!(url.to_string(), "redis://[::1]:6390/0");
    }

    #[test]
    fn display_and_debug_hide_the_password() {
        let url = parse("redis://alice:topsecret@h:1/2");
        assert_eq!(url.to_string(), "redis://alice:***@h:1/2");
        assert!(!format!("{url:?}").contains("topsecret"));
        assert_eq!(parse("redis://:pw@h").to_string(), "redis://:***@h:6379/0");
    }

    #[test]
    fn rejects_what_we_cannot_connect_to() {
        assert_eq!(
            RedisUrl::parse("rediss://h:6379"),
            Err(UrlError::TlsUnsupported)
        );
        assert_eq!(
            RedisUrl::parse("unix:///tmp/redis.sock"),
            Err(UrlError::UnixSocketUnsupported)
        );
        for bad in [
            "http://h:6379",
            "redis://h:6379/notadb",
            "127.0.0.1:6379",
            "",
        ] {
            assert!(
                matches!(RedisUrl::parse(bad), Err(UrlError::Invalid { .. })),
                "{bad}"
            );
        }
    }
}
