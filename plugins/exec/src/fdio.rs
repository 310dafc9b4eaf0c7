//! Small helpers over raw file descriptors: non-blocking mode, reads that
//! another thread can interrupt, and writes that give up when told to.

use nix::libc;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

pub fn set_nonblocking(fd: BorrowedFd<'_>) -> io::Result<()> {
    let raw = fd.as_raw_fd();
    // SAFETY: plain fcntl calls on a descriptor we borrow.
    unsafe {
        let flags = libc::fcntl(raw, libc::F_GETFL);
        if flags < 0 || libc::fcntl(raw, libc::F_SETFL, flags | libc::O_NONBLOCK) < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Wakes threads blocked in [`read`] on other descriptors: a pipe that
/// becomes readable once [`Waker::wake`] is called, plus a flag.
pub struct Waker {
    read: OwnedFd,
    write: OwnedFd,
    woken: AtomicBool,
}

impl Waker {
    pub fn new() -> io::Result<Waker> {
        let mut fds = [0 as RawFd; 2];
        // SAFETY: fds is a valid out-array of two ints.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC | libc::O_NONBLOCK) } < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: pipe2 just created both descriptors; we own them.
        let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        Ok(Waker {
            read,
            write,
            woken: AtomicBool::new(false),
        })
    }

    pub fn wake(&self) {
        self.woken.store(true, Ordering::SeqCst);
        // SAFETY: writes one byte from a valid buffer to our own pipe.
        unsafe { libc::write(self.write.as_raw_fd(), b"x".as_ptr().cast(), 1) };
    }

    pub fn is_woken(&self) -> bool {
        self.woken.load(Ordering::SeqCst)
    }
}

/// What [`read`] got.
#[derive(Debug, PartialEq, Eq)]
pub enum Read {
    Data(usize),
    /// End of file (a pipe with no writer left; a pty whose slave side is
    /// closed everywhere reports EIO, which counts as the end too).
    Eof,
    /// The waker was woken.
    Stopped,
}

/// Reads from the non-blocking `fd`, waiting for data or for `waker`.
pub fn read(fd: BorrowedFd<'_>, buf: &mut [u8], waker: &Waker) -> io::Result<Read> {
    loop {
        if waker.is_woken() {
            return Ok(Read::Stopped);
        }
        // SAFETY: buf is valid for writes of buf.len() bytes.
        let n = unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        if n > 0 {
            return Ok(Read::Data(n as usize));
        }
        if n == 0 {
            return Ok(Read::Eof);
        }
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::EINTR) => continue,
            Some(libc::EIO) => return Ok(Read::Eof),
            Some(libc::EAGAIN) => {
                poll(
                    &[
                        (fd.as_raw_fd(), libc::POLLIN),
                        (waker.read.as_raw_fd(), libc::POLLIN),
                    ],
                    None,
                )?;
            }
            _ => return Err(e),
        }
    }
}

/// Writes all of `data` to the non-blocking `fd`, waiting while it is full.
/// Returns `Ok(false)` if `stop()` became true first.
pub fn write_all(fd: BorrowedFd<'_>, mut data: &[u8], stop: impl Fn() -> bool) -> io::Result<bool> {
    while !data.is_empty() {
        // SAFETY: data is valid for reads of data.len() bytes.
        let n = unsafe { libc::write(fd.as_raw_fd(), data.as_ptr().cast(), data.len()) };
        if n >= 0 {
            data = &data[n as usize..];
            continue;
        }
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::EINTR) => {}
            Some(libc::EAGAIN) => {
                if stop() {
                    return Ok(false);
                }
                // Wake up now and then to notice `stop`.
                poll(
                    &[(fd.as_raw_fd(), libc::POLLOUT)],
                    Some(Duration::from_millis(100)),
                )?;
            }
            _ => return Err(e),
        }
    }
    Ok(true)
}

fn poll(fds: &[(RawFd, libc::c_short)], timeout: Option<Duration>) -> io::Result<()> {
    let mut pfds: Vec<libc::pollfd> = fds
        .iter()
        .map(|&(fd, events)| libc::pollfd {
            fd,
            events,
            revents: 0,
        })
        .collect();
    let ms = timeout.map_or(-1, |t| t.as_millis().min(i32::MAX as u128) as libc::c_int);
    // SAFETY: pfds is a valid array of pfds.len() pollfd structs.
    let r = unsafe { libc::poll(pfds.as_mut_ptr(), pfds.len() as libc::nfds_t, ms) };
    if r < 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EINTR) {
            return Err(e);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    fn pipe() -> (OwnedFd, OwnedFd) {
        let (r, w) = std::io::pipe().unwrap();
        let (r, w): (OwnedFd, OwnedFd) = (r.into(), w.into());
        set_nonblocking(r.as_fd()).unwrap();
        set_nonblocking(w.as_fd()).unwrap();
        (r, w)
    }

    #[test]
    fn read_returns_data_eof_or_stops_when_woken() {
        let (r, w) = pipe();
        let waker = std::sync::Arc::new(Waker::new().unwrap());
        assert!(write_all(w.as_fd(), b"hello", || false).unwrap());
        let mut buf = [0u8; 16];
        assert_eq!(read(r.as_fd(), &mut buf, &waker).unwrap(), Read::Data(5));
        let w2 = waker.clone();
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            w2.wake();
        });
        assert_eq!(read(r.as_fd(), &mut buf, &waker).unwrap(), Read::Stopped);
        t.join().unwrap();
        drop(w);
        let fresh = Waker::new().unwrap();
        assert_eq!(read(r.as_fd(), &mut buf, &fresh).unwrap(), Read::Eof);
    }

    #[test]
    fn write_gives_up_when_stopped() {
        let (_r, w) = pipe();
        let big = vec![0u8; 4 << 20];
        let stop = AtomicBool::new(false);
        let t0 = std::time::Instant::now();
        std::thread::scope(|s| {
            s.spawn(|| {
                std::thread::sleep(Duration::from_millis(100));
                stop.store(true, Ordering::SeqCst);
            });
            assert!(!write_all(w.as_fd(), &big, || stop.load(Ordering::SeqCst)).unwrap());
        });
        assert!(t0.elapsed() < Duration::from_secs(2));
    }
}
