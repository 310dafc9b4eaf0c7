//! The client half of exactly-once, in-order delivery: what to show and
//! what to ask for again, independent of any I/O.
//!
//! The server numbers every delivery to a user with `seq` (1, 2, 3, ...).
//! Deliveries reach a listener twice (a push and a replay may overlap) or
//! not at all (a push skipped because the listener's window was full). The
//! [`Inbox`] shows each `seq` once, in order, buffers early arrivals, and
//! asks for a replay (`resync`) when one is really missing: no replay is
//! running and either a later delivery or a `head` notice revealed it.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// A message as the server delivers it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delivery {
    /// This user's delivery number; absent in history.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seq: Option<i64>,
    pub id: i64,
    pub ts: i64,
    pub kind: String,
    pub from: String,
    pub to: String,
    pub text: String,
}

/// What the caller must do next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    Show(Delivery),
    /// Send `{"resync": seq}`.
    Resync(i64),
}

#[derive(Debug, Default)]
pub struct Inbox {
    /// The next `seq` to show.
    next: i64,
    /// Arrived early, waiting for the ones before.
    early: BTreeMap<i64, Delivery>,
    /// A replay (the first one, or a resync) is under way.
    replaying: bool,
}

impl Inbox {
    /// Starts after the server's hello: everything up to `acked` was shown
    /// before, and the first replay is under way.
    pub fn new(acked: i64) -> Self {
        Inbox {
            next: acked + 1,
            early: BTreeMap::new(),
            replaying: true,
        }
    }

    /// The next `seq` to show; everything before it was shown.
    #[cfg(test)]
    pub fn next(&self) -> i64 {
        self.next
    }

    pub fn on_delivery(&mut self, d: Delivery) -> Vec<Action> {
        let Some(seq) = d.seq else { return Vec::new() };
        if seq < self.next || self.early.contains_key(&seq) {
            return Vec::new();
        }
        self.early.insert(seq, d);
        let mut actions = self.drain();
        if !self.early.is_empty() && !self.replaying {
            // Pushes arrive in order: with no replay running, a later one
            // here means the ones before it were skipped.
            self.replaying = true;
            actions.push(Action::Resync(self.next));
        }
        actions
    }

    /// `{"replayed": last, "acked": acked}`: every delivery up to `last`
    /// has been sent, except those up to `acked`, which another session
    /// acknowledged (and so showed): they are skipped here.
    pub fn on_replayed(&mut self, _last: i64, acked: i64) -> Vec<Action> {
        self.replaying = false;
        if acked >= self.next {
            self.next = acked + 1;
            self.early = self.early.split_off(&self.next);
        }
        let mut actions = self.drain();
        if !self.early.is_empty() {
            self.replaying = true;
            actions.push(Action::Resync(self.next));
        }
        actions
    }

    /// `{"head": seq}`: the latest delivery number; if it was not shown
    /// and no replay is running, it was skipped.
    pub fn on_head(&mut self, head: i64) -> Vec<Action> {
        if head >= self.next && !self.replaying {
            self.replaying = true;
            return vec![Action::Resync(self.next)];
        }
        Vec::new()
    }

    fn drain(&mut self) -> Vec<Action> {
        let mut actions = Vec::new();
        while let Some(d) = self.early.remove(&self.next) {
            self.next += 1;
            actions.push(Action::Show(d));
        }
        actions
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(seq: i64) -> Delivery {
        Delivery {
            seq: Some(seq),
            id: seq * 10,
            ts: 0,
            kind: "msg".into(),
            from: "a".into(),
            to: "b".into(),
            text: format!("m{seq}"),
        }
    }

    fn shown(actions: &[Action]) -> Vec<i64> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Show(d) => d.seq,
                Action::Resync(_) => None,
            })
            .collect()
    }

    #[test]
    fn replay_and_pushes_overlap_without_duplicates() {
        let mut inbox = Inbox::new(2);
        // A push of 5 overtakes the replay of 3 and 4: wait, no resync.
        assert_eq!(inbox.on_delivery(d(5)), vec![]);
        assert_eq!(shown(&inbox.on_delivery(d(3))), [3]);
        assert_eq!(shown(&inbox.on_delivery(d(4))), [4, 5]);
        assert_eq!(inbox.on_delivery(d(5)), vec![], "replayed copy dropped");
        assert_eq!(inbox.on_replayed(5, 2), vec![]);
        assert_eq!(shown(&inbox.on_delivery(d(6))), [6]);
        assert_eq!(inbox.on_delivery(d(2)), vec![], "acked before");
        assert_eq!(inbox.next(), 7);
    }

    #[test]
    fn a_skipped_push_is_asked_for_once() {
        let mut inbox = Inbox::new(0);
        assert_eq!(inbox.on_replayed(0, 0), vec![]);
        assert_eq!(inbox.on_delivery(d(2)), vec![Action::Resync(1)]);
        assert_eq!(inbox.on_delivery(d(3)), vec![], "one resync at a time");
        assert_eq!(shown(&inbox.on_delivery(d(1))), [1, 2, 3]);
        assert_eq!(inbox.on_replayed(3, 0), vec![]);
    }

    #[test]
    fn head_reveals_a_skipped_last_push() {
        let mut inbox = Inbox::new(0);
        assert_eq!(inbox.on_head(4), vec![], "first replay still running");
        inbox.on_replayed(3, 0);
        assert_eq!(inbox.on_head(0), vec![]);
        assert_eq!(inbox.on_head(1), vec![Action::Resync(1)]);
        assert_eq!(inbox.on_head(1), vec![]);
    }

    #[test]
    fn a_gap_left_after_a_replay_is_asked_for_again() {
        let mut inbox = Inbox::new(0);
        inbox.on_delivery(d(3));
        assert_eq!(inbox.on_replayed(1, 0), vec![Action::Resync(1)]);
    }

    #[test]
    fn what_another_session_acknowledged_is_skipped() {
        let mut inbox = Inbox::new(0);
        inbox.on_replayed(0, 0);
        // Pushes 1..=3 were skipped here; another session showed and acked them.
        assert_eq!(inbox.on_delivery(d(4)), vec![Action::Resync(1)]);
        assert_eq!(shown(&inbox.on_replayed(4, 3)), [4]);
        assert_eq!(inbox.next(), 5);
    }
}
