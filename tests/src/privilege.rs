//! What a test needs from the machine besides programs: root, file permissions that
//! bind root too, a small tmpfs. [`require`] decides whether a test without it skips
//! (saying why) or fails: in CI (`CI=true`, which runs as root) nothing may skip.

use std::path::{Path, PathBuf};
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

/// A tmpfs of `size` (e.g. "512k") mounted on a new directory `at`, unmounted (and the
/// directory removed) when dropped, also when the test fails.
pub struct Tmpfs {
    path: PathBuf,
}

impl Tmpfs {
    /// Needs root; `Err` says why it could not be mounted (for [`require`]).
    pub fn mount(at: &Path, size: &str) -> Result<Self, String> {
        if !is_root() {
            return Err("mounting a tmpfs needs root".into());
        }
        std::fs::create_dir_all(at).map_err(|e| format!("{}: {e}", at.display()))?;
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size},mode=0755"), "tmpfs"])
            .arg(at)
            .output()
            .map_err(|e| format!("mount: {e}"))?;
        if !out.status.success() {
            return Err(format!("mount -t tmpfs: {}", String::from_utf8_lossy(&out.stderr).trim()));
        }
        Ok(Self { path: at.to_path_buf() })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        // Lazy: a process of the test may still hold a file open on it.
        match Command::new("umount").arg("-l").arg(&self.path).status() {
            Ok(s) if s.success() => {
                let _ = std::fs::remove_dir(&self.path);
            }
            other => eprintln!("umount {}: {other:?}", self.path.display()),
        }
    }
}
