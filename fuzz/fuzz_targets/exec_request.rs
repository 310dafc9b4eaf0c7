//! Fuzz target `exec_request`: the exec plugin's parsers
//! (plugins/exec/src/request.rs and its settings).
//!
//! Input: byte 0 picks the case (modulo 4), the rest is:
//! - 0: an `exec` OPEN payload (command, argc, args) as the daemon decodes
//!   it: `Request::parse`;
//! - 1: a stream-2 control line: `parse_control`;
//! - 2: stream-2 bytes for the line splitter `Lines`, fed whole and in
//!   chunks (the chunking comes from the first byte);
//! - 3: the `[plugins.exec]` table as TOML text: `Config::parse`.
//!
//! Checks: no panic; an accepted request runs a non-empty program with an
//! argv free of NUL bytes and a sane TERM; the splitter yields the same
//! lines however the bytes arrive, none longer than `MAX_LINE`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sockd_exec::request::{Lines, MAX_LINE, Request, parse_control};
use std::os::unix::ffi::OsStrExt;

fn request(payload: &[u8]) {
    let Some((_, args)) = sockd_fuzz::open_args(payload) else {
        return;
    };
    let args: Vec<&[u8]> = args.iter().map(|a| &a[..]).collect();
    match Request::parse(&args) {
        Ok(r) => {
            assert!(!r.program.is_empty());
            assert!(!r.argv.is_empty());
            assert!(r.argv.iter().all(|a| !a.as_bytes().contains(&0)));
            if let Some(pty) = &r.pty {
                assert!((1..=64).contains(&pty.term.len()));
                assert!(pty.term.bytes().all(|b| b.is_ascii_graphic()));
            }
            let _ = r.shown_name();
        }
        Err(f) => assert!(!f.message.is_empty()),
    }
}

fn lines(seed: u8, bytes: &[u8]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut splitter = Lines::default();
    for part in sockd_fuzz::chunks(seed, bytes) {
        splitter.push(part, |line| out.push(line.to_vec()));
    }
    out
}

fuzz_target!(|data: &[u8]| {
    let Some((selector, rest)) = sockd_fuzz::selector(data) else {
        return;
    };
    match selector % 4 {
        0 => request(rest),
        1 => {
            let _ = parse_control(rest);
        }
        2 => {
            let mut whole = Vec::new();
            Lines::default().push(rest, |line| whole.push(line.to_vec()));
            assert_eq!(whole, lines(selector, rest), "chunking changed the lines");
            for line in &whole {
                assert!(line.len() <= MAX_LINE);
                assert!(!line.contains(&b'\n'));
                let _ = parse_control(line);
            }
        }
        _ => {
            if let Ok(text) = std::str::from_utf8(rest) {
                let _ = sockd_exec::config::Config::parse(text);
            }
        }
    }
});
