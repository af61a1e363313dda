//! Looking at one tracked file: a `stat` signature decides whether to read it again,
//! and a state is sent only when what would be sent differs from what was last sent.

use std::path::{Path, PathBuf};
use std::time::Duration;

use driftwatch_formats::{FileError, FileStatus, Format};
use driftwatch_proto::v1::FileState;

use super::Tracker;
use crate::watch::read::{self, Probe, Read, Sig};

/// A file changed less than this long before it was read may change again
/// unnoticed by its signature (coarse timestamps); read it again next time.
pub(crate) const RACY_WINDOW: Duration = Duration::from_millis(100);

/// What was last sent for a file: a change to any of it is worth sending.
///
/// Recorded in the middle of a full scan, between the scan's short-lived buffers, and
/// kept for as long as the file is tracked: a heap allocation per file here would pin
/// one page of freed scan memory per file (about 3 MiB that `malloc_trim` cannot hand
/// back with 1,000 files), so the content hash is kept inline.
#[derive(Debug, PartialEq)]
pub(super) struct Sent {
    status: i32,
    exists: bool,
    size: u64,
    mode: u32,
    uid: u32,
    gid: u32,
    dir_mode: u32,
    hash: HashKey,
    /// Only files in error allocate here.
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
            hash: HashKey::of(&s.content_hash),
            error: s.error.clone(),
        }
    }
}

/// A `content_hash` compared exactly, without a heap allocation for the usual
/// lower-case hex HMAC-SHA256 (see [`Sent`]).
#[derive(Debug, PartialEq)]
enum HashKey {
    Empty,
    Sha256([u8; 32]),
    /// Anything else, compared as text.
    Other(Box<str>),
}

impl HashKey {
    fn of(hash: &str) -> Self {
        let mut digest = [0u8; 32];
        let lower_hex = hash.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        if hash.is_empty() {
            Self::Empty
        } else if lower_hex && hex::decode_to_slice(hash, &mut digest).is_ok() {
            Self::Sha256(digest)
        } else {
            Self::Other(hash.into())
        }
    }
}

impl Tracker {
    pub(super) fn format_for(&self, pattern: u32, path: &Path) -> Format {
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
    pub(super) fn forget(&mut self, path: &Path, force: bool) -> Option<FileState> {
        self.set_dep(path, None);
        let t = self.files.remove(path)?;
        let was_present = t.sent.as_ref().is_some_and(|s| s.exists);
        (was_present && !force).then(|| read::missing_state(path, self.format_for(t.pattern, path)))
    }

    /// Look at one tracked file: the state to send if it really changed (every state
    /// when `force`), re-reading only when its signature changed.
    pub(super) fn check(&mut self, path: &Path, force: bool) -> Option<FileState> {
        let t = self.files.get(path)?;
        let (explicit, format, old_sig) = (t.explicit, self.format_for(t.pattern, path), t.sig);
        if let Some(dep) = t.dep.clone() {
            self.add_watch(&dep);
        }
        let mut sig = None;
        // With a path prefix, the file is read where the node's symlinks lead (below the
        // prefix), never where the kernel would follow an absolute link from here.
        let at = match self.host.resolve(path) {
            Ok(at) => at,
            Err(error) => {
                return self.settle(path, force, read::unreadable_state(path, format, error.to_string(), None), None);
            }
        };
        let via_link = at != path;
        let state = match read::probe(&at) {
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
                let link = link || via_link;
                let dir_mode = read::dir_mode(&at, link);
                if !force && old_sig == Some(Sig::of(&meta, dir_mode)) {
                    return None;
                }
                self.reads += 1;
                match read::read(&at, format, dir_mode, &self.masker, &self.limits) {
                    Read::Done { mut state, sig: s } => {
                        if !read::is_racy(&s, self.racy_window) {
                            sig = Some(s);
                        }
                        state.path = path.to_string_lossy().into_owned();
                        let dep = match link {
                            false => None,
                            true if via_link => {
                                at.parent().filter(|d| Some(*d) != path.parent()).map(Path::to_path_buf)
                            }
                            true => self.link_dir(path),
                        };
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
        self.settle(path, force, state, sig)
    }

    /// Record `state` as the file's latest; it is sent when it differs from what was
    /// last sent (always when `force`).
    fn settle(&mut self, path: &Path, force: bool, state: FileState, sig: Option<Sig>) -> Option<FileState> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_keys_compare_like_the_text() {
        let a = "0f".repeat(32);
        let b = format!("{}0e", &a[..62]);
        assert_eq!(HashKey::of(&a), HashKey::of(&a.clone()));
        assert!(matches!(HashKey::of(&a), HashKey::Sha256(_)));
        assert_ne!(HashKey::of(&a), HashKey::of(&b));
        assert_eq!(HashKey::of(""), HashKey::Empty);
        // Not lower-case hex of 32 bytes: kept as text, never equal to a digest.
        assert_ne!(HashKey::of(&a.to_uppercase()), HashKey::of(&a));
        assert_eq!(HashKey::of("abc"), HashKey::Other("abc".into()));
    }
}
