//! The loader's checks, one refusal at a time, with tiny C plugins compiled
//! at test time from `daemon/tests/c/variant.c`; plus a good load of the C
//! example and `on_error = "skip"`.

mod plugin_support;

use plugin_support::{Dirs, config, dirs, upper, variant};
use sockd::config::OnPluginError;
use sockd::plugin::PluginHost;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

/// Loads `name` from `file` with `on_error = "refuse"` and returns the error.
fn refused(d: &Dirs, name: &str, file: &str) -> String {
    let cfg = config(d.plugins.path(), OnPluginError::Refuse, &[(name, file, "")]);
    match PluginHost::load(&cfg, d.state.path()) {
        Ok(_) => panic!("plugin {name} from {file} was accepted"),
        Err(e) => e,
    }
}

fn path(d: &Dirs, file: &str) -> String {
    d.plugins.path().join(file).display().to_string()
}

fn chmod(p: &Path, mode: u32) {
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

#[test]
fn plugin_missing_file_is_refused() {
    let d = dirs();
    let e = refused(&d, "nope", "libnope.so");
    assert_eq!(
        e,
        format!(
            "plugin \"nope\" ({}) refused: cannot open the file\n  DETAIL: No such file or directory",
            path(&d, "libnope.so")
        )
    );
}

#[test]
fn plugin_in_a_world_writable_directory_is_refused() {
    let d = dirs();
    variant(d.plugins.path(), "libvariant.so", &[]);
    chmod(d.plugins.path(), 0o777);
    let e = refused(&d, "variant", "libvariant.so");
    assert_eq!(
        e,
        format!(
            "plugin \"variant\" ({}) refused: its directory is writable by group or others\n  \
             DETAIL: directory {} mode: expected no group/other write bits, found 0777",
            path(&d, "libvariant.so"),
            d.plugins.path().display()
        )
    );
}

#[test]
fn plugin_file_writable_by_group_is_refused() {
    let d = dirs();
    let lib = variant(d.plugins.path(), "libvariant.so", &[]);
    chmod(&lib, 0o775);
    let e = refused(&d, "variant", "libvariant.so");
    assert!(
        e.contains("refused: its file is writable by group or others\n"),
        "{e}"
    );
    assert!(
        e.ends_with(&format!(
            "DETAIL: file {} mode: expected no group/other write bits, found 0775",
            lib.display()
        )),
        "{e}"
    );
}

#[test]
fn plugin_file_owned_by_someone_else_is_refused() {
    let d = dirs();
    let lib = variant(d.plugins.path(), "libvariant.so", &[]);
    if nix::unistd::geteuid().is_root() {
        std::os::unix::fs::chown(&lib, Some(4242), None).expect("chown");
    } else if std::fs::metadata(&lib).map(|m| m.uid()).ok() == Some(nix::unistd::geteuid().as_raw())
    {
        // An unprivileged user cannot give a file away; nothing to test.
        return;
    }
    let e = refused(&d, "variant", "libvariant.so");
    assert!(
        e.contains("refused: its file is owned by another user\n"),
        "{e}"
    );
    assert!(e.contains("owner: expected uid 0 (root)"), "{e}");
    assert!(e.ends_with("found uid 4242"), "{e}");
}

#[test]
fn plugin_without_the_entry_symbol_is_refused() {
    let d = dirs();
    variant(d.plugins.path(), "libvariant.so", &["V_NO_ENTRY"]);
    let e = refused(&d, "variant", "libvariant.so");
    let head = format!(
        "plugin \"variant\" ({}) refused: the entry point is missing\n  DETAIL: dlsym failed: ",
        path(&d, "libvariant.so")
    );
    assert!(e.starts_with(&head), "{e}");
    assert!(e.contains("undefined symbol: sockd_plugin_entry"), "{e}");
    assert!(
        !e.contains("plugin-cache"),
        "the private copy's name leaks into: {e}"
    );
}

#[test]
fn plugin_that_is_not_a_library_is_refused() {
    let d = dirs();
    std::fs::write(d.plugins.path().join("libjunk.so"), b"not an ELF file").expect("write");
    let e = refused(&d, "junk", "libjunk.so");
    assert!(
        e.contains("refused: cannot load the library\n  DETAIL: dlopen failed: "),
        "{e}"
    );
    assert!(!e.contains("plugin-cache"), "{e}");
}

#[test]
fn plugin_with_bad_magic_is_refused() {
    let d = dirs();
    variant(d.plugins.path(), "libvariant.so", &["V_MAGIC=0x1234"]);
    let e = refused(&d, "variant", "libvariant.so");
    assert_eq!(
        e,
        format!(
            "plugin \"variant\" ({}) refused: not a sockd plugin descriptor (bad magic)\n  \
             DETAIL: field magic: expected 0x314c50444b434f53, found 0x0000000000001234",
            path(&d, "libvariant.so")
        )
    );
}

#[test]
fn plugin_for_abi_major_2_is_refused() {
    let d = dirs();
    variant(
        d.plugins.path(),
        "libsockd_exec.so",
        &["V_MAJOR=2", "V_NAME=\"exec\""],
    );
    let e = refused(&d, "exec", "libsockd_exec.so");
    assert_eq!(
        e,
        format!(
            "plugin \"exec\" ({}) refused: ABI major version mismatch\n  DETAIL: field abi_major: expected 1, found 2",
            path(&d, "libsockd_exec.so")
        )
    );
}

#[test]
fn plugin_with_a_short_descriptor_is_refused() {
    let d = dirs();
    variant(d.plugins.path(), "libvariant.so", &["V_SIZE=16"]);
    let e = refused(&d, "variant", "libvariant.so");
    let size = size_of::<sockd_plugin::sys::SockdPlugin>();
    assert!(
        e.ends_with(&format!(
            "DETAIL: field size: expected at least {size} for ABI 1.{}, found 16",
            sockd_plugin::sys::SOCKD_ABI_MINOR
        )),
        "{e}"
    );
}

#[test]
fn plugin_claiming_a_minor_its_size_does_not_cover_is_refused() {
    // A 1.2 descriptor cut short at the 1.1 size: on_input would be read
    // past its end.
    let d = dirs();
    variant(
        d.plugins.path(),
        "libvariant.so",
        &["V_MINOR=2", "V_SIZE=SOCKD_PLUGIN_SIZE_1_1"],
    );
    let e = refused(&d, "variant", "libvariant.so");
    let (need, found) = (
        size_of::<sockd_plugin::sys::SockdPlugin>(),
        sockd_plugin::sys::SOCKD_PLUGIN_SIZE_1_1,
    );
    assert!(
        e.ends_with(&format!(
            "DETAIL: field size: expected at least {need} for ABI 1.2, found {found}"
        )),
        "{e}"
    );
}

#[test]
fn plugin_whose_name_differs_from_its_table_is_refused() {
    let d = dirs();
    variant(d.plugins.path(), "libvariant.so", &["V_NAME=\"other\""]);
    let e = refused(&d, "variant", "libvariant.so");
    assert_eq!(
        e,
        format!(
            "plugin \"variant\" ({}) refused: the library's name differs from its [plugins] table\n  \
             DETAIL: field name: expected \"variant\", found \"other\"",
            path(&d, "libvariant.so")
        )
    );
}

#[test]
fn plugin_with_an_invalid_name_is_refused() {
    let d = dirs();
    variant(d.plugins.path(), "libvariant.so", &["V_NAME=\"Bad Name\""]);
    let e = refused(&d, "variant", "libvariant.so");
    assert!(
        e.ends_with("DETAIL: field name: expected [a-z0-9_-]{1,32}, found \"Bad Name\""),
        "{e}"
    );
}

#[test]
fn plugin_without_commands_is_refused() {
    let d = dirs();
    variant(d.plugins.path(), "libvariant.so", &["V_NO_COMMANDS"]);
    let e = refused(&d, "variant", "libvariant.so");
    assert!(e.ends_with("refused: no commands\n  DETAIL: field commands: expected at least one command, found an empty list"), "{e}");
}

#[test]
fn plugin_with_an_invalid_command_name_is_refused() {
    let d = dirs();
    variant(
        d.plugins.path(),
        "libvariant.so",
        &["V_COMMAND=\"no spaces\""],
    );
    let e = refused(&d, "variant", "libvariant.so");
    assert!(
        e.ends_with("DETAIL: field commands[0]: expected [a-z0-9_-]{1,32}, found \"no spaces\""),
        "{e}"
    );
}

#[test]
fn plugin_without_handle_is_refused() {
    let d = dirs();
    variant(d.plugins.path(), "libvariant.so", &["V_NULL_HANDLE"]);
    let e = refused(&d, "variant", "libvariant.so");
    assert!(
        e.ends_with(
            "refused: missing function\n  DETAIL: field handle: expected a function, found NULL"
        ),
        "{e}"
    );
}

#[test]
fn plugin_whose_init_fails_is_refused() {
    let d = dirs();
    variant(d.plugins.path(), "libvariant.so", &["V_INIT_RESULT=13"]);
    let e = refused(&d, "variant", "libvariant.so");
    assert!(
        e.ends_with(
            "refused: init failed with code 13\n  DETAIL: init returned 13 (already_exists)"
        ),
        "{e}"
    );
}

#[test]
fn plugin_command_served_twice_is_refused() {
    let d = dirs();
    variant(
        d.plugins.path(),
        "libalpha.so",
        &["V_NAME=\"alpha\"", "V_COMMAND=\"shared\""],
    );
    variant(
        d.plugins.path(),
        "libbeta.so",
        &["V_NAME=\"beta\"", "V_COMMAND=\"shared\""],
    );
    let cfg = config(
        d.plugins.path(),
        OnPluginError::Refuse,
        &[("alpha", "libalpha.so", ""), ("beta", "libbeta.so", "")],
    );
    let e = PluginHost::load(&cfg, d.state.path())
        .err()
        .expect("beta must be refused");
    assert_eq!(
        e,
        format!(
            "plugin \"beta\" ({}) refused: command `shared` is already served by plugin \"alpha\"\n  \
             DETAIL: field commands: expected commands no other plugin serves, found \"shared\"",
            path(&d, "libbeta.so")
        )
    );
}

#[test]
fn plugin_upper_loads_and_serves_its_command() {
    let d = dirs();
    upper(d.plugins.path());
    let cfg = config(
        d.plugins.path(),
        OnPluginError::Refuse,
        &[("upper", "libsockd_upper.so", "")],
    );
    let host = PluginHost::load(&cfg, d.state.path()).expect("upper loads");
    assert_eq!(host.plugin_for("upper").as_deref(), Some("upper"));
    assert_eq!(host.plugin_for("lower"), None);
    let list = host.list();
    assert_eq!(list.len(), 1);
    let info = &list[0];
    assert_eq!(
        (info.name.as_str(), info.version.as_str(), info.abi.as_str()),
        ("upper", "1.0.0", "1.2")
    );
    assert_eq!(
        (info.state.as_str(), info.builds, info.commands.clone()),
        ("loaded", 1, vec!["upper".to_string()])
    );
    assert_eq!(info.file, path(&d, "libsockd_upper.so"));
    assert_eq!(info.error, None);

    // The private copy is gone once loaded; its directory is private.
    let cache = d.state.path().join("plugin-cache");
    assert_eq!(std::fs::read_dir(&cache).expect("cache dir").count(), 0);
    assert_eq!(
        std::fs::metadata(&cache).expect("cache dir").mode() & 0o777,
        0o700
    );
    host.shutdown();
}

#[test]
fn plugin_absolute_file_path_is_allowed() {
    let d = dirs();
    let lib = upper(d.plugins.path());
    let elsewhere = tempfile::tempdir().expect("tempdir");
    let cfg = config(
        elsewhere.path(),
        OnPluginError::Refuse,
        &[("upper", lib.to_str().expect("UTF-8 path"), "")],
    );
    let host = PluginHost::load(&cfg, d.state.path()).expect("upper loads by absolute path");
    assert_eq!(host.list()[0].file, lib.display().to_string());
}

#[test]
fn plugin_on_error_skip_keeps_a_failed_entry() {
    let d = dirs();
    upper(d.plugins.path());
    variant(
        d.plugins.path(),
        "libexec.so",
        &["V_MAJOR=2", "V_NAME=\"exec\""],
    );
    let cfg = config(
        d.plugins.path(),
        OnPluginError::Skip,
        &[
            ("exec", "libexec.so", ""),
            ("missing", "libmissing.so", ""),
            ("upper", "libsockd_upper.so", ""),
        ],
    );
    let host = PluginHost::load(&cfg, d.state.path()).expect("skip never fails the load");
    assert_eq!(host.plugin_for("upper").as_deref(), Some("upper"));
    let list = host.list();
    let states: Vec<(&str, &str)> = list
        .iter()
        .map(|p| (p.name.as_str(), p.state.as_str()))
        .collect();
    assert_eq!(
        states,
        [
            ("exec", "failed"),
            ("missing", "failed"),
            ("upper", "loaded")
        ]
    );
    let exec = &list[0];
    assert_eq!(
        exec.error.as_deref(),
        Some(
            format!(
                "plugin \"exec\" ({}) refused: ABI major version mismatch\n  DETAIL: field abi_major: expected 1, found 2",
                path(&d, "libexec.so")
            )
            .as_str()
        )
    );
    assert_eq!(
        (exec.builds, exec.version.as_str(), exec.commands.len()),
        (0, "", 0)
    );
    assert!(
        list[1]
            .error
            .as_deref()
            .is_some_and(|e| e.contains("cannot open the file"))
    );

    // The same config with on_error = refuse does not start.
    let refuse = config(
        d.plugins.path(),
        OnPluginError::Refuse,
        &[
            ("exec", "libexec.so", ""),
            ("upper", "libsockd_upper.so", ""),
        ],
    );
    assert!(
        PluginHost::load(&refuse, d.state.path())
            .err()
            .is_some_and(|e| e.contains("ABI major version mismatch"))
    );
}

#[test]
fn plugin_with_an_inline_command_it_does_not_serve_is_refused() {
    let d = dirs();
    variant(d.plugins.path(), "libvariant.so", &["V_INLINE=\"other\""]);
    let e = refused(&d, "variant", "libvariant.so");
    assert_eq!(
        e,
        format!(
            "plugin \"variant\" ({}) refused: inline command not among the plugin's commands\n  DETAIL: field inline_commands[0]: expected one of the names in commands, found \"other\"",
            path(&d, "libvariant.so")
        )
    );
}
