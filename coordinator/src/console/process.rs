//! This process's resources, read from `/proc/self` (Linux; elsewhere every figure is absent).

/// Memory, CPU time and open files of this process.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct ProcessUsage {
    /// Resident memory now, bytes (`VmRSS`).
    pub rss_bytes: Option<u64>,
    /// Peak resident memory, bytes (`VmHWM`).
    pub peak_rss_bytes: Option<u64>,
    /// CPU seconds in user mode.
    pub cpu_user_secs: Option<f64>,
    /// CPU seconds in the kernel.
    pub cpu_system_secs: Option<f64>,
    /// Open file descriptors.
    pub open_fds: Option<u64>,
}

/// Clock ticks per second of `/proc/self/stat`'s CPU times (`USER_HZ`, 100 on Linux).
const TICKS_PER_SECOND: f64 = 100.0;

impl ProcessUsage {
    /// Reads this process's figures now.
    pub fn now() -> Self {
        let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
        let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
        let (cpu_user_secs, cpu_system_secs) = match cpu_ticks(&stat) {
            Some((user, system)) => (
                Some(user as f64 / TICKS_PER_SECOND),
                Some(system as f64 / TICKS_PER_SECOND),
            ),
            None => (None, None),
        };
        Self {
            rss_bytes: status_kib(&status, "VmRSS:").map(|kib| kib * 1024),
            peak_rss_bytes: status_kib(&status, "VmHWM:").map(|kib| kib * 1024),
            cpu_user_secs,
            cpu_system_secs,
            open_fds: std::fs::read_dir("/proc/self/fd")
                .ok()
                .map(|entries| entries.count() as u64),
        }
    }
}

/// A `kB` figure of `/proc/self/status`.
fn status_kib(status: &str, key: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|line| line.strip_prefix(key))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// Field `n` (from 1, as `proc(5)` numbers them) of a `/proc/PID/stat` line, read after the
/// command name (field 2, in parentheses, may hold spaces and parentheses).
fn stat_field(stat: &str, n: usize) -> Option<u64> {
    let end = stat.rfind(')')?;
    stat[end + 1..]
        .split_whitespace()
        .nth(n.checked_sub(3)?)?
        .parse()
        .ok()
}

/// `utime` and `stime` of `/proc/self/stat`: fields 14 and 15.
fn cpu_ticks(stat: &str) -> Option<(u64, u64)> {
    Some((stat_field(stat, 14)?, stat_field(stat, 15)?))
}

/// When process `pid` started, Unix milliseconds (Linux: its `starttime`, field 22 of
/// `/proc/PID/stat`, after the boot time of `/proc/stat`); `None` when there is no such
/// process or no `/proc`.
pub fn process_started_at_ms(pid: u32) -> Option<i64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let since_boot = stat_field(&stat, 22)?;
    let boot = std::fs::read_to_string("/proc/stat").ok()?;
    let boot_secs: i64 = boot
        .lines()
        .find_map(|line| line.strip_prefix("btime "))?
        .trim()
        .parse()
        .ok()?;
    Some(boot_secs * 1000 + (since_boot as f64 * 1000.0 / TICKS_PER_SECOND) as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_times_are_read_after_a_command_name_with_spaces_and_parentheses() {
        let stat = "42 (a (b) c) S 1 42 42 0 -1 4194560 100 0 0 0 250 75 0 0 20 0 1 0";
        assert_eq!(cpu_ticks(stat), Some((250, 75)));
        assert_eq!(cpu_ticks("42 (x) S 1"), None);
    }

    #[test]
    fn this_process_started_before_now_and_a_missing_one_has_no_start() {
        if cfg!(target_os = "linux") {
            let started = process_started_at_ms(std::process::id()).unwrap();
            let now = super::super::now_ms();
            assert!(started <= now + 1000 && started > now - 86_400_000 * 365);
            assert_eq!(process_started_at_ms(u32::MAX), None);
        }
    }

    #[test]
    fn status_figures_are_read_in_kib() {
        let status = "Name:\tmedfed\nVmHWM:\t   20480 kB\nVmRSS:\t   10240 kB\n";
        assert_eq!(status_kib(status, "VmHWM:"), Some(20480));
        assert_eq!(status_kib(status, "VmSwap:"), None);
    }

    #[test]
    fn this_process_has_memory_and_open_files_on_linux() {
        if cfg!(target_os = "linux") {
            let usage = ProcessUsage::now();
            assert!(usage.rss_bytes.unwrap() > 0);
            assert!(usage.peak_rss_bytes.unwrap() >= usage.rss_bytes.unwrap() / 2);
            assert!(usage.open_fds.unwrap() >= 3);
        }
    }
}
