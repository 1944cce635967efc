//! Resource readings: the server's CPU time and RSS from `/proc/PID/*`, the bench's own
//! CPU time (`getrusage`), and raising `RLIMIT_NOFILE` so tens of thousands of sockets fit.

use std::fs;
use std::time::Duration;

use anyhow::{Context, Result};
use nix::sys::resource::{getrlimit, getrusage, setrlimit, Resource, UsageWho};
use nix::sys::time::TimeVal;
use nix::unistd::{sysconf, SysconfVar};

/// CPU time and resident memory of a process at one moment.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct ProcSample {
    /// User + system CPU time of every thread, in seconds.
    pub cpu_seconds: f64,
    /// Resident set size, in KiB.
    pub rss_kib: u64,
}

/// Reads `/proc/PID/stat` (utime + stime, fields 14 and 15) and `/proc/PID/status`
/// (`VmRSS`).
pub fn sample_process(pid: u32) -> Result<ProcSample> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("reading /proc/{pid}/stat"))?;
    // The command name (field 2) is in parentheses and may hold spaces: split after it.
    let after = stat
        .rfind(')')
        .map(|i| &stat[i + 1..])
        .context("malformed /proc/PID/stat")?;
    let fields: Vec<&str> = after.split_whitespace().collect();
    // `after` starts at field 3 (state), so field N is at index N - 3.
    let ticks = |n: usize| -> Result<u64> {
        fields
            .get(n - 3)
            .context("short /proc/PID/stat")?
            .parse::<u64>()
            .context("non-numeric /proc/PID/stat field")
    };
    let clock_ticks = clock_ticks_per_second();
    let cpu_seconds = (ticks(14)? + ticks(15)?) as f64 / clock_ticks;
    let status = fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    let rss_kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    Ok(ProcSample {
        cpu_seconds,
        rss_kib,
    })
}

/// Time the listed CPUs spent running tasks (user, nice, system, steal), summed, in
/// seconds, from `/proc/stat`. Interrupt and softirq time is left out: on loopback it is
/// mostly the bench's and the server's own packets. Compared with the CPU time of the
/// processes meant to run there, it shows how much other work shared those cores.
pub fn cpus_busy_seconds(cpus: &[usize]) -> f64 {
    let Ok(stat) = fs::read_to_string("/proc/stat") else {
        return 0.0;
    };
    let mut ticks = 0u64;
    for line in stat.lines() {
        let mut fields = line.split_whitespace();
        let Some(name) = fields.next() else { continue };
        let Some(cpu) = name
            .strip_prefix("cpu")
            .and_then(|n| n.parse::<usize>().ok())
        else {
            continue;
        };
        if !cpus.contains(&cpu) {
            continue;
        }
        let values: Vec<u64> = fields.filter_map(|v| v.parse().ok()).collect();
        // user nice system idle iowait irq softirq steal (guest time is inside user).
        for i in [0, 1, 2, 7] {
            ticks += values.get(i).copied().unwrap_or(0);
        }
    }
    ticks as f64 / clock_ticks_per_second()
}

fn clock_ticks_per_second() -> f64 {
    match sysconf(SysconfVar::CLK_TCK) {
        Ok(Some(ticks)) if ticks > 0 => ticks as f64,
        _ => 100.0,
    }
}

/// CPU time (user + system) this process has used so far, all threads.
pub fn own_cpu() -> Duration {
    let Ok(usage) = getrusage(UsageWho::RUSAGE_SELF) else {
        return Duration::ZERO;
    };
    let tv = |t: TimeVal| Duration::new(t.tv_sec() as u64, t.tv_usec() as u32 * 1000);
    tv(usage.user_time()) + tv(usage.system_time())
}

/// The soft `RLIMIT_NOFILE` in force (0 when it cannot be read).
pub fn nofile_limit() -> u64 {
    getrlimit(Resource::RLIMIT_NOFILE).map_or(0, |(soft, _)| soft)
}

/// Raises this process's `RLIMIT_NOFILE` to at least `wanted` (children inherit it). The
/// hard limit is raised too when allowed (root); returns the soft limit in force.
pub fn raise_nofile(wanted: u64) -> u64 {
    let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else {
        return 0;
    };
    if soft >= wanted {
        return soft;
    }
    if setrlimit(Resource::RLIMIT_NOFILE, wanted, hard.max(wanted)).is_ok() {
        return wanted;
    }
    // Not allowed past the hard limit: take what it allows.
    if setrlimit(Resource::RLIMIT_NOFILE, hard, hard).is_ok() {
        return hard;
    }
    soft
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_process_can_be_sampled() {
        let s = sample_process(std::process::id()).expect("own /proc");
        assert!(s.rss_kib > 0);
        assert!(s.cpu_seconds >= 0.0);
        assert!(cpus_busy_seconds(&[0]) > 0.0);
    }
}
