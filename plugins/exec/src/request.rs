//! The `exec` command's wire format (see docs/EXEC.md).
//!
//! OPEN `exec` arguments:
//!
//! | index | content |
//! |---|---|
//! | 0 | mode: `argv` or `shell` |
//! | 1 | options, a JSON object (`{}` for none): `{"pty":{"term":"xterm-256color","cols":80,"rows":24}}` |
//! | 2.. | `argv`: the program (looked up in PATH unless it contains `/`) and its arguments; `shell`: exactly one argument, the string given to `/bin/sh -c` |
//!
//! Streams: client → server 0 is stdin (EOF 0 closes it), 2 carries
//! newline-terminated JSON such as `{"resize":{"cols":C,"rows":R}}`.
//! Server → client 0 is stdout (with a pty: stdout and stderr), 1 stderr,
//! 2 one `{"exit":{"code":N}}` or `{"exit":{"signal":N,"core":B}}` line
//! before a CLOSE `ok` whose value is the exit status (128+N after a signal).

use serde::Deserialize;
use sockd_plugin::Failure;
use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;

/// The shell used by `shell` mode (`sockctl exec -c STRING`).
pub const SHELL: &str = "/bin/sh";

/// A pseudo-terminal request.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct PtyRequest {
    #[serde(default = "default_term")]
    pub term: String,
    #[serde(default)]
    pub cols: u16,
    #[serde(default)]
    pub rows: u16,
}

fn default_term() -> String {
    "dumb".into()
}

/// Unknown option keys are ignored, so newer clients can ask for more.
#[derive(Debug, Default, Deserialize)]
struct Options {
    #[serde(default)]
    pty: Option<PtyRequest>,
}

/// What the client asked to run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// The program to look up (`/bin/sh` in shell mode).
    pub program: OsString,
    /// argv, starting with argv[0] as the client gave it.
    pub argv: Vec<OsString>,
    pub pty: Option<PtyRequest>,
}

fn bad(message: impl Into<String>) -> Failure {
    Failure::bad_request(message)
}

impl Request {
    pub fn parse(args: &[&[u8]]) -> Result<Request, Failure> {
        let usage = "exec arguments: MODE (argv|shell), OPTIONS (JSON), then the command";
        let (mode, rest) = args.split_first().ok_or_else(|| bad(usage))?;
        let (options, command) = rest.split_first().ok_or_else(|| bad(usage))?;
        let options: Options = if options.is_empty() {
            Options::default()
        } else {
            serde_json::from_slice(options)
                .map_err(|e| bad(format!("exec options are not a valid JSON object: {e}")))?
        };
        if let Some(pty) = &options.pty {
            let ok = !pty.term.is_empty()
                && pty.term.len() <= 64
                && pty.term.bytes().all(|b| b.is_ascii_graphic());
            if !ok {
                return Err(bad(format!("invalid TERM {:?}", pty.term)));
            }
        }
        let no_nul = |a: &[u8]| !a.contains(&0);
        if !command.iter().all(|a| no_nul(a)) {
            return Err(bad("a command argument contains a NUL byte"));
        }
        let os = |a: &[u8]| OsStr::from_bytes(a).to_os_string();
        match *mode {
            b"argv" => {
                let Some(first) = command.first() else {
                    return Err(bad("no command given"));
                };
                if first.is_empty() {
                    return Err(bad("the command name is empty"));
                }
                Ok(Request {
                    program: os(first),
                    argv: command.iter().map(|a| os(a)).collect(),
                    pty: options.pty,
                })
            }
            b"shell" => {
                let [script] = command else {
                    return Err(bad(
                        "shell mode takes exactly one argument, the command string",
                    ));
                };
                Ok(Request {
                    program: SHELL.into(),
                    argv: vec!["sh".into(), "-c".into(), os(script)],
                    pty: options.pty,
                })
            }
            other => Err(bad(format!(
                "unknown exec mode {:?}; expected argv or shell",
                String::from_utf8_lossy(other)
            ))),
        }
    }

    /// The name to show in messages ("foo: command not found").
    pub fn shown_name(&self) -> String {
        String::from_utf8_lossy(self.program.as_bytes()).into_owned()
    }
}

/// A client → server control message (stream 2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub struct Resize {
    pub cols: u16,
    pub rows: u16,
}

#[derive(Debug, Deserialize)]
struct ControlIn {
    #[serde(default)]
    resize: Option<Resize>,
}

/// Parses one control line; `None` for what this version does not know.
pub fn parse_control(line: &[u8]) -> Option<Resize> {
    serde_json::from_slice::<ControlIn>(line).ok()?.resize
}

/// Collects stream 2 bytes into lines (at most `MAX_LINE` bytes each; a
/// longer line is dropped).
#[derive(Debug, Default)]
pub struct Lines {
    buf: Vec<u8>,
    skipping: bool,
}

pub const MAX_LINE: usize = 64 * 1024;

impl Lines {
    pub fn push(&mut self, data: &[u8], mut each: impl FnMut(&[u8])) {
        for part in data.split_inclusive(|&b| b == b'\n') {
            let complete = part.ends_with(b"\n");
            if !self.skipping {
                self.buf.extend_from_slice(part);
            }
            if self.buf.len() > MAX_LINE {
                self.buf.clear();
                self.skipping = true;
            }
            if complete {
                if !self.skipping {
                    each(&self.buf[..self.buf.len() - 1]);
                }
                self.buf.clear();
                self.skipping = false;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Request, Failure> {
        let args: Vec<&[u8]> = args.iter().map(|a| a.as_bytes()).collect();
        Request::parse(&args)
    }

    #[test]
    fn parses_both_modes() {
        let r = parse(&["argv", "{}", "ls", "-l"]).unwrap();
        assert_eq!(r.program, "ls");
        assert_eq!(r.argv, ["ls", "-l"]);
        assert_eq!(r.pty, None);
        let r = parse(&[
            "shell",
            r#"{"pty":{"term":"xterm","cols":100,"rows":30}}"#,
            "echo hi",
        ])
        .unwrap();
        assert_eq!(r.program, SHELL);
        assert_eq!(r.argv, ["sh", "-c", "echo hi"]);
        assert_eq!(
            r.pty,
            Some(PtyRequest {
                term: "xterm".into(),
                cols: 100,
                rows: 30
            })
        );
        let r = parse(&["argv", "", "true"]).unwrap();
        assert_eq!(r.argv, ["true"]);
        let r = parse(&["argv", r#"{"pty":{},"future":1}"#, "vi"]).unwrap();
        assert_eq!(r.pty.unwrap().term, "dumb");
    }

    #[test]
    fn rejects_malformed_requests() {
        let cases: [&[&str]; 10] = [
            &[],
            &["argv"],
            &["argv", "{}"],
            &["argv", "{}", ""],
            &["shell", "{}"],
            &["shell", "{}", "a", "b"],
            &["spawn", "{}", "ls"],
            &["argv", "not json", "ls"],
            &["argv", r#"{"pty":{"term":"a b"}}"#, "ls"],
            &["argv", "{}", "l\0s"],
        ];
        for args in cases {
            assert!(parse(args).is_err(), "{args:?}");
        }
    }

    #[test]
    fn control_lines() {
        let mut got = Vec::new();
        let mut lines = Lines::default();
        lines.push(br#"{"resize":{"cols":1"#, |l| got.push(l.to_vec()));
        lines.push(b"20,\"rows\":40}}\n{\"other\":1}\n", |l| {
            got.push(l.to_vec())
        });
        assert_eq!(got.len(), 2);
        assert_eq!(
            parse_control(&got[0]),
            Some(Resize {
                cols: 120,
                rows: 40
            })
        );
        assert_eq!(parse_control(&got[1]), None);
        let mut n = 0;
        lines.push(&vec![b'x'; MAX_LINE + 10], |_| n += 1);
        lines.push(b"x\n{\"resize\":{\"cols\":1,\"rows\":2}}\n", |l| {
            n += 1;
            assert!(parse_control(l).is_some());
        });
        assert_eq!(n, 1, "the overlong line is dropped, the next one kept");
    }
}
