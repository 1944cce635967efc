//! A client that stops reading must not grow the server's memory or stall the writers: its
//! queued deltas are dropped, and once it reads again it gets one unasked `joined` with
//! `resync: true` and the full state, after which its copy converges again.

mod common;

use common::{Client, Enc, Mirror, Server};
use serde_json::json;

const BLOB_BYTES: usize = 32 * 1024;
const FLOOD_OPS: u64 = 600;
const WINDOW: usize = 4;
/// `--outbound-queue-bytes` of the server under test.
const QUEUE_BYTES: usize = 64 * 1024;
/// What one connection may hold past the delta bound: a resync snapshot (control frames are
/// never dropped) and the unwritten rest of a frame already handed to its socket.
const CONTROL_SLACK: usize = 2 * (BLOB_BYTES + 4096);

#[test]
fn slow_consumer_is_resynced_and_memory_stays_bounded() {
    slow_consumer(1, Enc::Msgpack);
}

#[test]
fn slow_consumer_on_another_shard_than_the_room() {
    slow_consumer(2, Enc::Json);
}

/// Connects slow (small receive buffer) clients until one sits on a shard other than the
/// owner of `room` (any shard when there is one).
fn slow_client(addr: std::net::SocketAddr, enc: Enc, shards: usize, room: &str) -> Client {
    let owner = common::owner_shard(room, shards);
    for attempt in 0..200 {
        let (mut client, _) = Client::connect_stream(
            common::small_buffer_stream(addr),
            addr,
            "/ws",
            &[enc.subprotocol()],
            &[],
        )
        .expect("connect the slow client");
        client.join(&format!("probe-{attempt}"));
        let shard = common::member_shard(client.you()).expect("member id form");
        if shards == 1 || shard != owner {
            return client;
        }
    }
    panic!("200 connections all landed on the owner shard of {room}");
}

fn slow_consumer(shards: usize, enc: Enc) {
    let shards_arg = shards.to_string();
    let server = Server::start(&[
        "--shards",
        &shards_arg,
        "--outbound-queue-bytes",
        &QUEUE_BYTES.to_string(),
        "--rate-limit",
        "100000",
        "--rate-burst",
        "100000",
    ]);
    let addr = server.addr();
    let mut slow = slow_client(addr, enc, shards, "flood");
    let mut mirror = Mirror::from_joined(&slow.join("flood"));
    let mut writer = server.client(Enc::Msgpack);
    writer.join("flood");
    let baseline = server.rss_kib();
    let mut rss_peak = baseline;

    let mut sent = 0u64;
    let mut acked = 0u64;
    let mut in_flight = 0usize;
    let mut last_tick = 0u64;
    let mut writer_resyncs = 0u32;
    while acked < FLOOD_OPS {
        while in_flight < WINDOW && sent < FLOOD_OPS {
            sent += 1;
            let fill = char::from(b'a' + (sent % 26) as u8);
            let blob = fill.to_string().repeat(BLOB_BYTES);
            writer.op(
                "flood",
                sent,
                json!([["set", ["blob"], blob], ["set", ["seq"], sent]]),
            );
            in_flight += 1;
        }
        let message = writer.recv();
        match message["t"].as_str() {
            Some("ack") => {
                acked += 1;
                in_flight -= 1;
                last_tick = message["tick"].as_u64().expect("ack.tick");
                if acked % 50 == 0 {
                    rss_peak = rss_peak.max(server.rss_kib());
                }
            }
            Some("delta") | Some("presence") => {}
            // The writer reads as fast as a debug-build client can; with a 64 KiB bound and
            // 32 KiB deltas it may be resynced too. Only its acks are promised.
            Some("joined") if message["resync"] == true => writer_resyncs += 1,
            _ => panic!("the writer got {message} (it must keep getting acks)"),
        }
    }
    rss_peak = rss_peak.max(server.rss_kib());
    // The slow client's ~300 deltas of 32 KiB (~10 MiB) are within RSS noise, so the bound
    // is read off the server's high-water mark of what one connection held. (That its queue
    // did overflow is shown below: it misses deltas and gets a resync.) With the bound
    // raised to 64 MiB, one connection here held 1.1-1.6 MB.
    let (_, _, metrics) = common::http_get(addr, "/metrics");
    let held_peak = common::metric_samples(&metrics, "kasagi_outbound_peak_bytes")
        .into_iter()
        .fold(0.0, f64::max) as usize;
    assert!(
        held_peak <= QUEUE_BYTES + CONTROL_SLACK,
        "a connection held {held_peak} bytes with --outbound-queue-bytes {QUEUE_BYTES}"
    );

    let (_, ack) = writer.op_acked("flood", FLOOD_OPS + 1, json!([["set", ["final"], true]]));
    let final_tick = ack["tick"].as_u64().expect("ack.tick");
    assert!(final_tick > last_tick);

    // Now the slow client reads: contiguous deltas, then one resync, then contiguous deltas.
    let mut resyncs = 0;
    let mut deltas_before_resync = 0;
    while resyncs == 0 || mirror.tick < final_tick {
        let message = slow.recv();
        match message["t"].as_str() {
            Some("delta") => {
                mirror
                    .apply_delta(&message)
                    .unwrap_or_else(|err| panic!("after {resyncs} resyncs: {err}"));
                if resyncs == 0 {
                    deltas_before_resync += 1;
                }
            }
            Some("joined") => {
                assert_eq!(message["resync"], true, "an unasked joined: {message}");
                assert!(
                    message.get("state").is_some(),
                    "a resync carries state: {message}"
                );
                // Every room of an overflowed connection may be resynced, the probe's too.
                if message["room"] == "flood" {
                    mirror.reset(&message);
                    resyncs += 1;
                }
            }
            Some("presence") => {}
            _ => panic!("the slow client got {message}"),
        }
    }
    assert!(
        deltas_before_resync < FLOOD_OPS,
        "the slow client got every delta: nothing was dropped"
    );
    eprintln!(
        "slow consumer: peak held {held_peak} B; RSS {baseline} -> {rss_peak} KiB; \
         {deltas_before_resync} deltas before {resyncs} resync(s); final tick {final_tick}; \
         writer resyncs {writer_resyncs}"
    );
    slow.sync();
    let fresh = server.client(Enc::Json).join("flood");
    assert_eq!(mirror.tick, fresh["tick"].as_u64().expect("tick"));
    assert_eq!(mirror.state["seq"], fresh["state"]["seq"]);
    assert_eq!(mirror.state["final"], true);
    let fresh_msgpack = server.client(Enc::Msgpack).join("flood");
    assert_eq!(
        mirror.state, fresh_msgpack["state"],
        "the slow copy converged"
    );
}
