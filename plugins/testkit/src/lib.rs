//! The test plugin: commands that exercise every corner of the plugin host.
//!
//! - `echo [ARG...]`: writes each argument as a line, then echoes every
//!   input frame back on the stream it came on until EOF on stream 0;
//! - `panic`: panics (the SDK turns it into an error; the host counts it);
//! - `sleep SECONDS`: sleeps (ending early if cancelled), then writes `slept`;
//! - `flood`: writes 64 KiB chunks until the call is cancelled or closed
//!   (backpressure tests);
//! - `pong [PAYLOAD]`: the plugin twin of a PING: writes PAYLOAD back
//!   unchanged, as the daemon answers a PING with its payload; **inline**
//!   (the benchmark of the call path, `sockbench calls`);
//! - `whoami`: writes the user, session id, home directory and peer; an
//!   **inline** command (ABI 1.1), run on the connection's task;
//! - `whoami-blocking`: the same on a call thread (the blocking path, for
//!   comparison in benchmarks);
//! - `inline-probe [BYTES]`: inline; tries what an inline call must not do
//!   (a read that waits, writes of BYTES, default 64 KiB, until the client's
//!   window or the connection's queue is full) and ends with `busy`, as a
//!   handler whose write fails with `?` does, reporting what each got in
//!   the CLOSE message (`read 5s: would_block`, ..., `write: would_block
//!   after N`, N the bytes written);
//! - `inline-panic`: an inline command that panics;
//! - `subscribe`: becomes a push target and waits until cancelled;
//! - `push USER TEXT`: pushes TEXT to USER's subscribed `subscribe` calls
//!   and writes `delivered N full M`;
//! - `config`: writes the settings the plugin currently has;
//! - `inline-echo [--on-thread]`: inline and **pending** (ABI 1.2): echoes
//!   every input frame from `on_input` on the connection's task until EOF
//!   on stream 0; with `--on-thread` it asks for a call thread instead and
//!   echoes there as `echo` does;
//! - `inline-later [MS]`: inline and pending; a thread of its own writes
//!   `later` after MS milliseconds (default 0) and ends the call with
//!   `Channel::finish`; input is read and ignored; a cancel ends it early;
//! - `inline-input-panic`: inline and pending; `on_input` panics.
//!
//! Settings (`[plugins.testkit]`): `marker = "/path"` appends one line per
//! lifecycle event (`init`, `configure`, `session_closed N`, `shutdown`) to
//! that file, so tests can watch the host drive the lifecycle;
//! `fail_init = true` makes init fail.

use sockd_plugin::{
    Call, Channel, ChannelError, Failure, Host, Inline, Input, PendingCall, Plugin, Progress,
    stream,
};
use std::io::Write;
use std::sync::Mutex;
use std::time::{Duration, Instant};

const CHUNK: usize = 64 * 1024;

struct Testkit {
    host: Host,
    settings: Mutex<String>,
}

impl Testkit {
    fn settings(&self) -> String {
        self.settings
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Appends `event` to the marker file named in the settings, if any.
    fn mark(&self, event: &str) {
        mark(&self.settings(), event);
    }
}

fn setting<'a>(text: &'a str, key: &str) -> Option<&'a str> {
    // A tiny reader for `key = value` lines is all the tests need; it keeps
    // this crate free of a TOML dependency.
    text.lines().find_map(|line| {
        let (k, v) = line.split_once('=')?;
        (k.trim() == key).then(|| v.trim().trim_matches('"'))
    })
}

fn mark(settings: &str, event: &str) {
    if let Some(path) = setting(settings, "marker")
        && let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
    {
        let _ = writeln!(f, "{event}");
    }
}

impl Plugin for Testkit {
    fn init(host: Host, config: &str) -> Result<Self, String> {
        if setting(config, "fail_init") == Some("true") {
            return Err("fail_init is set".into());
        }
        mark(config, "init");
        host.info("testkit ready");
        Ok(Testkit {
            host,
            settings: Mutex::new(config.to_string()),
        })
    }

    fn configure(&self, config: &str) -> Result<(), String> {
        *self.settings.lock().unwrap_or_else(|p| p.into_inner()) = config.to_string();
        self.mark("configure");
        Ok(())
    }

    fn handle(&self, call: &Call<'_>) -> Result<(), Failure> {
        match call.command() {
            "echo" => echo(call),
            "pong" => pong(call),
            "panic" => panic!("testkit was asked to panic"),
            "sleep" => sleep(call),
            "flood" => flood(call),
            "whoami" | "whoami-blocking" => whoami(call),
            // Asked for a thread with --on-thread.
            "inline-echo" => echo(call),
            "inline-probe" => inline_probe(call),
            "inline-panic" => panic!("testkit was asked to panic inline"),
            "subscribe" => subscribe(call),
            "push" => push(self.host, call),
            "config" => Ok(call
                .channel()
                .write(stream::MAIN, self.settings().as_bytes())?),
            other => Err(Failure::bad_request(format!(
                "testkit has no command `{other}`"
            ))),
        }
    }

    fn handle_inline(&self, call: &Call<'_>) -> Result<Inline, Failure> {
        match call.command() {
            "inline-echo" if call.args().first() == Some(&&b"--on-thread"[..]) => {
                Ok(Inline::OnThread)
            }
            "inline-echo" => Ok(Inline::Pending(Box::new(InlineEcho))),
            "inline-later" => inline_later(call),
            "inline-input-panic" => Ok(Inline::Pending(Box::new(InputPanic))),
            _ => self.handle(call).map(|()| Inline::Done),
        }
    }

    fn session_closed(&self, session_id: u64) {
        self.mark(&format!("session_closed {session_id}"));
    }

    fn shutdown(&self) {
        self.mark("shutdown");
    }
}

fn echo(call: &Call<'_>) -> Result<(), Failure> {
    let ch = call.channel();
    for arg in call.args() {
        ch.write(stream::MAIN, arg)?;
        ch.write(stream::MAIN, b"\n")?;
    }
    let mut buf = vec![0; CHUNK];
    loop {
        match ch.read(&mut buf, None)? {
            Input::Data { stream, len } => ch.write(stream, &buf[..len])?,
            Input::Eof {
                stream: stream::MAIN,
            } => break,
            Input::Eof { .. } => {}
        }
    }
    ch.write_eof(stream::MAIN)?;
    Ok(())
}

fn pong(call: &Call<'_>) -> Result<(), Failure> {
    match call.arg(0) {
        Some(payload) => Ok(call.channel().write(stream::MAIN, payload)?),
        None => Ok(()),
    }
}

fn whoami(call: &Call<'_>) -> Result<(), Failure> {
    let text = format!(
        "user {}\nsession {}\nhome {}\npeer {}\n",
        call.user(),
        call.session_id(),
        call.home().display(),
        call.peer()
    );
    Ok(call.channel().write(stream::MAIN, text.as_bytes())?)
}

/// What a channel operation returned, as a word for the probe's report.
fn outcome(r: Result<(), ChannelError>) -> &'static str {
    match r {
        Ok(()) => "ok",
        Err(ChannelError::WouldBlock) => "would_block",
        Err(ChannelError::Timeout) => "timeout",
        Err(ChannelError::Cancelled) => "cancelled",
        Err(ChannelError::Closed) => "closed",
    }
}

fn inline_probe(call: &Call<'_>) -> Result<(), Failure> {
    let args = call.str_args()?;
    let size: usize = match args.as_slice() {
        [] => CHUNK,
        [n] => n
            .parse()
            .ok()
            .filter(|n| *n > 0)
            .ok_or_else(|| Failure::bad_request(format!("inline-probe: bad size `{n}`")))?,
        _ => return Err(Failure::bad_request("usage: inline-probe [BYTES]")),
    };
    let ch = call.channel();
    let mut buf = [0u8; 16];
    let waited = ch.read(&mut buf, Some(Duration::from_secs(5))).map(|_| ());
    let polled = ch.read(&mut buf, Some(Duration::ZERO)).map(|_| ());
    let forever = ch.read(&mut buf, None).map(|_| ());
    let chunk = vec![b'x'; size];
    let mut written = 0usize;
    let stopped = loop {
        match ch.write(stream::MAIN, &chunk) {
            Ok(()) => written += size,
            Err(e) => break Err(e),
        }
    };
    let report = format!(
        "read 5s: {}\nread 0: {}\nread forever: {}\nwrite: {} after {written}",
        outcome(waited),
        outcome(polled),
        outcome(forever),
        outcome(stopped),
    );
    // The window may be used up by now: the report goes in the CLOSE.
    Err(Failure::new(sockd_plugin::Code::Busy, report))
}

fn sleep(call: &Call<'_>) -> Result<(), Failure> {
    let args = call.str_args()?;
    let seconds: f64 = match args.as_slice() {
        [s] => s.parse().map_err(|_| {
            Failure::bad_request(format!("sleep: `{s}` is not a number of seconds"))
        })?,
        _ => return Err(Failure::bad_request("usage: sleep SECONDS")),
    };
    let until = Instant::now() + Duration::try_from_secs_f64(seconds).unwrap_or(Duration::ZERO);
    let ch = call.channel();
    while Instant::now() < until {
        if ch.is_cancelled() {
            return Err(Failure::new(
                sockd_plugin::Code::Cancelled,
                "sleep cancelled",
            ));
        }
        std::thread::sleep((until - Instant::now()).min(Duration::from_millis(20)));
    }
    Ok(ch.write(stream::MAIN, b"slept\n")?)
}

fn flood(call: &Call<'_>) -> Result<(), Failure> {
    let chunk = vec![b'x'; CHUNK];
    let ch = call.channel();
    loop {
        ch.write(stream::MAIN, &chunk)?;
    }
}

fn subscribe(call: &Call<'_>) -> Result<(), Failure> {
    let ch = call.channel();
    ch.subscribe()?;
    ch.write(stream::CONTROL, b"subscribed\n")?;
    // Pushed data flows to the client directly; wait for the end.
    let mut buf = [0u8; 256];
    loop {
        match ch.read(&mut buf, None)? {
            Input::Eof {
                stream: stream::MAIN,
            } => return Ok(()),
            Input::Data { .. } | Input::Eof { .. } => {}
        }
    }
}

fn push(host: Host, call: &Call<'_>) -> Result<(), Failure> {
    let args = call.str_args()?;
    let [user, text] = args.as_slice() else {
        return Err(Failure::bad_request("usage: push USER TEXT"));
    };
    let pushed = host.push_user(user, stream::MAIN, format!("{text}\n").as_bytes());
    let report = format!("delivered {} full {}\n", pushed.delivered, pushed.full);
    Ok(call.channel().write(stream::MAIN, report.as_bytes())?)
}

/// `inline-echo`: echoes on the connection's task.
struct InlineEcho;

impl PendingCall for InlineEcho {
    fn on_input(&mut self, ch: Channel) -> Result<Progress, Failure> {
        let mut buf = [0u8; 16 * 1024];
        loop {
            match ch.read(&mut buf, Some(Duration::ZERO)) {
                Ok(Input::Data { stream, len }) => ch.write(stream, &buf[..len])?,
                Ok(Input::Eof {
                    stream: stream::MAIN,
                }) => {
                    ch.write_eof(stream::MAIN)?;
                    return Ok(Progress::Done);
                }
                Ok(Input::Eof { .. }) => {}
                Err(ChannelError::Timeout) => return Ok(Progress::Pending),
                Err(e) => return Err(e.into()),
            }
        }
    }
}

/// `inline-later [MS]`: finished by a thread of its own.
fn inline_later(call: &Call<'_>) -> Result<Inline, Failure> {
    let args = call.str_args()?;
    let ms: u64 = match args.as_slice() {
        [] => 0,
        [ms] => ms
            .parse()
            .map_err(|_| Failure::bad_request("usage: inline-later [MS]"))?,
        _ => return Err(Failure::bad_request("usage: inline-later [MS]")),
    };
    let ch = call.channel();
    std::thread::spawn(move || {
        let deadline = Instant::now() + Duration::from_millis(ms);
        while Instant::now() < deadline && !ch.is_cancelled() {
            std::thread::sleep(Duration::from_millis(5));
        }
        // Off the connection's task this write may wait for credit.
        let result = ch.write(stream::MAIN, b"later\n").map_err(Failure::from);
        ch.finish(result);
    });
    Ok(Inline::Pending(Box::new(IgnoreInput)))
}

/// Reads and drops input; the call is ended by someone else.
struct IgnoreInput;

impl PendingCall for IgnoreInput {
    fn on_input(&mut self, ch: Channel) -> Result<Progress, Failure> {
        let mut buf = [0u8; 16 * 1024];
        loop {
            match ch.read(&mut buf, Some(Duration::ZERO)) {
                Ok(_) => {}
                Err(ChannelError::Timeout) => return Ok(Progress::Pending),
                Err(e) => return Err(e.into()),
            }
        }
    }
}

/// `inline-input-panic`.
struct InputPanic;

impl PendingCall for InputPanic {
    fn on_input(&mut self, _ch: Channel) -> Result<Progress, Failure> {
        panic!("testkit was asked to panic in on_input");
    }
}

sockd_plugin::export_plugin!(
    name: "testkit",
    version: env!("CARGO_PKG_VERSION"),
    commands: [
        "echo", "pong", "panic", "sleep", "flood", "whoami", "whoami-blocking", "subscribe", "push",
        "config", "inline-probe", "inline-panic", "inline-echo", "inline-later",
        "inline-input-panic",
    ],
    inline: [
        "pong", "whoami", "inline-probe", "inline-panic", "inline-echo", "inline-later",
        "inline-input-panic",
    ],
    plugin: Testkit,
);
