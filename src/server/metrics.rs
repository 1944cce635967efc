//! Per-shard counters, exposed as Prometheus text on `GET /metrics`.
//!
//! Each shard writes only its own [`ShardMetrics`] (relaxed atomics on a cache line of
//! their own, so there is no contention); `/metrics` on any shard reads all of them.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

/// The counters of one shard.
#[derive(Default)]
#[repr(align(128))]
pub struct ShardMetrics {
    pub connections: AtomicU64,
    pub rooms: AtomicU64,
    pub messages_in: AtomicU64,
    pub messages_out: AtomicU64,
    pub bytes_in: AtomicU64,
    pub bytes_out: AtomicU64,
    pub resyncs: AtomicU64,
    pub deltas: AtomicU64,
    pub protocol_errors: AtomicU64,
    pub handshakes: AtomicU64,
    pub handshake_refusals: AtomicU64,
    /// The most bytes one connection has held for its socket (a high-water mark).
    pub outbound_peak: AtomicU64,
    /// The shard's mesh: messages waiting for room in a peer's channel (a gauge), and how
    /// many ever had to wait; copied from the mesh once a second.
    pub mesh_backlog: AtomicU64,
    pub mesh_outboxed: AtomicU64,
    /// With `--redis` (see `fleet/`); zero without.
    pub fleet: FleetMetrics,
}

/// What a shard did with Redis for the rooms it is the owner shard of.
#[derive(Default)]
pub struct FleetMetrics {
    pub appends: AtomicU64,
    pub append_resends: AtomicU64,
    pub rooms_taken: AtomicU64,
    pub step_downs: AtomicU64,
    pub gap_repairs: AtomicU64,
    pub relayed: AtomicU64,
}

impl ShardMetrics {
    #[inline]
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Relaxed);
    }

    #[inline]
    pub fn sub(counter: &AtomicU64, n: u64) {
        counter.fetch_sub(n, Relaxed);
    }
}

/// The metrics of every shard, shared read-only between them.
pub type AllMetrics = Arc<[ShardMetrics]>;

pub fn new_all(shards: usize) -> AllMetrics {
    (0..shards).map(|_| ShardMetrics::default()).collect()
}

/// Renders every shard's counters in the Prometheus text exposition format.
pub fn render(all: &[ShardMetrics]) -> String {
    type Getter = fn(&ShardMetrics) -> &AtomicU64;
    const FAMILIES: &[(&str, &str, &str, Getter)] = &[
        (
            "kasagi_connections",
            "gauge",
            "Open WebSocket connections.",
            |m| &m.connections,
        ),
        ("kasagi_rooms", "gauge", "Rooms owned by the shard.", |m| {
            &m.rooms
        }),
        (
            "kasagi_messages_in_total",
            "counter",
            "WebSocket messages received.",
            |m| &m.messages_in,
        ),
        (
            "kasagi_messages_out_total",
            "counter",
            "WebSocket messages queued to clients.",
            |m| &m.messages_out,
        ),
        (
            "kasagi_bytes_in_total",
            "counter",
            "Bytes read from client sockets.",
            |m| &m.bytes_in,
        ),
        (
            "kasagi_bytes_out_total",
            "counter",
            "Bytes written to client sockets.",
            |m| &m.bytes_out,
        ),
        (
            "kasagi_deltas_total",
            "counter",
            "Deltas produced by rooms the shard owns.",
            |m| &m.deltas,
        ),
        (
            "kasagi_resyncs_total",
            "counter",
            "Snapshots sent to slow consumers after their queue overflowed.",
            |m| &m.resyncs,
        ),
        (
            "kasagi_protocol_errors_total",
            "counter",
            "Connections closed for a WebSocket or protocol violation.",
            |m| &m.protocol_errors,
        ),
        (
            "kasagi_handshakes_total",
            "counter",
            "Accepted WebSocket upgrades.",
            |m| &m.handshakes,
        ),
        (
            "kasagi_handshake_refusals_total",
            "counter",
            "Refused upgrades and timed-out handshakes.",
            |m| &m.handshake_refusals,
        ),
        (
            "kasagi_outbound_peak_bytes",
            "gauge",
            "Most bytes one connection has held for its socket since start (deltas stay within --outbound-queue-bytes; acks, errors and snapshots come on top).",
            |m| &m.outbound_peak,
        ),
        (
            "kasagi_mesh_backlog",
            "gauge",
            "Messages to other shards waiting for room in a full channel (one that only grows: a stalled shard).",
            |m| &m.mesh_backlog,
        ),
        (
            "kasagi_mesh_outboxed_total",
            "counter",
            "Messages to other shards that found the peer's channel full and waited in order.",
            |m| &m.mesh_outboxed,
        ),
        (
            "kasagi_fleet_appends_total",
            "counter",
            "Deltas appended to the Redis log.",
            |m| &m.fleet.appends,
        ),
        (
            "kasagi_fleet_append_resends_total",
            "counter",
            "Appends sent again after a reply was lost (Redis unreachable, timeout).",
            |m| &m.fleet.append_resends,
        ),
        (
            "kasagi_fleet_rooms_taken_total",
            "counter",
            "Room leases taken (first owner, take-over, reload), each with a new epoch.",
            |m| &m.fleet.rooms_taken,
        ),
        (
            "kasagi_fleet_step_downs_total",
            "counter",
            "Rooms given up after another epoch or owner was found, or the lease lapsed.",
            |m| &m.fleet.step_downs,
        ),
        (
            "kasagi_fleet_gap_repairs_total",
            "counter",
            "Reads of missed deltas from the log (a tick gap or a subscriber reconnect).",
            |m| &m.fleet.gap_repairs,
        ),
        (
            "kasagi_fleet_relayed_total",
            "counter",
            "Requests relayed to a room owned by another instance.",
            |m| &m.fleet.relayed,
        ),
    ];
    let mut out = String::with_capacity(2048);
    for (name, kind, help, get) in FAMILIES {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for (shard, m) in all.iter().enumerate() {
            let _ = writeln!(out, "{name}{{shard=\"{shard}\"}} {}", get(m).load(Relaxed));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_one_line_per_shard_and_family() {
        let all = new_all(2);
        ShardMetrics::add(&all[1].connections, 3);
        let text = render(&all);
        assert!(text.contains("# TYPE kasagi_connections gauge\n"));
        assert!(text.contains("kasagi_connections{shard=\"0\"} 0\n"));
        assert!(text.contains("kasagi_connections{shard=\"1\"} 3\n"));
        assert!(text.contains("kasagi_bytes_out_total{shard=\"1\"} 0\n"));
    }
}
