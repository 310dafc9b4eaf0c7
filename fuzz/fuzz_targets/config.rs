//! Fuzz target `config`: `Config::parse` (daemon/src/config.rs), which
//! turns sockd.toml text into a checked configuration, and the rendering
//! of each plugin's table into the TOML text the plugin is given.
//!
//! Input: the file's text. Checks: no panic; whatever is accepted obeys
//! the rules `validate` promises (limits in range, absolute paths, valid
//! plugin names); a plugin table that renders, renders the same again
//! after a parse (the plugin sees what the operator wrote).
#![no_main]

use libfuzzer_sys::fuzz_target;
use sockd::config::{Config, valid_plugin_name};
use sockd_proto::frame::MIN_MAX_FRAME;
use std::path::Path;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(config) = Config::parse(text, Path::new("/etc/sockd")) else {
        return;
    };
    let server = &config.server;
    assert!(!server.listen.is_empty());
    assert!((MIN_MAX_FRAME..=16 << 20).contains(&server.max_frame_size));
    assert!(server.window >= server.max_frame_size);
    assert!(server.max_connections > 0 && server.max_channels_per_connection > 0);
    assert!(config.auth.timeout_secs > 0 && config.auth.max_attempts > 0);
    assert!(config.auth.penalty_base_ms <= config.auth.penalty_max_ms);
    for path in [
        &server.state_dir,
        &config.tls.certificate,
        &config.tls.private_key,
        &config.control.socket,
        &config.plugins.dir,
    ] {
        assert!(path.is_absolute(), "{}", path.display());
    }
    assert!((1..=1000).contains(&config.plugins.quarantine_after));
    for (name, entry) in &config.plugins.entries {
        assert!(valid_plugin_name(name), "{name:?}");
        if let Ok(rendered) = toml::to_string(&entry.settings) {
            let table: toml::Table =
                toml::from_str(&rendered).expect("rendered settings parse again");
            assert_eq!(toml::to_string(&table).ok(), Some(rendered));
        }
    }
});
