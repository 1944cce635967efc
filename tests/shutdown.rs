//! Graceful shutdown: SIGTERM (and SIGINT) close every WebSocket with 1001 and the process
//! exits 0 within 5 s.

mod common;

use std::time::{Duration, Instant};

use common::{Enc, Server};

fn shuts_down_on(signal: &str) {
    let mut server = Server::start(&["--shards", "2"]);
    let mut clients: Vec<_> = (0..4)
        .map(|i| {
            let enc = if i % 2 == 0 { Enc::Json } else { Enc::Msgpack };
            let mut client = server.client(enc);
            client.join("shutdown-room");
            client.join(&format!("own-{i}"));
            client
        })
        .collect();
    let started = Instant::now();
    server.signal(signal);
    for client in &mut clients {
        assert_eq!(
            client.expect_close(),
            Some(1001),
            "SIG{signal} closes with going away"
        );
    }
    let status = server
        .wait_exit(Duration::from_secs(5).saturating_sub(started.elapsed()))
        .unwrap_or_else(|| panic!("still running 5 s after SIG{signal}"));
    assert_eq!(
        status.code(),
        Some(0),
        "exit status after SIG{signal}: {status:?}"
    );
}

#[test]
fn sigterm_closes_clients_with_1001_and_exits_0() {
    shuts_down_on("TERM");
}

#[test]
fn sigint_closes_clients_with_1001_and_exits_0() {
    shuts_down_on("INT");
}

#[test]
fn idle_server_exits_0_on_sigterm() {
    let mut server = Server::start(&[]);
    server.sigterm();
    let status = server
        .wait_exit(Duration::from_secs(5))
        .expect("an idle server exits within 5 s of SIGTERM");
    assert_eq!(status.code(), Some(0), "{status:?}");
}

#[test]
fn sigterm_exits_in_time_despite_a_client_that_does_not_read() {
    let mut server = Server::start(&["--rate-limit", "100000", "--rate-burst", "100000"]);
    let addr = server.addr();
    // A client that never reads, with its socket buffers filled by a flood of deltas.
    let mut stuck = server.client(Enc::Msgpack);
    stuck.join("stuck");
    let mut writer = server.client(Enc::Msgpack);
    writer.join("stuck");
    let blob = "z".repeat(32 * 1024);
    for seq in 1..=200u64 {
        writer.op_acked(
            "stuck",
            seq,
            serde_json::json!([["set", ["blob"], format!("{seq}{blob}")]]),
        );
    }
    // And one that never finishes its handshake.
    let mut half = common::Raw::connect(addr);
    half.write_all(b"GET /ws HTTP/1.1\r\nHost: x\r\n");
    let started = Instant::now();
    server.sigterm();
    assert_eq!(writer.expect_close(), Some(1001));
    let status = server
        .wait_exit(Duration::from_secs(5))
        .unwrap_or_else(|| panic!("still running 5 s after SIGTERM (a client did not read)"));
    assert_eq!(status.code(), Some(0), "{status:?}");
    assert!(started.elapsed() <= Duration::from_secs(5));
    drop(stuck);
}
