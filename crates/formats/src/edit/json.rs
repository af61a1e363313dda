//! JSON edits. No JSON crate keeps formatting, so a small scanner finds the spans of values,
//! members and array items, and edits are spliced into the original text.
//!
//! Only scalars are replaced. A new key becomes the last member of the deepest existing object
//! on its path (nested objects are created for the rest of the path), written with the
//! separator and colon style of the members before it. Remove deletes the member and its
//! comma; array items cannot be removed (the items after would be renumbered).

use std::ops::Range;

use super::{
    Applied, EditError, EditOp, Existing, Expect, NewValue, Seg, child_path, float_text, new_scalar, splice,
    split_new_key, unsupported,
};
use crate::Format;
use crate::flatten::Scalar;
use crate::structured::parse_json;

#[derive(Debug)]
enum Node {
    Scalar {
        span: Range<usize>,
        kind: Existing,
    },
    /// `span` runs from `{` to just past `}`.
    Object {
        span: Range<usize>,
        members: Vec<Member>,
    },
    Array {
        span: Range<usize>,
        items: Vec<Node>,
    },
}

impl Node {
    fn span(&self) -> &Range<usize> {
        match self {
            Node::Scalar { span, .. } | Node::Object { span, .. } | Node::Array { span, .. } => span,
        }
    }
}

#[derive(Debug)]
struct Member {
    key: String,
    key_span: Range<usize>,
    value: Node,
}

/// Where a node sits: what removing it means.
#[derive(Debug, Clone, Copy)]
enum Loc<'n> {
    Root,
    Member { object: &'n Node, index: usize },
    Item,
}

struct Found<'n> {
    path: String,
    node: &'n Node,
    loc: Loc<'n>,
}

pub(super) fn apply(text: &str, op: &EditOp) -> Result<Applied, EditError> {
    let root = parse(text)?;
    let mut all = Vec::new();
    collect(&root, String::new(), Loc::Root, &mut all);
    match op {
        EditOp::Set { key, value } => {
            let leaf = all.iter().rev().find(|f| f.path == *key && matches!(f.node, Node::Scalar { .. }));
            if let Some(Found { node: Node::Scalar { span, kind }, loc, .. }) = leaf {
                let scalar = new_scalar(Format::Json, key, value, Some(*kind))?;
                if matches!(loc, Loc::Root) && scalar == Scalar::Null {
                    // A null document has no keys: the key would be gone, not null.
                    return Err(unsupported(Format::Json, "the root value cannot be set to null"));
                }
                let written = render(&scalar);
                return Ok(Applied { text: splice(text, span.clone(), &written), expect: set(scalar) });
            }
            if let Some(f) = all.iter().find(|f| f.path == *key) {
                let what = if matches!(f.node, Node::Array { .. }) { "an array" } else { "an object" };
                return Err(unsupported(Format::Json, format!("`{key}` holds {what}; only scalars can be set")));
            }
            add_key(text, &all, key, value)
        }
        EditOp::Remove { key } => {
            let Some(found) = all.iter().rev().find(|f| f.path == *key && matches!(f.node, Node::Scalar { .. })) else {
                return Err(EditError::UnknownKey(key.clone()));
            };
            let range = match found.loc {
                Loc::Root => return Err(unsupported(Format::Json, "the root value cannot be removed")),
                Loc::Item => {
                    return Err(unsupported(
                        Format::Json,
                        format!("`{key}` is an array item; removing it would renumber the items after it"),
                    ));
                }
                Loc::Member { object, index } => member_range(object, index),
            };
            let out = splice(text, range, "");
            // A duplicate key (the parser keeps the last) may still be there: remove that one too.
            if let Ok(again) = apply(&out, op) {
                return Ok(again);
            }
            Ok(Applied { text: out, expect: Expect::Gone })
        }
    }
}

fn set(scalar: Scalar) -> Expect {
    Expect::Set { scalar, raw: None }
}

fn add_key(text: &str, all: &[Found<'_>], key: &str, value: &NewValue) -> Result<Applied, EditError> {
    let objects: Vec<(String, &Node)> =
        all.iter().filter(|f| matches!(f.node, Node::Object { .. })).map(|f| (f.path.clone(), f.node)).collect();
    let (object, segs) = split_new_key(Format::Json, key, &objects)?;
    let Node::Object { span, members } = object else { unreachable!("only objects are collected") };
    if let Some(m) = members.iter().find(|m| m.key == segs[0]) {
        let what = match m.value {
            Node::Array { .. } => "an array",
            _ => "a scalar",
        };
        return Err(unsupported(Format::Json, format!("`{key}`: `{}` holds {what}, not an object", segs[0])));
    }
    let scalar = new_scalar(Format::Json, key, value, None)?;
    let mut written = render(&scalar);
    for seg in segs[1..].iter().rev() {
        written = format!("{{{}: {written}}}", quote(seg));
    }
    // The colon as the last member of this object (else any member) writes it.
    let any_member = || {
        all.iter().find_map(|f| match f.loc {
            Loc::Member { object: Node::Object { members, .. }, index } => members.get(index),
            _ => None,
        })
    };
    let colon = members.last().or_else(any_member).map(|m| &text[m.key_span.end..m.value.span().start]).unwrap_or(": ");
    let member = format!("{}{colon}{written}", quote(&segs[0]));
    let (at, insert) = match members.as_slice() {
        [] => (span.start + 1..span.end - 1, member),
        [only] => {
            let lead = &text[span.start + 1..only.key_span.start];
            let sep = if lead.is_empty() { " " } else { lead };
            (only.value.span().end..only.value.span().end, format!(",{sep}{member}"))
        }
        [.., before, last] => {
            let sep = &text[before.value.span().end..last.key_span.start];
            (last.value.span().end..last.value.span().end, format!("{sep}{member}"))
        }
    };
    Ok(Applied { text: splice(text, at, &insert), expect: set(scalar) })
}

/// The bytes to delete to remove member `index` of `object` with its comma.
fn member_range(object: &Node, index: usize) -> Range<usize> {
    let Node::Object { span, members } = object else { unreachable!("members live in objects") };
    match (members.len(), index) {
        (1, _) => span.start + 1..span.end - 1,
        (n, i) if i + 1 < n => members[i].key_span.start..members[i + 1].key_span.start,
        (_, i) => members[i - 1].value.span().end..members[i].value.span().end,
    }
}

fn render(scalar: &Scalar) -> String {
    match scalar {
        Scalar::Null => "null".to_owned(),
        Scalar::Bool(b) => b.to_string(),
        Scalar::Int(i) => i.to_string(),
        Scalar::Float(f) => float_text(*f),
        Scalar::Str(s) => quote(s),
    }
}

fn quote(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".to_owned())
}

fn collect<'n>(node: &'n Node, path: String, loc: Loc<'n>, out: &mut Vec<Found<'n>>) {
    match node {
        Node::Scalar { .. } => {}
        Node::Object { members, .. } => {
            for (index, m) in members.iter().enumerate() {
                let p = child_path(&path, &Seg::Key(m.key.clone()));
                collect(&m.value, p, Loc::Member { object: node, index }, out);
            }
        }
        Node::Array { items, .. } => {
            for (i, item) in items.iter().enumerate() {
                collect(item, child_path(&path, &Seg::Index(i)), Loc::Item, out);
            }
        }
    }
    // Containers after their contents: a lookup from the end finds leaves first.
    out.push(Found { path, node, loc });
}

/// Validate with the real parser (for its error message), then scan for spans.
fn parse(text: &str) -> Result<Node, EditError> {
    parse_json(text)
        .map_err(|e| EditError::InvalidInput(format!("{} (line {}, column {})", e.message, e.line, e.column)))?;
    let mut s = Scanner { text, b: text.as_bytes(), i: 0 };
    let node = s.value().ok_or_else(disagree)?;
    s.ws();
    if s.i != text.len() {
        return Err(disagree());
    }
    Ok(node)
}

fn disagree() -> EditError {
    EditError::Verification("the JSON scanner disagrees with the parser".to_owned())
}

struct Scanner<'a> {
    text: &'a str,
    b: &'a [u8],
    i: usize,
}

impl Scanner<'_> {
    fn ws(&mut self) {
        while matches!(self.b.get(self.i), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.i += 1;
        }
    }

    fn value(&mut self) -> Option<Node> {
        self.ws();
        let start = self.i;
        match *self.b.get(self.i)? {
            b'{' => {
                self.i += 1;
                let mut members = Vec::new();
                self.ws();
                if self.b.get(self.i) == Some(&b'}') {
                    self.i += 1;
                    return Some(Node::Object { span: start..self.i, members });
                }
                loop {
                    self.ws();
                    let key_span = self.string()?;
                    let key = serde_json::from_str::<String>(&self.text[key_span.clone()]).ok()?;
                    self.ws();
                    (self.b.get(self.i) == Some(&b':')).then_some(())?;
                    self.i += 1;
                    let value = self.value()?;
                    members.push(Member { key, key_span, value });
                    self.ws();
                    match self.b.get(self.i)? {
                        b',' => self.i += 1,
                        b'}' => {
                            self.i += 1;
                            return Some(Node::Object { span: start..self.i, members });
                        }
                        _ => return None,
                    }
                }
            }
            b'[' => {
                self.i += 1;
                let mut items = Vec::new();
                self.ws();
                if self.b.get(self.i) == Some(&b']') {
                    self.i += 1;
                    return Some(Node::Array { span: start..self.i, items });
                }
                loop {
                    items.push(self.value()?);
                    self.ws();
                    match self.b.get(self.i)? {
                        b',' => self.i += 1,
                        b']' => {
                            self.i += 1;
                            return Some(Node::Array { span: start..self.i, items });
                        }
                        _ => return None,
                    }
                }
            }
            b'"' => Some(Node::Scalar { span: self.string()?, kind: Existing::Str }),
            b't' => self.word("true", Existing::Bool),
            b'f' => self.word("false", Existing::Bool),
            b'n' => self.word("null", Existing::Null),
            b'-' | b'0'..=b'9' => {
                while matches!(self.b.get(self.i), Some(b'-' | b'+' | b'.' | b'e' | b'E' | b'0'..=b'9')) {
                    self.i += 1;
                }
                let token = &self.text[start..self.i];
                // `-0` reads as the float -0.0 (an i64 has no negative zero).
                let kind = if token.contains(['.', 'e', 'E']) || token == "-0" || token.parse::<i64>().is_err() {
                    Existing::Float
                } else {
                    Existing::Int
                };
                Some(Node::Scalar { span: start..self.i, kind })
            }
            _ => None,
        }
    }

    fn word(&mut self, word: &str, kind: Existing) -> Option<Node> {
        let start = self.i;
        self.text[start..].starts_with(word).then_some(())?;
        self.i += word.len();
        Some(Node::Scalar { span: start..self.i, kind })
    }

    /// A string token, quotes included.
    fn string(&mut self) -> Option<Range<usize>> {
        let start = self.i;
        (self.b.get(self.i) == Some(&b'"')).then_some(())?;
        self.i += 1;
        loop {
            match *self.b.get(self.i)? {
                b'\\' => self.i += 2,
                b'"' => {
                    self.i += 1;
                    return Some(start..self.i);
                }
                _ => self.i += 1,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::{EditError, EditOp};
    use crate::{Format, Value};

    use super::super::testkit::{remove, set, typed};

    fn ed(text: &str, ops: &[EditOp]) -> String {
        super::super::testkit::ed(Format::Json, text, ops)
    }
    fn ed_err(text: &str, ops: &[EditOp]) -> EditError {
        super::super::testkit::ed_err(Format::Json, text, ops)
    }

    const DOC: &str = "{\n  \"name\": \"svc\",\n  \"port\": 8080,\n  \"ratio\": 0.5,\n  \"on\": true,\n  \"nested\": {\"a\": 1, \"b\": [1, 2]},\n  \"none\": null\n}\n";

    /// Found by fuzzing (`formats_json`): a member name holding dots, one dot-separated part
    /// of which looks like a token, is shown unmasked (the flattener judges the whole name);
    /// the verification masked its parts one by one, looked for a key that does not exist
    /// and failed its own check on a correct edit.
    #[test]
    fn member_names_with_dots_and_token_like_parts_are_edited() {
        let doc = "{\"server\": {\"pohooks.slack.com/so[1]pi/webhooks[0]/tls\": {\"enable;\": true}}}\n";
        let key = "server.pohooks.slack.com/so[1]pi/webhooks[0]/tls.enable;";
        assert_eq!(ed(doc, &[set(key, "false")]), doc.replace("true", "false"));
        let doc = "[{\"a.sMMMMMMMMMMMMMMMMMMMMMMMMMcope@-npmoxa-B-umd\": \"b\", \"c\": 1}]";
        assert_eq!(
            ed(doc, &[set("[0].a.sMMMMMMMMMMMMMMMMMMMMMMMMMcope@-npmoxa-B-umd", "x")]),
            doc.replace("\"b\"", "\"x\"")
        );
        assert_eq!(ed(doc, &[remove("[0].a.sMMMMMMMMMMMMMMMMMMMMMMMMMcope@-npmoxa-B-umd")]), "[{\"c\": 1}]");
    }

    #[test]
    fn scalars_keep_or_infer_type() {
        assert_eq!(
            ed(DOC, &[set("name", "30"), set("port", "9090"), set("ratio", "1"), set("on", "false"), set("none", "x")]),
            "{\n  \"name\": \"30\",\n  \"port\": 9090,\n  \"ratio\": 1.0,\n  \"on\": false,\n  \"nested\": {\"a\": 1, \"b\": [1, 2]},\n  \"none\": \"x\"\n}\n"
        );
        assert_eq!(
            ed(DOC, &[set("port", "abc"), set("nested.b[1]", "7"), typed("nested.a", Value::string("q\"x"))]),
            "{\n  \"name\": \"svc\",\n  \"port\": \"abc\",\n  \"ratio\": 0.5,\n  \"on\": true,\n  \"nested\": {\"a\": \"q\\\"x\", \"b\": [1, 7]},\n  \"none\": null\n}\n"
        );
        assert_eq!(ed("{\"a\": 1}", &[typed("a", Value::null())]), "{\"a\": null}");
        assert_eq!(ed("[1, {\"x\": 2}]", &[set("[1].x", "3"), set("[0]", "9")]), "[9, {\"x\": 3}]");
        assert_eq!(ed("\"root\"", &[set("", "new")]), "\"new\"");
    }

    #[test]
    fn new_members_match_style() {
        assert_eq!(ed(DOC, &[set("added", "1")]), DOC.replace("\"none\": null\n", "\"none\": null,\n  \"added\": 1\n"));
        assert_eq!(ed(DOC, &[set("nested.c", "x")]), DOC.replace("[1, 2]}", "[1, 2], \"c\": \"x\"}"));
        assert_eq!(ed("{}", &[set("k", "v")]), "{\"k\": \"v\"}");
        assert_eq!(ed("{\"a\":1}", &[set("b", "2")]), "{\"a\":1, \"b\":2}");
        assert_eq!(ed("{\n    \"a\": 1\n}", &[set("b", "2")]), "{\n    \"a\": 1,\n    \"b\": 2\n}");
        assert_eq!(ed("{\"a\": {}}", &[set("a.b.c", "2")]), "{\"a\": {\"b\": {\"c\": 2}}}");
        assert_eq!(ed("{\"a\": 1}", &[set("x.y", "true")]), "{\"a\": 1, \"x\": {\"y\": true}}");
    }

    #[test]
    fn removal_takes_the_comma() {
        assert_eq!(ed("{\"a\": 1, \"b\": 2, \"c\": 3}", &[remove("a")]), "{\"b\": 2, \"c\": 3}");
        assert_eq!(ed("{\"a\": 1, \"b\": 2, \"c\": 3}", &[remove("b")]), "{\"a\": 1, \"c\": 3}");
        assert_eq!(ed("{\"a\": 1, \"b\": 2, \"c\": 3}", &[remove("c")]), "{\"a\": 1, \"b\": 2}");
        assert_eq!(ed("{\n  \"a\": 1,\n  \"b\": 2\n}\n", &[remove("b")]), "{\n  \"a\": 1\n}\n");
        assert_eq!(ed("{\n  \"a\": 1,\n  \"b\": 2\n}\n", &[remove("a")]), "{\n  \"b\": 2\n}\n");
        assert_eq!(ed("{\"o\": {\"a\": 1}}", &[remove("o.a")]), "{\"o\": {}}");
        // Duplicates: every occurrence goes.
        assert_eq!(ed("{\"a\": 1, \"b\": 2, \"a\": 3}", &[remove("a")]), "{\"b\": 2}");
    }

    #[test]
    fn duplicate_keys_edit_the_last() {
        assert_eq!(ed("{\"a\": 1, \"a\": 2}", &[set("a", "5")]), "{\"a\": 1, \"a\": 5}");
    }

    #[test]
    fn unsupported_and_errors() {
        assert!(matches!(ed_err(DOC, &[set("nested", "1")]), EditError::Unsupported { .. }));
        assert!(matches!(ed_err(DOC, &[set("nested.b", "1")]), EditError::Unsupported { .. }));
        assert!(matches!(ed_err(DOC, &[remove("nested.b[0]")]), EditError::Unsupported { .. }));
        assert!(matches!(ed_err(DOC, &[set("port.x", "1")]), EditError::Unsupported { .. }));
        assert!(matches!(ed_err(DOC, &[set("nested.b[5]", "1")]), EditError::Unsupported { .. }));
        assert_eq!(ed_err(DOC, &[remove("zz")]), EditError::UnknownKey("zz".into()));
        assert_eq!(ed_err(DOC, &[typed("port", Value::masked("ab", "key name"))]), EditError::Masked("port".into()));
        assert!(matches!(ed_err("{\"a\": }", &[set("a", "1")]), EditError::InvalidInput(_)));
        assert!(matches!(ed_err("[1, 2]", &[set("x", "1")]), EditError::Unsupported { .. }));
        assert!(matches!(ed_err("[1, 2]", &[remove("[0]")]), EditError::Unsupported { .. }));
        assert!(matches!(ed_err("5", &[remove("")]), EditError::Unsupported { .. }));
        // Found by fuzzing (`formats_json`): a root scalar set to null left a document
        // with no keys, and the edit failed its own check.
        assert!(matches!(ed_err("7", &[typed("", Value::null())]), EditError::Unsupported { .. }));
        // Found by fuzzing (`formats_json`): `-0` reads as a float, so text over it is typed
        // as one (it was typed as an int, unlike what the server was told).
        assert_eq!(ed("{\"a\": -0}", &[set("a", "0")]), "{\"a\": 0.0}");
    }

    #[test]
    fn escaped_keys_and_unicode() {
        assert_eq!(ed("{\"\\u0061\": \"é\"}", &[set("a", "ü")]), "{\"\\u0061\": \"ü\"}");
    }
}
