//! One soak client: a connection and a loop of random operations, each
//! checked, timed and counted, until the deadline. After a failure the
//! client checks its connection with a PING and logs in again if it is
//! gone, so one broken connection does not end its part of the run.

use crate::chat::{self, Receiver};
use crate::exec;
use crate::files::{self, Stored};
use crate::stats::{Errors, Kind, Stats};
use sockctl::client::{Client, Settings};
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::time::Instant;

/// Files each client keeps on the server (overwritten in turn), so the
/// disk holds at most clients × SLOTS × max size.
const SLOTS: usize = 2;
/// An operation that takes longer than this counts as hung.
const OPERATION_LIMIT: Duration = Duration::from_secs(300);
/// Chat text beyond the header, at most, to vary message sizes.
const MAX_FILLER: usize = 512;

/// Relative weights of the operation families.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mix {
    pub put: u32,
    pub get: u32,
    pub exec: u32,
    pub chat: u32,
}

impl FromStr for Mix {
    type Err = String;

    fn from_str(s: &str) -> Result<Mix, String> {
        let mut mix = Mix {
            put: 0,
            get: 0,
            exec: 0,
            chat: 0,
        };
        for part in s.split(',').filter(|p| !p.is_empty()) {
            let (name, weight) = part
                .split_once('=')
                .ok_or_else(|| format!("{part:?}: expected NAME=WEIGHT, e.g. put=2"))?;
            let weight: u32 = weight
                .parse()
                .map_err(|_| format!("{part:?}: the weight must be a whole number"))?;
            match name {
                "put" => mix.put = weight,
                "get" => mix.get = weight,
                "exec" => mix.exec = weight,
                "chat" => mix.chat = weight,
                other => {
                    return Err(format!(
                        "unknown operation {other:?}: use put, get, exec, chat"
                    ));
                }
            }
        }
        if mix.put + mix.get + mix.exec + mix.chat == 0 {
            return Err("every weight is 0: nothing to do".into());
        }
        Ok(mix)
    }
}

impl fmt::Display for Mix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "put={},get={},exec={},chat={}",
            self.put, self.get, self.exec, self.chat
        )
    }
}

/// What every client shares.
pub struct Shared {
    /// This run's mark in chat messages and echo tokens.
    pub token: String,
    pub users: Vec<String>,
    /// Chat messages each client has had accepted (its last number).
    pub sent: Vec<AtomicU64>,
    pub errors: Errors,
    /// Operations completed so far, for the progress lines.
    pub ops: AtomicU64,
    pub mix: Mix,
    pub max_size: u64,
}

#[derive(Debug, Clone, Copy)]
enum Op {
    Put,
    Get,
    Echo,
    Cat,
    Status,
    ChatSend,
    ChatRead,
}

pub struct Worker {
    pub index: usize,
    shared: Arc<Shared>,
    settings: Arc<Settings>,
    pub client: Client,
    rng: fastrand::Rng,
    stored: [Option<Stored>; SLOTS],
    /// Set for clients that read chat as an operation (the others have a
    /// live listener of their own).
    pub receiver: Option<Receiver>,
    chat_n: u64,
    pub stats: Stats,
}

impl Worker {
    pub fn new(
        index: usize,
        shared: Arc<Shared>,
        settings: Arc<Settings>,
        client: Client,
        seed: u64,
        receiver: Option<Receiver>,
    ) -> Worker {
        Worker {
            index,
            shared,
            settings,
            client,
            rng: fastrand::Rng::with_seed(seed),
            stored: Default::default(),
            receiver,
            chat_n: 0,
            stats: Stats::default(),
        }
    }

    /// Runs operations until `deadline`; hands itself back for the final
    /// checks.
    pub async fn run(mut self, deadline: Instant) -> Worker {
        while Instant::now() < deadline {
            let op = self.pick();
            let started = Instant::now();
            let result = tokio::time::timeout(OPERATION_LIMIT, self.perform(op))
                .await
                .unwrap_or_else(|_| {
                    Err(format!(
                        "{op:?}: no result within {} s (hung)",
                        OPERATION_LIMIT.as_secs()
                    ))
                });
            match result {
                Ok((kind, bytes)) => {
                    self.stats.record(kind, started.elapsed(), bytes);
                    self.shared.ops.fetch_add(1, Ordering::Relaxed);
                }
                Err(e) => {
                    self.error(e);
                    if !self.recover().await {
                        break;
                    }
                }
            }
        }
        self
    }

    fn error(&self, what: String) {
        self.shared.errors.add(format!(
            "client {} ({}): {what}",
            self.index, self.settings.user
        ));
    }

    /// After a failure: true if the connection works (again).
    async fn recover(&mut self) -> bool {
        let alive = tokio::time::timeout(Duration::from_secs(10), self.client.ping()).await;
        if matches!(alive, Ok(Ok(_))) {
            return true;
        }
        match Client::connect(&self.settings).await {
            Ok(client) => {
                self.client = client;
                true
            }
            Err(e) => {
                self.error(format!(
                    "the connection is gone and logging in again failed: {}; this client stops",
                    e.message()
                ));
                false
            }
        }
    }

    fn pick(&mut self) -> Op {
        let mix = self.shared.mix;
        let chat = if self.shared.users.len() < 2 {
            0
        } else {
            mix.chat
        };
        let mut at = self.rng.u32(0..mix.put + mix.get + mix.exec + chat);
        if at < mix.put {
            return Op::Put;
        }
        at -= mix.put;
        if at < mix.get {
            return Op::Get;
        }
        at -= mix.get;
        if at < mix.exec {
            return match self.rng.u32(0..3) {
                0 => Op::Echo,
                1 => Op::Cat,
                _ => Op::Status,
            };
        }
        // Readers by operation read about half as often as they send.
        if self.receiver.is_some() && self.rng.u32(0..3) == 0 {
            Op::ChatRead
        } else {
            Op::ChatSend
        }
    }

    async fn perform(&mut self, op: Op) -> Result<(Kind, u64), String> {
        match op {
            Op::Get => {
                let slot = self.rng.usize(0..SLOTS);
                match &self.stored[slot] {
                    // Nothing there yet: upload first.
                    None => self.put(slot).await,
                    Some(stored) => {
                        let n = files::get(&self.client, &slot_name(slot), stored).await?;
                        Ok((Kind::Get, n))
                    }
                }
            }
            Op::Put => {
                let slot = self.rng.usize(0..SLOTS);
                self.put(slot).await
            }
            Op::Echo => {
                let token = format!("{}-{}-{}", self.shared.token, self.index, self.rng.u64(..));
                Ok((Kind::ExecEcho, exec::echo(&self.client, &token).await?))
            }
            Op::Cat => {
                let size = files::random_size(&mut self.rng, exec::MAX_CAT);
                let input = files::random_data(&mut self.rng, size);
                Ok((Kind::ExecCat, exec::cat(&self.client, input).await?))
            }
            Op::Status => Ok((Kind::ExecStatus, exec::status(&self.client).await?)),
            Op::ChatSend => {
                let users = &self.shared.users;
                let to = &users[(self.index + 1) % users.len()];
                let n = self.chat_n + 1;
                let text = chat::text(
                    &self.shared.token,
                    self.index,
                    n,
                    self.rng.usize(0..=MAX_FILLER),
                );
                chat::send(&self.client, to, &text).await?;
                self.chat_n = n;
                self.shared.sent[self.index].store(n, Ordering::Release);
                Ok((Kind::ChatSend, text.len() as u64))
            }
            Op::ChatRead => {
                let receiver = self.receiver.as_mut().ok_or("no chat receiver")?;
                let n = chat::read_waiting(&self.client, receiver).await?;
                Ok((Kind::ChatRead, n))
            }
        }
    }

    async fn put(&mut self, slot: usize) -> Result<(Kind, u64), String> {
        let size = files::random_size(&mut self.rng, self.shared.max_size);
        let data = files::random_data(&mut self.rng, size);
        // Until the put is confirmed the server's copy is unknown.
        self.stored[slot] = None;
        let stored = files::put(&self.client, &slot_name(slot), data).await?;
        self.stored[slot] = Some(stored);
        Ok((Kind::Put, size))
    }

    /// The last chat read, after every sender has stopped: it must bring
    /// this client's sender's last message.
    pub async fn final_read(&mut self) {
        let Some(receiver) = self.receiver.as_mut() else {
            return;
        };
        let result = chat::read_waiting(&self.client, receiver).await;
        let last = self.shared.sent[receiver.sender].load(Ordering::Acquire);
        let (user, from, got) = (
            receiver.user.clone(),
            receiver.from.clone(),
            receiver.last_n,
        );
        match result {
            Err(e) => self.error(format!("final chat read: {e}")),
            Ok(_) if got != last => self.error(format!(
                "chat {user}: has #{got} from {from}, who sent #{last}: messages lost"
            )),
            Ok(_) => {}
        }
    }

    pub async fn close(self) {
        self.client.close().await;
    }
}

/// The remote name of a client's file `slot` (in its home).
fn slot_name(slot: usize) -> String {
    format!("soak-{slot}.bin")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mix_parses_and_says_what_is_wrong() {
        let m: Mix = "put=1,chat=3".parse().unwrap();
        assert_eq!((m.put, m.get, m.exec, m.chat), (1, 0, 0, 3));
        assert_eq!(m.to_string(), "put=1,get=0,exec=0,chat=3");
        assert!("ftp=1".parse::<Mix>().unwrap_err().contains("unknown"));
        assert!("put=x".parse::<Mix>().unwrap_err().contains("whole number"));
        assert!("put=0".parse::<Mix>().unwrap_err().contains("nothing"));
    }
}
