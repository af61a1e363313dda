//! The map stays true to the territory: every `file:function` the ARCHITECTURE.md
//! table names exists, no source file grows past the size a reader can hold, and
//! the dependency invariants the document states hold in the manifests and imports.

use std::path::{Path, PathBuf};

/// Lines a source file may have before its first `#[cfg(test)]`.
const MAX_LINES_BEFORE_TESTS: usize = 600;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace root").to_path_buf()
}

/// Every `.rs` file of the workspace's crates (not `target/`).
fn sources() -> Vec<PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        let Ok(entries) = std::fs::read_dir(dir) else { return };
        for e in entries.flatten() {
            let p = e.path();
            let name = e.file_name().to_string_lossy().into_owned();
            if p.is_dir() {
                if name != "target" && !name.starts_with('.') {
                    walk(&p, out);
                }
            } else if name.ends_with(".rs") {
                out.push(p);
            }
        }
    }
    let mut out = Vec::new();
    for top in ["agent", "server", "crates", "tests"] {
        walk(&root().join(top), &mut out);
    }
    out.sort();
    out
}

/// Test code: integration tests (a `tests` folder) and test modules in their own
/// file (`tests.rs`, declared `#[cfg(test)] mod tests;`).
fn is_test_file(p: &Path) -> bool {
    let rel = p.strip_prefix(root()).unwrap_or(p);
    rel.components().any(|c| c.as_os_str() == "tests") && !rel.starts_with("tests/src")
        || p.file_stem().is_some_and(|s| s == "tests")
}

#[test]
fn no_source_file_is_too_long_before_its_tests() {
    let files = sources();
    assert!(files.len() > 50, "found only {} source files under {}", files.len(), root().display());
    let mut long = Vec::new();
    for f in files.iter().filter(|f| !is_test_file(f)) {
        let text = std::fs::read_to_string(f).unwrap();
        let before = text.lines().take_while(|l| l.trim() != "#[cfg(test)]").count();
        if before > MAX_LINES_BEFORE_TESTS {
            long.push(format!("{} ({before} lines)", f.strip_prefix(root()).unwrap().display()));
        }
    }
    assert!(
        long.is_empty(),
        "split these along their seams (at most {MAX_LINES_BEFORE_TESTS} lines before the tests):\n{}",
        long.join("\n")
    );
}

/// The rows of ARCHITECTURE.md's behaviour table: (behaviour, file, function), one per
/// `` `path/file.rs:function` `` the row names.
fn code_map_rows() -> Vec<(String, String, String)> {
    let doc = std::fs::read_to_string(root().join("ARCHITECTURE.md")).unwrap();
    let mut rows = Vec::new();
    for line in doc.lines().filter(|l| l.starts_with('|')) {
        let cells: Vec<&str> = line.trim_matches('|').split('|').map(str::trim).collect();
        let [behaviour, location, ..] = cells[..] else { continue };
        // Every other piece between backticks is a quoted span.
        for span in location.split('`').skip(1).step_by(2) {
            if let Some((file, function)) = span.split_once(".rs:") {
                rows.push((behaviour.to_string(), format!("{file}.rs"), function.to_string()));
            }
        }
    }
    rows
}

#[test]
fn every_function_in_the_code_map_exists() {
    let rows = code_map_rows();
    for want in [
        "debounce",
        "spool append",
        "dedup",
        "ack",
        "evaluation",
        "alert step",
        "outbox",
        "retry",
        "gate",
        "rollback",
        "masking",
        "atomic write",
    ] {
        assert!(
            rows.iter().any(|(b, _, _)| b.to_lowercase().contains(want)),
            "ARCHITECTURE.md's code map has no row for {want:?}"
        );
    }
    let mut missing = Vec::new();
    for (behaviour, file, function) in &rows {
        let path = root().join(file);
        let Ok(text) = std::fs::read_to_string(&path) else {
            missing.push(format!("{behaviour}: no file {file}"));
            continue;
        };
        // `Type::method` names a method: the type's impl and the fn must both be there.
        let (ty, name) = match function.rsplit_once("::") {
            Some((t, n)) => (Some(t), n),
            None => (None, function.as_str()),
        };
        let has_fn = text.lines().any(|l| {
            let l = l.trim_start();
            let l = l.strip_prefix("pub ").or_else(|| l.strip_prefix("pub(crate) ")).unwrap_or(l);
            let l = l.strip_prefix("pub(super) ").unwrap_or(l);
            let l = l.strip_prefix("async ").unwrap_or(l);
            l.starts_with(&format!("fn {name}(")) || l.starts_with(&format!("fn {name}<"))
        });
        let has_type = ty.is_none_or(|t| text.contains(&format!(" {t} {{")) || text.contains(&format!(" {t}<")));
        if !has_fn || !has_type {
            missing.push(format!("{behaviour}: {file}:{function}"));
        }
    }
    assert!(missing.is_empty(), "ARCHITECTURE.md names code that is not there:\n{}", missing.join("\n"));
}

/// `[dependencies]` of a crate manifest, by name.
fn dependencies(manifest: &str) -> Vec<String> {
    let text = std::fs::read_to_string(root().join(manifest)).unwrap();
    let mut deps = Vec::new();
    let mut in_deps = false;
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('[') {
            in_deps = line == "[dependencies]";
            continue;
        }
        if in_deps && let Some((name, _)) = line.split_once('=') {
            deps.push(name.trim().to_string());
        }
    }
    deps
}

#[test]
fn agent_and_server_never_depend_on_each_other() {
    let agent = dependencies("agent/Cargo.toml");
    let server = dependencies("server/Cargo.toml");
    assert!(!agent.iter().any(|d| d == "driftwatch-server"), "{agent:?}");
    assert!(!server.iter().any(|d| d == "driftwatch-agent"), "{server:?}");
    for lib in ["crates/proto", "crates/formats", "crates/rules", "crates/store", "crates/telemetry"] {
        let deps = dependencies(&format!("{lib}/Cargo.toml"));
        assert!(
            !deps.iter().any(|d| d == "driftwatch-server" || d == "driftwatch-agent" || d == "driftwatch-cli"),
            "{lib} depends on a binary crate: {deps:?}"
        );
    }
}

#[test]
fn the_cli_uses_server_internals_only_to_run_driftwatch_up() {
    let dir = root().join("crates/cli/src");
    let mut offenders = Vec::new();
    for e in std::fs::read_dir(&dir).unwrap().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let text = std::fs::read_to_string(e.path()).unwrap();
        if name != "up.rs" && text.contains("driftwatch_server") {
            offenders.push(name);
        }
    }
    assert!(offenders.is_empty(), "only up.rs may use driftwatch_server: {offenders:?}");
}

#[test]
fn the_cli_decides_its_exit_status_in_one_place() {
    let dir = root().join("crates/cli/src");
    let mut offenders = Vec::new();
    for e in std::fs::read_dir(&dir).unwrap().flatten() {
        let text = std::fs::read_to_string(e.path()).unwrap();
        if text.contains("process::exit(") {
            offenders.push(e.file_name().to_string_lossy().into_owned());
        }
    }
    assert!(offenders.is_empty(), "exit statuses are decided in exit.rs only: {offenders:?}");
}
