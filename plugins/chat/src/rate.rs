//! Flood protection: one token bucket per user. Each message takes a
//! token; tokens come back at `rate_per_sec` up to `burst`.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::Instant;

struct Bucket {
    tokens: f64,
    updated: Instant,
}

/// The buckets of every user who sent recently.
pub struct RateLimiter {
    buckets: Mutex<HashMap<String, Bucket>>,
}

/// Buckets untouched this long are full again and can be forgotten.
const FORGET_AFTER_SECS: f64 = 600.0;

impl RateLimiter {
    pub fn new() -> Self {
        RateLimiter {
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes a token for `user`; false if there is none.
    pub fn allow(&self, user: &str, rate_per_sec: f64, burst: u32) -> bool {
        self.allow_at(user, rate_per_sec, burst, Instant::now())
    }

    fn allow_at(&self, user: &str, rate_per_sec: f64, burst: u32, now: Instant) -> bool {
        let burst = f64::from(burst);
        let mut buckets = self.buckets.lock().unwrap_or_else(PoisonError::into_inner);
        if buckets.len() > 10_000 {
            buckets.retain(|_, b| now.duration_since(b.updated).as_secs_f64() < FORGET_AFTER_SECS);
        }
        let bucket = buckets.entry(user.to_string()).or_insert(Bucket {
            tokens: burst,
            updated: now,
        });
        let elapsed = now.duration_since(bucket.updated).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * rate_per_sec).min(burst);
        bucket.updated = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn burst_then_rate() {
        let r = RateLimiter::new();
        let t0 = Instant::now();
        assert!((0..3).all(|_| r.allow_at("a", 2.0, 3, t0)));
        assert!(!r.allow_at("a", 2.0, 3, t0));
        assert!(r.allow_at("b", 2.0, 3, t0), "buckets are per user");
        let t1 = t0 + Duration::from_millis(500);
        assert!(r.allow_at("a", 2.0, 3, t1));
        assert!(!r.allow_at("a", 2.0, 3, t1));
        let t2 = t1 + Duration::from_secs(100);
        assert!(
            (0..3).all(|_| r.allow_at("a", 2.0, 3, t2)),
            "refills to burst only"
        );
        assert!(!r.allow_at("a", 2.0, 3, t2));
    }
}
