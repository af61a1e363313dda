//! Parse errors: honest 1-based positions, and messages that never quote the file.

mod common;

use common::*;
use driftwatch_formats::{FileError, FileStatus, Format};

fn parse_error(text: &str, format: Format) -> FileError {
    let a = run(text, format);
    assert_eq!(a.status, FileStatus::ParseError, "{format:?} {text:?} parsed: {:?}", a.keys);
    assert!(a.keys.is_empty(), "a syntax error keeps no keys");
    assert_eq!(a.content_hash, masker().content_hash(text.as_bytes()));
    a.error.expect("parse error carries an error")
}

/// The examples the end-to-end test relies on.
#[test]
fn reference_examples_report_these_positions() {
    let cases = [
        ("a: 1\nb: [1, 2\nc: 3\n", Format::Yaml, 3, 2),
        ("{\n  \"a\": 1,\n  \"b\": }\n", Format::Json, 3, 8),
        ("[x]\ny = 1\nz = = 2\n", Format::Toml, 3, 5),
        ("[ok]\na = 1\n[broken\nb = 2\n", Format::Ini, 3, 8),
        ("GOOD=1\nthis line has no equals sign\n", Format::Env, 2, 5),
    ];
    for (text, format, line, column) in cases {
        let e = parse_error(text, format);
        assert_eq!((e.line, e.column), (line, column), "{format:?}: {e:?}");
        assert!(!e.message.is_empty());
    }
}

#[test]
fn reference_example_messages() {
    assert_eq!(
        parse_error("a: 1\nb: [1, 2\nc: 3\n", Format::Yaml).message,
        "did not find expected ',' or ']', while parsing a flow sequence at line 2 column 4"
    );
    assert_eq!(parse_error("{\n  \"a\": 1,\n  \"b\": }\n", Format::Json).message, "expected value");
    assert_eq!(parse_error("[x]\ny = 1\nz = = 2\n", Format::Toml).message, "extra `=`, expected nothing");
    assert_eq!(
        parse_error("[ok]\na = 1\n[broken\nb = 2\n", Format::Ini).message,
        "section header is missing its closing ']'"
    );
    assert_eq!(
        parse_error("GOOD=1\nthis line has no equals sign\n", Format::Env).message,
        "expected '=' after the variable name"
    );
}

const CANARY: &str = "CanarySecretXYZ123";

fn broken_inputs_with_canary() -> Vec<(String, Format)> {
    let c = CANARY;
    let mut cases: Vec<(String, Format)> = Vec::new();
    for t in [
        format!("GOOD=1\n{c} no equals\n"),
        format!("GOOD=1\n{c}\n"),
        format!("A=\"{c}\n"),
        format!("A='{c}\n"),
        format!("A=\"x\"{c}\n"),
        format!("{c}!=1\n"),
        format!("=\"{c}\"\n"),
    ] {
        cases.push((t, Format::Env));
    }
    for t in [
        format!("[{c}\nb = 2\n"),
        format!("[s] {c}\n"),
        format!("[s]\n{c}\n"),
        format!("[s]\n = {c}\n"),
        format!("[]\n{c}\n"),
    ] {
        cases.push((t, Format::Ini));
    }
    for t in [
        format!("password: \"{c}\n"),
        format!("password: '{c}\n"),
        format!("password: [{c}\n"),
        format!("password: {{a: {c}\n"),
        format!("a: !!int {c}\n"),
        format!("a: !!float {c}\n"),
        format!("a: !!bool {c}\n"),
        format!("{c}: a: b\n"),
        format!("a:\n  - {c}\n - x\n"),
        format!("key with {c} inside:\n  x: !!int {c}\n"),
        format!("a: *{c}\n"),
        format!("a: &{c}\n  - x\n b\n"),
        format!("\t{c}: 1\n"),
        format!("a: 1\n---\n{c}: [\n"),
        format!("a: @{c}\n"),
        format!("a: `{c}\n"),
        format!("%{c} directive\n---\na: 1\n"),
    ] {
        cases.push((t, Format::Yaml));
    }
    for t in [
        format!("{{\"password\": {c}}}"),
        format!("{{\"password\": \"{c}}}"),
        format!("{{\"{c}\" 1}}"),
        format!("{{\"a\": \"{c}\u{1}\"}}"),
        format!("{{\"a\": \"\\q{c}\"}}"),
        format!("{{\"a\": 1e999, \"{c}\": 1}}"),
        format!("{{\"a\": tru{c}}}"),
        format!("[1, 2] {c}"),
        format!("{{\"a\": 1,}}{c}"),
        format!("{{{c}: 1}}"),
    ] {
        cases.push((t, Format::Json));
    }
    for t in [
        format!("password = {c}\n"),
        format!("password = \"{c}\n"),
        format!("password = '{c}\n"),
        format!("{c} = = 1\n"),
        format!("{c} = 1\n{c} = 2\n"),
        format!("a = 1\na = \"{c}\"\n"),
        format!("[{c}\n"),
        format!("[{c}]\n[{c}]\n"),
        format!("x = [{c}]\n"),
        format!("x = {{ a = {c} }}\n"),
        format!("a = 1979-13-45T{c}\n"),
        format!("a = 999999999999999999999999999999999999999999{c}\n"),
        format!("a = 0x{c}\n"),
        format!("a = \"\\q{c}\"\n"),
        format!("a = \"{c}\" {c}\n"),
    ] {
        cases.push((t, Format::Toml));
    }
    cases
}

#[test]
fn error_messages_never_contain_file_text() {
    for (text, format) in broken_inputs_with_canary() {
        let a = run(&text, format);
        assert_eq!(a.status, FileStatus::ParseError, "{format:?} {text:?} should not parse: {:?}", a.keys);
        let e = a.error.clone().unwrap();
        for fragment in [CANARY, "Canary", "XYZ123", "SecretXYZ"] {
            assert!(!e.message.contains(fragment), "{format:?} {text:?} leaked into {:?}", e.message);
            assert!(!format!("{a:?}").contains(fragment), "{format:?} {text:?} leaked into the analysis");
        }
        assert!(e.line >= 1, "{format:?} {text:?}: line unknown in {e:?}");
        assert!(e.column >= 1, "{format:?} {text:?}: column unknown in {e:?}");
        assert!(!e.message.trim().is_empty());
        assert!(e.message.chars().count() <= 200);
    }
}

#[test]
fn error_lines_point_at_the_broken_line() {
    let cases = [
        ("A=1\nB=2\nC\n", Format::Env, 3),
        ("A=1\n\n\nB=\"open\nx\n", Format::Env, 4),
        ("[a]\nx=1\n\n[b\n", Format::Ini, 4),
        ("[a]\nx=1\n   \nstray\n", Format::Ini, 4),
        ("a: 1\nb: 2\nc: d: e\n", Format::Yaml, 3),
        ("{\"a\": 1,\n\"b\": 2,\n\"c\" 3}", Format::Json, 3),
        ("a = 1\nb = 2\nc = \n", Format::Toml, 3),
        ("a = 1\n[t]\nb = 2\n[t]\n", Format::Toml, 4),
    ];
    for (text, format, line) in cases {
        let e = parse_error(text, format);
        assert_eq!(e.line, line, "{format:?} {text:?}: {e:?}");
        assert!(e.column >= 1);
    }
}

#[test]
fn columns_count_characters_not_bytes() {
    let e = parse_error("é = = 1\n", Format::Toml);
    assert_eq!((e.line, e.column), (1, 5));
    let e = parse_error("ÄÖ\n", Format::Env);
    assert_eq!((e.line, e.column), (1, 1));
    let e = parse_error("[s]\n  ÄÖÜ\n", Format::Ini);
    assert_eq!((e.line, e.column), (2, 3));
}

#[test]
fn deep_or_hostile_inputs_fail_cleanly() {
    let n = 50_000;
    let cases = [
        (format!("{} = 1\n", vec!["a"; n].join(".")), Format::Toml),
        (format!("[{}]\nx = 1\n", vec!["a"; n].join(".")), Format::Toml),
        (format!("x = {}1{}\n", "[".repeat(n), "]".repeat(n)), Format::Toml),
        (format!("x = {}\n", "{a = ".repeat(n)), Format::Toml),
        ("[".repeat(n), Format::Json),
        (format!("{}1{}", "[".repeat(n), "]".repeat(n)), Format::Json),
        ("[".repeat(n), Format::Yaml),
        ((0..1000).map(|i| format!("{}a:\n", " ".repeat(i))).collect::<String>(), Format::Yaml),
        // Billion laughs.
        (
            "a: &a [\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\"]\n\
             b: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]\nc: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]\n\
             d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]\ne: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]\n\
             f: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e]\ng: &g [*f,*f,*f,*f,*f,*f,*f,*f,*f]\n\
             h: &h [*g,*g,*g,*g,*g,*g,*g,*g,*g]\ni: &i [*h,*h,*h,*h,*h,*h,*h,*h,*h]\n"
                .to_string(),
            Format::Yaml,
        ),
    ];
    for (text, format) in cases {
        let a = run(&text, format);
        assert_eq!(a.status, FileStatus::ParseError, "{format:?}");
        assert!(a.error.is_some());
    }
}
