//! Finding the files to track: explicit paths of a root that exists, and the files
//! a glob matches below its literal base (watching every directory the glob may
//! descend into, so new files are seen).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use super::{Tracked, Tracker, is_dir, warn_cap_once};
use crate::watch::pattern::Kind;

/// At most this many files are tracked (explicit paths always are).
pub(crate) const MAX_FILES: usize = 10_000;
/// Directories the recursive walk never enters.
const PSEUDO_FS: [&str; 3] = ["/proc", "/sys", "/dev"];

impl Tracker {
    /// `root` exists: queue its explicit files and list its globs.
    pub(super) fn populate(&mut self, root: &Path, found: &mut BTreeSet<PathBuf>) {
        let pats = self.patterns.clone();
        for (i, p) in pats.iter().enumerate() {
            if p.root() != root {
                continue;
            }
            match &p.kind {
                Kind::Explicit(path) => {
                    found.insert(path.clone());
                }
                Kind::Glob(_) => self.walk(i, root, found),
            }
        }
    }

    /// Watch `start` and the relevant directories below it for glob `gi`, and track
    /// the files found that match it. Newly tracked files go into `found`.
    pub(super) fn walk(&mut self, gi: usize, start: &Path, found: &mut BTreeSet<PathBuf>) {
        let pats = self.patterns.clone();
        let Some(g) = pats[gi].glob() else { return };
        let mut stack = vec![start.to_path_buf()];
        while let Some(dir) = stack.pop() {
            self.add_watch(&dir);
            let Ok(entries) = std::fs::read_dir(&dir) else { continue };
            for entry in entries.flatten() {
                let path = entry.path();
                let Ok(ft) = entry.file_type() else { continue };
                let (dir_like, real_dir) = if ft.is_dir() {
                    (true, true)
                } else if ft.is_symlink() {
                    (is_dir(&path), false)
                } else {
                    (false, false)
                };
                if dir_like {
                    if (real_dir || g.follows_links())
                        && g.dir_relevant(&path)
                        && !PSEUDO_FS.iter().any(|p| path == Path::new(p))
                    {
                        stack.push(path);
                    }
                } else if g.is_match(&path) && !self.files.contains_key(&path) && self.track(&path) {
                    found.insert(path);
                }
            }
        }
    }

    pub(super) fn glob_match(&self, path: &Path) -> Option<usize> {
        self.patterns.iter().position(|p| p.glob().is_some_and(|g| g.is_match(path)))
    }

    pub(super) fn glob_dir_relevant(&self, path: &Path) -> bool {
        self.patterns.iter().any(|p| p.glob().is_some_and(|g| path != g.base && g.dir_relevant(path)))
    }

    /// Start tracking a glob-matched file (not yet read). False when over the cap.
    pub(super) fn track(&mut self, path: &Path) -> bool {
        if self.files.contains_key(path) {
            return true;
        }
        let Some(i) = self.glob_match(path) else { return false };
        if self.files.len() >= MAX_FILES {
            let message = "too many matching files: not tracking any more (narrow the watch patterns)";
            warn_cap_once(&mut self.warned_files, MAX_FILES, path, message);
            return false;
        }
        self.files.insert(
            path.to_path_buf(),
            Tracked { pattern: i as u32, explicit: false, sig: None, sent: None, dep: None },
        );
        true
    }
}
