//! A `chat listen` channel seen from the client: JSON lines in and out,
//! deliveries put in order by the [`Inbox`], requests matched with their
//! replies by `ref`, acknowledgements sent after showing.

use super::inbox::{Action, Delivery, Inbox};
use crate::client::{ChannelHandle, ChannelSender, Client, ClientError, Event, code_from_slug};
use serde_json::{Value, json};
use sockd_proto::ErrorCode;
use sockd_proto::message::stream;
use std::collections::VecDeque;

/// Something for the user interface.
#[derive(Debug)]
pub enum Incoming {
    /// A message to show now; call [`Session::shown`] after showing it.
    Message(Delivery),
    /// The answer to request `reference`.
    Reply {
        reference: u64,
        result: Result<Value, ClientError>,
    },
    /// An error the server reported without a request (a bad ack).
    Notice(ClientError),
    /// The first replay is complete: everything that was waiting was shown.
    CaughtUp,
    /// The channel ended: `Ok` if the server closed it normally.
    Closed(Result<(), ClientError>),
}

pub struct Session {
    channel: ChannelHandle,
    sender: ChannelSender,
    inbox: Inbox,
    main_partial: Vec<u8>,
    control_partial: Vec<u8>,
    queue: VecDeque<Incoming>,
    next_ref: u64,
    /// The highest `seq` shown and not yet acknowledged.
    unacked: Option<i64>,
    caught_up: bool,
    closed: bool,
}

impl Session {
    /// Opens `chat listen` and waits for the server's hello. `live`: also
    /// receive new messages as they come (else only what is waiting).
    pub async fn open(client: &Client, live: bool) -> Result<Session, ClientError> {
        let args: &[&[u8]] = if live {
            &[b"listen"]
        } else {
            &[b"listen", b"--no-live"]
        };
        let channel = client.open("chat", args.iter().map(|a| a.to_vec())).await?;
        let sender = channel.sender();
        let mut session = Session {
            channel,
            sender,
            inbox: Inbox::new(0),
            main_partial: Vec::new(),
            control_partial: Vec::new(),
            queue: VecDeque::new(),
            next_ref: 1,
            unacked: None,
            caught_up: false,
            closed: false,
        };
        loop {
            let event = session.channel.recv().await;
            match event {
                Some(Event::Data {
                    stream: stream::CONTROL,
                    bytes,
                }) => {
                    let mut lines = Vec::new();
                    split_lines(&mut session.control_partial, &bytes, &mut lines);
                    let mut rest = lines.into_iter();
                    let Some(first) = rest.next() else { continue };
                    let value: Value = serde_json::from_slice(&first).map_err(|e| {
                        ClientError::protocol(format!("chat: bad hello from sockd: {e}"))
                    })?;
                    let hello = &value["hello"];
                    let Some(acked) = hello["acked"].as_i64() else {
                        return Err(ClientError::protocol(format!(
                            "chat: expected a hello from sockd, got {value}"
                        )));
                    };
                    session.inbox = Inbox::new(acked);
                    for line in rest {
                        session.on_control_line(&line).await;
                    }
                    return Ok(session);
                }
                Some(Event::Data { .. } | Event::Eof { .. }) => {}
                Some(Event::Closed { code, message, .. }) => {
                    return Err(ClientError::remote(
                        if code == ErrorCode::Ok {
                            ErrorCode::Unavailable
                        } else {
                            code
                        },
                        message,
                    ));
                }
                None => {
                    return Err(ClientError::remote(
                        ErrorCode::Unavailable,
                        "the chat channel ended",
                    ));
                }
            }
        }
    }

    /// The next thing to show or handle; after [`Incoming::Closed`], `None`.
    pub async fn next(&mut self) -> Option<Incoming> {
        loop {
            if let Some(item) = self.queue.pop_front() {
                return Some(item);
            }
            if self.closed {
                return None;
            }
            match self.channel.recv().await {
                Some(Event::Data {
                    stream: stream::MAIN,
                    bytes,
                }) => {
                    let mut lines = Vec::new();
                    split_lines(&mut self.main_partial, &bytes, &mut lines);
                    for line in lines {
                        match serde_json::from_slice::<Delivery>(&line) {
                            Ok(d) => {
                                let actions = self.inbox.on_delivery(d);
                                self.act(actions).await;
                            }
                            Err(e) => {
                                self.queue.push_back(Incoming::Notice(ClientError::protocol(
                                    format!("chat: unreadable message from sockd: {e}"),
                                )))
                            }
                        }
                    }
                }
                Some(Event::Data {
                    stream: stream::CONTROL,
                    bytes,
                }) => {
                    let mut lines = Vec::new();
                    split_lines(&mut self.control_partial, &bytes, &mut lines);
                    for line in lines {
                        self.on_control_line(&line).await;
                    }
                }
                Some(Event::Data { .. } | Event::Eof { .. }) => {}
                Some(Event::Closed { code, message, .. }) => {
                    self.closed = true;
                    let result = if code == ErrorCode::Ok {
                        Ok(())
                    } else {
                        Err(ClientError::remote(code, message))
                    };
                    self.queue.push_back(Incoming::Closed(result));
                }
                None => {
                    self.closed = true;
                    self.queue
                        .push_back(Incoming::Closed(Err(ClientError::remote(
                            ErrorCode::Unavailable,
                            "the chat channel ended",
                        ))));
                }
            }
        }
    }

    async fn on_control_line(&mut self, line: &[u8]) {
        let value: Value = match serde_json::from_slice(line) {
            Ok(v) => v,
            Err(e) => {
                let e = ClientError::protocol(format!("chat: unreadable line from sockd: {e}"));
                self.queue.push_back(Incoming::Notice(e));
                return;
            }
        };
        if let Some(last) = value["replayed"].as_i64() {
            let actions = self
                .inbox
                .on_replayed(last, value["acked"].as_i64().unwrap_or(0));
            self.act(actions).await;
            if !self.caught_up {
                self.caught_up = true;
                self.queue.push_back(Incoming::CaughtUp);
            }
        } else if let Some(head) = value["head"].as_i64() {
            let actions = self.inbox.on_head(head);
            self.act(actions).await;
        } else if let Some(error) = value.get("error") {
            let e = remote_error(error);
            match value["ref"].as_u64() {
                Some(reference) => self.queue.push_back(Incoming::Reply {
                    reference,
                    result: Err(e),
                }),
                None => self.queue.push_back(Incoming::Notice(e)),
            }
        } else if let (Some(reference), Some(ok)) = (value["ref"].as_u64(), value.get("ok")) {
            self.queue.push_back(Incoming::Reply {
                reference,
                result: Ok(ok.clone()),
            });
        }
    }

    async fn act(&mut self, actions: Vec<Action>) {
        for action in actions {
            match action {
                Action::Show(d) => self.queue.push_back(Incoming::Message(d)),
                Action::Resync(from) => {
                    let _ = self.send_line(&json!({ "resync": from })).await;
                }
            }
        }
    }

    /// Records that a message was shown; it is acknowledged at the next
    /// [`Session::ack`].
    pub fn shown(&mut self, d: &Delivery) {
        if let Some(seq) = d.seq {
            self.unacked = Some(self.unacked.map_or(seq, |u| u.max(seq)));
        }
    }

    /// True if something shown is not yet acknowledged.
    pub fn needs_ack(&self) -> bool {
        self.unacked.is_some()
    }

    /// Acknowledges everything shown so far: it is never delivered again.
    pub async fn ack(&mut self) -> Result<(), ClientError> {
        if let Some(seq) = self.unacked.take() {
            self.send_line(&json!({ "ack": seq })).await?;
        }
        Ok(())
    }

    /// Sends request `op` with its fields; returns its `ref`.
    pub async fn request(&mut self, op: &str, mut fields: Value) -> Result<u64, ClientError> {
        let reference = self.next_ref;
        self.next_ref += 1;
        fields["op"] = json!(op);
        fields["ref"] = json!(reference);
        self.send_line(&fields).await?;
        Ok(reference)
    }

    async fn send_line(&self, value: &Value) -> Result<(), ClientError> {
        let mut line = value.to_string().into_bytes();
        line.push(b'\n');
        self.sender.send(stream::CONTROL, line).await
    }

    /// Acknowledges what was shown, tells the server we are done and waits
    /// for it to close the channel (so the acknowledgement is stored).
    pub async fn finish(mut self) -> Result<(), ClientError> {
        self.ack().await?;
        self.sender.send_eof(stream::CONTROL).await?;
        loop {
            match self.next().await {
                Some(Incoming::Closed(result)) => return result,
                Some(_) => {}
                None => return Ok(()),
            }
        }
    }
}

/// A `{"code": SLUG, "message": TEXT}` error object as a [`ClientError`].
pub fn remote_error(error: &Value) -> ClientError {
    let code = error["code"]
        .as_str()
        .and_then(code_from_slug)
        .unwrap_or(ErrorCode::Internal);
    ClientError::remote(code, error["message"].as_str().unwrap_or_default())
}

/// Appends `data` to `partial` and moves every complete line to `lines`.
pub fn split_lines(partial: &mut Vec<u8>, data: &[u8], lines: &mut Vec<Vec<u8>>) {
    let mut data = data;
    while let Some(at) = data.iter().position(|&b| b == b'\n') {
        partial.extend_from_slice(&data[..at]);
        lines.push(std::mem::take(partial));
        data = &data[at + 1..];
    }
    partial.extend_from_slice(data);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_split_across_chunks() {
        let mut partial = Vec::new();
        let mut lines = Vec::new();
        split_lines(&mut partial, b"ab\ncd", &mut lines);
        split_lines(&mut partial, b"e\n\nf", &mut lines);
        assert_eq!(lines, [b"ab".to_vec(), b"cde".to_vec(), Vec::new()]);
        assert_eq!(partial, b"f");
    }

    #[test]
    fn remote_errors_keep_their_code() {
        let e = remote_error(&json!({"code": "rate_limited", "message": "slow down"}));
        assert_eq!((e.status(), e.message()), (19, "slow down"));
    }
}
