//! Fuzz target `files_request`: the files plugin's request parsers
//! (plugins/files/src/protocol.rs and its settings).
//!
//! Input: byte 0 picks the case (modulo 3), the rest is:
//! - 0: a files OPEN payload (command, argc, args) as the daemon decodes
//!   it: the arguments as UTF-8, every path resolved in the jail, `put`
//!   options through `protocol::options`;
//! - 1: a stream-2 control line (offer, start, end, ...);
//! - 2: the `[plugins.files]` table as TOML text: `Settings::parse`.
//!
//! Checks: no panic; a parsed control message is written as a line that
//! parses back to the same message.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sockd_files::jail::JailPath;
use sockd_files::protocol::{Message, PutOptions, options};

fn request(payload: &[u8]) {
    let Some((command, args)) = sockd_fuzz::open_args(payload) else {
        return;
    };
    let Some(args) = sockd_fuzz::str_args(&args) else {
        return;
    };
    let root = JailPath::root();
    match (command.as_str(), args.as_slice()) {
        ("put", [path, opts]) => {
            let _ = JailPath::resolve(&root, path);
            let _ = options::<PutOptions>(Some(opts), "put");
        }
        ("mv", [from, to, ..]) => {
            let _ = JailPath::resolve(&root, from);
            let _ = JailPath::resolve(&root, to);
        }
        (_, [path, ..]) => {
            let _ = JailPath::resolve(&root, path);
        }
        _ => {}
    }
}

fn control_line(line: &[u8]) {
    let Ok(message) = serde_json::from_slice::<Message>(line) else {
        return;
    };
    let written = message.line();
    assert_eq!(written.last(), Some(&b'\n'));
    assert!(!written[..written.len() - 1].contains(&b'\n'));
    let back: Message = serde_json::from_slice(&written).expect("our own line parses");
    assert_eq!(back, message);
}

fuzz_target!(|data: &[u8]| {
    let Some((selector, rest)) = sockd_fuzz::selector(data) else {
        return;
    };
    match selector % 3 {
        0 => request(rest),
        1 => control_line(rest),
        _ => {
            if let Ok(text) = std::str::from_utf8(rest) {
                let _ = sockd_files::config::Settings::parse(text);
            }
        }
    }
});
