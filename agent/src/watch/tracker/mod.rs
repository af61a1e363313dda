//! The watcher's state: which directories are watched (`watches`), which files are
//! tracked (`files`), and what was last sent for each (`check`). Owned behind a mutex
//! by the watcher thread and `FileWatcher::full_scan`.

mod check;
mod files;
mod watches;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use driftwatch_formats::{Limits, Masker};
use driftwatch_proto::v1::FileState;
use inotify::{EventMask, WatchDescriptor, Watches};

use super::inotify::GONE;
use super::pattern::{Compiled, Kind};
use super::pending::Pending;
use super::read::Sig;
use crate::hostroot::HostRoot;
use check::{RACY_WINDOW, Sent};
use watches::{DirWatch, same_dir};

/// One tracked file.
#[derive(Debug)]
struct Tracked {
    /// Index of the pattern that gives the format.
    pattern: u32,
    /// Configured by exact path: tracked even while missing.
    explicit: bool,
    /// The signature of what was last read; `None` forces a read.
    sig: Option<Sig>,
    sent: Option<Sent>,
    /// The directory the file really lives in, when reached through a symlink into
    /// another directory (edits there must be seen too).
    dep: Option<PathBuf>,
}

pub(crate) struct Tracker {
    patterns: Arc<[Compiled]>,
    /// Distinct pattern roots.
    roots: Arc<[PathBuf]>,
    limits: Limits,
    masker: Arc<Masker>,
    /// Adds and removes the inotify watches (the watcher thread reads the events).
    inotify: Watches,
    watches: BTreeMap<PathBuf, DirWatch>,
    by_wd: HashMap<WatchDescriptor, Vec<PathBuf>>,
    files: BTreeMap<PathBuf, Tracked>,
    /// dep directory → files living there.
    deps: BTreeMap<PathBuf, BTreeSet<PathBuf>>,
    generation: u64,
    mark: u64,
    pub racy_window: Duration,
    /// Full reads done (for tests and debugging).
    pub reads: u64,
    warned_files: bool,
    warned_watches: bool,
    warned_dirs: HashSet<PathBuf>,
    /// `path_prefix`: symlinks followed as the node would (`HostRoot::resolve`).
    host: HostRoot,
}

fn is_dir(path: &Path) -> bool {
    std::fs::metadata(path).is_ok_and(|m| m.is_dir())
}

/// Log that a cap is reached, once (`warned` remembers it): a host over a cap would
/// otherwise log it on every scan.
fn warn_cap_once(warned: &mut bool, limit: usize, path: &Path, message: &str) {
    if !std::mem::replace(warned, true) {
        tracing::warn!(limit, path = %path.display(), "{message}");
    }
}

/// Keys of `map` equal to or below `dir`.
fn under<'a, V>(map: &'a BTreeMap<PathBuf, V>, dir: &'a Path) -> impl Iterator<Item = &'a PathBuf> + 'a {
    map.range::<Path, _>((std::ops::Bound::Included(dir), std::ops::Bound::Unbounded))
        .take_while(move |(k, _)| k.starts_with(dir))
        .map(|(k, _)| k)
}

impl Tracker {
    pub fn new(patterns: Vec<Compiled>, limits: Limits, masker: Arc<Masker>, inotify: Watches, host: HostRoot) -> Self {
        let mut roots: Vec<PathBuf> = patterns.iter().map(|p| p.root().to_path_buf()).collect();
        roots.sort();
        roots.dedup();
        let mut files = BTreeMap::new();
        for (i, p) in patterns.iter().enumerate() {
            if let Kind::Explicit(path) = &p.kind {
                files.entry(path.clone()).or_insert(Tracked {
                    pattern: i as u32,
                    explicit: true,
                    sig: None,
                    sent: None,
                    dep: None,
                });
            }
        }
        Self {
            patterns: patterns.into(),
            roots: roots.into(),
            limits,
            masker,
            inotify,
            watches: BTreeMap::new(),
            by_wd: HashMap::new(),
            files,
            deps: BTreeMap::new(),
            generation: 0,
            mark: 0,
            racy_window: RACY_WINDOW,
            reads: 0,
            warned_files: false,
            warned_watches: false,
            warned_dirs: HashSet::new(),
            host,
        }
    }

    /// `path_prefix`: how node paths map to local ones here.
    pub fn host_root(&self) -> &HostRoot {
        &self.host
    }

    /// The edge of the watcher: states leave it naming node paths (`path_prefix`).
    pub fn to_node_paths(&self, files: &mut [FileState]) {
        if self.host.prefix().is_some() {
            for f in files {
                f.path = self.host.node_text(&f.path);
            }
        }
    }

    pub fn generation(&self) -> u64 {
        self.generation
    }

    pub fn watch_count(&self) -> usize {
        self.watches.len()
    }

    pub fn file_count(&self) -> usize {
        self.files.len()
    }

    /// Replace what is watched (a reload): tracked files and what was sent for them are
    /// forgotten, every root of the new patterns is armed and listed, and watches no
    /// pattern needs go at the next scan. The caller asks for a full listing, which
    /// reads every file of the new list (and tells the server what left it).
    pub fn set_patterns(&mut self, patterns: Vec<Compiled>) {
        let fresh =
            Tracker::new(patterns, self.limits.clone(), self.masker.clone(), self.inotify.clone(), self.host.clone());
        self.patterns = fresh.patterns;
        self.roots = fresh.roots;
        self.files = fresh.files;
        self.deps.clear();
        self.warned_files = false;
        self.warned_watches = false;
        self.warned_dirs.clear();
        // Stale watches of the old list are dropped by this scan's mark (`scan_all`).
        self.rescan();
    }

    /// Arm every watch and find every matching file, without reading any.
    pub fn discover(&mut self) {
        self.arm_roots(&mut BTreeSet::new());
    }

    /// Arm the watch of every root (or of its nearest existing ancestor) and list the
    /// roots that exist; newly tracked files go into `found`.
    fn arm_roots(&mut self, found: &mut BTreeSet<PathBuf>) {
        for r in self.roots.clone().iter() {
            if self.arm_root(r) {
                self.populate(r, found);
            }
        }
    }

    /// Re-read every file, record it as sent, and start a new generation.
    pub fn full_scan(&mut self) -> (u64, Vec<FileState>) {
        let files = self.scan_all(true);
        self.generation += 1;
        (self.generation, files)
    }

    /// The safety net: re-arm watches, re-list globs, stat every tracked file and
    /// re-read only those whose signature changed. Returns what changed.
    pub fn rescan(&mut self) -> Vec<FileState> {
        self.scan_all(false)
    }

    fn scan_all(&mut self, force: bool) -> Vec<FileState> {
        self.mark += 1;
        let stale: Vec<PathBuf> =
            self.watches.iter().filter(|(p, w)| !same_dir(p, w)).map(|(p, _)| p.clone()).collect();
        for p in stale {
            self.drop_watch(&p);
        }
        self.arm_roots(&mut BTreeSet::new());
        let paths: Vec<PathBuf> = self.files.keys().cloned().collect();
        let out = paths.iter().filter_map(|p| self.check(p, force)).collect();
        // Watches nothing needs any more (ancestors of roots that now exist, old
        // symlink targets, directories that stopped matching).
        let unused: Vec<PathBuf> =
            self.watches.iter().filter(|(_, w)| w.mark != self.mark).map(|(p, _)| p.clone()).collect();
        for p in unused {
            self.drop_watch(&p);
        }
        out
    }

    /// Handle a debounced set of events: returns the files whose state really changed.
    pub fn apply(&mut self, pending: Pending) -> Vec<FileState> {
        if pending.overflow {
            tracing::warn!("inotify event queue overflowed; rescanning every watched path");
            return self.rescan();
        }
        let mut check = BTreeSet::new();
        // Directories that went away first, so that re-arming below is not undone.
        for (wd, pd) in &pending.dirs {
            if !pd.self_mask.intersects(GONE) {
                continue;
            }
            for dir in self.by_wd.get(wd).cloned().unwrap_or_default() {
                if self.watches.get(&dir).is_some_and(|w| w.wd == *wd) {
                    self.drop_watch(&dir);
                }
                tracing::debug!(path = %dir.display(), "watched directory went away");
                self.dir_changed(&dir, &mut check);
            }
        }
        for (wd, pd) in pending.dirs {
            let Some(dirs) = self.by_wd.get(&wd).cloned() else { continue };
            for dir in dirs {
                // Any event in a directory re-checks what is tracked in it: this is what
                // catches symlink swaps (`..data`) whatever the event names.
                check.extend(under(&self.files, &dir).filter(|k| k.parent() == Some(dir.as_path())).cloned());
                if let Some(fs) = self.deps.get(&dir) {
                    check.extend(fs.iter().cloned());
                }
                for (name, mask) in &pd.names {
                    let p = dir.join(name);
                    if mask.contains(EventMask::ISDIR) || self.roots.iter().any(|r| r.starts_with(&p)) {
                        self.dir_changed(&p, &mut check);
                    } else if self.files.contains_key(&p) {
                        check.insert(p);
                    } else if self.glob_match(&p).is_some() {
                        if self.track(&p) {
                            check.insert(p);
                        }
                    } else if self.glob_dir_relevant(&p) {
                        // Maybe a symlink to a directory that a glob descends into.
                        self.dir_changed(&p, &mut check);
                    }
                }
            }
        }
        check.iter().filter_map(|p| self.check(p, false)).collect()
    }

    /// Something happened to the directory (or directory-to-be) `p`: created, deleted,
    /// moved, replaced. Re-check what lives below it and re-arm what depends on it.
    fn dir_changed(&mut self, p: &Path, check: &mut BTreeSet<PathBuf>) {
        check.extend(under(&self.files, p).cloned());
        let stale: Vec<PathBuf> =
            under(&self.watches, p).filter(|k| !same_dir(k, &self.watches[k.as_path()])).cloned().collect();
        for s in stale {
            self.drop_watch(&s);
        }
        for r in self.roots.clone().iter().filter(|r| r.starts_with(p)) {
            if self.arm_root(r) {
                self.populate(r, check);
            }
        }
        let pats = self.patterns.clone();
        for (i, pat) in pats.iter().enumerate() {
            if let Some(g) = pat.glob()
                && p.starts_with(&g.base)
                && p != g.base
                && g.dir_relevant(p)
                && is_dir(p)
                && (g.follows_links() || std::fs::symlink_metadata(p).is_ok_and(|m| m.is_dir()))
            {
                self.walk(i, p, check);
            }
        }
    }
}
