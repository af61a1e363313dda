//! `Limits`: max_keys and max_depth keep what fits and report a parse error.

mod common;

use common::*;
use driftwatch_formats::{Analysis, FileStatus, Format, Limits, Value, analyze};

fn with(text: &str, format: Format, limits: Limits) -> Analysis {
    analyze(text.as_bytes(), format, &masker(), &limits)
}

fn keys_limit(n: usize) -> Limits {
    Limits { max_keys: n, ..Limits::default() }
}

fn depth_limit(n: usize) -> Limits {
    Limits { max_depth: n, ..Limits::default() }
}

#[test]
fn defaults() {
    let l = Limits::default();
    assert_eq!((l.max_file_bytes, l.max_keys, l.max_depth), (1024 * 1024, 10_000, 64));
}

#[test]
fn max_keys_keeps_the_first_n_in_every_format() {
    let cases = [
        ("A=1\nB=2\nC=3\nD=4\nE=5\n", Format::Env, vec!["A", "B", "C"]),
        ("[s]\nA=1\nB=2\nC=3\nD=4\nE=5\n", Format::Ini, vec!["s.A", "s.B", "s.C"]),
        ("A: 1\nB: [2, 3]\nC: 4\nD: 5\n", Format::Yaml, vec!["A", "B[0]", "B[1]"]),
        (r#"{"A": 1, "B": {"x": 2, "y": 3}, "C": 4}"#, Format::Json, vec!["A", "B.x", "B.y"]),
        ("A = 1\nB = 2\nC = 3\nD = 4\n", Format::Toml, vec!["A", "B", "C"]),
    ];
    for (text, format, want) in cases {
        let a = with(text, format, keys_limit(3));
        assert_eq!(a.status, FileStatus::ParseError, "{format:?}");
        let e = a.error.clone().unwrap();
        assert_eq!(e.message, "more than 3 keys; only the first 3 kept");
        assert_eq!((e.line, e.column), (0, 0));
        assert_eq!(keys(&a), want, "{format:?}");
    }
}

#[test]
fn exactly_max_keys_is_ok_and_duplicates_do_not_count() {
    let a = with("A=1\nB=2\nC=3\n", Format::Env, keys_limit(3));
    assert_eq!(a.status, FileStatus::Ok);
    let a = with("A=1\nB=2\nA=3\nB=4\nA=5\n", Format::Env, keys_limit(2));
    assert_eq!(a.status, FileStatus::Ok);
    assert_eq!(*get(&a, "A"), Value::int(5));
    let a = with("A=1\n", Format::Env, keys_limit(0));
    assert_eq!(a.status, FileStatus::ParseError);
    assert!(a.keys.is_empty());
    assert!(with("", Format::Env, keys_limit(0)).status == FileStatus::Ok);
}

#[test]
fn kept_keys_are_still_masked() {
    let a = with("PASSWORD=hunter2\nB=2\nC=3\n", Format::Env, keys_limit(1));
    assert_eq!(a.status, FileStatus::ParseError);
    assert_eq!(masked_keys(&a), ["PASSWORD"]);
    assert!(!format!("{a:?}").contains("hunter2"));
}

#[test]
fn max_depth_skips_deeper_subtrees() {
    let text = r#"{"x": 1, "a": {"b": {"c": 1}, "d": 2}, "y": [[1], 2]}"#;
    // Depth: x=1 container deep, a.d=2, a.b.c=3, y[1]=2, y[0][0]=3.
    let a = with(text, Format::Json, depth_limit(3));
    assert_eq!(a.status, FileStatus::Ok);
    assert_eq!(keys(&a), ["x", "a.b.c", "a.d", "y[0][0]", "y[1]"]);

    let a = with(text, Format::Json, depth_limit(2));
    assert_eq!(a.status, FileStatus::ParseError);
    let e = a.error.clone().unwrap();
    assert_eq!(e.message, "nesting deeper than 2");
    assert_eq!((e.line, e.column), (0, 0));
    assert_eq!(keys(&a), ["x", "a.d", "y[1]"]);

    let a = with(text, Format::Json, depth_limit(1));
    assert_eq!(keys(&a), ["x"]);
    assert_eq!(a.error.unwrap().message, "nesting deeper than 1");

    let a = with(text, Format::Json, depth_limit(0));
    assert!(a.keys.is_empty());
    assert_eq!(a.status, FileStatus::ParseError);
}

#[test]
fn max_depth_in_yaml_and_toml() {
    let a = with("a:\n  b:\n    c: 1\n  d: 2\n", Format::Yaml, depth_limit(2));
    assert_eq!(a.status, FileStatus::ParseError);
    assert_eq!(keys(&a), ["a.d"]);
    let a = with("[a.b]\nc = 1\n[a]\nd = 2\n", Format::Toml, depth_limit(2));
    assert_eq!(a.status, FileStatus::ParseError);
    assert_eq!(keys(&a), ["a.d"]);
    // Several YAML documents count as one level of nesting.
    let a = with("a: 1\n---\nb: 2\n", Format::Yaml, depth_limit(1));
    assert_eq!(a.status, FileStatus::ParseError);
    let a = with("a: 1\n---\nb: 2\n", Format::Yaml, depth_limit(2));
    assert_eq!(a.status, FileStatus::Ok);
}

#[test]
fn env_and_ini_have_no_nesting() {
    assert_eq!(with("A=1\n", Format::Env, depth_limit(0)).status, FileStatus::Ok);
    assert_eq!(with("[a.b.c]\nd=1\n", Format::Ini, depth_limit(0)).status, FileStatus::Ok);
}

#[test]
fn default_depth_boundary() {
    let nested = |n: usize| format!("{}1{}", "[".repeat(n), "]".repeat(n));
    let a = with(&nested(64), Format::Json, Limits::default());
    assert_eq!(a.status, FileStatus::Ok);
    assert_eq!(a.keys.len(), 1);
    assert_eq!(a.keys[0].key, "[0]".repeat(64));
    let a = with(&nested(65), Format::Json, Limits::default());
    assert_eq!(a.status, FileStatus::ParseError);
    assert_eq!(a.error.unwrap().message, "nesting deeper than 64");
}
