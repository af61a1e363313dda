//! Pipeline tests against temp dirs: every refusal writes nothing (bytes, mtime, inode
//! and the backup store unchanged), dry runs write nothing, failed commands roll back,
//! backups restore.

use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use driftwatch_formats::{Format, Masker};
use driftwatch_proto::v1::{ApplyChange, ChangeOutcome, ChangeResult, KeyValue, Value};

use super::*;
use crate::config::{AgentConfig, AgentFile, FileCommandsFile, WatchEntry};

mod writes;

const OLD: &str = "PORT=8080\nHOST=0.0.0.0\n";
const KEY: &[u8] = b"apply test fleet key 0123456789";

struct H {
    _t: tempfile::TempDir,
    root: PathBuf,
    state: PathBuf,
    masker: Arc<Masker>,
    applier: Applier,
    config: AgentConfig,
}

/// Layout: `app/.env` (watched, writable through `app/`), `outside/secret.env`.
fn harness(configure: impl FnOnce(&mut AgentFile, &Path)) -> H {
    let t = tempfile::tempdir().unwrap();
    let root = t.path().canonicalize().unwrap();
    std::fs::create_dir_all(root.join("app")).unwrap();
    std::fs::create_dir_all(root.join("outside")).unwrap();
    std::fs::write(root.join("app/.env"), OLD).unwrap();
    std::fs::set_permissions(root.join("app/.env"), std::fs::Permissions::from_mode(0o640)).unwrap();
    std::fs::write(root.join("outside/secret.env"), "TOKEN=x\n").unwrap();
    let state = root.join("state");
    let mut file = AgentFile {
        insecure: Some(true),
        watch: vec![WatchEntry::Plain(format!("{}/app/.env", root.display()))],
        writable: vec![format!("{}/app", root.display())],
        state_dir: Some(state.clone()),
        ..Default::default()
    };
    configure(&mut file, &root);
    let config = AgentConfig::resolve(file, "test").unwrap();
    let masker = Arc::new(Masker::new(KEY));
    let applier = Applier::open(&config, masker.clone()).unwrap();
    H { _t: t, root, state, masker, applier, config }
}

impl H {
    fn p(&self, rel: &str) -> PathBuf {
        self.root.join(rel)
    }
    fn ps(&self, rel: &str) -> String {
        self.p(rel).to_string_lossy().into_owned()
    }
    fn hash(&self, b: &str) -> String {
        self.masker.content_hash(b.as_bytes())
    }
    fn blobs(&self) -> usize {
        std::fs::read_dir(self.state.join("backups/blobs")).map_or(0, |d| d.count())
    }
    fn index_len(&self) -> usize {
        std::fs::read_to_string(self.state.join("backups/index.jsonl")).map_or(0, |s| s.lines().count())
    }
    /// A change of `rel` setting PORT (with the right expected hash).
    fn set_port(&self, rel: &str, port: &str) -> ApplyChange {
        let current = std::fs::read(self.p(rel)).unwrap_or_default();
        ApplyChange {
            change_id: format!("c-{}", rand::random::<u32>()),
            path: self.ps(rel),
            expected_hash: self.masker.content_hash(&current),
            set_text: [("PORT".to_string(), port.to_string())].into(),
            ..Default::default()
        }
    }
    fn apply(&mut self, c: &ApplyChange) -> ChangeResult {
        let r = self.applier.apply(c);
        assert_eq!(r.change_id, c.change_id);
        assert_eq!(r.path, c.path);
        r
    }
}

fn outcome(r: &ChangeResult) -> ChangeOutcome {
    ChangeOutcome::try_from(r.outcome).unwrap()
}

/// Everything observable about a file that a refused change must not touch.
#[derive(Debug, PartialEq)]
struct Untouched {
    bytes: Vec<u8>,
    mtime: (i64, i64),
    ino: u64,
    mode: u32,
}

fn look(p: &Path) -> Untouched {
    let m = std::fs::metadata(p).unwrap();
    Untouched { bytes: std::fs::read(p).unwrap(), mtime: (m.mtime(), m.mtime_nsec()), ino: m.ino(), mode: m.mode() }
}

/// Run a change expected to write nothing; check the file and the backup store.
fn assert_writes_nothing(h: &mut H, file: &Path, c: &ApplyChange, want: ChangeOutcome) -> ChangeResult {
    let before = look(file);
    let (blobs, index) = (h.blobs(), h.index_len());
    let r = h.apply(c);
    assert_eq!(outcome(&r), want, "{r:?}");
    assert_eq!(look(file), before, "the file was touched");
    assert_eq!((h.blobs(), h.index_len()), (blobs, index), "a backup was written");
    if want != ChangeOutcome::DryRun {
        assert!(r.diff.is_empty());
        assert_eq!(r.after_hash, r.before_hash);
    }
    r
}

#[test]
fn nothing_writable_refuses_with_the_documented_message() {
    let mut h = harness(|f, _| f.writable.clear());
    let c = h.set_port("app/.env", "9090");
    let file = h.p("app/.env");
    let r = assert_writes_nothing(&mut h, &file, &c, ChangeOutcome::Refused);
    assert_eq!(r.message, "this agent allows no writes (no writable paths configured)");
    assert!(!h.state.join("backups").exists(), "no backup store without writable paths");
}

#[test]
fn outside_the_allowlist_is_refused() {
    let mut h = harness(|_, _| {});
    let c = h.set_port("outside/secret.env", "1");
    let file = h.p("outside/secret.env");
    let r = assert_writes_nothing(&mut h, &file, &c, ChangeOutcome::Refused);
    assert!(r.message.contains("not inside the writable paths"), "{}", r.message);
    assert!(r.before_hash.is_empty(), "a file outside the allowlist is not even read");
    assert!(!h.state.join("backups").exists(), "the backup store is created by the first backup");
}

#[test]
fn dot_dot_is_refused() {
    let mut h = harness(|_, _| {});
    let mut c = h.set_port("app/.env", "9090");
    c.path = format!("{}/app/../app/.env", h.root.display());
    let file = h.p("app/.env");
    let r = assert_writes_nothing(&mut h, &file, &c, ChangeOutcome::Refused);
    assert!(r.message.contains("'..'"), "{}", r.message);
    c.path = "app/.env".into();
    c.change_id.push_str("-relative");
    let r = assert_writes_nothing(&mut h, &file, &c, ChangeOutcome::Refused);
    assert!(r.message.contains("absolute"), "{}", r.message);
}

#[test]
fn symlink_out_of_the_root_is_refused() {
    let mut h = harness(|_, _| {});
    symlink(h.p("outside/secret.env"), h.p("app/link.env")).unwrap();
    let c = h.set_port("app/link.env", "1");
    let file = h.p("outside/secret.env");
    let r = assert_writes_nothing(&mut h, &file, &c, ChangeOutcome::Refused);
    assert!(r.message.contains("symlink"), "{}", r.message);
    assert!(std::fs::symlink_metadata(h.p("app/link.env")).unwrap().file_type().is_symlink());
}

#[test]
fn stale_expected_hash_is_a_conflict() {
    let mut h = harness(|_, _| {});
    let mut c = h.set_port("app/.env", "9090");
    c.expected_hash = h.hash("PORT=7070\n");
    let file = h.p("app/.env");
    let r = assert_writes_nothing(&mut h, &file, &c, ChangeOutcome::Conflict);
    assert_eq!(r.before_hash, h.hash(OLD));
    assert!(r.message.contains(&c.expected_hash[..12]) && r.message.contains(&r.before_hash[..12]), "{}", r.message);
}

#[test]
fn empty_expected_hash_only_for_a_dry_run() {
    let mut h = harness(|_, _| {});
    let mut c = h.set_port("app/.env", "9090");
    c.expected_hash.clear();
    let file = h.p("app/.env");
    let r = assert_writes_nothing(&mut h, &file, &c, ChangeOutcome::Rejected);
    assert!(r.message.contains("expected_hash"), "{}", r.message);
    c.change_id.push_str("-dry");
    c.dry_run = true;
    let r = assert_writes_nothing(&mut h, &file, &c, ChangeOutcome::DryRun);
    assert!(!r.diff.is_empty());
}

#[test]
fn unknown_key_is_rejected() {
    let mut h = harness(|_, _| {});
    let mut c = h.set_port("app/.env", "9090");
    c.set_text.clear();
    c.remove_keys = vec!["NO_SUCH_KEY".into()];
    let file = h.p("app/.env");
    let r = assert_writes_nothing(&mut h, &file, &c, ChangeOutcome::Rejected);
    assert!(r.message.contains("NO_SUCH_KEY"), "{}", r.message);
    // A typed value without a value, and a change that asks for nothing.
    let mut c = h.set_port("app/.env", "9090");
    c.set_text.clear();
    c.set_keys = vec![KeyValue { key: "PORT".into(), value: None }];
    assert_writes_nothing(&mut h, &file, &c, ChangeOutcome::Rejected);
    let mut c = h.set_port("app/.env", "9090");
    c.set_text.clear();
    assert_writes_nothing(&mut h, &file, &c, ChangeOutcome::Rejected);
    let mut c = h.set_port("app/.env", "9090");
    c.restore_hash = h.hash(OLD);
    let r = assert_writes_nothing(&mut h, &file, &c, ChangeOutcome::Rejected);
    assert!(r.message.contains("not both"), "{}", r.message);
}

#[test]
fn a_result_that_would_not_parse_is_rejected() {
    let mut h = harness(|_, _| {});
    std::fs::write(h.p("app/conf.json"), "{\"port\": 8080}\n").unwrap();
    // A backup (of this file) whose content is not JSON: restoring it must be refused.
    let bad = "{\"port\": \n";
    let same = h.p("app/conf.json");
    let bad_hash =
        h.applier.backups.as_mut().unwrap().put(&same, bad.as_bytes(), Kind::Before, "seed", None, SystemTime::now());
    let bad_hash = bad_hash.unwrap();
    let c = ApplyChange {
        change_id: "restore-bad".into(),
        path: h.ps("app/conf.json"),
        expected_hash: h.hash("{\"port\": 8080}\n"),
        restore_hash: bad_hash,
        ..Default::default()
    };
    let file = h.p("app/conf.json");
    let r = assert_writes_nothing(&mut h, &file, &c, ChangeOutcome::Rejected);
    assert!(r.message.contains("would not parse as"), "{}", r.message);
    assert!(!r.message.contains("port"), "parse errors never quote the file: {}", r.message);
}

#[test]
fn missing_backup_is_rejected() {
    let mut h = harness(|_, _| {});
    let c = ApplyChange {
        change_id: "r1".into(),
        path: h.ps("app/.env"),
        expected_hash: h.hash(OLD),
        restore_hash: "ab".repeat(32),
        ..Default::default()
    };
    let file = h.p("app/.env");
    let r = assert_writes_nothing(&mut h, &file, &c, ChangeOutcome::Rejected);
    assert_eq!(r.message, format!("no backup with hash {}", "ab".repeat(6)));
}

#[test]
fn dry_run_writes_nothing_and_returns_the_diff() {
    let mut h = harness(|_, _| {});
    let mut c = h.set_port("app/.env", "9090");
    c.dry_run = true;
    let file = h.p("app/.env");
    let r = assert_writes_nothing(&mut h, &file, &c, ChangeOutcome::DryRun);
    assert!(r.diff.contains("-PORT=8080") && r.diff.contains("+PORT=9090"), "{}", r.diff);
    assert_eq!(r.before_hash, h.hash(OLD));
    // after_hash: what the file would hash to (the diff shows the rest unchanged).
    let new = OLD.replace("8080", "9090");
    assert_eq!(r.after_hash, h.hash(&new));
}

#[test]
fn same_content_is_unchanged() {
    let mut h = harness(|_, _| {});
    let c = h.set_port("app/.env", "8080");
    let file = h.p("app/.env");
    assert_writes_nothing(&mut h, &file, &c, ChangeOutcome::Unchanged);
}

#[test]
fn applied_change_is_backed_up_and_keeps_the_mode() {
    let mut h = harness(|_, _| {});
    let c = h.set_port("app/.env", "9090");
    let r = h.apply(&c);
    assert_eq!(outcome(&r), ChangeOutcome::Applied, "{r:?}");
    let new = OLD.replace("8080", "9090");
    assert_eq!(std::fs::read_to_string(h.p("app/.env")).unwrap(), new);
    assert_eq!(r.before_hash, h.hash(OLD));
    assert_eq!(r.after_hash, h.hash(&new));
    assert_eq!(r.backup_hash, r.before_hash);
    assert!(r.diff.contains("+PORT=9090"));
    assert_eq!(std::fs::metadata(h.p("app/.env")).unwrap().mode() & 0o7777, 0o640);
    // Both contents are in the store.
    let blobs = h.state.join("backups/blobs");
    assert_eq!(std::fs::read_to_string(blobs.join(&r.before_hash)).unwrap(), OLD);
    assert_eq!(std::fs::read_to_string(blobs.join(&r.after_hash)).unwrap(), new);
    assert_eq!(std::fs::metadata(h.state.join("backups")).unwrap().mode() & 0o777, 0o700);
    // The same change again: answered from memory, not applied twice.
    let again = h.apply(&c);
    assert_eq!(again, r);
    // A typed value.
    let c = ApplyChange {
        change_id: "typed".into(),
        path: h.ps("app/.env"),
        expected_hash: r.after_hash.clone(),
        set_keys: vec![KeyValue { key: "PORT".into(), value: Some(Value::int(7070)) }],
        ..Default::default()
    };
    assert_eq!(outcome(&h.apply(&c)), ChangeOutcome::Applied);
    assert!(std::fs::read_to_string(h.p("app/.env")).unwrap().contains("PORT=7070"));
}

#[test]
fn failing_health_command_rolls_back() {
    let mut h = harness(|f, root| {
        f.files = vec![FileCommandsFile {
            path: format!("{}/app/.env", root.display()),
            reload: Some(vec!["sh".into(), "-c".into(), "echo reloaded $DRIFTWATCH_CHANGED_PATH".into()]),
            health: Some(vec!["sh".into(), "-c".into(), "echo unhealthy >&2; exit 3".into()]),
            timeout: Some("10s".into()),
        }]
    });
    let before = look(&h.p("app/.env"));
    let c = h.set_port("app/.env", "9090");
    let r = h.apply(&c);
    assert_eq!(outcome(&r), ChangeOutcome::RolledBack, "{r:?}");
    let after = look(&h.p("app/.env"));
    assert_eq!(after.bytes, before.bytes, "the previous bytes are back");
    assert_eq!(after.mode, before.mode);
    assert_eq!(r.after_hash, r.before_hash);
    assert!(r.message.contains("health command") && r.message.contains("exited with status 3"), "{}", r.message);
    assert!(r.message.contains("put back"), "{}", r.message);
    assert!(r.health_output.contains("unhealthy"), "{}", r.health_output);
    assert_eq!(r.reload_output.matches("reloaded").count(), 2, "reloaded after the rollback: {}", r.reload_output);
    assert!(r.reload_output.contains(&h.ps("app/.env")));
    assert_eq!(r.backup_hash, h.hash(OLD));
}

#[test]
fn reload_timeout_rolls_back() {
    let mut h = harness(|f, root| {
        f.files = vec![FileCommandsFile {
            path: format!("{}/app/*.env", root.display()),
            reload: Some(vec!["sleep".into(), "30".into()]),
            health: None,
            timeout: Some("200ms".into()),
        }]
    });
    let c = h.set_port("app/.env", "9090");
    // `sleep 30` against a 200 ms timeout: killed, not waited for (the outcome says
    // so; no wall-clock bound here, a loaded machine may take its time).
    let r = h.apply(&c);
    assert_eq!(outcome(&r), ChangeOutcome::RolledBack, "{r:?}");
    assert!(r.message.contains("timed out"), "{}", r.message);
    assert_eq!(std::fs::read_to_string(h.p("app/.env")).unwrap(), OLD);
}

#[test]
fn passing_commands_apply() {
    let mut h = harness(|f, root| {
        f.files = vec![FileCommandsFile {
            path: format!("{}/app/.env", root.display()),
            reload: Some(vec!["true".into()]),
            health: Some(vec!["sh".into(), "-c".into(), "echo healthy".into()]),
            timeout: None,
        }]
    });
    let c = h.set_port("app/.env", "9090");
    let r = h.apply(&c);
    assert_eq!(outcome(&r), ChangeOutcome::Applied, "{r:?}");
    assert_eq!(r.health_output, "healthy");
}

#[test]
fn restore_hash_of_a_backup() {
    let mut h = harness(|_, _| {});
    let c = h.set_port("app/.env", "9090");
    let applied = h.apply(&c);
    assert_eq!(outcome(&applied), ChangeOutcome::Applied);
    // Put the old content back by its hash (a rollback after a rollout).
    let restore = ApplyChange {
        change_id: "restore".into(),
        path: h.ps("app/.env"),
        expected_hash: applied.after_hash.clone(),
        restore_hash: applied.before_hash.clone(),
        ..Default::default()
    };
    let r = h.apply(&restore);
    assert_eq!(outcome(&r), ChangeOutcome::Applied, "{r:?}");
    assert_eq!(std::fs::read_to_string(h.p("app/.env")).unwrap(), OLD);
    // And forward again: the content this agent wrote was backed up too.
    let forward = ApplyChange {
        change_id: "forward".into(),
        path: h.ps("app/.env"),
        expected_hash: h.hash(OLD),
        restore_hash: applied.after_hash.clone(),
        ..Default::default()
    };
    assert_eq!(outcome(&h.apply(&forward)), ChangeOutcome::Applied);
    // A deleted file comes back (empty expected hash: the server's view of a missing file),
    // with the mode it had.
    std::fs::remove_file(h.p("app/.env")).unwrap();
    let recreate = ApplyChange {
        change_id: "recreate".into(),
        path: h.ps("app/.env"),
        restore_hash: applied.before_hash.clone(),
        ..Default::default()
    };
    let r = h.apply(&recreate);
    assert_eq!(outcome(&r), ChangeOutcome::Applied, "{r:?}");
    assert!(r.before_hash.is_empty());
    assert_eq!(std::fs::read_to_string(h.p("app/.env")).unwrap(), OLD);
    assert_eq!(std::fs::metadata(h.p("app/.env")).unwrap().mode() & 0o7777, 0o640);
}

#[test]
fn symlinked_file_is_written_at_its_target() {
    let mut h = harness(|_, _| {});
    std::fs::create_dir_all(h.p("app/releases/1")).unwrap();
    std::fs::rename(h.p("app/.env"), h.p("app/releases/1/.env")).unwrap();
    symlink(h.p("app/releases/1/.env"), h.p("app/.env")).unwrap();
    let c = h.set_port("app/.env", "9090");
    let r = h.apply(&c);
    assert_eq!(outcome(&r), ChangeOutcome::Applied, "{r:?}");
    assert!(std::fs::symlink_metadata(h.p("app/.env")).unwrap().file_type().is_symlink(), "still a symlink");
    assert!(std::fs::read_to_string(h.p("app/releases/1/.env")).unwrap().contains("PORT=9090"));
}

#[test]
fn format_comes_from_the_watch_override() {
    let h = harness(|f, root| f.watch.push(WatchEntry::Plain(format!("env:{}/app/settings.conf", root.display()))));
    let p = h.p("app/settings.conf");
    assert_eq!(h.applier.format_for(&p, &p), Format::Env);
    let q = h.p("app/other.conf");
    assert_eq!(h.applier.format_for(&q, &q), Format::Ini);
}

#[test]
fn leftover_temp_files_are_removed_at_open() {
    let h = harness(|_, _| {});
    let tmp = h.p("app").join(write::temp_name(std::ffi::OsStr::new(".env")));
    std::fs::write(&tmp, "PORT=").unwrap();
    let _again = Applier::open(&h.config, h.masker.clone()).unwrap();
    assert!(!tmp.exists());
    assert!(h.p("app/.env").exists());
}

/// The file watcher reports a written change like any other.
#[test]
fn watcher_reports_the_applied_change() {
    use crate::watch::{FileWatcher, WatchConfig};
    let mut h = harness(|_, _| {});
    let rt = tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap();
    let (watcher, mut rx) = FileWatcher::start(
        WatchConfig {
            patterns: h.config.watch.clone(),
            debounce: Duration::from_millis(5),
            rescan_interval: Duration::from_secs(60),
            limits: h.config.limits.clone(),
            host_root: Default::default(),
        },
        h.masker.clone(),
    )
    .unwrap();
    let (_, files) = watcher.full_scan();
    assert_eq!(files[0].content_hash, h.hash(OLD), "the watcher and the applier hash alike");
    let c = h.set_port("app/.env", "9090");
    let r = h.apply(&c);
    assert_eq!(outcome(&r), ChangeOutcome::Applied);
    // Bounds a hang only: a snapshot follows within milliseconds when the machine is idle.
    let deadline = Instant::now() + Duration::from_secs(30);
    let seen = rt.block_on(async {
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, rx.recv()).await {
                Ok(Some(batch)) => {
                    if batch.files.iter().any(|f| f.content_hash == r.after_hash) {
                        return true;
                    }
                }
                _ => return false,
            }
        }
    });
    assert!(seen, "no snapshot with the new hash");
    drop(watcher);
}
