//! Resident memory and CPU time of a process under test, read from `/proc`.

use std::time::Duration;

/// Bytes per KiB, as `/proc/<pid>/status` counts.
const KIB: u64 = 1024;

/// What one process used, read once (`VmHWM` is the kernel's own peak, so a final read after
/// the load and before the kill is enough).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Usage {
    /// Peak resident set size (`VmHWM`), bytes.
    pub peak_rss: u64,
    /// Current resident set size (`VmRSS`), bytes.
    pub rss: u64,
    /// Of `rss`, anonymous memory (`RssAnon`: heap, stacks), bytes.
    pub rss_anon: u64,
    /// Of `rss`, pages mapped from files (`RssFile`: mostly the binary's own code, shared and
    /// clean, read from the page cache), bytes.
    pub rss_file: u64,
    /// User + system CPU time so far.
    pub cpu: Duration,
}

impl Usage {
    /// Peak resident memory in MiB.
    pub fn peak_rss_mib(&self) -> f64 {
        mib(self.peak_rss)
    }

    /// Current anonymous resident memory in MiB.
    pub fn rss_anon_mib(&self) -> f64 {
        mib(self.rss_anon)
    }

    /// Current file-backed resident memory in MiB.
    pub fn rss_file_mib(&self) -> f64 {
        mib(self.rss_file)
    }
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

/// Reads `pid`'s usage; `None` when it has exited.
pub fn read(pid: u32) -> Option<Usage> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    Some(Usage {
        peak_rss: status_kib(&status, "VmHWM:")? * KIB,
        rss: status_kib(&status, "VmRSS:")? * KIB,
        rss_anon: status_kib(&status, "RssAnon:")? * KIB,
        rss_file: status_kib(&status, "RssFile:")? * KIB,
        cpu: cpu_time(&stat)?,
    })
}

fn status_kib(status: &str, key: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with(key))?;
    line[key.len()..].split_whitespace().next()?.parse().ok()
}

/// utime + stime (fields 14 and 15 of `/proc/<pid>/stat`, after the parenthesised command).
fn cpu_time(stat: &str) -> Option<Duration> {
    let after_comm = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = after_comm.split_whitespace().collect();
    // after_comm starts at field 3 (state), so utime (14) is index 11 and stime (15) index 12.
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some(Duration::from_secs_f64(ticks as f64 / clock_ticks_per_second()))
}

/// `sysconf(_SC_CLK_TCK)` is 100 on every Linux ABI this runs on.
fn clock_ticks_per_second() -> f64 {
    100.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_own_usage() {
        let usage = read(std::process::id()).expect("own /proc entry");
        assert!(usage.peak_rss >= usage.rss && usage.rss > 0, "{usage:?}");
        assert!(usage.rss_anon > 0 && usage.rss_file > 0 && usage.rss_anon + usage.rss_file <= usage.rss, "{usage:?}");
    }

    #[test]
    fn parses_cpu_ticks_after_a_command_with_spaces() {
        let stat = "42 (my (odd) cmd) S 1 42 42 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 1 0 5 1000 10";
        assert_eq!(cpu_time(stat), Some(Duration::from_secs(3)));
    }

    #[test]
    fn missing_process_is_none() {
        assert_eq!(read(u32::MAX), None);
    }
}
