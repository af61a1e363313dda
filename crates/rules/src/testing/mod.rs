//! Unit tests for rule files (`driftwatch rules test`), in the spirit of `promtool test rules`.
//!
//! A test file names rule files and test cases. Each case replays a timeline of inputs
//! (file snapshots, resource samples, agent connectivity) through the rules and the alert
//! state machine, and checks the alerts at given times.
//!
//! ```yaml
//! rule_files: [../web2img.yaml]          # relative to this file; a directory loads its *.yaml
//! evaluation_interval: 10s               # agent rules' grid (default 10s); also per test
//! fleet_key: "driftwatch rules test"     # key for masked values (this is the default)
//! tests:
//!   - name: workers regress and are restored
//!     hosts:
//!       - {id: web-1, labels: {service: web2img, env: production}}
//!     baselines:                         # per file: content, content_file or keys
//!       - {path: /etc/web2img/.env.production, content_file: ../../configs/web2img/.env.production}
//!     files:                             # snapshots as the agent would send them
//!       - at: 0s
//!         path: /etc/web2img/.env.production
//!         content_file: ../../configs/web2img/.env.production   # or content: |, or keys: {K: v}
//!         mode: "0600"                   # also dir_mode, uid, gid, format (else from the path)
//!       - {at: 5m, path: /etc/web2img/.env.production, set: {WORKERS: 16}}  # edit the previous
//!       - {at: 9m, path: /etc/web2img/.env.production, unset: [WORKERS]}
//!       - {at: 20m, path: /etc/web2img/.env.production, missing: true}      # deleted
//!     resources:                         # promtool series: "a+bxn" = a, a+b, ..., a+n*b; "_" = gap
//!       - {interval: 1m, series: {memory_used_bytes: "4.8e9x9 7.5e9x9", cpu_cores_used: "10.4x19"}}
//!     agents:
//!       - {offline_since: 10m, online_at: 30m}
//!     expect:
//!       - at: 5m
//!         firing:                        # exhaustive: any other firing alert is a failure
//!           - {rule: workers-above-12, key: WORKERS, severity: high,
//!              annotations: {summary: "WORKERS 16 above 12 (baseline 8)"}}
//!         pending: []                    # each listed alert must be pending
//!         resolved: []                   # each listed alert must be resolved
//! ```
//!
//! Content is parsed with driftwatch-formats as the agent does (format from the path,
//! secrets masked); `keys:`/`set:` values go through the same typing and masking. A
//! snapshot without `mode`/`dir_mode`/`uid`/`gid` keeps those of the file's previous
//! snapshot (0644, 0755, 0, 0 at first). `dir_mode` is the mode of the directory holding
//! the file; it defaults to a usual directory's mode, not to 0 (unknown, which directory
//! rules usually skip). A missing file has mode and dir_mode 0, as the agent sends it.
//! `host` may be left out wherever the case has one host; in an expectation,
//! `file` where the host has one file path, `key` where the rule names a literal key;
//! `group` disambiguates a rule name used in several groups. Listed annotations must equal
//! the rendered ones (from the alert's latest evaluation, as the server shows them);
//! unlisted ones are not checked.
//!
//! Evaluation follows the server: file rules run when a snapshot arrives and are re-stepped
//! continuously (here: at every moment anything happens and exactly when a `for` or
//! `keep_firing_for` runs out); resource rules run on each sample, at the sample's time,
//! with the whole series as history and `baseline` null; agent rules run every
//! `evaluation_interval` and at every other moment anything happens. An alert whose
//! (file, key) or metric is no longer produced sees a non-match. Expectations observe the
//! state after everything at their time has run.
//!
//! `doc` is the file as written; `prepare` checks it against the rules into `case`s; `sim`
//! replays each case; `report` is what comes out.

use std::path::Path;

use crate::RuleError;

mod case;
mod doc;
mod prepare;
mod report;
mod sim;

pub use doc::parse_series;
pub use prepare::DEFAULT_FLEET_KEY;
pub use report::{TestReport, TestResult};

/// Read and run one test file.
pub fn run_test_file(path: &Path) -> TestReport {
    match std::fs::read_to_string(path) {
        Ok(text) => run_test_text(path, &text),
        Err(e) => TestReport {
            file: path.to_path_buf(),
            errors: vec![RuleError {
                file: path.to_path_buf(),
                line: 0,
                column: 0,
                message: format!("cannot read: {e}"),
            }],
            tests: Vec::new(),
        },
    }
}

/// Run test-file text as if it were the file `path` (relative paths resolve against its
/// directory; rule files and `content_file`s are read from disk).
pub fn run_test_text(path: &Path, text: &str) -> TestReport {
    let mut report = TestReport { file: path.to_path_buf(), ..Default::default() };
    match prepare::prepare(path, text) {
        Err(errors) => report.errors = errors,
        Ok((rules, cases)) => report.tests = cases.iter().map(|c| sim::Sim::new(&rules, c).run()).collect(),
    }
    report
}

#[cfg(test)]
mod tests;
