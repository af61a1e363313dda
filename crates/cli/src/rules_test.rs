//! `driftwatch rules test FILE...`: run rule unit-test files (format in
//! `driftwatch_rules::testing`) and print `PASS name` / `FAIL name` with what differed.

use std::path::PathBuf;

use driftwatch_rules::testing::{TestReport, run_test_file};

use crate::output::Output;

/// Run every file; true when every test of every file passed and no file had an error.
pub(crate) fn run(files: &[PathBuf], out: Output) -> bool {
    let reports: Vec<TestReport> = files.iter().map(|f| run_test_file(f)).collect();
    match out {
        Output::Json => println!("{}", to_json(&reports)),
        Output::Table => print!("{}", to_text(&reports)),
    }
    reports.iter().all(TestReport::passed)
}

fn to_text(reports: &[TestReport]) -> String {
    let (mut passed, mut failed, mut broken) = (0, 0, 0);
    let mut s = String::new();
    for r in reports {
        s.push_str(&format!("{}\n", r.file.display()));
        if !r.errors.is_empty() {
            broken += 1;
            s.push_str(&format!("ERROR {}\n", r.file.display()));
            r.errors.iter().for_each(|e| s.push_str(&format!("  {e}\n")));
        }
        for t in &r.tests {
            if t.passed() {
                passed += 1;
                s.push_str(&format!("PASS {}\n", t.name));
                continue;
            }
            failed += 1;
            s.push_str(&format!("FAIL {}\n", t.name));
            for line in t.failures.iter().chain(t.notes.iter().map(|n| n as &String)).flat_map(|f| f.lines()) {
                s.push_str(&format!("  {line}\n"));
            }
        }
    }
    s.push_str(&format!("\n{passed} passed, {failed} failed"));
    if broken > 0 {
        s.push_str(&format!(", {broken} test files with errors"));
    }
    s.push('\n');
    s
}

fn to_json(reports: &[TestReport]) -> serde_json::Value {
    let files: Vec<serde_json::Value> = reports
        .iter()
        .map(|r| {
            let errors: Vec<serde_json::Value> = r
                .errors
                .iter()
                .map(|e| {
                    let file = e.file.display().to_string();
                    serde_json::json!({"file": file, "line": e.line, "column": e.column, "message": e.message})
                })
                .collect();
            let tests: Vec<serde_json::Value> = r
                .tests
                .iter()
                .map(|t| {
                    serde_json::json!({"name": t.name, "passed": t.passed(), "failures": t.failures, "notes": t.notes})
                })
                .collect();
            serde_json::json!({"file": r.file.display().to_string(), "errors": errors, "tests": tests})
        })
        .collect();
    serde_json::json!({"passed": reports.iter().all(TestReport::passed), "files": files})
}
