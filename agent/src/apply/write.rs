//! Atomic replacement of one file: temp file next to it, write, fsync, owner and mode,
//! rename over the original, fsync the directory. The target path holds either the old
//! or the new content at every moment, never a partial file. Every step is relative to a
//! handle of the directory ([`atomic_write_at`]), and just before the rename the name must
//! still hold the file that was read (device and inode).
//!
//! Not kept: extended attributes, ACLs and SELinux labels of the original (the temp file
//! gets the directory's defaults).

use std::ffi::{OsStr, OsString};
use std::fs::{File, Metadata, Permissions};
use std::io::{self, Write as _};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use rustix::fs::{AtFlags, Mode, OFlags};
use rustix::io::Errno;

use super::resolve::{FileId, meta};

/// What marks our temp files: `.<name>.driftwatch-tmp-<16 hex>`.
pub const TEMP_MARK: &str = ".driftwatch-tmp-";
const TEMP_RANDOM_HEX: usize = 16;

/// The env var that turns on the crash-test fault points.
pub const FAULT_ENV: &str = "DRIFTWATCH_AGENT_FAULT";
/// Written to the state dir when a fault point is reached.
pub const FAULT_MARKER: &str = "fault-paused";

/// A temp file name for `name` in the same directory.
pub fn temp_name(name: &OsStr) -> OsString {
    let mut s = OsString::from(".");
    s.push(name);
    s.push(TEMP_MARK);
    s.push(hex::encode(rand::random::<[u8; TEMP_RANDOM_HEX / 2]>()));
    s
}

/// Whether `name` is one of our temp files (left behind only by a crash).
pub fn is_temp_name(name: &OsStr) -> bool {
    let Some(s) = name.to_str() else { return false };
    let Some(i) = s.rfind(TEMP_MARK) else { return false };
    let random = &s[i + TEMP_MARK.len()..];
    s.starts_with('.') && i > 1 && random.len() == TEMP_RANDOM_HEX && random.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Remove our leftover temp files directly in `dir` (not below it). Returns how many.
pub fn remove_stale_temps(dir: &Path) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else { return 0 };
    let mut n = 0;
    for e in entries.flatten() {
        if !is_temp_name(&e.file_name()) || !e.file_type().is_ok_and(|t| t.is_file()) {
            continue;
        }
        match std::fs::remove_file(e.path()) {
            Ok(()) => {
                tracing::info!(path = %e.path().display(), "removed a temp file left by an interrupted write");
                n += 1;
            }
            Err(err) => tracing::warn!(path = %e.path().display(), error = %err, "cannot remove a leftover temp file"),
        }
    }
    n
}

/// Owner and permission bits to give a written file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileMeta {
    /// Permission bits (including setuid/setgid/sticky), without the file type.
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
}

impl FileMeta {
    pub fn of(m: &Metadata) -> Self {
        Self { mode: m.mode() & 0o7777, uid: m.uid(), gid: m.gid() }
    }
}

/// Where a crash test wants the agent to stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultPoint {
    BeforeRename,
    AfterRename,
}

/// Crash-consistency testing only: at `point`, write `marker` and block forever, so the
/// test can `kill -9` the agent exactly there and check what is on disk.
#[derive(Debug, Clone)]
pub struct Fault {
    pub point: FaultPoint,
    pub marker: PathBuf,
}

impl Fault {
    /// From [`FAULT_ENV`]: `pause_before_rename` or `pause_after_rename`.
    pub fn from_env(state_dir: &Path) -> Option<Self> {
        let v = std::env::var(FAULT_ENV).ok()?;
        let point = match v.as_str() {
            "pause_before_rename" => FaultPoint::BeforeRename,
            "pause_after_rename" => FaultPoint::AfterRename,
            "" => return None,
            other => {
                tracing::warn!(value = other, "unknown {FAULT_ENV} ignored");
                return None;
            }
        };
        tracing::warn!(fault = %v, "fault injection on: the agent will stop at that point of its next write");
        Some(Self { point, marker: state_dir.join(FAULT_MARKER) })
    }

    fn at(&self, point: FaultPoint) {
        if self.point != point {
            return;
        }
        tracing::warn!(?point, marker = %self.marker.display(), "fault point reached; pausing forever");
        if let Err(e) = std::fs::write(&self.marker, format!("{point:?}\n")) {
            tracing::error!(error = %e, "cannot write the fault marker");
        }
        // Deliberately never returns: the crash test kills the process here.
        loop {
            std::thread::sleep(Duration::from_secs(3600));
        }
    }
}

/// fsync a directory (makes a rename or unlink in it durable).
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// fsync the directory behind a handle (an `O_PATH` one too).
pub fn sync_dir_at(dir: BorrowedFd<'_>) -> io::Result<()> {
    let fd = rustix::fs::openat(dir, ".", OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty())?;
    File::from(fd).sync_all()
}

/// What the name being replaced must be, checked just before the rename.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Replace {
    /// Whatever is there (the agent's own files).
    Any,
    /// Nothing: the file did not exist when it was read.
    Absent,
    /// The file that was read (device and inode): a file swapped in since is not replaced.
    Same(FileId),
}

/// Why a write did not happen. Either way the target is untouched and the temp file gone.
#[derive(Debug)]
pub enum WriteError {
    /// The name no longer holds what [`Replace`] expected.
    Changed(String),
    Io(io::Error),
}

impl std::fmt::Display for WriteError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WriteError::Changed(m) => f.write_str(m),
            WriteError::Io(e) => e.fmt(f),
        }
    }
}

impl From<io::Error> for WriteError {
    fn from(e: io::Error) -> Self {
        WriteError::Io(e)
    }
}

impl From<Errno> for WriteError {
    fn from(e: Errno) -> Self {
        WriteError::Io(e.into())
    }
}

/// What `name` in `dir` is now: `None` when nothing is there.
fn present(dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<Option<FileId>> {
    match rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(st) => Ok(Some(meta(&st).id)),
        Err(Errno::NOENT) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Whether `name` in `dir` is what `want` says it must be; the error says what is there.
pub fn check_present(dir: BorrowedFd<'_>, name: &OsStr, want: Replace) -> Result<(), WriteError> {
    let now = present(dir, name)?;
    let ok = match want {
        Replace::Any => true,
        Replace::Absent => now.is_none(),
        Replace::Same(id) => now == Some(id),
    };
    if ok {
        return Ok(());
    }
    Err(WriteError::Changed(match now {
        None => "the file was removed while the change was applied".into(),
        Some(_) if want == Replace::Absent => "a file was created there while the change was applied".into(),
        Some(_) => "the file was replaced by another one while the change was applied".into(),
    }))
}

/// Replace `target` with `content` atomically. `meta`: the owner and mode to give the
/// file (the original's); `None` for a new file (mode 0600, the agent's owner). Owner
/// is changed only when it differs from the temp file's (so this works as non-root
/// whenever the agent owns the file). On error the temp file is removed and `target`
/// is untouched.
pub fn atomic_write(target: &Path, content: &[u8], meta: Option<FileMeta>, fault: Option<&Fault>) -> io::Result<()> {
    let (Some(dir), Some(name)) = (target.parent(), target.file_name()) else {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "not a file path"));
    };
    let dir_fd = rustix::fs::open(dir, OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty())?;
    match atomic_write_at(dir_fd.as_fd(), dir, name, content, meta, Replace::Any, fault) {
        Ok(_) => Ok(()),
        Err(WriteError::Io(e)) => Err(e),
        Err(WriteError::Changed(m)) => Err(io::Error::other(m)),
    }
}

/// [`atomic_write`] of `name` in the directory behind `dir` (`dir_path`: for logs only):
/// every step relative to the handle, and `replace` checked just before the rename.
/// Returns the identity of the file now there.
pub fn atomic_write_at(
    dir: BorrowedFd<'_>,
    dir_path: &Path,
    name: &OsStr,
    content: &[u8],
    meta: Option<FileMeta>,
    replace: Replace,
    fault: Option<&Fault>,
) -> Result<FileId, WriteError> {
    let tmp = temp_name(name);
    // 0600 until the original's mode is set: the content may hold secrets.
    let how = OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let file = File::from(rustix::fs::openat(dir, tmp.as_os_str(), how, Mode::from_raw_mode(0o600))?);
    let remove_tmp = || {
        let _ = rustix::fs::unlinkat(dir, tmp.as_os_str(), AtFlags::empty());
    };
    let prepared = (|| {
        (&file).write_all(content)?;
        if let Some(m) = meta {
            let own = file.metadata()?;
            if own.uid() != m.uid || own.gid() != m.gid {
                std::os::unix::fs::fchown(&file, Some(m.uid), Some(m.gid))?;
            }
            // After chown, which clears setuid/setgid bits.
            file.set_permissions(Permissions::from_mode(m.mode))?;
        }
        file.sync_all()?;
        let m = file.metadata()?;
        Ok::<_, io::Error>(FileId { dev: m.dev(), ino: m.ino() })
    })();
    drop(file);
    let written = match prepared {
        Ok(id) => id,
        Err(e) => {
            remove_tmp();
            return Err(e.into());
        }
    };
    if let Some(f) = fault {
        f.at(FaultPoint::BeforeRename);
    }
    // The file read must be the file replaced (nothing swapped in since).
    if let Err(e) = check_present(dir, name, replace) {
        remove_tmp();
        return Err(e);
    }
    if let Err(e) = rustix::fs::renameat(dir, tmp.as_os_str(), dir, name) {
        remove_tmp();
        return Err(e.into());
    }
    if let Some(f) = fault {
        f.at(FaultPoint::AfterRename);
    }
    // The new content is in place either way; without this fsync a power loss could
    // bring the old one back, which is still a whole file.
    if let Err(e) = sync_dir_at(dir) {
        tracing::warn!(dir = %dir_path.display(), error = %e, "cannot fsync the directory after a rename");
    }
    Ok(written)
}

/// Remove `name` from `dir` if it is still `id` (a rollback of a file the change created).
pub fn remove_at(dir: BorrowedFd<'_>, name: &OsStr, id: FileId) -> Result<(), WriteError> {
    check_present(dir, name, Replace::Same(id))?;
    rustix::fs::unlinkat(dir, name, AtFlags::empty())?;
    sync_dir_at(dir)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temps(dir: &Path) -> Vec<OsString> {
        std::fs::read_dir(dir).unwrap().flatten().map(|e| e.file_name()).filter(|n| is_temp_name(n)).collect()
    }

    #[test]
    fn temp_names_are_recognised() {
        let n = temp_name(OsStr::new("app.env"));
        assert!(n.to_str().unwrap().starts_with(".app.env.driftwatch-tmp-"));
        assert!(is_temp_name(&n));
        assert!(!is_temp_name(OsStr::new("app.env")));
        assert!(!is_temp_name(OsStr::new(".app.env.driftwatch-tmp-xyz")));
        assert!(!is_temp_name(OsStr::new("app.env.driftwatch-tmp-0123456789abcdef")));
    }

    #[test]
    fn replaces_content_and_keeps_mode_and_owner() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("app.env");
        std::fs::write(&p, "A=1\n").unwrap();
        std::fs::set_permissions(&p, Permissions::from_mode(0o640)).unwrap();
        // As root, give the file another owner: the write must keep it.
        let root = unsafe { libc::geteuid() } == 0;
        if root {
            std::os::unix::fs::chown(&p, Some(4321), Some(4322)).unwrap();
        }
        let before = std::fs::metadata(&p).unwrap();
        atomic_write(&p, b"A=2\n", Some(FileMeta::of(&before)), None).unwrap();
        let after = std::fs::metadata(&p).unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"A=2\n");
        assert_eq!(after.mode() & 0o7777, 0o640);
        assert_eq!((after.uid(), after.gid()), (before.uid(), before.gid()));
        if root {
            assert_eq!((after.uid(), after.gid()), (4321, 4322));
        }
        assert_ne!(after.ino(), before.ino(), "replaced by rename, not written in place");
        assert!(temps(d.path()).is_empty());
    }

    #[test]
    fn new_file_gets_0600() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("new.env");
        atomic_write(&p, b"X=1\n", None, None).unwrap();
        assert_eq!(std::fs::metadata(&p).unwrap().mode() & 0o7777, 0o600);
    }

    #[test]
    fn temp_removed_and_target_untouched_on_error() {
        let d = tempfile::tempdir().unwrap();
        // Renaming a file over a non-empty directory fails after the temp is written.
        let p = d.path().join("conf.d");
        std::fs::create_dir(&p).unwrap();
        std::fs::write(p.join("keep"), "k").unwrap();
        assert!(atomic_write(&p, b"X=1\n", None, None).is_err());
        assert!(p.is_dir());
        assert!(temps(d.path()).is_empty());
        // A directory that does not exist: nothing created.
        assert!(atomic_write(&d.path().join("no/such.env"), b"X", None, None).is_err());
    }

    #[test]
    fn replaces_only_the_file_that_was_read() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("app.env");
        std::fs::write(&p, "A=1\n").unwrap();
        let dir = rustix::fs::open(d.path(), OFlags::PATH | OFlags::DIRECTORY, Mode::empty()).unwrap();
        let read = FileId { dev: std::fs::metadata(&p).unwrap().dev(), ino: std::fs::metadata(&p).unwrap().ino() };
        let name = OsStr::new("app.env");
        // Replaced by another file since it was read (a new inode under the same name).
        std::fs::write(d.path().join("x"), "A=9\n").unwrap();
        std::fs::rename(d.path().join("x"), &p).unwrap();
        let e = atomic_write_at(dir.as_fd(), d.path(), name, b"A=2\n", None, Replace::Same(read), None).unwrap_err();
        assert!(matches!(&e, WriteError::Changed(m) if m.contains("replaced")), "{e}");
        assert_eq!(std::fs::read(&p).unwrap(), b"A=9\n");
        // A file that appeared where none was.
        let e = atomic_write_at(dir.as_fd(), d.path(), name, b"A=2\n", None, Replace::Absent, None).unwrap_err();
        assert!(matches!(&e, WriteError::Changed(m) if m.contains("created")), "{e}");
        assert!(temps(d.path()).is_empty());
        // The file as it is now: written, and a rollback removes only what was written.
        let now = FileId { dev: std::fs::metadata(&p).unwrap().dev(), ino: std::fs::metadata(&p).unwrap().ino() };
        let written = atomic_write_at(dir.as_fd(), d.path(), name, b"A=2\n", None, Replace::Same(now), None).unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"A=2\n");
        assert!(matches!(remove_at(dir.as_fd(), name, now), Err(WriteError::Changed(_))));
        remove_at(dir.as_fd(), name, written).unwrap();
        assert!(!p.exists());
    }

    #[test]
    fn stale_temps_are_removed() {
        let d = tempfile::tempdir().unwrap();
        let t = d.path().join(temp_name(OsStr::new("app.env")));
        std::fs::write(&t, "partial").unwrap();
        std::fs::write(d.path().join("app.env"), "A=1\n").unwrap();
        assert_eq!(remove_stale_temps(d.path()), 1);
        assert!(!t.exists());
        assert!(d.path().join("app.env").exists());
    }
}
