//! Fuzz target `jail_resolve`: remote path resolution, `JailPath::resolve`
//! (plugins/files/src/jail.rs). No input may resolve outside the home.
//!
//! Input: byte 0 is the length of the working directory's text (as set by
//! an earlier `cd`), then that text, then the path the client names.
//!
//! Checks, for every accepted path: its components are plain names (no
//! empty, `.` or `..` part, no `/`, no control character, at most 255
//! bytes, not a name reserved for partial uploads); joined under any
//! directory it stays beneath it (`std::path` agrees); the home contains
//! it; a relative path without `..` stays inside the working directory;
//! resolving its displayed form again gives the same path. Paths with a
//! control character (NUL included), empty or longer than 4095 bytes are
//! refused.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sockd_files::jail::{JailPath, MAX_NAME, MAX_PATH, is_reserved};
use std::path::{Component, Path};

fn check_resolved(cwd: &JailPath, input: &str, path: &JailPath) {
    let relative = path.relative();
    if path.is_root() {
        assert_eq!(relative, ".");
        assert_eq!(path.to_string(), "/");
    } else {
        for part in relative.split('/') {
            assert!(!part.is_empty() && part != "." && part != "..", "{part:?}");
            assert!(part.len() <= MAX_NAME);
            assert!(!part.chars().any(char::is_control));
            assert!(!is_reserved(part), "{part:?}");
        }
        assert_eq!(path.to_string(), format!("/{relative}"));
    }
    let jail = Path::new("/srv/home/user");
    let joined = jail.join(&relative);
    assert!(joined.starts_with(jail), "{} escapes", joined.display());
    assert!(
        joined.components().all(|c| matches!(
            c,
            Component::RootDir | Component::Normal(_) | Component::CurDir
        )),
        "{}",
        joined.display()
    );
    assert!(JailPath::root().contains(path));
    let climbs = input.split('/').any(|part| part == "..");
    if !input.starts_with('/') && !climbs {
        assert!(cwd.contains(path), "{cwd} does not contain {path}");
    }
    let again = JailPath::resolve(&JailPath::root(), &path.to_string());
    assert_eq!(again.as_ref().ok(), Some(path));
    assert_eq!(
        JailPath::resolve(cwd, &path.to_string()).ok().as_ref(),
        Some(path)
    );
}

fuzz_target!(|data: &[u8]| {
    let Some((&cwd_len, rest)) = data.split_first() else {
        return;
    };
    let (cwd_text, input) = rest.split_at((cwd_len as usize).min(rest.len()));
    let (Ok(cwd_text), Ok(input)) = (std::str::from_utf8(cwd_text), std::str::from_utf8(input))
    else {
        return;
    };
    let cwd = JailPath::resolve(&JailPath::root(), cwd_text).unwrap_or_default();
    match JailPath::resolve(&cwd, input) {
        Ok(path) => {
            assert!(!input.is_empty() && input.len() <= MAX_PATH);
            assert!(!input.contains('\0'));
            assert!(!input.chars().any(char::is_control));
            check_resolved(&cwd, input, &path);
        }
        Err(f) => assert!(!f.message.is_empty()),
    }
});
