//! The watcher's state: which directories are watched, which files are tracked, and
//! what was last sent for each. Owned behind a mutex by the watcher thread and
//! `FileWatcher::full_scan`.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::ffi::OsString;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use driftwatch_formats::{FileError, FileStatus, Format, Limits, Masker};
use driftwatch_proto::v1::FileState;

use inotify::{EventMask, WatchDescriptor, Watches};

use super::inotify::{DIR_MASK, GONE};
use super::pattern::{Compiled, Kind};
use super::read::{self, Probe, Read, Sig};

/// At most this many files are tracked (explicit paths always are).
pub(crate) const MAX_FILES: usize = 10_000;
/// At most this many directories are watched; the rest rely on the periodic rescan.
pub(crate) const MAX_WATCHES: usize = 10_000;
/// Distinct file names queued between two passes before we give up and rescan.
const MAX_PENDING_NAMES: usize = 8_192;
/// A file changed less than this long before it was read may change again
/// unnoticed by its signature (coarse timestamps); read it again next time.
pub(crate) const RACY_WINDOW: Duration = Duration::from_millis(100);
/// Directories the recursive walk never enters.
const PSEUDO_FS: [&str; 3] = ["/proc", "/sys", "/dev"];

/// Events gathered since the last pass, per watch descriptor.
#[derive(Debug, Default)]
pub(crate) struct Pending {
    dirs: HashMap<WatchDescriptor, PendingDir>,
    overflow: bool,
    names: usize,
}

#[derive(Debug)]
struct PendingDir {
    /// Events on the directory itself.
    self_mask: EventMask,
    /// Events on entries, by name.
    names: HashMap<OsString, EventMask>,
}

// `EventMask` has no `Default`.
impl Default for PendingDir {
    fn default() -> Self {
        Self { self_mask: EventMask::empty(), names: HashMap::new() }
    }
}

impl Pending {
    pub fn push(&mut self, wd: WatchDescriptor, mask: EventMask, name: Option<&std::ffi::OsStr>) {
        if self.overflow {
            return;
        }
        if mask.contains(EventMask::Q_OVERFLOW) {
            return self.set_overflow();
        }
        let d = self.dirs.entry(wd).or_default();
        match name {
            None => d.self_mask |= mask,
            Some(n) => match d.names.get_mut(n) {
                Some(m) => *m |= mask,
                None if self.names >= MAX_PENDING_NAMES => self.set_overflow(),
                None => {
                    d.names.insert(n.to_owned(), mask);
                    self.names += 1;
                }
            },
        }
    }

    fn set_overflow(&mut self) {
        self.overflow = true;
        self.dirs.clear();
        self.names = 0;
    }

    pub fn is_empty(&self) -> bool {
        !self.overflow && self.dirs.is_empty()
    }
}

#[derive(Debug)]
struct DirWatch {
    wd: WatchDescriptor,
    dev: u64,
    ino: u64,
    /// The scan pass that last found this watch needed.
    mark: u64,
}

/// What was last sent for a file: a change to any of it is worth sending.
#[derive(Debug, PartialEq)]
struct Sent {
    status: i32,
    exists: bool,
    size: u64,
    mode: u32,
    uid: u32,
    gid: u32,
    dir_mode: u32,
    hash: String,
    error: Option<FileError>,
}

impl Sent {
    fn of(s: &FileState) -> Self {
        Self {
            status: s.status,
            exists: s.exists,
            size: s.size,
            mode: s.mode,
            uid: s.uid,
            gid: s.gid,
            dir_mode: s.dir_mode,
            hash: s.content_hash.clone(),
            error: s.error.clone(),
        }
    }
}

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
}

fn same_dir(path: &Path, w: &DirWatch) -> bool {
    std::fs::metadata(path).is_ok_and(|m| m.is_dir() && m.dev() == w.dev && m.ino() == w.ino)
}

fn is_dir(path: &Path) -> bool {
    std::fs::metadata(path).is_ok_and(|m| m.is_dir())
}

/// Keys of `map` equal to or below `dir`.
fn under<'a, V>(map: &'a BTreeMap<PathBuf, V>, dir: &'a Path) -> impl Iterator<Item = &'a PathBuf> + 'a {
    map.range::<Path, _>((std::ops::Bound::Included(dir), std::ops::Bound::Unbounded))
        .take_while(move |(k, _)| k.starts_with(dir))
        .map(|(k, _)| k)
}

impl Tracker {
    pub fn new(patterns: Vec<Compiled>, limits: Limits, masker: Arc<Masker>, inotify: Watches) -> Self {
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

    /// Arm every watch and find every matching file, without reading any.
    pub fn discover(&mut self) {
        let mut found = BTreeSet::new();
        for r in self.roots.clone().iter() {
            if self.arm_root(r) {
                self.populate(r, &mut found);
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
        let mut found = BTreeSet::new();
        for r in self.roots.clone().iter() {
            if self.arm_root(r) {
                self.populate(r, &mut found);
            }
        }
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

    /// Watch `root`, or while it does not exist its nearest existing ancestor (to see
    /// it appear). Returns whether `root` itself exists and is watched (or tried).
    fn arm_root(&mut self, root: &Path) -> bool {
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

    /// `root` exists: queue its explicit files and list its globs.
    fn populate(&mut self, root: &Path, found: &mut BTreeSet<PathBuf>) {
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
    fn walk(&mut self, gi: usize, start: &Path, found: &mut BTreeSet<PathBuf>) {
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

    fn glob_match(&self, path: &Path) -> Option<usize> {
        self.patterns.iter().position(|p| p.glob().is_some_and(|g| g.is_match(path)))
    }

    fn glob_dir_relevant(&self, path: &Path) -> bool {
        self.patterns.iter().any(|p| p.glob().is_some_and(|g| path != g.base && g.dir_relevant(path)))
    }

    /// Start tracking a glob-matched file (not yet read). False when over the cap.
    fn track(&mut self, path: &Path) -> bool {
        if self.files.contains_key(path) {
            return true;
        }
        let Some(i) = self.glob_match(path) else { return false };
        if self.files.len() >= MAX_FILES {
            if !self.warned_files {
                self.warned_files = true;
                tracing::warn!(
                    limit = MAX_FILES,
                    path = %path.display(),
                    "too many matching files: not tracking any more (narrow the watch patterns)"
                );
            }
            return false;
        }
        self.files.insert(
            path.to_path_buf(),
            Tracked { pattern: i as u32, explicit: false, sig: None, sent: None, dep: None },
        );
        true
    }

    fn add_watch(&mut self, dir: &Path) -> bool {
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
            if !self.warned_watches {
                self.warned_watches = true;
                tracing::warn!(
                    limit = MAX_WATCHES,
                    path = %dir.display(),
                    "too many directories to watch: the rest are only seen by the periodic rescan"
                );
            }
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

    fn drop_watch(&mut self, dir: &Path) {
        if let Some(w) = self.watches.remove(dir) {
            self.unlink_wd(w.wd, dir);
        }
    }

    fn format_for(&self, pattern: u32, path: &Path) -> Format {
        self.patterns
            .get(pattern as usize)
            .and_then(|p| p.format)
            .unwrap_or_else(|| driftwatch_formats::detect_format(path))
    }

    fn set_dep(&mut self, path: &Path, dep: Option<PathBuf>) {
        let Some(t) = self.files.get_mut(path) else { return };
        if t.dep == dep {
            return;
        }
        if let Some(old) = std::mem::replace(&mut t.dep, dep.clone())
            && let Some(set) = self.deps.get_mut(&old)
        {
            set.remove(path);
            if set.is_empty() {
                self.deps.remove(&old);
            }
        }
        if let Some(d) = dep {
            self.deps.entry(d).or_default().insert(path.to_path_buf());
        }
    }

    /// Stop tracking a glob-matched file that is no longer a matching file: one
    /// Missing state if it was reported as present.
    fn forget(&mut self, path: &Path, force: bool) -> Option<FileState> {
        self.set_dep(path, None);
        let t = self.files.remove(path)?;
        let was_present = t.sent.as_ref().is_some_and(|s| s.exists);
        (was_present && !force).then(|| read::missing_state(path, self.format_for(t.pattern, path)))
    }

    /// Look at one tracked file: the state to send if it really changed (every state
    /// when `force`), re-reading only when its signature changed.
    fn check(&mut self, path: &Path, force: bool) -> Option<FileState> {
        let t = self.files.get(path)?;
        let (explicit, format, old_sig) = (t.explicit, self.format_for(t.pattern, path), t.sig);
        if let Some(dep) = t.dep.clone() {
            self.add_watch(&dep);
        }
        let mut sig = None;
        let state = match read::probe(path) {
            Probe::Missing if !explicit => return self.forget(path, force),
            Probe::Missing => read::missing_state(path, format),
            Probe::NotFile { .. } if !explicit => return self.forget(path, force),
            Probe::NotFile { dir } => {
                let what = if dir { "is a directory" } else { "is not a regular file" };
                read::unreadable_state(path, format, what.into(), None)
            }
            Probe::Failed { error, exists } => {
                let mut s = read::unreadable_state(path, format, error.to_string(), None);
                s.exists = exists;
                s
            }
            Probe::File { meta, link } => {
                let dir_mode = read::dir_mode(path, link);
                if !force && old_sig == Some(Sig::of(&meta, dir_mode)) {
                    return None;
                }
                self.reads += 1;
                match read::read(path, format, dir_mode, &self.masker, &self.limits) {
                    Read::Done { state, sig: s } => {
                        if !read::is_racy(&s, self.racy_window) {
                            sig = Some(s);
                        }
                        let dep = if link { self.link_dir(path) } else { None };
                        if let Some(d) = &dep {
                            self.add_watch(d);
                        }
                        self.set_dep(path, dep);
                        *state
                    }
                    Read::Missing if !explicit => return self.forget(path, force),
                    Read::Missing => read::missing_state(path, format),
                    Read::NotFile if !explicit => return self.forget(path, force),
                    Read::NotFile => read::unreadable_state(path, format, "is not a regular file".into(), None),
                    Read::Failed(e) => {
                        let mut s = read::unreadable_state(path, format, e.to_string(), Some(&meta));
                        s.dir_mode = dir_mode;
                        s
                    }
                }
            }
        };
        let key = Sent::of(&state);
        let t = self.files.get_mut(path)?;
        t.sig = sig;
        if force || t.sent.as_ref() != Some(&key) {
            if !force {
                tracing::debug!(
                    path = %path.display(),
                    status = FileStatus::try_from(state.status).map(|s| s.as_str_name()).unwrap_or("?"),
                    size = state.size,
                    "file changed"
                );
            }
            t.sent = Some(key);
            Some(state)
        } else {
            None
        }
    }

    /// The real directory of a symlinked file, when it is not the link's own directory.
    fn link_dir(&self, path: &Path) -> Option<PathBuf> {
        let real = std::fs::canonicalize(path).ok()?;
        let dir = real.parent()?;
        let own = path.parent().and_then(|p| std::fs::canonicalize(p).ok());
        (own.as_deref() != Some(dir)).then(|| dir.to_path_buf())
    }
}
