//! What /proc says about a process: the daemon's resident memory (VmRSS,
//! sampled every second for the maximum and read at the moments the
//! report names), and the CPU time of the daemon and of the soak itself,
//! to tell which of the two the machine's cores were busy with.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// A number field of /proc/PID/status (`VmRSS` in KiB, `Threads`).
fn status_field(pid: u32, field: &str) -> Result<u64, String> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).map_err(|e| {
        format!("cannot read /proc/{pid}/status: {e}; is --pid the daemon's process id?")
    })?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or_else(|| format!("/proc/{pid}/status has no {field} line"))
}

/// Resident memory of `pid` in KiB.
pub fn rss_kib(pid: u32) -> Result<u64, String> {
    status_field(pid, "VmRSS")
}

/// Threads of `pid` (the daemon runs each plugin call on a thread).
pub fn threads(pid: u32) -> Result<u64, String> {
    status_field(pid, "Threads")
}

/// CPU time (user + system) `pid` has used, in seconds; `None`: this process.
pub fn cpu_seconds(pid: Option<u32>) -> Result<f64, String> {
    let path = pid.map_or("/proc/self/stat".to_string(), |p| format!("/proc/{p}/stat"));
    let stat = std::fs::read_to_string(&path).map_err(|e| format!("cannot read {path}: {e}"))?;
    // After the parenthesised command name, utime and stime are the 12th
    // and 13th fields.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let ticks: u64 = fields
        .get(11..13)
        .ok_or_else(|| format!("{path}: too few fields"))?
        .iter()
        .filter_map(|f| f.parse::<u64>().ok())
        .sum();
    // USER_HZ is 100 on every architecture Linux runs sockd on.
    Ok(ticks as f64 / 100.0)
}

/// The largest RSS seen since [`Sampler::start`].
pub struct Sampler {
    pid: u32,
    max: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Sampler {
    pub fn start(pid: u32) -> Sampler {
        let max = Arc::new(AtomicU64::new(rss_kib(pid).unwrap_or(0)));
        let task = {
            let max = max.clone();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_secs(1));
                loop {
                    tick.tick().await;
                    if let Ok(now) = rss_kib(pid) {
                        max.fetch_max(now, Ordering::Relaxed);
                    }
                }
            })
        };
        Sampler { pid, max, task }
    }

    /// RSS now (also counted in the maximum).
    pub fn now(&self) -> Result<u64, String> {
        let now = rss_kib(self.pid)?;
        self.max.fetch_max(now, Ordering::Relaxed);
        Ok(now)
    }

    pub fn max(&self) -> u64 {
        self.max.load(Ordering::Relaxed)
    }
}

impl Drop for Sampler {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// `123.4 MiB`.
pub fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_our_own_rss() {
        assert!(rss_kib(std::process::id()).unwrap() > 0);
        assert!(rss_kib(u32::MAX).unwrap_err().contains("--pid"));
        assert!(threads(std::process::id()).unwrap() >= 1);
        assert_eq!(mib(1536), "1.5 MiB");
        assert!(cpu_seconds(None).unwrap() >= 0.0);
        assert!(cpu_seconds(Some(std::process::id())).is_ok());
    }
}
