//! Fuzz target `control`: the control-socket request parser, as
//! daemon/src/control.rs runs it on a line (proto/src/control.rs types),
//! and the response parser sockctl runs on the daemon's answer.
//!
//! Input: one line as read from the socket. Checks: no panic; a parsed
//! request serializes back to an equal request; a `user_add` credential
//! that the daemon accepts survives its round trip through the users
//! file's record form.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sockd::users::{record_to_credential, valid_user_name};
use sockd_proto::control::{CredentialRecord, Request, Response};

fuzz_target!(|data: &[u8]| {
    // The daemon reads the line into a String: anything else is refused.
    let Ok(line) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(request) = serde_json::from_str::<Request>(line) {
        let text = serde_json::to_string(&request).expect("a request serializes");
        assert_eq!(
            serde_json::from_str::<Request>(&text).ok(),
            Some(request.clone())
        );
        if let Request::UserAdd {
            name, credential, ..
        } = &request
        {
            let _ = valid_user_name(name);
            if let Ok(stored) = record_to_credential(credential) {
                let back = record_to_credential(&CredentialRecord::from(&stored));
                assert_eq!(back, Ok(stored));
            }
        }
    }
    let _ = serde_json::from_str::<Response>(line);
});
