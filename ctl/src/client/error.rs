//! [`ClientError`]: every failure sockctl reports, as one line of text and
//! the exit status the process ends with.

use sockd_proto::ErrorCode;
use sockd_proto::code::exit;
use std::fmt;

/// A failure with a one-line, actionable message and an exit status.
///
/// Local failures use the `sockd_proto::code::exit` constants; failures
/// reported by the daemon carry its [`ErrorCode`] and use
/// [`ErrorCode::exit_status`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientError {
    status: u8,
    code: Option<ErrorCode>,
    message: String,
}

impl ClientError {
    /// A local failure with an explicit exit status.
    pub fn new(status: u8, message: impl Into<String>) -> Self {
        Self {
            status,
            code: None,
            message: one_line(message.into()),
        }
    }

    /// A failure the server reported with `code`.
    pub fn remote(code: ErrorCode, message: impl Into<String>) -> Self {
        let message = message.into();
        let message = if message.trim().is_empty() {
            code.description().to_string()
        } else {
            message
        };
        Self {
            status: code.exit_status(),
            code: Some(code),
            message: one_line(message),
        }
    }

    /// Anything else that went wrong locally (exit 1).
    pub fn failure(message: impl Into<String>) -> Self {
        Self::new(exit::FAILURE, message)
    }

    /// Bad usage not caught by the argument parser (exit 2).
    pub fn usage(message: impl Into<String>) -> Self {
        Self::new(exit::USAGE, message)
    }

    /// A configuration problem (exit 8).
    pub fn config(message: impl Into<String>) -> Self {
        Self::new(exit::CONFIG, message)
    }

    /// The server could not be reached (exit 3).
    pub fn connect(message: impl Into<String>) -> Self {
        Self::new(exit::CONNECT, message)
    }

    /// The peer broke the protocol (exit 9).
    pub fn protocol(message: impl Into<String>) -> Self {
        Self::new(exit::PROTOCOL, message)
    }

    /// The exit status sockctl ends with.
    pub fn status(&self) -> u8 {
        self.status
    }

    /// The server's code, for failures the server reported.
    pub fn code(&self) -> Option<ErrorCode> {
        self.code
    }

    /// The one-line message (without the `sockctl: ` prefix).
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for ClientError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for ClientError {}

/// Looks up an [`ErrorCode`] by its slug (`not_found`, ...), as the control
/// socket reports them. Unknown slugs give `None`.
pub fn code_from_slug(slug: &str) -> Option<ErrorCode> {
    ErrorCode::ALL.iter().copied().find(|c| c.slug() == slug)
}

/// Joins the lines of a message so the error stays on one line.
fn one_line(message: String) -> String {
    if !message.contains(['\n', '\r']) {
        return message;
    }
    message
        .split(['\n', '\r'])
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slugs_map_back_to_codes_and_exit_statuses() {
        for &code in ErrorCode::ALL {
            assert_eq!(code_from_slug(code.slug()), Some(code));
        }
        assert_eq!(code_from_slug("no_such_slug"), None);
        assert_eq!(
            code_from_slug("not_found").map(ErrorCode::exit_status),
            Some(12)
        );
        assert_eq!(
            code_from_slug("permission_denied").map(ErrorCode::exit_status),
            Some(11)
        );
    }

    #[test]
    fn remote_errors_use_the_code_exit_status() {
        let e = ClientError::remote(ErrorCode::QuotaExceeded, "");
        assert_eq!(e.status(), 15);
        assert_eq!(e.message(), "quota exceeded");
        assert_eq!(e.code(), Some(ErrorCode::QuotaExceeded));
        assert_eq!(ClientError::remote(ErrorCode::Cancelled, "x").status(), 130);
    }

    #[test]
    fn local_errors_use_exit_constants() {
        assert_eq!(ClientError::config("x").status(), exit::CONFIG);
        assert_eq!(ClientError::connect("x").status(), exit::CONNECT);
        assert_eq!(ClientError::protocol("x").status(), exit::PROTOCOL);
        assert_eq!(ClientError::usage("x").status(), exit::USAGE);
    }

    #[test]
    fn messages_are_one_line() {
        let e = ClientError::failure("first line\n  second\n");
        assert_eq!(e.message(), "first line; second");
    }
}
