//! The safe Rust SDK for sockd plugins.
//!
//! Implement [`Plugin`] and export it with [`export_plugin!`]; the macro
//! builds the static descriptor and the `extern "C"` entry points, each
//! wrapped in `catch_unwind` so a panic becomes an error on the channel
//! instead of aborting the daemon. A plugin author writes no `unsafe`.
//!
//! ```ignore
//! struct Echo;
//! impl sockd_plugin::Plugin for Echo {
//!     fn init(_host: sockd_plugin::Host, _config: &str) -> Result<Self, String> { Ok(Echo) }
//!     fn handle(&self, call: &sockd_plugin::Call<'_>) -> Result<(), sockd_plugin::Failure> {
//!         let ch = call.channel();
//!         let mut buf = vec![0; 64 * 1024];
//!         while let sockd_plugin::Input::Data { stream, len } = ch.read(&mut buf, None)? {
//!             ch.write(stream, &buf[..len])?;
//!         }
//!         Ok(())
//!     }
//! }
//! sockd_plugin::export_plugin!(name: "echo", version: "1.0.0", commands: ["echo"], plugin: Echo);
//! ```
//!
//! Short, non-blocking commands can be declared inline (ABI 1.1,
//! `inline: [...]` in [`export_plugin!`]): the daemon runs them on the
//! connection's task without a thread hand-off. Since ABI 1.2 such a
//! command may also stay open and serve its input there
//! ([`Plugin::handle_inline`], [`Inline::Pending`], [`PendingCall`]).
//!
//! See docs/PLUGINS.md for the lifecycle and threading rules.

pub mod sys;

use std::ffi::c_void;
use std::fmt;
use std::path::Path;
use std::time::Duration;
use sys::{SockdCall, SockdHost, SockdStr};

/// Well-known streams (see `stream` in docs/PROTOCOL.md).
pub mod stream {
    pub const MAIN: u8 = super::sys::SOCKD_STREAM_MAIN;
    pub const DIAG: u8 = super::sys::SOCKD_STREAM_DIAG;
    pub const CONTROL: u8 = super::sys::SOCKD_STREAM_CONTROL;
}

/// Error codes a handler can end a call with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(i32)]
pub enum Code {
    RateLimited = sys::SOCKD_E_RATE_LIMITED,
    Unavailable = sys::SOCKD_E_UNAVAILABLE,
    BadRequest = sys::SOCKD_E_BAD_REQUEST,
    PermissionDenied = sys::SOCKD_E_PERMISSION_DENIED,
    NotFound = sys::SOCKD_E_NOT_FOUND,
    AlreadyExists = sys::SOCKD_E_ALREADY_EXISTS,
    NotADirectory = sys::SOCKD_E_NOT_A_DIRECTORY,
    IsADirectory = sys::SOCKD_E_IS_A_DIRECTORY,
    QuotaExceeded = sys::SOCKD_E_QUOTA_EXCEEDED,
    NoSpace = sys::SOCKD_E_NO_SPACE,
    NameTooLong = sys::SOCKD_E_NAME_TOO_LONG,
    TooLarge = sys::SOCKD_E_TOO_LARGE,
    Timeout = sys::SOCKD_E_TIMEOUT,
    Cancelled = sys::SOCKD_E_CANCELLED,
    Busy = sys::SOCKD_E_BUSY,
    Internal = sys::SOCKD_E_INTERNAL,
    Conflict = sys::SOCKD_E_CONFLICT,
    DirectoryNotEmpty = sys::SOCKD_E_DIRECTORY_NOT_EMPTY,
}

/// Why a call failed: a code for the client's exit status and a message
/// for its user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub code: Code,
    pub message: String,
}

impl Failure {
    pub fn new(code: Code, message: impl Into<String>) -> Self {
        Failure {
            code,
            message: message.into(),
        }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(Code::BadRequest, message)
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(Code::Internal, message)
    }

    /// Maps an I/O error to the closest code, prefixing `context` (usually
    /// the path the user named) to the message.
    pub fn io(context: impl fmt::Display, e: &std::io::Error) -> Self {
        use std::io::ErrorKind as K;
        let code = match e.kind() {
            K::NotFound => Code::NotFound,
            K::PermissionDenied => Code::PermissionDenied,
            K::AlreadyExists => Code::AlreadyExists,
            K::NotADirectory => Code::NotADirectory,
            K::IsADirectory => Code::IsADirectory,
            K::DirectoryNotEmpty => Code::DirectoryNotEmpty,
            K::StorageFull | K::QuotaExceeded => Code::NoSpace,
            K::InvalidFilename => Code::NameTooLong,
            K::InvalidInput => Code::BadRequest,
            K::TimedOut => Code::Timeout,
            _ => Code::Internal,
        };
        let text = match e.raw_os_error() {
            // Strip the "(os error N)" suffix: it means nothing to a user.
            Some(_) => e
                .to_string()
                .split(" (os error")
                .next()
                .unwrap_or_default()
                .to_string(),
            None => e.to_string(),
        };
        Failure::new(code, format!("{context}: {}", text.to_lowercase()))
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Failure {}

/// Why a channel operation did not happen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChannelError {
    /// The client cancelled the call or disconnected.
    Cancelled,
    /// The channel no longer exists (the call already ended).
    Closed,
    /// `read` waited for its whole timeout.
    Timeout,
    /// `try_write`: the client's window cannot take the data now.
    WouldBlock,
}

impl ChannelError {
    fn from_code(code: i64) -> Self {
        match -code as i32 {
            sys::SOCKD_E_TIMEOUT => ChannelError::Timeout,
            sys::SOCKD_E_WOULD_BLOCK => ChannelError::WouldBlock,
            sys::SOCKD_E_CANCELLED => ChannelError::Cancelled,
            _ => ChannelError::Closed,
        }
    }
}

impl fmt::Display for ChannelError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ChannelError::Cancelled => "the client cancelled or disconnected",
            ChannelError::Closed => "the channel is closed",
            ChannelError::Timeout => "timed out waiting for the client",
            ChannelError::WouldBlock => "the client's window is full",
        })
    }
}

impl std::error::Error for ChannelError {}

impl From<ChannelError> for Failure {
    fn from(e: ChannelError) -> Self {
        let code = match e {
            ChannelError::Timeout => Code::Timeout,
            ChannelError::WouldBlock => Code::Busy,
            ChannelError::Cancelled | ChannelError::Closed => Code::Cancelled,
        };
        Failure::new(code, e.to_string())
    }
}

/// Log levels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum Level {
    Error = sys::SOCKD_LOG_ERROR,
    Warn = sys::SOCKD_LOG_WARN,
    Info = sys::SOCKD_LOG_INFO,
    Debug = sys::SOCKD_LOG_DEBUG,
}

/// The daemon's services. Cheap to copy, usable from any thread, valid for
/// the life of the process.
#[derive(Clone, Copy)]
pub struct Host {
    raw: &'static SockdHost,
}

/// What [`Host::push_user`] achieved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pushed {
    /// Channels that took the message.
    pub delivered: u64,
    /// Subscribed channels skipped because their window was full.
    pub full: u64,
}

impl Host {
    /// # Safety
    /// `raw` must be the host table handed to `init`, which the daemon keeps
    /// alive for the life of the process.
    #[doc(hidden)]
    pub unsafe fn from_raw(raw: *const SockdHost) -> Self {
        // SAFETY: guaranteed by the caller.
        Host {
            raw: unsafe { &*raw },
        }
    }

    pub fn log(&self, level: Level, message: &str) {
        // SAFETY: the host table's functions are valid for the process's life;
        // the message is borrowed for the duration of the call.
        unsafe { (self.raw.log)(self.raw, level as u32, message.as_ptr(), message.len()) }
    }

    pub fn error(&self, message: &str) {
        self.log(Level::Error, message)
    }

    pub fn warn(&self, message: &str) {
        self.log(Level::Warn, message)
    }

    pub fn info(&self, message: &str) {
        self.log(Level::Info, message)
    }

    pub fn debug(&self, message: &str) {
        self.log(Level::Debug, message)
    }

    /// Sends `data` to every subscribed channel of this plugin owned by
    /// `user`, without blocking.
    pub fn push_user(&self, user: &str, stream: u8, data: &[u8]) -> Pushed {
        let mut full = 0u64;
        // SAFETY: all pointers are valid for the duration of the call.
        let n = unsafe {
            (self.raw.push_user)(
                self.raw,
                user.as_ptr(),
                user.len(),
                stream,
                data.as_ptr(),
                data.len(),
                &mut full,
            )
        };
        Pushed {
            delivered: n.max(0) as u64,
            full,
        }
    }

    /// True if `user` has at least one live session.
    pub fn user_online(&self, user: &str) -> bool {
        // SAFETY: the pointer is valid for the duration of the call.
        unsafe { (self.raw.user_online)(user.as_ptr(), user.len()) != 0 }
    }

    /// A handle for a channel id kept from an earlier call.
    pub fn channel(&self, id: u64) -> Channel {
        Channel { host: *self, id }
    }
}

/// What [`Channel::read`] returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Input {
    /// `len` bytes of `stream` were copied into the buffer.
    Data { stream: u8, len: usize },
    /// The client ended `stream`.
    Eof { stream: u8 },
}

/// One call's channel to its client. Copy it to other threads freely: once
/// the call has ended every operation returns [`ChannelError::Closed`].
#[derive(Clone, Copy)]
pub struct Channel {
    host: Host,
    id: u64,
}

impl Channel {
    pub fn id(&self) -> u64 {
        self.id
    }

    /// Waits for input; `None` waits without limit. On an inline call only
    /// `Some(Duration::ZERO)` (a poll) is allowed; anything else returns
    /// [`ChannelError::WouldBlock`].
    pub fn read(&self, buf: &mut [u8], timeout: Option<Duration>) -> Result<Input, ChannelError> {
        let timeout_ms = timeout.map_or(-1, |t| i64::try_from(t.as_millis()).unwrap_or(i64::MAX));
        let mut stream = 0u8;
        // SAFETY: buf is valid for writes of buf.len() bytes during the call.
        let n = unsafe {
            (self.host.raw.read)(
                self.id,
                &mut stream,
                buf.as_mut_ptr(),
                buf.len(),
                timeout_ms,
            )
        };
        match n {
            n if n > 0 => Ok(Input::Data {
                stream,
                len: n as usize,
            }),
            0 => Ok(Input::Eof { stream }),
            err => Err(ChannelError::from_code(err)),
        }
    }

    /// Writes all of `data`, waiting while the client's window is full. On
    /// an inline call it never waits: all of `data` now, or
    /// [`ChannelError::WouldBlock`] (as [`Channel::try_write`]).
    pub fn write(&self, stream: u8, data: &[u8]) -> Result<(), ChannelError> {
        // SAFETY: data is valid for reads during the call.
        let r = unsafe { (self.host.raw.write)(self.id, stream, data.as_ptr(), data.len()) };
        if r == 0 {
            Ok(())
        } else {
            Err(ChannelError::from_code(r.into()))
        }
    }

    /// Writes all of `data` now or nothing ([`ChannelError::WouldBlock`]).
    pub fn try_write(&self, stream: u8, data: &[u8]) -> Result<(), ChannelError> {
        // SAFETY: data is valid for reads during the call.
        let r = unsafe { (self.host.raw.try_write)(self.id, stream, data.as_ptr(), data.len()) };
        if r == 0 {
            Ok(())
        } else {
            Err(ChannelError::from_code(r.into()))
        }
    }

    /// Tells the client that `stream` has ended.
    pub fn write_eof(&self, stream: u8) -> Result<(), ChannelError> {
        // SAFETY: plain value arguments.
        let r = unsafe { (self.host.raw.write_eof)(self.id, stream) };
        if r == 0 {
            Ok(())
        } else {
            Err(ChannelError::from_code(r.into()))
        }
    }

    /// True once the client cancelled or disconnected.
    pub fn is_cancelled(&self) -> bool {
        // SAFETY: plain value argument.
        unsafe { (self.host.raw.is_cancelled)(self.id) != 0 }
    }

    /// Sets the value (e.g. an exit status) and message sent with CLOSE.
    pub fn set_result(&self, value: i64, message: &str) {
        // SAFETY: message is valid for reads during the call.
        unsafe { (self.host.raw.set_result)(self.id, value, message.as_ptr(), message.len()) };
    }

    /// Ends a pending call ([`Inline::Pending`]) from any thread, as if
    /// `on_input` had returned `result`. Exactly once: true if this ended
    /// the call; false if it had already ended (the client cancelled, or
    /// another end came first), if the call is not pending, or if the host
    /// is older than ABI 1.2.
    pub fn finish(&self, result: Result<(), Failure>) -> bool {
        if (self.host.raw.size as usize) < std::mem::size_of::<SockdHost>() {
            return false;
        }
        let status = match result {
            Ok(()) => sys::SOCKD_OK,
            Err(failure) => {
                self.set_result(0, &failure.message);
                failure.code as i32
            }
        };
        // SAFETY: the host's size covers `finish` (checked above).
        let ended = unsafe { (self.host.raw.finish)(self.id, status) } == sys::SOCKD_OK;
        if ended {
            glue::forget_pending(self.id);
        }
        ended
    }

    /// Runs a pending call's [`PendingCall::on_input`] now, on this thread,
    /// although nothing arrived (or once more after its current run, if it
    /// is running elsewhere): for a thread that made room for more input,
    /// say. Never call it holding a lock `on_input` takes. False if the
    /// call is not pending (or ended, or the host is older than ABI 1.2).
    pub fn wake(&self) -> bool {
        if (self.host.raw.size as usize) < std::mem::size_of::<SockdHost>() {
            return false;
        }
        // SAFETY: the host's size covers `wake` (checked above).
        unsafe { (self.host.raw.wake)(self.id) == sys::SOCKD_OK }
    }

    /// Makes this channel a target of [`Host::push_user`].
    pub fn subscribe(&self) -> Result<(), ChannelError> {
        // SAFETY: plain value argument.
        let r = unsafe { (self.host.raw.subscribe)(self.id) };
        if r == 0 {
            Ok(())
        } else {
            Err(ChannelError::from_code(r.into()))
        }
    }
}

/// One command invocation.
pub struct Call<'a> {
    raw: &'a SockdCall,
    host: Host,
}

fn utf8(s: SockdStr) -> &'static str {
    // SAFETY: the host passes strings valid for the call; the 'static here
    // never escapes Call's borrow because every accessor ties it to &self.
    std::str::from_utf8(unsafe { s.as_slice() }).unwrap_or("")
}

impl<'a> Call<'a> {
    pub fn host(&self) -> Host {
        self.host
    }

    pub fn channel(&self) -> Channel {
        Channel {
            host: self.host,
            id: self.raw.channel,
        }
    }

    pub fn session_id(&self) -> u64 {
        self.raw.session_id
    }

    /// The authenticated user.
    pub fn user(&self) -> &str {
        utf8(self.raw.user)
    }

    /// The user's home directory (may not exist yet).
    pub fn home(&self) -> &Path {
        Path::new(utf8(self.raw.home))
    }

    pub fn command(&self) -> &str {
        utf8(self.raw.command)
    }

    /// The client's address, `ip:port`.
    pub fn peer(&self) -> &str {
        utf8(self.raw.peer)
    }

    /// The arguments as the client sent them.
    pub fn args(&self) -> Vec<&[u8]> {
        if self.raw.argv.is_null() {
            return Vec::new();
        }
        // SAFETY: the host passes argc valid sockd_str values, each valid
        // until handle() returns, which outlives &self.
        let argv = unsafe { std::slice::from_raw_parts(self.raw.argv, self.raw.argc) };
        argv.iter().map(|a| unsafe { a.as_slice() }).collect()
    }

    /// Argument `index` as the client sent it, if there is one (without
    /// collecting them all, as [`Call::args`] does).
    pub fn arg(&self, index: usize) -> Option<&[u8]> {
        if self.raw.argv.is_null() || index >= self.raw.argc {
            return None;
        }
        // SAFETY: as in `args`: argv holds argc values, index < argc, each
        // valid until handle() returns, which outlives &self.
        Some(unsafe { (*self.raw.argv.add(index)).as_slice() })
    }

    /// The arguments as UTF-8, or a [`Code::BadRequest`] failure.
    pub fn str_args(&self) -> Result<Vec<&str>, Failure> {
        self.args()
            .into_iter()
            .map(|a| {
                std::str::from_utf8(a).map_err(|_| Failure::bad_request("arguments must be UTF-8"))
            })
            .collect()
    }

    /// Shorthand for `self.channel().set_result(..)`.
    pub fn set_result(&self, value: i64, message: &str) {
        self.channel().set_result(value, message)
    }
}

/// What an inline handler did with its call ([`Plugin::handle_inline`]).
pub enum Inline {
    /// The call is over, successfully.
    Done,
    /// Keep the call open (ABI 1.2): the value's [`PendingCall::on_input`]
    /// serves it on the connection's task whenever input, EOF, a cancel or
    /// credit arrives, and any thread may end it with [`Channel::finish`].
    Pending(Box<dyn PendingCall>),
    /// Run this call on a call thread after all: [`Plugin::handle`] is
    /// called there (for a subcommand that blocks, say).
    OnThread,
}

/// What [`PendingCall::on_input`] decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress {
    /// The call stays open.
    Pending,
    /// The call is over, successfully.
    Done,
}

/// The state of one pending call (see [`Inline::Pending`]).
pub trait PendingCall: Send + 'static {
    /// Something arrived for the call. Runs on the connection's task and
    /// must not block: read with `Some(Duration::ZERO)` until
    /// [`ChannelError::Timeout`] (no more input for now); writes never wait.
    /// A cancel shows as [`ChannelError::Cancelled`] from `read`. Return
    /// `Err` to end the call with that failure. Never runs concurrently
    /// with itself for one call; may run on different threads over time.
    fn on_input(&mut self, channel: Channel) -> Result<Progress, Failure>;
}

/// A plugin. One value per loaded build, shared by all calls (so `&self`).
pub trait Plugin: Send + Sync + Sized + 'static {
    /// Called once when this build is loaded, with the plugin's
    /// `[plugins.NAME]` table as TOML text.
    fn init(host: Host, config: &str) -> Result<Self, String>;

    /// Called on reload with the new config.
    fn configure(&self, _config: &str) -> Result<(), String> {
        Ok(())
    }

    /// Serves one call, on its own thread; may block. For a command listed
    /// under `inline` in [`export_plugin!`], runs on the connection's task
    /// instead and must return promptly without blocking.
    fn handle(&self, call: &Call<'_>) -> Result<(), Failure>;

    /// Serves a call of an `inline` command on the connection's task (ABI
    /// 1.2 hosts; older hosts call [`Plugin::handle`] there). Must return
    /// promptly without blocking, like `handle` for an inline command, but
    /// may leave the call open ([`Inline::Pending`]) or send it to a call
    /// thread ([`Inline::OnThread`]). By default: `handle`, then done.
    fn handle_inline(&self, call: &Call<'_>) -> Result<Inline, Failure> {
        self.handle(call).map(|()| Inline::Done)
    }

    /// A session ended: drop what you kept for it.
    fn session_closed(&self, _session_id: u64) {}

    /// The daemon no longer uses this build.
    fn shutdown(&self) {}
}

fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "unknown panic payload".to_string()
    }
}

/// The `extern "C"` glue instantiated by [`export_plugin!`].
#[doc(hidden)]
pub mod glue {
    use super::*;
    use std::collections::{HashMap, HashSet};
    use std::panic::{AssertUnwindSafe, catch_unwind};
    use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};

    /// What `*state` points to: the plugin and the host table it was given.
    struct Instance<P> {
        host: Host,
        plugin: P,
    }

    fn config_text(config: SockdStr) -> String {
        // SAFETY: the host passes config valid for the duration of the call.
        String::from_utf8_lossy(unsafe { config.as_slice() }).into_owned()
    }

    /// # Safety
    /// `state` must come from `init::<P>`; instances are never freed.
    unsafe fn instance<'a, P>(state: *mut c_void) -> &'a Instance<P> {
        // SAFETY: guaranteed by the caller.
        unsafe { &*(state as *const Instance<P>) }
    }

    /// # Safety
    /// Called by the daemon per the ABI: valid host and state pointers.
    pub unsafe extern "C" fn init<P: Plugin>(
        host: *const SockdHost,
        config: SockdStr,
        state: *mut *mut c_void,
    ) -> i32 {
        if host.is_null() || state.is_null() {
            return sys::SOCKD_E_BAD_REQUEST;
        }
        // SAFETY: the daemon keeps the host table alive for the process's life.
        let host = unsafe { Host::from_raw(host) };
        let text = config_text(config);
        match catch_unwind(AssertUnwindSafe(|| P::init(host, &text))) {
            Ok(Ok(plugin)) => {
                // Leaked on purpose: a loaded build is never unloaded.
                let instance = Box::new(Instance { host, plugin });
                // SAFETY: state is a valid out-pointer per the ABI.
                unsafe { *state = Box::into_raw(instance).cast() };
                sys::SOCKD_OK
            }
            Ok(Err(message)) => {
                host.error(&format!("init failed: {message}"));
                sys::SOCKD_E_BAD_REQUEST
            }
            Err(panic) => {
                host.error(&format!("init panicked: {}", panic_message(&*panic)));
                sys::SOCKD_E_PANICKED
            }
        }
    }

    /// # Safety
    /// `state` must come from `init::<P>`.
    pub unsafe extern "C" fn configure<P: Plugin>(state: *mut c_void, config: SockdStr) -> i32 {
        // SAFETY: per this function's contract.
        let instance = unsafe { instance::<P>(state) };
        let text = config_text(config);
        match catch_unwind(AssertUnwindSafe(|| instance.plugin.configure(&text))) {
            Ok(Ok(())) => sys::SOCKD_OK,
            Ok(Err(message)) => {
                instance.host.error(&format!("configure failed: {message}"));
                sys::SOCKD_E_BAD_REQUEST
            }
            Err(panic) => {
                instance
                    .host
                    .error(&format!("configure panicked: {}", panic_message(&*panic)));
                sys::SOCKD_E_PANICKED
            }
        }
    }

    /// Pending calls of this build by channel id, sharded: one lock for
    /// every connection's input would be a point of contention.
    struct PendingTable {
        shards: [Mutex<PendingShard>; PENDING_SHARDS],
    }

    #[derive(Default)]
    struct PendingShard {
        calls: HashMap<u64, Arc<Mutex<Box<dyn PendingCall>>>>,
        /// Calls ended by `finish` while their inline handler still ran.
        ended_early: HashSet<u64>,
    }

    const PENDING_SHARDS: usize = 16;

    fn pending_shard(id: u64) -> MutexGuard<'static, PendingShard> {
        static TABLE: OnceLock<PendingTable> = OnceLock::new();
        let table = TABLE.get_or_init(|| PendingTable {
            shards: std::array::from_fn(|_| Mutex::default()),
        });
        table.shards[(id % PENDING_SHARDS as u64) as usize]
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// A pending call was ended by [`Channel::finish`]: drop its state (or,
    /// if its handler has not returned yet, drop it then).
    pub(crate) fn forget_pending(id: u64) {
        let mut shard = pending_shard(id);
        if shard.calls.remove(&id).is_none() {
            shard.ended_early.insert(id);
        }
    }

    /// Turns a handler's outcome into its status, with the message set.
    fn status(channel: Channel, outcome: std::thread::Result<Result<i32, Failure>>) -> i32 {
        match outcome {
            Ok(Ok(status)) => status,
            Ok(Err(failure)) => {
                channel.set_result(0, &failure.message);
                failure.code as i32
            }
            Err(panic) => {
                channel.set_result(0, &format!("plugin panicked: {}", panic_message(&*panic)));
                sys::SOCKD_E_PANICKED
            }
        }
    }

    /// # Safety
    /// `state` must come from `init::<P>`; `call` valid until return.
    pub unsafe extern "C" fn handle<P: Plugin>(state: *mut c_void, call: *const SockdCall) -> i32 {
        if call.is_null() {
            return sys::SOCKD_E_BAD_REQUEST;
        }
        // SAFETY: per this function's contract; call is valid until we return.
        let (instance, raw) = unsafe { (instance::<P>(state), &*call) };
        let call = Call {
            raw,
            host: instance.host,
        };
        let channel = call.channel();
        // `flags` exists only in calls from an ABI 1.2 host.
        let inline = raw.size as usize >= std::mem::size_of::<SockdCall>()
            && raw.flags & sys::SOCKD_CALL_INLINE != 0;
        if !inline {
            let outcome = catch_unwind(AssertUnwindSafe(|| {
                instance.plugin.handle(&call).map(|()| sys::SOCKD_OK)
            }));
            return status(channel, outcome);
        }
        let outcome = catch_unwind(AssertUnwindSafe(|| {
            instance
                .plugin
                .handle_inline(&call)
                .map(|inline| match inline {
                    Inline::Done => sys::SOCKD_OK,
                    Inline::OnThread => sys::SOCKD_RUN_ON_THREAD,
                    Inline::Pending(state) => {
                        let mut shard = pending_shard(channel.id);
                        // Unless another thread has already finished it.
                        if !shard.ended_early.contains(&channel.id) {
                            shard.calls.insert(channel.id, Arc::new(Mutex::new(state)));
                        }
                        sys::SOCKD_PENDING
                    }
                })
        }));
        pending_shard(channel.id).ended_early.remove(&channel.id);
        status(channel, outcome)
    }

    /// # Safety
    /// `state` must come from `init::<P>`.
    pub unsafe extern "C" fn on_input<P: Plugin>(state: *mut c_void, channel: u64) -> i32 {
        // SAFETY: per this function's contract.
        let instance = unsafe { instance::<P>(state) };
        let channel = Channel {
            host: instance.host,
            id: channel,
        };
        let Some(call) = pending_shard(channel.id).calls.get(&channel.id).cloned() else {
            // Ended meanwhile by another thread.
            return sys::SOCKD_E_CANCELLED;
        };
        let outcome = catch_unwind(AssertUnwindSafe(|| {
            let mut call = call.lock().unwrap_or_else(PoisonError::into_inner);
            call.on_input(channel)
        }));
        let keep = matches!(outcome, Ok(Ok(Progress::Pending))) && !channel.is_cancelled();
        if !keep {
            pending_shard(channel.id).calls.remove(&channel.id);
        }
        status(
            channel,
            outcome.map(|r| {
                r.map(|p| match p {
                    Progress::Pending => sys::SOCKD_PENDING,
                    Progress::Done => sys::SOCKD_OK,
                })
            }),
        )
    }

    /// # Safety
    /// `state` must come from `init::<P>`.
    pub unsafe extern "C" fn session_closed<P: Plugin>(state: *mut c_void, session_id: u64) {
        // SAFETY: per this function's contract.
        let instance = unsafe { instance::<P>(state) };
        let _ = catch_unwind(AssertUnwindSafe(|| {
            instance.plugin.session_closed(session_id)
        }));
    }

    /// True if every name in `listed` is in `all` (the compile-time check
    /// that `inline` commands are among `commands`).
    pub const fn all_listed(listed: &[&str], all: &[&str]) -> bool {
        let mut i = 0;
        while i < listed.len() {
            let mut found = false;
            let mut j = 0;
            while j < all.len() {
                if same(listed[i].as_bytes(), all[j].as_bytes()) {
                    found = true;
                }
                j += 1;
            }
            if !found {
                return false;
            }
            i += 1;
        }
        true
    }

    const fn same(a: &[u8], b: &[u8]) -> bool {
        if a.len() != b.len() {
            return false;
        }
        let mut i = 0;
        while i < a.len() {
            if a[i] != b[i] {
                return false;
            }
            i += 1;
        }
        true
    }

    /// # Safety
    /// `state` must come from `init::<P>`.
    pub unsafe extern "C" fn shutdown<P: Plugin>(state: *mut c_void) {
        // SAFETY: per this function's contract.
        let instance = unsafe { instance::<P>(state) };
        let _ = catch_unwind(AssertUnwindSafe(|| instance.plugin.shutdown()));
    }
}

/// Exports a [`Plugin`] type as a sockd plugin: builds the static
/// descriptor and the `sockd_plugin_entry` symbol.
///
/// ```ignore
/// sockd_plugin::export_plugin!(
///     name: "echo",
///     version: env!("CARGO_PKG_VERSION"),
///     commands: ["echo", "status"],
///     inline: ["status"],   // optional (ABI 1.1): run on the connection's task
///     plugin: Echo,
/// );
/// ```
///
/// Commands listed under `inline` must also be in `commands` (checked at
/// compile time); their `handle` must return promptly and never block (see
/// docs/PLUGINS.md, "Inline commands"): on such a call [`Channel::read`]
/// only polls and [`Channel::write`] never waits.
#[macro_export]
macro_rules! export_plugin {
    (name: $name:literal, version: $version:expr, commands: [$($cmd:literal),+ $(,)?], plugin: $ty:ty $(,)?) => {
        $crate::export_plugin!(name: $name, version: $version, commands: [$($cmd),+], inline: [], plugin: $ty);
    };
    (name: $name:literal, version: $version:expr, commands: [$($cmd:literal),+ $(,)?], inline: [$($inline:literal),* $(,)?], plugin: $ty:ty $(,)?) => {
        const _: () = {
            static COMMANDS: $crate::sys::CommandList<{ [$($cmd),+].len() + 1 }> = $crate::sys::CommandList([
                $(concat!($cmd, "\0").as_ptr().cast(),)+
                ::std::ptr::null(),
            ]);

            const INLINE: &[&str] = &[$($inline),*];
            const _: () = assert!(
                $crate::glue::all_listed(INLINE, &[$($cmd),+]),
                "every `inline` command must also be listed in `commands`"
            );
            static INLINE_COMMANDS: $crate::sys::CommandList<{ INLINE.len() + 1 }> = $crate::sys::CommandList([
                $(concat!($inline, "\0").as_ptr().cast(),)*
                ::std::ptr::null(),
            ]);

            static DESCRIPTOR: $crate::sys::SockdPlugin = $crate::sys::SockdPlugin {
                magic: $crate::sys::SOCKD_PLUGIN_MAGIC,
                size: ::std::mem::size_of::<$crate::sys::SockdPlugin>() as u32,
                abi_major: $crate::sys::SOCKD_ABI_MAJOR,
                abi_minor: $crate::sys::SOCKD_ABI_MINOR,
                name: concat!($name, "\0").as_ptr().cast(),
                version: concat!($version, "\0").as_ptr().cast(),
                commands: &COMMANDS as *const _ as *const *const ::std::ffi::c_char,
                init: Some($crate::glue::init::<$ty>),
                configure: Some($crate::glue::configure::<$ty>),
                handle: Some($crate::glue::handle::<$ty>),
                session_closed: Some($crate::glue::session_closed::<$ty>),
                shutdown: Some($crate::glue::shutdown::<$ty>),
                inline_commands: if INLINE.is_empty() {
                    ::std::ptr::null()
                } else {
                    &INLINE_COMMANDS as *const _ as *const *const ::std::ffi::c_char
                },
                on_input: Some($crate::glue::on_input::<$ty>),
            };

            #[unsafe(no_mangle)]
            pub extern "C" fn sockd_plugin_entry() -> *const $crate::sys::SockdPlugin {
                &DESCRIPTOR
            }
        };
    };
}
