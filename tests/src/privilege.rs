//! What a test needs from the machine besides programs: root, file permissions that
//! bind root too, a small tmpfs. [`require`] decides whether a test without it skips
//! (saying why) or fails: in CI (`CI=true`, which runs as root) nothing may skip.

use std::io::Write;
use std::path::Path;
use std::process::Command;

use rustix::thread::{CapabilitySet, capabilities, set_capabilities};

/// Whether a test may go on: `unavailable` says why it cannot. In CI the test fails
/// with that reason; elsewhere it prints it and skips.
pub fn require(what: &str, unavailable: Option<String>) -> bool {
    let Some(why) = unavailable else { return true };
    let ci = std::env::var("CI").is_ok_and(|v| v == "true" || v == "1");
    assert!(!ci, "{what}: {why} (CI=true: nothing may be skipped there)");
    println!("SKIPPED {what}: {why}");
    false
}

pub fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// Why root is missing, for [`require`].
pub fn root() -> Option<String> {
    (!is_root()).then(|| "needs root".to_string())
}

/// Drop the capabilities that let root ignore file permissions (CAP_DAC_OVERRIDE,
/// CAP_DAC_READ_SEARCH) for the calling thread and every thread it creates later, so
/// a mode-000 file is unreadable even for root. Capabilities are per thread: call it
/// on the test's own thread before it starts the threads that read. Not root: nothing
/// to drop.
pub fn drop_dac_capabilities() -> Option<String> {
    if !is_root() {
        return None;
    }
    let dropped = capabilities(None).and_then(|mut sets| {
        let dac = CapabilitySet::DAC_OVERRIDE | CapabilitySet::DAC_READ_SEARCH;
        sets.effective.remove(dac);
        sets.permitted.remove(dac);
        sets.inheritable.remove(dac);
        set_capabilities(None, sets)
    });
    dropped.err().map(|e| format!("cannot drop CAP_DAC_OVERRIDE: {e}"))
}

/// A tmpfs of `size` (as `mount -o size=` takes it: "512k", "16m") on a new temp
/// directory, unmounted (and the directory removed) when dropped, also when the test
/// fails half-way.
pub struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    /// Needs root; `Err` says why it could not be mounted (for [`require`]).
    pub fn mount(size: &str) -> Result<Self, String> {
        if !is_root() {
            return Err("mounting a tmpfs needs root".into());
        }
        let dir = tempfile::tempdir().map_err(|e| format!("temp dir: {e}"))?;
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size},mode=0700"), "tmpfs"])
            .arg(dir.path())
            .output()
            .map_err(|e| format!("cannot run mount: {e}"))?;
        if !out.status.success() {
            return Err(format!("mount -t tmpfs: {}", String::from_utf8_lossy(&out.stderr).trim()));
        }
        Ok(Self { dir })
    }

    /// [`Tmpfs::mount`], or `None` when the test is to be skipped ([`require`]).
    pub fn required(what: &str, size: &str) -> Option<Self> {
        match Self::mount(size) {
            Ok(t) => Some(t),
            Err(why) => {
                require(what, Some(why));
                None
            }
        }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Fill the file system with the file `name` until a write fails for lack of
    /// space; returns the bytes written. Deleting the file frees them again.
    pub fn fill(&self, name: &str) -> u64 {
        let path = self.path().join(name);
        let mut f = std::fs::OpenOptions::new().create(true).append(true).open(&path).expect("filler file");
        let mut written = 0u64;
        let mut chunk = vec![0xa5u8; 64 * 1024];
        loop {
            match f.write(&chunk) {
                Ok(0) => break,
                Ok(n) => written += n as u64,
                Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => {
                    // Smaller writes take the last partial pages too.
                    if chunk.len() == 1 {
                        break;
                    }
                    chunk.truncate(chunk.len() / 2);
                }
                Err(e) => panic!("fill {}: {e}", path.display()),
            }
        }
        let _ = f.sync_all();
        written
    }

    /// Bytes free on the file system.
    pub fn free(&self) -> u64 {
        rustix::fs::statvfs(self.path()).map(|s| s.f_bavail * s.f_frsize).expect("statvfs of the tmpfs")
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let umount =
            |args: &[&str]| Command::new("umount").args(args).arg(self.dir.path()).status().is_ok_and(|s| s.success());
        // Lazily when something still holds it open (a test that failed half-way).
        if !umount(&[]) && !umount(&["-l"]) {
            eprintln!("could not unmount the tmpfs at {}", self.dir.path().display());
        }
    }
}
