//! Graceful shutdown: SIGTERM (and SIGINT) stop accepting, close every WebSocket with 1001,
//! and the process exits 0 within 5 s (or its drain timeout).

mod common;

use std::io::ErrorKind;
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::{Client, Enc, Server};

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

/// `--outbound-queue-bytes` of the servers with a stuck reader.
const QUEUE_BYTES: &str = "262144";

/// A server started with `args`, a client of it that never reads, with its socket buffers
/// and its outbound queue filled by a flood of deltas (so its close frame cannot be
/// written), and the writer of the flood.
fn server_with_a_stuck_reader(args: &[&str]) -> (Server, Client, Client) {
    let mut full = vec![
        "--outbound-queue-bytes",
        QUEUE_BYTES,
        "--rate-limit",
        "100000",
        "--rate-burst",
        "100000",
    ];
    full.extend_from_slice(args);
    let server = Server::start(&full);
    let (stuck, writer) = stuck_reader(&server);
    (server, stuck, writer)
}

/// See [`server_with_a_stuck_reader`].
fn stuck_reader(server: &Server) -> (Client, Client) {
    // A small receive buffer, so that the kernel's buffers fill early.
    let addr = server.addr();
    let (mut stuck, _) = Client::connect_stream(
        common::small_buffer_stream(addr),
        addr,
        "/ws",
        &[Enc::Msgpack.subprotocol()],
        &[],
    )
    .expect("connect the stuck client");
    stuck.join("stuck");
    let mut writer = server.client(Enc::Msgpack);
    writer.join("stuck");
    let blob = "z".repeat(32 * 1024);
    // Flood until one connection held over half its bound: its socket stopped taking bytes
    // (the writer reads its deltas as they come and stays far below).
    let full = QUEUE_BYTES.parse::<f64>().expect("a number") / 2.0;
    for seq in 1..=2000u64 {
        writer.op_acked(
            "stuck",
            seq,
            serde_json::json!([["set", ["blob"], format!("{seq}{blob}")]]),
        );
        if seq % 20 == 0 {
            let (_, _, metrics) = common::http_get(addr, "/metrics");
            let peak = common::metric_samples(&metrics, "kasagi_outbound_peak_bytes")
                .into_iter()
                .fold(0.0, f64::max);
            if peak > full {
                return (stuck, writer);
            }
        }
    }
    panic!("2000 deltas of 32 KiB did not fill the stuck client's queue");
}

#[test]
fn a_draining_server_takes_no_new_connections() {
    let (mut server, stuck, mut writer) =
        server_with_a_stuck_reader(&["--shards", "2", "--drain-timeout", "4s"]);
    let addr = server.addr();
    // The stuck client keeps the drain going until its timeout.
    server.sigterm();
    assert_eq!(writer.expect_close(), Some(1001));
    // Every shard closes its listener: connects are refused (polled, within 2 s).
    let deadline = Instant::now() + Duration::from_secs(2);
    let refused = loop {
        match TcpStream::connect_timeout(&addr, Duration::from_millis(200)) {
            Err(err) if err.kind() == ErrorKind::ConnectionRefused => break true,
            _ if Instant::now() >= deadline => break false,
            _ => std::thread::sleep(Duration::from_millis(10)),
        }
    };
    assert!(
        refused,
        "a draining server still takes connections on {addr}"
    );
    assert!(
        server.wait_exit(Duration::ZERO).is_none(),
        "the server had already exited: the refusal says nothing about draining"
    );
    let status = server
        .wait_exit(Duration::from_secs(8))
        .expect("exits after --drain-timeout");
    assert_eq!(status.code(), Some(0), "{status:?}");
    drop(stuck);
}

#[test]
fn sigterm_exits_in_time_despite_a_client_that_does_not_read() {
    let (mut server, stuck, mut writer) = server_with_a_stuck_reader(&[]);
    let addr = server.addr();
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
