//! Files on disk for tests: the shared fixtures, the example configs, the fleet key,
//! and writing a file the way editors do.

use std::path::{Path, PathBuf};

/// The fleet key every test agent shares (real agents read it from [`fleet_key`]'s file;
/// model agents mask and hash with it directly), so fingerprints compare across hosts.
pub const TEST_FLEET_KEY: &str = "test-fleet-key-0123456789abcdef";

/// The shared fixtures folder (`../shared/fixtures` next to the repository).
pub fn fixtures_dir() -> Option<PathBuf> {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/fixtures");
    if p.is_dir() {
        return Some(p);
    }
    let local = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/examples/configs");
    local.is_dir().then_some(local)
}

/// The example configs shipped in the repository (copies of the fixtures).
pub fn example_configs() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/examples/configs")
}

/// One fleet key file per test directory ([`TEST_FLEET_KEY`]) so several agents'
/// fingerprints compare.
pub fn fleet_key(dir: &Path) -> PathBuf {
    let p = dir.join("fleet.key");
    if !p.exists() {
        std::fs::create_dir_all(dir).expect("key dir");
        std::fs::write(&p, TEST_FLEET_KEY).expect("write key");
        // The agent refuses a key file others can read.
        std::fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(0o600)).expect("chmod key");
    }
    p
}

/// Copy every fixture file (recursively, flattened per folder) into `dst`.
pub fn copy_fixtures(dst: &Path) -> Vec<PathBuf> {
    let src = fixtures_dir().expect("fixtures");
    let mut out = Vec::new();
    copy_dir(&src, dst, &mut out);
    out
}

fn copy_dir(src: &Path, dst: &Path, out: &mut Vec<PathBuf>) {
    std::fs::create_dir_all(dst).expect("mkdir");
    for e in std::fs::read_dir(src).expect("read fixtures") {
        let e = e.expect("entry");
        let p = e.path();
        let to = dst.join(e.file_name());
        if p.is_dir() {
            copy_dir(&p, &to, out);
        } else if e.file_name() != "rules.md" {
            std::fs::copy(&p, &to).expect("copy");
            let mut perm = std::fs::metadata(&to).expect("meta").permissions();
            #[allow(clippy::permissions_set_readonly_false)]
            perm.set_readonly(false);
            std::fs::set_permissions(&to, perm).expect("chmod");
            out.push(to);
        }
    }
}

/// Write a file atomically the way editors do (temp + rename).
pub fn replace_file(path: &Path, content: &str) {
    let tmp = path.with_extension("dwtmp");
    std::fs::write(&tmp, content).expect("write temp");
    std::fs::rename(&tmp, path).expect("rename");
}
