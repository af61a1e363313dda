//! A minimal Debian root file system (`debootstrap --variant=minbase`), built once and
//! cached under `$TMPDIR`, for checks of what an image or a package installs without a
//! container engine. Each test works on its own copy ([`DebRoot::scratch`]), so the
//! cached root is never changed.
//!
//! The cache is keyed by the suite and the extra packages; a root counts as built only
//! once its stamp file is written (a build cut short is removed and made again), and a
//! lock file serialises builds between test processes.

use std::fs::File;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

/// Where Debian packages come from (reachable from CI).
pub const MIRROR: &str = "http://deb.debian.org/debian";
const STAMP: &str = ".driftwatch-debroot-stamp";

/// A cached root.
#[derive(Debug, Clone)]
pub struct DebRoot {
    pub path: PathBuf,
}

/// Why a root cannot be had here (not root, no debootstrap), for `privilege::require`.
pub fn unavailable() -> Option<String> {
    if !crate::privilege::is_root() {
        return Some("debootstrap and chroot need root".into());
    }
    let found = Command::new("debootstrap").arg("--version").output().is_ok_and(|o| o.status.success());
    (!found).then(|| "debootstrap is not installed (apt-get install debootstrap); .ci/run installs it".into())
}

impl DebRoot {
    /// The cached `suite` root with `include` installed, built first if needed (minutes:
    /// printed). Call [`unavailable`] first.
    pub fn cached(suite: &str, include: &[&str]) -> Result<Self, String> {
        let mut pkgs: Vec<&str> = include.to_vec();
        pkgs.sort_unstable();
        pkgs.dedup();
        let key = if pkgs.is_empty() { suite.to_string() } else { format!("{suite}-{}", pkgs.join("+")) };
        let base = std::env::temp_dir().join("driftwatch-debroot");
        std::fs::create_dir_all(&base).map_err(|e| format!("{}: {e}", base.display()))?;
        let lock = File::create(base.join(format!("{key}.lock"))).map_err(|e| format!("lock: {e}"))?;
        rustix::fs::flock(lock.as_fd(), rustix::fs::FlockOperation::LockExclusive).map_err(|e| format!("lock: {e}"))?;
        let path = base.join(&key);
        if path.join(STAMP).is_file() {
            return Ok(Self { path });
        }
        if path.exists() {
            std::fs::remove_dir_all(&path).map_err(|e| format!("remove a partial {}: {e}", path.display()))?;
        }
        let started = Instant::now();
        let mut cmd = Command::new("debootstrap");
        cmd.arg("--variant=minbase");
        if !pkgs.is_empty() {
            cmd.arg(format!("--include={}", pkgs.join(",")));
        }
        cmd.arg(suite).arg(&path).arg(MIRROR);
        println!("building a Debian root: {cmd:?}");
        let out = cmd.output().map_err(|e| format!("debootstrap: {e}"))?;
        if !out.status.success() {
            let log = std::fs::read_to_string(path.join("debootstrap/debootstrap.log")).unwrap_or_default();
            return Err(format!(
                "debootstrap failed ({}): {}{}\n{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr),
                log.lines().rev().take(20).collect::<Vec<_>>().join("\n")
            ));
        }
        std::fs::write(path.join(STAMP), format!("{key}\n")).map_err(|e| format!("stamp: {e}"))?;
        println!("Debian root {key} built in {:.0?}", started.elapsed());
        Ok(Self { path })
    }

    /// A copy of the root in `dir` for one test to change (`cp -a`: owners, modes, links).
    pub fn scratch(&self, dir: &Path) -> Result<PathBuf, String> {
        let to = dir.join("root");
        let out = Command::new("cp").arg("-a").arg(&self.path).arg(&to).output().map_err(|e| format!("cp: {e}"))?;
        if !out.status.success() {
            return Err(format!("cp -a {}: {}", self.path.display(), String::from_utf8_lossy(&out.stderr)));
        }
        Ok(to)
    }
}
