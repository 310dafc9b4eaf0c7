//! Failed-login penalties, after OpenSSH's PerSourcePenalties: each failure
//! doubles the wait imposed on that user name and that source address (from
//! `penalty_base_ms` up to `penalty_max_ms`). A new attempt first waits out
//! the penalty, so guessing slows to a crawl while a legitimate user from
//! another address is at most delayed, never locked out. Penalties expire.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Key {
    User(String),
    Source(IpAddr),
}

struct Entry {
    failures: u32,
    until: Instant,
}

pub struct Penalties {
    limits: Mutex<(Duration, Duration)>,
    map: Mutex<HashMap<Key, Entry>>,
}

/// Entries kept before expired ones are swept.
const SWEEP_AT: usize = 10_000;

impl Penalties {
    pub fn new(base: Duration, max: Duration) -> Self {
        Self {
            limits: Mutex::new((base, max)),
            map: Mutex::new(HashMap::new()),
        }
    }

    /// New base and maximum (on reload); recorded failures are kept.
    pub fn set_limits(&self, base: Duration, max: Duration) {
        *self.limits.lock().unwrap_or_else(|p| p.into_inner()) = (base, max);
    }

    /// How long an attempt for `user` from `source` must wait now.
    pub fn wait_for(&self, user: &str, source: IpAddr) -> Duration {
        let now = Instant::now();
        let map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        [Key::User(user.to_string()), Key::Source(source)]
            .iter()
            .filter_map(|k| map.get(k))
            .map(|e| e.until.saturating_duration_since(now))
            .max()
            .unwrap_or_default()
    }

    /// Records a failure; returns the new penalty.
    pub fn failed(&self, user: &str, source: IpAddr) -> Duration {
        let now = Instant::now();
        let (base, max) = *self.limits.lock().unwrap_or_else(|p| p.into_inner());
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() > SWEEP_AT {
            let forget = max * 2;
            map.retain(|_, e| now.saturating_duration_since(e.until) < forget);
        }
        let mut longest = Duration::ZERO;
        for key in [Key::User(user.to_string()), Key::Source(source)] {
            let e = map.entry(key).or_insert(Entry {
                failures: 0,
                until: now,
            });
            // A long quiet spell forgives earlier failures.
            if now.saturating_duration_since(e.until) > max * 2 {
                e.failures = 0;
            }
            e.failures = e.failures.saturating_add(1);
            let penalty = base
                .saturating_mul(1u32 << (e.failures - 1).min(20))
                .min(max);
            e.until = now + penalty;
            longest = longest.max(penalty);
        }
        longest
    }

    /// A successful login clears the user's penalty (not the source's).
    pub fn succeeded(&self, user: &str) {
        self.map
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&Key::User(user.to_string()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn penalties_grow_and_cap() {
        let p = Penalties::new(Duration::from_millis(100), Duration::from_millis(350));
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        assert_eq!(p.wait_for("u", ip), Duration::ZERO);
        assert_eq!(p.failed("u", ip), Duration::from_millis(100));
        assert_eq!(p.failed("u", ip), Duration::from_millis(200));
        assert_eq!(p.failed("u", ip), Duration::from_millis(350));
        assert!(p.wait_for("u", ip) > Duration::from_millis(300));
        let other: IpAddr = "192.0.2.2".parse().unwrap();
        assert!(p.wait_for("v", other).is_zero());
        assert!(
            !p.wait_for("v", ip).is_zero(),
            "same source is slowed for any user"
        );
        p.succeeded("u");
        assert!(!p.wait_for("u", ip).is_zero(), "the source penalty stays");
        assert!(p.wait_for("u", other).is_zero());
    }
}
