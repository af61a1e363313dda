//! Per-format parsing: types, nesting, lists, order, quoting, comments, BOM, CRLF, statuses.

mod common;

use common::*;
use driftwatch_formats::{FileStatus, Format, Limits, Value, analyze, detect_format, parse_format_name};
use std::path::Path;

// ---------------------------------------------------------------------------------------
// Format detection

#[test]
fn detect_format_table() {
    let cases = [
        (".env", Format::Env),
        (".env.production", Format::Env),
        (".env.local", Format::Env),
        (".env.example", Format::Env),
        ("x.env", Format::Env),
        ("prod.env", Format::Env),
        ("/srv/app/.ENV", Format::Env),
        (".env.yaml", Format::Yaml),
        ("a.ini", Format::Ini),
        ("setup.cfg", Format::Ini),
        ("/etc/app/app.conf", Format::Ini),
        ("A.INI", Format::Ini),
        ("c.yaml", Format::Yaml),
        ("c.yml", Format::Yaml),
        ("C.YML", Format::Yaml),
        ("c.json", Format::Json),
        ("Cargo.toml", Format::Toml),
        ("README.md", Format::Text),
        ("Dockerfile", Format::Text),
        ("env", Format::Text),
        (".envrc", Format::Text),
        ("x.env.bak", Format::Text),
        ("yaml", Format::Text),
        ("/", Format::Text),
        ("", Format::Text),
    ];
    for (path, want) in cases {
        assert_eq!(detect_format(Path::new(path)), want, "{path}");
    }
}

#[test]
fn parse_format_name_table() {
    let cases = [
        ("env", Some(Format::Env)),
        ("ENV", Some(Format::Env)),
        ("ini", Some(Format::Ini)),
        ("yaml", Some(Format::Yaml)),
        ("yml", Some(Format::Yaml)),
        ("YAML", Some(Format::Yaml)),
        ("json", Some(Format::Json)),
        ("Toml", Some(Format::Toml)),
        ("text", Some(Format::Text)),
        (" json ", Some(Format::Json)),
        ("txt", None),
        ("xml", None),
        ("", None),
        ("/etc/x", None),
    ];
    for (name, want) in cases {
        assert_eq!(parse_format_name(name), want, "{name:?}");
    }
}

// ---------------------------------------------------------------------------------------
// Statuses that carry no keys

#[test]
fn text_and_unspecified_are_hash_only() {
    for format in [Format::Text, Format::Unspecified] {
        let a = run("password=hunter2\n", format);
        assert_eq!(a.status, FileStatus::HashOnly);
        assert!(a.keys.is_empty() && a.error.is_none());
        assert_eq!(a.content_hash, masker().content_hash(b"password=hunter2\n"));
    }
}

#[test]
fn binary_content() {
    let m = masker();
    for content in [&b"A=1\0B=2\n"[..], &b"A=\xff\xfe\n"[..], &b"\xff\xfeA\0=\x001\0"[..], &b"\0"[..]] {
        for format in [Format::Env, Format::Ini, Format::Yaml, Format::Json, Format::Toml, Format::Text] {
            let a = analyze(content, format, &m, &Limits::default());
            assert_eq!(a.status, FileStatus::Binary, "{content:?} {format:?}");
            assert!(a.keys.is_empty() && a.error.is_none());
            assert_eq!(a.content_hash, m.content_hash(content));
        }
    }
}

#[test]
fn too_large_is_defensive() {
    let m = masker();
    let limits = Limits { max_file_bytes: 8, ..Limits::default() };
    let a = analyze(b"A=12345678\n", Format::Env, &m, &limits);
    assert_eq!(a.status, FileStatus::TooLarge);
    assert!(a.keys.is_empty());
    assert_eq!(a.content_hash, m.content_hash(b"A=12345678\n"));
    // Exactly at the cap is fine.
    let a = analyze(b"A=123456", Format::Env, &m, &limits);
    assert_eq!(a.status, FileStatus::Ok);
}

#[test]
fn empty_files() {
    for format in [Format::Env, Format::Ini, Format::Yaml, Format::Toml] {
        let a = ok("", format);
        assert!(a.keys.is_empty());
    }
    // JSON needs a value.
    let a = run("", Format::Json);
    assert_eq!(a.status, FileStatus::ParseError);
    let e = a.error.unwrap();
    assert_eq!((e.line, e.column), (1, 1));
}

#[test]
fn bom_is_skipped_and_hash_covers_it() {
    let m = masker();
    for (text, format, key) in [
        ("\u{feff}A=1\n", Format::Env, "A"),
        ("\u{feff}[s]\nA=1\n", Format::Ini, "s.A"),
        ("\u{feff}A: 1\n", Format::Yaml, "A"),
        ("\u{feff}{\"A\": 1}", Format::Json, "A"),
        ("\u{feff}A = 1\n", Format::Toml, "A"),
    ] {
        let a = ok(text, format);
        assert_eq!(keys(&a), [key], "{format:?}");
        assert_eq!(*get(&a, key), Value::int(1));
        assert_eq!(a.content_hash, m.content_hash(text.as_bytes()));
    }
}

#[test]
fn crlf_line_endings() {
    for (text, format, key) in [
        ("A=1\r\nB=\"x\"\r\nC=y\r\n", Format::Env, "C"),
        ("[s]\r\nA=1\r\nB=\"x\"\r\nC=y\r\n", Format::Ini, "s.C"),
        ("A: 1\r\nB: \"x\"\r\nC: y\r\n", Format::Yaml, "C"),
        ("{\r\n\"A\": 1,\r\n\"B\": \"x\",\r\n\"C\": \"y\"\r\n}\r\n", Format::Json, "C"),
        ("A = 1\r\nB = \"x\"\r\nC = \"y\"\r\n", Format::Toml, "C"),
    ] {
        let a = ok(text, format);
        assert_eq!(a.keys.len(), 3, "{format:?}");
        assert_eq!(a.keys[0].value, Some(Value::int(1)), "{format:?}");
        assert_eq!(a.keys[1].value, Some(string("x")), "{format:?}");
        assert_eq!(*get(&a, key), string("y"), "{format:?}");
    }
}

// ---------------------------------------------------------------------------------------
// .env

#[test]
fn env_types_are_inferred_unless_quoted() {
    let text = "\
INT=12
NEG=-3
ZERO=0
FLOAT=1.5
FLOAT_EXP=2.5e3
BOOL=true
BOOL_UP=FALSE
QUOTED_INT=\"12\"
SQUOTED_BOOL='true'
LEADING_ZERO=0755
VERSION=1.2.3
IP=10.0.0.1
HUGE=123456789012345678901234567890
WORD=hello world
EMPTY=
PLUS=+5
EXP_ONLY=1e5
YES=yes
";
    let a = ok(text, Format::Env);
    assert_eq!(*get(&a, "INT"), Value::int(12));
    assert_eq!(*get(&a, "NEG"), Value::int(-3));
    assert_eq!(*get(&a, "ZERO"), Value::int(0));
    assert_eq!(*get(&a, "FLOAT"), Value::float(1.5));
    assert_eq!(*get(&a, "FLOAT_EXP"), Value::float(2500.0));
    assert_eq!(*get(&a, "BOOL"), Value::bool(true));
    assert_eq!(*get(&a, "BOOL_UP"), Value::bool(false));
    assert_eq!(*get(&a, "QUOTED_INT"), string("12"));
    assert_eq!(*get(&a, "SQUOTED_BOOL"), string("true"));
    assert_eq!(*get(&a, "LEADING_ZERO"), string("0755"));
    assert_eq!(*get(&a, "VERSION"), string("1.2.3"));
    assert_eq!(*get(&a, "IP"), string("10.0.0.1"));
    assert_eq!(*get(&a, "HUGE"), string("123456789012345678901234567890"));
    assert_eq!(*get(&a, "WORD"), string("hello world"));
    assert_eq!(*get(&a, "EMPTY"), string(""));
    assert_eq!(*get(&a, "PLUS"), string("+5"));
    assert_eq!(*get(&a, "EXP_ONLY"), string("1e5"));
    assert_eq!(*get(&a, "YES"), string("yes"));
}

#[test]
fn env_order_comments_export_multiline() {
    let text = "\
# header comment
ZETA=1

export ALPHA=2 # inline comment
   MIDDLE = spaced   
HASH=a#b
PEM=\"-----BEGIN CERTIFICATE-----
MIIB
-----END CERTIFICATE-----\"
ESC=\"tab\\there\\nnew \\\"q\\\" back\\\\slash\"
LAST='single # kept'
";
    let a = ok(text, Format::Env);
    assert_eq!(keys(&a), ["ZETA", "ALPHA", "MIDDLE", "HASH", "PEM", "ESC", "LAST"]);
    assert_eq!(*get(&a, "ALPHA"), Value::int(2));
    assert_eq!(*get(&a, "MIDDLE"), string("spaced"));
    assert_eq!(*get(&a, "HASH"), string("a#b"));
    assert_eq!(*get(&a, "PEM"), string("-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----"));
    assert_eq!(*get(&a, "ESC"), string("tab\there\nnew \"q\" back\\slash"));
    assert_eq!(*get(&a, "LAST"), string("single # kept"));
}

#[test]
fn env_duplicates_last_value_wins_at_first_position() {
    let a = ok("A=1\nB=2\nA=3\n", Format::Env);
    assert_eq!(keys(&a), ["A", "B"]);
    assert_eq!(*get(&a, "A"), Value::int(3));
}

#[test]
fn env_never_expands_variables() {
    // SAFETY-free check: whatever the process environment holds, `$HOME` stays text.
    let a = ok("H=$HOME\nP=\"${PATH}\"\n", Format::Env);
    assert_eq!(*get(&a, "H"), string("$HOME"));
    assert_eq!(*get(&a, "P"), string("${PATH}"));
}

// ---------------------------------------------------------------------------------------
// INI

#[test]
fn ini_sections_types_and_order() {
    let text = "\
; comment
top = level
[server]
port = 8080
ratio = 0.5
debug = True
name = \"12\"
path = C:\\data\\x
[server.tls]
enabled: false
";
    let a = ok(text, Format::Ini);
    assert_eq!(
        keys(&a),
        ["top", "server.port", "server.ratio", "server.debug", "server.name", "server.path", "server.tls.enabled"]
    );
    assert_eq!(*get(&a, "top"), string("level"));
    assert_eq!(*get(&a, "server.port"), Value::int(8080));
    assert_eq!(*get(&a, "server.ratio"), Value::float(0.5));
    assert_eq!(*get(&a, "server.debug"), Value::bool(true));
    assert_eq!(*get(&a, "server.name"), string("12"));
    assert_eq!(*get(&a, "server.path"), string("C:\\data\\x"));
    assert_eq!(*get(&a, "server.tls.enabled"), Value::bool(false));
}

#[test]
fn ini_duplicates_last_value_wins() {
    let a = ok("[a]\nx = 1\ny = 2\nx = 3\n[b]\nz = 1\n[a]\nx = 4\n", Format::Ini);
    assert_eq!(keys(&a), ["a.x", "a.y", "b.z"]);
    assert_eq!(*get(&a, "a.x"), Value::int(4));
}

#[test]
fn ini_inline_comments_and_continuations() {
    let a = ok("[s]\nworkers = 4 ; per core\ncolor = #fff\nlist =\n  a\n  b\n", Format::Ini);
    assert_eq!(*get(&a, "s.workers"), Value::int(4));
    assert_eq!(*get(&a, "s.color"), string(""));
    assert_eq!(*get(&a, "s.list"), string("\na\nb"));
}

// ---------------------------------------------------------------------------------------
// YAML

#[test]
fn yaml_nesting_lists_types_order() {
    let text = "\
zeta: 1
alpha:
  nested:
    deep: true
  list:
    - one
    - 2
    - 3.5
    - null
    - ~
    - name: x
      ports: [80, 443]
  quoted: \"12\"
  date: 2024-01-31
  time: 2024-01-31T10:00:00Z
  empty_map: {}
  empty_list: []
  multiline: |
    line1
    line2
last: end
";
    let a = ok(text, Format::Yaml);
    assert_eq!(
        keys(&a),
        [
            "zeta",
            "alpha.nested.deep",
            "alpha.list[0]",
            "alpha.list[1]",
            "alpha.list[2]",
            "alpha.list[3]",
            "alpha.list[4]",
            "alpha.list[5].name",
            "alpha.list[5].ports[0]",
            "alpha.list[5].ports[1]",
            "alpha.quoted",
            "alpha.date",
            "alpha.time",
            "alpha.multiline",
            "last",
        ]
    );
    assert_eq!(*get(&a, "alpha.nested.deep"), Value::bool(true));
    assert_eq!(*get(&a, "alpha.list[1]"), Value::int(2));
    assert_eq!(*get(&a, "alpha.list[2]"), Value::float(3.5));
    assert_eq!(*get(&a, "alpha.list[3]"), Value::null());
    assert_eq!(*get(&a, "alpha.list[4]"), Value::null());
    assert_eq!(*get(&a, "alpha.list[5].ports[1]"), Value::int(443));
    assert_eq!(*get(&a, "alpha.quoted"), string("12"));
    assert_eq!(*get(&a, "alpha.date"), string("2024-01-31"));
    assert_eq!(*get(&a, "alpha.time"), string("2024-01-31T10:00:00Z"));
    assert_eq!(*get(&a, "alpha.multiline"), string("line1\nline2\n"));
}

#[test]
fn yaml_non_string_keys_tags_and_special_numbers() {
    let text = "\
1: one
true: yes
null: nothing
1.5: f
? [a, b]
: complex
tagged: !Ref my-resource
sub: !Sub
  - x
big: 18446744073709551615
bigger: 99999999999999999999999
inf: .inf
ninf: -.inf
nan: .nan
hex: 0x1F
";
    let a = ok(text, Format::Yaml);
    assert_eq!(*get(&a, "1"), string("one"));
    assert_eq!(*get(&a, "true"), string("yes"));
    assert_eq!(*get(&a, "null"), string("nothing"));
    assert_eq!(*get(&a, "1.5"), string("f"));
    assert_eq!(*get(&a, "[a, b]"), string("complex"));
    assert_eq!(*get(&a, "tagged"), string("my-resource"));
    assert_eq!(*get(&a, "sub[0]"), string("x"));
    assert_eq!(*get(&a, "big"), Value::float(18446744073709551615.0));
    assert_eq!(*get(&a, "bigger"), Value::float(1e23));
    assert_eq!(*get(&a, "inf"), string("inf"));
    assert_eq!(*get(&a, "ninf"), string("-inf"));
    assert_eq!(*get(&a, "nan"), string("nan"));
    assert_eq!(*get(&a, "hex"), Value::int(31));
}

#[test]
fn yaml_merge_keys_apply_in_place() {
    let text = "\
defaults: &defaults
  adapter: postgres
  host: localhost
  pool: 5
production:
  database: prod
  <<: *defaults
  host: db.internal
";
    let a = ok(text, Format::Yaml);
    assert_eq!(
        keys(&a),
        [
            "defaults.adapter",
            "defaults.host",
            "defaults.pool",
            "production.database",
            "production.adapter",
            "production.pool",
            "production.host",
        ]
    );
    assert_eq!(*get(&a, "production.host"), string("db.internal"));
    assert_eq!(*get(&a, "production.pool"), Value::int(5));

    // A list of sources: earlier ones win.
    let a = ok("a: &a {x: 1, y: 1}\nb: &b {y: 2, z: 2}\nc:\n  <<: [*a, *b]\n", Format::Yaml);
    assert_eq!(keys(&a)[4..], ["c.x", "c.y", "c.z"]);
    assert_eq!(*get(&a, "c.y"), Value::int(1));

    // `<<` with a scalar is just a key.
    let a = ok("\"<<\": 3\n", Format::Yaml);
    assert_eq!(*get(&a, "<<"), Value::int(3));
}

#[test]
fn yaml_duplicate_keys_last_wins() {
    let a = ok("a: 1\nb: 2\na: 3\n", Format::Yaml);
    assert_eq!(keys(&a), ["a", "b"]);
    assert_eq!(*get(&a, "a"), Value::int(3));
}

#[test]
fn yaml_documents() {
    // One document, with or without markers, gets no prefix.
    let a = ok("---\na: 1\n", Format::Yaml);
    assert_eq!(keys(&a), ["a"]);
    let a = ok("a: 1\n---\n", Format::Yaml);
    assert_eq!(keys(&a), ["a"]);
    // Several documents are indexed by position.
    let a = ok("a: 1\n---\nb: 2\n---\n---\n- x\n", Format::Yaml);
    assert_eq!(keys(&a), ["[0].a", "[1].b", "[3][0]"]);
    assert_eq!(*get(&a, "[3][0]"), string("x"));
    // Comments only / explicit null: nothing.
    assert!(ok("# nothing\n", Format::Yaml).keys.is_empty());
    assert!(ok("~\n", Format::Yaml).keys.is_empty());
}

#[test]
fn root_scalars_and_lists() {
    let a = ok("just text\n", Format::Yaml);
    assert_eq!(keys(&a), [""]);
    assert_eq!(*get(&a, ""), string("just text"));
    let a = ok("- a\n- b: 1\n", Format::Yaml);
    assert_eq!(keys(&a), ["[0]", "[1].b"]);
    let a = ok("[1, {\"x\": [true]}]", Format::Json);
    assert_eq!(keys(&a), ["[0]", "[1].x[0]"]);
    let a = ok("42", Format::Json);
    assert_eq!(*get(&a, ""), Value::int(42));
    assert!(ok("null", Format::Json).keys.is_empty());
    assert!(ok("{}", Format::Json).keys.is_empty());
    assert!(ok("[]", Format::Json).keys.is_empty());
}

// ---------------------------------------------------------------------------------------
// JSON

#[test]
fn json_order_types_nesting() {
    let text = r#"{
  "zeta": {"b": 1, "a": [1, 2.5, "x", null, true, {"deep": {"er": -7}}]},
  "alpha": "s",
  "empty": {},
  "none": [],
  "big": 18446744073709551615,
  "huge": 1e300,
  "neg": -9223372036854775808,
  "a.b": "dotted key"
}"#;
    let a = ok(text, Format::Json);
    assert_eq!(
        keys(&a),
        [
            "zeta.b",
            "zeta.a[0]",
            "zeta.a[1]",
            "zeta.a[2]",
            "zeta.a[3]",
            "zeta.a[4]",
            "zeta.a[5].deep.er",
            "alpha",
            "big",
            "huge",
            "neg",
            "a.b",
        ]
    );
    assert_eq!(*get(&a, "zeta.a[1]"), Value::float(2.5));
    assert_eq!(*get(&a, "zeta.a[3]"), Value::null());
    assert_eq!(*get(&a, "zeta.a[4]"), Value::bool(true));
    assert_eq!(*get(&a, "zeta.a[5].deep.er"), Value::int(-7));
    assert_eq!(*get(&a, "big"), Value::float(18446744073709551615.0));
    assert_eq!(*get(&a, "huge"), Value::float(1e300));
    assert_eq!(*get(&a, "neg"), Value::int(i64::MIN));
}

#[test]
fn json_duplicate_and_colliding_paths_are_reported_once() {
    let a = ok(r#"{"a": 1, "b": 2, "a": 3}"#, Format::Json);
    assert_eq!(keys(&a), ["a", "b"]);
    assert_eq!(*get(&a, "a"), Value::int(3));
    let a = ok(r#"{"a.b": 1, "a": {"b": 2}}"#, Format::Json);
    assert_eq!(keys(&a), ["a.b"]);
    assert_eq!(*get(&a, "a.b"), Value::int(2));
}

// ---------------------------------------------------------------------------------------
// TOML

#[test]
fn toml_tables_arrays_dates_order() {
    let text = r#"
title = "x"
zeta = 1

[server]
port = 8080
ratio = 0.25
tags = ["a", "b"]
inline = { z = 1, a = 2 }

[[servers]]
name = "one"

[[servers]]
name = "two"
ports = [1, 2]

[dates]
odt = 1979-05-27T07:32:00Z
ldt = 1979-05-27T07:32:00
ld = 1979-05-27
lt = 07:32:00
inf = inf
nan = nan
"#;
    let a = ok(text, Format::Toml);
    assert_eq!(
        keys(&a),
        [
            "title",
            "zeta",
            "server.port",
            "server.ratio",
            "server.tags[0]",
            "server.tags[1]",
            "server.inline.z",
            "server.inline.a",
            "servers[0].name",
            "servers[1].name",
            "servers[1].ports[0]",
            "servers[1].ports[1]",
            "dates.odt",
            "dates.ldt",
            "dates.ld",
            "dates.lt",
            "dates.inf",
            "dates.nan",
        ]
    );
    assert_eq!(*get(&a, "server.ratio"), Value::float(0.25));
    assert_eq!(*get(&a, "servers[1].name"), string("two"));
    assert_eq!(*get(&a, "dates.odt"), string("1979-05-27T07:32:00Z"));
    assert_eq!(*get(&a, "dates.ldt"), string("1979-05-27T07:32:00"));
    assert_eq!(*get(&a, "dates.ld"), string("1979-05-27"));
    assert_eq!(*get(&a, "dates.lt"), string("07:32:00"));
    assert_eq!(*get(&a, "dates.inf"), string("inf"));
    assert_eq!(*get(&a, "dates.nan"), string("nan"));
}

#[test]
fn toml_out_of_range_integer_becomes_float() {
    let a = ok("a = 99999999999999999999\n", Format::Toml);
    assert_eq!(*get(&a, "a"), Value::float(1e20));
}
