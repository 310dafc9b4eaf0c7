//! Gives freed memory back to the system once the daemon goes quiet.
//!
//! glibc's allocator keeps what a busy spell freed in its per-thread
//! arenas: after a soak of 500 clients the daemon held ~150 MiB more than
//! it used, which `malloc_trim` returns (docs/RELIABILITY.md). Once no
//! channel has opened for `server.release_memory_after_secs`, after some
//! did, the daemon trims once: it looks once per period, so one to two
//! periods after the last operation. A busy daemon reuses that memory and
//! is left alone; an idle one is trimmed once, not every period.

use crate::server::Shared;
use crate::shutdown::Shutdown;
use std::sync::Arc;
use std::time::Duration;

/// How often a disabled release looks at the configuration again.
const DISABLED_RECHECK: Duration = Duration::from_secs(60);

pub async fn when_quiet(shared: Arc<Shared>, mut shutdown: Shutdown) {
    let mut seen = crate::channel::made();
    let mut released_at = seen;
    loop {
        let period = shared.config().server.release_memory_after();
        let wait = if period.is_zero() {
            DISABLED_RECHECK
        } else {
            period
        };
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = shutdown.recv() => return,
        }
        let made = crate::channel::made();
        let quiet = made == seen;
        seen = made;
        if period.is_zero() || !quiet || made == released_at {
            continue;
        }
        released_at = made;
        let rss_before = rss_kib();
        if tokio::task::spawn_blocking(trim).await.is_err() {
            continue;
        }
        tracing::info!(
            operations = made,
            rss_before_kib = rss_before,
            rss_after_kib = rss_kib(),
            "quiet: freed memory given back to the system"
        );
    }
}

/// Returns free memory at the top of every arena, and whole free pages
/// inside them, to the system.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn trim() {
    // SAFETY: malloc_trim takes no pointers and is thread-safe: it locks
    // each arena while it works on it.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Other C libraries have no `malloc_trim`.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn trim() {}

/// The daemon's resident memory, in KiB (0 if /proc cannot say).
fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}
