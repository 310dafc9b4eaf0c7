//! Chat with sequence checks.
//!
//! The clients form a ring: client i sends direct messages to client i+1,
//! numbered 1, 2, 3, ... per sender (`soak TOKEN i N filler`). Every
//! delivery is checked by its [`Receiver`]: it comes from the one sender
//! expected, its number is the previous one plus one (nothing lost,
//! nothing twice, in order), and its `seq` is the previous delivery's
//! plus one (the server's numbering has no gap). Even-numbered clients
//! keep a live `chat listen` open the whole run ([`follow`]: pushes,
//! acknowledged as they are shown); odd ones read what waits as an
//! operation ([`read_waiting`]: `listen --no-live`). At the end every
//! receiver must hold its sender's last accepted number.

use crate::fail;
use crate::stats::{Errors, Kind, Stats};
use serde_json::Value;
use sockctl::client::{Client, ClientError, Event};
use sockctl::cmd::chat::inbox::Delivery;
use sockctl::cmd::chat::session::{Incoming, Session};
use sockd_proto::ErrorCode;
use sockd_proto::message::stream;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::watch;

/// How long a live listener may wait, once the load is over, for the last
/// messages sent to it.
const FINAL_WAIT: Duration = Duration::from_secs(60);

/// The text of message `n` from client `sender`.
pub fn text(token: &str, sender: usize, n: u64, filler: usize) -> String {
    format!("soak {token} {sender} {n} {}", "x".repeat(filler))
}

/// One client's view of what it has been sent.
#[derive(Debug, Clone)]
pub struct Receiver {
    /// This client's user.
    pub user: String,
    /// The only user who sends to it, and that client's index.
    pub from: String,
    pub sender: usize,
    token: String,
    /// The last `seq` shown, once one has been.
    last_seq: Option<i64>,
    /// The last message number from `from` in this run.
    pub last_n: u64,
}

impl Receiver {
    pub fn new(user: String, from: String, sender: usize, token: String) -> Receiver {
        Receiver {
            user,
            from,
            sender,
            token,
            last_seq: None,
            last_n: 0,
        }
    }

    /// Checks one delivery; true if it is a message of this run.
    pub fn check(&mut self, d: &Delivery) -> Result<bool, String> {
        let user = &self.user;
        let seq = d
            .seq
            .ok_or_else(|| format!("chat {user}: a delivery without seq: {d:?}"))?;
        if let Some(last) = self.last_seq
            && seq != last + 1
        {
            return Err(format!(
                "chat {user}: delivery seq {seq} after {last}: the server's numbering {}",
                if seq <= last { "repeated" } else { "skipped" }
            ));
        }
        self.last_seq = Some(seq);
        let mut words = d.text.split(' ');
        let (Some("soak"), Some(token), Some(_), Some(n)) =
            (words.next(), words.next(), words.next(), words.next())
        else {
            return Ok(false);
        };
        if token != self.token {
            // Left over from an earlier run against the same daemon.
            return Ok(false);
        }
        if d.from != self.from || d.kind != "msg" {
            return Err(format!(
                "chat {user}: a {} from {}, only {} sends to it",
                d.kind, d.from, self.from
            ));
        }
        let n: u64 = n
            .parse()
            .map_err(|_| format!("chat {user}: bad message number in {:?}", d.text))?;
        if n != self.last_n + 1 {
            let what = if n <= self.last_n {
                "repeated or out of order"
            } else {
                "messages lost"
            };
            return Err(format!(
                "chat {user}: message #{n} from {} after #{}: {what}",
                self.from, self.last_n
            ));
        }
        self.last_n = n;
        Ok(true)
    }
}

/// Sends `text` to `to` (`chat send TO TEXT`); Ok once the server has
/// accepted, that is committed, it.
pub async fn send(client: &Client, to: &str, text: &str) -> Result<(), String> {
    let args = [
        b"send".to_vec(),
        to.as_bytes().to_vec(),
        text.as_bytes().to_vec(),
    ];
    // No stdin: the text is an argument.
    let mut channel = client
        .open_without_input("chat", args)
        .await
        .map_err(fail)?;
    let mut out = Vec::new();
    loop {
        match channel.recv().await {
            Some(Event::Data {
                stream: stream::MAIN,
                bytes,
            }) => out.extend_from_slice(&bytes),
            Some(Event::Data { .. } | Event::Eof { .. }) => {}
            Some(Event::Closed {
                code: ErrorCode::Ok,
                ..
            }) => break,
            Some(Event::Closed { code, message, .. }) => {
                let hint = if code == ErrorCode::RateLimited {
                    "; raise rate_per_sec and burst in [plugins.chat]"
                } else {
                    ""
                };
                return Err(format!(
                    "chat send to {to}: {message} ({}){hint}",
                    code.slug()
                ));
            }
            None => {
                return Err(format!(
                    "chat send to {to}: the channel ended without a CLOSE"
                ));
            }
        }
    }
    let reply: Value = serde_json::from_slice(out.trim_ascii())
        .map_err(|e| format!("chat send to {to}: bad reply {out:?}: {e}"))?;
    if reply["to"].as_str() != Some(to) || reply["id"].as_i64().is_none() {
        return Err(format!("chat send to {to}: unexpected reply {reply}"));
    }
    Ok(())
}

fn ended(result: Result<(), ClientError>) -> String {
    match result {
        Ok(()) => "the server closed the chat channel".into(),
        Err(e) => e.message().to_string(),
    }
}

/// Reads and checks what waits for this user, then acknowledges it;
/// returns how many messages of this run it held.
pub async fn read_waiting(client: &Client, r: &mut Receiver) -> Result<u64, String> {
    let mut session = Session::open(client, false).await.map_err(fail)?;
    let mut count = 0;
    loop {
        match session.next().await {
            Some(Incoming::Message(d)) => {
                count += u64::from(r.check(&d)?);
                session.shown(&d);
            }
            Some(Incoming::CaughtUp) => break,
            Some(Incoming::Reply { .. }) => {}
            Some(Incoming::Notice(e)) => return Err(format!("chat {}: {}", r.user, e.message())),
            Some(Incoming::Closed(result)) => {
                return Err(format!(
                    "chat {}: {} before catching up",
                    r.user,
                    ended(result)
                ));
            }
            None => return Err(format!("chat {}: the chat channel ended", r.user)),
        }
    }
    session.finish().await.map_err(fail)?;
    Ok(count)
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// A live listener for the whole run: checks and acknowledges every
/// push, records its delivery time, and once `over` is true waits until
/// it has its sender's last accepted message.
pub async fn follow(
    mut session: Session,
    mut r: Receiver,
    sent: &[AtomicU64],
    errors: &Errors,
    mut over: watch::Receiver<bool>,
) -> (Stats, Receiver) {
    let mut stats = Stats::default();
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    let mut final_deadline = None;
    let outcome = loop {
        if let Some(deadline) = final_deadline {
            let last = sent[r.sender].load(Ordering::Acquire);
            if r.last_n >= last {
                break Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                break Err(format!(
                    "chat {}: has #{} from {}, who sent #{last}: messages lost",
                    r.user, r.last_n, r.from
                ));
            }
        }
        tokio::select! {
            incoming = session.next() => match incoming {
                Some(Incoming::Message(d)) => {
                    match r.check(&d) {
                        Ok(true) => {
                            let waited = now_ms().saturating_sub(d.ts).max(0) as u64;
                            stats.record(Kind::ChatDeliver, Duration::from_millis(waited), d.text.len() as u64);
                        }
                        Ok(false) => {}
                        Err(e) => errors.add(e),
                    }
                    session.shown(&d);
                }
                Some(Incoming::CaughtUp | Incoming::Reply { .. }) => {}
                Some(Incoming::Notice(e)) => errors.add(format!("chat {}: {}", r.user, e.message())),
                Some(Incoming::Closed(result)) => break Err(format!("chat {}: live listener: {}", r.user, ended(result))),
                None => break Err(format!("chat {}: the live listener ended", r.user)),
            },
            _ = tick.tick() => {
                if session.needs_ack()
                    && let Err(e) = session.ack().await
                {
                    break Err(format!("chat {}: acknowledging: {}", r.user, e.message()));
                }
            }
            changed = over.changed(), if final_deadline.is_none() => {
                if changed.is_err() || *over.borrow() {
                    final_deadline = Some(tokio::time::Instant::now() + FINAL_WAIT);
                }
            }
        }
    };
    let finished = match outcome {
        Ok(()) => session.finish().await.map_err(fail),
        Err(e) => Err(e),
    };
    if let Err(e) = finished {
        errors.add(e);
    }
    (stats, r)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn delivery(seq: i64, from: &str, text: &str) -> Delivery {
        Delivery {
            seq: Some(seq),
            id: seq,
            ts: 0,
            kind: "msg".into(),
            from: from.into(),
            to: "b".into(),
            text: text.into(),
        }
    }

    #[test]
    fn in_order_passes_and_every_anomaly_is_named() {
        let mut r = Receiver::new("b".into(), "a".into(), 0, "T".into());
        assert_eq!(r.check(&delivery(5, "x", "hello")), Ok(false), "not ours");
        assert_eq!(r.check(&delivery(6, "a", &text("OLD", 0, 9, 0))), Ok(false));
        assert_eq!(r.check(&delivery(7, "a", &text("T", 0, 1, 3))), Ok(true));
        assert_eq!(r.check(&delivery(8, "a", &text("T", 0, 2, 0))), Ok(true));
        let lost = r.check(&delivery(9, "a", &text("T", 0, 4, 0))).unwrap_err();
        assert!(lost.contains("lost"), "{lost}");
        let mut r = Receiver::new("b".into(), "a".into(), 0, "T".into());
        assert_eq!(r.check(&delivery(1, "a", &text("T", 0, 1, 0))), Ok(true));
        let twice = r.check(&delivery(2, "a", &text("T", 0, 1, 0))).unwrap_err();
        assert!(twice.contains("repeated"), "{twice}");
        let gap = r.check(&delivery(4, "a", &text("T", 0, 2, 0))).unwrap_err();
        assert!(gap.contains("skipped"), "{gap}");
        let stranger = r.check(&delivery(3, "c", &text("T", 2, 2, 0))).unwrap_err();
        assert!(stranger.contains("only a sends"), "{stranger}");
    }
}
