//! What the soak measures: operations, latencies and bytes per kind of
//! operation, and errors (all counted, the first few kept word for word).

use std::fmt::Write as _;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// The kinds of operation, each reported on a line of its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Upload of random data; the server's BLAKE3 must equal ours.
    Put,
    /// Download of an earlier upload; its hash must equal the upload's.
    Get,
    /// `echo TOKEN`: stdout must be the token.
    ExecEcho,
    /// `cat` of random stdin: stdout must be the same bytes.
    ExecCat,
    /// `false`: the exit status must be 1.
    ExecStatus,
    /// A direct message, accepted (committed) by the server.
    ChatSend,
    /// Reading what waits (`chat listen --no-live`), every delivery checked.
    ChatRead,
    /// A message pushed to a live listener: server timestamp to arrival.
    ChatDeliver,
}

impl Kind {
    pub const ALL: [Kind; 8] = [
        Kind::Put,
        Kind::Get,
        Kind::ExecEcho,
        Kind::ExecCat,
        Kind::ExecStatus,
        Kind::ChatSend,
        Kind::ChatRead,
        Kind::ChatDeliver,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Kind::Put => "put",
            Kind::Get => "get",
            Kind::ExecEcho => "exec echo",
            Kind::ExecCat => "exec cat",
            Kind::ExecStatus => "exec false",
            Kind::ChatSend => "chat send",
            Kind::ChatRead => "chat read",
            Kind::ChatDeliver => "chat deliver",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

#[derive(Debug, Default, Clone)]
struct PerKind {
    /// One latency per operation, in microseconds.
    micros: Vec<u32>,
    bytes: u64,
}

/// Counts of one client (or of all, after [`Stats::merge`]).
#[derive(Debug, Default, Clone)]
pub struct Stats {
    per: [PerKind; Kind::ALL.len()],
}

impl Stats {
    pub fn record(&mut self, kind: Kind, took: Duration, bytes: u64) {
        let per = &mut self.per[kind.index()];
        per.micros
            .push(u32::try_from(took.as_micros()).unwrap_or(u32::MAX));
        per.bytes += bytes;
    }

    pub fn merge(&mut self, other: Stats) {
        for (mine, theirs) in self.per.iter_mut().zip(other.per) {
            mine.micros.extend(theirs.micros);
            mine.bytes += theirs.bytes;
        }
    }

    /// Operations of every kind but deliveries (which are not operations
    /// of their own: each is a send's other end).
    pub fn operations(&self) -> usize {
        Kind::ALL
            .iter()
            .filter(|k| **k != Kind::ChatDeliver)
            .map(|k| self.per[k.index()].micros.len())
            .sum()
    }

    /// The table: per kind, operations, rate, p50 and p99 latency, MiB.
    pub fn table(&mut self, seconds: f64) -> String {
        let mut out = format!(
            "{:<13} {:>9} {:>9} {:>9} {:>9} {:>9}\n",
            "kind", "ops", "ops/s", "p50 ms", "p99 ms", "MiB"
        );
        for kind in Kind::ALL {
            let per = &mut self.per[kind.index()];
            per.micros.sort_unstable();
            let n = per.micros.len();
            let _ = writeln!(
                out,
                "{:<13} {:>9} {:>9.1} {:>9} {:>9} {:>9.1}",
                kind.name(),
                n,
                n as f64 / seconds,
                percentile(&per.micros, 0.50),
                percentile(&per.micros, 0.99),
                per.bytes as f64 / (1024.0 * 1024.0),
            );
        }
        let total = self.operations();
        let _ = writeln!(
            out,
            "{:<13} {:>9} {:>9.1}   (deliveries not counted: each is a send's other end)",
            "all",
            total,
            total as f64 / seconds
        );
        out
    }
}

/// The `p` quantile of sorted microseconds, in milliseconds ("-" if none).
fn percentile(sorted: &[u32], p: f64) -> String {
    if sorted.is_empty() {
        return "-".into();
    }
    let at = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    format!("{:.2}", f64::from(sorted[at]) / 1000.0)
}

/// Every error of the run: counted, the first [`Errors::KEPT`] kept.
#[derive(Default)]
pub struct Errors {
    count: AtomicU64,
    first: Mutex<Vec<String>>,
}

impl Errors {
    pub const KEPT: usize = 10;

    pub fn add(&self, what: String) {
        let n = self.count.fetch_add(1, Ordering::Relaxed);
        if (n as usize) < Self::KEPT {
            self.first
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(what);
        }
    }

    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    pub fn first(&self) -> Vec<String> {
        self.first.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_pick_the_rank() {
        let v: Vec<u32> = (1..=100).map(|ms| ms * 1000).collect();
        assert_eq!(percentile(&v, 0.5), "50.00");
        assert_eq!(percentile(&v, 0.99), "99.00");
        assert_eq!(percentile(&[7000], 0.99), "7.00");
        assert_eq!(percentile(&[], 0.5), "-");
    }

    #[test]
    fn errors_keep_the_first_few_and_count_all() {
        let e = Errors::default();
        for i in 0..25 {
            e.add(format!("e{i}"));
        }
        assert_eq!(e.count(), 25);
        assert_eq!(e.first().len(), Errors::KEPT);
        assert_eq!(e.first()[0], "e0");
    }
}
