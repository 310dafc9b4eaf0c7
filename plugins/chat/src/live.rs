//! The roster: the in-memory copy of what numbering a message needs (the
//! users chat knows with their next delivery number, the rooms with their
//! members, the next message id), held while this build is the only one
//! writing the database.
//!
//! With it a message is checked, given its id, timestamp and delivery
//! numbers, and pushed to the recipients' live sessions the moment it is
//! accepted, on the sender's call thread; the store thread commits it
//! behind, and only then is the sender told "accepted" (docs/CHAT.md,
//! "Delivery guarantees"). Every change to the roster is queued to the
//! store thread in the same critical section, so the database sees the
//! changes in the order the roster made them.

use crate::wire::{Message, Target};
use sockd_plugin::{Code, Failure, Host};
use std::collections::{BTreeSet, HashMap};

/// Ids reserved durably ahead of the ones handed out: a crash can lose
/// messages that were pushed but not committed, and the next start
/// resumes above the reservation, so an id never names two messages.
pub const ID_RESERVATION: i64 = 100_000;

/// How the build numbers messages.
pub enum Mode {
    /// From the roster, pushing before the commit (the only build).
    Live(Roster),
    /// From the database inside the store thread's transaction, pushing
    /// after the commit (another build has the database open too).
    Committed,
}

/// See the module comment.
pub struct Roster {
    /// The id of the next message.
    pub next_id: i64,
    /// Every user chat knows, with their next delivery number.
    users: HashMap<String, i64>,
    /// Every room with its members.
    rooms: HashMap<String, BTreeSet<String>>,
}

/// A message accepted from the roster: what the store thread writes.
#[derive(Debug)]
pub struct Accepted {
    pub message: Message,
    /// The conversation key the history is searched by.
    pub conv: String,
    /// (recipient, delivery number), in push order.
    pub deliveries: Vec<(String, i64)>,
    /// Users the roster learnt of for this message: registered first.
    pub new_users: Vec<String>,
}

/// What a join or leave changes besides its notice.
#[derive(Debug)]
pub struct Membership {
    pub room: String,
    pub user: String,
    /// The room was created (join) or removed (leave) by this change.
    pub room_changed: bool,
    /// The user was added (join) or removed (leave); false for a repeated
    /// join, which changes nothing.
    pub changed: bool,
    pub notice: Option<Accepted>,
    /// The members after the change.
    pub members: Vec<String>,
}

impl Roster {
    pub fn new(next_id: i64) -> Roster {
        Roster {
            next_id,
            users: HashMap::new(),
            rooms: HashMap::new(),
        }
    }

    /// Loading: a user and their next delivery number.
    pub fn load_user(&mut self, user: String, next_seq: i64) {
        self.users.insert(user, next_seq);
    }

    /// Loading: a room, and a member when given.
    pub fn load_member(&mut self, room: String, user: Option<String>) {
        let members = self.rooms.entry(room).or_default();
        if let Some(user) = user {
            members.insert(user);
        }
    }

    /// Makes `user` known; true if they were not (the caller registers them
    /// in the database).
    pub fn know(&mut self, user: &str) -> bool {
        if self.users.contains_key(user) {
            return false;
        }
        self.users.insert(user.to_string(), 1);
        true
    }

    /// Checks that `from` may send to `to`; returns the users to register
    /// (an addressee who is online but new to chat).
    pub fn check_target(
        &self,
        host: Host,
        from: &str,
        to: &Target,
    ) -> Result<Vec<String>, Failure> {
        match to {
            Target::User(user) => {
                if self.users.contains_key(user) {
                    Ok(Vec::new())
                } else if host.user_online(user) {
                    Ok(vec![user.clone()])
                } else {
                    Err(Failure::new(
                        Code::NotFound,
                        format!(
                            "no such user: {user} (a user can be written to once they have logged in)"
                        ),
                    ))
                }
            }
            Target::Room(room) => match self.rooms.get(room) {
                None => Err(Failure::new(
                    Code::NotFound,
                    format!("no such room: {room}"),
                )),
                Some(members) if !members.contains(from) => Err(Failure::new(
                    Code::PermissionDenied,
                    format!("you are not in {room}: join it first (/join {room})"),
                )),
                Some(_) => Ok(Vec::new()),
            },
        }
    }

    /// Checks a message (kind `msg`) and numbers it: its id, timestamp and
    /// a delivery number for each recipient (the addressee, or every member
    /// of the room but the sender). Changes nothing if it is refused.
    pub fn accept(
        &mut self,
        host: Host,
        from: &str,
        to: &Target,
        text: String,
        ts: i64,
    ) -> Result<Accepted, Failure> {
        let new_users = self.check_target(host, from, to)?;
        Ok(self.number(from, to, "msg", text, ts, new_users))
    }

    /// Numbers an already checked message or notice.
    fn number(
        &mut self,
        from: &str,
        to: &Target,
        kind: &str,
        text: String,
        ts: i64,
        mut new_users: Vec<String>,
    ) -> Accepted {
        if self.know(from) {
            new_users.push(from.to_string());
        }
        for user in &new_users {
            self.know(user);
        }
        let recipients: Vec<String> = match to {
            Target::User(user) => vec![user.clone()],
            Target::Room(room) => self
                .rooms
                .get(room)
                .map(|m| m.iter().filter(|u| *u != from).cloned().collect())
                .unwrap_or_default(),
        };
        let mut deliveries = Vec::with_capacity(recipients.len());
        for user in recipients {
            let next = self.users.entry(user.clone()).or_insert(1);
            deliveries.push((user, *next));
            *next += 1;
        }
        let id = self.next_id;
        self.next_id += 1;
        Accepted {
            conv: conversation(from, to),
            message: Message {
                id,
                ts,
                kind: kind.to_string(),
                from: from.to_string(),
                to: to.as_str().to_string(),
                text,
            },
            deliveries,
            new_users,
        }
    }

    /// Adds `user` to `room` (created if it does not exist, within
    /// `max_rooms`); the other members get a `join` notice.
    pub fn join(
        &mut self,
        user: &str,
        room: &str,
        max_rooms: usize,
        ts: i64,
    ) -> Result<Membership, Failure> {
        let exists = self.rooms.contains_key(room);
        if !exists && self.rooms.len() >= max_rooms {
            return Err(Failure::new(
                Code::QuotaExceeded,
                format!(
                    "cannot create {room}: the server already has {} rooms (max_rooms = {max_rooms})",
                    self.rooms.len()
                ),
            ));
        }
        let members = self.rooms.entry(room.to_string()).or_default();
        let changed = members.insert(user.to_string());
        let notice = changed.then(|| {
            self.number(
                user,
                &Target::Room(room.to_string()),
                "join",
                String::new(),
                ts,
                Vec::new(),
            )
        });
        Ok(Membership {
            room: room.to_string(),
            user: user.to_string(),
            room_changed: !exists,
            changed,
            notice,
            members: self.members(room),
        })
    }

    /// Removes `user` from `room`; the remaining members get a `leave`
    /// notice; the room is removed when it is empty.
    pub fn leave(&mut self, user: &str, room: &str, ts: i64) -> Result<Membership, Failure> {
        let Some(members) = self.rooms.get_mut(room) else {
            return Err(Failure::new(
                Code::NotFound,
                format!("no such room: {room}"),
            ));
        };
        if !members.remove(user) {
            return Err(Failure::new(
                Code::NotFound,
                format!("you are not in {room}"),
            ));
        }
        let notice = self.number(
            user,
            &Target::Room(room.to_string()),
            "leave",
            String::new(),
            ts,
            Vec::new(),
        );
        let empty = self.rooms.get(room).is_none_or(BTreeSet::is_empty);
        if empty {
            self.rooms.remove(room);
        }
        Ok(Membership {
            room: room.to_string(),
            user: user.to_string(),
            room_changed: empty,
            changed: true,
            notice: Some(notice),
            members: self.members(room),
        })
    }

    fn members(&self, room: &str) -> Vec<String> {
        self.rooms
            .get(room)
            .map(|m| m.iter().cloned().collect())
            .unwrap_or_default()
    }
}

/// The key of a conversation: the room, or the two users in order.
pub fn conversation(from: &str, to: &Target) -> String {
    match to {
        Target::Room(room) => room.clone(),
        Target::User(user) if user.as_str() < from => format!("{user} {from}"),
        Target::User(user) => format!("{from} {user}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roster() -> Roster {
        let mut r = Roster::new(10);
        r.load_user("a".into(), 1);
        r.load_user("b".into(), 5);
        r.load_user("c".into(), 1);
        r
    }

    #[test]
    fn a_room_numbers_every_member_but_the_sender() {
        let mut r = roster();
        let j = r.join("a", "#x", 10, 0).unwrap();
        assert!(j.room_changed && j.changed);
        assert!(j.notice.as_ref().unwrap().deliveries.is_empty());
        r.join("b", "#x", 10, 0).unwrap();
        assert!(!r.join("b", "#x", 10, 0).unwrap().changed, "joined twice");
        // b gets a's leave (5) and join (6) notices, then the message (7).
        r.leave("a", "#x", 0).unwrap();
        r.join("a", "#x", 10, 0).unwrap();
        let m = r.number(
            "a",
            &Target::Room("#x".into()),
            "msg",
            "hi".into(),
            0,
            Vec::new(),
        );
        assert_eq!(m.deliveries, [("b".to_string(), 7)]);
        assert!(m.message.id > 10, "ids increase: {}", m.message.id);
        assert_eq!(
            r.join("c", "#y", 1, 0).unwrap_err().code,
            Code::QuotaExceeded
        );
        assert_eq!(r.leave("c", "#x", 0).unwrap_err().code, Code::NotFound);
        r.leave("a", "#x", 0).unwrap();
        let last = r.leave("b", "#x", 0).unwrap();
        assert!(last.room_changed && last.members.is_empty());
    }

    #[test]
    fn conversations_name_both_users_in_order() {
        assert_eq!(conversation("b", &Target::User("a".into())), "a b");
        assert_eq!(conversation("a", &Target::User("b".into())), "a b");
        assert_eq!(conversation("a", &Target::Room("#r".into())), "#r");
    }
}
