//! The servers' resident memory and CPU time, from /proc.

use super::BenchArgs;

/// A server process's resident memory and CPU time, from /proc; summed over several.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct ServerUsage {
    pub(super) rss_kib: u64,
    pub(super) cpu_seconds: f64,
}

impl ServerUsage {
    /// The sum over `pids`; None if there are none or one cannot be read.
    pub(super) fn read(pids: &[u32]) -> Option<Self> {
        if pids.is_empty() {
            return None;
        }
        let mut sum = Self::default();
        for &pid in pids {
            let one = Self::read_one(pid)?;
            sum.rss_kib += one.rss_kib;
            sum.cpu_seconds += one.cpu_seconds;
        }
        Some(sum)
    }

    /// `pid` and its children (a postmaster and its backends). The CPU of children that
    /// exited meanwhile is not counted; PostgreSQL's backends live as long as their pooled
    /// connections.
    pub(super) fn read_tree(pid: Option<u32>) -> Option<Self> {
        let pid = pid?;
        let mut pids = vec![pid];
        for entry in std::fs::read_dir("/proc").ok()?.flatten() {
            let Some(child) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<u32>().ok())
            else {
                continue;
            };
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{child}/stat")) else {
                continue;
            };
            let parent = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().nth(1))
                .and_then(|p| p.parse::<u32>().ok());
            if parent == Some(pid) {
                pids.push(child);
            }
        }
        // A child may exit between the listing and the read: count those that are left.
        let mut sum = Self::read_one(pid)?;
        for &child in &pids[1..] {
            if let Some(one) = Self::read_one(child) {
                sum.rss_kib += one.rss_kib;
                sum.cpu_seconds += one.cpu_seconds;
            }
        }
        Some(sum)
    }

    pub(super) fn read_one(pid: u32) -> Option<Self> {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        let rss_kib = status
            .lines()
            .find(|l| l.starts_with("VmRSS:"))?
            .split_whitespace()
            .nth(1)?
            .parse()
            .ok()?;
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // Fields after the command name (which may hold spaces) start after the last ')'.
        let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
        let ticks: f64 =
            fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
        // USER_HZ is 100 on Linux.
        Some(Self {
            rss_kib,
            cpu_seconds: ticks / 100.0,
        })
    }
}

/// The servers' usage (`--server-pid`) and PostgreSQL's (`--store-pid`) at one moment.
pub(super) struct Usage {
    pub(super) server: Option<ServerUsage>,
    pub(super) store: Option<ServerUsage>,
}

impl Usage {
    pub(super) fn read(args: &BenchArgs) -> Self {
        Self {
            server: ServerUsage::read(&args.server_pid),
            store: ServerUsage::read_tree(args.store_pid),
        }
    }
}

/// The CPU time of `pids`' threads so far, summed, from /proc/PID/task/*/schedstat: exact
/// (nanoseconds), where /proc/PID/stat counts 10 ms ticks, too coarse for one fan-out. Threads
/// that exited meanwhile are not counted. None if a process cannot be read.
pub(super) fn cpu_time(pids: &[u32]) -> Option<std::time::Duration> {
    let mut ns = 0u64;
    for pid in pids {
        for task in std::fs::read_dir(format!("/proc/{pid}/task"))
            .ok()?
            .flatten()
        {
            // A thread may exit between the listing and the read.
            let Ok(schedstat) = std::fs::read_to_string(task.path().join("schedstat")) else {
                continue;
            };
            ns += schedstat
                .split_whitespace()
                .next()
                .and_then(|on_cpu| on_cpu.parse::<u64>().ok())?;
        }
    }
    Some(std::time::Duration::from_nanos(ns))
}
