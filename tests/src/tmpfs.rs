//! A small tmpfs for full-disk tests: mounted on a directory of the test's temp dir,
//! unmounted when dropped (also when the test fails). Needs root: without it the test
//! is skipped with a printed reason, and fails in CI (`CI=true`).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::binaries::outside_program;

/// A mounted tmpfs.
pub struct Tmpfs {
    path: PathBuf,
}

/// Why a tmpfs cannot be mounted here (`None`: it can).
pub fn unavailable() -> Option<String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("mounting a tmpfs needs root".into());
    }
    match Command::new("mount").arg("--version").output() {
        Ok(o) if o.status.success() => None,
        _ => Some("the mount command (util-linux) is not installed".into()),
    }
}

impl Tmpfs {
    /// Mount a tmpfs of `size` (`mount -o size=`, e.g. `512k`) on `path` (created).
    /// `None` (after saying why) when this machine cannot; panics in CI.
    pub fn mount(path: &Path, size: &str) -> Option<Self> {
        if let Some(why) = unavailable()
            && !outside_program("a tmpfs mount (root, util-linux mount)", false, &why)
        {
            return None;
        }
        std::fs::create_dir_all(path).expect("mount point");
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size},mode=0700"), "tmpfs"])
            .arg(path)
            .output()
            .expect("run mount");
        assert!(out.status.success(), "mount tmpfs on {}: {}", path.display(), String::from_utf8_lossy(&out.stderr));
        Some(Self { path: path.to_path_buf() })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Fill the file system with `name` until a write fails for lack of space; returns
    /// the bytes written. Deleting the file frees them again.
    pub fn fill(&self, name: &str) -> u64 {
        let path = self.path.join(name);
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
        written
    }

    /// Bytes free on the file system.
    pub fn free(&self) -> u64 {
        let c = std::ffi::CString::new(self.path.as_os_str().as_encoded_bytes()).expect("path without NUL");
        // SAFETY: a valid C string and a zeroed statvfs the call fills.
        let mut s: libc::statvfs = unsafe { std::mem::zeroed() };
        let r = unsafe { libc::statvfs(c.as_ptr(), &mut s) };
        assert_eq!(r, 0, "statvfs {}", self.path.display());
        s.f_bavail as u64 * s.f_frsize as u64
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        // Lazy: a file still open (an agent that has not stopped) must not keep it mounted.
        match Command::new("umount").arg("-l").arg(&self.path).output() {
            Ok(o) if o.status.success() => {}
            Ok(o) => eprintln!("umount {}: {}", self.path.display(), String::from_utf8_lossy(&o.stderr)),
            Err(e) => eprintln!("umount {}: {e}", self.path.display()),
        }
    }
}
