//! Watcher tests against real directories. They wait for conditions with deadlines;
//! only "nothing was sent" uses a bounded quiet period.
//!
//! Until `driftwatch-formats` is implemented, `analyze` reports HashOnly with an empty
//! hash, so content changes here always change the size too. Tests named `*_needs_formats`
//! check parsed keys / real hashes and skip themselves (with a note) while the skeleton
//! is in place.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use driftwatch_formats::{FileStatus, Format, Limits, Masker};
use driftwatch_proto::v1::FileState;
use tokio::sync::mpsc;

use super::*;

/// Bounds a hang, not a timing: events arrive in milliseconds on an idle machine.
const DEADLINE: Duration = Duration::from_secs(20);
const QUIET: Duration = Duration::from_millis(300);

/// Whether a test may go on: `unavailable` says why not. In CI (`CI=true`, which runs
/// as root) that fails the test; elsewhere it is skipped, saying why.
fn require(what: &str, unavailable: Option<String>) -> bool {
    let Some(why) = unavailable else { return true };
    assert!(std::env::var("CI").map_or(true, |v| v != "true" && v != "1"), "{what}: {why} (CI=true)");
    eprintln!("SKIPPED {what}: {why}");
    false
}

/// As root, drop the capabilities that ignore file permissions for this thread and the
/// threads it starts later (the watcher's), so a mode-000 file is unreadable.
fn drop_dac_capabilities() -> Option<String> {
    use rustix::thread::{CapabilitySet, capabilities, set_capabilities};
    if !rustix::process::geteuid().is_root() {
        return None;
    }
    let dac = CapabilitySet::DAC_OVERRIDE | CapabilitySet::DAC_READ_SEARCH;
    let dropped = capabilities(None).and_then(|mut sets| {
        sets.effective.remove(dac);
        sets.permitted.remove(dac);
        sets.inheritable.remove(dac);
        set_capabilities(None, sets)
    });
    dropped.err().map(|e| format!("cannot drop CAP_DAC_OVERRIDE: {e}"))
}

fn status(s: &FileState) -> FileStatus {
    FileStatus::try_from(s.status).unwrap_or(FileStatus::Unspecified)
}

struct Harness {
    _dir: tempfile::TempDir,
    root: PathBuf,
    rt: tokio::runtime::Runtime,
    watcher: Option<FileWatcher>,
    rx: mpsc::Receiver<ChangeBatch>,
    /// Every batch received so far.
    batches: Vec<ChangeBatch>,
}

impl Harness {
    fn new(setup: impl FnOnce(&Path), patterns: &[&str]) -> Self {
        Self::with_limits(setup, patterns, Limits::default())
    }

    fn with_limits(setup: impl FnOnce(&Path), patterns: &[&str], limits: Limits) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().canonicalize().unwrap();
        setup(&root);
        let patterns = patterns
            .iter()
            .map(|p| WatchPattern { pattern: format!("{}/{p}", root.display()), format: None })
            .collect();
        let config = WatchConfig {
            patterns,
            debounce: Duration::from_millis(5),
            rescan_interval: Duration::from_secs(60),
            limits,
            host_root: Default::default(),
        };
        let rt = tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap();
        let (watcher, rx) = FileWatcher::start(config, Arc::new(Masker::new(b"test fleet key 0123456789"))).unwrap();
        Self { _dir: dir, root, rt, watcher: Some(watcher), rx, batches: Vec::new() }
    }

    fn p(&self, rel: &str) -> PathBuf {
        self.root.join(rel)
    }

    fn full_scan(&self) -> (u64, Vec<FileState>) {
        self.watcher.as_ref().unwrap().full_scan()
    }

    /// The full scan's state for `rel`.
    fn scan_state(&self, rel: &str) -> Option<FileState> {
        let path = self.p(rel);
        self.full_scan().1.into_iter().find(|s| Path::new(&s.path) == path)
    }

    fn recv(&mut self, timeout: Duration) -> Option<&ChangeBatch> {
        let rx = &mut self.rx;
        let b = self.rt.block_on(async { tokio::time::timeout(timeout, rx.recv()).await.ok().flatten() })?;
        self.batches.push(b);
        self.batches.last()
    }

    /// Wait for a state of `rel` that satisfies `pred`; panics with what was seen.
    fn wait_for(&mut self, rel: &str, pred: impl Fn(&FileState) -> bool) -> FileState {
        let path = self.p(rel);
        let end = Instant::now() + DEADLINE;
        let mut seen = Vec::new();
        while let Some(left) = end.checked_duration_since(Instant::now()) {
            let Some(b) = self.recv(left) else { break };
            for f in &b.files {
                if Path::new(&f.path) == path {
                    if pred(f) {
                        return f.clone();
                    }
                    seen.push(format!(
                        "{:?} exists={} size={} mode={:o} dir_mode={:o}",
                        status(f),
                        f.exists,
                        f.size,
                        f.mode,
                        f.dir_mode
                    ));
                }
            }
        }
        panic!("no matching state for {} within {DEADLINE:?}; saw: {seen:#?}", path.display());
    }

    /// Everything sent for `rel` during a quiet period.
    fn sent_during_quiet(&mut self, rel: &str) -> Vec<FileState> {
        let path = self.p(rel);
        let end = Instant::now() + QUIET;
        let mut out = Vec::new();
        while let Some(left) = end.checked_duration_since(Instant::now()) {
            let Some(b) = self.recv(left) else { break };
            out.extend(b.files.iter().filter(|f| Path::new(&f.path) == path).cloned());
        }
        out
    }

    fn assert_quiet(&mut self, rel: &str) {
        let sent = self.sent_during_quiet(rel);
        assert!(sent.is_empty(), "nothing should have been sent for {rel}, got {sent:#?}");
    }
}

fn write(path: &Path, content: &[u8]) {
    fs::write(path, content).unwrap();
}

fn exists_with_size(n: usize) -> impl Fn(&FileState) -> bool {
    move |s| s.exists && s.size == n as u64 && status(s) != FileStatus::Missing
}

fn missing(s: &FileState) -> bool {
    !s.exists && status(s) == FileStatus::Missing
}

#[test]
fn full_scan_lists_files_and_missing_explicit_paths_and_bumps_generation() {
    let mut h = Harness::new(
        |r| {
            write(&r.join("app.yaml"), b"a: 1\n");
            write(&r.join("b.yaml"), b"b: 2\n");
        },
        &["app.yaml", "nope/missing.env", "*.yaml"],
    );
    let (g1, states) = h.full_scan();
    let by = |rel: &str| states.iter().find(|s| Path::new(&s.path) == h.p(rel)).cloned();
    let app = by("app.yaml").expect("app.yaml listed once");
    assert_eq!(states.iter().filter(|s| Path::new(&s.path) == h.p("app.yaml")).count(), 1);
    assert!(app.exists);
    assert_eq!(app.size, 5);
    assert_eq!(app.mode & 0o170000, 0o100000, "st_mode carries the file type");
    assert!(app.modified_at.is_some());
    assert!(by("b.yaml").unwrap().exists);
    let m = by("nope/missing.env").expect("missing explicit path listed");
    assert!(missing(&m));
    assert_eq!(states.len(), 3);

    let (g2, _) = h.full_scan();
    assert!(g2 > g1, "generation must increase: {g1} then {g2}");

    // Batches computed after the scan carry its generation.
    write(&h.p("app.yaml"), b"a: 12\n");
    h.wait_for("app.yaml", exists_with_size(6));
    assert_eq!(h.batches.last().unwrap().generation, g2);
}

#[test]
fn in_place_write() {
    let mut h = Harness::new(|r| write(&r.join("app.yaml"), b"a: 1\n"), &["app.yaml"]);
    h.full_scan();
    let mut f = fs::OpenOptions::new().write(true).open(h.p("app.yaml")).unwrap();
    f.write_all(b"a: 1234567\n").unwrap();
    drop(f);
    let s = h.wait_for("app.yaml", exists_with_size(11));
    assert_eq!(status(&s), FileStatus::Ok);
}

#[test]
fn in_place_append_without_close_is_seen() {
    let mut h = Harness::new(|r| write(&r.join("app.env"), b"A=1\n"), &["app.env"]);
    h.full_scan();
    let mut f = fs::OpenOptions::new().append(true).open(h.p("app.env")).unwrap();
    f.write_all(b"B=2\n").unwrap();
    h.wait_for("app.env", exists_with_size(8));
    drop(f);
}

#[test]
fn truncate_and_write() {
    let mut h = Harness::new(|r| write(&r.join("app.yaml"), b"a: 1\nb: 2\n"), &["app.yaml"]);
    h.full_scan();
    let mut f = fs::File::create(h.p("app.yaml")).unwrap(); // truncates
    f.write_all(b"a: 3\n").unwrap();
    drop(f);
    h.wait_for("app.yaml", exists_with_size(5));
}

#[test]
fn write_temp_and_rename_over() {
    let mut h = Harness::new(|r| write(&r.join("app.yaml"), b"a: 1\n"), &["app.yaml"]);
    h.full_scan();
    write(&h.p(".app.yaml.swp"), b"a: 2\nb: 3\n");
    fs::rename(h.p(".app.yaml.swp"), h.p("app.yaml")).unwrap();
    h.wait_for("app.yaml", exists_with_size(10));
}

#[test]
fn delete_and_recreate() {
    let mut h = Harness::new(|r| write(&r.join("app.yaml"), b"a: 1\n"), &["app.yaml"]);
    h.full_scan();
    fs::remove_file(h.p("app.yaml")).unwrap();
    h.wait_for("app.yaml", missing);
    write(&h.p("app.yaml"), b"a: 22\n");
    h.wait_for("app.yaml", exists_with_size(6));
}

#[test]
fn chmod_is_sent() {
    let mut h = Harness::new(|r| write(&r.join("app.yaml"), b"a: 1\n"), &["app.yaml"]);
    h.full_scan();
    fs::set_permissions(h.p("app.yaml"), fs::Permissions::from_mode(0o600)).unwrap();
    let s = h.wait_for("app.yaml", |s| s.mode & 0o7777 == 0o600);
    assert_eq!(s.size, 5);
    assert_eq!(s.mode & 0o170000, 0o100000);
}

#[test]
fn chmod_of_the_directory_is_sent() {
    let mut h = Harness::new(
        |r| {
            fs::create_dir(r.join("conf")).unwrap();
            fs::set_permissions(r.join("conf"), fs::Permissions::from_mode(0o700)).unwrap();
            write(&r.join("conf/app.yaml"), b"a: 1\n");
        },
        &["conf/app.yaml"],
    );
    let s = h.scan_state("conf/app.yaml").unwrap();
    assert_eq!(s.dir_mode & 0o7777, 0o700);
    assert_eq!(s.dir_mode & 0o170000, 0o040000, "st_mode carries the file type");
    // Only the directory's own watch sees this (its parent is not watched): an
    // IN_ATTRIB with no name.
    fs::set_permissions(h.p("conf"), fs::Permissions::from_mode(0o755)).unwrap();
    let s2 = h.wait_for("conf/app.yaml", |s| s.dir_mode & 0o7777 == 0o755);
    assert_eq!((s2.mode, s2.size), (s.mode, s.size));
    // A missing file's directory is not reported.
    fs::remove_file(h.p("conf/app.yaml")).unwrap();
    assert_eq!(h.wait_for("conf/app.yaml", missing).dir_mode, 0);
}

#[test]
fn symlinked_file_reports_and_follows_its_real_directory_mode() {
    let mut h = Harness::new(
        |r| {
            fs::create_dir(r.join("available")).unwrap();
            fs::create_dir(r.join("enabled")).unwrap();
            fs::set_permissions(r.join("available"), fs::Permissions::from_mode(0o750)).unwrap();
            fs::set_permissions(r.join("enabled"), fs::Permissions::from_mode(0o755)).unwrap();
            write(&r.join("available/site.conf"), b"[s]\na=1\n");
            symlink("../available/site.conf", r.join("enabled/site.conf")).unwrap();
        },
        &["enabled/*.conf"],
    );
    // Like `mode`, `dir_mode` is the target's.
    assert_eq!(h.scan_state("enabled/site.conf").unwrap().dir_mode & 0o7777, 0o750);
    fs::set_permissions(h.p("available"), fs::Permissions::from_mode(0o700)).unwrap();
    h.wait_for("enabled/site.conf", |s| s.dir_mode & 0o7777 == 0o700);
    // The link's own directory is not the one reported.
    fs::set_permissions(h.p("enabled"), fs::Permissions::from_mode(0o711)).unwrap();
    h.assert_quiet("enabled/site.conf");
}

#[test]
fn touch_only_is_not_sent() {
    let mut h = Harness::new(|r| write(&r.join("app.yaml"), b"a: 1\n"), &["app.yaml"]);
    h.full_scan();
    let f = fs::File::options().write(true).open(h.p("app.yaml")).unwrap();
    f.set_modified(SystemTime::now() + Duration::from_secs(5)).unwrap();
    drop(f);
    h.assert_quiet("app.yaml");
}

#[test]
fn same_content_rewritten_is_not_sent() {
    let mut h = Harness::new(|r| write(&r.join("app.yaml"), b"a: 1\n"), &["app.yaml"]);
    h.full_scan();
    write(&h.p("app.yaml"), b"a: 1\n");
    write(&h.p(".tmp"), b"a: 1\n");
    fs::rename(h.p(".tmp"), h.p("app.yaml")).unwrap();
    h.assert_quiet("app.yaml");
}

#[test]
fn new_file_matching_a_glob_is_picked_up() {
    let mut h = Harness::new(|r| write(&r.join("a.yaml"), b"a: 1\n"), &["*.yaml"]);
    h.full_scan();
    write(&h.p("notes.txt"), b"not matched\n");
    fs::create_dir(h.p("sub")).unwrap();
    write(&h.p("sub/deep.yaml"), b"x: 1\n"); // `*` does not cross `/`
    write(&h.p("b.yaml"), b"b: 22\n");
    h.wait_for("b.yaml", exists_with_size(6));
    let all: Vec<&str> = h.batches.iter().flat_map(|b| b.files.iter().map(|f| f.path.as_str())).collect();
    assert!(!all.iter().any(|p| p.ends_with("notes.txt") || p.ends_with("deep.yaml")), "{all:?}");
    // A directory matching the glob is not a file.
    fs::create_dir(h.p("dir.yaml")).unwrap();
    h.assert_quiet("dir.yaml");
    assert!(h.scan_state("dir.yaml").is_none());
}

#[test]
fn double_star_in_a_subdirectory_created_later() {
    let mut h = Harness::new(|_| {}, &["**/*.yaml"]);
    h.full_scan();
    fs::create_dir_all(h.p("a/b/c")).unwrap();
    write(&h.p("a/b/c/deep.yaml"), b"d: 1\n");
    h.wait_for("a/b/c/deep.yaml", exists_with_size(5));
    // And the new directories are watched from now on.
    fs::create_dir(h.p("a/b/c/d")).unwrap();
    write(&h.p("a/b/c/d/deeper.yaml"), b"d: 12\n");
    h.wait_for("a/b/c/d/deeper.yaml", exists_with_size(6));
    write(&h.p("a/b/c/deep.yaml"), b"d: 123\n");
    h.wait_for("a/b/c/deep.yaml", exists_with_size(7));
}

#[test]
fn explicit_path_whose_directories_do_not_exist_yet() {
    let mut h = Harness::new(|_| {}, &["x/y/z/app.env"]);
    assert!(missing(&h.scan_state("x/y/z/app.env").unwrap()));
    fs::create_dir_all(h.p("x/y/z")).unwrap();
    write(&h.p("x/y/z/app.env"), b"A=1\n");
    h.wait_for("x/y/z/app.env", exists_with_size(4));
    write(&h.p("x/y/z/app.env"), b"A=12\n");
    h.wait_for("x/y/z/app.env", exists_with_size(5));
}

#[test]
fn glob_whose_base_does_not_exist_yet() {
    let mut h = Harness::new(|_| {}, &["later/conf.d/*.conf"]);
    h.full_scan();
    fs::create_dir_all(h.p("later/conf.d")).unwrap();
    write(&h.p("later/conf.d/a.conf"), b"[a]\nx=1\n");
    h.wait_for("later/conf.d/a.conf", exists_with_size(8));
}

#[test]
fn watched_directory_deleted_and_recreated() {
    let mut h = Harness::new(
        |r| {
            fs::create_dir(r.join("conf")).unwrap();
            write(&r.join("conf/app.yaml"), b"a: 1\n");
            write(&r.join("conf/extra.yml"), b"e: 1\n");
        },
        &["conf/app.yaml", "conf/*.yml"],
    );
    h.full_scan();
    for round in 0..2 {
        fs::remove_dir_all(h.p("conf")).unwrap();
        h.wait_for("conf/app.yaml", missing);
        fs::create_dir(h.p("conf")).unwrap();
        let n = 6 + round;
        write(&h.p("conf/app.yaml"), &b"a: 1234567"[..n]);
        h.wait_for("conf/app.yaml", exists_with_size(n));
        write(&h.p("conf/extra.yml"), b"e: 22\n");
        h.wait_for("conf/extra.yml", exists_with_size(6));
    }
}

#[test]
fn glob_matched_file_that_disappears_is_sent_missing_once_then_forgotten() {
    let mut h = Harness::new(|r| write(&r.join("a.yaml"), b"a: 1\n"), &["*.yaml"]);
    h.full_scan();
    fs::remove_file(h.p("a.yaml")).unwrap();
    h.wait_for("a.yaml", missing);
    h.assert_quiet("a.yaml");
    assert!(h.scan_state("a.yaml").is_none(), "a vanished glob match is not listed");
    write(&h.p("a.yaml"), b"a: 22\n");
    h.wait_for("a.yaml", exists_with_size(6));
}

#[test]
fn symlink_loop_is_unreadable() {
    let mut h = Harness::new(
        |r| {
            symlink(r.join("b.yaml"), r.join("a.yaml")).unwrap();
            symlink(r.join("a.yaml"), r.join("b.yaml")).unwrap();
        },
        &["a.yaml", "*.yaml"],
    );
    let a = h.scan_state("a.yaml").unwrap();
    assert_eq!(status(&a), FileStatus::Unreadable);
    let msg = a.error.as_ref().map(|e| e.message.clone()).unwrap_or_default();
    assert!(msg.contains("symbolic links"), "{msg}");
    assert_eq!(status(&h.scan_state("b.yaml").unwrap()), FileStatus::Unreadable);
    // Breaking the loop makes it readable.
    fs::remove_file(h.p("b.yaml")).unwrap();
    write(&h.p("b.yaml"), b"b: 1\n");
    h.wait_for("a.yaml", exists_with_size(5));
}

#[test]
fn permission_denied_is_unreadable_with_the_os_message() {
    // Before the harness starts the watcher thread, which inherits it.
    if !require("the permission-denied check", drop_dac_capabilities()) {
        return;
    }
    let mut h = Harness::new(|r| write(&r.join("secret.env"), b"A=1\n"), &["secret.env"]);
    h.full_scan();
    fs::set_permissions(h.p("secret.env"), fs::Permissions::from_mode(0o000)).unwrap();
    let s = h.wait_for("secret.env", |s| status(s) == FileStatus::Unreadable);
    assert!(s.error.unwrap().message.contains("Permission denied (os error 13)"));
    assert!(s.exists);
    assert_eq!(s.size, 4);
    fs::set_permissions(h.p("secret.env"), fs::Permissions::from_mode(0o644)).unwrap();
    h.wait_for("secret.env", |s| status(s) != FileStatus::Unreadable && s.size == 4);
}

#[test]
fn configmap_style_data_symlink_swap() {
    let mut h = Harness::new(
        |r| {
            fs::create_dir(r.join("..2026_11_23_01")).unwrap();
            write(&r.join("..2026_11_23_01/app.yaml"), b"v: 1\n");
            symlink("..2026_11_23_01", r.join("..data")).unwrap();
            symlink("..data/app.yaml", r.join("app.yaml")).unwrap();
        },
        &["app.yaml"],
    );
    let s = h.scan_state("app.yaml").unwrap();
    assert!(s.exists);
    assert_eq!(s.size, 5);
    // What the kubelet does: new timestamped dir, new ..data link renamed into place,
    // old dir removed.
    for (i, dir) in ["..2026_11_23_02", "..2026_11_23_03"].iter().enumerate() {
        fs::create_dir(h.p(dir)).unwrap();
        let content = format!("v: {}\n", "2".repeat(i + 2));
        write(&h.p(&format!("{dir}/app.yaml")), content.as_bytes());
        symlink(dir, h.p("..data_tmp")).unwrap();
        fs::rename(h.p("..data_tmp"), h.p("..data")).unwrap();
        let old = if i == 0 { "..2026_11_23_01".to_string() } else { "..2026_11_23_02".to_string() };
        fs::remove_dir_all(h.p(&old)).unwrap();
        let s = h.wait_for("app.yaml", exists_with_size(content.len()));
        assert_eq!(s.path, h.p("app.yaml").to_string_lossy(), "the path is the link, not its target");
    }
}

#[test]
fn symlinked_file_edited_in_its_real_directory() {
    // nginx style: sites-enabled/x -> ../sites-available/x, edited where it lives.
    let mut h = Harness::new(
        |r| {
            fs::create_dir(r.join("available")).unwrap();
            fs::create_dir(r.join("enabled")).unwrap();
            write(&r.join("available/site.conf"), b"[s]\na=1\n");
            symlink("../available/site.conf", r.join("enabled/site.conf")).unwrap();
        },
        &["enabled/*.conf"],
    );
    assert_eq!(h.scan_state("enabled/site.conf").unwrap().size, 8);
    write(&h.p("available/.site.conf.tmp"), b"[s]\na=12\n");
    fs::rename(h.p("available/.site.conf.tmp"), h.p("available/site.conf")).unwrap();
    h.wait_for("enabled/site.conf", exists_with_size(9));
    let mut f = fs::OpenOptions::new().append(true).open(h.p("available/site.conf")).unwrap();
    f.write_all(b"b=2\n").unwrap();
    drop(f);
    h.wait_for("enabled/site.conf", exists_with_size(13));
}

#[test]
fn file_larger_than_the_cap_is_too_large_and_hashed() {
    let limits = Limits { max_file_bytes: 1024, ..Limits::default() };
    let mut h = Harness::with_limits(|r| write(&r.join("big.json"), &[b'x'; 100]), &["big.json"], limits);
    h.full_scan();
    write(&h.p("big.json"), &vec![b'y'; 200_000]);
    let s = h.wait_for("big.json", |s| status(s) == FileStatus::TooLarge);
    assert_eq!(s.size, 200_000);
    assert!(s.exists);
    assert!(s.keys.is_empty());
    assert_eq!(s.content_hash.len(), 64);
    assert!(s.content_hash.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));
    // One byte over the cap, and exactly at it.
    write(&h.p("big.json"), &[b'{'; 1025]);
    h.wait_for("big.json", |s| status(s) == FileStatus::TooLarge && s.size == 1025);
    write(&h.p("big.json"), &[b' '; 1024]);
    h.wait_for("big.json", |s| status(s) != FileStatus::TooLarge && s.size == 1024);
}

#[test]
fn binary_content() {
    let mut h = Harness::new(|r| write(&r.join("blob.conf"), b"a=1\n"), &["blob.conf"]);
    h.full_scan();
    write(&h.p("blob.conf"), &[0u8, 159, 146, 150, 0, 0xff, 0xfe, 1, 2, 3]);
    let s = h.wait_for("blob.conf", exists_with_size(10));
    assert!(s.keys.is_empty());
    assert_eq!(status(&s), FileStatus::Binary);
}

#[test]
fn burst_of_writes_is_coalesced_and_ends_in_the_final_state() {
    let mut h = Harness::new(|r| write(&r.join("app.yaml"), b"v: 0\n"), &["app.yaml"]);
    h.full_scan();
    let content = |i: usize| format!("v: {}\n", "9".repeat(i + 1));
    for i in 0..100 {
        write(&h.p("app.yaml"), content(i).as_bytes());
    }
    let last = content(99).len();
    h.wait_for("app.yaml", exists_with_size(last));
    let after = h.sent_during_quiet("app.yaml");
    assert!(after.iter().all(|s| s.size == last as u64), "a stale state followed the final one: {after:?}");
    let n = h.batches.iter().filter(|b| b.files.iter().any(|f| f.path.ends_with("app.yaml"))).count();
    assert!(n <= 25, "100 writes produced {n} batches");
}

#[test]
fn dropping_the_watcher_stops_its_thread() {
    let mut h = Harness::new(|r| write(&r.join("a.yaml"), b"a: 1\n"), &["*.yaml"]);
    h.full_scan();
    drop(h.watcher.take());
    let rx = &mut h.rx;
    let closed = h.rt.block_on(async { tokio::time::timeout(DEADLINE, rx.recv()).await });
    assert!(matches!(closed, Ok(None)), "the channel should close when the watcher is dropped");
}

#[test]
fn rescan_stats_only_and_rereads_only_changed_files() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().canonicalize().unwrap();
    for i in 0..20 {
        write(&root.join(format!("f{i}.yaml")), b"a: 1\n");
    }
    let ino = ::inotify::Inotify::init().unwrap();
    let pats =
        vec![Compiled::new(&WatchPattern { pattern: format!("{}/*.yaml", root.display()), format: None }).unwrap()];
    let mut t = Tracker::new(pats, Limits::default(), Arc::new(Masker::new(b"k")), ino.watches(), Default::default());
    t.racy_window = Duration::ZERO;
    let (_, all) = t.full_scan();
    assert_eq!(all.len(), 20);
    assert_eq!(t.reads, 20);
    assert!(t.rescan().is_empty());
    assert_eq!(t.reads, 20, "an unchanged rescan reads nothing");
    write(&root.join("f3.yaml"), b"a: 12\n");
    write(&root.join("new.yaml"), b"n: 1\n");
    let changed = t.rescan();
    let mut paths: Vec<&str> = changed.iter().map(|s| s.path.as_str()).collect();
    paths.sort();
    assert_eq!(paths, [root.join("f3.yaml").to_str().unwrap(), root.join("new.yaml").to_str().unwrap()]);
    assert_eq!(t.reads, 22);
}

#[test]
fn rescan_sees_a_chmod_of_the_directory() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().canonicalize().unwrap();
    fs::create_dir(root.join("conf")).unwrap();
    fs::set_permissions(root.join("conf"), fs::Permissions::from_mode(0o700)).unwrap();
    write(&root.join("conf/a.env"), b"A=1\n");
    let ino = ::inotify::Inotify::init().unwrap();
    let pats =
        vec![Compiled::new(&WatchPattern { pattern: format!("{}/conf/a.env", root.display()), format: None }).unwrap()];
    let mut t = Tracker::new(pats, Limits::default(), Arc::new(Masker::new(b"k")), ino.watches(), Default::default());
    t.racy_window = Duration::ZERO;
    t.full_scan();
    assert!(t.rescan().is_empty());
    fs::set_permissions(root.join("conf"), fs::Permissions::from_mode(0o755)).unwrap();
    let changed = t.rescan();
    assert_eq!(changed.len(), 1);
    assert_eq!(changed[0].dir_mode & 0o7777, 0o755);
    assert!(t.rescan().is_empty(), "the new directory mode is part of the signature");
}

/// The kernel queues events synchronously, so draining right after the syscalls is exact.
#[test]
fn reads_and_listings_queue_no_event_writes_do() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().canonicalize().unwrap();
    write(&root.join("a.conf"), b"x\n");
    let mut ino = ::inotify::Inotify::init().unwrap();
    let wd = ino.watches().add(&root, inotify::DIR_MASK).unwrap();
    let mut buf = vec![0u8; 4096];
    // IN_OPEN, IN_ACCESS and IN_CLOSE_NOWRITE (on the file and on the directory) are not asked for.
    fs::read(root.join("a.conf")).unwrap();
    fs::read_dir(&root).unwrap().for_each(drop);
    fs::metadata(root.join("a.conf")).unwrap();
    assert_eq!(inotify::drain(&mut ino, &mut buf, |ev| panic!("unexpected event {ev:?}")).unwrap(), 0);
    write(&root.join("a.conf"), b"y\n");
    let mut events = Vec::new();
    inotify::drain(&mut ino, &mut buf, |ev| events.push((ev.wd, ev.mask, ev.name.map(ToOwned::to_owned)))).unwrap();
    assert!(!events.is_empty());
    for (w, mask, name) in &events {
        assert_eq!(*w, wd);
        assert_eq!(name.as_deref(), Some(std::ffi::OsStr::new("a.conf")));
        assert!(mask.intersects(::inotify::EventMask::MODIFY | ::inotify::EventMask::CLOSE_WRITE), "{mask:?}");
    }
    // ONLYDIR: a file cannot be watched.
    assert!(ino.watches().add(root.join("a.conf"), inotify::DIR_MASK).is_err());
}

#[test]
fn overflow_triggers_a_rescan() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().canonicalize().unwrap();
    write(&root.join("a.env"), b"A=1\n");
    let ino = ::inotify::Inotify::init().unwrap();
    let pats =
        vec![Compiled::new(&WatchPattern { pattern: format!("{}/a.env", root.display()), format: None }).unwrap()];
    let mut t = Tracker::new(pats, Limits::default(), Arc::new(Masker::new(b"k")), ino.watches(), Default::default());
    t.full_scan();
    write(&root.join("a.env"), b"A=12\n");
    let mut p = Pending::default();
    // The kernel's overflow event carries wd -1; any descriptor will do here (the root
    // is watched already, so this returns its descriptor).
    let wd = ino.watches().add(&root, inotify::DIR_MASK).unwrap();
    p.push(wd, ::inotify::EventMask::Q_OVERFLOW, None);
    let changed = t.apply(p);
    assert_eq!(changed.len(), 1);
    assert_eq!(changed[0].size, 5);
}

#[test]
fn format_override_and_detection() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().canonicalize().unwrap();
    write(&root.join("legacy.cfg"), b"a = 1\n");
    let config = WatchConfig {
        patterns: vec![WatchPattern { pattern: format!("{}/legacy.cfg", root.display()), format: Some(Format::Toml) }],
        debounce: Duration::from_millis(5),
        rescan_interval: Duration::from_secs(60),
        limits: Limits::default(),
        host_root: Default::default(),
    };
    let (w, _rx) = FileWatcher::start(config, Arc::new(Masker::new(b"k"))).unwrap();
    let (_, states) = w.full_scan();
    assert_eq!(states[0].format, Format::Toml as i32);
}

#[test]
fn parsed_keys_and_hash_needs_formats() {
    let mut h = Harness::new(|r| write(&r.join("app.yaml"), b"a: 1\nb: two\n"), &["app.yaml"]);
    let s = h.scan_state("app.yaml").unwrap();
    assert_eq!(status(&s), FileStatus::Ok);
    assert_eq!(s.format, Format::Yaml as i32);
    let keys: Vec<&str> = s.keys.iter().map(|k| k.key.as_str()).collect();
    assert_eq!(keys, ["a", "b"]);
    assert_eq!(s.content_hash.len(), 64);
    // Same size, different content: only the hash tells.
    write(&h.p("app.yaml"), b"a: 2\nb: two\n");
    let s2 = h.wait_for("app.yaml", |x| x.content_hash != s.content_hash);
    assert_eq!(s2.size, s.size);
}

#[test]
fn chown_is_sent() {
    let root = rustix::process::geteuid().is_root();
    if !require("chown to another user", (!root).then(|| "needs root".into())) {
        return;
    }
    let mut h = Harness::new(|r| write(&r.join("app.yaml"), b"a: 1\n"), &["app.yaml"]);
    h.full_scan();
    std::os::unix::fs::chown(h.p("app.yaml"), Some(4242), Some(4343)).unwrap();
    let s = h.wait_for("app.yaml", |s| s.uid == 4242);
    assert_eq!(s.gid, 4343);
}

#[test]
fn symlinked_directory_swapped_to_another_target() {
    // `current -> releases/v1` swapped atomically to `releases/v2`.
    let mut h = Harness::new(
        |r| {
            fs::create_dir_all(r.join("releases/v1")).unwrap();
            fs::create_dir_all(r.join("releases/v2")).unwrap();
            write(&r.join("releases/v1/app.yaml"), b"v: 1\n");
            write(&r.join("releases/v2/app.yaml"), b"v: 22\n");
            write(&r.join("releases/v2/new.yaml"), b"n: 1\n");
            symlink("releases/v1", r.join("current")).unwrap();
        },
        &["current/*.yaml"],
    );
    assert_eq!(h.scan_state("current/app.yaml").unwrap().size, 5);
    symlink("releases/v2", h.p("current.tmp")).unwrap();
    fs::rename(h.p("current.tmp"), h.p("current")).unwrap();
    h.wait_for("current/app.yaml", exists_with_size(6));
    // The new target is watched now.
    write(&h.p("releases/v2/app.yaml"), b"v: 333\n");
    h.wait_for("current/app.yaml", exists_with_size(7));
    let all = h.full_scan().1;
    assert!(all.iter().any(|s| s.path.ends_with("current/new.yaml")), "{all:?}");
}

#[test]
fn directory_renamed_away_and_back() {
    let mut h = Harness::new(
        |r| {
            fs::create_dir(r.join("conf")).unwrap();
            write(&r.join("conf/app.yaml"), b"a: 1\n");
        },
        &["conf/app.yaml"],
    );
    h.full_scan();
    fs::rename(h.p("conf"), h.p("conf.bak")).unwrap();
    h.wait_for("conf/app.yaml", missing);
    // Writes in the moved-away directory are not about the watched path.
    write(&h.p("conf.bak/app.yaml"), b"a: 12\n");
    h.assert_quiet("conf/app.yaml");
    fs::rename(h.p("conf.bak"), h.p("conf")).unwrap();
    h.wait_for("conf/app.yaml", exists_with_size(6));
    write(&h.p("conf/app.yaml"), b"a: 123\n");
    h.wait_for("conf/app.yaml", exists_with_size(7));
}

/// `cargo test -p driftwatch-agent --release watch::tests::cost_of_1000_files -- --ignored --nocapture`
#[test]
#[ignore = "benchmark: prints timings"]
fn cost_of_1000_files() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().canonicalize().unwrap();
    for d in 0..10 {
        fs::create_dir(root.join(format!("d{d}"))).unwrap();
        for i in 0..100 {
            write(&root.join(format!("d{d}/f{i}.yaml")), format!("key{i}: value {i}\nother: {d}\n").as_bytes());
        }
    }
    let ino = ::inotify::Inotify::init().unwrap();
    let pats =
        vec![Compiled::new(&WatchPattern { pattern: format!("{}/**/*.yaml", root.display()), format: None }).unwrap()];
    let mut t = Tracker::new(pats, Limits::default(), Arc::new(Masker::new(b"k")), ino.watches(), Default::default());
    t.racy_window = Duration::ZERO;
    let start = Instant::now();
    let (_, all) = t.full_scan();
    eprintln!("full scan of {} files: {:?}", all.len(), start.elapsed());
    let start = Instant::now();
    for _ in 0..10 {
        assert!(t.rescan().is_empty());
    }
    eprintln!("idle rescan: {:?} each ({} watches)", start.elapsed() / 10, t.watch_count());
}
