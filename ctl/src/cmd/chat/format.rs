//! How chat messages look: one line each, the sender's name in a stable
//! color of its own (or the one the `[colors]` table of the client config
//! gives it), your own messages dimmed, and nothing but plain text when
//! the output is not a terminal.

use super::inbox::Delivery;
use std::collections::BTreeMap;

/// Readable foreground colors on dark and light backgrounds (ANSI SGR).
const PALETTE: [&str; 10] = ["31", "32", "33", "34", "35", "36", "91", "92", "94", "95"];

const RESET: &str = "\x1b[0m";
const DIM: &str = "\x1b[2m";

/// Turns messages into lines, with or without colors.
#[derive(Debug, Clone)]
pub struct Style {
    color: bool,
    me: String,
    overrides: BTreeMap<String, String>,
}

impl Style {
    /// `color`: write ANSI colors (only for a terminal). `overrides`: the
    /// client config's `[colors]` table, user name to color.
    pub fn new(color: bool, me: &str, overrides: &BTreeMap<String, String>) -> Style {
        let overrides = overrides
            .iter()
            .filter_map(|(name, color)| sgr(color).map(|code| (name.clone(), code)))
            .collect();
        Style {
            color,
            me: me.to_string(),
            overrides,
        }
    }

    /// Color names in `[colors]` that are not understood.
    pub fn unknown_colors(overrides: &BTreeMap<String, String>) -> Vec<String> {
        overrides
            .iter()
            .filter(|(_, c)| sgr(c).is_none())
            .map(|(n, c)| format!("{n} = {c:?}"))
            .collect()
    }

    /// The SGR code of `user`'s color.
    fn code_for(&self, user: &str) -> String {
        if let Some(code) = self.overrides.get(user) {
            return code.clone();
        }
        PALETTE[(fnv1a(user) % PALETTE.len() as u64) as usize].to_string()
    }

    /// `user` in its color.
    pub fn name(&self, user: &str) -> String {
        if self.color {
            format!("\x1b[{}m{user}{RESET}", self.code_for(user))
        } else {
            user.to_string()
        }
    }

    /// A whole line dimmed (your own messages, notices).
    fn dim(&self, text: &str) -> String {
        if self.color {
            format!("{DIM}{text}{RESET}")
        } else {
            text.to_string()
        }
    }

    /// One message as a line (without newline). `long_time`: full UTC date
    /// instead of `HH:MM`.
    pub fn message(&self, d: &Delivery, long_time: bool) -> String {
        let time = if long_time {
            utc(d.ts)
        } else {
            utc(d.ts).get(11..16).unwrap_or_default().to_string()
        };
        let text = clean(&d.text);
        let own = d.from == self.me;
        let room = d.to.starts_with('#');
        match d.kind.as_str() {
            "join" | "leave" => {
                let verb = if d.kind == "join" { "joined" } else { "left" };
                self.dim(&format!("{time} {} * {} {verb}", d.to, clean(&d.from)))
            }
            _ if own && room => self.dim(&format!("{time} {} {}: {text}", d.to, clean(&d.from))),
            _ if own => self.dim(&format!("{time} {} -> {}: {text}", clean(&d.from), d.to)),
            _ if room => format!("{time} {} {}: {text}", d.to, self.name(&clean(&d.from))),
            _ => format!("{time} {}: {text}", self.name(&clean(&d.from))),
        }
    }
}

/// `YYYY-MM-DD HH:MM:SS UTC` for milliseconds since the epoch.
fn utc(ms: i64) -> String {
    crate::output::utc_time(u64::try_from(ms / 1000).unwrap_or(0))
}

/// Removes control characters (a sender must not drive the reader's
/// terminal) and indents continuation lines.
pub fn clean(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '\n' => out.push_str("\n    "),
            '\t' => out.push_str("    "),
            c if c.is_control() => out.push('\u{fffd}'),
            c => out.push(c),
        }
    }
    out
}

/// A color name (`red`, `bright-blue`, ...) or 256-color number as SGR.
fn sgr(color: &str) -> Option<String> {
    let base = |name: &str| -> Option<u8> {
        Some(match name {
            "black" => 0,
            "red" => 1,
            "green" => 2,
            "yellow" => 3,
            "blue" => 4,
            "magenta" => 5,
            "cyan" => 6,
            "white" => 7,
            _ => return None,
        })
    };
    let color = color.trim().to_ascii_lowercase();
    if let Ok(n) = color.parse::<u8>() {
        return Some(format!("38;5;{n}"));
    }
    if let Some(name) = color
        .strip_prefix("bright-")
        .or_else(|| color.strip_prefix("bright_"))
    {
        return base(name).map(|n| (90 + n).to_string());
    }
    base(&color).map(|n| (30 + n).to_string())
}

/// FNV-1a: a stable hash (the same name gets the same color everywhere).
fn fnv1a(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(from: &str, to: &str, kind: &str, text: &str) -> Delivery {
        Delivery {
            seq: None,
            id: 1,
            ts: 1_763_896_320_000,
            kind: kind.into(),
            from: from.into(),
            to: to.into(),
            text: text.into(),
        }
    }

    #[test]
    fn plain_lines_have_no_escape_codes() {
        let style = Style::new(false, "me", &BTreeMap::new());
        assert_eq!(
            style.message(&msg("bob", "me", "msg", "hi"), false),
            "11:12 bob: hi"
        );
        assert_eq!(
            style.message(&msg("bob", "#ops", "msg", "hi"), true),
            "2025-11-23 11:12:00 UTC #ops bob: hi"
        );
        assert_eq!(
            style.message(&msg("me", "bob", "msg", "yo"), false),
            "11:12 me -> bob: yo"
        );
        assert_eq!(
            style.message(&msg("bob", "#ops", "join", ""), false),
            "11:12 #ops * bob joined"
        );
        assert_eq!(
            style.message(&msg("bob", "me", "msg", "a\x1b[2Jb\nc"), false),
            "11:12 bob: a\u{fffd}[2Jb\n    c"
        );
    }

    #[test]
    fn colors_are_stable_overridable_and_own_lines_dim() {
        let mut overrides = BTreeMap::new();
        overrides.insert("alice".to_string(), "bright-green".to_string());
        overrides.insert("carol".to_string(), "208".to_string());
        overrides.insert("dave".to_string(), "no-such-color".to_string());
        let style = Style::new(true, "me", &overrides);
        assert_eq!(style.name("alice"), "\x1b[92malice\x1b[0m");
        assert_eq!(style.name("carol"), "\x1b[38;5;208mcarol\x1b[0m");
        assert_eq!(style.name("bob"), style.name("bob"));
        assert!(
            PALETTE
                .iter()
                .any(|c| style.name("dave") == format!("\x1b[{c}mdave\x1b[0m"))
        );
        assert!(
            style
                .message(&msg("me", "bob", "msg", "x"), false)
                .starts_with(DIM)
        );
        assert_eq!(
            Style::unknown_colors(&overrides),
            ["dave = \"no-such-color\""]
        );
        let spread: std::collections::BTreeSet<_> =
            ["alice", "bob", "carol", "dave", "erin", "frank"]
                .iter()
                .map(|n| style.code_for(n))
                .collect();
        assert!(spread.len() > 2, "names spread over the palette");
    }
}
