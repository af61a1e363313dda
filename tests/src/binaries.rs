//! The binaries of this build (`target/<profile>/…`), found from the running executable:
//! a test runs from `target/<profile>/deps/`, the simulator from `target/<profile>/`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::SystemTime;

/// `target/<profile>` of the running executable.
pub fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("the running executable's path");
    let dir = exe.parent().expect("the executable's directory");
    if dir.file_name().is_some_and(|n| n == "deps") { dir.parent().unwrap_or(dir) } else { dir }.to_path_buf()
}

/// `name` next to the running executable (the simulator's siblings), or in the profile
/// directory above a test's `deps/`.
pub fn sibling_binary(name: &str) -> PathBuf {
    profile_dir().join(name)
}

/// The repository root (the workspace of this crate).
pub fn workspace_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("the workspace above tests/").to_path_buf()
}

/// What the agent binary is built from: a newer file there means the binary is stale.
const AGENT_SOURCES: &[&str] = &[
    "agent/src",
    "agent/Cargo.toml",
    "crates/formats/src",
    "crates/formats/Cargo.toml",
    "crates/telemetry",
    "crates/proto/src",
    "crates/proto/build.rs",
    "crates/proto/Cargo.toml",
    "proto",
];

/// The `driftwatch-agent` binary of this build. `cargo test --workspace` builds it (the
/// agent package has integration tests); `cargo test -p driftwatch-tests` does not, so
/// when it is missing or older than a file it is built from, it is built here first,
/// with the same profile, saying why. Once per test process.
pub fn agent_binary() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| fresh("driftwatch-agent", "driftwatch-agent", AGENT_SOURCES))
}

/// What the server binary is built from.
const SERVER_SOURCES: &[&str] = &[
    "server",
    "crates/store",
    "crates/rules",
    "crates/pki",
    "crates/telemetry",
    "crates/formats/src",
    "crates/proto/src",
    "crates/proto/build.rs",
    "proto",
];

/// The `driftwatch-server` binary of this build, built first when missing or stale
/// (as [`agent_binary`]).
pub fn server_binary() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| fresh("driftwatch-server", "driftwatch-server", SERVER_SOURCES))
}

/// What the operator CLI is built from: both libraries it embeds (`driftwatch up`) too.
const CLI_SOURCES: &[&str] = &["crates/cli", "agent/src", "agent/Cargo.toml", "server", "crates"];

/// The `driftwatch` CLI binary of this build, built first when missing or stale (as
/// [`agent_binary`]).
pub fn cli_binary() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| fresh("driftwatch-cli", "driftwatch", CLI_SOURCES))
}

fn fresh(package: &str, name: &str, sources: &[&str]) -> PathBuf {
    let bin = sibling_binary(name);
    if let Some(why) = stale(&bin, sources) {
        build(package, name, &why);
    }
    assert!(bin.is_file(), "{} is still missing after building it", bin.display());
    bin
}

/// Why `bin` needs building (missing, or older than a file under `sources`), or `None`.
fn stale(bin: &Path, sources: &[&str]) -> Option<String> {
    let Ok(built) = std::fs::metadata(bin).and_then(|m| m.modified()) else {
        return Some(format!("{} does not exist", bin.display()));
    };
    let root = workspace_dir();
    let (newest, path) = sources.iter().filter_map(|s| newest_file(&root.join(s))).max_by_key(|(t, _)| *t)?;
    (newest > built).then(|| format!("{} is newer than {}", path.display(), bin.display()))
}

/// The most recently modified file at or below `p` (skipping `target` directories).
fn newest_file(p: &Path) -> Option<(SystemTime, PathBuf)> {
    let meta = std::fs::symlink_metadata(p).ok()?;
    if !meta.is_dir() {
        return Some((meta.modified().ok()?, p.to_path_buf()));
    }
    std::fs::read_dir(p)
        .ok()?
        .filter_map(Result::ok)
        .filter(|e| e.file_name() != "target")
        .filter_map(|e| newest_file(&e.path()))
        .max_by_key(|(t, _)| *t)
}

/// `$CARGO build -p <package> --bin <bin>` in the profile of the running executable.
/// This package is selected too, so that features unify as they do when its tests are
/// built: the dependencies they compiled are reused, not built a second time.
fn build(package: &str, bin: &str, why: &str) {
    let profile = profile_dir();
    let profile = profile.file_name().and_then(|n| n.to_str()).unwrap_or("debug");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(workspace_dir()).args(["build", "-p", package, "-p", env!("CARGO_PKG_NAME"), "--bin", bin]);
    match profile {
        "debug" => {}
        "release" => {
            cmd.arg("--release");
        }
        other => {
            cmd.args(["--profile", other]);
        }
    }
    eprintln!("driftwatch-tests: building {bin} ({why}): {cmd:?}");
    let status = cmd.status().unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(status.success(), "{cmd:?} failed: {status}");
}

/// Whether a test may use an outside program it needs (`present`). Missing: in CI
/// (`CI=true`, where `.ci/run` installs it) the test fails; elsewhere it is skipped,
/// saying why and how to install it.
pub fn outside_program(name: &str, present: bool, install: &str) -> bool {
    let why = (!present).then(|| format!("not installed ({install}); .ci/run installs it"));
    crate::privilege::require(name, why)
}
