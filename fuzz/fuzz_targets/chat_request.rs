//! Fuzz target `chat_request`: the chat plugin's parsers
//! (plugins/chat/src/wire.rs and its settings).
//!
//! Input: byte 0 picks the case (modulo 3), the rest is:
//! - 0: a request line of a `chat listen` channel (stream 2), parsed as
//!   plugins/chat/src/calls.rs parses it, then its names checked;
//! - 1: a `chat` OPEN payload (command, argc, args): the arguments as
//!   UTF-8, the target, room and number arguments parsed;
//! - 2: the `[plugins.chat]` table as TOML text: `Settings::parse`.
//!
//! Checks: no panic; the user-name rule is the daemon's; an accepted room
//! name is `#` plus 1 to 32 lower-case characters and parses to itself; a
//! message text of any content comes back intact from its delivery line.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sockd_chat::wire::{self, Request, Target};

fn check_name(text: &str) {
    match Target::parse(text) {
        Ok(Target::User(user)) => {
            assert_eq!(user, text);
            assert!(sockd::users::valid_user_name(&user), "{user:?}");
        }
        Ok(Target::Room(room)) => {
            assert!(room.starts_with('#') && (2..=33).contains(&room.len()));
            assert!(!room.bytes().any(|b| b.is_ascii_uppercase()));
            assert_eq!(Target::parse(&room).ok(), Some(Target::Room(room.clone())));
        }
        Err(f) => assert!(!f.message.is_empty()),
    }
    // The chat plugin and the daemon must agree on who can exist.
    if !text.starts_with('#') {
        assert_eq!(
            wire::user_name(text).is_ok(),
            sockd::users::valid_user_name(text),
            "{text:?}"
        );
    }
    let _ = wire::room_name(text);
}

fn delivery_survives(text: &str) {
    let message = wire::Message {
        id: 1,
        ts: 2,
        kind: "msg".into(),
        from: "alice".into(),
        to: "bob".into(),
        text: text.into(),
    };
    let line = message.delivery_line(7).expect("a message encodes");
    assert_eq!(line.last(), Some(&b'\n'));
    let value: serde_json::Value = serde_json::from_slice(&line).expect("a delivery is JSON");
    assert_eq!(value["seq"], 7);
    assert_eq!(value["text"].as_str(), Some(text));
}

fn listen_line(line: &[u8]) {
    if line.iter().all(u8::is_ascii_whitespace) {
        return;
    }
    let Ok(request) = serde_json::from_slice::<Request>(line) else {
        return;
    };
    for name in [&request.to, &request.with, &request.room]
        .into_iter()
        .flatten()
    {
        check_name(name);
    }
    if let Some(text) = &request.text {
        delivery_survives(text);
    }
}

fn call_args(payload: &[u8]) {
    let Some((_, args)) = sockd_fuzz::open_args(payload) else {
        return;
    };
    let Some(args) = sockd_fuzz::str_args(&args) else {
        return;
    };
    if let Some(target) = args.get(1) {
        check_name(target);
    }
    for number in args.iter().skip(2) {
        let _ = number.parse::<i64>();
    }
    if let Some(text) = args.get(2) {
        delivery_survives(text);
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((selector, rest)) = sockd_fuzz::selector(data) else {
        return;
    };
    match selector % 3 {
        0 => listen_line(rest),
        1 => call_args(rest),
        _ => {
            if let Ok(text) = std::str::from_utf8(rest) {
                let _ = sockd_chat::config::Settings::parse(text);
            }
        }
    }
});
