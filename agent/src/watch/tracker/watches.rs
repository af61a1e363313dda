//! The tracker's inotify watch set: directories (never files) are watched, each once,
//! and a watch is known by the directory's device and inode so that a directory
//! replaced under the same path is watched again.

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use inotify::WatchDescriptor;

use super::{Tracker, is_dir, warn_cap_once};
use crate::watch::inotify::DIR_MASK;

/// At most this many directories are watched; the rest rely on the periodic rescan.
pub(crate) const MAX_WATCHES: usize = 10_000;

#[derive(Debug)]
pub(super) struct DirWatch {
    pub(super) wd: WatchDescriptor,
    dev: u64,
    ino: u64,
    /// The scan pass that last found this watch needed.
    pub(super) mark: u64,
}

/// Whether `path` is still the directory `w` watches.
pub(super) fn same_dir(path: &Path, w: &DirWatch) -> bool {
    std::fs::metadata(path).is_ok_and(|m| m.is_dir() && m.dev() == w.dev && m.ino() == w.ino)
}

impl Tracker {
    /// Watch `root`, or while it does not exist its nearest existing ancestor (to see
    /// it appear). Returns whether `root` itself exists and is watched (or tried).
    pub(super) fn arm_root(&mut self, root: &Path) -> bool {
        for _ in 0..16 {
            let mut d = root;
            while !is_dir(d) {
                match d.parent() {
                    Some(p) => d = p,
                    None => return false,
                }
            }
            self.add_watch(d);
            if d == root {
                // A symlinked root (`/etc/app -> /opt/app-v2`): also watch where the link
                // lives, so swapping it re-arms the watch.
                if std::fs::symlink_metadata(root).is_ok_and(|m| m.file_type().is_symlink())
                    && let Some(parent) = root.parent()
                {
                    self.add_watch(parent);
                }
                return true;
            }
            // The next directory down may have appeared before the watch was in place.
            let next = root.ancestors().find(|a| a.parent() == Some(d));
            if !next.is_some_and(is_dir) {
                return false;
            }
        }
        false
    }

    pub(super) fn add_watch(&mut self, dir: &Path) -> bool {
        let Ok(meta) = std::fs::metadata(dir) else { return false };
        if !meta.is_dir() {
            return false;
        }
        if let Some(w) = self.watches.get_mut(dir)
            && w.dev == meta.dev()
            && w.ino == meta.ino()
        {
            w.mark = self.mark;
            return true;
        }
        if self.watches.len() >= MAX_WATCHES && !self.watches.contains_key(dir) {
            let message = "too many directories to watch: the rest are only seen by the periodic rescan";
            warn_cap_once(&mut self.warned_watches, MAX_WATCHES, dir, message);
            return false;
        }
        match self.inotify.add(dir, DIR_MASK) {
            Ok(wd) => {
                let w = DirWatch { wd: wd.clone(), dev: meta.dev(), ino: meta.ino(), mark: self.mark };
                if let Some(old) = self.watches.insert(dir.to_path_buf(), w)
                    && old.wd != wd
                {
                    self.unlink_wd(old.wd, dir);
                }
                let paths = self.by_wd.entry(wd).or_default();
                if !paths.iter().any(|p| p == dir) {
                    paths.push(dir.to_path_buf());
                }
                self.warned_dirs.remove(dir);
                true
            }
            Err(e) => {
                if self.warned_dirs.len() < 256 && self.warned_dirs.insert(dir.to_path_buf()) {
                    if e.raw_os_error() == Some(libc::ENOSPC) {
                        tracing::warn!(
                            path = %dir.display(),
                            "cannot watch directory: inotify watch limit reached (raise fs.inotify.max_user_watches); relying on the periodic rescan"
                        );
                    } else {
                        tracing::warn!(path = %dir.display(), error = %e, "cannot watch directory; relying on the periodic rescan");
                    }
                }
                false
            }
        }
    }

    fn unlink_wd(&mut self, wd: WatchDescriptor, dir: &Path) {
        if let Some(paths) = self.by_wd.get_mut(&wd) {
            paths.retain(|p| p != dir);
            if paths.is_empty() {
                self.by_wd.remove(&wd);
                // Errors (the kernel already dropped the watch) do not matter.
                let _ = self.inotify.remove(wd);
            }
        }
    }

    pub(super) fn drop_watch(&mut self, dir: &Path) {
        if let Some(w) = self.watches.remove(dir) {
            self.unlink_wd(w.wd, dir);
        }
    }
}
