//! Cross-format tests: the real fixture files, and properties over generated documents.

use std::collections::HashMap;
use std::path::Path;

use proptest::prelude::*;
use proptest::sample::Index;

use super::{EditError, EditOp, NewValue, edit, float_text, same_value};
use crate::flatten::{Scalar, mask_scalar};
use crate::{FileStatus, Format, Limits, Masker, Value, analyze, detect_format};

// The repository's copies of shared/fixtures (identical files; these build without shared/).
const ENV_PRODUCTION: &str = include_str!("../../../../deploy/examples/configs/web2img/.env.production");
const ENV_REGRESSED: &str = include_str!("../../../../deploy/examples/scenarios/web2img.env.regressed");
const FIXTURES: &[(&str, &str)] = &[
    ("web2img/.env.production", ENV_PRODUCTION),
    ("web2img/.env.regressed", ENV_REGRESSED),
    (
        "gguf-sync/sync-config-production.yaml",
        include_str!("../../../../deploy/examples/configs/gguf-sync/sync-config-production.yaml"),
    ),
    (
        "gguf-sync/sync-config-staging.yaml",
        include_str!("../../../../deploy/examples/configs/gguf-sync/sync-config-staging.yaml"),
    ),
    (
        "gguf-sync/sync-config-development.yaml",
        include_str!("../../../../deploy/examples/configs/gguf-sync/sync-config-development.yaml"),
    ),
    (
        "gguf-sync/sync-config-broken.yaml",
        include_str!("../../../../deploy/examples/scenarios/sync-config-broken.yaml"),
    ),
    ("swarm/legacy.ini", include_str!("../../../../deploy/examples/configs/swarm/legacy.ini")),
    ("swarm/messaging.toml", include_str!("../../../../deploy/examples/configs/swarm/messaging.toml")),
    ("swarm/coordinates.json", include_str!("../../../../deploy/examples/configs/swarm/coordinates.json")),
    ("swarm/unified_config.yaml", include_str!("../../../../deploy/examples/configs/swarm/unified_config.yaml")),
    (
        "swarm/unified_config.schema.json",
        include_str!("../../../../deploy/examples/configs/swarm/unified_config.schema.json"),
    ),
];

fn masker() -> Masker {
    Masker::new(b"edit tests")
}

fn keys_of(format: Format, text: &str) -> Vec<(String, Value)> {
    let limits = Limits { max_file_bytes: u64::MAX, max_keys: usize::MAX, max_depth: usize::MAX };
    let a = analyze(text.as_bytes(), format, &masker(), &limits);
    assert_eq!(a.status, FileStatus::Ok, "{:?}", a.error);
    a.keys.into_iter().map(|kv| (kv.key, kv.value.unwrap_or_default())).collect()
}

fn value_of(scalar: &Scalar) -> Value {
    match scalar {
        Scalar::Null => Value::null(),
        Scalar::Bool(b) => Value::bool(*b),
        Scalar::Int(i) => Value::int(*i),
        Scalar::Float(f) => Value::float(*f),
        Scalar::Str(s) => Value::string(s.clone()),
    }
}

fn set(key: &str, value: NewValue) -> EditOp {
    EditOp::Set { key: key.to_owned(), value }
}

/// A different value of the same kind, as operator text or typed, and what it reads back as
/// (None for a secret: it reads back masked, only the change is checked).
fn changed(value: &Value) -> (NewValue, Option<Scalar>) {
    use driftwatch_proto::v1::value::Kind;
    match &value.kind {
        Some(Kind::IntValue(i)) => (NewValue::Text((i + 1).to_string()), Some(Scalar::Int(i + 1))),
        Some(Kind::FloatValue(f)) => (NewValue::Typed(Value::float(f + 0.25)), Some(Scalar::Float(f + 0.25))),
        Some(Kind::BoolValue(b)) => (NewValue::Typed(Value::bool(!b)), Some(Scalar::Bool(!b))),
        Some(Kind::StringValue(s)) => {
            let new = format!("{s}-new");
            (NewValue::Text(new.clone()), Some(Scalar::Str(new)))
        }
        Some(Kind::Masked(_)) => (NewValue::Text("rotated-credential".into()), None),
        None | Some(Kind::NullValue(_)) => (NewValue::Text("filled".into()), Some(Scalar::Str("filled".into()))),
    }
}

/// Every key of the file set to a new value: exactly one line changes (its comment stays),
/// the key reads back the new value and every other key is as it was.
fn every_key_changes_one_line(name: &str, format: Format, text: &str) -> (usize, usize) {
    let before = keys_of(format, text);
    assert!(!before.is_empty(), "{name}");
    let (mut edited, mut unsupported) = (0, 0);
    for (key, old) in &before {
        let (new, want) = changed(old);
        let out = match edit(format, text, &[set(key, new)]) {
            Ok(out) => out,
            Err(EditError::Unsupported { reason, .. }) if format == Format::Yaml && reason.contains("flow") => {
                unsupported += 1;
                continue;
            }
            Err(e) => panic!("{name}: `{key}`: {e}"),
        };
        let (old_lines, new_lines): (Vec<&str>, Vec<&str>) = (text.lines().collect(), out.lines().collect());
        assert_eq!(old_lines.len(), new_lines.len(), "{name}: `{key}`:\n{out}");
        let differing: Vec<usize> = (0..old_lines.len()).filter(|&i| old_lines[i] != new_lines[i]).collect();
        assert_eq!(differing.len(), 1, "{name}: `{key}` changed lines {differing:?}:\n{out}");
        let (was, now) = (old_lines[differing[0]], new_lines[differing[0]]);
        if let Some(c) = was.find(" #") {
            assert!(now.ends_with(&was[c..]), "{name}: `{key}` lost its comment: {now}");
        }
        assert_eq!(text.ends_with('\n'), out.ends_with('\n'));
        let after: HashMap<String, Value> = keys_of(format, &out).into_iter().collect();
        assert_eq!(after.len(), before.len(), "{name}: `{key}`");
        for (k, v) in &before {
            if k == key {
                match &want {
                    Some(want) => {
                        let raw = match want {
                            Scalar::Int(i) => Some(i.to_string()),
                            Scalar::Float(f) => Some(float_text(*f)),
                            _ => None,
                        };
                        let raw = raw.filter(|_| matches!(format, Format::Env | Format::Ini));
                        let want = mask_scalar(&masker(), key, want.clone(), raw.as_deref());
                        assert!(same_value(&after[k], &want), "{name}: `{key}` = {:?}", after[k]);
                    }
                    None => assert_ne!(after[k], *v, "{name}: `{key}` unchanged"),
                }
            } else {
                assert_eq!(after[k], *v, "{name}: `{k}` changed by editing `{key}`");
            }
        }
        edited += 1;
    }
    (edited, unsupported)
}

#[test]
fn every_fixture_key_edits_one_line() {
    for (name, text) in FIXTURES {
        let format = detect_format(Path::new(name));
        let (edited, unsupported) = every_key_changes_one_line(name, format, text);
        // Only the flow sequence `monitoring.alert_channels: [...]` is out of reach.
        let expected_unsupported = match *name {
            "gguf-sync/sync-config-production.yaml" => 3,
            "gguf-sync/sync-config-staging.yaml" => 2,
            _ => 0,
        };
        assert_eq!(unsupported, expected_unsupported, "{name}");
        assert!(edited > 0, "{name}");
    }
}

/// The real shared fixtures, when they are next to the repository (CI and developer machines).
#[test]
fn every_shared_fixture_key_edits_one_line() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/fixtures");
    let Ok(dirs) = std::fs::read_dir(&root) else { return };
    let mut files = 0;
    for dir in dirs.flatten() {
        for file in std::fs::read_dir(dir.path()).into_iter().flatten().flatten() {
            let path = file.path();
            let format = detect_format(&path);
            if format == Format::Text {
                continue;
            }
            let text = std::fs::read_to_string(&path).unwrap();
            every_key_changes_one_line(&path.display().to_string(), format, &text);
            files += 1;
        }
    }
    assert!(files >= 10, "only {files} fixture files found");
}

#[test]
fn web2img_regression_put_back_to_baseline() {
    let baseline = keys_of(Format::Env, ENV_PRODUCTION);
    let regressed = keys_of(Format::Env, ENV_REGRESSED);
    let regressed_map: HashMap<&str, &Value> = regressed.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let mut ops = Vec::new();
    for (key, want) in &baseline {
        if regressed_map.get(key.as_str()) != Some(&want) {
            // Only numbers drifted: a masked baseline value could not be written back.
            assert!(want.type_name() != "masked", "{key}");
            ops.push(set(key, NewValue::Typed(want.clone())));
        }
    }
    for (key, _) in &regressed {
        if !baseline.iter().any(|(k, _)| k == key) {
            ops.push(EditOp::Remove { key: key.clone() });
        }
    }
    assert_eq!(ops.len(), 7);
    let fixed = edit(Format::Env, ENV_REGRESSED, &ops).unwrap();
    let mut got = keys_of(Format::Env, &fixed);
    let mut want = baseline.clone();
    got.sort_by(|a, b| a.0.cmp(&b.0));
    want.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(got, want);
    // Every comment line of the regressed file is still there, in order; no line added or lost.
    let comments: Vec<&str> = ENV_REGRESSED.lines().filter(|l| l.trim_start().starts_with('#')).collect();
    let kept: Vec<&str> = fixed.lines().filter(|l| l.trim_start().starts_with('#')).collect();
    assert!(!comments.is_empty());
    assert_eq!(kept, comments);
    assert_eq!(fixed.lines().count(), ENV_REGRESSED.lines().count());
    assert!(fixed.contains("\nBROWSER_POOL_MAX_SIZE=12\n"), "{fixed}");
    // The diff of the correction shows the numbers and no secret.
    let diff = super::unified_diff("/etc/web2img/.env", ENV_REGRESSED, &fixed, &masker());
    assert!(diff.contains("-BROWSER_POOL_MAX_SIZE=50\n") && diff.contains("+BROWSER_POOL_MAX_SIZE=12\n"), "{diff}");
    assert!(!diff.contains("s3cr3t-Pa55word") && !diff.contains("wk_9f8e7d6c5b4a39281706f5e4d3c2b1a0"), "{diff}");
}

#[test]
fn secrets_in_fixture_diffs_are_masked() {
    let m = masker();
    let new_url = "postgresql://web2img:n3w-Pa55word@db.internal:5432/web2img";
    let edited = edit(
        Format::Env,
        ENV_PRODUCTION,
        &[set("WORKERS", NewValue::Text("9".into())), set("DATABASE_URL", NewValue::Text(new_url.into()))],
    )
    .unwrap();
    let diff = super::unified_diff(".env.production", ENV_PRODUCTION, &edited, &m);
    assert!(diff.contains("+DATABASE_URL=<masked:") && diff.contains(" STORAGE_API_KEY=<masked:"), "{diff}");
    assert!(!diff.contains("s3cr3t") && !diff.contains("n3w-Pa55") && !diff.contains("wk_9f8e"), "{diff}");
    // Prose in comments stays readable.
    assert!(diff.contains(" # Secrets: the value must never leave the host in clear text\n"), "{diff}");
    let broken = FIXTURES.iter().find(|(n, _)| n.ends_with("broken.yaml")).unwrap().1;
    let diff = super::unified_diff("sync.yaml", broken, &broken.replace("DEBUG", "INFO"), &m);
    assert!(!diff.contains("hf_aBcDeFgHiJkLmNoPqRsTuVwXyZ0123456789"), "{diff}");
    assert!(diff.contains("huggingface_token: \"<masked:"), "{diff}");
}

#[test]
fn text_files_have_no_keys() {
    for format in [Format::Text, Format::Unspecified] {
        match edit(format, "anything", &[EditOp::Remove { key: "a".into() }]) {
            Err(EditError::Unsupported { reason, .. }) => assert_eq!(reason, "text files have no keys"),
            other => panic!("{other:?}"),
        }
    }
}

#[test]
fn bom_and_no_ops() {
    assert_eq!(edit(Format::Env, "\u{feff}A=1\n", &[set("A", NewValue::Text("2".into()))]).unwrap(), "\u{feff}A=2\n");
    assert_eq!(edit(Format::Json, "{\"a\": 1}", &[]).unwrap(), "{\"a\": 1}");
    assert!(matches!(edit(Format::Json, "{", &[]), Err(EditError::InvalidInput(_))));
}

#[test]
fn error_messages_never_quote_values() {
    let e = edit(Format::Ini, "[db]\npassword = hunter2\n", &[set("db.password", NewValue::Text("a'b\"c \nd".into()))])
        .unwrap_err();
    assert!(!e.to_string().contains("hunter2") && !e.to_string().contains("a'b"), "{e}");
    let e = edit(Format::Env, "PASSWORD=\"hunter2\n", &[]).unwrap_err();
    assert!(!e.to_string().contains("hunter2"), "{e}");
}

/// Found by fuzzing (`formats_ini`, `formats_env`): operator text over a string on an
/// unquoted line (`key = value`, then `true`) was written bare and read back as a bool,
/// while `text_value`, what the server checks its rules against, said string.
#[test]
fn line_formats_read_operator_text_back_as_text_value_says() {
    let cases = [
        (Format::Env, "NAME=web\nRATIO=0.5\nN=1\nQ=\"q\"\n", ["NAME", "RATIO", "N", "Q"]),
        (Format::Ini, "name = web\nratio = 0.5\nn = 1\nq = \"q\"\n", ["name", "ratio", "n", "q"]),
    ];
    for (format, doc, [name, ratio, n, q]) in cases {
        let before: HashMap<String, Value> = keys_of(format, doc).into_iter().collect();
        for (key, text, want) in [
            (name, "true", Value::string("true")),
            (name, "30", Value::string("30")),
            (ratio, "1", Value::float(1.0)),
            (n, "7", Value::int(7)),
            (n, "x y", Value::string("x y")),
            (q, "30", Value::string("30")),
        ] {
            assert_eq!(super::text_value(before.get(key), text), want, "{format:?} {key} {text}");
            let out = edit(format, doc, &[set(key, NewValue::Text(text.into()))]).unwrap();
            let after: HashMap<String, Value> = keys_of(format, &out).into_iter().collect();
            assert_eq!(after[key], want, "{format:?}: {key} set to {text:?} gave\n{out}");
        }
        // Under a masked value (its type unknown) the line decides, and the same edit
        // twice is the edit once (found by fuzzing: `psk=123` set to `123` became `psk="123"`).
        let doc = if format == Format::Env { "PASSWORD=1\n" } else { "password = 1\n" };
        let key = if format == Format::Env { "PASSWORD" } else { "password" };
        assert!(matches!(keys_of(format, doc)[0].1.kind, Some(driftwatch_proto::v1::value::Kind::Masked(_))));
        let once = edit(format, doc, &[set(key, NewValue::Text("1.5".into()))]).unwrap();
        assert!(once.contains("= 1.5") || once.contains("=1.5"), "{once}");
        assert_eq!(edit(format, &once, &[set(key, NewValue::Text("1.5".into()))]).unwrap(), once);
    }
}

/// Found by fuzzing (`formats_env`): a NUL byte in a value made the file binary, and the
/// edit failed its own check instead of being refused.
#[test]
fn a_nul_byte_is_refused_before_anything_is_written() {
    for (format, doc, key) in
        [(Format::Env, "A=1\n", "A"), (Format::Ini, "a = 1\n", "a"), (Format::Json, "{\"a\": 1}", "a")]
    {
        for op in [
            set(key, NewValue::Text("x\0y".into())),
            set(key, NewValue::Typed(Value::string("\0"))),
            set("b\0", NewValue::Text("1".into())),
        ] {
            let e = edit(format, doc, std::slice::from_ref(&op)).unwrap_err();
            assert!(
                matches!(&e, EditError::Unsupported { reason, .. } if reason.contains("NUL")),
                "{format:?} {op:?}: {e}"
            );
        }
    }
}

/// Found by fuzzing (`formats_ini`): a key whose segment `analyze` masks (an INI section
/// named like a token) was set by its masked name, which added a section literally named
/// `<masked:…>`: two keys shown the same, the old value read back.
#[test]
fn a_masked_key_segment_cannot_be_named() {
    let token = format!("ghp_{}", "aB3dE5fG7hJ9kL1mN3pQ5rS7tU9vW1xY3zA5");
    for (format, doc) in [
        (Format::Ini, format!("[{token}]\nox = 1\n")),
        (Format::Toml, format!("[\"{token}\"]\nox = 1\n")),
        (Format::Json, format!("{{\"{token}\": {{\"ox\": 1}}}}")),
    ] {
        let keys = keys_of(format, &doc);
        let (key, _) = &keys[0];
        assert!(key.starts_with("<masked:") && key.ends_with(".ox"), "{format:?}: {key}");
        for op in [set(key, NewValue::Text("2".into())), EditOp::Remove { key: key.clone() }] {
            let e = edit(format, &doc, std::slice::from_ref(&op)).unwrap_err();
            assert!(
                matches!(&e, EditError::Unsupported { reason, .. } if reason.contains("masked")),
                "{format:?}: {e}"
            );
        }
    }
}

// ---------------------------------------------------------------------------------------
// Properties

/// Floats that print the same in every renderer (`0.25`, `-12.5`, `3.0`).
fn nice_float() -> impl Strategy<Value = f64> {
    (-4000i32..4000).prop_map(|q| f64::from(q) / 4.0)
}

/// A safe plain string: never reads as a number, bool or null, needs no quotes or escapes.
fn safe_str() -> impl Strategy<Value = String> {
    "s[a-z0-9_.-]{0,8}"
}

/// Any scalar a baseline could hold.
fn any_scalar() -> impl Strategy<Value = Scalar> {
    prop_oneof![
        Just(Scalar::Null),
        any::<bool>().prop_map(Scalar::Bool),
        any::<i64>().prop_map(Scalar::Int),
        (-1e12f64..1e12).prop_map(Scalar::Float),
        prop::num::f64::NORMAL.prop_map(Scalar::Float),
        "[ -~]{0,16}".prop_map(Scalar::Str),
        "[a-zé日 \\t\\n'\"#:;=-]{0,10}".prop_map(Scalar::Str),
    ]
}

/// A value of the same type as `old`, for edit-then-edit-back.
fn same_kind(old: &Value, pick: u32, text: &str) -> Option<Scalar> {
    use driftwatch_proto::v1::value::Kind;
    Some(match &old.kind {
        Some(Kind::IntValue(i)) => Scalar::Int(i.wrapping_add(i64::from(pick) + 1)),
        Some(Kind::FloatValue(f)) => Scalar::Float(f + f64::from(pick % 64) / 4.0 + 0.5),
        Some(Kind::BoolValue(b)) => Scalar::Bool(!b),
        Some(Kind::StringValue(_)) => Scalar::Str(text.to_owned()),
        _ => return None,
    })
}

/// Set a random key to `new`; it reads back as `new` and nothing else changes, unless the
/// format cannot hold the value at all.
fn check_set_reads_back(format: Format, doc: &str, pick: Index, new: Scalar) -> Result<(), TestCaseError> {
    let before = keys_of(format, doc);
    if before.is_empty() {
        return Ok(());
    }
    let (key, _) = &before[pick.index(before.len())];
    let out = match edit(format, doc, &[set(key, NewValue::Typed(value_of(&new)))]) {
        Ok(out) => out,
        Err(EditError::Unsupported { .. }) if cannot_hold(format, &new) => return Ok(()),
        Err(e) => return Err(TestCaseError::fail(format!("`{key}` = {new:?}: {e}\n{doc}"))),
    };
    let after: HashMap<String, Value> = keys_of(format, &out).into_iter().collect();
    prop_assert_eq!(after.len(), before.len());
    let want = mask_scalar(&masker(), key, new.clone(), None);
    for (k, v) in &before {
        if k == key {
            prop_assert!(same_value(&after[k], &want), "`{}`: {:?} != {:?}\n{}", k, after[k], want, out);
        } else {
            prop_assert_eq!(&after[k], v, "`{}` changed\n{}", k, out);
        }
    }
    Ok(())
}

fn cannot_hold(format: Format, new: &Scalar) -> bool {
    match (format, new) {
        (Format::Env | Format::Ini | Format::Toml, Scalar::Null) => true,
        (Format::Ini, Scalar::Str(s)) => s.contains(['\n', '\r']) || (s.contains('"') && s.contains('\'')),
        _ => false,
    }
}

/// Set a random key to another value of its type, then back: the original bytes return.
fn check_round_trip(format: Format, doc: &str, pick: Index, n: u32, text: &str) -> Result<(), TestCaseError> {
    let before = keys_of(format, doc);
    if before.is_empty() {
        return Ok(());
    }
    let (key, old) = &before[pick.index(before.len())];
    let Some(new) = same_kind(old, n, text) else { return Ok(()) };
    let once = edit(format, doc, &[set(key, NewValue::Typed(value_of(&new)))])
        .map_err(|e| TestCaseError::fail(format!("`{key}`: {e}\n{doc}")))?;
    let back = edit(format, &once, &[set(key, NewValue::Typed(old.clone()))])
        .map_err(|e| TestCaseError::fail(format!("`{key}` back: {e}\n{once}")))?;
    prop_assert_eq!(back, doc, "`{}` via\n{}", key, once);
    Ok(())
}

/// A scalar as written in a generated document: text and how it is quoted.
#[derive(Debug, Clone)]
enum Written {
    Bare(String),
    Single(String),
    Double(String),
}

/// Scalars as .env / INI write them (quoted ones may hold `#` and `;`).
fn text_scalar() -> impl Strategy<Value = Written> {
    prop_oneof![
        any::<i32>().prop_map(|i| Written::Bare(i.to_string())),
        nice_float().prop_map(|f| Written::Bare(float_text(f))),
        any::<bool>().prop_map(|b| Written::Bare(b.to_string())),
        safe_str().prop_map(Written::Bare),
        Just(Written::Bare(String::new())),
        "[a-z0-9 _.#;-]{0,8}".prop_map(Written::Double),
        "[a-z0-9 _.#;-]{0,8}".prop_map(Written::Single),
        any::<u16>().prop_map(|i| Written::Double(i.to_string())),
    ]
}

fn written_text(w: &Written) -> String {
    match w {
        Written::Bare(s) => s.clone(),
        Written::Single(s) => format!("'{s}'"),
        Written::Double(s) => format!("\"{s}\""),
    }
}

fn env_doc() -> impl Strategy<Value = String> {
    let assignment = (0..6usize, any::<bool>(), any::<bool>(), text_scalar(), prop::option::of("[a-z ]{0,8}"));
    let line = prop_oneof![
        4 => assignment.prop_map(|(k, export, spaced, value, comment)| {
            let mut line = format!("{}K{k}{}{}", if export { "export " } else { "" }, if spaced { " = " } else { "=" }, written_text(&value));
            if let Some(c) = comment {
                line.push_str(&format!(" # {c}"));
            }
            line
        }),
        1 => "# [a-z =]{0,10}".prop_map(|c| c),
        1 => Just(String::new()),
    ];
    (prop::collection::vec(line, 1..12), any::<bool>(), any::<bool>()).prop_map(|(lines, crlf, final_nl)| {
        let nl = if crlf { "\r\n" } else { "\n" };
        let mut text = lines.join(nl);
        if final_nl {
            text.push_str(nl);
        }
        text
    })
}

fn ini_doc() -> impl Strategy<Value = String> {
    let entry = (
        0..5usize,
        prop::sample::select(vec!["=", " = ", ": ", " : "]),
        text_scalar(),
        prop::option::of(("[;#]", "[a-z ]{0,6}")),
        any::<bool>(),
    );
    let entry = entry.prop_map(|(k, delim, value, comment, indent)| {
        let mut line = format!("{}k{k}{delim}{}", if indent { "  " } else { "" }, written_text(&value));
        if let Some((c, text)) = comment {
            line.push_str(&format!(" {c} {text}"));
        }
        line
    });
    let line = prop_oneof![4 => entry, 1 => "[;#] [a-z]{0,8}", 1 => Just(String::new())];
    let section = (0..4usize, prop::collection::vec(line.clone(), 0..6));
    (prop::collection::vec(line, 0..4), prop::collection::vec(section, 0..4)).prop_map(|(global, sections)| {
        let mut lines: Vec<String> = global;
        for (s, body) in sections {
            lines.push(format!("[s{s}]"));
            lines.extend(body);
        }
        let mut text = lines.join("\n");
        text.push('\n');
        text
    })
}

#[derive(Debug, Clone)]
enum Tree {
    Leaf(Written),
    Map(Vec<Tree>),
    Seq(Vec<Tree>),
}

fn typed_leaf() -> impl Strategy<Value = Written> {
    prop_oneof![
        any::<i32>().prop_map(|i| Written::Bare(i.to_string())),
        nice_float().prop_map(|f| Written::Bare(float_text(f))),
        any::<bool>().prop_map(|b| Written::Bare(b.to_string())),
        safe_str().prop_map(Written::Bare),
        "[a-z0-9 _.#:-]{0,8}".prop_map(Written::Single),
        "[a-z0-9 _.#:-]{0,8}".prop_map(Written::Double),
        any::<u16>().prop_map(|i| Written::Double(i.to_string())),
    ]
}

fn tree() -> impl Strategy<Value = Tree> {
    let leaf = typed_leaf().prop_map(Tree::Leaf);
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 1..4).prop_map(Tree::Map),
            prop::collection::vec(inner, 1..4).prop_map(Tree::Seq),
        ]
    })
}

fn root_map() -> impl Strategy<Value = Vec<Tree>> {
    prop::collection::vec(tree(), 1..6)
}

fn json_of(t: &Tree) -> serde_json::Value {
    match t {
        Tree::Leaf(Written::Bare(s)) => match s.as_str() {
            "true" => serde_json::Value::Bool(true),
            "false" => serde_json::Value::Bool(false),
            s if s.starts_with('s') || s.is_empty() => serde_json::Value::String(s.to_owned()),
            s => serde_json::from_str(s).unwrap(),
        },
        Tree::Leaf(Written::Single(s) | Written::Double(s)) => serde_json::Value::String(s.clone()),
        Tree::Map(items) => {
            serde_json::Value::Object(items.iter().enumerate().map(|(i, t)| (format!("k{i}"), json_of(t))).collect())
        }
        Tree::Seq(items) => serde_json::Value::Array(items.iter().map(json_of).collect()),
    }
}

fn json_doc() -> impl Strategy<Value = String> {
    (root_map(), 0..3u8).prop_map(|(items, style)| {
        let v = json_of(&Tree::Map(items));
        match style {
            0 => serde_json::to_string(&v).unwrap(),
            1 => serde_json::to_string_pretty(&v).unwrap(),
            _ => {
                use serde::Serialize;
                let mut out = Vec::new();
                let fmt = serde_json::ser::PrettyFormatter::with_indent(b"    ");
                v.serialize(&mut serde_json::Serializer::with_formatter(&mut out, fmt)).unwrap();
                String::from_utf8(out).unwrap() + "\n"
            }
        }
    })
}

fn yaml_scalar(w: &Written) -> String {
    match w {
        Written::Bare(s) if s.is_empty() => "null".to_owned(),
        Written::Single(s) => format!("'{}'", s.replace('\'', "''")),
        other => written_text(other),
    }
}

fn yaml_block(t: &[Tree], indent: usize, seq: bool, comments: bool, out: &mut String) {
    let pad = " ".repeat(indent);
    for (i, item) in t.iter().enumerate() {
        let lead = if seq { format!("{pad}- ") } else { format!("{pad}k{i}:") };
        match item {
            Tree::Leaf(w) => {
                let sep = if seq { "" } else { " " };
                out.push_str(&format!("{lead}{sep}{}", yaml_scalar(w)));
                if comments && i % 2 == 0 {
                    out.push_str("   # note");
                }
                out.push('\n');
            }
            Tree::Map(items) | Tree::Seq(items) => {
                let nested_seq = matches!(item, Tree::Seq(_));
                out.push_str(lead.trim_end());
                out.push('\n');
                if comments {
                    out.push_str(&format!("{pad}  # about k{i}\n"));
                }
                yaml_block(items, indent + 2, nested_seq, comments, out);
            }
        }
    }
}

fn yaml_doc() -> impl Strategy<Value = String> {
    (root_map(), any::<bool>(), prop::option::of(root_map())).prop_map(|(items, comments, second)| {
        let mut out = String::from("# generated\n");
        yaml_block(&items, 0, false, comments, &mut out);
        if let Some(second) = second {
            out.push_str("---\n");
            yaml_block(&second, 0, false, comments, &mut out);
        }
        out
    })
}

fn toml_scalar(w: &Written) -> String {
    match w {
        Written::Bare(s) if s.is_empty() || s.starts_with('s') => format!("\"{s}\""),
        other => written_text(other),
    }
}

/// A TOML document: root keys, tables with scalars, arrays, inline tables and dotted keys.
fn toml_doc() -> impl Strategy<Value = String> {
    let value = prop_oneof![
        4 => typed_leaf().prop_map(|w| toml_scalar(&w)),
        1 => prop::collection::vec(typed_leaf(), 1..4)
            .prop_map(|ws| format!("[{}]", ws.iter().map(toml_scalar).collect::<Vec<_>>().join(", "))),
        1 => prop::collection::vec(typed_leaf(), 1..3).prop_map(|ws| {
            let parts: Vec<String> = ws.iter().enumerate().map(|(i, w)| format!("i{i} = {}", toml_scalar(w))).collect();
            format!("{{ {} }}", parts.join(", "))
        }),
    ];
    let kv = (value, any::<bool>(), any::<bool>(), any::<bool>());
    let table = prop::collection::vec(kv.clone(), 0..5);
    (prop::collection::vec(kv.clone(), 1..5), prop::collection::vec(table, 0..3)).prop_map(|(root, tables)| {
        let render = |kvs: &[(String, bool, bool, bool)], out: &mut String| {
            for (i, (v, tight, comment, dotted)) in kvs.iter().enumerate() {
                let key = if *dotted { format!("d.k{i}") } else { format!("k{i}") };
                out.push_str(&format!("{key}{}{v}", if *tight { "=" } else { " = " }));
                if *comment {
                    out.push_str("  # note");
                }
                out.push('\n');
            }
        };
        let mut out = String::from("# generated\n");
        render(&root, &mut out);
        for (t, kvs) in tables.iter().enumerate() {
            out.push_str(&format!("\n# table {t}\n[t{t}]\n"));
            render(kvs, &mut out);
        }
        out
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    #[test]
    fn env_set_reads_back(doc in env_doc(), pick in any::<Index>(), new in any_scalar()) {
        check_set_reads_back(Format::Env, &doc, pick, new)?;
    }
    #[test]
    fn env_round_trip(doc in env_doc(), pick in any::<Index>(), n in any::<u32>(), text in safe_str()) {
        check_round_trip(Format::Env, &doc, pick, n, &text)?;
    }
    #[test]
    fn ini_set_reads_back(doc in ini_doc(), pick in any::<Index>(), new in any_scalar()) {
        check_set_reads_back(Format::Ini, &doc, pick, new)?;
    }
    #[test]
    fn ini_round_trip(doc in ini_doc(), pick in any::<Index>(), n in any::<u32>(), text in safe_str()) {
        check_round_trip(Format::Ini, &doc, pick, n, &text)?;
    }
    #[test]
    fn json_set_reads_back(doc in json_doc(), pick in any::<Index>(), new in any_scalar()) {
        check_set_reads_back(Format::Json, &doc, pick, new)?;
    }
    #[test]
    fn json_round_trip(doc in json_doc(), pick in any::<Index>(), n in any::<u32>(), text in safe_str()) {
        check_round_trip(Format::Json, &doc, pick, n, &text)?;
    }
    #[test]
    fn toml_set_reads_back(doc in toml_doc(), pick in any::<Index>(), new in any_scalar()) {
        check_set_reads_back(Format::Toml, &doc, pick, new)?;
    }
    #[test]
    fn toml_round_trip(doc in toml_doc(), pick in any::<Index>(), n in any::<u32>(), text in safe_str()) {
        check_round_trip(Format::Toml, &doc, pick, n, &text)?;
    }
    #[test]
    fn yaml_set_reads_back(doc in yaml_doc(), pick in any::<Index>(), new in any_scalar()) {
        check_set_reads_back(Format::Yaml, &doc, pick, new)?;
    }
    #[test]
    fn yaml_round_trip(doc in yaml_doc(), pick in any::<Index>(), n in any::<u32>(), text in safe_str()) {
        check_round_trip(Format::Yaml, &doc, pick, n, &text)?;
    }

    /// Removing a random key (where the format removes keys) leaves every other key as it was.
    #[test]
    fn remove_leaves_the_rest(
        env in env_doc(), ini in ini_doc(), json in json_doc(), toml in toml_doc(), pick in any::<Index>()
    ) {
        for (format, doc) in [(Format::Env, env), (Format::Ini, ini), (Format::Json, json), (Format::Toml, toml)] {
            let before = keys_of(format, &doc);
            if before.is_empty() {
                continue;
            }
            let (key, _) = &before[pick.index(before.len())];
            let out = match edit(format, &doc, &[EditOp::Remove { key: key.clone() }]) {
                Ok(out) => out,
                // Array items would renumber the rest.
                Err(EditError::Unsupported { reason, .. }) if reason.contains("array item") => continue,
                Err(e) => return Err(TestCaseError::fail(format!("{format:?} `{key}`: {e}\n{doc}"))),
            };
            let mut want = before.clone();
            want.retain(|(k, _)| k != key);
            want.sort_by(|a, b| a.0.cmp(&b.0));
            let mut got = keys_of(format, &out);
            // (TOML reports a dotted table's keys together: the order may move.)
            got.sort_by(|a, b| a.0.cmp(&b.0));
            prop_assert_eq!(got, want, "{:?}\n{}", format, out);
        }
    }

    /// Whatever the edit, the diff never shows a secret value in clear.
    #[test]
    fn diff_masks_secret_values(secret in "[A-Za-z0-9]{12,20}", n in 0u8..200) {
        let old = format!("PORT={n}\nDB_PASSWORD={secret}\nNAME=x\n");
        let new = format!("PORT={}\nDB_PASSWORD={secret}x\nNAME=x\n", u16::from(n) + 1);
        let diff = super::unified_diff("app.env", &old, &new, &masker());
        prop_assert!(!diff.contains(&secret), "{}", diff);
        prop_assert!(diff.contains("DB_PASSWORD=<masked:"), "{}", diff);
    }
}
