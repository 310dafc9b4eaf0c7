//! The messages of the transfer commands on the control stream (2): one
//! JSON object per line, tagged by `type` (see `### files` in
//! docs/PROTOCOL.md), and a reader that collects them from the channel
//! while file data arrives on the main stream (0).

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use sockd_plugin::{Channel, Failure, Input, stream};

/// Size of the data chunks read from disk and sent in one frame.
pub const CHUNK: usize = 256 * 1024;
/// The longest control line accepted from a client.
const MAX_LINE: usize = 64 * 1024;

/// Every control message, in both directions.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
pub enum Message {
    /// get, server → client: what is about to be sent.
    Info {
        size: u64,
        source: String,
        mtime: i64,
    },
    /// The side holding a partial file: its first `offset` bytes hash to
    /// `hash` (BLAKE3, hex). `offset` 0 means nothing to resume.
    Offer { offset: u64, hash: String },
    /// The side holding the source: data starts at `offset` (the offer's
    /// offset if the hashes matched, else 0).
    Start { offset: u64 },
    /// get, server → client: `len` zero bytes (a hole), instead of data.
    Zeros { len: u64 },
    /// The sender's total size and the BLAKE3 hash of the whole content.
    End { size: u64, hash: String },
}

impl Message {
    pub fn line(&self) -> Vec<u8> {
        let mut line = serde_json::to_vec(self).unwrap_or_default();
        line.push(b'\n');
        line
    }
}

/// Options of `put`, the JSON object in its second argument.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PutOptions {
    /// The number of bytes the client will send.
    pub size: u64,
    /// Identifies the source version (e.g. device, inode, size, mtime): a
    /// partial file is resumed only for the same source.
    #[serde(default)]
    pub source: String,
    /// Modification time (Unix seconds) to give the file.
    #[serde(default)]
    pub mtime: Option<i64>,
    /// Replace an existing file.
    #[serde(default)]
    pub force: bool,
}

/// Parses a JSON options argument (absent: the defaults).
pub fn options<T: DeserializeOwned + Default>(
    arg: Option<&&str>,
    command: &str,
) -> Result<T, Failure> {
    match arg {
        None => Ok(T::default()),
        Some(text) => serde_json::from_str(text)
            .map_err(|e| Failure::bad_request(format!("{command}: bad options: {e}"))),
    }
}

pub fn send(ch: Channel, message: &Message) -> Result<(), Failure> {
    ch.write(stream::CONTROL, &message.line())?;
    Ok(())
}

/// What [`Reader::next`] got.
pub enum Event {
    Data(usize),
    Message(Message),
    /// The client ended the main stream.
    Eof,
}

/// Reads a channel, splitting the control stream into messages.
pub struct Reader {
    ch: Channel,
    pending: Vec<u8>,
    eof: bool,
}

impl Reader {
    pub fn new(ch: Channel) -> Reader {
        Reader {
            ch,
            pending: Vec::new(),
            eof: false,
        }
    }

    /// The next event; data is copied into `buf`.
    pub fn next(&mut self, buf: &mut [u8]) -> Result<Event, Failure> {
        loop {
            if let Some(message) = self.pop()? {
                return Ok(Event::Message(message));
            }
            if self.eof {
                return Ok(Event::Eof);
            }
            match self.ch.read(buf, None)? {
                Input::Data {
                    stream: stream::MAIN,
                    len,
                } => return Ok(Event::Data(len)),
                Input::Data {
                    stream: stream::CONTROL,
                    len,
                } => {
                    if self.pending.len() + len > MAX_LINE {
                        return Err(Failure::bad_request("control message too long"));
                    }
                    self.pending.extend_from_slice(&buf[..len]);
                }
                Input::Eof {
                    stream: stream::MAIN,
                } => self.eof = true,
                // Other streams mean nothing to these commands.
                Input::Data { .. } | Input::Eof { .. } => {}
            }
        }
    }

    /// The next control message; data before it is a protocol error.
    pub fn message(&mut self, buf: &mut [u8], waiting_for: &str) -> Result<Message, Failure> {
        match self.next(buf)? {
            Event::Message(m) => Ok(m),
            Event::Data(_) => Err(Failure::bad_request(format!(
                "data arrived before the {waiting_for} message"
            ))),
            Event::Eof => Err(Failure::bad_request(format!(
                "the client ended the transfer before the {waiting_for} message"
            ))),
        }
    }

    fn pop(&mut self) -> Result<Option<Message>, Failure> {
        let Some(end) = self.pending.iter().position(|&b| b == b'\n') else {
            return Ok(None);
        };
        let line: Vec<u8> = self.pending.drain(..=end).collect();
        serde_json::from_slice(&line[..end])
            .map(Some)
            .map_err(|e| Failure::bad_request(format!("bad control message: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_tagged_json_lines() {
        let m = Message::Offer {
            offset: 5,
            hash: "ab".into(),
        };
        assert_eq!(
            m.line(),
            b"{\"type\":\"offer\",\"offset\":5,\"hash\":\"ab\"}\n"
        );
        let back: Message = serde_json::from_str(r#"{"type":"start","offset":0}"#).unwrap();
        assert_eq!(back, Message::Start { offset: 0 });
        assert!(serde_json::from_str::<Message>(r#"{"type":"start","offset":0,"x":1}"#).is_err());
    }

    #[test]
    fn put_options_need_a_size() {
        assert!(options::<PutOptions>(Some(&r#"{"force":true}"#), "put").is_err());
        let o: PutOptions = options(Some(&r#"{"size":3,"force":true}"#), "put").unwrap();
        assert!(o.force && o.size == 3 && o.mtime.is_none());
    }
}
