//! `sockd-debug-hooks`: sockd itself, built only with the cargo feature
//! `debug-hooks` (see daemon/src/debug_hooks.rs) under its own name, so a
//! test build never replaces the real `sockd` in the target directory.

#[path = "../main.rs"]
mod sockd_main;

fn main() -> std::process::ExitCode {
    sockd_main::main()
}
