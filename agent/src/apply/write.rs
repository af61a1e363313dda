//! Atomic replacement of one file: temp file next to it, write, fsync, owner and mode,
//! rename over the original, fsync the directory. The target path holds either the old
//! or the new content at every moment, never a partial file.
//!
//! Not kept: extended attributes, ACLs and SELinux labels of the original (the temp file
//! gets the directory's defaults).

use std::ffi::{OsStr, OsString};
use std::fs::{File, Metadata, OpenOptions, Permissions};
use std::io::{self, Write as _};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

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

/// Replace `target` with `content` atomically. `meta`: the owner and mode to give the
/// file (the original's); `None` for a new file (mode 0600, the agent's owner). Owner
/// is changed only when it differs from the temp file's (so this works as non-root
/// whenever the agent owns the file). On error the temp file is removed and `target`
/// is untouched.
pub fn atomic_write(target: &Path, content: &[u8], meta: Option<FileMeta>, fault: Option<&Fault>) -> io::Result<()> {
    let (Some(dir), Some(name)) = (target.parent(), target.file_name()) else {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "not a file path"));
    };
    let tmp = dir.join(temp_name(name));
    // 0600 until the original's mode is set: the content may hold secrets.
    let file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(&tmp)?;
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
        file.sync_all()
    })();
    drop(file);
    if let Err(e) = prepared {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    if let Some(f) = fault {
        f.at(FaultPoint::BeforeRename);
    }
    if let Err(e) = std::fs::rename(&tmp, target) {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    if let Some(f) = fault {
        f.at(FaultPoint::AfterRename);
    }
    // The new content is in place either way; without this fsync a power loss could
    // bring the old one back, which is still a whole file.
    if let Err(e) = sync_dir(dir) {
        tracing::warn!(dir = %dir.display(), error = %e, "cannot fsync the directory after a rename");
    }
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
