//! HTTP endpoints and the WebSocket upgrade: every answer of PROTOCOL.md's tables, checked
//! with raw requests, plus subprotocol selection, auth and the handshake deadline.

mod common;

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::{http_get, Client, Enc, Raw, Server, UpgradeRequest, JSON, MSGPACK, SAMPLE_ACCEPT};
use serde_json::json;

#[test]
fn healthz_answers_ok() {
    let server = Server::start(&[]);
    let (status, _, body) = http_get(server.addr(), "/healthz");
    assert_eq!(status, 200);
    assert_eq!(body.trim(), "ok");
}

/// A shard that busy-polls before it sleeps serves like any other (its flag is taken), and
/// a value that is not a duration is refused at start, naming the flag.
#[test]
fn spin_before_park_serves_and_bad_values_are_refused() {
    let server = Server::start(&["--spin-before-park", "50us"]);
    let (status, _, body) = http_get(server.addr(), "/healthz");
    assert_eq!((status, body.trim()), (200, "ok"));
    let mut client = Client::connect(server.addr(), Enc::Json);
    let joined = client.join("spin");
    assert_eq!(joined["tick"], 0);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_kasagi"))
        .args(["serve", "--spin-before-park", "soon"])
        .output()
        .expect("run kasagi");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--spin-before-park"));
}

#[test]
fn metrics_lists_every_metric_per_shard() {
    let server = Server::start(&["--shards", "2"]);
    // Some traffic first, so counters have had a reason to exist.
    let mut client = server.client(Enc::Json);
    client.join("metrics-room");
    client.sync();
    let (status, _, body) = http_get(server.addr(), "/metrics");
    assert_eq!(status, 200, "{body}");
    for name in [
        "kasagi_connections",
        "kasagi_rooms",
        "kasagi_messages_in_total",
        "kasagi_messages_out_total",
        "kasagi_bytes_in_total",
        "kasagi_bytes_out_total",
        "kasagi_outbound_peak_bytes",
        "kasagi_mesh_backlog",
        "kasagi_mesh_outboxed_total",
    ] {
        for shard in ["0", "1"] {
            let prefix = format!("{name}{{");
            let label = format!("shard=\"{shard}\"");
            let found = body
                .lines()
                .any(|line| line.starts_with(&prefix) && line.contains(&label));
            assert!(
                found,
                "no sample of {name} with {label} in /metrics:\n{body}"
            );
        }
    }
}

/// The sum over shards of the samples of `name`.
fn metric_sum(body: &str, name: &str) -> f64 {
    common::metric_samples(body, name).iter().sum()
}

#[test]
fn metrics_count_connections_rooms_and_messages() {
    let server = Server::start(&["--shards", "2"]);
    let mut clients: Vec<Client> = (0..3).map(|_| server.client(Enc::Msgpack)).collect();
    for (i, client) in clients.iter_mut().enumerate() {
        client.join(&format!("counted-{i}"));
        client.sync();
    }
    let (_, _, body) = http_get(server.addr(), "/metrics");
    assert!(metric_sum(&body, "kasagi_connections") >= 3.0, "{body}");
    assert!(metric_sum(&body, "kasagi_rooms") >= 3.0, "{body}");
    assert!(
        metric_sum(&body, "kasagi_messages_in_total") >= 6.0,
        "{body}"
    );
    assert!(
        metric_sum(&body, "kasagi_messages_out_total") >= 6.0,
        "{body}"
    );
    assert!(metric_sum(&body, "kasagi_bytes_in_total") > 0.0, "{body}");
    assert!(metric_sum(&body, "kasagi_bytes_out_total") > 0.0, "{body}");
}

/// The shard that answers publishes its latency histograms first, so an op it acked is in
/// `/metrics` and `/debug/latency` at once, without waiting for the once-a-second copy.
#[test]
fn latency_telemetry_shows_an_acked_op_at_once() {
    let server = Server::start(&["--shards", "1"]);
    let mut client = server.client(Enc::Json);
    client.join("timed");
    client.op_acked("timed", 1, json!([["set", ["x"], 1]]));
    // The pong comes after the delta on this connection: the delta has been written.
    client.sync();
    let (status, _, body) = http_get(server.addr(), "/metrics");
    assert_eq!(status, 200);
    for stage in [
        "kasagi_op_to_flush_seconds",
        "kasagi_flush_to_write_seconds",
    ] {
        let count = metric_sum(&body, &format!("{stage}_count"));
        assert!(count >= 1.0, "{stage}: {body}");
        let p99 = metric_sum(&body, &format!("{stage}{{quantile=\"0.99\"}}"));
        assert!(p99 > 0.0, "{stage} p99: {body}");
    }
    let (status, _, hgrm) = http_get(server.addr(), "/debug/latency");
    assert_eq!(status, 200);
    let op_to_flush = hgrm
        .split("# kasagi_flush_to_write_seconds")
        .next()
        .expect("the op_to_flush section");
    let total = op_to_flush
        .lines()
        .find_map(|l| l.split("Total count    =").nth(1))
        .and_then(|n| n.trim().trim_end_matches(']').trim().parse::<u64>().ok());
    assert!(total.is_some_and(|n| n >= 1), "{hgrm}");
}

#[test]
fn other_paths_are_404() {
    let server = Server::start(&[]);
    for path in ["/", "/nope", "/healthz/x", "/metricsx", "/wss"] {
        let (status, _, _) = http_get(server.addr(), path);
        assert_eq!(status, 404, "GET {path}");
    }
    // The upgrade only happens on /ws: a valid upgrade request elsewhere is a 404.
    let status = UpgradeRequest::default()
        .target("/other")
        .status(server.addr());
    assert_eq!(status, 404, "upgrade on /other");
}

#[test]
fn valid_upgrade_is_101_with_accept_and_no_extensions() {
    let server = Server::start(&[]);
    let request = UpgradeRequest::default().set(
        "Sec-WebSocket-Extensions",
        "permessage-deflate; client_max_window_bits",
    );
    let (_raw, response) = request.send(server.addr());
    assert_eq!(response.status, 101, "{response:?}");
    assert_eq!(response.header("Sec-WebSocket-Accept"), Some(SAMPLE_ACCEPT));
    assert!(
        response
            .header("Upgrade")
            .is_some_and(|v| v.eq_ignore_ascii_case("websocket")),
        "{response:?}"
    );
    assert_eq!(
        response.header("Sec-WebSocket-Extensions"),
        None,
        "extensions are never negotiated"
    );
    assert_eq!(
        response.header("Sec-WebSocket-Protocol"),
        None,
        "no subprotocol offered: none named"
    );
}

#[test]
fn header_names_and_tokens_are_case_insensitive() {
    let server = Server::start(&[]);
    let request = UpgradeRequest::default()
        .without("Upgrade")
        .without("Connection")
        .without("Sec-WebSocket-Key")
        .add("upgrade", "WebSocket")
        .add("CONNECTION", "keep-alive, UPGRADE")
        .add("sec-websocket-key", common::SAMPLE_KEY)
        .target("/ws?ignored=1");
    let (_raw, response) = request.send(server.addr());
    assert_eq!(response.status, 101, "{response:?}");
    assert_eq!(response.header("Sec-WebSocket-Accept"), Some(SAMPLE_ACCEPT));
}

#[test]
fn bad_version_is_426_with_version_header() {
    let server = Server::start(&[]);
    for request in [
        UpgradeRequest::default().without("Sec-WebSocket-Version"),
        UpgradeRequest::default().set("Sec-WebSocket-Version", "8"),
        UpgradeRequest::default().set("Sec-WebSocket-Version", "14"),
    ] {
        let (_raw, response) = request.send(server.addr());
        assert_eq!(response.status, 426, "{request:?} -> {response:?}");
        assert_eq!(
            response.header("Sec-WebSocket-Version").map(str::trim),
            Some("13"),
            "{response:?}"
        );
    }
}

#[test]
fn malformed_upgrades_are_400() {
    let server = Server::start(&[]);
    let key15 = common::base64(&[7u8; 15]);
    let key17 = common::base64(&[7u8; 17]);
    let cases = [
        ("POST", UpgradeRequest::default().method("POST")),
        ("HTTP/1.0", UpgradeRequest::default().version("HTTP/1.0")),
        ("no Upgrade", UpgradeRequest::default().without("Upgrade")),
        (
            "Upgrade: h2c",
            UpgradeRequest::default().set("Upgrade", "h2c"),
        ),
        (
            "no Connection",
            UpgradeRequest::default().without("Connection"),
        ),
        (
            "Connection without upgrade",
            UpgradeRequest::default().set("Connection", "keep-alive"),
        ),
        (
            "no key",
            UpgradeRequest::default().without("Sec-WebSocket-Key"),
        ),
        (
            "key not base64",
            UpgradeRequest::default().set("Sec-WebSocket-Key", "not base64 at all!"),
        ),
        (
            "key of 15 bytes",
            UpgradeRequest::default().set("Sec-WebSocket-Key", &key15),
        ),
        (
            "key of 17 bytes",
            UpgradeRequest::default().set("Sec-WebSocket-Key", &key17),
        ),
        (
            "none of our subprotocols",
            UpgradeRequest::default().set("Sec-WebSocket-Protocol", "chat, superchat"),
        ),
        // The first failing check decides: method before version, key before version.
        (
            "POST with version 8",
            UpgradeRequest::default()
                .method("POST")
                .set("Sec-WebSocket-Version", "8"),
        ),
        (
            "no key and version 8",
            UpgradeRequest::default()
                .without("Sec-WebSocket-Key")
                .set("Sec-WebSocket-Version", "8"),
        ),
    ];
    for (what, request) in cases {
        let (_raw, response) = request.send(server.addr());
        assert_eq!(response.status, 400, "{what}: {response:?}");
    }
    // ...and version before subprotocol.
    let request = UpgradeRequest::default()
        .set("Sec-WebSocket-Version", "8")
        .set("Sec-WebSocket-Protocol", "chat");
    assert_eq!(
        request.status(server.addr()),
        426,
        "version is checked before subprotocol"
    );
    // A plain GET /ws without any upgrade headers is not an upgrade.
    let (status, _, _) = http_get(server.addr(), "/ws");
    assert_eq!(status, 400, "GET /ws without upgrade headers");
}

#[test]
fn header_block_too_large_is_431() {
    let server = Server::start(&["--max-header-bytes", "1024"]);
    let big = "x".repeat(2000);
    let request = UpgradeRequest::default().set("X-Filler", &big);
    assert_eq!(request.status(server.addr()), 431);
    // Just under the limit still upgrades.
    let fits = UpgradeRequest::default().set("X-Filler", &"y".repeat(600));
    assert_eq!(fits.status(server.addr()), 101);
}

#[test]
fn too_many_headers_is_431() {
    let server = Server::start(&["--max-headers", "8"]);
    let mut request = UpgradeRequest::default();
    for i in 0..12 {
        request = request.add(&format!("X-Extra-{i}"), "1");
    }
    assert_eq!(request.status(server.addr()), 431);
    // 5 headers of the default request + 2 extra = 7 <= 8.
    let fits = UpgradeRequest::default()
        .add("X-Extra-a", "1")
        .add("X-Extra-b", "1");
    assert_eq!(fits.status(server.addr()), 101);
}

#[test]
fn origin_outside_the_allow_list_is_403() {
    let server = Server::start(&[
        "--allowed-origin",
        "https://good.example",
        "--allowed-origin",
        "https://also.example",
    ]);
    let evil = UpgradeRequest::default().set("Origin", "https://evil.example");
    assert_eq!(evil.status(server.addr()), 403);
    for origin in ["https://good.example", "https://also.example"] {
        let good = UpgradeRequest::default().set("Origin", origin);
        assert_eq!(good.status(server.addr()), 101, "{origin}");
    }
    // No Origin header: not a browser, so the list does not apply (README, Protocol).
    let no_origin = UpgradeRequest::default().without("Origin");
    assert_eq!(no_origin.status(server.addr()), 101);
    // Subprotocol is checked before Origin.
    let both = UpgradeRequest::default()
        .set("Origin", "https://evil.example")
        .set("Sec-WebSocket-Protocol", "chat");
    assert_eq!(both.status(server.addr()), 400);
}

/// Every flag reads `KASAGI_<NAME>`; a flag on the command line wins over its variable.
#[test]
fn environment_variables_configure_the_server() {
    let server = Server::start_env(
        &["--max-ops-per-message", "3"],
        &[
            ("KASAGI_SHARDS", "2"),
            (
                "KASAGI_ALLOWED_ORIGIN",
                "https://good.example,https://also.example",
            ),
            ("KASAGI_MAX_OPS_PER_MESSAGE", "1"),
            ("KASAGI_MAX_PATH_DEPTH", "2"),
        ],
    );
    let (_, _, body) = http_get(server.addr(), "/metrics");
    assert_eq!(
        common::metric_samples(&body, "kasagi_connections").len(),
        2,
        "KASAGI_SHARDS=2 runs two shards:\n{body}"
    );
    for (origin, status) in [
        ("https://evil.example", 403),
        ("https://good.example", 101),
        ("https://also.example", 101),
    ] {
        let request = UpgradeRequest::default().set("Origin", origin);
        assert_eq!(request.status(server.addr()), status, "{origin}");
    }
    let mut client = server.client(Enc::Json);
    client.join("env");
    // The flag's 3 ops per message, not the variable's 1.
    client.op_acked(
        "env",
        1,
        json!([["set", ["a"], 1], ["set", ["b"], 2], ["set", ["c"], 3]]),
    );
    let error = client.op_error("env", 2, json!([["set", ["a", "b", "c"], 1]]));
    assert_eq!(
        error["code"], "too_large",
        "KASAGI_MAX_PATH_DEPTH=2: {error}"
    );
}

const SECRET: &str = "integration-test-secret";

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs()
}

fn token(secret: &str, claims: serde_json::Value) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .expect("encode a JWT")
}

#[test]
fn auth_refuses_missing_and_bad_tokens_with_401() {
    let server = Server::start(&["--auth-secret", SECRET]);
    let addr = server.addr();
    let exp = unix_now() + 3600;
    let good = token(SECRET, json!({"sub": "u1", "exp": exp}));
    let wrong_secret = token("another-secret", json!({"sub": "u1", "exp": exp}));
    let expired = token(SECRET, json!({"sub": "u1", "exp": unix_now() - 120}));

    assert_eq!(UpgradeRequest::default().status(addr), 401, "no token");
    for (what, bad) in [
        ("wrong secret", wrong_secret.as_str()),
        ("expired", expired.as_str()),
        ("garbage", "not.a.jwt"),
    ] {
        let by_query = UpgradeRequest::default().target(&format!("/ws?token={bad}"));
        assert_eq!(by_query.status(addr), 401, "{what} via query");
        let by_header = UpgradeRequest::default().set("Authorization", &format!("Bearer {bad}"));
        assert_eq!(by_header.status(addr), 401, "{what} via header");
    }
    // Origin is checked before the token: without an allow-list any origin passes, so a bad
    // subprotocol still wins over a missing token.
    let bad_protocol = UpgradeRequest::default().set("Sec-WebSocket-Protocol", "chat");
    assert_eq!(bad_protocol.status(addr), 400);

    let by_query = UpgradeRequest::default().target(&format!("/ws?token={good}"));
    assert_eq!(by_query.status(addr), 101, "valid token via query");
    let among_others = UpgradeRequest::default().target(&format!("/ws?v=2&token={good}&x=y"));
    assert_eq!(
        among_others.status(addr),
        101,
        "token among other query parameters"
    );
    let by_header = UpgradeRequest::default().set("Authorization", &format!("Bearer {good}"));
    assert_eq!(by_header.status(addr), 101, "valid token via header");

    // And the connection works.
    let (mut client, _) = Client::connect_with(addr, &format!("/ws?token={good}"), &[JSON], &[])
        .expect("connect with a valid token");
    client.join("authed");
}

#[test]
fn auth_rooms_claim_forbids_other_rooms() {
    let server = Server::start(&["--auth-secret", SECRET]);
    let claims = json!({"exp": unix_now() + 3600, "rooms": ["lobby", "team-*"]});
    let jwt = token(SECRET, claims);
    let (mut client, _) = Client::connect_with(
        server.addr(),
        "/ws",
        &[MSGPACK],
        &[("Authorization", &format!("Bearer {jwt}"))],
    )
    .expect("connect");
    client.join("lobby");
    client.join("team-7");
    client.send(json!({"t": "join", "room": "secret-room"}));
    let error = client.expect("error");
    assert_eq!(error["code"], "forbidden", "{error}");
    assert_eq!(error["room"], "secret-room", "{error}");
    client.send(json!({"t": "join", "room": "lobbyist"}));
    let error = client.expect("error");
    assert_eq!(
        error["code"], "forbidden",
        "an exact entry is not a prefix: {error}"
    );
    client.assert_quiet("after forbidden joins");
}

#[test]
fn auth_expiry_closes_with_1008() {
    let server = Server::start(&["--auth-secret", SECRET]);
    let jwt = token(SECRET, json!({"exp": unix_now() + 2}));
    let (mut client, _) =
        Client::connect_with(server.addr(), &format!("/ws?token={jwt}"), &[JSON], &[])
            .expect("connect before expiry");
    client.join("short-lived");
    // The server must close once `exp` passes (at most ~3 s from now); the read timeout
    // bounds the wait.
    let code = client.expect_close();
    assert_eq!(code, Some(1008));
}

#[test]
fn subprotocol_is_the_first_of_ours_in_client_order() {
    let server = Server::start(&[]);
    let addr = server.addr();
    let cases: [(&[&str], &str); 4] = [
        (&[JSON, MSGPACK], JSON),
        (&[MSGPACK, JSON], MSGPACK),
        (&["chat", JSON], JSON),
        (&["chat", MSGPACK, "superchat", JSON], MSGPACK),
    ];
    for (offer, picked) in cases {
        let (mut client, response) =
            Client::connect_with(addr, "/ws", offer, &[]).expect("connect");
        let header = response
            .headers()
            .get("Sec-WebSocket-Protocol")
            .and_then(|v| v.to_str().ok());
        assert_eq!(header, Some(picked), "offer {offer:?}");
        // The encoding really is the one named: the client checks the frame type.
        client.join("proto-room");
    }
    // No offer: MessagePack, and no header (tungstenite rejects an unrequested one).
    let (mut client, response) = Client::connect_with(addr, "/ws", &[], &[]).expect("connect");
    assert!(response.headers().get("Sec-WebSocket-Protocol").is_none());
    assert_eq!(client.enc, Enc::Msgpack);
    client.join("proto-room");
}

#[test]
fn subprotocol_offer_split_over_two_headers() {
    let server = Server::start(&[]);
    let request = UpgradeRequest::default()
        .add("Sec-WebSocket-Protocol", "chat")
        .add("Sec-WebSocket-Protocol", JSON);
    let (_raw, response) = request.send(server.addr());
    assert_eq!(response.status, 101, "{response:?}");
    assert_eq!(response.header("Sec-WebSocket-Protocol"), Some(JSON));
}

#[test]
fn incomplete_handshake_is_closed_without_answer_after_the_deadline() {
    let server = Server::start(&["--handshake-timeout", "1s"]);
    let mut raw = Raw::connect(server.addr());
    raw.write_all(b"GET /ws HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\n");
    let started = Instant::now();
    let mut received = Vec::new();
    let mut chunk = [0u8; 1024];
    let ended = loop {
        use std::io::Read;
        match raw.stream.read(&mut chunk) {
            Ok(0) => break true,
            Ok(n) => received.extend_from_slice(&chunk[..n]),
            Err(err)
                if matches!(
                    err.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                break false
            }
            Err(_) => break true,
        }
    };
    let elapsed = started.elapsed();
    assert!(
        ended,
        "the server kept a half handshake open past {elapsed:?}"
    );
    assert!(
        received.is_empty(),
        "no answer expected, got {:?}",
        String::from_utf8_lossy(&received)
    );
    assert!(
        elapsed >= Duration::from_millis(500),
        "closed after {elapsed:?}: before the 1 s deadline"
    );
    assert!(
        elapsed <= Duration::from_secs(8),
        "closed only after {elapsed:?}"
    );
}
