//! File transfers with hash checks, spoken directly on a channel (the
//! `put` / `get` exchange of docs/PROTOCOL.md, `### files`) with random
//! data held in memory, so that the soak measures the daemon, not a disk
//! on the client's side.
//!
//! A put must end with the server's `end` carrying our size and BLAKE3
//! hash and `CLOSE ok` with the size; a get of that file must bring back
//! exactly as many bytes with the same hash, which must also be the hash
//! the server announces.

use crate::fail;
use bytes::Bytes;
use sockctl::client::{ChannelHandle, Client, Event};
use sockctl::cmd::files::remote::{Lines, Message, hash_zeros, next_message};
use sockd_proto::ErrorCode;
use sockd_proto::message::stream;

/// What we uploaded under a name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    pub size: u64,
    pub hash: String,
}

/// `size` random bytes (the generator is the client's seeded one).
pub fn random_data(rng: &mut fastrand::Rng, size: u64) -> Bytes {
    let mut data = vec![0u8; usize::try_from(size).unwrap_or(0)];
    rng.fill(&mut data);
    Bytes::from(data)
}

/// A size between 0 and `max`, spread evenly over the orders of magnitude
/// (as many 1–10 KiB files as 1–10 MiB ones), 0 one time in 32.
pub fn random_size(rng: &mut fastrand::Rng, max: u64) -> u64 {
    if max == 0 || rng.u32(0..32) == 0 {
        return 0;
    }
    let bits = rng.f64() * ((max + 1) as f64).log2();
    ((2f64.powf(bits) as u64).saturating_sub(1)).min(max)
}

/// Uploads `data` as `name` (replacing it); returns what the server stored.
pub async fn put(client: &Client, name: &str, data: Bytes) -> Result<Stored, String> {
    let size = data.len() as u64;
    let hash = blake3::hash(&data).to_hex().to_string();
    // No `source`: nothing to resume, every put starts from zero.
    let options = serde_json::json!({ "size": size, "force": true }).to_string();
    let mut channel = client
        .open("put", vec![name.as_bytes().to_vec(), options.into_bytes()])
        .await
        .map_err(fail)?;
    let mut lines = Lines::default();
    match next_message(&mut channel, &mut lines, "offer")
        .await
        .map_err(fail)?
    {
        Message::Offer { offset: 0, .. } => {}
        other => return Err(format!("put {name}: expected an offer of 0, got {other:?}")),
    }
    let sent = async {
        channel
            .send(stream::CONTROL, Message::Start { offset: 0 }.line())
            .await?;
        channel.send(stream::MAIN, data).await?;
        let end = Message::End {
            size,
            hash: hash.clone(),
        };
        channel.send(stream::CONTROL, end.line()).await?;
        channel.send_eof(stream::MAIN).await
    }
    .await;
    // A refusal while sending shows up as the server's CLOSE, read below.
    let (server_end, value) = finish(&mut channel, &mut lines, name).await?;
    sent.map_err(fail)?;
    let ours = Some((size, hash.clone()));
    if server_end != ours || value != size as i64 {
        return Err(format!(
            "put {name}: the server stored {server_end:?} (CLOSE value {value}), we sent {ours:?}"
        ));
    }
    Ok(Stored { size, hash })
}

/// Downloads `name`, which must be what `expected` says; returns its size.
pub async fn get(client: &Client, name: &str, expected: &Stored) -> Result<u64, String> {
    let mut channel = client
        .open("get", vec![name.as_bytes().to_vec()])
        .await
        .map_err(fail)?;
    let mut lines = Lines::default();
    let size = match next_message(&mut channel, &mut lines, "info")
        .await
        .map_err(fail)?
    {
        Message::Info { size, .. } => size,
        other => return Err(format!("get {name}: expected info, got {other:?}")),
    };
    if size != expected.size {
        return Err(format!(
            "get {name}: the server has {size} bytes, we uploaded {}",
            expected.size
        ));
    }
    let nothing = blake3::Hasher::new().finalize().to_hex().to_string();
    channel
        .send(
            stream::CONTROL,
            Message::Offer {
                offset: 0,
                hash: nothing,
            }
            .line(),
        )
        .await
        .map_err(fail)?;
    match next_message(&mut channel, &mut lines, "start")
        .await
        .map_err(fail)?
    {
        Message::Start { offset: 0 } => {}
        other => return Err(format!("get {name}: expected start at 0, got {other:?}")),
    }
    let mut hasher = blake3::Hasher::new();
    let mut received = 0u64;
    let mut server_end = None;
    loop {
        match channel.recv().await {
            Some(Event::Data {
                stream: stream::MAIN,
                bytes,
            }) => {
                hasher.update(&bytes);
                received += bytes.len() as u64;
            }
            Some(Event::Data {
                stream: stream::CONTROL,
                bytes,
            }) => {
                lines.push(&bytes);
                while let Some(message) = lines.pop().map_err(fail)? {
                    match message {
                        Message::Zeros { len } => {
                            hash_zeros(&mut hasher, len);
                            received += len;
                        }
                        Message::End { size, hash } => server_end = Some((size, hash)),
                        other => return Err(format!("get {name}: unexpected {other:?}")),
                    }
                }
            }
            Some(Event::Data { .. } | Event::Eof { .. }) => {}
            Some(Event::Closed {
                code: ErrorCode::Ok,
                ..
            }) => break,
            Some(Event::Closed { code, message, .. }) => {
                return Err(format!("get {name}: {} ({})", message, code.slug()));
            }
            None => return Err(format!("get {name}: the channel ended without a CLOSE")),
        }
    }
    let ours = hasher.finalize().to_hex().to_string();
    let want = Some((expected.size, expected.hash.clone()));
    if received != expected.size || ours != expected.hash || server_end != want {
        return Err(format!(
            "get {name}: received {received} bytes hashing {ours}, the server's end {server_end:?}; \
             we uploaded {} bytes hashing {}",
            expected.size, expected.hash
        ));
    }
    Ok(received)
}

/// Reads a put's answer: the server's `end` and the CLOSE value.
async fn finish(
    channel: &mut ChannelHandle,
    lines: &mut Lines,
    name: &str,
) -> Result<(Option<(u64, String)>, i64), String> {
    let mut server_end = None;
    loop {
        match channel.recv().await {
            Some(Event::Data {
                stream: stream::CONTROL,
                bytes,
            }) => {
                lines.push(&bytes);
                while let Some(message) = lines.pop().map_err(fail)? {
                    match message {
                        Message::End { size, hash } => server_end = Some((size, hash)),
                        other => return Err(format!("put {name}: unexpected {other:?}")),
                    }
                }
            }
            Some(Event::Data { .. } | Event::Eof { .. }) => {}
            Some(Event::Closed {
                code: ErrorCode::Ok,
                value,
                ..
            }) => return Ok((server_end, value)),
            Some(Event::Closed { code, message, .. }) => {
                let hint = if code == ErrorCode::QuotaExceeded || code == ErrorCode::NoSpace {
                    "; give the soak users room (no [plugins.files] quota, a disk with space)"
                } else {
                    ""
                };
                return Err(format!("put {name}: {message} ({}){hint}", code.slug()));
            }
            None => return Err(format!("put {name}: the channel ended without a CLOSE")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_stay_in_range_and_cover_the_orders_of_magnitude() {
        let mut rng = fastrand::Rng::with_seed(7);
        let max = 4 << 20;
        let sizes: Vec<u64> = (0..10_000).map(|_| random_size(&mut rng, max)).collect();
        assert!(sizes.iter().all(|&s| s <= max));
        assert!(sizes.contains(&0));
        assert!(sizes.iter().any(|&s| s < 1024));
        assert!(sizes.iter().any(|&s| s > max / 2));
        assert_eq!(random_size(&mut rng, 0), 0);
    }

    #[test]
    fn data_follows_the_seed() {
        let a = random_data(&mut fastrand::Rng::with_seed(1), 100);
        let b = random_data(&mut fastrand::Rng::with_seed(1), 100);
        assert_eq!((a.len(), a.clone()), (100, b));
    }
}
