//! What a test run reports: per file, per case, and how an alert is named in it.

use std::path::PathBuf;

use crate::{RuleError, RuleSet, Target};

/// The outcome of one test file.
#[derive(Debug, Clone, Default)]
pub struct TestReport {
    pub file: PathBuf,
    /// Problems with the test file or its rule files; when any, no test ran.
    pub errors: Vec<RuleError>,
    pub tests: Vec<TestResult>,
}

impl TestReport {
    pub fn passed(&self) -> bool {
        self.errors.is_empty() && self.tests.iter().all(TestResult::passed)
    }
}

/// The outcome of one test case.
#[derive(Debug, Clone, Default)]
pub struct TestResult {
    pub name: String,
    /// One entry per failed check; multi-line (expected vs got).
    pub failures: Vec<String>,
    /// Evaluation errors seen while replaying (first per alert): hints for a failure.
    pub notes: Vec<String>,
}

impl TestResult {
    pub fn passed(&self) -> bool {
        self.failures.is_empty()
    }
}

/// `rule{host=…, file=…, key=…}` (`metric=` for resource rules); the group is shown when
/// the rule name is not unique.
pub(super) fn alert_label(rules: &RuleSet, idx: usize, host: &str, file: Option<&str>, key: Option<&str>) -> String {
    let r = &rules.rules()[idx];
    let shared = rules.rules().iter().filter(|x| x.name == r.name).count() > 1;
    let mut s = if shared { format!("{}/{}", r.group, r.name) } else { r.name.clone() };
    s.push_str(&format!("{{host={host}"));
    if let Some(f) = file {
        s.push_str(&format!(", file={f}"));
    }
    if let Target::Resource { metric } = &r.target {
        s.push_str(&format!(", metric={metric}"));
    }
    if let Some(k) = key {
        s.push_str(&format!(", key={k}"));
    }
    s.push('}');
    s
}
