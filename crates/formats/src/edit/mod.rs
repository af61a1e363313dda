//! Format-preserving edits: set or remove keys of a config file in place, keeping comments,
//! order, spacing and quoting; and unified diffs of such edits with secrets masked.
//!
//! Editors: .env, INI, TOML, JSON, YAML (scalars), keyword files (sshd_config), sysctl and
//! systemd units, each documented in its module; nginx files are refused (no editor yet).
//!
//! Keys are the flattened paths [`analyze`](crate::analyze) reports (`a.b`, `list[0]`, INI
//! `section.key`, global INI keys bare, `[i]`-prefixed keys in multi-document YAML), matched
//! as written in the file (a key segment that `analyze` masks cannot be named).
//!
//! Every edit is checked before it is returned: the input must parse, the output must parse,
//! every set key must read back with the intended value, every removed key must be gone and no
//! other key may change; otherwise [`EditError::Verification`]. That is a safety net for bugs
//! here, never an expected outcome.
//!
//! Error messages name keys, types and formats, never values: a value may be a secret.

use std::collections::HashMap;

use driftwatch_proto::v1::value::Kind;

use crate::flatten::{Scalar, infer_text, mask_scalar, safe_key_path};
use crate::{FileStatus, Format, Limits, Masker, Value, analyze};

mod diff;
mod env;
mod ini;
mod json;
mod keyword;
mod sysctl;
mod systemd;
mod toml;
mod yaml;

#[cfg(test)]
mod tests;

pub use diff::unified_diff;

/// The new value of a key.
#[derive(Debug, Clone, PartialEq)]
pub enum NewValue {
    /// A typed value (e.g. from a baseline). Rendered by its own type in typed formats
    /// (TOML/JSON/YAML); as plain text in .env/INI (quoted when needed so that a string such as
    /// `"30"` still reads back as a string). A masked value is an error ([`EditError::Masked`]).
    Typed(Value),
    /// Operator text. In typed formats the text keeps the type of the scalar it replaces when it
    /// reads as that type (int `20` + `"30"` → int `30`; string `"x"` + `"30"` → string `"30"`),
    /// otherwise (and for new keys) its type is inferred like unquoted .env text. In .env/INI it
    /// is written as text, keeping the line's quote style.
    Text(String),
}

/// One change to a file.
#[derive(Debug, Clone, PartialEq)]
pub enum EditOp {
    /// Replace the value of `key`, or add the key when the file does not have it.
    Set { key: String, value: NewValue },
    /// Delete `key` (every occurrence, in formats that allow duplicates).
    Remove { key: String },
}

impl EditOp {
    pub fn key(&self) -> &str {
        match self {
            EditOp::Set { key, .. } | EditOp::Remove { key } => key,
        }
    }
}

/// Why an edit was not made. Messages never quote values.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EditError {
    /// The format cannot make this edit in place.
    #[error("{format}: {reason}")]
    Unsupported { format: String, reason: String },
    /// Remove (or an edit needing an existing key) of a key the file does not have.
    #[error("the file has no key `{0}`")]
    UnknownKey(String),
    /// The value is masked: only a fingerprint exists, it cannot be written.
    #[error("the value for `{0}` is masked: only its fingerprint is known, so it cannot be written")]
    Masked(String),
    /// The input does not parse as its format.
    #[error("the file does not parse: {0}")]
    InvalidInput(String),
    /// Internal check failed: the edited text does not parse, or does not read back the new
    /// values. Never expected; it's a safety net.
    #[error("the edited file failed its check: {0}")]
    Verification(String),
}

/// Apply `ops` in order to `content` (a whole file of `format`) and return the new text.
///
/// A leading UTF-8 BOM is kept. See the module docs for what is checked.
pub fn edit(format: Format, content: &str, ops: &[EditOp]) -> Result<String, EditError> {
    if matches!(format, Format::Text | Format::Unspecified) {
        return Err(unsupported(format, "text files have no keys"));
    }
    if format == Format::Nginx {
        return Err(unsupported(format, "no in-place editor for nginx files"));
    }
    let (bom, body) = match content.strip_prefix('\u{feff}') {
        Some(rest) => ("\u{feff}", rest),
        None => ("", content),
    };
    // A throwaway key: verification only compares fingerprints made with the same masker.
    let masker = Masker::new(b"driftwatch edit verification");
    let before = read_keys(body, format, &masker).map_err(EditError::InvalidInput)?;
    if let Some(op) = ops.iter().find(|op| holds_nul(op)) {
        return Err(unsupported(format, format!("`{}`: a NUL byte cannot be written to a text file", op.key())));
    }
    // `analyze` shows a secret-looking key segment as `<masked:…>`: that names no key of
    // the file, and writing it literally would add a second key shown the same way.
    if let Some(op) = ops.iter().find(|op| op.key().split(['.', '[']).any(|s| s.starts_with("<masked:"))) {
        return Err(unsupported(format, format!("`{}`: a masked key segment cannot be named", op.key())));
    }
    let mut text = body.to_owned();
    let mut expected: Vec<(String, Expect)> = Vec::new();
    for (i, op) in ops.iter().enumerate() {
        let typed;
        let op = match text_as_typed(format, &text, op, &masker) {
            Some(t) => {
                typed = t;
                &typed
            }
            None => op,
        };
        let applied = match format {
            Format::Env => env::apply(&text, op),
            Format::Ini => ini::apply(&text, op),
            Format::Toml => toml::apply(&text, op),
            Format::Json => json::apply(&text, op),
            Format::Yaml => yaml::apply(&text, op),
            Format::Sysctl => sysctl::apply(&text, op),
            Format::Keyword => keyword::apply(&text, op),
            Format::Systemd => systemd::apply(&text, op),
            Format::Text | Format::Unspecified | Format::Nginx => {
                unreachable!("rejected above")
            }
        };
        let applied = applied.map_err(|e| match e {
            // The input parsed, so a later op failing to parse is our own doing.
            EditError::InvalidInput(m) if i > 0 => {
                EditError::Verification(format!("an intermediate result does not parse ({m})"))
            }
            e => e,
        })?;
        text = applied.text;
        expected.retain(|(k, _)| k != op.key());
        expected.push((op.key().to_owned(), applied.expect));
    }
    verify(format, &text, &before, &expected, &masker)?;
    Ok(format!("{bom}{text}"))
}

fn holds_nul(op: &EditOp) -> bool {
    op.key().contains('\0')
        || match op {
            EditOp::Set { value: NewValue::Text(t), .. } => t.contains('\0'),
            EditOp::Set { value: NewValue::Typed(v), .. } => {
                matches!(&v.kind, Some(Kind::StringValue(s)) if s.contains('\0'))
            }
            EditOp::Remove { .. } => false,
        }
}

/// In .env and INI a line's text is its type (`30` reads as a number, `"30"` as a string),
/// so operator text that would read as another type than [`text_value`] gives it (the
/// type of the value it replaces: what the server checked its rules against) is written
/// as that typed value instead: `"30"` quoted over a string, `1.0` over a float.
fn text_as_typed(format: Format, text: &str, op: &EditOp, masker: &Masker) -> Option<EditOp> {
    let EditOp::Set { key, value: NewValue::Text(t) } = op else { return None };
    if !matches!(format, Format::Env | Format::Ini) {
        return None;
    }
    let current = read_keys(text, format, masker).ok()?.into_iter().find(|(k, _)| k == key).map(|(_, v)| v);
    // A masked value's type is not known here (and the server never sets one): the line decides.
    if current.as_ref().is_some_and(|v| matches!(v.kind, Some(Kind::Masked(_)))) {
        return None;
    }
    let want = text_value(current.as_ref(), t);
    let as_written = text_value(None, t);
    (want != as_written).then(|| EditOp::Set { key: key.clone(), value: NewValue::Typed(want) })
}

// ---------------------------------------------------------------------------------------
// Shared by the format modules

/// What the edited file must read back for one key.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Expect {
    /// This scalar; `raw` is the text as the parser will see it (.env/INI), which `analyze`
    /// fingerprints numbers under secret key names by.
    Set {
        scalar: Scalar,
        raw: Option<String>,
    },
    Gone,
}

/// The text after one op, and what it promises.
#[derive(Debug)]
pub(crate) struct Applied {
    pub text: String,
    pub expect: Expect,
}

/// The type of the scalar a [`NewValue::Text`] replaces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Existing {
    Null,
    Bool,
    Int,
    Float,
    Str,
}

pub(crate) fn format_label(format: Format) -> &'static str {
    driftwatch_proto::format_name(format as i32)
}

pub(crate) fn unsupported(format: Format, reason: impl Into<String>) -> EditError {
    EditError::Unsupported { format: format_label(format).to_owned(), reason: reason.into() }
}

/// The scalar a new value stands for: a typed value as it is, operator text typed after the
/// value it replaces (see [`NewValue::Text`]).
pub(crate) fn new_scalar(
    format: Format,
    key: &str,
    value: &NewValue,
    existing: Option<Existing>,
) -> Result<Scalar, EditError> {
    match value {
        NewValue::Text(text) => Ok(text_scalar(existing, text)),
        NewValue::Typed(v) => match &v.kind {
            None | Some(Kind::NullValue(_)) => Ok(Scalar::Null),
            Some(Kind::BoolValue(b)) => Ok(Scalar::Bool(*b)),
            Some(Kind::IntValue(i)) => Ok(Scalar::Int(*i)),
            Some(Kind::FloatValue(f)) if f.is_finite() => Ok(Scalar::Float(*f)),
            // `analyze` reports non-finite floats as the strings `inf`/`nan`: one never comes from it.
            Some(Kind::FloatValue(_)) => {
                Err(unsupported(format, format!("`{key}`: a non-finite float cannot be written")))
            }
            Some(Kind::StringValue(s)) => Ok(Scalar::Str(s.clone())),
            Some(Kind::Masked(_)) => Err(EditError::Masked(key.to_owned())),
        },
    }
}

/// A new value as the text of one line, for the formats without typed syntax (keyword
/// files, sysctl, systemd units; `form` names theirs in the null refusal), and whether
/// it is a string that would read back as another type (`"8"` given as a string): the
/// caller quotes it where the format can, and refuses it where not.
pub(crate) fn line_text(format: Format, key: &str, value: &NewValue, form: &str) -> Result<(String, bool), EditError> {
    Ok(match new_scalar(format, key, value, None)? {
        Scalar::Null => return Err(unsupported(format, format!("`{key}`: null has no {form} form"))),
        Scalar::Bool(b) => (b.to_string(), false),
        Scalar::Int(i) => (i.to_string(), false),
        Scalar::Float(f) => (float_text(f), false),
        Scalar::Str(s) => {
            let other_type = infer_text(&s) != Scalar::Str(s.clone());
            (s, other_type)
        }
    })
}

fn text_scalar(existing: Option<Existing>, text: &str) -> Scalar {
    match (existing, infer_text(text)) {
        (Some(Existing::Str), _) => Scalar::Str(text.to_owned()),
        (Some(Existing::Float), Scalar::Int(i)) => Scalar::Float(i as f64),
        (_, inferred) => inferred,
    }
}

/// Shortest round-tripping decimal form of a finite float, always with a `.` in the mantissa
/// (`30.0`, `1.0e20`) so that every format, and .env/INI type inference, reads a float.
pub(crate) fn float_text(f: f64) -> String {
    let s = format!("{f:?}");
    match s.find(['e', 'E']) {
        Some(i) if !s[..i].contains('.') => format!("{}.0{}", &s[..i], &s[i..]),
        _ => s,
    }
}

/// How a text value is quoted in .env / INI / TOML / YAML.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Quote {
    None,
    Single,
    Double,
}

/// The line ending a file uses (for lines we add).
pub(crate) fn line_ending(text: &str) -> &'static str {
    if text.contains("\r\n") { "\r\n" } else { "\n" }
}

/// Offset of the start of the line holding `pos`.
pub(crate) fn line_start(text: &str, pos: usize) -> usize {
    text[..pos].rfind('\n').map(|i| i + 1).unwrap_or(0)
}

/// Offset just past the line terminator of the line holding `pos` (or the end of the text).
pub(crate) fn line_end(text: &str, pos: usize) -> usize {
    text[pos..].find('\n').map(|i| pos + i + 1).unwrap_or(text.len())
}

/// `text` with `range` replaced by `with`.
pub(crate) fn splice(text: &str, range: std::ops::Range<usize>, with: &str) -> String {
    let mut out = String::with_capacity(text.len() + with.len());
    out.push_str(&text[..range.start]);
    out.push_str(with);
    out.push_str(&text[range.end..]);
    out
}

/// `text` with every range removed (ranges must not overlap).
pub(crate) fn remove_ranges(text: &str, mut ranges: Vec<std::ops::Range<usize>>) -> String {
    ranges.sort_by_key(|r| r.start);
    let mut out = String::with_capacity(text.len());
    let mut at = 0;
    for r in ranges {
        if r.start < at {
            continue;
        }
        out.push_str(&text[at..r.start]);
        at = r.end;
    }
    out.push_str(&text[at..]);
    out
}

/// A key path split the way `analyze` joins it: `a.b[2].c` → `a`, `b`, `[2]`, `c`. Only used
/// for keys the file does not have yet, where there is no written form to match.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Seg {
    Key(String),
    Index(usize),
}

/// Append one segment to a path exactly as the flattener does.
pub(crate) fn push_seg(path: &mut String, seg: &Seg) {
    match seg {
        Seg::Key(k) => {
            if !path.is_empty() {
                path.push('.');
            }
            path.push_str(k);
        }
        Seg::Index(i) => {
            path.push('[');
            path.push_str(&i.to_string());
            path.push(']');
        }
    }
}

pub(crate) fn child_path(path: &str, seg: &Seg) -> String {
    let mut p = path.to_owned();
    push_seg(&mut p, seg);
    p
}

/// For a key the file does not have: the deepest existing container whose path is a prefix of
/// `key` (at a segment boundary), and the rest of `key` after it, split at dots. `containers`
/// holds the paths of every container (the root is `""`).
pub(crate) fn split_new_key<'c, C>(
    format: Format,
    key: &str,
    containers: &'c [(String, C)],
) -> Result<(&'c C, Vec<String>), EditError> {
    let mut best: Option<(&'c C, &str)> = None;
    for (path, c) in containers {
        let rest =
            if path.is_empty() { Some(key) } else { key.strip_prefix(path.as_str()).and_then(|r| r.strip_prefix('.')) };
        if let Some(rest) = rest
            && !rest.is_empty()
            && best.is_none_or(|(_, r)| rest.len() < r.len())
        {
            best = Some((c, rest));
        }
    }
    let Some((container, rest)) = best else {
        return Err(unsupported(format, format!("`{key}`: no table or object to add it to")));
    };
    if rest.contains('[') || rest.contains(']') {
        return Err(unsupported(format, format!("`{key}`: new list items cannot be created")));
    }
    let segs: Vec<String> = rest.split('.').map(str::to_owned).collect();
    if segs.iter().any(String::is_empty) {
        return Err(unsupported(format, format!("`{key}`: a key segment is empty")));
    }
    Ok((container, segs))
}

// ---------------------------------------------------------------------------------------
// Verification

/// The keys of a file as `analyze` reports them, or why it does not parse.
fn read_keys(text: &str, format: Format, masker: &Masker) -> Result<Vec<(String, Value)>, String> {
    let limits = Limits { max_file_bytes: u64::MAX, max_keys: usize::MAX, max_depth: usize::MAX };
    let analysis = analyze(text.as_bytes(), format, masker, &limits);
    match analysis.status {
        FileStatus::Ok => Ok(analysis.keys.into_iter().map(|kv| (kv.key, kv.value.unwrap_or_default())).collect()),
        FileStatus::Binary => Err("binary content (NUL byte)".to_owned()),
        _ => Err(match analysis.error {
            Some(e) => format!("{} (line {}, column {})", e.message, e.line, e.column),
            None => "unreadable".to_owned(),
        }),
    }
}

fn verify(
    format: Format,
    text: &str,
    before: &[(String, Value)],
    expected: &[(String, Expect)],
    masker: &Masker,
) -> Result<(), EditError> {
    let fail = |m: String| EditError::Verification(m);
    let after = read_keys(text, format, masker).map_err(|m| fail(format!("the edited text does not parse: {m}")))?;
    let after: HashMap<&str, &Value> = after.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let before_map: HashMap<&str, &Value> = before.iter().map(|(k, v)| (k.as_str(), v)).collect();
    // Keys as `analyze` shows them (a secret-looking segment is masked). A key the file
    // already has is named as shown: a structured format's member name may hold dots, and
    // masking its dot-separated parts one by one would name a key that does not exist.
    let shown_as =
        |k: &str| if before_map.contains_key(k) { k.to_owned() } else { safe_key_path(masker, k.to_owned()) };
    let touched: HashMap<String, (&str, &Expect)> =
        expected.iter().map(|(k, e)| (shown_as(k), (k.as_str(), e))).collect();
    for (shown, (key, expect)) in &touched {
        match expect {
            Expect::Set { scalar, raw } => {
                let want = mask_scalar(masker, shown, scalar.clone(), raw.as_deref());
                match after.get(shown.as_str()) {
                    None => return Err(fail(format!("`{key}` is missing after the edit"))),
                    Some(got) if !same_value(got, &want) => {
                        return Err(fail(format!(
                            "`{key}` reads back as a different value ({} instead of {})",
                            got.type_name(),
                            want.type_name()
                        )));
                    }
                    Some(_) => {}
                }
            }
            Expect::Gone => {
                if after.contains_key(shown.as_str()) {
                    return Err(fail(format!("`{key}` is still there after its removal")));
                }
            }
        }
    }
    for (key, value) in before {
        if touched.contains_key(key) {
            continue;
        }
        match after.get(key.as_str()) {
            None => return Err(fail(format!("`{key}` disappeared although no op named it"))),
            Some(got) if !same_value(got, value) => {
                return Err(fail(format!("`{key}` changed although no op named it")));
            }
            Some(_) => {}
        }
    }
    if let Some(extra) = after.keys().find(|k| !before_map.contains_key(*k) && !touched.contains_key(**k)) {
        return Err(fail(format!("`{extra}` appeared although no op named it")));
    }
    Ok(())
}

/// Equal values; floats within a few units of rounding (JSON float parsing is not always
/// correctly rounded).
fn same_value(a: &Value, b: &Value) -> bool {
    match (&a.kind, &b.kind) {
        (Some(Kind::FloatValue(x)), Some(Kind::FloatValue(y))) => {
            x == y || (x - y).abs() <= 4.0 * f64::EPSILON * x.abs().max(y.abs())
        }
        (None, Some(Kind::NullValue(_))) | (Some(Kind::NullValue(_)), None) => true,
        _ => a == b,
    }
}

/// The value operator text becomes when it replaces `existing` (None: a new key), typed
/// exactly as [`edit`] writes it: what a server shows, or checks against its rules,
/// before the agent has written anything.
pub fn text_value(existing: Option<&Value>, text: &str) -> Value {
    let existing = existing.map(|v| match &v.kind {
        None | Some(Kind::NullValue(_)) => Existing::Null,
        Some(Kind::BoolValue(_)) => Existing::Bool,
        Some(Kind::IntValue(_)) => Existing::Int,
        Some(Kind::FloatValue(_)) => Existing::Float,
        Some(Kind::StringValue(_) | Kind::Masked(_)) => Existing::Str,
    });
    match text_scalar(existing, text) {
        Scalar::Null => Value::null(),
        Scalar::Bool(b) => Value::bool(b),
        Scalar::Int(i) => Value::int(i),
        Scalar::Float(f) => Value::float(f),
        Scalar::Str(s) => Value::string(s),
    }
}

/// Builders the per-format test modules share.
#[cfg(test)]
pub(crate) mod testkit {
    use super::{EditError, EditOp, NewValue, edit};
    use crate::{Format, Value};

    pub fn set(key: &str, text: &str) -> EditOp {
        EditOp::Set { key: key.into(), value: NewValue::Text(text.into()) }
    }
    pub fn typed(key: &str, v: Value) -> EditOp {
        EditOp::Set { key: key.into(), value: NewValue::Typed(v) }
    }
    pub fn remove(key: &str) -> EditOp {
        EditOp::Remove { key: key.into() }
    }
    pub fn ed(format: Format, text: &str, ops: &[EditOp]) -> String {
        edit(format, text, ops).unwrap()
    }
    pub fn ed_err(format: Format, text: &str, ops: &[EditOp]) -> EditError {
        edit(format, text, ops).unwrap_err()
    }
}
