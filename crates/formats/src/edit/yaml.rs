//! YAML edits: scalar replacement only.
//!
//! `saphyr-parser` gives the position of every scalar; the scalar's text is replaced and the
//! rest of the file (comments, indentation, other quoting) stays byte for byte. The scalar keeps
//! its quoting (plain / single / double) when the new value can be written in it; a plain
//! scalar whose new text would read as another type (or would not parse plain) is quoted in the
//! file's usual quote style.
//!
//! Not supported in place: adding or removing keys, scalars inside flow collections
//! (`[a, b]`, `{a: 1}`), anchored or aliased values (other places would change too), values
//! that come from a merge key, tagged scalars, block scalars (`|`, `>`), values of explicit
//! `? key`s, an empty value followed by a comment on its line, and any value whose written
//! form would not parse where it stands (next to a tab, for one).

use std::ops::Range;

use saphyr_parser::{Event, Parser, ScalarStyle};

use super::{
    Applied, EditError, EditOp, Existing, Expect, Quote, Seg, child_path, float_text, new_scalar, splice, unsupported,
};
use crate::Format;
use crate::flatten::{Node, Scalar};
use crate::structured::parse_yaml;

/// A parsed node with what editing needs. Spans are byte offsets.
#[derive(Debug)]
enum YNode {
    Scalar {
        value: String,
        style: ScalarStyle,
        span: Range<usize>,
        anchored: bool,
        tagged: bool,
    },
    Alias,
    Seq {
        flow: bool,
        anchored: bool,
        items: Vec<YNode>,
    },
    /// Entries with whether the key is an explicit `? key`.
    Map {
        flow: bool,
        anchored: bool,
        entries: Vec<(YNode, YNode, bool)>,
    },
}

#[derive(Debug)]
struct Leaf {
    path: String,
    span: Range<usize>,
    style: ScalarStyle,
    /// The type of the current value (for operator text).
    existing: Existing,
    /// Why this scalar cannot be edited in place.
    problem: Option<&'static str>,
}

#[derive(Default)]
struct Walk {
    leaves: Vec<Leaf>,
    containers: Vec<String>,
    /// Paths where an alias or a merge key brings in values from elsewhere.
    borrowed: Vec<String>,
}

pub(super) fn apply(text: &str, op: &EditOp) -> Result<Applied, EditError> {
    let walk = scan(text)?;
    let key = op.key();
    let leaf = walk.leaves.iter().rev().find(|l| l.path == key);
    let from_elsewhere = || {
        walk.borrowed.iter().any(|p| {
            p.is_empty() || key == p || key.strip_prefix(p.as_str()).is_some_and(|r| r.starts_with(['.', '[']))
        })
    };
    match op {
        EditOp::Set { value, .. } => {
            let Some(leaf) = leaf else {
                if walk.containers.iter().any(|p| p == key) {
                    return Err(unsupported(
                        Format::Yaml,
                        format!("`{key}` holds a mapping or a sequence; only scalars can be set"),
                    ));
                }
                if from_elsewhere() {
                    return Err(unsupported(Format::Yaml, format!("`{key}` comes from an alias or a merge key")));
                }
                return Err(unsupported(Format::Yaml, "adding a new key is not supported in place"));
            };
            if let Some(problem) = leaf.problem {
                return Err(unsupported(Format::Yaml, format!("`{key}` {problem}")));
            }
            let scalar = new_scalar(Format::Yaml, key, value, Some(leaf.existing))?;
            // A document that is one scalar (`` or `[i]`): null would leave a document with no key.
            let document_root = key.is_empty()
                || key.strip_prefix('[').and_then(|k| k.strip_suffix(']')).is_some_and(|i| i.parse::<usize>().is_ok());
            if document_root && scalar == Scalar::Null {
                return Err(unsupported(Format::Yaml, "a document's root value cannot be set to null"));
            }
            let written = render(&scalar, leaf.style, file_quote(&walk)).ok_or_else(|| {
                unsupported(Format::Yaml, format!("`{key}`: the new value has no safe YAML form here"))
            })?;
            let (range, written) = if leaf.span.is_empty() {
                if after_comment(text, leaf.span.start) {
                    // The parser places such an empty value past the comment (`- # note`).
                    return Err(unsupported(
                        Format::Yaml,
                        format!(
                            "`{key}` is an empty value followed by a comment on its line; it cannot be filled in place"
                        ),
                    ));
                }
                empty_insert(text, leaf.span.start, written)
            } else {
                (leaf.span.clone(), written)
            };
            let out = splice(text, range, &written);
            // Next to a tab, a comment or an explicit `?` key some written forms no longer
            // parse (or not in the editor's own reading, which a later edit needs): refuse.
            if scan(&out).is_err() {
                return Err(unsupported(
                    Format::Yaml,
                    format!(
                        "`{key}`: the new value written here would not parse as YAML (a tab, a comment or an explicit `?` key next to it)"
                    ),
                ));
            }
            Ok(Applied { text: out, expect: Expect::Set { scalar, raw: None } })
        }
        EditOp::Remove { .. } => match leaf {
            Some(_) => Err(unsupported(Format::Yaml, "removing a key is not supported in place")),
            None if from_elsewhere() => {
                Err(unsupported(Format::Yaml, format!("`{key}` comes from an alias or a merge key")))
            }
            None => Err(EditError::UnknownKey(key.to_owned())),
        },
    }
}

/// Does a comment stand between the start of the line and `at`?
fn after_comment(text: &str, at: usize) -> bool {
    let line = &text[text[..at].rfind(['\n', '\r']).map_or(0, |i| i + 1)..at];
    line.trim_start().starts_with('#') || line.contains(" #") || line.contains("\t#")
}

/// Where a value goes for an empty (null) scalar: the parser puts it at the `:` of `key:` or
/// just after `-`; the value goes after the indicator, one blank after it.
fn empty_insert(text: &str, at: usize, written: String) -> (Range<usize>, String) {
    let at = if text[at..].starts_with(':') { at + 1 } else { at };
    let blank_before = text[..at].ends_with([' ', '\t']);
    (at..at, if blank_before { written } else { format!(" {written}") })
}

/// The text for `scalar` where a scalar of `style` stood; None when no form reads back right.
fn render(scalar: &Scalar, style: ScalarStyle, file_quote: Quote) -> Option<String> {
    let plain = match scalar {
        Scalar::Null => "null".to_owned(),
        Scalar::Bool(b) => b.to_string(),
        Scalar::Int(i) => i.to_string(),
        Scalar::Float(f) => float_text(*f),
        Scalar::Str(s) => {
            let wanted = match style {
                ScalarStyle::SingleQuoted => Quote::Single,
                ScalarStyle::DoubleQuoted => Quote::Double,
                _ if plain_ok(s) => return Some(s.clone()),
                _ => file_quote,
            };
            if wanted == Quote::Single && single_ok(s) {
                return Some(format!("'{}'", s.replace('\'', "''")));
            }
            return Some(double_quoted(s));
        }
    };
    // Typed values are written plain; make sure the parser reads them as meant.
    let reads = serde_yaml_ng::from_str::<Node>(&plain).ok()?;
    let same = match (scalar, &reads) {
        (Scalar::Float(a), Node::Float(b)) => a == b,
        (Scalar::Int(a), Node::Int(b)) => a == b,
        (Scalar::Bool(a), Node::Bool(b)) => a == b,
        (Scalar::Null, Node::Null) => true,
        _ => false,
    };
    same.then_some(plain)
}

/// Can `s` be written as a plain scalar and read back as this very string?
fn plain_ok(s: &str) -> bool {
    !s.is_empty()
        && s.trim() == s
        && s.chars().all(printable)
        && !s.starts_with([
            '-', '?', ':', ',', '[', ']', '{', '}', '#', '&', '*', '!', '|', '>', '\'', '"', '%', '@', '`',
        ])
        && !s.contains(": ")
        && !s.contains(" #")
        && !s.ends_with(':')
        && serde_yaml_ng::from_str::<Node>(s).is_ok_and(|n| n == Node::Str(s.to_owned()))
}

/// Single quotes have no escapes, and line breaks in them fold: anything else goes.
fn single_ok(s: &str) -> bool {
    s.chars().all(printable)
}

/// YAML's printable characters (`c-printable`, less the line breaks and tab a single-line
/// scalar cannot hold as they are): everything else must be escaped in double quotes.
fn printable(c: char) -> bool {
    !c.is_control() && !matches!(c, '\u{feff}' | '\u{fffe}' | '\u{ffff}')
}

fn double_quoted(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            '\0' => out.push_str("\\0"),
            c if !printable(c) => out.push_str(&format!("\\u{:04X}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// The quote style most quoted scalars of the file use (double when tied or none).
fn file_quote(walk: &Walk) -> Quote {
    let count = |style| walk.leaves.iter().filter(|l| l.style == style).count();
    if count(ScalarStyle::SingleQuoted) > count(ScalarStyle::DoubleQuoted) { Quote::Single } else { Quote::Double }
}

/// Parse (after the real parser agreed the file is YAML) and list every scalar with its path.
fn scan(text: &str) -> Result<Walk, EditError> {
    parse_yaml(text)
        .map_err(|e| EditError::InvalidInput(format!("{} (line {}, column {})", e.message, e.line, e.column)))?;
    let beyond = || unsupported(Format::Yaml, "this file uses YAML syntax the in-place editor does not follow");
    // saphyr counts characters; edits need bytes.
    let mut byte_at: Vec<usize> = text.char_indices().map(|(i, _)| i).collect();
    byte_at.push(text.len());
    let mut events = Vec::new();
    for event in Parser::new_from_str(text) {
        let (event, span) = event.map_err(|_| beyond())?;
        let start = *byte_at.get(span.start.index()).ok_or_else(beyond)?;
        let end = *byte_at.get(span.end.index()).ok_or_else(beyond)?;
        events.push((event, start..end));
    }
    let mut docs = Vec::new();
    let mut i = 0;
    while i < events.len() {
        if matches!(events[i].0, Event::DocumentStart(_)) {
            i += 1;
            docs.push(node(text, &events, &mut i).ok_or_else(beyond)?);
        } else {
            i += 1;
        }
    }
    let is_null = |n: &YNode| matches!(n, YNode::Scalar { style: ScalarStyle::Plain, value, tagged: false, .. } if resolve_plain(value) == Node::Null);
    let several = docs.iter().filter(|d| !is_null(d)).count() > 1;
    let mut walk = Walk::default();
    for (index, doc) in docs.iter().enumerate() {
        if is_null(doc) {
            continue;
        }
        let path = if several { format!("[{index}]") } else { String::new() };
        walk_node(doc, path, Ctx::default(), &mut walk);
    }
    Ok(walk)
}

/// The node starting at `events[*i]`, advancing past it.
fn node(text: &str, events: &[(Event<'_>, Range<usize>)], i: &mut usize) -> Option<YNode> {
    let (event, span) = events.get(*i)?;
    *i += 1;
    let flow_at = |c: char| !span.is_empty() && text[span.start..].starts_with(c);
    match event {
        Event::Scalar(value, style, anchor, tag) => {
            let span = match style {
                // The parser's end of a quoted scalar can run past the closing quote.
                ScalarStyle::SingleQuoted | ScalarStyle::DoubleQuoted if *anchor == 0 && tag.is_none() => {
                    quoted_end(text, span.start).map(|end| span.start..end)?
                }
                _ => span.clone(),
            };
            Some(YNode::Scalar {
                value: value.to_string(),
                style: *style,
                span,
                anchored: *anchor != 0,
                tagged: tag.is_some(),
            })
        }
        Event::Alias(_) => Some(YNode::Alias),
        Event::SequenceStart(anchor, _) => {
            let flow = flow_at('[');
            let mut items = Vec::new();
            loop {
                if matches!(events.get(*i)?.0, Event::SequenceEnd) {
                    *i += 1;
                    return Some(YNode::Seq { flow, anchored: *anchor != 0, items });
                }
                items.push(node(text, events, i)?);
            }
        }
        Event::MappingStart(anchor, _) => {
            let flow = flow_at('{');
            let mut entries = Vec::new();
            loop {
                if matches!(events.get(*i)?.0, Event::MappingEnd) {
                    *i += 1;
                    return Some(YNode::Map { flow, anchored: *anchor != 0, entries });
                }
                let explicit = explicit_key(text, &events.get(*i)?.1);
                let k = node(text, events, i)?;
                let v = node(text, events, i)?;
                entries.push((k, v, explicit));
            }
        }
        _ => None,
    }
}

/// Is the mapping key starting at `span` written as an explicit `? key` (the `?` indicator,
/// at a line start or after a blank, is the last thing before it)?
fn explicit_key(text: &str, span: &Range<usize>) -> bool {
    let before = text[..span.start.min(text.len())].trim_end_matches([' ', '\t', '\r', '\n']);
    before.strip_suffix('?').is_some_and(|b| b.is_empty() || b.ends_with([' ', '\t', '\r', '\n']))
}

/// Just past the closing quote of the quoted scalar opening at `start`.
fn quoted_end(text: &str, start: usize) -> Option<usize> {
    let b = text.as_bytes();
    let q = *b.get(start)?;
    let mut i = start + 1;
    loop {
        match (q, *b.get(i)?) {
            (b'\'', b'\'') if b.get(i + 1) == Some(&b'\'') => i += 2,
            (b'"', b'\\') => i += 2,
            (q, c) if c == q => return Some(i + 1),
            _ => i += 1,
        }
    }
}

/// What the containers above a node make of it.
#[derive(Debug, Default, Clone, Copy)]
struct Ctx {
    flow: Option<&'static str>,
    anchored: bool,
    /// The value of an explicit `? key` (this node only, not its children).
    explicit: bool,
}

fn walk_node(n: &YNode, path: String, ctx: Ctx, walk: &mut Walk) {
    match n {
        YNode::Scalar { value, style, span, anchored, tagged } => {
            let multi_line_plain = *style == ScalarStyle::Plain && value.contains('\n');
            let problem = if let Some(flow) = ctx.flow {
                Some(flow)
            } else if ctx.explicit {
                Some("is the value of an explicit `?` key, which the in-place editor does not follow")
            } else if *anchored || ctx.anchored {
                Some("is anchored: the aliases of it would change too")
            } else if *tagged {
                Some("is a tagged scalar")
            } else if matches!(style, ScalarStyle::Literal | ScalarStyle::Folded) || multi_line_plain {
                Some("is a multi-line block scalar")
            } else {
                None
            };
            let existing = match style {
                ScalarStyle::Plain => match resolve_plain(value) {
                    Node::Null => Existing::Null,
                    Node::Bool(_) => Existing::Bool,
                    Node::Int(_) => Existing::Int,
                    Node::Float(_) => Existing::Float,
                    _ => Existing::Str,
                },
                _ => Existing::Str,
            };
            walk.leaves.push(Leaf { path, span: span.clone(), style: *style, existing, problem });
        }
        YNode::Alias => walk.borrowed.push(path),
        YNode::Seq { flow, anchored, items } => {
            if items.is_empty() {
                walk.containers.push(path);
                return;
            }
            let ctx = Ctx {
                flow: ctx.flow.or(flow.then_some("is inside a YAML flow sequence")),
                anchored: ctx.anchored || *anchored,
                explicit: false,
            };
            for (i, item) in items.iter().enumerate() {
                walk_node(item, child_path(&path, &Seg::Index(i)), ctx, walk);
            }
            walk.containers.push(path);
        }
        YNode::Map { flow, anchored, entries } => {
            let ctx = Ctx {
                flow: ctx.flow.or(flow.then_some("is inside a YAML flow mapping")),
                anchored: ctx.anchored || *anchored,
                explicit: false,
            };
            for (k, v, explicit) in entries {
                let Some(name) = key_text(k) else { continue };
                if name == "<<" {
                    walk.borrowed.push(path.clone());
                }
                let ctx = Ctx { explicit: *explicit, ..ctx };
                walk_node(v, child_path(&path, &Seg::Key(name)), ctx, walk);
            }
            walk.containers.push(path);
        }
    }
}

/// A mapping key as the flattener writes it; None for keys that are not plain scalars.
fn key_text(k: &YNode) -> Option<String> {
    let YNode::Scalar { value, style, .. } = k else { return None };
    if *style != ScalarStyle::Plain {
        return Some(value.clone());
    }
    Some(match resolve_plain(value) {
        Node::Null => "null".to_owned(),
        Node::Bool(b) => b.to_string(),
        Node::Int(i) => i.to_string(),
        Node::Float(f) if f.is_nan() => "nan".to_owned(),
        Node::Float(f) if f.is_infinite() => if f > 0.0 { "inf" } else { "-inf" }.to_owned(),
        Node::Float(f) => f.to_string(),
        _ => value.clone(),
    })
}

/// The typed value of a plain scalar, as serde_yaml_ng resolves it.
fn resolve_plain(value: &str) -> Node {
    // Only these can start a null, a bool or a number: spare the parser everything else.
    let maybe_typed = value.is_empty() || value.starts_with(|c: char| c.is_ascii_digit() || "+-.~nNtTfF".contains(c));
    if !maybe_typed {
        return Node::Str(value.to_owned());
    }
    match serde_yaml_ng::from_str::<Node>(value) {
        Ok(n @ (Node::Null | Node::Bool(_) | Node::Int(_) | Node::Float(_))) => n,
        _ => Node::Str(value.to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::super::{EditError, EditOp};
    use crate::{Format, Value};

    use super::super::testkit::{remove, set, typed};

    fn ed(text: &str, ops: &[EditOp]) -> String {
        super::super::testkit::ed(Format::Yaml, text, ops)
    }

    /// Found by fuzzing (`formats_yaml`): a document that is one scalar, set to null, lost
    /// its only key and the edit failed its own check.
    #[test]
    fn a_document_root_cannot_be_set_to_null() {
        for (doc, key) in [("7\n", ""), ("a: 1\n---\n7\n", "[1]")] {
            let e = super::super::testkit::ed_err(Format::Yaml, doc, &[typed(key, Value::null())]);
            assert!(matches!(e, EditError::Unsupported { .. }), "{doc:?}: {e}");
        }
        assert_eq!(ed("7\n", &[typed("", Value::int(8))]), "8\n");
    }

    /// Found by fuzzing (`formats_yaml`, `odd-key-missing-after-set-2`): a key holding dots
    /// with a token-like dot-separated part is shown unmasked; the verification masked the
    /// parts one by one and did not find the key again after a correct edit.
    #[test]
    fn keys_with_dots_and_token_like_parts_are_edited() {
        let doc = "a.sMMMMMMMMMMMMMMMMMMMMMMMMMcope@-npmoxa-B-umd: b\n";
        assert_eq!(ed(doc, &[set("a.sMMMMMMMMMMMMMMMMMMMMMMMMMcope@-npmoxa-B-umd", "x")]), doc.replace(": b", ": x"));
    }

    /// Found by fuzzing (`formats_yaml`, `edited-text-does-not-parse-3`, `-7`,
    /// `-mapping-key`, `reads-back-null-float`): a quoted value before a line holding only
    /// a tab, or a value next to an explicit `?` key, no longer parsed; refused instead.
    #[test]
    fn a_value_that_would_not_parse_next_to_a_tab_is_refused() {
        assert!(unsupported(ed_err(" ;\n\t", &[set("", "")])).contains("would not parse"));
    }

    /// Found by fuzzing (`formats_yaml`, `list-item-reads-back-null-4`): the parser places
    /// the empty value of `- # note` past the comment, so the value went into the comment
    /// and read back as null.
    #[test]
    fn an_empty_value_before_a_comment_is_refused() {
        let e = ed_err("list:\n  - #xkeef: ew.key", &[set("list[0]", "v")]);
        assert!(unsupported(e).contains("followed by a comment"));
        assert_eq!(ed("a:   # c\n", &[set("a", "1")]), "a: 1   # c\n");
    }

    /// Found by fuzzing (`formats_yaml`, `same-edit-twice-differs`): `v:\t:xe` set to 0
    /// gave `v:\t0`, which the editor's own reading refuses, so the same edit again failed.
    #[test]
    fn an_output_the_editor_cannot_read_again_is_refused() {
        assert!(unsupported(ed_err("v:\t:xe", &[typed("v", Value::int(0))])).contains("would not parse"));
    }

    /// Found by fuzzing (`formats_yaml`, `odd-key-missing-after-set-5`, `-8`, `-9`,
    /// `reads-back-null-bool`): the value of an explicit `? key` (often empty, its position
    /// past the key) was written where it became part of the key or of another entry.
    #[test]
    fn values_of_explicit_keys_are_refused() {
        let e =
            ed_err("? at line 6 column?eaevAa?ea?e-d", &[typed("at line 6 column?eaevAa?ea?e-d", Value::bool(true))]);
        assert!(unsupported(e).contains("explicit `?` key"));
        assert!(unsupported(ed_err("\r?\r?  :::::::::", &[typed("null", Value::bool(true))])).contains("explicit"));
        assert_eq!(ed("a: x?\nb: 1\n", &[set("b", "2")]), "a: x?\nb: 2\n");
    }

    /// Found by fuzzing (`formats_yaml`): U+FFFE and U+FFFF are not printable in YAML and
    /// were written as they are; the edited text did not parse.
    #[test]
    fn unprintable_characters_are_escaped() {
        assert_eq!(ed("a: x\n", &[set("a", "b\u{ffff}c")]), "a: \"b\\uFFFFc\"\n");
        assert_eq!(ed("a: 'x'\n", &[set("a", "\u{fffe}")]), "a: \"\\uFFFE\"\n");
    }
    fn ed_err(text: &str, ops: &[EditOp]) -> EditError {
        super::super::testkit::ed_err(Format::Yaml, text, ops)
    }
    fn unsupported(e: EditError) -> String {
        match e {
            EditError::Unsupported { format, reason } => format!("{format}: {reason}"),
            other => panic!("expected Unsupported, got {other:?}"),
        }
    }

    const DOC: &str = "# top\nname: svc   # the name\nport: 8080\nratio: 0.5\nsingle: 'a''b'\ndouble: \"x\\ty\"\nempty:\nnested:\n  list:\n    - one\n    - 2\n  deep:\n    on: true\n";

    #[test]
    fn scalars_replaced_in_place() {
        assert_eq!(
            ed(DOC, &[set("name", "web"), set("port", "9090"), set("ratio", "2"), set("nested.deep.on", "false")]),
            DOC.replace("svc", "web").replace("8080", "9090").replace("0.5", "2.0").replace("on: true", "on: false")
        );
        assert_eq!(
            ed(
                DOC,
                &[
                    set("single", "it's"),
                    set("double", "q\"r"),
                    set("nested.list[1]", "3"),
                    set("nested.list[0]", "uno")
                ]
            ),
            DOC.replace("'a''b'", "'it''s'")
                .replace("\"x\\ty\"", "\"q\\\"r\"")
                .replace("- 2", "- 3")
                .replace("- one", "- uno")
        );
    }

    #[test]
    fn type_kept_or_quoted() {
        // A string that would read as a number is quoted (double: the file's usual style).
        assert_eq!(ed(DOC, &[set("name", "30")]), DOC.replace("svc", "\"30\""));
        assert_eq!(ed(DOC, &[set("name", "a: b")]), DOC.replace("svc", "\"a: b\""));
        assert_eq!(ed(DOC, &[set("name", "yes")]), DOC.replace("svc", "yes"));
        assert_eq!(ed(DOC, &[set("name", "")]), DOC.replace("svc", "\"\""));
        assert_eq!(ed(DOC, &[set("port", "abc")]), DOC.replace("8080", "abc"));
        assert_eq!(ed(DOC, &[typed("port", Value::string("8081"))]), DOC.replace("8080", "\"8081\""));
        assert_eq!(ed(DOC, &[typed("single", Value::int(5))]), DOC.replace("'a''b'", "5"));
        assert_eq!(ed(DOC, &[typed("port", Value::null())]), DOC.replace("8080", "null"));
        // A string stays a string, quoted the file's way when it would read as another type.
        assert_eq!(ed("a: 'x'\nb: 'y'\nc: z\n", &[set("c", "true")]), "a: 'x'\nb: 'y'\nc: 'true'\n");
        assert_eq!(ed("a: 'x'\nb: 'y'\nc: z\n", &[typed("c", Value::bool(true))]), "a: 'x'\nb: 'y'\nc: true\n");
        assert_eq!(ed("a: 'x'\nb: 'y'\nc: z\n", &[typed("c", Value::string("true"))]), "a: 'x'\nb: 'y'\nc: 'true'\n");
        assert_eq!(ed("a: 'x'\n", &[set("a", "two\nlines")]), "a: \"two\\nlines\"\n");
    }

    #[test]
    fn empty_values_get_filled() {
        assert_eq!(ed(DOC, &[set("empty", "v")]), DOC.replace("empty:\n", "empty: v\n"));
        assert_eq!(ed("a:   # c\n", &[set("a", "1")]), "a: 1   # c\n");
        assert_eq!(ed("l:\n  -\n  - x\n", &[set("l[0]", "1")]), "l:\n  - 1\n  - x\n");
    }

    #[test]
    fn documents_and_crlf() {
        let text = "a: 1\n---\nb: 2\n";
        assert_eq!(ed(text, &[set("[1].b", "3")]), "a: 1\n---\nb: 3\n");
        assert_eq!(ed("---\na: 1\n...\n", &[set("a", "2")]), "---\na: 2\n...\n");
        assert_eq!(ed("a: 1\r\nb: x\r\n", &[set("b", "y")]), "a: 1\r\nb: y\r\n");
        assert_eq!(ed("k: é\nü: 1\n", &[set("ü", "2"), set("k", "ñ")]), "k: ñ\nü: 2\n");
        assert_eq!(ed("\"a.b\": 1\n'c': x\n", &[set("a.b", "2"), set("c", "y")]), "\"a.b\": 2\n'c': y\n");
        assert_eq!(ed("1: one\ntrue: yes\n", &[set("1", "uno"), set("true", "si")]), "1: uno\ntrue: si\n");
        assert_eq!(ed("- a: 1\n  b:\n- c: 3\n", &[set("[0].b", "2"), set("[1].c", "4")]), "- a: 1\n  b: 2\n- c: 4\n");
    }

    #[test]
    fn unsupported_cases() {
        assert_eq!(unsupported(ed_err(DOC, &[set("new", "1")])), "yaml: adding a new key is not supported in place");
        assert_eq!(unsupported(ed_err(DOC, &[remove("port")])), "yaml: removing a key is not supported in place");
        assert_eq!(unsupported(ed_err("a: {b: 1}\n", &[set("a.b", "2")])), "yaml: `a.b` is inside a YAML flow mapping");
        assert_eq!(
            unsupported(ed_err("a: [1, 2]\n", &[set("a[0]", "2")])),
            "yaml: `a[0]` is inside a YAML flow sequence"
        );
        assert!(unsupported(ed_err("a: &x 1\nb: *x\n", &[set("a", "2")])).contains("anchored"));
        assert!(unsupported(ed_err("a: &x 1\nb: *x\n", &[set("b", "2")])).contains("alias"));
        let merged = "base: &b\n  x: 1\nprod:\n  <<: *b\n  y: 2\n";
        assert!(unsupported(ed_err(merged, &[set("prod.x", "2")])).contains("merge"));
        assert!(unsupported(ed_err(merged, &[set("base.x", "2")])).contains("anchored"));
        assert_eq!(ed(merged, &[set("prod.y", "3")]), merged.replace("y: 2", "y: 3"));
        assert!(unsupported(ed_err("a: |\n  text\n", &[set("a", "2")])).contains("block scalar"));
        assert!(unsupported(ed_err("a: !Ref x\n", &[set("a", "2")])).contains("tagged"));
        assert!(unsupported(ed_err(DOC, &[set("nested", "2")])).contains("mapping"));
    }

    #[test]
    fn errors() {
        assert_eq!(ed_err(DOC, &[remove("nope")]), EditError::UnknownKey("nope".into()));
        assert_eq!(ed_err(DOC, &[typed("port", Value::masked("ab", "key name"))]), EditError::Masked("port".into()));
        assert!(matches!(ed_err("a: [1\n", &[set("a", "1")]), EditError::InvalidInput(_)));
    }
}
