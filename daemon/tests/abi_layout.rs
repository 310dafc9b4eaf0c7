//! The C header and its Rust mirror must agree byte for byte: compiles a C
//! program that prints the size and alignment of every type, the offset of
//! every field and the value of every constant in `sockd_plugin.h`, and
//! compares each with `size_of` / `offset_of!` / the `sys` constants.

mod plugin_support;

use sockd_plugin::sys::{self, SockdCall, SockdHost, SockdPlugin, SockdStr};
use std::collections::BTreeMap;
use std::mem::{align_of, offset_of, size_of};
use std::process::Command;

/// Runs `daemon/tests/c/layout.c` and returns its "key value" lines.
fn c_layout() -> BTreeMap<String, String> {
    let dir = tempfile::tempdir().expect("tempdir");
    let exe = dir.path().join("layout");
    let source = plugin_support::workspace().join("daemon/tests/c/layout.c");
    let status = Command::new("cc")
        .args(["-std=c11", "-Wall", "-Wextra", "-Werror", "-I"])
        .arg(plugin_support::include_dir())
        .arg("-o")
        .arg(&exe)
        .arg(&source)
        .status()
        .expect("run cc");
    assert!(status.success(), "cc failed on {}", source.display());
    let out = Command::new(&exe).output().expect("run the layout program");
    assert!(out.status.success());
    String::from_utf8(out.stdout)
        .expect("UTF-8 output")
        .lines()
        .map(|line| {
            let (k, v) = line.rsplit_once(' ').expect("`key value` line");
            (k.to_string(), v.to_string())
        })
        .collect()
}

#[test]
fn plugin_abi_rust_mirror_matches_the_c_header() {
    let c = c_layout();
    let mut rust: Vec<(String, String)> = Vec::new();
    let mut put = |k: String, v: String| rust.push((k, v));

    macro_rules! layout {
        ($cname:literal, $ty:ty, [$($field:ident),* $(,)?]) => {
            put(format!("sizeof {}", $cname), size_of::<$ty>().to_string());
            put(format!("alignof {}", $cname), align_of::<$ty>().to_string());
            $( put(format!("offsetof {}.{}", $cname, stringify!($field)), offset_of!($ty, $field).to_string()); )*
        };
    }
    layout!("sockd_str", SockdStr, [ptr, len]);
    layout!(
        "sockd_call",
        SockdCall,
        [
            size, channel, session_id, user, home, command, argc, argv, peer, flags
        ]
    );
    layout!(
        "sockd_host",
        SockdHost,
        [
            size,
            abi_major,
            abi_minor,
            log,
            read,
            write,
            try_write,
            write_eof,
            is_cancelled,
            set_result,
            subscribe,
            push_user,
            user_online,
            finish,
            wake
        ]
    );
    layout!(
        "sockd_plugin",
        SockdPlugin,
        [
            magic,
            size,
            abi_major,
            abi_minor,
            name,
            version,
            commands,
            init,
            configure,
            handle,
            session_closed,
            shutdown,
            inline_commands,
            on_input
        ]
    );
    put(
        "const SOCKD_PLUGIN_SIZE_1_0".into(),
        sys::SOCKD_PLUGIN_SIZE_1_0.to_string(),
    );
    put(
        "const SOCKD_PLUGIN_SIZE_1_1".into(),
        sys::SOCKD_PLUGIN_SIZE_1_1.to_string(),
    );
    put(
        "const SOCKD_HOST_SIZE_1_1".into(),
        sys::SOCKD_HOST_SIZE_1_1.to_string(),
    );

    put("magic".into(), format!("{:x}", sys::SOCKD_PLUGIN_MAGIC));
    put(
        "entry".into(),
        String::from_utf8_lossy(sys::SOCKD_PLUGIN_ENTRY_SYMBOL).into_owned(),
    );
    macro_rules! constants {
        ($($name:ident),* $(,)?) => {
            $( put(format!("const {}", stringify!($name)), i64::from(sys::$name).to_string()); )*
        };
    }
    constants!(
        SOCKD_ABI_MAJOR,
        SOCKD_ABI_MINOR,
        SOCKD_OK,
        SOCKD_E_RATE_LIMITED,
        SOCKD_E_UNAVAILABLE,
        SOCKD_E_BAD_REQUEST,
        SOCKD_E_PERMISSION_DENIED,
        SOCKD_E_NOT_FOUND,
        SOCKD_E_ALREADY_EXISTS,
        SOCKD_E_NOT_A_DIRECTORY,
        SOCKD_E_IS_A_DIRECTORY,
        SOCKD_E_QUOTA_EXCEEDED,
        SOCKD_E_NO_SPACE,
        SOCKD_E_NAME_TOO_LONG,
        SOCKD_E_TOO_LARGE,
        SOCKD_E_TIMEOUT,
        SOCKD_E_CANCELLED,
        SOCKD_E_BUSY,
        SOCKD_E_INTERNAL,
        SOCKD_E_CONFLICT,
        SOCKD_E_DIRECTORY_NOT_EMPTY,
        SOCKD_E_WOULD_BLOCK,
        SOCKD_E_CLOSED,
        SOCKD_E_PANICKED,
        SOCKD_PENDING,
        SOCKD_RUN_ON_THREAD,
        SOCKD_CALL_INLINE,
        SOCKD_STREAM_MAIN,
        SOCKD_STREAM_DIAG,
        SOCKD_STREAM_CONTROL,
        SOCKD_LOG_ERROR,
        SOCKD_LOG_WARN,
        SOCKD_LOG_INFO,
        SOCKD_LOG_DEBUG,
    );

    let mut mismatches = Vec::new();
    for (key, value) in &rust {
        match c.get(key) {
            Some(c_value) if c_value == value => {}
            Some(c_value) => mismatches.push(format!("{key}: C {c_value}, Rust {value}")),
            None => mismatches.push(format!("{key}: not printed by layout.c")),
        }
    }
    for key in c.keys().filter(|k| !rust.iter().any(|(r, _)| r == *k)) {
        mismatches.push(format!(
            "{key}: printed by layout.c but not checked on the Rust side"
        ));
    }
    assert!(
        mismatches.is_empty(),
        "ABI mismatches:\n{}",
        mismatches.join("\n")
    );
}

#[test]
fn plugin_abi_1_1_only_appends_to_the_1_0_descriptor() {
    // The 1.0 descriptor ended with `shutdown`; 1.1 appends one pointer.
    assert_eq!(
        sys::SOCKD_PLUGIN_SIZE_1_0,
        offset_of!(SockdPlugin, shutdown) + size_of::<usize>()
    );
    assert_eq!(
        sys::SOCKD_PLUGIN_SIZE_1_1,
        sys::SOCKD_PLUGIN_SIZE_1_0 + size_of::<usize>()
    );
}

#[test]
fn plugin_abi_1_2_only_appends_to_the_1_1_tables() {
    // 1.2 appends on_input to the descriptor, finish and wake to the host
    // table and
    // flags to the call; nothing before them moves.
    assert_eq!(
        size_of::<SockdPlugin>(),
        sys::SOCKD_PLUGIN_SIZE_1_1 + size_of::<usize>()
    );
    assert_eq!(
        sys::SOCKD_HOST_SIZE_1_1,
        offset_of!(SockdHost, user_online) + size_of::<usize>()
    );
    assert_eq!(
        size_of::<SockdHost>(),
        sys::SOCKD_HOST_SIZE_1_1 + 2 * size_of::<usize>()
    );
    assert_eq!(
        offset_of!(SockdCall, flags),
        offset_of!(SockdCall, peer) + size_of::<sys::SockdStr>()
    );
    assert_eq!((sys::SOCKD_ABI_MAJOR, sys::SOCKD_ABI_MINOR), (1, 2));
}

#[test]
fn plugin_abi_codes_have_the_wire_numbers() {
    use sockd_proto::ErrorCode as E;
    let pairs = [
        (sys::SOCKD_E_RATE_LIMITED, E::RateLimited),
        (sys::SOCKD_E_UNAVAILABLE, E::Unavailable),
        (sys::SOCKD_E_BAD_REQUEST, E::BadRequest),
        (sys::SOCKD_E_PERMISSION_DENIED, E::PermissionDenied),
        (sys::SOCKD_E_NOT_FOUND, E::NotFound),
        (sys::SOCKD_E_ALREADY_EXISTS, E::AlreadyExists),
        (sys::SOCKD_E_NOT_A_DIRECTORY, E::NotADirectory),
        (sys::SOCKD_E_IS_A_DIRECTORY, E::IsADirectory),
        (sys::SOCKD_E_QUOTA_EXCEEDED, E::QuotaExceeded),
        (sys::SOCKD_E_NO_SPACE, E::NoSpace),
        (sys::SOCKD_E_NAME_TOO_LONG, E::NameTooLong),
        (sys::SOCKD_E_TOO_LARGE, E::TooLarge),
        (sys::SOCKD_E_TIMEOUT, E::Timeout),
        (sys::SOCKD_E_CANCELLED, E::Cancelled),
        (sys::SOCKD_E_BUSY, E::Busy),
        (sys::SOCKD_E_INTERNAL, E::Internal),
        (sys::SOCKD_E_CONFLICT, E::Conflict),
        (sys::SOCKD_E_DIRECTORY_NOT_EMPTY, E::DirectoryNotEmpty),
    ];
    for (abi, wire) in pairs {
        assert_eq!(abi as u16, wire.as_u16(), "{wire:?}");
    }
    // Host-only codes must never collide with a wire code.
    for host_only in [
        sys::SOCKD_E_WOULD_BLOCK,
        sys::SOCKD_E_CLOSED,
        sys::SOCKD_E_PANICKED,
    ] {
        assert!(
            !E::ALL.iter().any(|c| c.as_u16() == host_only as u16),
            "{host_only}"
        );
    }
}
