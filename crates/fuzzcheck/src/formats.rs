//! Each format's parser (`driftwatch_formats::analyze`) and editor (`edit`).
//!
//! Input: a selector byte (which edit), a key pick byte, then the file; a NUL byte ends
//! the file and starts the edit's argument (a NUL never belongs to a text file: such a
//! file is binary). Parse invariants hold for every file; an edit of a file that parses
//! must read back as asked and leave every other key alone.

use std::collections::BTreeMap;

use driftwatch_formats::{
    EditError, EditOp, FileStatus, Format, Limits, Masker, NewValue, Value, analyze, edit, is_secret_key_name,
    secret_reason, text_value,
};
use driftwatch_proto::v1::value::Kind;

use crate::Input;

pub fn env(data: &[u8]) {
    check(Format::Env, data)
}
pub fn ini(data: &[u8]) {
    check(Format::Ini, data)
}
pub fn yaml(data: &[u8]) {
    check(Format::Yaml, data)
}
pub fn json(data: &[u8]) {
    check(Format::Json, data)
}
pub fn toml(data: &[u8]) {
    check(Format::Toml, data)
}

/// Small bounds, so that the fuzzer reaches them.
const LIMITS: Limits = Limits { max_file_bytes: 1 << 20, max_keys: 64, max_depth: 12 };
/// What `edit` reads files with: no bounds.
const UNBOUNDED: Limits = Limits { max_file_bytes: u64::MAX, max_keys: usize::MAX, max_depth: usize::MAX };
/// Longest error message `analyze` passes on, in characters.
const MAX_MESSAGE_CHARS: usize = 200;

fn check(format: Format, data: &[u8]) {
    let mut input = Input::new(data);
    let selector = input.byte();
    let pick = input.byte();
    let rest = input.rest();
    let (file, arg) = match rest.iter().position(|&b| b == 0) {
        Some(i) => (&rest[..i], &rest[i + 1..]),
        None => (rest, &[][..]),
    };
    let masker = Masker::new(b"driftwatch fuzz");
    let analysis = analyze(file, format, &masker, &LIMITS);
    check_analysis(format, file, &analysis, &masker, &LIMITS);
    assert_eq!(analyze(file, format, &masker, &LIMITS), analysis, "analyze is not deterministic");
    let Ok(text) = std::str::from_utf8(file) else {
        assert_eq!(analysis.status, FileStatus::Binary);
        return;
    };
    let before = analyze(file, format, &masker, &UNBOUNDED);
    if before.status != FileStatus::Ok {
        return;
    }
    let before = key_map(&before.keys);
    let Some(op) = edit_op(selector, pick, arg, &before) else { return };
    let edited = match edit(format, text, std::slice::from_ref(&op)) {
        Ok(t) => t,
        Err(EditError::Verification(m)) => panic!("{format:?} edit failed its own check: {m}"),
        Err(_) => return,
    };
    let after = analyze(edited.as_bytes(), format, &masker, &UNBOUNDED);
    assert_eq!(after.status, FileStatus::Ok, "the edited file does not parse: {:?}", after.error);
    check_analysis(format, edited.as_bytes(), &after, &masker, &UNBOUNDED);
    let after = key_map(&after.keys);
    check_edit(&op, &before, &after, &masker);
    // The same edit again changes nothing more.
    if matches!(op, EditOp::Set { .. }) {
        let twice = edit(format, &edited, std::slice::from_ref(&op));
        assert_eq!(twice.as_deref(), Ok(edited.as_str()), "{format:?}: the same edit twice differs from once");
    }
}

fn key_map(keys: &[driftwatch_formats::KeyValue]) -> BTreeMap<String, Value> {
    keys.iter().map(|kv| (kv.key.clone(), kv.value.clone().unwrap_or_else(Value::null))).collect()
}

/// What every analysis of every file must be.
fn check_analysis(format: Format, file: &[u8], a: &driftwatch_formats::Analysis, masker: &Masker, limits: &Limits) {
    assert_eq!(a.content_hash, masker.content_hash(file));
    let text = std::str::from_utf8(file);
    match a.status {
        FileStatus::Binary => assert!(text.is_err() || file.contains(&0), "a text file reported binary"),
        FileStatus::Ok => assert!(a.error.is_none()),
        FileStatus::ParseError => {
            let e = a.error.as_ref().expect("a parse error says what");
            assert!(!e.message.is_empty() && e.message.chars().count() <= MAX_MESSAGE_CHARS, "{:?}", e.message);
            let lines = text.map(|t| line_count(format, t)).unwrap_or(0);
            assert!(e.line as usize <= lines, "error on line {} of a {lines}-line file", e.line);
            if let Ok(t) = text {
                assert_no_file_words(&e.message, t);
            }
            // Keys come with a parse error only when a bound was hit (position unknown).
            assert!(a.keys.is_empty() || (e.line, e.column) == (0, 0), "keys with a syntax error");
        }
        other => panic!("unexpected status {other:?}"),
    }
    assert!(a.keys.len() <= limits.max_keys);
    let mut seen = std::collections::HashSet::new();
    for kv in &a.keys {
        assert!(seen.insert(kv.key.as_str()), "key {:?} reported twice", kv.key);
        let v = kv.value.as_ref().expect("every key has a value");
        match &v.kind {
            Some(Kind::StringValue(s)) => {
                assert_eq!(secret_reason(&kv.key, s), None, "a secret-looking value of {:?} left unmasked", kv.key)
            }
            Some(Kind::Masked(m)) => assert_eq!(m.key_id, masker.key_id()),
            _ => {}
        }
    }
}

/// Lines as the format's parser counts them: YAML also ends a line at a lone `\r`.
pub(crate) fn line_count(format: Format, text: &str) -> usize {
    match format {
        Format::Yaml => text.split('\n').map(|l| l.strip_suffix('\r').unwrap_or(l).split('\r').count()).sum(),
        _ => text.split('\n').count(),
    }
}

/// A parse error never quotes the file: every word of the message that is not plain
/// lower-case English and also occurs in the file was replaced (`errors::sanitize_message`).
fn assert_no_file_words(message: &str, file: &str) {
    for token in message.split(' ') {
        if token.ends_with('…') {
            continue; // cut at the length cap
        }
        let core = token.trim_matches(|c: char| !c.is_alphanumeric());
        // Our own parsers' fixed wording has hyphenated words (`double-quoted`).
        let plain = core.chars().all(|c| c.is_ascii_lowercase() || c == '-') && core.chars().count() < 16;
        assert!(
            core.chars().count() < 4 || plain || !file.contains(core),
            "the error message {message:?} quotes {core:?} from the file"
        );
    }
}

/// The edit the selector asks for: set an existing key (operator text or a typed value),
/// remove one, or set a new key (`key NUL value` in the argument).
fn edit_op(selector: u8, pick: u8, arg: &[u8], before: &BTreeMap<String, Value>) -> Option<EditOp> {
    let existing = before.keys().nth(usize::from(pick) % before.len().max(1)).cloned();
    let arg = String::from_utf8_lossy(arg).into_owned();
    match selector % 4 {
        0 => Some(EditOp::Set { key: existing?, value: NewValue::Text(arg) }),
        1 => Some(EditOp::Set { key: existing?, value: NewValue::Typed(typed(selector / 4, &arg)) }),
        2 => Some(EditOp::Remove { key: existing? }),
        _ => {
            let (key, value) = arg.split_once('\0').unwrap_or((&arg, ""));
            // A plain dotted name: segments that look secret would be shown masked.
            let key: String =
                key.chars().filter(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')).take(20).collect();
            // A segment that looks like a token is shown masked, under another name.
            if key.split('.').any(|seg| secret_reason("", seg).is_some()) {
                return None;
            }
            Some(EditOp::Set { key, value: NewValue::Text(value.to_owned()) })
        }
    }
}

fn typed(kind: u8, arg: &str) -> Value {
    match kind % 5 {
        0 => Value::null(),
        1 => Value::bool(arg.len() % 2 == 1),
        2 => Value::int(arg.parse().unwrap_or(arg.len() as i64 * 1_000_003)),
        3 => Value::float(arg.parse::<f64>().ok().filter(|f| f.is_finite()).unwrap_or(arg.len() as f64 / 3.0)),
        _ => Value::string(arg),
    }
}

fn check_edit(op: &EditOp, before: &BTreeMap<String, Value>, after: &BTreeMap<String, Value>, masker: &Masker) {
    let key = op.key();
    match op {
        EditOp::Remove { .. } => assert!(!after.contains_key(key), "`{key}` is still there after its removal"),
        EditOp::Set { value, .. } => {
            let want = match value {
                NewValue::Text(t) => text_value(before.get(key), t),
                NewValue::Typed(v) => v.clone(),
            };
            let got = after.get(key).unwrap_or_else(|| panic!("`{key}` is missing after it was set"));
            // Over a masked value (its type unknown; the server never sets one) the
            // format's own rules type the text.
            let over_masked = matches!(before.get(key).and_then(|v| v.kind.as_ref()), Some(Kind::Masked(_)));
            if !over_masked || matches!(value, NewValue::Typed(_)) {
                assert_reads_back(key, got, &want, masker);
            }
        }
    }
    for (k, v) in before {
        if k != key {
            let got = after.get(k).unwrap_or_else(|| panic!("`{k}` disappeared when `{key}` was edited"));
            assert!(same(got, v), "`{k}` changed from {v:?} to {got:?} when `{key}` was edited");
        }
    }
    if let Some(extra) = after.keys().find(|k| *k != key && !before.contains_key(*k)) {
        panic!("`{extra}` appeared when `{key}` was edited");
    }
}

/// `got` is `want`, or `want` masked as `analyze` masks it.
fn assert_reads_back(key: &str, got: &Value, want: &Value, masker: &Masker) {
    match (&got.kind, &want.kind) {
        (Some(Kind::Masked(m)), Some(Kind::StringValue(s))) => {
            assert!(secret_reason(key, s).is_some(), "`{key}`: an ordinary string came back masked");
            assert_eq!(m.fingerprint, masker.fingerprint(s.as_bytes()), "`{key}`: the masked value is another one");
        }
        (Some(Kind::Masked(_)), Some(Kind::IntValue(_) | Kind::FloatValue(_))) => {
            assert!(is_secret_key_name(key), "`{key}`: a number came back masked under an ordinary name")
        }
        _ => assert!(same(got, want), "`{key}` reads back as {got:?}, not {want:?}"),
    }
}

/// Equal values; floats within a few units of rounding, null however written.
fn same(a: &Value, b: &Value) -> bool {
    match (&a.kind, &b.kind) {
        (Some(Kind::FloatValue(x)), Some(Kind::FloatValue(y))) => {
            x == y || (x - y).abs() <= 4.0 * f64::EPSILON * x.abs().max(y.abs())
        }
        (None | Some(Kind::NullValue(_)), None | Some(Kind::NullValue(_))) => true,
        _ => a == b,
    }
}
