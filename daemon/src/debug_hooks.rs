//! Test-only hooks, compiled with the cargo feature `debug-hooks` (the
//! `sockd-debug-hooks` binary); never part of the default build or the
//! Debian package.
//!
//! SIGUSR2 freezes the async runtime: every worker thread blocks forever,
//! as in a deadlock. The watchdog keep-alive runs on that runtime, so it
//! stops, and tests/tests/nspawn.rs shows systemd killing and restarting
//! sockd.

use std::time::Duration;
use tokio::runtime::Runtime;
use tokio::signal::unix::{SignalKind, signal};

/// Installs the SIGUSR2 handler before the server starts, so the signal
/// can never hit its default action (exit) instead.
pub fn install(runtime: &Runtime) -> Result<(), String> {
    let _context = runtime.enter();
    let mut usr2 = signal(SignalKind::user_defined2())
        .map_err(|e| format!("debug-hooks: cannot handle SIGUSR2: {e}"))?;
    runtime.spawn(async move {
        usr2.recv().await;
        let workers = tokio::runtime::Handle::current().metrics().num_workers();
        tracing::warn!("debug-hooks: SIGUSR2: freezing all {workers} runtime workers");
        // One blocking task per worker: idle workers steal the queued ones
        // until every worker is stuck in one.
        for _ in 0..workers {
            tokio::spawn(async {
                loop {
                    std::thread::sleep(Duration::from_secs(3600));
                }
            });
        }
    });
    Ok(())
}
