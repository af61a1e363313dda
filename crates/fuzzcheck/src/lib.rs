//! The checks behind the fuzz targets in `fuzz/`, one function per target, each taking
//! the fuzzer's bytes and panicking when an invariant breaks.
//!
//! The same functions replay the committed corpora (`fuzz/corpus/<target>/`) in the
//! workspace's tests (`tests/tests/fuzz_corpus.rs`), so a finding fixed once stays
//! fixed under plain `cargo test`. Each check is deterministic: the same bytes give the
//! same verdict.

mod formats;
mod gateway;
mod input;
mod rules;
mod silences;
mod spool;

pub use input::Input;

/// One fuzz target: its name (the binary in `fuzz/`, the folder of its corpus) and check.
#[derive(Clone, Copy)]
pub struct Target {
    pub name: &'static str,
    pub check: fn(&[u8]),
}

/// Every target.
pub const TARGETS: &[Target] = &[
    Target { name: "gateway_agent_message", check: gateway::agent_message },
    Target { name: "spool_scan", check: spool::scan },
    Target { name: "formats_env", check: formats::env },
    Target { name: "formats_ini", check: formats::ini },
    Target { name: "formats_yaml", check: formats::yaml },
    Target { name: "formats_json", check: formats::json },
    Target { name: "formats_toml", check: formats::toml },
    Target { name: "rules_load", check: rules::load },
    Target { name: "silence_matchers", check: silences::matchers },
];

/// The check of the target called `name`.
pub fn check(name: &str) -> fn(&[u8]) {
    match TARGETS.iter().find(|t| t.name == name) {
        Some(t) => t.check,
        None => panic!("no fuzz target {name:?}"),
    }
}
