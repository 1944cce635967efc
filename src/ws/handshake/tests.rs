use super::*;
use proptest::prelude::*;

const RFC_KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";
const RFC_ACCEPT: &str = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";

/// The client handshake of RFC 6455 section 1.2.
const RFC_REQUEST: &[u8] = b"GET /chat HTTP/1.1\r\n\
    Host: server.example.com\r\n\
    Upgrade: websocket\r\n\
    Connection: Upgrade\r\n\
    Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
    Origin: http://example.com\r\n\
    Sec-WebSocket-Protocol: chat, superchat\r\n\
    Sec-WebSocket-Version: 13\r\n\r\n";

const OURS: &[&str] = &["kasagi.v1.msgpack", "kasagi.v1.json"];

fn parse(bytes: &[u8]) -> Request<'_> {
    let (request, len) = parse_request(bytes, &HandshakeLimits::default())
        .unwrap()
        .unwrap();
    assert_eq!(len, bytes.len());
    request
}

/// A valid upgrade request for `/ws` with `extra` header lines, minus the headers
/// named in `without` (lowercase).
fn request(extra: &[&str], without: &[&str]) -> Vec<u8> {
    let base = [
        "Host: localhost",
        "Upgrade: websocket",
        "Connection: Upgrade",
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
        "Sec-WebSocket-Version: 13",
    ];
    let mut text = String::from("GET /ws HTTP/1.1\r\n");
    let kept = base.iter().filter(|line| {
        let name = line
            .split(':')
            .next()
            .unwrap_or_default()
            .to_ascii_lowercase();
        !without.contains(&name.as_str())
    });
    for line in kept.chain(extra) {
        text.push_str(line);
        text.push_str("\r\n");
    }
    text.push_str("\r\n");
    text.into_bytes()
}

fn check(
    bytes: &[u8],
    subprotocols: &[&str],
    origins: &[String],
) -> Result<(String, Option<usize>), Refusal> {
    let policy = UpgradePolicy {
        subprotocols,
        allowed_origins: origins,
    };
    check_upgrade(&parse(bytes), &policy).map(|u| (u.accept, u.subprotocol))
}

#[test]
fn rfc_accept_key() {
    assert_eq!(accept_key(RFC_KEY.as_bytes()), RFC_ACCEPT);
}

#[test]
fn rfc_request_is_accepted() {
    let request = parse(RFC_REQUEST);
    assert_eq!(request.method(), "GET");
    assert_eq!(request.version(), 1);
    assert_eq!(request.path(), "/chat");
    assert_eq!(request.query(), None);
    assert_eq!(request.header("HOST"), Some(&b"server.example.com"[..]));
    assert_eq!(request.headers().len(), 7);
    let policy = UpgradePolicy {
        subprotocols: &["superchat", "chat"],
        allowed_origins: &["HTTP://EXAMPLE.COM".to_owned()],
    };
    let upgrade = check_upgrade(&request, &policy).unwrap();
    // The client's order decides: "chat" comes first in its offer.
    assert_eq!(upgrade.subprotocol, Some(1));
    assert_eq!(upgrade.subprotocol_name(&policy), Some("chat"));
    let mut out = Vec::new();
    write_accept(&mut out, &upgrade, upgrade.subprotocol_name(&policy));
    assert_eq!(
        out,
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
          Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\nSec-WebSocket-Protocol: chat\r\n\r\n"
    );
}

#[test]
fn accept_without_subprotocol_names_none() {
    let (accept, subprotocol) = check(&request(&[], &[]), OURS, &[]).unwrap();
    assert_eq!((accept.as_str(), subprotocol), (RFC_ACCEPT, None));
    let upgrade = Upgrade {
        accept,
        subprotocol,
        token: None,
    };
    let mut out = Vec::new();
    write_accept(&mut out, &upgrade, None);
    let text = String::from_utf8(out).unwrap();
    assert!(!text.contains("Sec-WebSocket-Protocol"));
    assert!(!text.contains("Sec-WebSocket-Extensions"));
    assert!(text.ends_with("\r\n\r\n"));
}

#[test]
fn incomplete_until_the_empty_line_and_keeps_what_follows() {
    let mut bytes = RFC_REQUEST.to_vec();
    for end in 0..bytes.len() {
        assert_eq!(
            parse_request(&bytes[..end], &HandshakeLimits::default()),
            Ok(None),
            "prefix of {end} bytes"
        );
    }
    bytes.extend_from_slice(&[0x81, 0x80, 1, 2, 3, 4]);
    let (_, len) = parse_request(&bytes, &HandshakeLimits::default())
        .unwrap()
        .unwrap();
    assert_eq!(len, RFC_REQUEST.len());
    assert_eq!(&bytes[len..], &[0x81, 0x80, 1, 2, 3, 4]);
}

#[test]
fn header_block_limits_answer_431() {
    let limits = HandshakeLimits {
        max_header_bytes: RFC_REQUEST.len(),
        max_headers: 7,
    };
    assert!(parse_request(RFC_REQUEST, &limits).unwrap().is_some());
    let tight = HandshakeLimits {
        max_header_bytes: RFC_REQUEST.len() - 1,
        ..limits
    };
    // Without the final byte, the block is within limits and still incomplete...
    assert_eq!(
        parse_request(&RFC_REQUEST[..RFC_REQUEST.len() - 1], &tight),
        Ok(None)
    );
    // ...one more byte without an end is too large, without waiting for the end.
    let error = parse_request(RFC_REQUEST, &tight).unwrap_err();
    assert_eq!(
        error,
        Refusal::HeaderBlockTooLarge {
            max: RFC_REQUEST.len() - 1
        }
    );
    assert_eq!(error.status(), 431);
    let endless = [&b"GET / HTTP/1.1\r\nX-Long: "[..], &[b'a'; 9000][..]].concat();
    assert_eq!(
        parse_request(&endless, &HandshakeLimits::default()).map_err(|e| e.status()),
        Err(431)
    );
    let few = HandshakeLimits {
        max_headers: 6,
        ..limits
    };
    let error = parse_request(RFC_REQUEST, &few).unwrap_err();
    assert_eq!(
        (error, error.status()),
        (Refusal::TooManyHeaders { max: 6 }, 431)
    );
}

#[test]
fn malformed_requests_answer_400() {
    for bytes in [
        &b"GET / HTTP/2.0\r\n\r\n"[..],
        b"GET / FTP/1.1\r\n\r\n",
        b"GET /\r\n\r\n",
        b"GET / HTTP/1.1\r\nNo colon here\r\n\r\n",
        b"GET / HTTP/1.1\r\nBad Name: x\r\n\r\n",
        b"\x00\x01\x02\r\n\r\n",
    ] {
        let error = parse_request(bytes, &HandshakeLimits::default()).unwrap_err();
        assert!(
            matches!(error, Refusal::Malformed(_)),
            "{bytes:?}: {error:?}"
        );
        assert_eq!(error.status(), 400);
    }
}

#[test]
fn path_query_and_headers() {
    let bytes = b"GET /ws?room=a&token=abc.def HTTP/1.1\r\nX-A: 1\r\nx-a:  2 \r\n\r\n";
    let request = parse(bytes);
    assert_eq!(request.path(), "/ws");
    assert_eq!(request.query(), Some("room=a&token=abc.def"));
    let values: Vec<&[u8]> = request.header_values("X-a").collect();
    assert_eq!(values, [&b"1"[..], &b"2"[..]]);
    assert_eq!(request.header("missing"), None);
}

#[test]
fn every_refusal_status() {
    let none: &[String] = &[];
    let origins = ["https://game.example".to_owned()];
    let post = String::from_utf8(request(&[], &[]))
        .unwrap()
        .replacen("GET", "POST", 1);
    let http10 = String::from_utf8(request(&[], &[]))
        .unwrap()
        .replacen("HTTP/1.1", "HTTP/1.0", 1);
    let cases: Vec<(Vec<u8>, &[String], Refusal, u16)> = vec![
        (post.into_bytes(), none, Refusal::MethodNotGet, 400),
        (http10.into_bytes(), none, Refusal::NotHttp11, 400),
        (
            request(&[], &["upgrade"]),
            none,
            Refusal::MissingUpgradeToken,
            400,
        ),
        (
            request(&["Upgrade: h2c"], &["upgrade"]),
            none,
            Refusal::MissingUpgradeToken,
            400,
        ),
        (
            request(&[], &["connection"]),
            none,
            Refusal::MissingConnectionToken,
            400,
        ),
        (
            request(&["Connection: keep-alive"], &["connection"]),
            none,
            Refusal::MissingConnectionToken,
            400,
        ),
        (
            request(&[], &["sec-websocket-key"]),
            none,
            Refusal::BadKey,
            400,
        ),
        (
            request(&["Sec-WebSocket-Key: c2hvcnQ="], &["sec-websocket-key"]),
            none,
            Refusal::BadKey,
            400,
        ),
        (
            request(
                &["Sec-WebSocket-Key: !!!!!!!!!!!!!!!!!!!!!!=="],
                &["sec-websocket-key"],
            ),
            none,
            Refusal::BadKey,
            400,
        ),
        (
            // 17 bytes.
            request(
                &["Sec-WebSocket-Key: AAAAAAAAAAAAAAAAAAAAAAA="],
                &["sec-websocket-key"],
            ),
            none,
            Refusal::BadKey,
            400,
        ),
        (
            request(&["Sec-WebSocket-Key: AAAAAAAAAAAAAAAAAAAAAA=="], &[]),
            none,
            Refusal::BadKey,
            400,
        ),
        (
            request(&[], &["sec-websocket-version"]),
            none,
            Refusal::UnsupportedVersion,
            426,
        ),
        (
            request(&["Sec-WebSocket-Version: 8"], &["sec-websocket-version"]),
            none,
            Refusal::UnsupportedVersion,
            426,
        ),
        (
            request(&["Sec-WebSocket-Version: 13"], &[]),
            none,
            Refusal::UnsupportedVersion,
            426,
        ),
        (
            request(&["Sec-WebSocket-Protocol: chat, v2.other"], &[]),
            none,
            Refusal::NoCommonSubprotocol,
            400,
        ),
        (
            request(&["Origin: https://evil.example"], &[]),
            &origins,
            Refusal::OriginNotAllowed,
            403,
        ),
    ];
    for (bytes, origins, refusal, status) in cases {
        let text = String::from_utf8_lossy(&bytes).into_owned();
        assert_eq!(check(&bytes, OURS, origins), Err(refusal), "{text}");
        assert_eq!(refusal.status(), status);
    }
    assert_eq!(Refusal::Unauthorized.status(), 401);
}

#[test]
fn tokens_are_case_insensitive_lists() {
    let accepted = [
        request(
            &["Upgrade: WebSocket", "Connection: keep-alive, Upgrade"],
            &["upgrade", "connection"],
        ),
        request(
            &["Upgrade: h2c, websocket", "Connection: UPGRADE"],
            &["upgrade", "connection"],
        ),
        request(
            &["Connection: keep-alive", "Connection: upgrade"],
            &["connection"],
        ),
        request(
            &["Sec-WebSocket-Key:   dGhlIHNhbXBsZSBub25jZQ==  "],
            &["sec-websocket-key"],
        ),
    ];
    for bytes in accepted {
        assert!(
            check(&bytes, OURS, &[]).is_ok(),
            "{}",
            String::from_utf8_lossy(&bytes)
        );
    }
}

#[test]
fn subprotocol_selection() {
    let cases: [(&[&str], Option<usize>); 5] = [
        (&["Sec-WebSocket-Protocol: kasagi.v1.json"], Some(1)),
        (
            &["Sec-WebSocket-Protocol: other, kasagi.v1.json, kasagi.v1.msgpack"],
            Some(1),
        ),
        (
            &[
                "Sec-WebSocket-Protocol: other",
                "Sec-WebSocket-Protocol: kasagi.v1.msgpack",
            ],
            Some(0),
        ),
        (&["Sec-WebSocket-Protocol: ,  "], None),
        (&[], None),
    ];
    for (extra, expected) in cases {
        assert_eq!(
            check(&request(extra, &[]), OURS, &[]).map(|r| r.1),
            Ok(expected),
            "{extra:?}"
        );
    }
    // Echo mode: any offer is accepted, none selected.
    let echo = check(&request(&["Sec-WebSocket-Protocol: chat"], &[]), &[], &[]);
    assert_eq!(echo.map(|r| r.1), Ok(None));
    // Names are compared exactly.
    let upper = check(
        &request(&["Sec-WebSocket-Protocol: KASAGI.V1.JSON"], &[]),
        OURS,
        &[],
    );
    assert_eq!(upper, Err(Refusal::NoCommonSubprotocol));
}

#[test]
fn origin_allow_list() {
    let origins = ["https://game.example".to_owned()];
    let allowed = request(&["Origin: https://GAME.example"], &[]);
    assert!(check(&allowed, OURS, &origins).is_ok());
    assert!(
        check(&request(&[], &[]), OURS, &origins).is_ok(),
        "no Origin: not a browser"
    );
    let other = request(&["Origin: https://evil.example"], &[]);
    assert!(check(&other, OURS, &[]).is_ok(), "empty list: any origin");
}

/// `PROTOCOL.md`: the first failing check in the table's order decides.
#[test]
fn order_of_checks() {
    let origins = ["https://game.example".to_owned()];
    let all_bad = |text: &str| {
        let bytes = String::from_utf8(request(
            &[
                "Upgrade: h2c",
                "Connection: close",
                "Sec-WebSocket-Key: bad",
                "Sec-WebSocket-Version: 8",
                "Sec-WebSocket-Protocol: chat",
                "Origin: https://evil.example",
            ],
            &[
                "upgrade",
                "connection",
                "sec-websocket-key",
                "sec-websocket-version",
            ],
        ))
        .unwrap();
        text.split('|')
            .fold(bytes, |bytes, fix| match fix.split_once('>') {
                Some((from, to)) => bytes.replacen(from, to, 1),
                None => bytes,
            })
    };
    let steps = [
        ("GET /ws HTTP/1.1>POST /ws HTTP/1.1", Refusal::MethodNotGet),
        ("", Refusal::MissingUpgradeToken),
        ("Upgrade: h2c>Upgrade: websocket", Refusal::MissingConnectionToken),
        (
            "Upgrade: h2c>Upgrade: websocket|Connection: close>Connection: upgrade",
            Refusal::BadKey,
        ),
        (
            "Upgrade: h2c>Upgrade: websocket|Connection: close>Connection: upgrade|Key: bad>Key: dGhlIHNhbXBsZSBub25jZQ==",
            Refusal::UnsupportedVersion,
        ),
        (
            "Upgrade: h2c>Upgrade: websocket|Connection: close>Connection: upgrade|Key: bad>Key: dGhlIHNhbXBsZSBub25jZQ==|Version: 8>Version: 13",
            Refusal::NoCommonSubprotocol,
        ),
        (
            "Upgrade: h2c>Upgrade: websocket|Connection: close>Connection: upgrade|Key: bad>Key: dGhlIHNhbXBsZSBub25jZQ==|Version: 8>Version: 13|Protocol: chat>Protocol: kasagi.v1.json",
            Refusal::OriginNotAllowed,
        ),
    ];
    for (fixes, expected) in steps {
        let bytes = all_bad(fixes).into_bytes();
        assert_eq!(
            check(&bytes, OURS, &origins).map(drop),
            Err(expected),
            "{fixes}"
        );
    }
}

#[test]
fn token_from_query_or_bearer_header() {
    let cases: [(&str, &[&str], Option<&str>); 6] = [
        ("/ws?token=abc.def", &[], Some("abc.def")),
        ("/ws?room=x&token=t1&token=t2", &[], Some("t1")),
        ("/ws", &["Authorization: Bearer  xyz "], Some("xyz")),
        ("/ws?token=q", &["Authorization: bearer h"], Some("q")),
        ("/ws?token=", &["Authorization: Basic dTpw"], None),
        ("/ws?tokens=1", &[], None),
    ];
    for (target, extra, expected) in cases {
        let bytes = String::from_utf8(request(extra, &[]))
            .unwrap()
            .replacen("/ws", target, 1);
        let request = parse(bytes.as_bytes());
        let upgrade = check_upgrade(&request, &UpgradePolicy::default()).unwrap();
        assert_eq!(upgrade.token, expected, "{target} {extra:?}");
    }
}

#[test]
fn refusal_and_plain_responses() {
    let mut out = Vec::new();
    write_refusal(&mut out, &Refusal::UnsupportedVersion);
    let body = "Sec-WebSocket-Version must be 13\n";
    let expected = format!(
        "HTTP/1.1 426 Upgrade Required\r\nContent-Type: text/plain; charset=utf-8\r\n\
         Content-Length: {}\r\nConnection: close\r\nSec-WebSocket-Version: 13\r\n\r\n{body}",
        body.len()
    );
    assert_eq!(String::from_utf8(out).unwrap(), expected);

    let mut out = Vec::new();
    write_refusal(&mut out, &Refusal::Unauthorized);
    let text = String::from_utf8(out).unwrap();
    assert!(text.starts_with("HTTP/1.1 401 Unauthorized\r\n"));
    assert!(text.contains("\r\nWWW-Authenticate: Bearer\r\n"));

    for refusal in [
        Refusal::HeaderBlockTooLarge { max: 8192 },
        Refusal::OriginNotAllowed,
        Refusal::BadKey,
    ] {
        let mut out = Vec::new();
        write_refusal(&mut out, &refusal);
        let text = String::from_utf8(out).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with(&format!("HTTP/1.1 {} ", refusal.status())));
        assert!(head.contains(&format!("Content-Length: {}", body.len())));
        assert!(!head.contains("Sec-WebSocket-Version"));
    }

    let mut out = Vec::new();
    write_response(&mut out, 200, "text/plain", b"ok\n");
    assert_eq!(
        out,
        b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 3\r\nConnection: close\r\n\r\nok\n"
    );
    let mut out = Vec::new();
    write_response(&mut out, 404, "text/plain", b"");
    assert!(out.starts_with(b"HTTP/1.1 404 Not Found\r\n"));
}

fn random_case(name: &str, flips: &[bool]) -> String {
    name.chars()
        .zip(flips.iter().cycle())
        .map(|(c, &flip)| {
            if flip {
                c.to_ascii_uppercase()
            } else {
                c.to_ascii_lowercase()
            }
        })
        .collect()
}

proptest! {
    #[test]
    fn round_trip_through_random_reads(
        key in any::<[u8; 16]>(),
        flips in proptest::collection::vec(any::<bool>(), 1..8),
        extra in proptest::collection::vec(("[A-Za-z][A-Za-z0-9-]{0,12}", "[ -~]{0,30}"), 0..6),
        offer in proptest::option::of(prop::sample::subsequence(
            vec!["chat", "kasagi.v1.json", "other", "kasagi.v1.msgpack"], 1..4)),
        trailing in proptest::collection::vec(any::<u8>(), 0..10),
        splits in proptest::collection::vec(any::<prop::sample::Index>(), 0..10),
    ) {
        let key = BASE64.encode(key);
        let mut head = format!(
            "GET /ws?token=t HTTP/1.1\r\n{}: x\r\n{}: websocket\r\n{}: Upgrade\r\n{}: {key}\r\n{}: 13\r\n",
            random_case("host", &flips),
            random_case("upgrade", &flips),
            random_case("connection", &flips),
            random_case("sec-websocket-key", &flips),
            random_case("sec-websocket-version", &flips),
        );
        for (name, value) in &extra {
            // Keep the random names clear of the headers under test.
            head.push_str(&format!("X-{name}: {}\r\n", value.trim()));
        }
        if let Some(offer) = &offer {
            head.push_str(&format!("{}: {}\r\n", random_case("sec-websocket-protocol", &flips), offer.join(", ")));
        }
        head.push_str("\r\n");
        let stream = [head.as_bytes(), &trailing].concat();

        let mut bounds: Vec<usize> = splits.iter().map(|s| s.index(stream.len() + 1)).collect();
        bounds.push(stream.len());
        bounds.sort_unstable();
        let mut buf = Vec::new();
        let mut parsed = None;
        let mut fed = 0;
        for end in bounds {
            buf.extend_from_slice(&stream[fed..end]);
            fed = end;
            if let Some((request, len)) = parse_request(&buf, &HandshakeLimits::default()).unwrap() {
                prop_assert!(buf.len() >= head.len());
                let policy = UpgradePolicy { subprotocols: OURS, allowed_origins: &[] };
                let upgrade = check_upgrade(&request, &policy)
                    .map(|u| (u.accept, u.subprotocol, u.token.map(str::to_owned)));
                parsed = Some((len, upgrade));
                break;
            }
            prop_assert!(buf.len() < head.len());
        }
        let (len, upgrade) = parsed.unwrap();
        prop_assert_eq!(len, head.len());
        prop_assert_eq!(&stream[len..], &trailing[..]);
        let subprotocol = match &offer {
            None => Ok(None),
            Some(offer) => offer
                .iter()
                .find_map(|name| OURS.iter().position(|ours| ours == name))
                .map(Some)
                .ok_or(Refusal::NoCommonSubprotocol),
        };
        let expected = subprotocol
            .map(|subprotocol| (accept_key(key.as_bytes()), subprotocol, Some("t".to_owned())));
        prop_assert_eq!(upgrade, expected);
    }

    #[test]
    fn never_panics_on_random_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
        if let Ok(Some((request, _))) = parse_request(&bytes, &HandshakeLimits::default()) {
            let _ = check_upgrade(&request, &UpgradePolicy::default());
        }
    }
}
