//! Write safety: secrets are never edited, versions are restored only to the file they
//! came from, and the path from the root to the file cannot be swapped under a write.

use std::collections::BTreeMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use driftwatch_proto::v1::{ApplyChange, ChangeOutcome, KeyValue, Value};

use super::{H, OLD, assert_writes_nothing, harness, look, outcome};
use crate::apply::{Applier, write};

const SECRETS: &str = "PORT=8080\nDB_PASSWORD=hunter2hunter2\nDATABASE_URL=postgres://app:s3cretpass@db/app\n";

fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

impl H {
    fn change(&self, rel: &str, f: impl FnOnce(&mut ApplyChange)) -> ApplyChange {
        let current = std::fs::read(self.p(rel)).unwrap_or_default();
        let mut c = ApplyChange {
            change_id: format!("c-{}", rand::random::<u32>()),
            path: self.ps(rel),
            expected_hash: if current.is_empty() { String::new() } else { self.masker.content_hash(&current) },
            ..Default::default()
        };
        f(&mut c);
        c
    }

    fn restore(&self, rel: &str, hash: &str) -> ApplyChange {
        self.change(rel, |c| c.restore_hash = hash.to_string())
    }
}

fn text(k: &str, v: &str) -> BTreeMap<String, String> {
    [(k.to_string(), v.to_string())].into()
}

/// Every file below `dir` with its content.
fn tree(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let t = e.file_type().unwrap();
            if t.is_dir() {
                todo.push(e.path());
            } else if t.is_file() {
                out.insert(e.path(), std::fs::read(e.path()).unwrap());
            } else {
                out.insert(e.path(), Vec::new());
            }
        }
    }
    out
}

#[test]
fn a_key_holding_a_secret_is_never_edited_nor_compared() {
    let mut h = harness(|_, _| {});
    std::fs::write(h.p("app/.env"), SECRETS).unwrap();
    let file = h.p("app/.env");
    let changes = [
        h.change("app/.env", |c| c.set_text = text("DB_PASSWORD", "other")),
        h.change("app/.env", |c| c.set_text = text("DATABASE_URL", "postgres://db/app")),
        h.change("app/.env", |c| {
            c.set_keys = vec![KeyValue { key: "DATABASE_URL".into(), value: Some(Value::string("postgres://db/x")) }]
        }),
        h.change("app/.env", |c| c.remove_keys = vec!["DB_PASSWORD".into()]),
        // A dry run with the secret's real value: refused like a wrong guess, no diff.
        h.change("app/.env", |c| {
            c.dry_run = true;
            c.expected_hash.clear();
            c.set_text = text("DB_PASSWORD", "hunter2hunter2");
        }),
    ];
    for c in &changes {
        let r = assert_writes_nothing(&mut h, &file, c, ChangeOutcome::Refused);
        assert!(r.message.contains("is a secret") && r.message.contains("RestoreVersion"), "{}", r.message);
        assert!(!r.message.contains("hunter2") && !r.message.contains("s3cretpass"), "{}", r.message);
        assert!(r.diff.is_empty());
    }
    // A new value that looks secret, under a key that is not one yet.
    let c = h.change("app/.env", |c| c.set_text = text("PORT", "ghp_0123456789abcdefghijklmnopqrstuvwxyzAB"));
    let r = assert_writes_nothing(&mut h, &file, &c, ChangeOutcome::Refused);
    assert!(r.message.contains("looks like a secret (token shape)"), "{}", r.message);
    assert!(!h.state.join("backups").exists(), "not even a backup");
    // The other keys of the file are edited as usual, and the diff masks the secrets.
    let c = h.change("app/.env", |c| c.set_text = text("PORT", "9090"));
    let r = h.apply(&c);
    assert_eq!(outcome(&r), ChangeOutcome::Applied, "{r:?}");
    assert!(!r.diff.contains("hunter2") && !r.diff.contains("s3cretpass"), "{}", r.diff);
    assert_eq!(std::fs::read_to_string(&file).unwrap(), SECRETS.replace("8080", "9090"));
}

#[test]
fn a_version_is_restored_only_to_the_file_it_was_backed_up_from() {
    let mut h = harness(|_, _| {});
    std::fs::write(h.p("app/other.env"), "PORT=1\n").unwrap();
    let applied = h.apply(&h.set_port("app/.env", "9090"));
    assert_eq!(outcome(&applied), ChangeOutcome::Applied);
    let other = h.p("app/other.env");
    for hash in [&applied.before_hash, &applied.after_hash] {
        let c = h.restore("app/other.env", hash);
        let r = assert_writes_nothing(&mut h, &other, &c, ChangeOutcome::Refused);
        let want = format!("was backed up from {}, not {}", h.p("app/.env").display(), other.display());
        assert!(r.message.contains(&want) && r.message.contains(&hash[..12]), "{}", r.message);
    }
    // A dry run too.
    let c = h.change("app/other.env", |c| {
        c.dry_run = true;
        c.restore_hash = applied.before_hash.clone();
    });
    assert_writes_nothing(&mut h, &other, &c, ChangeOutcome::Refused);
    // Its own version is fine.
    let r = h.apply(&h.restore("app/.env", &applied.before_hash));
    assert_eq!(outcome(&r), ChangeOutcome::Applied, "{r:?}");
    assert_eq!(std::fs::read_to_string(h.p("app/.env")).unwrap(), OLD);
}

#[test]
fn a_backup_without_a_recorded_path_is_never_restored() {
    let h = harness(|_, _| {});
    // As an index line without a path, and as a blob no line names.
    let backups = h.state.join("backups");
    std::fs::create_dir_all(backups.join("blobs")).unwrap();
    let (a, b) = ("PORT=1\n", "PORT=2\n");
    for content in [a, b] {
        std::fs::write(backups.join("blobs").join(h.hash(content)), content).unwrap();
    }
    let line = format!("{{\"hash\":\"{}\",\"time\":1,\"kind\":\"before\"}}\n", h.hash(a));
    std::fs::write(backups.join("index.jsonl"), line).unwrap();
    let mut h = H { applier: Applier::open(&h.config, h.masker.clone()).unwrap(), ..h };
    let file = h.p("app/.env");
    let c = h.restore("app/.env", &h.hash(a));
    let r = assert_writes_nothing(&mut h, &file, &c, ChangeOutcome::Refused);
    assert!(r.message.contains("no recorded path"), "{}", r.message);
    let c = h.restore("app/.env", &h.hash(b));
    let r = assert_writes_nothing(&mut h, &file, &c, ChangeOutcome::Refused);
    assert!(r.message.contains("not recorded in the backup index"), "{}", r.message);
}

#[test]
fn a_restore_keeps_the_current_mode_and_owner() {
    let mut h = harness(|_, _| {});
    let applied = h.apply(&h.set_port("app/.env", "9090"));
    assert_eq!(outcome(&applied), ChangeOutcome::Applied);
    // The operator tightens the file after the backup (recorded with 0640).
    let file = h.p("app/.env");
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
    if is_root() {
        std::os::unix::fs::chown(&file, Some(4321), Some(4322)).unwrap();
    }
    let before = std::fs::metadata(&file).unwrap();
    let r = h.apply(&h.restore("app/.env", &applied.before_hash));
    assert_eq!(outcome(&r), ChangeOutcome::Applied, "{r:?}");
    let after = std::fs::metadata(&file).unwrap();
    assert_eq!(std::fs::read_to_string(&file).unwrap(), OLD);
    assert_eq!(after.mode() & 0o7777, 0o600, "the current mode, not the backup's");
    assert_eq!((after.uid(), after.gid()), (before.uid(), before.gid()));
    assert_ne!(after.ino(), before.ino(), "replaced by rename");
}

#[test]
fn symlinks_inside_the_root_are_followed() {
    let mut h = harness(|_, _| {});
    std::fs::create_dir_all(h.p("app/sites-available")).unwrap();
    std::fs::create_dir_all(h.p("app/sites-enabled")).unwrap();
    std::fs::write(h.p("app/sites-available/x.env"), OLD).unwrap();
    symlink("../sites-available/x.env", h.p("app/sites-enabled/x.env")).unwrap();
    // And a directory link with a relative target.
    symlink("sites-available", h.p("app/current")).unwrap();
    for rel in ["app/sites-enabled/x.env", "app/current/x.env"] {
        let c = h.set_port(rel, &format!("{}", rand::random::<u16>() | 1));
        let r = h.apply(&c);
        assert_eq!(outcome(&r), ChangeOutcome::Applied, "{rel}: {r:?}");
    }
    assert!(std::fs::symlink_metadata(h.p("app/sites-enabled/x.env")).unwrap().file_type().is_symlink());
    assert!(!std::fs::read_to_string(h.p("app/sites-available/x.env")).unwrap().contains("8080"));
}

#[test]
fn symlinks_out_of_the_root_are_refused_by_name() {
    let mut h = harness(|_, _| {});
    let outside = h.p("outside/secret.env");
    std::fs::create_dir_all(h.p("app/conf")).unwrap();
    // Relative with `..` above the root, and a directory link to an absolute path outside.
    symlink("../../outside/secret.env", h.p("app/conf/up.env")).unwrap();
    symlink(h.p("outside"), h.p("app/elsewhere")).unwrap();
    for (rel, link) in [("app/conf/up.env", "app/conf/up.env"), ("app/elsewhere/secret.env", "app/elsewhere")] {
        let mut c = h.set_port("outside/secret.env", "1");
        c.path = h.ps(rel);
        let r = assert_writes_nothing(&mut h, &outside, &c, ChangeOutcome::Refused);
        assert!(r.message.contains(&format!("symlink {}", h.p(link).display())), "{}", r.message);
        assert!(r.message.contains("outside the writable paths"), "{}", r.message);
    }
}

#[test]
fn a_directory_others_can_write_is_refused_by_name() {
    let mut h = harness(|_, _| {});
    std::fs::create_dir_all(h.p("app/shared")).unwrap();
    std::fs::write(h.p("app/shared/x.env"), OLD).unwrap();
    let file = h.p("app/shared/x.env");
    let mut cases = vec![(0o777, None, "world-writable"), (0o1777, None, "world-writable (sticky or not)")];
    if is_root() {
        cases.push((0o775, Some((0, 4321)), "writable by group 4321"));
        cases.push((0o755, Some((4321, 0)), "owned by uid 4321"));
    }
    for (mode, owner, want) in cases {
        if let Some((uid, gid)) = owner {
            std::os::unix::fs::chown(h.p("app/shared"), Some(uid), Some(gid)).unwrap();
        }
        std::fs::set_permissions(h.p("app/shared"), std::fs::Permissions::from_mode(mode)).unwrap();
        let c = h.set_port("app/shared/x.env", "9090");
        let r = assert_writes_nothing(&mut h, &file, &c, ChangeOutcome::Refused);
        assert!(r.message.contains(&h.ps("app/shared")) && r.message.contains(want), "{mode:o}: {}", r.message);
        if owner.is_some() {
            std::os::unix::fs::chown(h.p("app/shared"), Some(0), Some(0)).unwrap();
        }
    }
    // The root itself too; a group-writable directory of the agent's own group is fine.
    std::fs::set_permissions(h.p("app/shared"), std::fs::Permissions::from_mode(0o775)).unwrap();
    assert_eq!(outcome(&h.apply(&h.set_port("app/shared/x.env", "9090"))), ChangeOutcome::Applied);
    std::fs::set_permissions(h.p("app"), std::fs::Permissions::from_mode(0o777)).unwrap();
    let (c, file) = (h.set_port("app/.env", "9090"), h.p("app/.env"));
    let r = assert_writes_nothing(&mut h, &file, &c, ChangeOutcome::Refused);
    assert!(r.message.contains(&format!("below {}:", h.ps("app"))), "{}", r.message);
}

#[test]
fn a_root_replaced_after_start_is_refused() {
    let mut h = harness(|_, _| {});
    std::fs::rename(h.p("app"), h.p("app.old")).unwrap();
    std::fs::create_dir(h.p("app")).unwrap();
    std::fs::write(h.p("app/.env"), OLD).unwrap();
    let c = h.set_port("app/.env", "9090");
    let file = h.p("app/.env");
    let r = assert_writes_nothing(&mut h, &file, &c, ChangeOutcome::Refused);
    assert!(r.message.contains("replaced after the agent started"), "{}", r.message);
    assert_eq!(std::fs::read_to_string(h.p("app.old/.env")).unwrap(), OLD);
}

/// How the race test moves things while the change is between its read and its write.
#[derive(Debug, Clone, Copy)]
enum Swap {
    /// `app/sub` renamed inside the root, a symlink to `outside/evil` put in its place.
    DirForLinkInside,
    /// `app/sub` moved outside the root, a symlink to it put in its place.
    DirForLinkOutside,
    /// `app/sub` renamed, a new directory (with a copy of the file) put in its place.
    DirForDir,
    /// The file itself replaced by another one (rename over it).
    File,
}

#[test]
fn a_path_swapped_between_resolving_and_writing_never_writes_outside() {
    for swap in [Swap::DirForLinkInside, Swap::DirForLinkOutside, Swap::DirForDir, Swap::File] {
        let mut h = harness(|_, _| {});
        let (root, outside) = (h.p("app"), h.p("outside"));
        std::fs::create_dir_all(h.p("app/sub")).unwrap();
        std::fs::write(h.p("app/sub/conf.env"), OLD).unwrap();
        std::fs::create_dir_all(h.p("outside/evil")).unwrap();
        std::fs::write(h.p("outside/evil/conf.env"), OLD).unwrap();
        let outside_before = tree(&outside);
        let c = h.set_port("app/sub/conf.env", "9090");
        let r = h.root.clone();
        h.applier.pause = Some(Arc::new(move |resolved: &Path| {
            assert_eq!(resolved, r.join("app/sub/conf.env"));
            let (sub, p) = (r.join("app/sub"), |rel: &str| r.join(rel));
            match swap {
                Swap::DirForLinkInside => {
                    std::fs::rename(&sub, p("app/sub.moved")).unwrap();
                    symlink(p("outside/evil"), &sub).unwrap();
                }
                Swap::DirForLinkOutside => {
                    std::fs::rename(&sub, p("outside/sub")).unwrap();
                    symlink(p("outside/sub"), &sub).unwrap();
                }
                Swap::DirForDir => {
                    std::fs::rename(&sub, p("app/sub.moved")).unwrap();
                    std::fs::create_dir(&sub).unwrap();
                    std::fs::write(sub.join("conf.env"), OLD).unwrap();
                }
                Swap::File => {
                    std::fs::write(p("app/sub/.other"), OLD).unwrap();
                    std::fs::rename(p("app/sub/.other"), sub.join("conf.env")).unwrap();
                }
            }
        }));
        let res = h.apply(&c);
        assert_eq!(outcome(&res), ChangeOutcome::Conflict, "{swap:?}: {res:?}");
        assert!(res.message.contains("nothing written"), "{swap:?}: {}", res.message);
        // Nothing written outside the root: not the file, nothing new.
        let mut outside_after = tree(&outside);
        if matches!(swap, Swap::DirForLinkOutside) {
            // The moved directory, as it was.
            assert_eq!(outside_after.remove(&h.p("outside/sub/conf.env")).as_deref(), Some(OLD.as_bytes()));
        }
        assert_eq!(outside_after, outside_before, "{swap:?}: the outside is untouched");
        // Nor inside: every conf.env still has the old content.
        for (p, content) in tree(&root) {
            assert!(!String::from_utf8_lossy(&content).contains("9090"), "{swap:?}: {} was written", p.display());
            assert!(!write::is_temp_name(p.file_name().unwrap()), "{swap:?}: a temp file is left: {}", p.display());
        }
        // The same change once the path is back to normal is written (inside).
        h.applier.pause = None;
        if matches!(swap, Swap::DirForLinkInside | Swap::DirForLinkOutside) {
            std::fs::remove_file(h.p("app/sub")).unwrap();
            std::fs::create_dir(h.p("app/sub")).unwrap();
            std::fs::write(h.p("app/sub/conf.env"), OLD).unwrap();
        }
        let again = h.set_port("app/sub/conf.env", "9090");
        assert_eq!(outcome(&h.apply(&again)), ChangeOutcome::Applied, "{swap:?}");
        assert_eq!(tree(&outside).len(), outside_before.len() + usize::from(matches!(swap, Swap::DirForLinkOutside)));
        assert_eq!(look(&h.p("outside/evil/conf.env")).bytes, OLD.as_bytes());
    }
}
