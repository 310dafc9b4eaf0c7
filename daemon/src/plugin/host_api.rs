//! The host side of the handler ABI: the `extern "C"` functions behind each
//! `sockd_host` table entry.
//!
//! Channel functions name a channel by its process-wide handle and look it
//! up in [`ChannelTable::global`], so a stale or forged handle finds nothing
//! (`-SOCKD_E_CLOSED`) instead of freed memory. Functions that need to know
//! which plugin is calling (`log`, `push_user`) take the host pointer: every
//! loaded build gets its own [`HostTable`], whose first field is the C
//! table, so the pointer the plugin hands back can be cast to the wrapper.
//!
//! Nothing here may unwind into plugin code: every body runs inside
//! [`guard`], which turns a panic into an error result. Pointers from the
//! plugin are checked for null and borrowed for the duration of the call.

use crate::channel::{Channel, ChannelError, ChannelTable, EndRequest, ReadOutcome};
use crate::session::Sessions;
use sockd_plugin::sys::{self, SockdHost};
use std::cell::RefCell;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::time::Duration;

/// One host table per loaded build: the C table the plugin sees, followed
/// by what the host needs to know about the caller.
///
/// `#[repr(C)]` with `raw` first, so a `*const SockdHost` handed out from a
/// `HostTable` is also a valid `*const HostTable`.
#[repr(C)]
pub struct HostTable {
    raw: SockdHost,
    plugin: String,
}

impl HostTable {
    /// Allocates the table for one build of `plugin`. The table is leaked:
    /// the ABI promises it stays valid for the life of the process, and the
    /// plugin may keep the pointer in its own statics.
    pub fn leak(plugin: &str) -> &'static HostTable {
        Box::leak(Box::new(HostTable {
            raw: SockdHost {
                size: size_of::<SockdHost>() as u32,
                abi_major: sys::SOCKD_ABI_MAJOR,
                abi_minor: sys::SOCKD_ABI_MINOR,
                log: host_log,
                read: host_read,
                write: host_write,
                try_write: host_try_write,
                write_eof: host_write_eof,
                is_cancelled: host_is_cancelled,
                set_result: host_set_result,
                subscribe: host_subscribe,
                push_user: host_push_user,
                user_online: host_user_online,
                finish: host_finish,
                wake: host_wake,
            },
            plugin: plugin.to_string(),
        }))
    }

    /// The pointer handed to the plugin's `init`.
    pub fn as_raw(&'static self) -> *const SockdHost {
        &self.raw
    }

    /// The plugin this table was made for.
    pub fn plugin(&self) -> &str {
        &self.plugin
    }

    /// Recovers the wrapper from the pointer a plugin passed back.
    ///
    /// # Safety
    /// `host` must be null or a pointer obtained from [`HostTable::as_raw`].
    unsafe fn from_raw<'a>(host: *const SockdHost) -> Option<&'a HostTable> {
        // SAFETY: per this function's contract the pointer is null or points
        // to the first field of a leaked, never-freed `#[repr(C)]` HostTable,
        // which therefore has the same address as the HostTable itself.
        unsafe { host.cast::<HostTable>().as_ref() }
    }
}

thread_local! {
    /// The last error a plugin logged on this thread. `init` and
    /// `configure` run on the caller's thread, so this is the reason a
    /// refusal gives (a plugin can only return a code).
    static LAST_ERROR: RefCell<Option<String>> = const { RefCell::new(None) };
}

/// Runs `f` (a call into `init` or `configure`) and returns its result with
/// the last error the plugin logged on this thread meanwhile.
pub fn with_logged_error<T>(f: impl FnOnce() -> T) -> (T, Option<String>) {
    LAST_ERROR.with(|e| e.borrow_mut().take());
    let result = f();
    (result, LAST_ERROR.with(|e| e.borrow_mut().take()))
}

/// Runs `f`, turning a panic into `on_panic` so it never crosses into C.
fn guard<T>(on_panic: T, f: impl FnOnce() -> T) -> T {
    catch_unwind(AssertUnwindSafe(f)).unwrap_or(on_panic)
}

/// Negated ABI code for a channel error.
fn err_code(e: ChannelError) -> i32 {
    -match e {
        ChannelError::Cancelled => sys::SOCKD_E_CANCELLED,
        ChannelError::Closed => sys::SOCKD_E_CLOSED,
        ChannelError::Timeout => sys::SOCKD_E_TIMEOUT,
        ChannelError::WouldBlock => sys::SOCKD_E_WOULD_BLOCK,
    }
}

fn status(r: Result<(), ChannelError>) -> i32 {
    match r {
        Ok(()) => sys::SOCKD_OK,
        Err(e) => err_code(e),
    }
}

fn channel(handle: u64) -> Result<Arc<Channel>, i32> {
    ChannelTable::global()
        .get(handle)
        .ok_or(-sys::SOCKD_E_CLOSED)
}

/// Borrows `len` bytes at `ptr` for the duration of a host call; `None` if
/// the pair cannot describe a valid slice.
///
/// # Safety
/// If `ptr` is non-null it must point to `len` readable bytes that stay
/// valid and unmodified until the host function returns.
unsafe fn bytes<'a>(ptr: *const u8, len: usize) -> Option<&'a [u8]> {
    if len == 0 {
        return Some(&[]);
    }
    if ptr.is_null() || len > isize::MAX as usize {
        return None;
    }
    // SAFETY: non-null, length within isize::MAX, and readable for the
    // duration of the call per this function's contract.
    Some(unsafe { std::slice::from_raw_parts(ptr, len) })
}

unsafe extern "C" fn host_log(host: *const SockdHost, level: u32, msg: *const u8, len: usize) {
    guard((), || {
        // SAFETY: the ABI says `host` is the table given to init (or null,
        // which from_raw maps to None).
        let plugin = unsafe { HostTable::from_raw(host) }.map_or("?", HostTable::plugin);
        // SAFETY: the ABI lends msg/len for the duration of this call.
        let Some(msg) = (unsafe { bytes(msg, len) }) else {
            return;
        };
        let msg = String::from_utf8_lossy(msg);
        let msg = msg.trim_end();
        match level {
            sys::SOCKD_LOG_ERROR => {
                tracing::error!(plugin, "{msg}");
                LAST_ERROR.with(|e| *e.borrow_mut() = Some(msg.to_string()));
            }
            sys::SOCKD_LOG_WARN => tracing::warn!(plugin, "{msg}"),
            sys::SOCKD_LOG_INFO => tracing::info!(plugin, "{msg}"),
            _ => tracing::debug!(plugin, "{msg}"),
        }
    })
}

unsafe extern "C" fn host_read(
    handle: u64,
    stream: *mut u8,
    buf: *mut u8,
    cap: usize,
    timeout_ms: i64,
) -> i64 {
    guard(-i64::from(sys::SOCKD_E_INTERNAL), || {
        if buf.is_null() || cap == 0 || cap > isize::MAX as usize {
            return -i64::from(sys::SOCKD_E_BAD_REQUEST);
        }
        let ch = match channel(handle) {
            Ok(ch) => ch,
            Err(code) => return code.into(),
        };
        // SAFETY: the ABI lends `buf` as `cap` writable bytes for the
        // duration of this call; it is non-null and cap fits in isize.
        let buf = unsafe { std::slice::from_raw_parts_mut(buf, cap) };
        let timeout = u64::try_from(timeout_ms).ok().map(Duration::from_millis);
        let mut got = 0u8;
        let result = match ch.read(&mut got, buf, timeout) {
            Ok(ReadOutcome::Data { len, .. }) => i64::try_from(len).unwrap_or(i64::MAX),
            Ok(ReadOutcome::Eof { .. }) => 0,
            Err(e) => return err_code(e).into(),
        };
        // SAFETY: `stream` is either null (the plugin does not care) or a
        // valid out-pointer lent for this call.
        if let Some(out) = unsafe { stream.as_mut() } {
            *out = got;
        }
        result
    })
}

unsafe extern "C" fn host_write(handle: u64, stream: u8, data: *const u8, len: usize) -> i32 {
    guard(-sys::SOCKD_E_INTERNAL, || {
        // SAFETY: the ABI lends data/len for the duration of this call.
        let Some(data) = (unsafe { bytes(data, len) }) else {
            return -sys::SOCKD_E_BAD_REQUEST;
        };
        channel(handle).map_or_else(|c| c, |ch| status(ch.write(stream, data)))
    })
}

unsafe extern "C" fn host_try_write(handle: u64, stream: u8, data: *const u8, len: usize) -> i32 {
    guard(-sys::SOCKD_E_INTERNAL, || {
        // SAFETY: the ABI lends data/len for the duration of this call.
        let Some(data) = (unsafe { bytes(data, len) }) else {
            return -sys::SOCKD_E_BAD_REQUEST;
        };
        channel(handle).map_or_else(|c| c, |ch| status(ch.try_write(stream, data)))
    })
}

unsafe extern "C" fn host_write_eof(handle: u64, stream: u8) -> i32 {
    guard(-sys::SOCKD_E_INTERNAL, || {
        channel(handle).map_or_else(|c| c, |ch| status(ch.write_eof(stream)))
    })
}

unsafe extern "C" fn host_is_cancelled(handle: u64) -> i32 {
    // An unknown channel answers nonzero too, so a polling loop ends.
    guard(-sys::SOCKD_E_INTERNAL, || {
        channel(handle).map_or_else(|c| c, |ch| i32::from(ch.is_cancelled()))
    })
}

unsafe extern "C" fn host_set_result(handle: u64, value: i64, msg: *const u8, len: usize) -> i32 {
    guard(-sys::SOCKD_E_INTERNAL, || {
        // SAFETY: the ABI lends msg/len for the duration of this call.
        let Some(msg) = (unsafe { bytes(msg, len) }) else {
            return -sys::SOCKD_E_BAD_REQUEST;
        };
        let msg = String::from_utf8_lossy(msg);
        channel(handle).map_or_else(|c| c, |ch| status(ch.set_result(value, &msg)))
    })
}

unsafe extern "C" fn host_subscribe(handle: u64) -> i32 {
    guard(-sys::SOCKD_E_INTERNAL, || {
        channel(handle).map_or_else(|c| c, |ch| status(ChannelTable::global().subscribe(&ch)))
    })
}

unsafe extern "C" fn host_push_user(
    host: *const SockdHost,
    user: *const u8,
    user_len: usize,
    stream: u8,
    data: *const u8,
    len: usize,
    full: *mut u64,
) -> i64 {
    guard(-i64::from(sys::SOCKD_E_INTERNAL), || {
        // SAFETY: the ABI says `host` is the table given to init.
        let Some(table) = (unsafe { HostTable::from_raw(host) }) else {
            return -i64::from(sys::SOCKD_E_BAD_REQUEST);
        };
        // SAFETY: the ABI lends both byte ranges for the duration of this call.
        let (Some(user), Some(data)) = (unsafe { bytes(user, user_len) }, unsafe {
            bytes(data, len)
        }) else {
            return -i64::from(sys::SOCKD_E_BAD_REQUEST);
        };
        let (delivered, skipped) = push(table.plugin(), user, stream, data);
        // SAFETY: `full` is null or a valid out-pointer lent for this call.
        if let Some(out) = unsafe { full.as_mut() } {
            *out = skipped;
        }
        i64::try_from(delivered).unwrap_or(i64::MAX)
    })
}

/// Offers `data` to every subscribed channel of `plugin` owned by `user`
/// (whatever build opened it). Returns (delivered, skipped because full).
pub(crate) fn push(plugin: &str, user: &[u8], stream: u8, data: &[u8]) -> (u64, u64) {
    // User names are UTF-8; no channel belongs to anything else.
    let targets = std::str::from_utf8(user)
        .map(|user| ChannelTable::global().subscribers(plugin, user))
        .unwrap_or_default();
    let (mut delivered, mut full) = (0, 0);
    for ch in targets.iter().filter(|c| c.is_subscribed()) {
        match ch.try_write(stream, data) {
            Ok(()) => delivered += 1,
            Err(ChannelError::WouldBlock) => full += 1,
            // It ended between the lookup and the write: not a target.
            Err(_) => {}
        }
    }
    (delivered, full)
}

/// Ends a pending call (ABI 1.2) exactly once, from any thread.
unsafe extern "C" fn host_finish(handle: u64, status: i32) -> i32 {
    guard(-sys::SOCKD_E_INTERNAL, || {
        if matches!(status, sys::SOCKD_PENDING | sys::SOCKD_RUN_ON_THREAD) {
            return -sys::SOCKD_E_BAD_REQUEST;
        }
        let ch = match channel(handle) {
            Ok(ch) => ch,
            Err(code) => return code,
        };
        match ch.request_end(status) {
            EndRequest::Hook(hook) if hook.end(&ch, status) => sys::SOCKD_OK,
            EndRequest::Deferred => sys::SOCKD_OK,
            EndRequest::Hook(_) | EndRequest::Closed => -sys::SOCKD_E_CLOSED,
            EndRequest::NotPending => -sys::SOCKD_E_BAD_REQUEST,
        }
    })
}

/// Runs a pending call's `on_input` on the calling thread (ABI 1.2).
unsafe extern "C" fn host_wake(handle: u64) -> i32 {
    guard(-sys::SOCKD_E_INTERNAL, || match channel(handle) {
        Ok(ch) if ch.wake() => sys::SOCKD_OK,
        Ok(ch) if ch.is_finished() => -sys::SOCKD_E_CLOSED,
        Ok(_) => -sys::SOCKD_E_BAD_REQUEST,
        Err(code) => code,
    })
}

unsafe extern "C" fn host_user_online(user: *const u8, user_len: usize) -> i32 {
    guard(0, || {
        // SAFETY: the ABI lends user/user_len for the duration of this call.
        let user = unsafe { bytes(user, user_len) }.and_then(|u| std::str::from_utf8(u).ok());
        user.is_some_and(|u| !u.is_empty() && Sessions::global().user_online(u))
            .into()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::channel::Owner;
    use bytes::Bytes;
    use sockd_proto::Message;
    use tokio::sync::mpsc;

    fn open(
        plugin: &str,
        user: &str,
        credit: u32,
    ) -> (Arc<Channel>, mpsc::UnboundedReceiver<Message>) {
        let (tx, rx) = crate::outbound::channel();
        let owner = Owner {
            session_id: 7,
            user: user.into(),
            plugin: plugin.into(),
        };
        let ch = Channel::new(
            1,
            owner,
            "test".into(),
            tx,
            1024,
            credit,
            512,
            Default::default(),
        );
        ChannelTable::global().insert(ch.clone());
        (ch, rx)
    }

    #[test]
    fn channel_functions_map_results_and_unknown_handles() {
        let host = HostTable::leak("t-chan");
        // SAFETY: host comes from HostTable::leak.
        let raw = unsafe { &*host.as_raw() };
        let (ch, mut rx) = open("t-chan", "alice", 4);
        let mut stream = 9u8;
        let mut buf = [0u8; 8];
        // SAFETY (test): all pointers are valid locals.
        unsafe {
            assert_eq!(
                (raw.read)(ch.handle, &mut stream, buf.as_mut_ptr(), buf.len(), 0),
                -20
            );
            ch.on_data(2, Bytes::from_static(b"hi")).unwrap();
            assert_eq!(
                (raw.read)(ch.handle, &mut stream, buf.as_mut_ptr(), buf.len(), -1),
                2
            );
            assert_eq!((stream, &buf[..2]), (2, &b"hi"[..]));
            assert_eq!(
                (raw.read)(ch.handle, &mut stream, std::ptr::null_mut(), 4, 0),
                -10
            );
            assert_eq!((raw.try_write)(ch.handle, 0, b"hello".as_ptr(), 5), -100);
            assert_eq!((raw.write)(ch.handle, 0, b"hey".as_ptr(), 3), 0);
            assert_eq!((raw.write)(ch.handle, 0, std::ptr::null(), 3), -10);
            assert_eq!((raw.is_cancelled)(ch.handle), 0);
            assert_eq!((raw.set_result)(ch.handle, 3, b"done".as_ptr(), 4), 0);
            ch.finish(sockd_proto::ErrorCode::Ok, "");
            assert_eq!((raw.write)(ch.handle, 0, b"x".as_ptr(), 1), -101);
            assert_eq!((raw.write_eof)(ch.handle, 0), -101);
            assert_ne!((raw.is_cancelled)(ch.handle), 0);
            assert_eq!((raw.subscribe)(u64::MAX), -101);
            (raw.log)(raw, sys::SOCKD_LOG_INFO, b"hello".as_ptr(), 5);
            (raw.log)(std::ptr::null(), 99, std::ptr::null(), 3);
        }
        assert!(matches!(rx.try_recv(), Ok(Message::Data { .. })));
        assert!(
            matches!(rx.try_recv(), Ok(Message::Close { value: 3, ref message, .. }) if message == "done")
        );
    }

    #[test]
    fn push_reaches_subscribed_channels_of_this_plugin_and_user() {
        let host = HostTable::leak("t-push");
        // SAFETY: host comes from HostTable::leak.
        let raw = unsafe { &*host.as_raw() };
        let (a, mut rx_a) = open("t-push", "bob", 100);
        let (b, _rx_b) = open("t-push", "bob", 1);
        let (other_user, _r1) = open("t-push", "carol", 100);
        let (other_plugin, _r2) = open("t-other", "bob", 100);
        let (unsubscribed, _r3) = open("t-push", "bob", 100);
        for ch in [&a, &b, &other_user, &other_plugin] {
            ChannelTable::global().subscribe(ch).unwrap();
        }
        let mut full = 99u64;
        // SAFETY (test): all pointers are valid locals.
        let n =
            unsafe { (raw.push_user)(raw, b"bob".as_ptr(), 3, 0, b"ping".as_ptr(), 4, &mut full) };
        assert_eq!((n, full), (1, 1));
        assert!(
            matches!(rx_a.try_recv(), Ok(Message::Data { ref data, .. }) if &data[..] == b"ping")
        );
        // SAFETY (test): a null host is refused, not dereferenced.
        let n = unsafe {
            (raw.push_user)(
                std::ptr::null(),
                b"bob".as_ptr(),
                3,
                0,
                b"x".as_ptr(),
                1,
                &mut full,
            )
        };
        assert_eq!(n, -10);
        for ch in [a, b, other_user, other_plugin, unsubscribed] {
            ch.finish(sockd_proto::ErrorCode::Ok, "");
        }
        // Finished channels leave the index; a finished one cannot join it.
        assert!(
            ChannelTable::global()
                .subscribers("t-push", "bob")
                .is_empty()
        );
        let (late, _r4) = open("t-push", "bob", 100);
        late.finish(sockd_proto::ErrorCode::Ok, "");
        assert!(ChannelTable::global().subscribe(&late).is_err());
        assert!(
            ChannelTable::global()
                .subscribers("t-push", "bob")
                .is_empty()
        );
    }

    #[test]
    fn user_online_asks_the_session_registry() {
        let host = HostTable::leak("t-online");
        // SAFETY: host comes from HostTable::leak.
        let raw = unsafe { &*host.as_raw() };
        let session = Sessions::global().register(
            "dora-online",
            "127.0.0.1:9".parse().unwrap(),
            "/nonexistent".into(),
        );
        // SAFETY (test): all pointers are valid locals.
        unsafe {
            assert_eq!((raw.user_online)(b"dora-online".as_ptr(), 11), 1);
            assert_eq!((raw.user_online)(b"nobody-here".as_ptr(), 11), 0);
            assert_eq!((raw.user_online)(std::ptr::null(), 4), 0);
        }
        Sessions::global().remove(session.id);
    }
}
