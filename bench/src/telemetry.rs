//! The server's own latency telemetry, read over HTTP when a scenario ends: the summaries
//! of `GET /metrics` go into the report beside the bench's end-to-end histograms, and the
//! `.hgrm` text of `GET /debug/latency` is saved as `server-latency.hgrm`.
//!
//! The server's histograms cover its whole life (connections, warm-up and drain
//! included), not only the measured window: they say where inside the server the time
//! goes, while the bench's histograms remain the figures of record.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use anyhow::{bail, Context, Result};

/// The server's histograms, in the order the report prints them.
const HISTOGRAMS: [&str; 4] = [
    "op_to_flush",
    "flush_to_write",
    "shard_hop",
    "redis_round_trip",
];

/// One server histogram's summary.
#[derive(Debug, Clone, PartialEq)]
pub struct ServerLatency {
    pub name: &'static str,
    pub count: u64,
    /// (quantile label as the report prints it, seconds).
    pub quantiles: Vec<(&'static str, f64)>,
}

/// What one scenario read from the server.
#[derive(Debug, Clone, Default)]
pub struct ServerTelemetry {
    pub summaries: Vec<ServerLatency>,
    pub hgrm: Option<String>,
}

/// Reads both endpoints; a server that does not answer gives an error for the report's
/// notes, never a failed run.
pub fn fetch(addr: SocketAddr) -> Result<ServerTelemetry> {
    let metrics = get(addr, "/metrics")?;
    Ok(ServerTelemetry {
        summaries: summaries(&metrics),
        hgrm: get(addr, "/debug/latency").ok(),
    })
}

/// The histograms `/metrics` shows with at least one event.
pub fn summaries(metrics: &str) -> Vec<ServerLatency> {
    const QUANTILES: [(&str, &str); 5] = [
        ("0.5", "p50"),
        ("0.9", "p90"),
        ("0.99", "p99"),
        ("0.999", "p99.9"),
        ("1", "max"),
    ];
    let value = |key: &str| -> Option<f64> {
        metrics.lines().find_map(|line| {
            let rest = line.strip_prefix(key)?;
            rest.strip_prefix(' ')?.trim().parse().ok()
        })
    };
    HISTOGRAMS
        .iter()
        .filter_map(|&name| {
            let count = value(&format!("kasagi_{name}_seconds_count"))? as u64;
            if count == 0 {
                return None;
            }
            let quantiles = QUANTILES
                .iter()
                .filter_map(|(q, label)| {
                    value(&format!("kasagi_{name}_seconds{{quantile=\"{q}\"}}"))
                        .map(|v| (*label, v))
                })
                .collect();
            Some(ServerLatency {
                name,
                count,
                quantiles,
            })
        })
        .collect()
}

/// A plain HTTP/1.1 GET on loopback; the body of a `200`.
fn get(addr: SocketAddr, path: &str) -> Result<String> {
    let timeout = Duration::from_secs(5);
    let mut stream = TcpStream::connect_timeout(&addr, timeout)
        .with_context(|| format!("connecting to {addr} for {path}"))?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut response = Vec::new();
    stream
        .take(16 << 20)
        .read_to_end(&mut response)
        .with_context(|| format!("reading {path}"))?;
    let text = String::from_utf8_lossy(&response);
    let Some((head, body)) = text.split_once("\r\n\r\n") else {
        bail!("{path}: no complete response");
    };
    let status = head.lines().next().unwrap_or_default();
    if !status.starts_with("HTTP/1.1 200") {
        bail!("{path}: {status}");
    }
    Ok(body.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summaries_keep_histograms_with_events_in_order() {
        let metrics = "\
kasagi_connections{shard=\"0\"} 3
kasagi_op_to_flush_seconds{quantile=\"0.5\"} 0.000012
kasagi_op_to_flush_seconds{quantile=\"0.9\"} 0.00002
kasagi_op_to_flush_seconds{quantile=\"0.99\"} 0.0001
kasagi_op_to_flush_seconds{quantile=\"0.999\"} 0.0004
kasagi_op_to_flush_seconds{quantile=\"1\"} 0.002
kasagi_op_to_flush_seconds_sum 0.5
kasagi_op_to_flush_seconds_count 1000
kasagi_shard_hop_seconds{quantile=\"0.5\"} 0
kasagi_shard_hop_seconds_count 0
";
        let s = summaries(metrics);
        assert_eq!(s.len(), 1, "{s:?}");
        assert_eq!(s[0].name, "op_to_flush");
        assert_eq!(s[0].count, 1000);
        assert_eq!(
            s[0].quantiles,
            vec![
                ("p50", 0.000012),
                ("p90", 0.00002),
                ("p99", 0.0001),
                ("p99.9", 0.0004),
                ("max", 0.002)
            ]
        );
    }
}
