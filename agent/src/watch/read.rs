//! Looking at one file: a cheap stat signature, and a full read into a `FileState`.

use std::fs::{File, Metadata, OpenOptions};
use std::io::{self, Read as _};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use driftwatch_formats::{FileError, FileStatus, Format, Limits, Masker};
use driftwatch_proto::v1::FileState;

/// Chunk size for hashing files too large to parse.
const CHUNK: usize = 64 * 1024;
/// A file that grew past the cap while being read is hashed up to this much further.
const GROWTH_CAP: u64 = 64 * 1024 * 1024;

/// What identifies a file's content and metadata without reading it. Equal signatures
/// mean "nothing to re-read" (unless the read was racy, see [`is_racy`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Sig {
    dev: u64,
    ino: u64,
    size: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
    mode: u32,
    uid: u32,
    gid: u32,
    /// The holding directory's st_mode ([`dir_mode`]): a chmod of the directory alone
    /// must still make the file's state change.
    dir_mode: u32,
}

impl Sig {
    pub fn of(m: &Metadata, dir_mode: u32) -> Self {
        Self {
            dev: m.dev(),
            ino: m.ino(),
            size: m.size(),
            mtime: (m.mtime(), m.mtime_nsec()),
            ctime: (m.ctime(), m.ctime_nsec()),
            mode: m.mode(),
            uid: m.uid(),
            gid: m.gid(),
            dir_mode,
        }
    }
}

/// st_mode of the directory that holds `path`, following symlinks as the file's own
/// metadata does: for a symlinked file, the directory of its target. 0 when unknown.
pub(crate) fn dir_mode(path: &Path, link: bool) -> u32 {
    let meta = if link {
        std::fs::canonicalize(path).ok().and_then(|real| std::fs::metadata(real.parent()?).ok())
    } else {
        // stat follows a symlinked parent to the same directory canonicalize would give.
        path.parent().and_then(|d| std::fs::metadata(d).ok())
    };
    meta.filter(Metadata::is_dir).map_or(0, |m| m.mode())
}

/// Whether the file changed so recently that a further change within the same
/// timestamp tick could leave an identical signature: then do not trust the signature
/// and read again at the next look.
pub(crate) fn is_racy(sig: &Sig, window: Duration) -> bool {
    let ns = |(s, n): (i64, i64)| i128::from(s) * 1_000_000_000 + i128::from(n);
    let changed = ns(sig.mtime).max(ns(sig.ctime));
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as i128).unwrap_or(0);
    now - changed < window.as_nanos() as i128
}

/// The result of a cheap look (lstat, and stat through a symlink).
pub(crate) enum Probe {
    Missing,
    /// A directory, FIFO, socket or device: not a config file.
    NotFile {
        dir: bool,
    },
    /// Cannot even stat it (symlink loop, permission denied on a directory).
    Failed {
        error: io::Error,
        exists: bool,
    },
    File {
        meta: Metadata,
        link: bool,
    },
}

fn is_missing(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::NotFound || e.raw_os_error() == Some(libc::ENOTDIR)
}

pub(crate) fn probe(path: &Path) -> Probe {
    let lmeta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if is_missing(&e) => return Probe::Missing,
        Err(error) => return Probe::Failed { error, exists: false },
    };
    let (meta, link) = if lmeta.file_type().is_symlink() {
        match std::fs::metadata(path) {
            Ok(m) => (m, true),
            Err(e) if is_missing(&e) => return Probe::Missing, // dangling
            Err(error) => return Probe::Failed { error, exists: true },
        }
    } else {
        (lmeta, false)
    };
    if meta.is_dir() {
        Probe::NotFile { dir: true }
    } else if !meta.is_file() {
        Probe::NotFile { dir: false }
    } else {
        Probe::File { meta, link }
    }
}

/// The result of a full read.
pub(crate) enum Read {
    Done { state: Box<FileState>, sig: Sig },
    Missing,
    NotFile,
    Failed(io::Error),
}

pub(crate) fn base_state(path: &Path, format: Format) -> FileState {
    FileState { path: path.to_string_lossy().into_owned(), format: format as i32, ..Default::default() }
}

pub(crate) fn missing_state(path: &Path, format: Format) -> FileState {
    FileState { status: FileStatus::Missing as i32, exists: false, ..base_state(path, format) }
}

pub(crate) fn unreadable_state(path: &Path, format: Format, message: String, meta: Option<&Metadata>) -> FileState {
    let mut s = base_state(path, format);
    if let Some(m) = meta {
        set_meta(&mut s, m);
    }
    s.status = FileStatus::Unreadable as i32;
    s.exists = true;
    s.error = Some(FileError { message, line: 0, column: 0 });
    s
}

fn set_meta(s: &mut FileState, m: &Metadata) {
    s.size = m.size();
    s.mode = m.mode();
    s.uid = m.uid();
    s.gid = m.gid();
    s.modified_at = m.modified().ok().map(driftwatch_proto::timestamp);
}

/// Open (following symlinks), fstat, and read: parse up to the size cap, stream-hash beyond.
/// `dir_mode` is the caller's [`dir_mode`] of `path`, taken before the read so the state
/// and the signature agree on it.
pub(crate) fn read(path: &Path, format: Format, dir_mode: u32, masker: &Masker, limits: &Limits) -> Read {
    // O_NONBLOCK: a FIFO that replaced the file since the probe must not block us.
    let file = match OpenOptions::new().read(true).custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY).open(path) {
        Ok(f) => f,
        Err(e) if is_missing(&e) => return Read::Missing,
        Err(e) => return Read::Failed(e),
    };
    let meta = match file.metadata() {
        Ok(m) => m,
        Err(e) => return Read::Failed(e),
    };
    if !meta.is_file() {
        return Read::NotFile;
    }
    let mut state = base_state(path, format);
    set_meta(&mut state, &meta);
    state.dir_mode = dir_mode;
    state.exists = true;
    let max = limits.max_file_bytes;
    let result = if meta.size() > max {
        hash_stream(&file, masker, &[], meta.size()).map(|(n, hash)| too_large(&mut state, n, hash))
    } else {
        let mut buf = Vec::with_capacity(meta.size().min(max) as usize + 1);
        match (&file).take(max + 1).read_to_end(&mut buf) {
            // Grew past the cap while we read: hash what is there instead.
            Ok(_) if buf.len() as u64 > max => {
                hash_stream(&file, masker, &buf, GROWTH_CAP).map(|(n, hash)| too_large(&mut state, n, hash))
            }
            Ok(_) => {
                let a = driftwatch_formats::analyze(&buf, format, masker, limits);
                state.size = buf.len() as u64;
                state.status = a.status as i32;
                state.error = a.error;
                state.keys = a.keys;
                state.content_hash = a.content_hash;
                Ok(())
            }
            Err(e) => Err(e),
        }
    };
    match result {
        Ok(()) => Read::Done { state: Box::new(state), sig: Sig::of(&meta, dir_mode) },
        Err(e) => Read::Failed(e),
    }
}

fn too_large(state: &mut FileState, size: u64, hash: String) {
    state.status = FileStatus::TooLarge as i32;
    state.size = size;
    state.content_hash = hash;
}

/// Keyed hash of `head` followed by at most `limit` more bytes of `file`, in fixed chunks.
fn hash_stream(mut file: &File, masker: &Masker, head: &[u8], limit: u64) -> io::Result<(u64, String)> {
    let mut hasher = masker.content_hasher();
    hasher.update(head);
    let mut total = head.len() as u64;
    let mut left = limit;
    let mut chunk = vec![0u8; CHUNK];
    while left > 0 {
        let want = (CHUNK as u64).min(left) as usize;
        let n = match file.read(&mut chunk[..want]) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        hasher.update(&chunk[..n]);
        total += n as u64;
        left -= n as u64;
    }
    Ok((total, hasher.finish()))
}
