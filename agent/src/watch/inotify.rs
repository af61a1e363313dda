//! inotify (Linux) through the `inotify` crate: directory watches with exactly the
//! events we need, and a wait on the inotify descriptor plus a stop pipe.
//!
//! Deliberately not `IN_OPEN`/`IN_ACCESS`/`IN_CLOSE_NOWRITE`: every process on the host
//! opens files in `/etc`, and those events would wake the agent for nothing. This is
//! why the watcher does not use the `notify` crate: its inotify backend (notify 8)
//! always adds `IN_OPEN` to every watch, so watching `/etc` would wake the agent on
//! every file open by any process on the host.

use std::ffi::OsStr;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::time::Duration;

use ::inotify::{Event, EventMask, Inotify, WatchMask};

/// Events on a watched directory and its direct entries (following a symlink to the
/// directory; only directories). `ATTRIB` on the directory itself (a chmod) comes with
/// no name and re-checks its files: their `dir_mode` changed.
pub(crate) const DIR_MASK: WatchMask = WatchMask::MODIFY
    .union(WatchMask::ATTRIB)
    .union(WatchMask::CLOSE_WRITE)
    .union(WatchMask::MOVED_FROM)
    .union(WatchMask::MOVED_TO)
    .union(WatchMask::CREATE)
    .union(WatchMask::DELETE)
    .union(WatchMask::DELETE_SELF)
    .union(WatchMask::MOVE_SELF)
    .union(WatchMask::ONLYDIR)
    .union(WatchMask::EXCL_UNLINK);

/// The watched directory itself went away (or its watch did).
pub(crate) const GONE: EventMask =
    EventMask::DELETE_SELF.union(EventMask::MOVE_SELF).union(EventMask::IGNORED).union(EventMask::UNMOUNT);

/// Read every queued event into `f`. Returns the number of events.
pub(crate) fn drain(ino: &mut Inotify, buf: &mut [u8], mut f: impl FnMut(Event<&OsStr>)) -> io::Result<usize> {
    let mut count = 0;
    loop {
        match ino.read_events(buf) {
            Ok(events) => {
                for ev in events {
                    f(ev);
                    count += 1;
                }
            }
            // The descriptor is non-blocking: the queue is empty. (The crate reports a
            // zero-length read, which inotify never does, as `UnexpectedEof`.)
            Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::UnexpectedEof) => {
                return Ok(count);
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

pub(crate) enum Wake {
    Ready,
    Timeout,
    Stop,
}

/// Wait until inotify has events, `stop` is readable or closed, or `timeout` passes.
///
/// The `inotify` crate (without its tokio `stream` feature) only offers a blocking read
/// with no timeout and no way to interrupt it, so this is a plain `poll(2)` on both
/// descriptors.
pub(crate) fn wait(ino: BorrowedFd<'_>, stop: BorrowedFd<'_>, timeout: Duration) -> Wake {
    let mut fds = [
        libc::pollfd { fd: ino.as_raw_fd(), events: libc::POLLIN, revents: 0 },
        libc::pollfd { fd: stop.as_raw_fd(), events: libc::POLLIN, revents: 0 },
    ];
    // Round up so a sub-millisecond wait does not spin.
    let ms = timeout.as_micros().div_ceil(1000).min(i32::MAX as u128) as i32;
    // SAFETY: `fds` is a valid array of two pollfd whose descriptors are borrowed, hence
    // open, for the duration of the call.
    let r = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, ms) };
    if r < 0 {
        return Wake::Timeout; // EINTR: the caller recomputes its deadline
    }
    if fds[1].revents != 0 {
        return Wake::Stop;
    }
    if fds[0].revents & (libc::POLLERR | libc::POLLNVAL) != 0 {
        return Wake::Stop;
    }
    if fds[0].revents != 0 { Wake::Ready } else { Wake::Timeout }
}
