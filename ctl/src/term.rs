//! The local terminal: raw mode for `sockctl exec -t` (restored when the
//! guard is dropped, on every exit path that unwinds or returns) and the
//! window size.

use nix::libc;
use nix::sys::termios::{self, SetArg, Termios};
use std::io::IsTerminal;
use std::os::fd::{AsRawFd, BorrowedFd};

/// The terminal in raw mode until this is dropped.
pub struct RawMode {
    fd: BorrowedFd<'static>,
    saved: Termios,
}

impl RawMode {
    /// Puts the terminal on `fd` in raw mode, like `ssh -t`: no echo, no
    /// line editing, no signals from ^C or ^Z, no output processing; every
    /// byte goes to the remote side.
    pub fn enable(fd: BorrowedFd<'static>) -> std::io::Result<RawMode> {
        let saved = termios::tcgetattr(fd)?;
        let mut raw = saved.clone();
        termios::cfmakeraw(&mut raw);
        termios::tcsetattr(fd, SetArg::TCSADRAIN, &raw)?;
        Ok(RawMode { fd, saved })
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        let _ = termios::tcsetattr(self.fd, SetArg::TCSADRAIN, &self.saved);
    }
}

/// The size (columns, rows) of the first of stdin, stdout, stderr that is
/// a terminal.
pub fn window_size() -> Option<(u16, u16)> {
    let fds = [
        std::io::stdin().as_raw_fd(),
        std::io::stdout().as_raw_fd(),
        std::io::stderr().as_raw_fd(),
    ];
    fds.into_iter().find_map(|fd| {
        let mut ws = libc::winsize {
            ws_row: 0,
            ws_col: 0,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: TIOCGWINSZ writes a winsize to a valid pointer; a
        // descriptor that is not a terminal makes it fail, nothing more.
        let ok = unsafe { libc::ioctl(fd, libc::TIOCGWINSZ, &mut ws) } == 0;
        (ok && ws.ws_col > 0 && ws.ws_row > 0).then_some((ws.ws_col, ws.ws_row))
    })
}

/// True if standard input is a terminal.
pub fn stdin_is_terminal() -> bool {
    std::io::stdin().is_terminal()
}
