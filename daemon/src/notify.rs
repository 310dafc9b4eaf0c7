//! systemd readiness protocol (sd_notify): READY, STATUS, RELOADING with
//! MONOTONIC_USEC, STOPPING, EXTEND_TIMEOUT_USEC and WATCHDOG. Every call
//! is a no-op when NOTIFY_SOCKET is unset.

use crate::shutdown::Shutdown;
use sd_notify::NotifyState;
use std::time::Duration;

fn send(states: &[NotifyState]) {
    if std::env::var_os("NOTIFY_SOCKET").is_none() {
        return;
    }
    if let Err(e) = sd_notify::notify(states) {
        tracing::warn!("sd_notify failed: {e}");
    }
}

pub fn ready(status: &str) {
    send(&[NotifyState::Ready, NotifyState::Status(status)]);
}

pub fn status(status: &str) {
    send(&[NotifyState::Status(status)]);
}

/// RELOADING=1 and MONOTONIC_USEC in one datagram, as systemd requires.
pub fn reloading() {
    match NotifyState::monotonic_usec_now() {
        Ok(now) => send(&[
            NotifyState::Reloading,
            now,
            NotifyState::Status("reloading"),
        ]),
        Err(e) => tracing::warn!("cannot read CLOCK_MONOTONIC: {e}"),
    }
}

pub fn stopping(grace: Duration) {
    send(&[
        NotifyState::Stopping,
        NotifyState::Status("stopping: draining sessions"),
    ]);
    extend_timeout(grace + Duration::from_secs(5));
}

pub fn extend_timeout(by: Duration) {
    let usec = u32::try_from(by.as_micros()).unwrap_or(u32::MAX);
    send(&[NotifyState::ExtendTimeoutUsec(usec)]);
}

/// Pings the watchdog at half its interval. It runs as a task on the same
/// runtime that serves clients, so a stuck runtime stops the pings and
/// systemd restarts the daemon.
pub async fn watchdog(interval: Option<Duration>, mut shutdown: Shutdown) {
    let Some(interval) = interval else {
        return;
    };
    let mut tick = tokio::time::interval(interval / 2);
    loop {
        tokio::select! {
            _ = tick.tick() => send(&[NotifyState::Watchdog]),
            _ = shutdown.recv() => return,
        }
    }
}
