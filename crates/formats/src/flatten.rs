//! Flattening parsed documents into typed key paths, with secrets masked on the way out.
//!
//! Key paths: nested map keys joined with `.` (`rate_limiting.requests_per_second`), list
//! items as `[i]` (`monitoring.alert_channels[0]`, `a.b[2].c`, a top-level list gives
//! `[0].x`). Keys are not escaped: a key that itself contains `.` or `[` reads like a nested
//! path.
//!
//! Choices (documented for consumers):
//! - **Empty maps and lists emit nothing** — `features: {}` and `hosts: []` leave no key,
//!   exactly like an absent key. (A change from `[]` to absent is still seen by the content
//!   hash.)
//! - **Unique keys, last value wins, first position kept.** A key path that occurs twice
//!   (duplicate keys in any format, or `{"a.b": 1, "a": {"b": 2}}`) is reported once, at the
//!   place it first appeared, with the value seen last.
//! - **Root scalars** (a JSON file holding just `"x"`) are reported under the empty key
//!   `""`; a root null (an empty YAML file, JSON `null`) gives no keys.
//! - **Numbers**: integers that fit i64 are ints; integers beyond i64 from JSON/YAML/TOML
//!   become floats (the parser already calls them numbers, so numeric rules keep working);
//!   non-finite floats (`.inf`, `nan`) become the strings `inf`, `-inf`, `nan` so equality
//!   and JSON encoding stay sane.
//! - **YAML**: tags are ignored (`!Ref x` is the string `x`); non-string keys use their plain
//!   text form (`1`, `true`, `null`, `[a, b]`); merge keys (`<<: *defaults`) are applied in
//!   place: the merged keys appear where `<<` stood, explicit keys win, earlier merge sources
//!   win over later ones. A stream of several non-empty documents (`---`) prefixes each
//!   document's keys with its position (`[0].a`, `[2].b`); a single document, even between
//!   `---` markers, gets no prefix.

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::fmt;

use serde::de::{self, Deserialize, Deserializer, EnumAccess, MapAccess, SeqAccess, VariantAccess, Visitor};

use crate::secrets::{
    REASON_KEY_NAME, has_token_shape, key_name_match, looks_random, secret_reason, url_has_credentials,
};
use crate::{KeyValue, Masker, Value};

/// One typed leaf value, before masking.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Scalar {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
}

/// Mask a scalar found under `key`.
///
/// - null and bool are never secret;
/// - ints and floats are masked only by a (strong) key-name match — `PASSWORD=1234` parses as
///   an int — and their fingerprint is over `raw` (the text as written) when known, else
///   their canonical decimal form;
/// - strings go through every rule of [`secret_reason`], fingerprinted over the string.
pub(crate) fn mask_scalar(masker: &Masker, key: &str, scalar: Scalar, raw: Option<&str>) -> Value {
    match scalar {
        Scalar::Null => Value::null(),
        Scalar::Bool(b) => Value::bool(b),
        Scalar::Int(i) => mask_number(masker, key, raw, || i.to_string()).unwrap_or_else(|| Value::int(i)),
        Scalar::Float(f) => mask_number(masker, key, raw, || f.to_string()).unwrap_or_else(|| Value::float(f)),
        Scalar::Str(s) => match secret_reason(key, &s) {
            Some(reason) => Value::masked_by(masker.key_id(), masker.fingerprint(s.as_bytes()), reason),
            None => Value::string(s),
        },
    }
}

fn mask_number(masker: &Masker, key: &str, raw: Option<&str>, canonical: impl FnOnce() -> String) -> Option<Value> {
    match key_name_match(key) {
        Some(m) if !m.weak => {
            let text = raw.map(str::to_owned).unwrap_or_else(canonical);
            Some(Value::masked_by(masker.key_id(), masker.fingerprint(text.as_bytes()), REASON_KEY_NAME))
        }
        _ => None,
    }
}

/// Collects flattened keys: masks, de-duplicates and enforces `max_keys`.
pub(crate) struct Sink<'m> {
    masker: &'m Masker,
    max_keys: usize,
    keys: Vec<KeyValue>,
    index: HashMap<String, usize>,
    /// The first limit that was hit (too many keys, too deep); keys stay partial.
    limit_error: Option<String>,
    full: bool,
}

impl<'m> Sink<'m> {
    pub(crate) fn new(masker: &'m Masker, max_keys: usize) -> Self {
        Self { masker, max_keys, keys: Vec::new(), index: HashMap::new(), limit_error: None, full: false }
    }

    /// Add one key; a repeated key keeps its first position and takes the new value.
    pub(crate) fn push(&mut self, key: String, scalar: Scalar, raw: Option<&str>) {
        if let Some(&i) = self.index.get(&key) {
            self.keys[i].value = Some(mask_scalar(self.masker, &key, scalar, raw));
            return;
        }
        if self.keys.len() >= self.max_keys {
            self.full = true;
            self.set_limit_error(format!("more than {n} keys; only the first {n} kept", n = self.max_keys));
            return;
        }
        let value = mask_scalar(self.masker, &key, scalar, raw);
        self.index.insert(key.clone(), self.keys.len());
        self.keys.push(KeyValue { key, value: Some(value) });
    }

    /// A subtree was skipped for being nested deeper than `max_depth`.
    pub(crate) fn too_deep(&mut self, max_depth: usize) {
        self.set_limit_error(format!("nesting deeper than {max_depth}"));
    }

    fn set_limit_error(&mut self, message: String) {
        if self.limit_error.is_none() {
            self.limit_error = Some(message);
        }
    }

    pub(crate) fn masker(&self) -> &'m Masker {
        self.masker
    }

    /// No more keys can be added: walkers may stop early.
    pub(crate) fn is_full(&self) -> bool {
        self.full
    }

    pub(crate) fn finish(self) -> (Vec<KeyValue>, Option<String>) {
        (self.keys, self.limit_error)
    }
}

/// Map keys can hold secrets too (`api_keys: {"sk-...": "client-a"}`, webhook URLs used as
/// keys). A key segment that looks like a token, a URL with credentials or a random string
/// is replaced by `<masked:` + the first 16 hex of its fingerprint + `>`: stable across the
/// hosts of a fleet, so drift detection still lines up.
pub(crate) fn safe_key_segment<'k>(masker: &Masker, segment: &'k str) -> Cow<'k, str> {
    if url_has_credentials(segment) || has_token_shape(segment) || looks_random(segment) {
        let fp = masker.fingerprint(segment.as_bytes());
        Cow::Owned(format!("<masked:{}>", driftwatch_proto::short_fingerprint(&fp)))
    } else {
        Cow::Borrowed(segment)
    }
}

/// [`safe_key_segment`] over each `.`-separated segment of a text-format key.
pub(crate) fn safe_key_path(masker: &Masker, key: String) -> String {
    if key.split('.').all(|seg| matches!(safe_key_segment(masker, seg), Cow::Borrowed(_))) {
        return key;
    }
    key.split('.').map(|seg| safe_key_segment(masker, seg)).collect::<Vec<_>>().join(".")
}

// ---------------------------------------------------------------------------------------
// Type inference for text formats (.env, INI)

/// Infer the type of an *unquoted* text value:
/// - `true` / `false` (any case) → bool;
/// - `-?[0-9]+` without a leading zero → int (`0` and `-0` are ints; `0755`, `007` stay
///   strings: modes and zero-padded ids lose meaning as numbers); beyond i64 → string
///   (exact digits kept: account numbers, ids);
/// - `-?[0-9]+.[0-9]+` with an optional exponent (`1.2`, `0.95`, `1.5e3`) → float;
/// - anything else (including `1.2.3`, `10.0.0.1`, `1e5`, `+5`, `inf`, `yes`) → string.
pub(crate) fn infer_text(raw: &str) -> Scalar {
    if raw.eq_ignore_ascii_case("true") {
        return Scalar::Bool(true);
    }
    if raw.eq_ignore_ascii_case("false") {
        return Scalar::Bool(false);
    }
    let unsigned = raw.strip_prefix('-').unwrap_or(raw);
    if is_decimal_digits(unsigned) {
        return match raw.parse::<i64>() {
            Ok(i) => Scalar::Int(i),
            Err(_) => Scalar::Str(raw.to_owned()),
        };
    }
    if is_decimal_float(unsigned)
        && let Ok(f) = raw.parse::<f64>()
        && f.is_finite()
    {
        return Scalar::Float(f);
    }
    Scalar::Str(raw.to_owned())
}

/// `[0-9]+` without a leading zero (except `0` itself).
fn is_decimal_digits(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) && (s == "0" || !s.starts_with('0'))
}

/// `int.digits` with an optional `e[+-]digits`.
fn is_decimal_float(s: &str) -> bool {
    let (mantissa, exponent) = match s.find(['e', 'E']) {
        Some(i) => (&s[..i], Some(&s[i + 1..])),
        None => (s, None),
    };
    let Some((int, frac)) = mantissa.split_once('.') else {
        return false;
    };
    let int_ok = is_decimal_digits(int);
    let frac_ok = !frac.is_empty() && frac.bytes().all(|b| b.is_ascii_digit());
    let exp_ok = match exponent {
        None => true,
        Some(e) => {
            let digits = e.strip_prefix(['+', '-']).unwrap_or(e);
            !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit())
        }
    };
    int_ok && frac_ok && exp_ok
}

// ---------------------------------------------------------------------------------------
// Structured documents (JSON, YAML, TOML)

/// A parsed document, in file order. Deserialized with serde from any of the structured
/// formats; keys are nodes too because YAML allows any value as a key.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Node {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    Seq(Vec<Node>),
    Map(Vec<(Node, Node)>),
}

/// How the `toml` crate hands a datetime to `deserialize_any`: a one-entry map with this key
/// and the datetime's text as value.
const TOML_DATETIME_FIELD: &str = "$__toml_private_datetime";

impl<'de> Deserialize<'de> for Node {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(NodeVisitor)
    }
}

struct NodeVisitor;

impl<'de> Visitor<'de> for NodeVisitor {
    type Value = Node;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any value")
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Node, E> {
        Ok(Node::Bool(v))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Node, E> {
        Ok(Node::Int(v))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Node, E> {
        Ok(i64::try_from(v).map(Node::Int).unwrap_or(Node::Float(v as f64)))
    }
    fn visit_i128<E: de::Error>(self, v: i128) -> Result<Node, E> {
        Ok(i64::try_from(v).map(Node::Int).unwrap_or(Node::Float(v as f64)))
    }
    fn visit_u128<E: de::Error>(self, v: u128) -> Result<Node, E> {
        Ok(i64::try_from(v).map(Node::Int).unwrap_or(Node::Float(v as f64)))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Node, E> {
        Ok(Node::Float(v))
    }
    fn visit_char<E: de::Error>(self, v: char) -> Result<Node, E> {
        Ok(Node::Str(v.to_string()))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Node, E> {
        Ok(Node::Str(v.to_owned()))
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<Node, E> {
        Ok(Node::Str(v))
    }
    fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<Node, E> {
        Ok(Node::Str(String::from_utf8_lossy(v).into_owned()))
    }
    fn visit_none<E: de::Error>(self) -> Result<Node, E> {
        Ok(Node::Null)
    }
    fn visit_unit<E: de::Error>(self) -> Result<Node, E> {
        Ok(Node::Null)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Node, D::Error> {
        Node::deserialize(d)
    }
    fn visit_newtype_struct<D: Deserializer<'de>>(self, d: D) -> Result<Node, D::Error> {
        Node::deserialize(d)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Node, A::Error> {
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(1024));
        while let Some(item) = seq.next_element::<Node>()? {
            items.push(item);
        }
        Ok(Node::Seq(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Node, A::Error> {
        let mut entries = Vec::with_capacity(map.size_hint().unwrap_or(0).min(1024));
        while let Some(key) = map.next_key::<Node>()? {
            if entries.is_empty() && matches!(&key, Node::Str(k) if k == TOML_DATETIME_FIELD) {
                // A TOML date/time: keep its text.
                let text = map.next_value::<Node>()?;
                return Ok(text);
            }
            let value = map.next_value::<Node>()?;
            entries.push((key, value));
        }
        Ok(Node::Map(entries))
    }
    /// YAML tagged values (`!Ref name`) arrive as enums: ignore the tag, keep the value.
    fn visit_enum<A: EnumAccess<'de>>(self, data: A) -> Result<Node, A::Error> {
        let (_tag, variant) = data.variant::<de::IgnoredAny>()?;
        variant.newtype_variant::<Node>()
    }
}

/// Text form of a node used as a map key (YAML allows any value as a key).
fn key_text(node: &Node) -> String {
    match node {
        Node::Null => "null".to_owned(),
        Node::Bool(b) => b.to_string(),
        Node::Int(i) => i.to_string(),
        Node::Float(f) => float_text(*f),
        Node::Str(s) => s.clone(),
        Node::Seq(items) => format!("[{}]", items.iter().map(key_text).collect::<Vec<_>>().join(", ")),
        Node::Map(entries) => format!(
            "{{{}}}",
            entries.iter().map(|(k, v)| format!("{}: {}", key_text(k), key_text(v))).collect::<Vec<_>>().join(", ")
        ),
    }
}

fn float_text(f: f64) -> String {
    if f.is_nan() {
        "nan".to_owned()
    } else if f.is_infinite() {
        if f > 0.0 { "inf".to_owned() } else { "-inf".to_owned() }
    } else {
        f.to_string()
    }
}

fn leaf(node: &Node) -> Scalar {
    match node {
        Node::Null => Scalar::Null,
        Node::Bool(b) => Scalar::Bool(*b),
        Node::Int(i) => Scalar::Int(*i),
        Node::Float(f) if f.is_finite() => Scalar::Float(*f),
        Node::Float(f) => Scalar::Str(float_text(*f)),
        Node::Str(s) => Scalar::Str(s.clone()),
        // Containers are walked, never turned into leaves; a harmless value rather than a panic.
        Node::Seq(_) | Node::Map(_) => Scalar::Null,
    }
}

/// Walks a [`Node`] tree into a [`Sink`].
pub(crate) struct Walker<'a, 'm> {
    sink: &'a mut Sink<'m>,
    max_depth: usize,
    /// Apply YAML merge keys (`<<`).
    yaml: bool,
    path: String,
}

impl<'a, 'm> Walker<'a, 'm> {
    pub(crate) fn new(sink: &'a mut Sink<'m>, max_depth: usize, yaml: bool) -> Self {
        Self { sink, max_depth, yaml, path: String::new() }
    }

    /// Walk a whole document. A root null gives nothing; a root scalar gives key `""`.
    pub(crate) fn document(&mut self, root: &Node) {
        if !matches!(root, Node::Null) {
            self.walk(root, 0);
        }
    }

    /// Walk one of several YAML documents in a stream: its keys get the prefix `[index]`.
    pub(crate) fn document_at(&mut self, index: usize, root: &Node) {
        if matches!(root, Node::Null) {
            return;
        }
        if self.max_depth == 0 {
            self.sink.too_deep(self.max_depth);
            return;
        }
        self.path.clear();
        self.path.push_str(&format!("[{index}]"));
        self.walk(root, 1);
        self.path.clear();
    }

    /// `depth` = number of containers already entered above `node`.
    fn walk(&mut self, node: &Node, depth: usize) {
        if self.sink.is_full() {
            return;
        }
        match node {
            Node::Map(entries) => {
                if entries.is_empty() {
                    return;
                }
                if depth >= self.max_depth {
                    self.sink.too_deep(self.max_depth);
                    return;
                }
                for (key, value) in self.map_entries(entries) {
                    let len = self.path.len();
                    if !self.path.is_empty() {
                        self.path.push('.');
                    }
                    self.path.push_str(&safe_key_segment(self.sink.masker(), &key));
                    self.walk(value, depth + 1);
                    self.path.truncate(len);
                    if self.sink.is_full() {
                        return;
                    }
                }
            }
            Node::Seq(items) => {
                if items.is_empty() {
                    return;
                }
                if depth >= self.max_depth {
                    self.sink.too_deep(self.max_depth);
                    return;
                }
                for (i, value) in items.iter().enumerate() {
                    let len = self.path.len();
                    self.path.push_str(&format!("[{i}]"));
                    self.walk(value, depth + 1);
                    self.path.truncate(len);
                    if self.sink.is_full() {
                        return;
                    }
                }
            }
            scalar => self.sink.push(self.path.clone(), leaf(scalar), None),
        }
    }

    /// A map's entries as (key text, value), with YAML merge keys applied in place.
    fn map_entries<'n>(&self, entries: &'n [(Node, Node)]) -> Vec<(String, &'n Node)> {
        if !self.yaml || !entries.iter().any(|(k, v)| is_merge_key(k) && merge_sources(v).is_some()) {
            return entries.iter().map(|(k, v)| (key_text(k), v)).collect();
        }
        let explicit: HashSet<String> = entries
            .iter()
            .filter(|(k, v)| !(is_merge_key(k) && merge_sources(v).is_some()))
            .map(|(k, _)| key_text(k))
            .collect();
        let mut seen = explicit;
        let mut out = Vec::with_capacity(entries.len());
        for (k, v) in entries {
            match (is_merge_key(k), merge_sources(v)) {
                (true, Some(sources)) => {
                    for source in sources {
                        for (mk, mv) in self.map_entries(source) {
                            if seen.insert(mk.clone()) {
                                out.push((mk, mv));
                            }
                        }
                    }
                }
                _ => out.push((key_text(k), v)),
            }
        }
        out
    }
}

fn is_merge_key(node: &Node) -> bool {
    matches!(node, Node::Str(s) if s == "<<")
}

/// The maps a merge key's value pulls in: one map, or a list of maps.
fn merge_sources(value: &Node) -> Option<Vec<&[(Node, Node)]>> {
    match value {
        Node::Map(entries) => Some(vec![entries.as_slice()]),
        Node::Seq(items) => items
            .iter()
            .map(|item| match item {
                Node::Map(entries) => Some(entries.as_slice()),
                _ => None,
            })
            .collect(),
        _ => None,
    }
}
