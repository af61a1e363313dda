//! The spool's file calls that can fail in ways an ordinary disk rarely shows: a
//! record write that stops part-way, a failed `sync_data`, a rollback that cannot
//! truncate, a `meta` write or rename that fails. Unit tests arm failpoints for them
//! (per thread, so parallel tests do not see each other's); outside tests these are
//! the plain calls and cost nothing.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;

/// Write all of `buf` at `offset` (a record).
pub fn write_at(file: &File, buf: &[u8], offset: u64) -> io::Result<()> {
    #[cfg(test)]
    if let Some(a) = armed::take(Point::Write) {
        // A write that fails never wrote the whole buffer (the failing call wrote nothing).
        let n = a.after_bytes.min(buf.len().saturating_sub(1));
        file.write_all_at(&buf[..n], offset)?;
        return Err(io::Error::from_raw_os_error(a.errno));
    }
    file.write_all_at(buf, offset)
}

/// `fdatasync` of a record (or of its rollback).
pub fn sync_data(file: &File) -> io::Result<()> {
    #[cfg(test)]
    if let Some(a) = armed::take(Point::SyncData) {
        return Err(io::Error::from_raw_os_error(a.errno));
    }
    file.sync_data()
}

/// Truncate a segment back to where a failed record began.
pub fn set_len(file: &File, len: u64) -> io::Result<()> {
    #[cfg(test)]
    if let Some(a) = armed::take(Point::SetLen) {
        return Err(io::Error::from_raw_os_error(a.errno));
    }
    file.set_len(len)
}

/// Write the new `meta` into its temp file.
pub fn write_meta(file: &mut File, buf: &[u8]) -> io::Result<()> {
    #[cfg(test)]
    if let Some(a) = armed::take(Point::MetaWrite) {
        return Err(io::Error::from_raw_os_error(a.errno));
    }
    io::Write::write_all(file, buf)
}

/// Put the new `meta` in place.
pub fn rename(from: &Path, to: &Path) -> io::Result<()> {
    #[cfg(test)]
    if let Some(a) = armed::take(Point::Rename) {
        return Err(io::Error::from_raw_os_error(a.errno));
    }
    std::fs::rename(from, to)
}

#[cfg(test)]
pub use armed::{Point, arm, disarm};

#[cfg(test)]
mod armed {
    use std::cell::RefCell;

    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum Point {
        Write,
        SyncData,
        SetLen,
        MetaWrite,
        Rename,
    }

    #[derive(Debug, Clone, Copy)]
    pub struct Armed {
        pub point: Point,
        pub errno: i32,
        /// Write only: the bytes that reach the file before the error.
        pub after_bytes: usize,
        times: u32,
    }

    thread_local! {
        static ARMED: RefCell<Vec<Armed>> = const { RefCell::new(Vec::new()) };
    }

    /// The next `times` calls at `point` on this thread fail with `errno` (a write
    /// after writing `after_bytes` of its buffer).
    pub fn arm(point: Point, errno: i32, after_bytes: usize, times: u32) {
        ARMED.with(|a| a.borrow_mut().push(Armed { point, errno, after_bytes, times: times.max(1) }));
    }

    /// Forget every failpoint armed on this thread.
    pub fn disarm() {
        ARMED.with(|a| a.borrow_mut().clear());
    }

    pub(super) fn take(point: Point) -> Option<Armed> {
        ARMED.with(|a| {
            let mut a = a.borrow_mut();
            let i = a.iter().position(|x| x.point == point)?;
            let hit = a[i];
            a[i].times -= 1;
            if a[i].times == 0 {
                a.remove(i);
            }
            Some(hit)
        })
    }
}
