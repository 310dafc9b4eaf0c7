//! Loading one build of a plugin: permission check, private copy, `dlopen`,
//! descriptor validation and `init`.
//!
//! Every refusal is a [`LoadError`] that names the plugin, the file, what
//! was wrong and, in a `DETAIL:` line, the field with the expected and the
//! found value, so an operator can fix it without reading code:
//!
//! ```text
//! plugin "exec" (/usr/lib/sockd/plugins/libsockd_exec.so) refused: ABI major version mismatch
//!   DETAIL: field abi_major: expected 1, found 2
//! ```
//!
//! Why a copy: `dlopen` of a path that is already loaded returns the old
//! mapping, so a rebuilt plugin installed over the same file would never be
//! picked up by a reload; and overwriting a mapped library in place crashes
//! the process. Each build is therefore loaded from its own copy under
//! `<state_dir>/plugin-cache`, which is deleted right after `dlopen` (the
//! mapping outlives the name).
//!
//! Why never `dlclose`: calls of an old build may still be running after a
//! reload, plugin threads may outlive the calls that started them, and a
//! Rust library registers thread-local destructors that point into its
//! code. Unmapping any of that is a crash waiting to happen, so every
//! `Library` is leaked on purpose; a reload costs one mapping.

use super::host_api::{self, HostTable};
use crate::config::{PluginEntry, valid_plugin_name};
use libloading::os::unix::{Library, RTLD_LOCAL, RTLD_NOW};
use sockd_plugin::sys::{self, SockdPlugin, SockdStr};
use sockd_proto::ErrorCode;
use std::collections::HashMap;
use std::ffi::{c_char, c_void};
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};

/// The oldest minor version of ABI 1 this host still accepts.
pub const MIN_SUPPORTED_MINOR: u16 = 0;

/// Longest string the host reads from a descriptor before giving up.
const MAX_DESCRIPTOR_STRING: usize = 256;

/// Most commands one plugin may declare.
const MAX_COMMANDS: usize = 256;

/// Why a plugin was refused. `Display` gives the operator-facing text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadError {
    pub plugin: String,
    pub file: PathBuf,
    pub summary: String,
    pub detail: Option<String>,
}

impl fmt::Display for LoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "plugin \"{}\" ({}) refused: {}",
            self.plugin,
            self.file.display(),
            self.summary
        )?;
        if let Some(detail) = &self.detail {
            write!(f, "\n  DETAIL: {detail}")?;
        }
        Ok(())
    }
}

impl std::error::Error for LoadError {}

/// One loaded, validated and initialised copy of a plugin's library.
///
/// Builds are never unloaded (see the module docs). Several builds of one
/// plugin coexist after a reload until the old one's calls finish.
pub struct Build {
    pub name: String,
    pub version: String,
    pub abi: String,
    pub commands: Vec<String>,
    /// The commands run inline, on the connection's task (ABI 1.1); a
    /// subset of `commands`.
    pub inline_commands: Vec<String>,
    /// The configured file (not the private copy).
    pub file: PathBuf,
    /// A copy of the descriptor (fields newer than the plugin's minor zero).
    desc: SockdPlugin,
    handle: sys::HandleFn,
    /// The plugin's `*state` from init, passed back on every call.
    state: *mut c_void,
    /// Calls running on this build.
    in_flight: AtomicUsize,
    /// A newer build replaced this one (or the daemon is stopping).
    retired: AtomicBool,
    /// `shutdown` was called (at most once).
    shut_down: AtomicBool,
    /// Panics of calls on this build; quarantine is per build so a reload
    /// starts clean.
    pub panics: AtomicU32,
}

// SAFETY: the descriptor is immutable static data in a library that is never
// unloaded, and the ABI requires the plugin's state to be usable from any
// thread (every call runs on its own thread and may run concurrently).
unsafe impl Send for Build {}
// SAFETY: as above; the host only passes `state` back to the plugin.
unsafe impl Sync for Build {}

impl fmt::Debug for Build {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Build")
            .field("name", &self.name)
            .field("version", &self.version)
            .finish_non_exhaustive()
    }
}

impl Build {
    /// True if `command` is run inline (declared so by the plugin).
    pub fn is_inline(&self, command: &str) -> bool {
        self.inline_commands.iter().any(|c| c == command)
    }

    /// True if the plugin can serve pending calls (ABI 1.2 `on_input`).
    pub fn serves_pending(&self) -> bool {
        self.desc.on_input.is_some()
    }

    /// Runs `on_input` for a pending call; `SOCKD_E_INTERNAL` if the
    /// plugin has none (it should not have left a call pending).
    pub fn on_input(&self, channel: u64) -> i32 {
        match self.desc.on_input {
            // SAFETY: from a validated 1.2 descriptor; state is what init
            // returned; the channel is a plain handle.
            Some(f) => unsafe { f(self.state, channel) },
            None => sys::SOCKD_E_INTERNAL,
        }
    }

    /// Runs `handle` for one call. Blocks for as long as the plugin does.
    pub fn handle(&self, call: &sys::SockdCall) -> i32 {
        // SAFETY: `handle` was checked non-null at load, `state` is what
        // init returned, and `call` (with every string it points to) is
        // kept alive by the caller until this returns.
        unsafe { (self.handle)(self.state, call) }
    }

    /// Calls `configure` with a new settings text; `Ok` if the plugin has
    /// no `configure` entry. The error names the code and, when the plugin
    /// logged one, its reason.
    pub fn configure(&self, config: &str) -> Result<(), String> {
        let Some(configure) = self.desc.configure else {
            return Ok(());
        };
        let (code, reason) = host_api::with_logged_error(|| {
            // SAFETY: configure comes from a validated descriptor; state is
            // what init returned; the config bytes outlive the call.
            unsafe { configure(self.state, SockdStr::from_slice(config.as_bytes())) }
        });
        if code == sys::SOCKD_OK {
            Ok(())
        } else {
            Err(refusal("configure", code, reason))
        }
    }

    pub fn session_closed(&self, session_id: u64) {
        if self.shut_down.load(Ordering::SeqCst) {
            return;
        }
        if let Some(f) = self.desc.session_closed {
            // SAFETY: from a validated descriptor; state is what init returned.
            unsafe { f(self.state, session_id) }
        }
    }

    /// Calls `shutdown` unless it already ran.
    pub fn shutdown_once(&self) {
        if self.shut_down.swap(true, Ordering::SeqCst) {
            return;
        }
        tracing::debug!(plugin = %self.name, version = %self.version, "build shut down");
        if let Some(f) = self.desc.shutdown {
            // SAFETY: from a validated descriptor; state is what init returned.
            unsafe { f(self.state) }
        }
    }

    pub fn is_shut_down(&self) -> bool {
        self.shut_down.load(Ordering::SeqCst)
    }

    pub fn is_retired(&self) -> bool {
        self.retired.load(Ordering::SeqCst)
    }

    /// Marks a call as running. Call while the build is still reachable
    /// from the plugin table, so it cannot be retired unnoticed.
    pub fn call_started(&self) {
        self.in_flight.fetch_add(1, Ordering::SeqCst);
    }

    /// A call ended: if this build was retired and this was its last call,
    /// shut it down.
    pub fn call_ended(&self) {
        if self.in_flight.fetch_sub(1, Ordering::SeqCst) == 1 && self.retired.load(Ordering::SeqCst)
        {
            self.shutdown_once();
        }
    }

    /// No new calls will reach this build: shut it down now if idle, or
    /// when its last call ends.
    pub fn retire(&self) {
        self.retired.store(true, Ordering::SeqCst);
        if self.in_flight.load(Ordering::SeqCst) == 0 {
            self.shutdown_once();
        }
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::SeqCst)
    }
}

/// Where a plugin's file is: `dir/file`, or `file` if it is absolute.
pub fn plugin_path(dir: &Path, entry: &PluginEntry) -> PathBuf {
    dir.join(&entry.file)
}

/// Everything a load needs besides the plugin's own entry.
pub struct LoadContext<'a> {
    pub dir: &'a Path,
    pub state_dir: &'a Path,
    /// Commands served by other plugins: command -> plugin.
    pub taken: &'a HashMap<String, String>,
}

/// Loads, validates and initialises one build of plugin `name`.
pub fn load(name: &str, entry: &PluginEntry, cx: &LoadContext<'_>) -> Result<Build, LoadError> {
    let path = plugin_path(cx.dir, entry);
    let refuse = |summary: String, detail: Option<String>| LoadError {
        plugin: name.to_string(),
        file: path.clone(),
        summary,
        detail,
    };

    // Open first and check what we opened, so the file cannot be swapped
    // between the check and the copy.
    let mut source =
        File::open(&path).map_err(|e| refuse("cannot open the file".into(), Some(io_text(&e))))?;
    let parent = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let dir_meta = fs::metadata(parent).map_err(|e| {
        refuse(
            "cannot inspect its directory".into(),
            Some(format!("{}: {}", parent.display(), io_text(&e))),
        )
    })?;
    let file_meta = source
        .metadata()
        .map_err(|e| refuse("cannot inspect the file".into(), Some(io_text(&e))))?;
    if !file_meta.is_file() {
        return Err(refuse("not a regular file".into(), None));
    }
    check_permissions("directory", parent, &dir_meta).map_err(|(s, d)| refuse(s, Some(d)))?;
    check_permissions("file", &path, &file_meta).map_err(|(s, d)| refuse(s, Some(d)))?;

    let copy = private_copy(name, &mut source, cx.state_dir)
        .map_err(|e| refuse("cannot make a private copy to load".into(), Some(e)))?;
    // SAFETY: loading a library runs its initialisers, which is the point of
    // a plugin; the operator vouched for the file by configuring it, and we
    // checked that nobody else can have written it.
    let opened = unsafe { Library::open(Some(&copy), RTLD_NOW | RTLD_LOCAL) };
    // The mapping stays valid without its name; the copy must not linger.
    let _ = fs::remove_file(&copy);
    let library = opened.map_err(|e| {
        refuse(
            "cannot load the library".into(),
            Some(dl_text(&e).replace(&*copy.to_string_lossy(), &path.to_string_lossy())),
        )
    })?;
    // Never unloaded, even when refused below: its initialisers have run
    // and may have registered destructors (see the module docs).
    let library: &'static Library = Box::leak(Box::new(library));

    // SAFETY: the symbol's type is the ABI's entry function; `Option` maps a
    // (theoretical) null symbol to None instead of a null fn pointer.
    let symbol = unsafe { library.get::<Option<sys::EntryFn>>(sys::SOCKD_PLUGIN_ENTRY_SYMBOL) };
    let entry_fn = match symbol.map(|s| *s) {
        Ok(Some(f)) => f,
        Ok(None) => {
            return Err(refuse(
                "the entry point is missing".into(),
                Some("sockd_plugin_entry is null".into()),
            ));
        }
        Err(e) => {
            let text = dl_text(&e).replace(&*copy.to_string_lossy(), &path.to_string_lossy());
            return Err(refuse("the entry point is missing".into(), Some(text)));
        }
    };

    // SAFETY: the ABI's entry point takes no arguments and returns a pointer
    // to a static descriptor (checked below before any use).
    let desc = unsafe { entry_fn() };
    let checked = validate(desc, name, cx.taken).map_err(|(s, d)| refuse(s, Some(d)))?;
    init(checked, name, entry, path.clone()).map_err(|(s, d)| refuse(s, d))
}

/// What the descriptor checks produced.
struct Checked {
    desc: SockdPlugin,
    version: String,
    commands: Vec<String>,
    inline_commands: Vec<String>,
    handle: sys::HandleFn,
    init: sys::InitFn,
}

type Refusal = (String, String);

fn mismatch(
    summary: &str,
    field: &str,
    expected: impl fmt::Display,
    found: impl fmt::Display,
) -> Refusal {
    (
        summary.to_string(),
        format!("field {field}: expected {expected}, found {found}"),
    )
}

/// Checks a descriptor before anything in it is used.
fn validate(
    desc: *const SockdPlugin,
    name: &str,
    taken: &HashMap<String, String>,
) -> Result<Checked, Refusal> {
    if desc.is_null() {
        return Err(mismatch(
            "invalid descriptor",
            "sockd_plugin_entry()",
            "a descriptor pointer",
            "NULL",
        ));
    }
    if !desc.cast::<u64>().is_aligned() || !desc.is_aligned() {
        return Err(mismatch(
            "invalid descriptor",
            "sockd_plugin_entry()",
            "an aligned pointer",
            format!("{desc:p}"),
        ));
    }
    // The first 16 bytes (magic, size, version) are the same in every ABI
    // version, so they can be read before the size is known to be right.
    // SAFETY: non-null and aligned; every descriptor starts with these
    // fields, and it is static data of a loaded library.
    let (magic, size, major, minor) = unsafe {
        let header = desc.cast::<u8>();
        (
            header.cast::<u64>().read(),
            header.add(8).cast::<u32>().read(),
            header.add(12).cast::<u16>().read(),
            header.add(14).cast::<u16>().read(),
        )
    };
    if magic != sys::SOCKD_PLUGIN_MAGIC {
        return Err(mismatch(
            "not a sockd plugin descriptor (bad magic)",
            "magic",
            format_args!("{:#018x}", sys::SOCKD_PLUGIN_MAGIC),
            format_args!("{magic:#018x}"),
        ));
    }
    if major != sys::SOCKD_ABI_MAJOR {
        return Err(mismatch(
            "ABI major version mismatch",
            "abi_major",
            sys::SOCKD_ABI_MAJOR,
            major,
        ));
    }
    if too_old(minor) {
        return Err(mismatch(
            "ABI minor version too old",
            "abi_minor",
            format_args!("at least {MIN_SUPPORTED_MINOR}"),
            minor,
        ));
    }
    let need = descriptor_size(minor);
    if (size as usize) < need {
        return Err(mismatch(
            "descriptor too small for its ABI version",
            "size",
            format_args!("at least {need} for ABI 1.{minor}"),
            size,
        ));
    }
    // Fields of later minors are read only when the plugin claims that
    // minor (whose size was checked above): a 1.0 descriptor ends before
    // inline_commands, a 1.1 one before on_input.
    let known = descriptor_size(minor);
    // The descriptor is copied, never borrowed as a whole `&SockdPlugin`:
    // a 1.0 descriptor is shorter than the host's struct. Fields it does not
    // have stay zero (NULL, None).
    // SAFETY: every field of SockdPlugin (integers, raw pointers,
    // Option<fn>) is valid all-zero; the size check above vouches for
    // `known` readable bytes at `desc` (static data of the loaded library).
    let desc: SockdPlugin = unsafe {
        let mut copy = std::mem::MaybeUninit::<SockdPlugin>::zeroed();
        std::ptr::copy_nonoverlapping(desc.cast::<u8>(), copy.as_mut_ptr().cast::<u8>(), known);
        copy.assume_init()
    };

    // SAFETY: descriptor strings are static, NUL-terminated per the ABI;
    // c_string reads at most MAX_DESCRIPTOR_STRING bytes.
    let found_name = unsafe { c_string(desc.name) }
        .map_err(|e| mismatch("invalid plugin name", "name", "a string", e))?;
    let Ok(found_name) = std::str::from_utf8(found_name) else {
        return Err(mismatch(
            "invalid plugin name",
            "name",
            "UTF-8",
            "invalid UTF-8",
        ));
    };
    if !valid_plugin_name(found_name) {
        return Err(mismatch(
            "invalid plugin name",
            "name",
            "[a-z0-9_-]{1,32}",
            format_args!("\"{found_name}\""),
        ));
    }
    if found_name != name {
        return Err(mismatch(
            "the library's name differs from its [plugins] table",
            "name",
            format_args!("\"{name}\""),
            format_args!("\"{found_name}\""),
        ));
    }
    // SAFETY: as for the name.
    let version = unsafe { c_string(desc.version) }
        .map_err(|e| mismatch("invalid version", "version", "a string", e))?;
    if version.is_empty() {
        return Err(mismatch(
            "invalid version",
            "version",
            "a non-empty string",
            "\"\"",
        ));
    }
    let version = String::from_utf8_lossy(version).into_owned();
    // SAFETY: commands is a static NULL-terminated array per the ABI;
    // command_list reads at most MAX_COMMANDS + 1 entries.
    let commands = unsafe { command_list(desc.commands, "commands") }?;
    let inline_commands = if !desc.inline_commands.is_null() {
        // SAFETY: a 1.1 descriptor's inline_commands is NULL or a static
        // NULL-terminated array per the ABI, like commands.
        let inline = unsafe { command_list(desc.inline_commands, "inline_commands") }?;
        if let Some((i, c)) = inline
            .iter()
            .enumerate()
            .find(|(_, c)| !commands.contains(c))
        {
            return Err(mismatch(
                "inline command not among the plugin's commands",
                &format!("inline_commands[{i}]"),
                "one of the names in commands",
                format_args!("\"{c}\""),
            ));
        }
        inline
    } else {
        Vec::new()
    };
    for command in &commands {
        if let Some(owner) = taken.get(command) {
            return Err((
                format!("command `{command}` is already served by plugin \"{owner}\""),
                format!(
                    "field commands: expected commands no other plugin serves, found \"{command}\""
                ),
            ));
        }
    }
    let Some(handle) = desc.handle else {
        return Err(mismatch("missing function", "handle", "a function", "NULL"));
    };
    let Some(init) = desc.init else {
        return Err(mismatch("missing function", "init", "a function", "NULL"));
    };
    Ok(Checked {
        desc,
        version,
        commands,
        inline_commands,
        handle,
        init,
    })
}

#[allow(
    clippy::absurd_extreme_comparisons,
    reason = "always false until MIN_SUPPORTED_MINOR is raised"
)]
fn too_old(minor: u16) -> bool {
    minor < MIN_SUPPORTED_MINOR
}

/// Size of the descriptor as of ABI 1.`minor`. Minors only append fields,
/// so a descriptor claiming a newer minor than ours is at least our size.
fn descriptor_size(minor: u16) -> usize {
    match minor {
        0 => sys::SOCKD_PLUGIN_SIZE_1_0,
        1 => sys::SOCKD_PLUGIN_SIZE_1_1,
        _ => size_of::<SockdPlugin>(),
    }
}

/// Reads a NUL-terminated descriptor string without running off its end.
///
/// # Safety
/// `p` must be null or point to readable memory up to its NUL or to
/// `MAX_DESCRIPTOR_STRING` bytes, whichever comes first, for `'static`.
unsafe fn c_string(p: *const c_char) -> Result<&'static [u8], String> {
    if p.is_null() {
        return Err("NULL".into());
    }
    for len in 0..=MAX_DESCRIPTOR_STRING {
        // SAFETY: every byte before the NUL is readable per the contract.
        if unsafe { *p.add(len) } == 0 {
            // SAFETY: the `len` bytes before the NUL were just read.
            return Ok(unsafe { std::slice::from_raw_parts(p.cast::<u8>(), len) });
        }
    }
    Err(format!("no NUL within {MAX_DESCRIPTOR_STRING} bytes"))
}

/// Reads and checks a NULL-terminated command list (descriptor field
/// `list_field`: `commands` or `inline_commands`).
///
/// # Safety
/// `list` must be null or a static NULL-terminated array of C strings.
unsafe fn command_list(
    list: *const *const c_char,
    list_field: &str,
) -> Result<Vec<String>, Refusal> {
    if list.is_null() {
        return Err(mismatch(
            "no commands",
            list_field,
            "a NULL-terminated list",
            "NULL",
        ));
    }
    let mut out: Vec<String> = Vec::new();
    for i in 0..=MAX_COMMANDS {
        // SAFETY: entries up to the NULL terminator are readable.
        let p = unsafe { *list.add(i) };
        if p.is_null() {
            break;
        }
        if i == MAX_COMMANDS {
            return Err(mismatch(
                "too many commands",
                list_field,
                format_args!("at most {MAX_COMMANDS}"),
                "more",
            ));
        }
        let field = format!("{list_field}[{i}]");
        // SAFETY: each entry is a static NUL-terminated string per the ABI.
        let raw = unsafe { c_string(p) }
            .map_err(|e| mismatch("invalid command name", &field, "a string", e))?;
        let command = std::str::from_utf8(raw)
            .ok()
            .filter(|c| valid_plugin_name(c))
            .ok_or_else(|| {
                mismatch(
                    "invalid command name",
                    &field,
                    "[a-z0-9_-]{1,32}",
                    format_args!("{:?}", String::from_utf8_lossy(raw)),
                )
            })?;
        if out.iter().any(|c| c == command) {
            return Err(mismatch(
                "command listed twice",
                &field,
                "a new name",
                format_args!("\"{command}\""),
            ));
        }
        out.push(command.to_string());
    }
    if out.is_empty() {
        return Err(mismatch(
            "no commands",
            list_field,
            "at least one command",
            "an empty list",
        ));
    }
    Ok(out)
}

/// Calls `init` with a fresh host table and the plugin's settings.
fn init(
    c: Checked,
    name: &str,
    entry: &PluginEntry,
    file: PathBuf,
) -> Result<Build, (String, Option<String>)> {
    let config = toml::to_string(&entry.settings).map_err(|e| {
        (
            "cannot render its settings as TOML".to_string(),
            Some(e.to_string()),
        )
    })?;
    let host = HostTable::leak(name);
    let mut state: *mut c_void = std::ptr::null_mut();
    let (code, reason) = host_api::with_logged_error(|| {
        // SAFETY: init comes from a validated descriptor; the host table is
        // leaked (valid forever), the config bytes outlive the call and
        // `state` is a valid out-pointer.
        unsafe {
            (c.init)(
                host.as_raw(),
                SockdStr::from_slice(config.as_bytes()),
                &mut state,
            )
        }
    });
    if code != sys::SOCKD_OK {
        return Err((
            format!("init failed with code {code}"),
            Some(refusal("init", code, reason)),
        ));
    }
    Ok(Build {
        name: name.to_string(),
        abi: format!("{}.{}", c.desc.abi_major, c.desc.abi_minor),
        version: c.version,
        commands: c.commands,
        inline_commands: c.inline_commands,
        file,
        desc: c.desc,
        handle: c.handle,
        state,
        in_flight: AtomicUsize::new(0),
        retired: AtomicBool::new(false),
        shut_down: AtomicBool::new(false),
        panics: AtomicU32::new(0),
    })
}

/// Why `init` or `configure` refused: the code, its name and the error the
/// plugin logged, if any.
fn refusal(function: &str, code: i32, reason: Option<String>) -> String {
    let what = match code {
        sys::SOCKD_E_PANICKED => "panicked".to_string(),
        n => u16::try_from(n).map_or_else(
            |_| "unknown code".to_string(),
            |n| ErrorCode::from_u16(n).slug().to_string(),
        ),
    };
    match reason {
        Some(reason) => format!("{function} returned {code} ({what}): {reason}"),
        None => format!("{function} returned {code} ({what})"),
    }
}

/// Refuses a file or directory that others could have written: it must be
/// owned by root or by us, and not be writable by group or others.
fn check_permissions(kind: &str, path: &Path, meta: &fs::Metadata) -> Result<(), (String, String)> {
    let euid = nix::unistd::geteuid().as_raw();
    let mode = meta.mode() & 0o7777;
    if meta.uid() != 0 && meta.uid() != euid {
        let expected = if euid == 0 {
            "uid 0 (root)".to_string()
        } else {
            format!("uid 0 (root) or {euid} (the daemon)")
        };
        return Err((
            format!("its {kind} is owned by another user"),
            format!(
                "{kind} {} owner: expected {expected}, found uid {}",
                path.display(),
                meta.uid()
            ),
        ));
    }
    if mode & 0o022 != 0 {
        return Err((
            format!("its {kind} is writable by group or others"),
            format!(
                "{kind} {} mode: expected no group/other write bits, found {mode:04o}",
                path.display()
            ),
        ));
    }
    Ok(())
}

/// Copies the opened plugin to a unique path in `<state_dir>/plugin-cache`.
fn private_copy(name: &str, source: &mut File, state_dir: &Path) -> Result<PathBuf, String> {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    let dir = state_dir.join("plugin-cache");
    let err = |p: &Path, e: io::Error| format!("{}: {}", p.display(), io_text(&e));
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&dir)
        .map_err(|e| err(&dir, e))?;
    // Whoever can write here can swap the copy before dlopen: the
    // directory must be ours alone, whatever created it.
    let meta = fs::metadata(&dir).map_err(|e| err(&dir, e))?;
    let euid = nix::unistd::geteuid().as_raw();
    if meta.uid() != euid {
        return Err(format!(
            "{}: owned by uid {}, expected {euid} (the daemon)",
            dir.display(),
            meta.uid()
        ));
    }
    if meta.mode() & 0o077 != 0 {
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o700)).map_err(|e| err(&dir, e))?;
    }
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let path = dir.join(format!("{name}-{}-{n}.so", std::process::id()));
    // A leftover of an earlier process with the same pid (one that died
    // between copy and dlopen) must not block this load.
    let _ = fs::remove_file(&path);
    let copied = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o700)
        .open(&path)
        .and_then(|mut dest| io::copy(source, &mut dest));
    if let Err(e) = copied {
        let _ = fs::remove_file(&path);
        return Err(err(&path, e));
    }
    Ok(path)
}

/// An I/O error without the "(os error N)" noise.
fn io_text(e: &io::Error) -> String {
    let text = e.to_string();
    match text.find(" (os error") {
        Some(i) => text[..i].to_string(),
        None => text,
    }
}

/// libloading's message plus the `dlerror` text it wraps.
fn dl_text(e: &libloading::Error) -> String {
    match std::error::Error::source(e) {
        Some(source) => format!("{e}: {source}"),
        None => e.to_string(),
    }
}
