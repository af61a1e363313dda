//! The local backup store, `<state_dir>/backups/`:
//!
//! - `blobs/<hash>`: content, named by its keyed content hash (the same
//!   `Masker::fingerprint` the agent reports as `FileState.content_hash`), written to a
//!   temp file, fsynced and renamed, so a blob is whole or absent;
//! - `index.jsonl`: one JSON line per backup (the resolved path, hash, time, kind, change
//!   id, owner and mode), appended and fsynced before the file it protects is written. A
//!   torn last line (crash while appending) is dropped when the store is opened.
//!
//! A version is bound to its file: [`BackupStore::lookup`] gives a hash's content only
//! for the resolved path it was backed up from, so a restore can never put one file's
//! content (secrets included) into another. A line without a path, or a blob that no
//! line names, is never restored.
//!
//! The directory is 0700: blobs hold file content in clear, secrets included.
//!
//! Retention: per path, the newest `keep` distinct contents younger than `max_age`.
//! Pruning never removes a protected hash (the ones just written) nor a blob that a kept
//! entry still references.

use std::collections::{HashMap, HashSet};
use std::fs::{DirBuilder, File, OpenOptions};
use std::io::{self, Write as _};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use driftwatch_formats::Masker;
use serde::{Deserialize, Serialize};

use super::write::{FileMeta, sync_dir};
use crate::config::BackupPolicy;
use crate::error::{AgentError, Result};

const INDEX: &str = "index.jsonl";
const BLOBS: &str = "blobs";
const TMP_PREFIX: &str = ".tmp-";

/// Why a backup was taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// The content a change replaced.
    Before,
    /// The content a change wrote (so it can be restored later too).
    After,
}

/// One index line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// The real (canonical) path the content was backed up from or written to. Empty on
    /// a line that has none (kept, but never restored: see [`BackupStore::lookup`]).
    #[serde(default)]
    pub path: String,
    pub hash: String,
    /// Unix milliseconds.
    pub time: i64,
    pub kind: Kind,
    #[serde(default)]
    pub change_id: String,
    #[serde(default)]
    pub mode: u32,
    #[serde(default)]
    pub uid: u32,
    #[serde(default)]
    pub gid: u32,
}

fn millis(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

/// A keyed content hash as this store names blobs: 64 lower-case hex digits.
pub fn is_hash(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// A version's content for a restore of one file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    Found(Vec<u8>),
    /// No such version.
    Missing,
    /// The version exists but may not be restored to this file; why.
    Refused(String),
    /// The store could not be read.
    Failed(String),
}

#[derive(Debug)]
pub struct BackupStore {
    dir: PathBuf,
    blobs: PathBuf,
    /// Opened (and the directories created) by the first backup: a store that never
    /// backed anything up leaves nothing on disk.
    index: Option<File>,
    entries: Vec<Entry>,
    policy: BackupPolicy,
    masker: Arc<Masker>,
}

fn create_dir(p: &Path) -> io::Result<()> {
    DirBuilder::new().recursive(true).mode(0o700).create(p)
}

impl BackupStore {
    /// Open the store in `dir` (created by the first backup); drops a torn last index line
    /// and stale temp blobs.
    pub fn open(dir: &Path, policy: BackupPolicy, masker: Arc<Masker>) -> Result<Self> {
        let err = |e: io::Error| AgentError::Backup { path: dir.to_path_buf(), message: e.to_string() };
        let blobs = dir.join(BLOBS);
        let index_path = dir.join(INDEX);
        let text = match std::fs::read(&index_path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(err(e)),
        };
        let mut entries = Vec::new();
        let mut damaged = !text.is_empty() && !text.ends_with(b"\n");
        for line in text.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
            match serde_json::from_slice::<Entry>(line) {
                Ok(e) if is_hash(&e.hash) => entries.push(e),
                _ => damaged = true,
            }
        }
        if damaged {
            tracing::warn!(
                path = %index_path.display(),
                kept = entries.len(),
                "backup index had a damaged line (interrupted write?); rewritten without it"
            );
            write_index(dir, &entries).map_err(err)?;
        }
        if let Ok(listing) = std::fs::read_dir(&blobs) {
            for e in listing.flatten() {
                if e.file_name().to_string_lossy().starts_with(TMP_PREFIX) {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
        Ok(Self { dir: dir.to_path_buf(), blobs, index: None, entries, policy, masker })
    }

    /// Open the index for appending (creating the store's directories first).
    fn open_index(&mut self) -> io::Result<()> {
        if self.index.is_none() {
            create_dir(&self.blobs)?;
            let f = OpenOptions::new().create(true).append(true).mode(0o600).open(self.dir.join(INDEX))?;
            self.index = Some(f);
        }
        Ok(())
    }

    fn err(&self, e: impl std::fmt::Display) -> AgentError {
        AgentError::Backup { path: self.dir.clone(), message: e.to_string() }
    }

    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }

    fn blob_path(&self, hash: &str) -> PathBuf {
        self.blobs.join(hash)
    }

    /// Store `content` (durably) and record it for `path`. Returns its hash.
    pub fn put(
        &mut self,
        path: &Path,
        content: &[u8],
        kind: Kind,
        change_id: &str,
        meta: Option<FileMeta>,
        now: SystemTime,
    ) -> Result<String> {
        let hash = self.masker.content_hash(content);
        if let Err(e) = self.open_index() {
            return Err(self.err(e));
        }
        let blob = self.blob_path(&hash);
        let present = std::fs::metadata(&blob).is_ok_and(|m| m.len() == content.len() as u64);
        if !present {
            let tmp = self.blobs.join(format!("{TMP_PREFIX}{}", hex::encode(rand::random::<[u8; 8]>())));
            let written = (|| {
                let mut f = OpenOptions::new().write(true).create_new(true).mode(0o600).open(&tmp)?;
                f.write_all(content)?;
                f.sync_all()?;
                std::fs::rename(&tmp, &blob)?;
                sync_dir(&self.blobs)
            })();
            if let Err(e) = written {
                let _ = std::fs::remove_file(&tmp);
                return Err(self.err(format!("cannot write blob: {e}")));
            }
        }
        let m = meta.unwrap_or(FileMeta { mode: 0, uid: 0, gid: 0 });
        let entry = Entry {
            path: path.to_string_lossy().into_owned(),
            hash: hash.clone(),
            time: millis(now),
            kind,
            change_id: change_id.to_string(),
            mode: m.mode,
            uid: m.uid,
            gid: m.gid,
        };
        let mut line = serde_json::to_vec(&entry).map_err(|e| self.err(e))?;
        line.push(b'\n');
        let index = self.index.as_mut().expect("opened above");
        let appended = index.write_all(&line).and_then(|()| index.sync_data());
        appended.map_err(|e| self.err(e))?;
        self.entries.push(entry);
        Ok(hash)
    }

    /// The content with this hash, checked against the hash. `None`: no such backup.
    pub fn get(&self, hash: &str) -> Result<Option<Vec<u8>>> {
        if !is_hash(hash) {
            return Ok(None);
        }
        let content = match std::fs::read(self.blob_path(hash)) {
            Ok(c) => c,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(self.err(e)),
        };
        if self.masker.content_hash(&content) != hash {
            return Err(self.err(format!("backup {} is damaged (its content does not match its hash)", short(hash))));
        }
        Ok(Some(content))
    }

    /// The content of version `hash` for a restore of the file at `path` (resolved):
    /// only a version backed up from that same path.
    pub fn lookup(&self, path: &Path, hash: &str) -> Lookup {
        if !is_hash(hash) {
            return Lookup::Missing;
        }
        let p = path.to_string_lossy();
        let recorded: Vec<&Entry> = self.entries.iter().filter(|e| e.hash == hash).collect();
        if !recorded.iter().any(|e| e.path == p) {
            let from: Vec<&str> = recorded.iter().map(|e| e.path.as_str()).filter(|p| !p.is_empty()).collect();
            let reason = match (from.first(), recorded.is_empty()) {
                (Some(other), _) => format!("version {} was backed up from {other}, not {p}", short(hash)),
                (None, false) => format!(
                    "version {} has no recorded path in the backup index (an older backup); it cannot be restored \
                     remotely",
                    short(hash)
                ),
                // A blob no index line names (the index was lost or edited).
                (None, true) if self.blob_path(hash).exists() => format!(
                    "version {} is not recorded in the backup index, so the file it came from is unknown; it \
                     cannot be restored remotely",
                    short(hash)
                ),
                (None, true) => return Lookup::Missing,
            };
            return Lookup::Refused(reason);
        }
        match self.get(hash) {
            Ok(Some(b)) => Lookup::Found(b),
            Ok(None) => Lookup::Missing,
            Err(e) => Lookup::Failed(e.to_string()),
        }
    }

    /// Owner and mode the file at `path` had when `hash` was last recorded for it.
    pub fn meta_of(&self, path: &Path, hash: &str) -> Option<FileMeta> {
        let p = path.to_string_lossy();
        self.entries.iter().rev().find(|e| e.hash == hash && e.path == p && e.mode != 0).map(|e| FileMeta {
            mode: e.mode,
            uid: e.uid,
            gid: e.gid,
        })
    }

    /// Distinct paths with backups (their directories may hold leftover temp files).
    pub fn paths(&self) -> HashSet<PathBuf> {
        self.entries.iter().filter(|e| !e.path.is_empty()).map(|e| PathBuf::from(&e.path)).collect()
    }

    /// Apply the retention policy. Returns how many entries were dropped.
    pub fn prune(&mut self, now: SystemTime, protect: &[&str]) -> Result<usize> {
        let cutoff = millis(now) - self.policy.max_age.as_millis() as i64;
        // Newest first (entries are appended in time order; the index breaks ties).
        let mut order: Vec<usize> = (0..self.entries.len()).collect();
        order.sort_by_key(|&i| (std::cmp::Reverse(self.entries[i].time), std::cmp::Reverse(i)));
        let mut kept_per_path: HashMap<&str, Vec<&str>> = HashMap::new();
        let mut keep = vec![false; self.entries.len()];
        for &i in &order {
            let e = &self.entries[i];
            let hashes = kept_per_path.entry(e.path.as_str()).or_default();
            if hashes.contains(&e.hash.as_str()) {
                continue; // an older duplicate of a kept (path, hash)
            }
            if protect.contains(&e.hash.as_str()) || (hashes.len() < self.policy.keep && e.time >= cutoff) {
                hashes.push(e.hash.as_str());
                keep[i] = true;
            }
        }
        let dropped = keep.iter().filter(|k| !**k).count();
        if dropped == 0 {
            return Ok(0);
        }
        let entries: Vec<Entry> = self.entries.iter().zip(&keep).filter(|(_, k)| **k).map(|(e, _)| e.clone()).collect();
        write_index(&self.dir, &entries).map_err(|e| self.err(e))?;
        self.index = None; // reopened (the file was replaced) at the next backup
        self.entries = entries;
        let referenced: HashSet<&str> =
            self.entries.iter().map(|e| e.hash.as_str()).chain(protect.iter().copied()).collect();
        let Ok(listing) = std::fs::read_dir(&self.blobs) else { return Ok(dropped) };
        for f in listing.flatten() {
            let name = f.file_name();
            let name = name.to_string_lossy();
            if is_hash(&name)
                && !referenced.contains(name.as_ref())
                && let Err(e) = std::fs::remove_file(f.path())
            {
                tracing::warn!(blob = %short(&name), error = %e, "cannot remove a pruned backup");
            }
        }
        tracing::debug!(dropped, kept = self.entries.len(), "backups pruned");
        Ok(dropped)
    }
}

/// Replace the index with `entries`, atomically.
fn write_index(dir: &Path, entries: &[Entry]) -> io::Result<()> {
    let tmp = dir.join(format!("{INDEX}.tmp"));
    let mut buf = Vec::new();
    for e in entries {
        serde_json::to_writer(&mut buf, e).map_err(io::Error::other)?;
        buf.push(b'\n');
    }
    let mut f = OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&tmp)?;
    f.write_all(&buf)?;
    f.sync_all()?;
    std::fs::rename(&tmp, dir.join(INDEX))?;
    sync_dir(dir)
}

/// The first 12 hex digits of a hash, for messages.
pub fn short(hash: &str) -> &str {
    &hash[..hash.len().min(12)]
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn masker() -> Arc<Masker> {
        Arc::new(Masker::new(b"backup test key 0123456789"))
    }

    fn open(dir: &Path, keep: usize, max_age: Duration) -> BackupStore {
        BackupStore::open(dir, BackupPolicy { keep, max_age }, masker()).unwrap()
    }

    fn blobs(dir: &Path) -> usize {
        std::fs::read_dir(dir.join(BLOBS)).unwrap().count()
    }

    const DAY: Duration = Duration::from_secs(86400);

    #[test]
    fn content_addressed_and_verified() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("backups");
        let mut s = open(&dir, 20, 30 * DAY);
        assert!(!dir.exists(), "nothing on disk before the first backup");
        let now = SystemTime::now();
        let p = Path::new("/etc/app/.env");
        let h1 = s.put(p, b"A=1\n", Kind::Before, "c1", None, now).unwrap();
        assert_eq!(h1, masker().content_hash(b"A=1\n"));
        let h2 = s.put(Path::new("/etc/other/.env"), b"A=1\n", Kind::Before, "c2", None, now).unwrap();
        assert_eq!(h1, h2);
        assert_eq!(blobs(&dir), 1, "same content, one blob");
        assert_eq!(s.get(&h1).unwrap().unwrap(), b"A=1\n");
        assert!(s.get(&"0".repeat(64)).unwrap().is_none());
        assert!(s.get("../../etc/passwd").unwrap().is_none(), "not a hash: never a path");
        // A damaged blob is an error, not wrong content.
        std::fs::write(dir.join(BLOBS).join(&h1), b"A=2\n").unwrap();
        assert!(s.get(&h1).is_err());
    }

    #[test]
    fn survives_reopen_and_a_torn_index_line() {
        let d = tempfile::tempdir().unwrap();
        let p = Path::new("/etc/app/.env");
        let meta = FileMeta { mode: 0o640, uid: 1, gid: 2 };
        let h = {
            let mut s = open(d.path(), 20, 30 * DAY);
            s.put(p, b"A=1\n", Kind::Before, "c1", Some(meta), SystemTime::now()).unwrap()
        };
        // A crash in the middle of appending the next line.
        let mut f = OpenOptions::new().append(true).open(d.path().join(INDEX)).unwrap();
        f.write_all(b"{\"path\":\"/etc/app/.e").unwrap();
        std::fs::write(d.path().join(BLOBS).join(".tmp-0011"), b"partial").unwrap();
        drop(f);
        let mut s = open(d.path(), 20, 30 * DAY);
        assert_eq!(s.entries().len(), 1);
        assert_eq!(s.get(&h).unwrap().unwrap(), b"A=1\n");
        assert_eq!(s.meta_of(p, &h), Some(meta));
        assert_eq!(blobs(d.path()), 1, "the stale temp blob is gone");
        s.put(p, b"A=2\n", Kind::After, "c1", None, SystemTime::now()).unwrap();
        let s = open(d.path(), 20, 30 * DAY);
        assert_eq!(s.entries().len(), 2);
    }

    #[test]
    fn a_version_is_given_only_for_the_path_it_was_backed_up_from() {
        let d = tempfile::tempdir().unwrap();
        let mut s = open(d.path(), 20, 30 * DAY);
        let (a, b) = (Path::new("/etc/a.env"), Path::new("/etc/b.env"));
        let h = s.put(a, b"A=1\n", Kind::Before, "c", None, SystemTime::now()).unwrap();
        assert_eq!(s.lookup(a, &h), Lookup::Found(b"A=1\n".to_vec()));
        assert_eq!(
            s.lookup(b, &h),
            Lookup::Refused(format!("version {} was backed up from /etc/a.env, not /etc/b.env", short(&h)))
        );
        assert_eq!(s.lookup(a, &"0".repeat(64)), Lookup::Missing);
        assert_eq!(s.lookup(a, "../../etc/passwd"), Lookup::Missing);
        // The same content backed up from b too: then b may have it.
        s.put(b, b"A=1\n", Kind::Before, "c", None, SystemTime::now()).unwrap();
        assert!(matches!(s.lookup(b, &h), Lookup::Found(_)));
        // Owner and mode come from the same path only.
        let meta = FileMeta { mode: 0o640, uid: 1, gid: 2 };
        let h2 = s.put(a, b"A=2\n", Kind::Before, "c", Some(meta), SystemTime::now()).unwrap();
        assert_eq!(s.meta_of(a, &h2), Some(meta));
        assert_eq!(s.meta_of(b, &h2), None);
    }

    #[test]
    fn a_line_without_a_path_is_kept_but_never_restored() {
        let d = tempfile::tempdir().unwrap();
        let m = masker();
        let (old, lone) = (m.content_hash(b"old"), m.content_hash(b"lone"));
        std::fs::create_dir_all(d.path().join(BLOBS)).unwrap();
        std::fs::write(d.path().join(BLOBS).join(&old), b"old").unwrap();
        std::fs::write(d.path().join(BLOBS).join(&lone), b"lone").unwrap();
        std::fs::write(d.path().join(INDEX), format!("{{\"hash\":\"{old}\",\"time\":1,\"kind\":\"before\"}}\n"))
            .unwrap();
        let s = open(d.path(), 20, 30 * DAY);
        assert_eq!(s.entries().len(), 1, "the line is kept, not dropped as damaged");
        assert!(s.paths().is_empty());
        let p = Path::new("/etc/a.env");
        assert!(matches!(s.lookup(p, &old), Lookup::Refused(m) if m.contains("no recorded path")));
        assert!(matches!(s.lookup(p, &lone), Lookup::Refused(m) if m.contains("not recorded in the backup index")));
    }

    #[test]
    fn retention_by_count_per_path() {
        let d = tempfile::tempdir().unwrap();
        let mut s = open(d.path(), 3, 30 * DAY);
        let t0 = SystemTime::now() - Duration::from_secs(100);
        let a = Path::new("/etc/a.env");
        let b = Path::new("/etc/b.env");
        let mut hashes = Vec::new();
        for i in 0..5 {
            let t = t0 + Duration::from_secs(i);
            hashes.push(s.put(a, format!("A={i}\n").as_bytes(), Kind::Before, "c", None, t).unwrap());
        }
        let hb = s.put(b, b"B=1\n", Kind::Before, "c", None, t0).unwrap();
        // A duplicate of the newest content for a: counts once.
        s.put(a, b"A=4\n", Kind::After, "c", None, t0 + Duration::from_secs(6)).unwrap();
        let dropped = s.prune(SystemTime::now(), &[]).unwrap();
        assert_eq!(dropped, 3); // A=0, A=1, and the older A=4 duplicate
        let kept: Vec<&str> = s.entries().iter().map(|e| e.hash.as_str()).collect();
        for h in &hashes[2..] {
            assert!(kept.contains(&h.as_str()));
        }
        assert!(kept.contains(&hb.as_str()), "other paths are counted on their own");
        assert!(s.get(&hashes[0]).unwrap().is_none());
        assert!(s.get(&hashes[1]).unwrap().is_none());
        assert_eq!(blobs(d.path()), 4);
        // Survives reopen.
        let s = open(d.path(), 3, 30 * DAY);
        assert_eq!(s.entries().len(), 4);
    }

    #[test]
    fn retention_by_age_keeps_protected_and_referenced() {
        let d = tempfile::tempdir().unwrap();
        let mut s = open(d.path(), 20, DAY);
        let old = SystemTime::now() - 3 * DAY;
        let now = SystemTime::now();
        let h_old = s.put(Path::new("/etc/a.env"), b"old\n", Kind::Before, "c", None, old).unwrap();
        let h_shared = s.put(Path::new("/etc/a.env"), b"shared\n", Kind::Before, "c", None, old).unwrap();
        // The same content, recently backed up for another path: the blob must stay.
        s.put(Path::new("/etc/b.env"), b"shared\n", Kind::Before, "c", None, now).unwrap();
        let h_protected = s.put(Path::new("/etc/c.env"), b"protected\n", Kind::Before, "c", None, old).unwrap();
        let dropped = s.prune(now, &[h_protected.as_str()]).unwrap();
        assert_eq!(dropped, 2);
        assert!(s.get(&h_old).unwrap().is_none());
        assert_eq!(s.get(&h_shared).unwrap().unwrap(), b"shared\n");
        assert_eq!(s.get(&h_protected).unwrap().unwrap(), b"protected\n");
        // The just-written blob with no entry at all (protected) survives too.
        let lone = masker().content_hash(b"lone");
        std::fs::write(d.path().join(BLOBS).join(&lone), b"lone").unwrap();
        s.put(Path::new("/etc/d.env"), b"x\n", Kind::Before, "c", None, old).unwrap();
        s.prune(now, &[lone.as_str()]).unwrap();
        assert!(s.get(&lone).unwrap().is_some());
    }
}
