//! `driftwatch rules test`: the example test files pass (exit 0); a failing test prints
//! FAIL with expected vs got and exits 1; a broken test file exits 1 with file:line:col.

use std::path::{Path, PathBuf};
use std::process::Command;

fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/examples/rules")
}

fn rules_test(args: &[&Path], json: bool) -> (i32, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_driftwatch"));
    if json {
        cmd.args(["-o", "json"]);
    }
    let out = cmd.args(["rules", "test"]).args(args).output().expect("run driftwatch");
    let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.code().unwrap_or(-1), text)
}

#[test]
fn example_test_files_pass() {
    let files = [examples().join("tests/web2img.test.yaml"), examples().join("tests/gguf-sync.test.yaml")];
    let (code, out) = rules_test(&[&files[0], &files[1]], false);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("PASS memory above 6 GiB for 5 minutes"), "{out}");
    assert!(out.contains("PASS broken production config fires, the reviewed config resolves it"), "{out}");
    assert!(!out.contains("FAIL"), "{out}");
}

#[test]
fn a_failing_test_exits_1_with_fail_and_the_difference() {
    let dir = tempfile::tempdir().unwrap();
    let test = dir.path().join("failing.test.yaml");
    let rules = examples().join("web2img.yaml");
    std::fs::write(
        &test,
        format!(
            "rule_files: [{rules:?}]
tests:
  - name: workers regression
    hosts: [{{id: web-1, labels: {{service: web2img, env: production}}}}]
    files:
      - {{at: 0s, path: /etc/web2img/.env, keys: {{WORKERS: 16}}}}
    expect:
      - at: 1m
        firing: [{{rule: workers-above-12, severity: medium}}]
  - name: quiet host
    hosts: [{{id: web-2, labels: {{service: web2img, env: production}}}}]
    files:
      - {{at: 0s, path: /etc/web2img/.env, keys: {{BROWSER_POOL_MAX_SIZE: 30}}}}
    expect:
      - {{at: 1m, firing: []}}
",
            rules = rules.display().to_string()
        ),
    )
    .unwrap();
    let (code, out) = rules_test(&[&test], false);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("FAIL workers regression"), "{out}");
    assert!(out.contains("severity: expected medium, got high"), "{out}");
    assert!(out.contains("FAIL quiet host"), "{out}");
    assert!(
        out.contains("+ browser-pool-max-size-above-20{host=web-2, file=/etc/web2img/.env, key=BROWSER_POOL_MAX_SIZE}"),
        "{out}"
    );
    assert!(out.contains("0 passed, 2 failed"), "{out}");

    let (code, out) = rules_test(&[&test], true);
    assert_eq!(code, 1, "{out}");
    let v: serde_json::Value = serde_json::from_str(&out).expect("JSON output");
    assert_eq!(v["passed"], false);
    assert_eq!(v["files"][0]["tests"][1]["name"], "quiet host");

    // An error in the test file itself: its place, and exit 1.
    let broken = dir.path().join("broken.test.yaml");
    std::fs::write(
        &broken,
        format!("rule_files: [{:?}]\ntests:\n  - name: x\n    hots: []\n", rules.display().to_string()),
    )
    .unwrap();
    let (code, out) = rules_test(&[&broken], false);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("broken.test.yaml:4:5: ") && out.contains("unknown field `hots`"), "{out}");
}
