//! Status codes: one table used by the wire protocol (AUTH_FAIL, ERROR,
//! CLOSE), the plugin ABI (`SOCKD_E_*` in `sockd_plugin.h` has the same
//! numbers) and sockctl's exit statuses.

use std::fmt;

macro_rules! codes {
    ($( $name:ident = $num:literal, $slug:literal, $exit:literal, $text:literal; )*) => {
        /// A status code carried on the wire. Unknown numbers from a newer peer
        /// decode as [`ErrorCode::Other`] so they still produce a clear error.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum ErrorCode {
            $( $name, )*
            Other(u16),
        }

        impl ErrorCode {
            /// Every named code, in numeric order.
            pub const ALL: &'static [ErrorCode] = &[$( ErrorCode::$name, )*];

            pub fn from_u16(n: u16) -> Self {
                match n {
                    $( $num => Self::$name, )*
                    other => Self::Other(other),
                }
            }

            pub fn as_u16(self) -> u16 {
                match self {
                    $( Self::$name => $num, )*
                    Self::Other(n) => n,
                }
            }

            /// Stable snake_case name, used in JSON output and the docs.
            pub fn slug(self) -> &'static str {
                match self {
                    $( Self::$name => $slug, )*
                    Self::Other(_) => "other",
                }
            }

            /// sockctl's exit status when a command ends with this code.
            pub fn exit_status(self) -> u8 {
                match self {
                    $( Self::$name => $exit, )*
                    Self::Other(_) => 1,
                }
            }

            /// A short human description.
            pub fn description(self) -> &'static str {
                match self {
                    $( Self::$name => $text, )*
                    Self::Other(_) => "unknown error",
                }
            }
        }
    };
}

codes! {
    Ok = 0, "ok", 0, "success";
    Protocol = 1, "protocol", 9, "protocol violation";
    FrameTooLarge = 2, "frame_too_large", 9, "frame larger than the negotiated maximum";
    VersionMismatch = 3, "version_mismatch", 9, "no protocol version in common";
    AuthFailed = 4, "auth_failed", 5, "authentication failed";
    AuthTimeout = 5, "auth_timeout", 5, "authentication took too long";
    RateLimited = 6, "rate_limited", 19, "too many requests; slow down";
    NotAuthenticated = 7, "not_authenticated", 9, "only hello and authentication are allowed before login";
    Unavailable = 8, "unavailable", 10, "service unavailable";
    UnknownCommand = 9, "unknown_command", 10, "no plugin serves this command";
    BadRequest = 10, "bad_request", 23, "bad request";
    PermissionDenied = 11, "permission_denied", 11, "permission denied";
    NotFound = 12, "not_found", 12, "no such file, user or room";
    AlreadyExists = 13, "already_exists", 13, "already exists";
    NotADirectory = 14, "not_a_directory", 14, "not a directory";
    IsADirectory = 15, "is_a_directory", 14, "is a directory";
    QuotaExceeded = 16, "quota_exceeded", 15, "quota exceeded";
    NoSpace = 17, "no_space", 16, "no space left on the server's disk";
    NameTooLong = 18, "name_too_long", 17, "name too long";
    TooLarge = 19, "too_large", 18, "too large";
    Timeout = 20, "timeout", 20, "timed out";
    Cancelled = 21, "cancelled", 130, "cancelled";
    Busy = 22, "busy", 21, "too many concurrent operations";
    Internal = 23, "internal", 1, "internal server error";
    Conflict = 24, "conflict", 22, "conflict: the resource changed";
    Kicked = 25, "kicked", 1, "session closed by an administrator";
    IdleTimeout = 26, "idle_timeout", 1, "connection idle for too long";
    DirectoryNotEmpty = 27, "directory_not_empty", 14, "directory not empty";
    ShuttingDown = 28, "shutting_down", 10, "server is shutting down";
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.description())
    }
}

/// sockctl exit statuses for failures that happen before any remote code is
/// involved. Remote failures use [`ErrorCode::exit_status`].
pub mod exit {
    pub const OK: u8 = 0;
    pub const FAILURE: u8 = 1;
    pub const USAGE: u8 = 2;
    pub const CONNECT: u8 = 3;
    pub const UNTRUSTED_SERVER: u8 = 4;
    pub const AUTH_FAILED: u8 = 5;
    pub const SERVER_UNPROVEN: u8 = 6;
    pub const CONTROL_DENIED: u8 = 7;
    pub const CONFIG: u8 = 8;
    pub const PROTOCOL: u8 = 9;
    /// `sockctl exec`: the command ran past its time limit (as GNU timeout).
    pub const EXEC_TIMEOUT: u8 = 124;
    /// `sockctl exec`: policy denied the command (as a shell's "cannot execute").
    pub const EXEC_DENIED: u8 = 126;
    /// `sockctl exec`: no such program (as a shell's "command not found").
    pub const EXEC_NOT_FOUND: u8 = 127;
    /// `sockctl exec`: sockctl itself failed (as ssh).
    pub const EXEC_CLIENT_FAILURE: u8 = 255;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_round_trip_and_are_unique() {
        let mut seen = std::collections::HashSet::new();
        for &c in ErrorCode::ALL {
            assert!(seen.insert(c.as_u16()), "duplicate number for {c:?}");
            assert_eq!(ErrorCode::from_u16(c.as_u16()), c);
        }
        assert_eq!(ErrorCode::from_u16(999), ErrorCode::Other(999));
        assert_eq!(ErrorCode::Other(999).as_u16(), 999);
    }
}
