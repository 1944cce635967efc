//! CPU lists: parsing `--cpus 0,2-3` and discovering which CPUs we may use.
//!
//! The list syntax is the one Linux prints in `/sys/devices/system/cpu/online`
//! and `taskset -c` accepts: comma-separated items, each a CPU number or an
//! inclusive range `a-b`. The order is kept as written (shard `i` takes the
//! `i`-th entry, so the operator controls the mapping) and repeats are dropped,
//! keeping the first occurrence, so two shards are never pinned to one CPU by a
//! typo like `0-3,2`.
//!
//! Parsing never panics and never allocates more than [`MAX_CPU`] + 1 entries,
//! whatever the input.

use thiserror::Error;

/// The largest CPU number accepted: Linux's maximum `CONFIG_NR_CPUS` is 8192.
/// The bound keeps `0-18446744073709551615` from allocating the moon.
pub const MAX_CPU: usize = 8191;

/// Why a CPU list was rejected.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum CpuListError {
    /// The list has no items at all.
    #[error("the cpu list is empty")]
    Empty,
    /// An item between commas is empty, e.g. `0,,1` or a trailing comma.
    #[error("the cpu list has an empty item at position {position}")]
    EmptyItem { position: usize },
    /// An item is not a decimal CPU number or range.
    #[error("`{item}` is not a cpu number or a range like 2-5")]
    NotANumber { item: String },
    /// A range ends before it starts, e.g. `3-1`.
    #[error("the cpu range {start}-{end} is reversed")]
    ReversedRange { start: usize, end: usize },
    /// A CPU number is above [`MAX_CPU`].
    #[error("cpu {cpu} is above the largest supported cpu number {MAX_CPU}")]
    CpuOutOfRange { cpu: usize },
}

/// Parses a list like `0,2-3` into CPU numbers, in the given order, without
/// repeats. Whitespace around items is ignored.
pub fn parse_cpu_list(s: &str) -> Result<Vec<usize>, CpuListError> {
    if s.trim().is_empty() {
        return Err(CpuListError::Empty);
    }
    let mut seen = vec![false; MAX_CPU + 1];
    let mut cpus = Vec::new();
    for (position, item) in s.split(',').enumerate() {
        let item = item.trim();
        if item.is_empty() {
            return Err(CpuListError::EmptyItem { position });
        }
        let (start, end) = match item.split_once('-') {
            Some((start, end)) => (parse_cpu(start, item)?, parse_cpu(end, item)?),
            None => {
                let cpu = parse_cpu(item, item)?;
                (cpu, cpu)
            }
        };
        if end < start {
            return Err(CpuListError::ReversedRange { start, end });
        }
        for (cpu, already) in (start..=end).zip(&mut seen[start..=end]) {
            if !*already {
                *already = true;
                cpus.push(cpu);
            }
        }
    }
    Ok(cpus)
}

/// One CPU number; `item` is the whole list item, for the error message.
fn parse_cpu(text: &str, item: &str) -> Result<usize, CpuListError> {
    let text = text.trim();
    // `usize::from_str` accepts a leading `+`; a CPU list never has one.
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(CpuListError::NotANumber {
            item: item.to_owned(),
        });
    }
    match text.parse::<usize>() {
        Ok(cpu) if cpu <= MAX_CPU => Ok(cpu),
        Ok(cpu) => Err(CpuListError::CpuOutOfRange { cpu }),
        // All digits but does not fit a usize: certainly out of range.
        Err(_) => Err(CpuListError::CpuOutOfRange { cpu: usize::MAX }),
    }
}

/// How many CPUs this process can use (affinity mask and cgroup quota
/// included), as [`std::thread::available_parallelism`] reports it; 1 if
/// that is unknown. The default shard count.
pub fn online_cpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// The CPU numbers this process may run on (its affinity mask), ascending.
///
/// Used to pick CPUs when none are given: in a container restricted to CPUs
/// 4-7, shard 0 must go to CPU 4, not CPU 0. Falls back to `0..online_cpus()`
/// if the mask cannot be read.
pub fn allowed_cpus() -> Vec<usize> {
    use nix::sched::{sched_getaffinity, CpuSet};
    use nix::unistd::Pid;

    match sched_getaffinity(Pid::from_raw(0)) {
        Ok(mask) => (0..CpuSet::count())
            .filter(|&cpu| mask.is_set(cpu).unwrap_or(false))
            .collect(),
        Err(_) => (0..online_cpus()).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn single_cpus_and_ranges() {
        assert_eq!(parse_cpu_list("0"), Ok(vec![0]));
        assert_eq!(parse_cpu_list("0,2-3"), Ok(vec![0, 2, 3]));
        assert_eq!(parse_cpu_list("4-4"), Ok(vec![4]));
        assert_eq!(parse_cpu_list("0-2,8-9"), Ok(vec![0, 1, 2, 8, 9]));
    }

    #[test]
    fn order_is_kept_and_repeats_dropped() {
        assert_eq!(parse_cpu_list("3,1,2"), Ok(vec![3, 1, 2]));
        assert_eq!(parse_cpu_list("0-3,2,1,5"), Ok(vec![0, 1, 2, 3, 5]));
        assert_eq!(parse_cpu_list("1,1,1"), Ok(vec![1]));
    }

    #[test]
    fn whitespace_around_items_is_ignored() {
        assert_eq!(parse_cpu_list(" 0, 2 - 3 \n"), Ok(vec![0, 2, 3]));
    }

    #[test]
    fn empty_lists_and_items_are_rejected() {
        assert_eq!(parse_cpu_list(""), Err(CpuListError::Empty));
        assert_eq!(parse_cpu_list("  "), Err(CpuListError::Empty));
        assert_eq!(
            parse_cpu_list("0,,1"),
            Err(CpuListError::EmptyItem { position: 1 })
        );
        assert_eq!(
            parse_cpu_list("0,"),
            Err(CpuListError::EmptyItem { position: 1 })
        );
        assert_eq!(
            parse_cpu_list(",0"),
            Err(CpuListError::EmptyItem { position: 0 })
        );
    }

    #[test]
    fn reversed_ranges_are_rejected() {
        assert_eq!(
            parse_cpu_list("3-1"),
            Err(CpuListError::ReversedRange { start: 3, end: 1 })
        );
    }

    #[test]
    fn junk_is_rejected() {
        for junk in [
            "a", "0-", "-1", "1-2-3", "+1", "0x1", "1.5", "0;1", "--", "é",
        ] {
            assert!(
                matches!(parse_cpu_list(junk), Err(CpuListError::NotANumber { .. })),
                "{junk:?} -> {:?}",
                parse_cpu_list(junk)
            );
        }
    }

    #[test]
    fn huge_numbers_are_rejected_without_allocating() {
        assert_eq!(
            parse_cpu_list("8192"),
            Err(CpuListError::CpuOutOfRange { cpu: 8192 })
        );
        assert_eq!(
            parse_cpu_list("0-18446744073709551615"),
            Err(CpuListError::CpuOutOfRange { cpu: usize::MAX })
        );
        assert_eq!(
            parse_cpu_list("99999999999999999999999"),
            Err(CpuListError::CpuOutOfRange { cpu: usize::MAX })
        );
        assert_eq!(parse_cpu_list("8191").map(|v| v.len()), Ok(1));
    }

    #[test]
    fn this_machine_has_cpus() {
        assert!(online_cpus() >= 1);
        let allowed = allowed_cpus();
        assert!(!allowed.is_empty());
        assert!(allowed.windows(2).all(|w| w[0] < w[1]), "{allowed:?}");
    }
}
