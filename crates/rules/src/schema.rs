//! `target.schema`: JSON Schema validation of a file, from its flattened keys.
//!
//! The server holds a file as flattened keys only (`a.b`, `list[0].c`; see
//! driftwatch-formats' `flatten` module), so [`unflatten`] rebuilds the document they
//! describe and the schema validates that. Secrets stay masked: a masked value becomes the
//! string `masked:<16 hex>`, which is all an error message can quote.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use driftwatch_proto::v1::Value;
use driftwatch_proto::v1::value::Kind;

/// At most this many errors are reported per file (a wrong root type can produce many).
const MAX_ERRORS: usize = 50;
/// Error messages can quote whole objects (`oneOf`); keep each one readable.
const MAX_MESSAGE_CHARS: usize = 300;

/// A loaded, compiled JSON Schema (draft 4 to 2020-12, from `$schema`; 2020-12 without it).
pub(crate) struct Schema {
    pub path: PathBuf,
    validator: jsonschema::Validator,
}

impl std::fmt::Debug for Schema {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Schema").field("path", &self.path).finish_non_exhaustive()
    }
}

impl Schema {
    /// Read and compile the schema at `path`. Only references inside the document resolve:
    /// the crate is built without file and HTTP retrieval, so nothing is fetched.
    pub(crate) fn load(path: &Path) -> Result<Schema, String> {
        let shown = path.display();
        let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {shown}: {e}"))?;
        let json: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| format!("{shown} is not valid JSON: {e}"))?;
        let validator = jsonschema::validator_for(&json).map_err(|e| {
            let at = e.instance_path().as_str();
            let at = if at.is_empty() { String::new() } else { format!(" at {at}") };
            format!("{shown} is not a usable JSON Schema{at}: {e}")
        })?;
        Ok(Schema { path: path.to_path_buf(), validator })
    }

    /// What is wrong with `doc`, as `"/json/pointer: message"` (`/` for the root); empty
    /// when it is valid.
    pub(crate) fn errors(&self, doc: &serde_json::Value) -> Vec<String> {
        self.validator
            .iter_errors(doc)
            .take(MAX_ERRORS)
            .map(|e| {
                let at = e.instance_path().as_str();
                let mut msg = format!("{}: {e}", if at.is_empty() { "/" } else { at });
                if let Some((cut, _)) = msg.char_indices().nth(MAX_MESSAGE_CHARS) {
                    msg.truncate(cut);
                    msg.push('…');
                }
                msg
            })
            .collect()
    }
}

/// One step of a flattened key path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Seg<'k> {
    Name(&'k str),
    Index(usize),
}

/// List indices above this are read as names: a forged key must not allocate a huge list.
const MAX_INDEX: usize = 1_000_000;

/// `[<digits>]` at the start of `s`: the index and the rest.
fn index_prefix(s: &str) -> Option<(usize, &str)> {
    let rest = s.strip_prefix('[')?;
    let end = rest.find(']')?;
    let digits = &rest[..end];
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let i: usize = digits.parse().ok().filter(|i| *i <= MAX_INDEX)?;
    Some((i, &rest[end + 1..]))
}

/// Split a flattened key: names joined by `.`, list items as `[i]`. Keys are not escaped
/// by the flattener, so a name holding `.` (or `[<digits>]`) reads as nested here too.
fn segments(key: &str) -> Vec<Seg<'_>> {
    let mut out = Vec::new();
    let mut rest = key;
    let mut first = true;
    while !rest.is_empty() || first {
        if let Some((i, r)) = index_prefix(rest) {
            out.push(Seg::Index(i));
            rest = r;
        } else {
            if !first {
                // After a name or an index, a name needs its `.`.
                rest = rest.strip_prefix('.').unwrap_or(rest);
            }
            // A name runs to the next `.` or the next `[<digits>]`.
            let mut end = rest.len();
            for (i, c) in rest.char_indices() {
                if c == '.' || (c == '[' && index_prefix(&rest[i..]).is_some()) {
                    end = i;
                    break;
                }
            }
            out.push(Seg::Name(&rest[..end]));
            rest = &rest[end..];
        }
        first = false;
    }
    out
}

/// The document being rebuilt; lists keep their indices until the end (gaps become null).
enum Node {
    Leaf(serde_json::Value),
    Map(BTreeMap<String, Node>),
    List(BTreeMap<usize, Node>),
}

impl Node {
    fn empty_for(seg: Seg<'_>) -> Node {
        match seg {
            Seg::Name(_) => Node::Map(BTreeMap::new()),
            Seg::Index(_) => Node::List(BTreeMap::new()),
        }
    }

    /// Put `leaf` at `path` below this node; false when the path contradicts what is
    /// already there (a value where a container is needed, a list where a map is).
    fn insert(&mut self, path: &[Seg<'_>], leaf: serde_json::Value) -> bool {
        let Some((seg, rest)) = path.split_first() else {
            return false;
        };
        let slot = match (self, *seg) {
            (Node::Map(m), Seg::Name(n)) => m.entry(n.to_string()),
            (Node::List(l), Seg::Index(i)) => return Self::insert_in(l.entry(i), rest, leaf),
            _ => return false,
        };
        Self::insert_in(slot, rest, leaf)
    }

    fn insert_in<K: Ord>(
        slot: std::collections::btree_map::Entry<'_, K, Node>,
        rest: &[Seg<'_>],
        leaf: serde_json::Value,
    ) -> bool {
        use std::collections::btree_map::Entry;
        match (slot, rest.first()) {
            (Entry::Vacant(v), None) => {
                v.insert(Node::Leaf(leaf));
                true
            }
            (Entry::Vacant(v), Some(next)) => v.insert(Node::empty_for(*next)).insert(rest, leaf),
            (Entry::Occupied(_), None) => false,
            (Entry::Occupied(o), Some(_)) => o.into_mut().insert(rest, leaf),
        }
    }

    fn into_json(self) -> serde_json::Value {
        match self {
            Node::Leaf(v) => v,
            Node::Map(m) => serde_json::Value::Object(m.into_iter().map(|(k, v)| (k, v.into_json())).collect()),
            Node::List(l) => {
                let len = l.keys().next_back().map(|i| i + 1).unwrap_or(0);
                let mut items = vec![serde_json::Value::Null; len];
                for (i, v) in l {
                    items[i] = v.into_json();
                }
                serde_json::Value::Array(items)
            }
        }
    }
}

/// A flattened value as JSON: masked values become `masked:<16 hex>` (their display form).
fn json_of(v: &Value) -> serde_json::Value {
    match &v.kind {
        None | Some(Kind::NullValue(_)) => serde_json::Value::Null,
        Some(Kind::BoolValue(b)) => serde_json::Value::Bool(*b),
        Some(Kind::IntValue(i)) => serde_json::Value::from(*i),
        Some(Kind::FloatValue(f)) => {
            serde_json::Number::from_f64(*f).map(serde_json::Value::Number).unwrap_or_default()
        }
        Some(Kind::StringValue(s)) => serde_json::Value::String(s.clone()),
        Some(Kind::Masked(_)) => serde_json::Value::String(v.display()),
    }
}

/// Rebuild the document that flattened into `keys` (`a.b`, `a.list[0]`, `[0].x`, and `""`
/// for a root scalar).
///
/// What flattening loses stays lost: empty maps and lists are absent, a list item that was
/// an empty container is a gap (null here), and a key name holding `.` reads as nested. Keys
/// that contradict each other (a value and a nested key under the same name, which only
/// such names produce) keep the first in key order. No keys give an empty object.
pub fn unflatten<'a, K: AsRef<str>>(keys: impl IntoIterator<Item = (K, &'a Value)>) -> serde_json::Value {
    let mut root: Option<Node> = None;
    for (key, value) in keys {
        let key = key.as_ref();
        let leaf = json_of(value);
        if key.is_empty() {
            root.get_or_insert(Node::Leaf(leaf));
            continue;
        }
        let path = segments(key);
        let node = root.get_or_insert_with(|| Node::empty_for(path[0]));
        node.insert(&path, leaf);
    }
    root.map(Node::into_json).unwrap_or_else(|| serde_json::Value::Object(serde_json::Map::new()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_segments() {
        use Seg::{Index as I, Name as N};
        assert_eq!(segments("a"), vec![N("a")]);
        assert_eq!(segments("a.b"), vec![N("a"), N("b")]);
        assert_eq!(segments("a[0].c"), vec![N("a"), I(0), N("c")]);
        assert_eq!(segments("a[10][2]"), vec![N("a"), I(10), I(2)]);
        assert_eq!(segments("[0].x"), vec![I(0), N("x")]);
        assert_eq!(segments("[3]"), vec![I(3)]);
        // Not an index: literal text of the name.
        assert_eq!(segments("a[x].b"), vec![N("a[x]"), N("b")]);
        assert_eq!(segments("a[].b[-1]"), vec![N("a[]"), N("b[-1]")]);
        assert_eq!(segments("<masked:0123abcd>.x"), vec![N("<masked:0123abcd>"), N("x")]);
        assert_eq!(segments("a[99999999999]"), vec![N("a[99999999999]")]);
        assert_eq!(segments("a..b"), vec![N("a"), N(""), N("b")]);
        assert_eq!(segments("a."), vec![N("a"), N("")]);
    }

    fn kv(pairs: &[(&str, Value)]) -> BTreeMap<String, Value> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.clone())).collect()
    }

    #[test]
    fn rebuilds_nested_maps_and_lists() {
        let keys = kv(&[
            ("system.name", Value::string("swarm")),
            ("system.max_agents", Value::int(8)),
            ("list[0].a", Value::float(1.5)),
            ("list[1]", Value::bool(true)),
            ("list[10]", Value::null()),
            ("db.password", Value::masked("0123456789abcdef0123", "key name")),
        ]);
        let doc = unflatten(&keys);
        let mut want = serde_json::json!({
            "system": {"name": "swarm", "max_agents": 8},
            "list": [{"a": 1.5}, true, null, null, null, null, null, null, null, null, null],
            "db": {"password": "masked:0123456789abcdef"},
        });
        assert_eq!(doc, want);
        // Index order is numeric, not the keys' text order.
        want["list"][10] = serde_json::json!(3);
        let keys = kv(&[("list[1]", Value::bool(true)), ("list[10]", Value::int(3)), ("list[0].a", Value::float(1.5))]);
        assert_eq!(unflatten(&keys)["list"], want["list"]);
    }

    #[test]
    fn roots_and_conflicts() {
        assert_eq!(unflatten(&kv(&[])), serde_json::json!({}));
        assert_eq!(unflatten(&kv(&[("", Value::string("x"))])), serde_json::json!("x"));
        assert_eq!(
            unflatten(&kv(&[("[0]", Value::int(1)), ("[1].a", Value::int(2))])),
            serde_json::json!([1, {"a": 2}])
        );
        // `a` is a value and `a.b` needs it to be a map: the first in key order stays.
        assert_eq!(unflatten(&kv(&[("a", Value::int(1)), ("a.b", Value::int(2))])), serde_json::json!({"a": 1}));
        // `.` sorts before `[`.
        assert_eq!(
            unflatten(&kv(&[("a[0]", Value::int(1)), ("a.b", Value::int(2))])),
            serde_json::json!({"a": {"b": 2}})
        );
        // A root scalar and keys do not mix.
        assert_eq!(unflatten(&kv(&[("", Value::int(1)), ("a", Value::int(2))])), serde_json::json!(1));
    }
}

/// `unflatten` against driftwatch-formats' flattening of real documents.
#[cfg(test)]
mod round_trip {
    use std::collections::BTreeMap;

    use driftwatch_formats::{Format, Limits, Masker, analyze};
    use driftwatch_proto::v1::Value;
    use proptest::prelude::*;

    use super::unflatten;

    fn flatten(doc: &serde_json::Value) -> BTreeMap<String, Value> {
        let text = serde_json::to_string(doc).unwrap();
        let a = analyze(text.as_bytes(), Format::Json, &Masker::new(b"k"), &Limits::default());
        assert!(a.error.is_none(), "{:?}", a.error);
        a.keys.into_iter().map(|kv| (kv.key, kv.value.unwrap_or_else(Value::null))).collect()
    }

    /// Documents flattening keeps whole: no empty containers, no `.` or `[` in names, nothing
    /// that looks secret (that is masked, on purpose).
    fn document() -> impl Strategy<Value = serde_json::Value> {
        let scalar = prop_oneof![
            Just(serde_json::Value::Null),
            any::<bool>().prop_map(serde_json::Value::from),
            any::<i64>().prop_map(serde_json::Value::from),
            any::<f64>().prop_filter("finite", |f| f.is_finite()).prop_map(serde_json::Value::from),
            prop::sample::select(vec!["", "info", "hello world", "a.b", "x[0]", "10.0.0.1", "é"])
                .prop_map(serde_json::Value::from),
        ];
        let name = prop::sample::select(vec!["a", "b", "name", "port", "list", "x1", "y_2", "k-3", "0", "ü"]);
        scalar.prop_recursive(4, 40, 5, move |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 1..5).prop_map(serde_json::Value::Array),
                prop::collection::btree_map(name.clone().prop_map(str::to_string), inner, 1..5)
                    .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
        #[test]
        // A root null flattens to no keys at all, like an empty document.
        fn unflatten_inverts_flatten(doc in document().prop_filter("root null", |d| !d.is_null())) {
            let keys = flatten(&doc);
            let back = unflatten(&keys);
            prop_assert_eq!(&back, &doc);
            prop_assert_eq!(flatten(&back), keys);
        }
    }

    #[test]
    fn what_flattening_loses_stays_lost() {
        // Empty containers vanish; a list item that was one leaves a gap (null).
        let doc = serde_json::json!({"a": {}, "b": [{}, 1], "c": {"d.e": 1}});
        assert_eq!(unflatten(&flatten(&doc)), serde_json::json!({"b": [null, 1], "c": {"d": {"e": 1}}}));
        // Secrets come back masked.
        let doc = serde_json::json!({"db": {"password": "hunter2hunter2"}});
        let back = unflatten(&flatten(&doc));
        assert!(back["db"]["password"].as_str().unwrap().starts_with("masked:"), "{back}");
    }
}
