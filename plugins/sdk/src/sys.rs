//! The raw handler ABI: `#[repr(C)]` mirrors of `include/sockd_plugin.h`.
//!
//! The daemon uses these types directly; plugin authors use the safe
//! wrappers in the crate root instead. A test in the daemon compiles the C
//! header and checks that sizes and offsets agree with these definitions.

use std::ffi::{c_char, c_void};

pub const SOCKD_PLUGIN_MAGIC: u64 = u64::from_le_bytes(*b"SOCKDPL1");
pub const SOCKD_ABI_MAJOR: u16 = 1;
pub const SOCKD_ABI_MINOR: u16 = 2;
pub const SOCKD_PLUGIN_ENTRY_SYMBOL: &[u8] = b"sockd_plugin_entry";

pub const SOCKD_OK: i32 = 0;
pub const SOCKD_E_RATE_LIMITED: i32 = 6;
pub const SOCKD_E_UNAVAILABLE: i32 = 8;
pub const SOCKD_E_BAD_REQUEST: i32 = 10;
pub const SOCKD_E_PERMISSION_DENIED: i32 = 11;
pub const SOCKD_E_NOT_FOUND: i32 = 12;
pub const SOCKD_E_ALREADY_EXISTS: i32 = 13;
pub const SOCKD_E_NOT_A_DIRECTORY: i32 = 14;
pub const SOCKD_E_IS_A_DIRECTORY: i32 = 15;
pub const SOCKD_E_QUOTA_EXCEEDED: i32 = 16;
pub const SOCKD_E_NO_SPACE: i32 = 17;
pub const SOCKD_E_NAME_TOO_LONG: i32 = 18;
pub const SOCKD_E_TOO_LARGE: i32 = 19;
pub const SOCKD_E_TIMEOUT: i32 = 20;
pub const SOCKD_E_CANCELLED: i32 = 21;
pub const SOCKD_E_BUSY: i32 = 22;
pub const SOCKD_E_INTERNAL: i32 = 23;
pub const SOCKD_E_CONFLICT: i32 = 24;
pub const SOCKD_E_DIRECTORY_NOT_EMPTY: i32 = 27;
pub const SOCKD_E_WOULD_BLOCK: i32 = 100;
pub const SOCKD_E_CLOSED: i32 = 101;
pub const SOCKD_E_PANICKED: i32 = 102;
/// ABI 1.2: returned by an inline `handle` (or `on_input`) to keep the call
/// open after it returns; `on_input` then serves it.
pub const SOCKD_PENDING: i32 = 103;
/// ABI 1.2: returned by an inline `handle` to have the call run on a call
/// thread instead (`handle` is called again there, without
/// [`SOCKD_CALL_INLINE`]).
pub const SOCKD_RUN_ON_THREAD: i32 = 104;

/// ABI 1.2, `sockd_call.flags`: `handle` runs on the connection's task.
pub const SOCKD_CALL_INLINE: u32 = 1;

pub const SOCKD_STREAM_MAIN: u8 = 0;
pub const SOCKD_STREAM_DIAG: u8 = 1;
pub const SOCKD_STREAM_CONTROL: u8 = 2;

pub const SOCKD_LOG_ERROR: u32 = 1;
pub const SOCKD_LOG_WARN: u32 = 2;
pub const SOCKD_LOG_INFO: u32 = 3;
pub const SOCKD_LOG_DEBUG: u32 = 4;

#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct SockdStr {
    pub ptr: *const u8,
    pub len: usize,
}

impl SockdStr {
    pub const EMPTY: SockdStr = SockdStr {
        ptr: std::ptr::null(),
        len: 0,
    };

    pub fn from_slice(s: &[u8]) -> Self {
        SockdStr {
            ptr: s.as_ptr(),
            len: s.len(),
        }
    }

    /// # Safety
    /// `ptr` must point to `len` readable bytes that outlive `'a` (or be
    /// null with `len == 0`).
    pub unsafe fn as_slice<'a>(self) -> &'a [u8] {
        if self.ptr.is_null() || self.len == 0 {
            &[]
        } else {
            // SAFETY: guaranteed by the caller.
            unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
        }
    }
}

#[repr(C)]
#[derive(Debug)]
pub struct SockdCall {
    pub size: u32,
    pub channel: u64,
    pub session_id: u64,
    pub user: SockdStr,
    pub home: SockdStr,
    pub command: SockdStr,
    pub argc: usize,
    pub argv: *const SockdStr,
    pub peer: SockdStr,
    // ---- ABI 1.2 ----
    /// [`SOCKD_CALL_INLINE`] when `handle` runs on the connection's task.
    pub flags: u32,
}

pub type LogFn =
    unsafe extern "C" fn(host: *const SockdHost, level: u32, msg: *const u8, len: usize);
pub type ReadFn = unsafe extern "C" fn(
    channel: u64,
    stream: *mut u8,
    buf: *mut u8,
    cap: usize,
    timeout_ms: i64,
) -> i64;
pub type WriteFn =
    unsafe extern "C" fn(channel: u64, stream: u8, data: *const u8, len: usize) -> i32;
pub type WriteEofFn = unsafe extern "C" fn(channel: u64, stream: u8) -> i32;
pub type IsCancelledFn = unsafe extern "C" fn(channel: u64) -> i32;
pub type SetResultFn =
    unsafe extern "C" fn(channel: u64, value: i64, msg: *const u8, len: usize) -> i32;
pub type SubscribeFn = unsafe extern "C" fn(channel: u64) -> i32;
pub type PushUserFn = unsafe extern "C" fn(
    host: *const SockdHost,
    user: *const u8,
    user_len: usize,
    stream: u8,
    data: *const u8,
    len: usize,
    full: *mut u64,
) -> i64;
pub type UserOnlineFn = unsafe extern "C" fn(user: *const u8, user_len: usize) -> i32;
pub type FinishFn = unsafe extern "C" fn(channel: u64, status: i32) -> i32;
pub type WakeFn = unsafe extern "C" fn(channel: u64) -> i32;

#[repr(C)]
pub struct SockdHost {
    pub size: u32,
    pub abi_major: u16,
    pub abi_minor: u16,
    pub log: LogFn,
    pub read: ReadFn,
    pub write: WriteFn,
    pub try_write: WriteFn,
    pub write_eof: WriteEofFn,
    pub is_cancelled: IsCancelledFn,
    pub set_result: SetResultFn,
    pub subscribe: SubscribeFn,
    pub push_user: PushUserFn,
    pub user_online: UserOnlineFn,
    // ---- ABI 1.2 ----
    /// Ends a pending call (see [`SOCKD_PENDING`]) from any thread.
    pub finish: FinishFn,
    /// Runs a pending call's `on_input` now, on the calling thread.
    pub wake: WakeFn,
}

/// `sizeof(sockd_host)` in ABI 1.0 and 1.1: everything before `finish`.
pub const SOCKD_HOST_SIZE_1_1: usize = std::mem::offset_of!(SockdHost, finish);

pub type InitFn =
    unsafe extern "C" fn(host: *const SockdHost, config: SockdStr, state: *mut *mut c_void) -> i32;
pub type ConfigureFn = unsafe extern "C" fn(state: *mut c_void, config: SockdStr) -> i32;
pub type HandleFn = unsafe extern "C" fn(state: *mut c_void, call: *const SockdCall) -> i32;
pub type SessionClosedFn = unsafe extern "C" fn(state: *mut c_void, session_id: u64);
pub type ShutdownFn = unsafe extern "C" fn(state: *mut c_void);
pub type OnInputFn = unsafe extern "C" fn(state: *mut c_void, channel: u64) -> i32;

#[repr(C)]
pub struct SockdPlugin {
    pub magic: u64,
    pub size: u32,
    pub abi_major: u16,
    pub abi_minor: u16,
    pub name: *const c_char,
    pub version: *const c_char,
    pub commands: *const *const c_char,
    pub init: Option<InitFn>,
    pub configure: Option<ConfigureFn>,
    pub handle: Option<HandleFn>,
    pub session_closed: Option<SessionClosedFn>,
    pub shutdown: Option<ShutdownFn>,
    // ---- ABI 1.1 ----
    /// NULL, or a NULL-terminated list of commands (each also in
    /// `commands`) that the host runs inline on the connection's task.
    pub inline_commands: *const *const c_char,
    // ---- ABI 1.2 ----
    /// NULL, or called on the connection's task whenever something arrives
    /// for a pending call: input, EOF, cancellation, credit.
    pub on_input: Option<OnInputFn>,
}

/// `sizeof(sockd_plugin)` in ABI 1.0: everything before `inline_commands`.
pub const SOCKD_PLUGIN_SIZE_1_0: usize = std::mem::offset_of!(SockdPlugin, inline_commands);
/// `sizeof(sockd_plugin)` in ABI 1.1: everything before `on_input`.
pub const SOCKD_PLUGIN_SIZE_1_1: usize = std::mem::offset_of!(SockdPlugin, on_input);

// SAFETY: a descriptor is immutable static data (pointers to static strings
// and functions); sharing it between threads is sound.
unsafe impl Sync for SockdPlugin {}

pub type EntryFn = unsafe extern "C" fn() -> *const SockdPlugin;

/// A NULL-terminated array of C string pointers that can live in a static.
#[repr(transparent)]
pub struct CommandList<const N: usize>(pub [*const c_char; N]);

// SAFETY: the pointers refer to static, immutable string literals.
unsafe impl<const N: usize> Sync for CommandList<N> {}
