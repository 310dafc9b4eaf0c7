//! What the fuzz targets share: how an input is cut into the pieces a
//! parser sees. The input layouts are documented in docs/FUZZING.md, and
//! the seed recorder (tests/tests/fuzz.rs) writes exactly these layouts.

use bytes::Bytes;
use sockd_proto::{Frame, Kind, Message};

/// Cuts `data` into chunks of pseudo-random sizes (1 to 64 bytes, with the
/// occasional large one) derived from `seed`, the way TCP and TLS may
/// deliver a byte stream.
pub fn chunks(seed: u8, data: &[u8]) -> Vec<&[u8]> {
    let mut state = u32::from(seed) | 0x100;
    let mut out = Vec::new();
    let mut rest = data;
    while !rest.is_empty() {
        // xorshift32: cheap, deterministic, never zero.
        state ^= state << 13;
        state ^= state >> 17;
        state ^= state << 5;
        let size = if state % 16 == 0 {
            (state >> 8) as usize % 4096
        } else {
            (state >> 8) as usize % 64
        };
        let (head, tail) = rest.split_at((size + 1).min(rest.len()));
        out.push(head);
        rest = tail;
    }
    out
}

/// The arguments of an OPEN whose payload (command `str`, argc, args) is
/// `payload`, decoded exactly as the daemon decodes it before handing the
/// arguments to a plugin. `None` if the daemon would refuse the frame.
pub fn open_args(payload: &[u8]) -> Option<(String, Vec<Bytes>)> {
    let frame = Frame {
        channel: 1,
        kind: Kind::Open,
        payload: Bytes::copy_from_slice(payload),
    };
    match Message::decode(frame).ok()? {
        Message::Open { command, args, .. } => Some((command, args)),
        _ => None,
    }
}

/// The arguments as UTF-8, as `sockd_plugin::Call::str_args` gives them to
/// the files and chat plugins (`None` where it answers `bad_request`).
pub fn str_args(args: &[Bytes]) -> Option<Vec<&str>> {
    args.iter().map(|a| std::str::from_utf8(a).ok()).collect()
}

/// Splits off the first byte, which targets use to pick what the rest is.
pub fn selector(data: &[u8]) -> Option<(u8, &[u8])> {
    let (&first, rest) = data.split_first()?;
    Some((first, rest))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_cover_the_input_in_order() {
        let data: Vec<u8> = (0..=255).cycle().take(10_000).collect();
        for seed in [0, 1, 77, 255] {
            let parts = chunks(seed, &data);
            assert!(parts.iter().all(|p| !p.is_empty()));
            assert_eq!(parts.concat(), data);
        }
    }
}
