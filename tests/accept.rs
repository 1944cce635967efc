//! Out of file descriptors: a server at its `RLIMIT_NOFILE` keeps serving the connections
//! it has, says that it cannot accept, and accepts the connections that waited once
//! descriptors are available again, without anyone connecting anew.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::{Client, Enc, Server};
use serde_json::json;

/// Sets the server's soft `RLIMIT_NOFILE` with util-linux `prlimit` (the hard limit stays,
/// so it can be raised again without privileges).
fn set_soft_nofile(server: &Server, soft: u64) {
    let status = Command::new("prlimit")
        .args([
            "--pid",
            &server.pid().to_string(),
            &format!("--nofile={soft}:"),
        ])
        .status()
        .expect("run prlimit (util-linux)");
    assert!(status.success(), "prlimit failed: {status:?}");
}

fn hard_nofile(server: &Server) -> u64 {
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", server.pid()))
        .expect("read /proc/PID/limits");
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .expect("a Max open files line");
    let fields: Vec<&str> = line.split_whitespace().collect();
    // "Max open files <soft> <hard> files"
    fields[4].parse().expect("a numeric hard limit")
}

fn open_descriptors(server: &Server) -> u64 {
    std::fs::read_dir(format!("/proc/{}/fd", server.pid()))
        .expect("list /proc/PID/fd")
        .count() as u64
}

/// Waits (up to `limit`) until the server's stderr contains `needle`.
fn wait_for_log(server: &Server, needle: &str, limit: Duration) {
    let deadline = Instant::now() + limit;
    while !server.stderr().contains(needle) {
        assert!(
            Instant::now() < deadline,
            "no {needle:?} in the server's log within {limit:?}:\n{}",
            server.stderr()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn out_of_descriptors_the_server_serves_what_it_has_and_accepts_again_later() {
    let server = Server::start(&[]);
    let addr = server.addr();
    let mut member = Client::connect(addr, Enc::Json);
    member.join("fd-room");

    // No descriptor to spare: every new connection stays in the listen queue.
    set_soft_nofile(&server, open_descriptors(&server));
    let waiting: Vec<_> = (0..4)
        .map(|_| std::thread::spawn(move || Client::connect(addr, Enc::Msgpack)))
        .collect();
    wait_for_log(&server, "accept failed", Duration::from_secs(10));

    // The connection it has is served as before.
    let (_, ack) = member.op_acked("fd-room", 1, json!([["inc", ["n"], 1]]));
    assert_eq!(ack["t"], "ack");

    // Descriptors again: the queued connections are accepted, upgraded and served.
    set_soft_nofile(&server, hard_nofile(&server));
    for handle in waiting {
        let mut client = handle.join().expect("a waiting client");
        let joined = client.join("fd-room");
        assert_eq!(joined["state"]["n"], 1, "{joined}");
    }
    wait_for_log(&server, "accepting again", Duration::from_secs(10));
    let (_, ack) = member.op_acked("fd-room", 2, json!([["inc", ["n"], 1]]));
    assert_eq!(ack["t"], "ack");
    // Parking on the epoll set needs a descriptor too: while there was none the shard
    // polled on a timer, and it does not keep doing so for the rest of its life.
    assert!(
        !server.stderr().contains("polling it on a timer instead"),
        "the shard gave up parking for good:\n{}",
        server.stderr()
    );
}
