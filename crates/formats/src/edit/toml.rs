//! TOML edits with `toml_edit`.
//!
//! A value is replaced by splicing its new text over its span in the original (any scalar:
//! in a table, a dotted key, an inline table, an array, an array of tables), so everything else
//! stays byte for byte, strings keep their quote style. Remove deletes the key's whole line
//! (the comments around it stay); keys of inline tables are removed through `DocumentMut`;
//! array items cannot be removed (the items after would be renumbered). New keys are inserted
//! through `DocumentMut` into the deepest existing table on their path (new tables for the
//! rest of the path), in the spacing style of that table's last key.

use std::ops::Range;

use toml_edit::{Document, DocumentMut, InlineTable, Item, Table, Value as TValue};

use super::{
    Applied, EditError, EditOp, Existing, Expect, NewValue, Seg, child_path, float_text, line_end, line_start,
    new_scalar, splice, split_new_key, unsupported,
};
use crate::Format;
use crate::flatten::Scalar;
use crate::structured::parse_toml;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StrStyle {
    Basic,
    Literal,
    MlBasic,
    MlLiteral,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Str(StrStyle),
    Int,
    Float,
    Bool,
    Datetime,
}

/// What holds a scalar: what removing it means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ctx {
    /// `key = value` on its own line(s) in a table (also dotted keys and array-of-tables).
    Table,
    Inline,
    Array,
}

#[derive(Debug)]
struct Leaf {
    path: String,
    segs: Vec<Seg>,
    span: Range<usize>,
    key_span: Option<Range<usize>>,
    kind: Kind,
    ctx: Ctx,
}

#[derive(Debug)]
struct Container {
    segs: Vec<Seg>,
    inline: bool,
}

#[derive(Default)]
struct Walk {
    leaves: Vec<Leaf>,
    containers: Vec<(String, Container)>,
    /// Paths of arrays (for a clear error when one is set).
    arrays: Vec<String>,
}

pub(super) fn apply(text: &str, op: &EditOp) -> Result<Applied, EditError> {
    parse_toml(text)
        .map_err(|e| EditError::InvalidInput(format!("{} (line {}, column {})", e.message, e.line, e.column)))?;
    // The two parsers disagree at the edges (an integer beyond i64 is a float to one and
    // an error to the other): a file the editor cannot read is not edited, and says so.
    let doc = Document::parse(text).map_err(|_| {
        unsupported(Format::Toml, "the in-place editor cannot read this file (e.g. an integer beyond 64 bits)")
    })?;
    let mut walk = Walk::default();
    walk_table(text, doc.as_table(), "", &[], &mut walk);
    match op {
        EditOp::Set { key, value } => {
            if let Some(leaf) = walk.leaves.iter().rev().find(|l| l.path == *key) {
                let (written, scalar) = render_for(&walk, key, value, Some(leaf.kind))?;
                return Ok(Applied { text: splice(text, leaf.span.clone(), &written), expect: set(scalar) });
            }
            if walk.arrays.contains(key) || walk.containers.iter().any(|(p, _)| p == key) {
                return Err(unsupported(
                    Format::Toml,
                    format!("`{key}` holds a table or an array; only scalars can be set"),
                ));
            }
            add_key(text, &walk, key, value)
        }
        EditOp::Remove { key } => {
            let Some(leaf) = walk.leaves.iter().rev().find(|l| l.path == *key) else {
                return Err(EditError::UnknownKey(key.clone()));
            };
            let out = match leaf.ctx {
                Ctx::Array => {
                    return Err(unsupported(
                        Format::Toml,
                        format!("`{key}` is an array item; removing it would renumber the items after it"),
                    ));
                }
                Ctx::Table => remove_line(text, leaf)?,
                Ctx::Inline => {
                    let mut doc: DocumentMut = text.parse().map_err(|_| {
                        EditError::Verification("toml_edit rejects a file the parser accepts".to_owned())
                    })?;
                    let (last, parent) = leaf.segs.split_last().ok_or_else(|| EditError::UnknownKey(key.clone()))?;
                    let (Some(table), Seg::Key(name)) =
                        (navigate(doc.as_item_mut(), parent).and_then(Item::as_table_like_mut), last)
                    else {
                        return Err(EditError::Verification(format!("`{key}` could not be found again")));
                    };
                    table.remove(name);
                    doc.to_string()
                }
            };
            Ok(Applied { text: out, expect: Expect::Gone })
        }
    }
}

fn set(scalar: Scalar) -> Expect {
    Expect::Set { scalar, raw: None }
}

/// Delete the line(s) of a `key = value` that stands alone on its line(s).
fn remove_line(text: &str, leaf: &Leaf) -> Result<String, EditError> {
    let alone = || unsupported(Format::Toml, format!("`{}` does not stand alone on its line", leaf.path));
    let key_at = leaf.key_span.as_ref().map(|s| s.start).ok_or_else(alone)?;
    let start = line_start(text, key_at);
    let end = line_end(text, leaf.span.end);
    let before = &text[start..key_at];
    let after = text[leaf.span.end..end].trim();
    if before.contains(['=', '{', '[', ',']) || !(after.is_empty() || after.starts_with('#')) {
        return Err(alone());
    }
    Ok(splice(text, start..end, ""))
}

fn add_key(text: &str, walk: &Walk, key: &str, value: &NewValue) -> Result<Applied, EditError> {
    let (container, rest) = split_new_key(Format::Toml, key, &walk.containers)?;
    let (written, scalar) = render_for(walk, key, value, None)?;
    let new_value: TValue =
        written.parse().map_err(|_| EditError::Verification(format!("the new value for `{key}` is not valid TOML")))?;
    let mut doc: DocumentMut =
        text.parse().map_err(|_| EditError::Verification("toml_edit rejects a file the parser accepts".to_owned()))?;
    let Some(parent) = navigate(doc.as_item_mut(), &container.segs) else {
        return Err(EditError::Verification(format!("the table for `{key}` could not be found again")));
    };
    let first = rest[0].as_str();
    let taken = parent.as_table_like().is_some_and(|t| t.contains_key(first));
    if taken {
        return Err(unsupported(Format::Toml, format!("`{key}`: `{first}` holds a value, not a table")));
    }
    if container.inline || !matches!(parent, Item::Table(_)) {
        // Inline tables nest inline.
        let mut v = new_value;
        for seg in rest[1..].iter().rev() {
            let mut t = InlineTable::new();
            t.insert(seg, v);
            v = TValue::InlineTable(t);
        }
        let Some(t) = parent.as_value_mut().and_then(TValue::as_inline_table_mut) else {
            return Err(EditError::Verification(format!("the table for `{key}` could not be found again")));
        };
        // The blank before `}` belongs to the last value: hand it on to the new one.
        let tail = t.iter_mut().last().and_then(|(_, last)| {
            let tail = last.decor().suffix().cloned();
            last.decor_mut().set_suffix("");
            tail
        });
        t.insert(first, v);
        if let (Some(tail), Some(new)) = (tail, t.get_mut(first)) {
            new.decor_mut().set_suffix(tail);
        }
        return Ok(Applied { text: doc.to_string(), expect: set(scalar) });
    }
    let Item::Table(table) = parent else { unreachable!("checked above") };
    if rest.len() == 1 {
        let style = table.iter().filter(|(_, i)| i.is_value()).last().map(|(k, _)| k.to_owned());
        table.insert(first, Item::Value(new_value));
        if let Some(sibling) = style {
            copy_style(table, &sibling, first);
        }
        return Ok(Applied { text: doc.to_string(), expect: set(scalar) });
    }
    // New tables for the rest of the path: dotted keys under a dotted table, else a `[header]`
    // for the innermost one (the ones between stay implicit).
    let dotted = table.is_dotted();
    let (leaf_key, tables) = rest.split_last().unwrap_or((&rest[0], &[]));
    let mut inner = Table::new();
    inner.insert(leaf_key, Item::Value(new_value));
    inner.set_dotted(dotted);
    let mut item = Item::Table(inner);
    for seg in tables[1..].iter().rev() {
        let mut t = Table::new();
        t.set_implicit(true);
        t.set_dotted(dotted);
        t.insert(seg, item);
        item = Item::Table(t);
    }
    table.insert(first, item);
    Ok(Applied { text: doc.to_string(), expect: set(scalar) })
}

/// Give key `new` the indentation and `=` spacing of key `sibling` in the same table.
fn copy_style(table: &mut Table, sibling: &str, new: &str) {
    let (Some(key_decor), Some(value_prefix)) = (
        table.key(sibling).map(|k| k.leaf_decor().clone()),
        table.get(sibling).and_then(Item::as_value).and_then(|v| v.decor().prefix()).cloned(),
    ) else {
        return;
    };
    // Only the indentation of the sibling's prefix: the comment lines above it are its own.
    let indent = key_decor.prefix().and_then(|p| p.as_str()).map(|p| p.rsplit('\n').next().unwrap_or("").to_owned());
    let suffix = key_decor.suffix().cloned();
    if let Some(mut k) = table.key_mut(new) {
        let decor = k.leaf_decor_mut();
        if let Some(indent) = indent {
            decor.set_prefix(indent);
        }
        if let Some(suffix) = suffix {
            decor.set_suffix(suffix);
        }
    }
    if let Some(v) = table.get_mut(new).and_then(Item::as_value_mut) {
        v.decor_mut().set_prefix(value_prefix);
    }
}

fn navigate<'a>(mut item: &'a mut Item, segs: &[Seg]) -> Option<&'a mut Item> {
    for seg in segs {
        item = match seg {
            Seg::Key(k) => item.get_mut(k.as_str())?,
            Seg::Index(i) => item.get_mut(*i)?,
        };
    }
    Some(item)
}

/// The text for the new value and what it reads back as. `existing` is the kind of the value
/// it replaces.
fn render_for(walk: &Walk, key: &str, value: &NewValue, existing: Option<Kind>) -> Result<(String, Scalar), EditError> {
    // A datetime stays a datetime when the new text is one (`analyze` reads it as its text).
    if existing == Some(Kind::Datetime) {
        let text = match value {
            NewValue::Text(t) => Some(t.as_str()),
            NewValue::Typed(v) => match &v.kind {
                Some(driftwatch_proto::v1::value::Kind::StringValue(s)) => Some(s.as_str()),
                _ => None,
            },
        };
        if let Some(dt) = text.and_then(|t| t.trim().parse::<toml_edit::Datetime>().ok()) {
            let written = dt.to_string();
            return Ok((written.clone(), Scalar::Str(written)));
        }
    }
    let kind = existing.map(|k| match k {
        Kind::Str(_) | Kind::Datetime => Existing::Str,
        Kind::Int => Existing::Int,
        Kind::Float => Existing::Float,
        Kind::Bool => Existing::Bool,
    });
    let scalar = new_scalar(Format::Toml, key, value, kind)?;
    let written = match &scalar {
        Scalar::Null => return Err(unsupported(Format::Toml, format!("`{key}`: TOML has no null"))),
        Scalar::Bool(b) => b.to_string(),
        Scalar::Int(i) => i.to_string(),
        Scalar::Float(f) => float_text(*f),
        Scalar::Str(s) => {
            let style = match existing {
                Some(Kind::Str(style)) => style,
                _ => file_style(walk),
            };
            toml_string(s, style)
        }
    };
    Ok((written, scalar))
}

/// The quote style most single-line strings of the file use (basic when tied or none).
fn file_style(walk: &Walk) -> StrStyle {
    let count = |style| walk.leaves.iter().filter(|l| l.kind == Kind::Str(style)).count();
    if count(StrStyle::Literal) > count(StrStyle::Basic) { StrStyle::Literal } else { StrStyle::Basic }
}

fn toml_string(s: &str, style: StrStyle) -> String {
    let bad_control =
        |allow_newline: bool| s.chars().any(|c| c.is_control() && c != '\t' && !(allow_newline && c == '\n'));
    match style {
        StrStyle::Literal if !s.contains('\'') && !bad_control(false) => format!("'{s}'"),
        // A newline right after the opening delimiter is dropped by the parser: add one to keep it.
        StrStyle::MlLiteral if !s.contains('\'') && !bad_control(true) => {
            format!("'''{}{s}'''", if s.starts_with('\n') { "\n" } else { "" })
        }
        StrStyle::MlBasic | StrStyle::MlLiteral => {
            format!("\"\"\"{}{}\"\"\"", if s.starts_with('\n') { "\n" } else { "" }, escape(s, true))
        }
        StrStyle::Basic | StrStyle::Literal => format!("\"{}\"", escape(s, false)),
    }
}

fn escape(s: &str, multi_line: bool) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' if multi_line => out.push('\n'),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            c if c.is_control() => out.push_str(&format!("\\u{:04X}", c as u32)),
            c => out.push(c),
        }
    }
    out
}

fn walk_table(text: &str, table: &Table, path: &str, segs: &[Seg], walk: &mut Walk) {
    walk.containers.push((path.to_owned(), Container { segs: segs.to_vec(), inline: false }));
    for (name, item) in table.iter() {
        let seg = Seg::Key(name.to_owned());
        let p = child_path(path, &seg);
        let s = [segs, std::slice::from_ref(&seg)].concat();
        match item {
            Item::None => {}
            Item::Value(v) => {
                let key_span = table.key(name).and_then(|k| k.span());
                walk_value(text, v, &p, &s, Ctx::Table, key_span, walk);
            }
            Item::Table(t) => walk_table(text, t, &p, &s, walk),
            Item::ArrayOfTables(a) => {
                walk.arrays.push(p.clone());
                for (i, t) in a.iter().enumerate() {
                    let seg = Seg::Index(i);
                    let s = [s.as_slice(), std::slice::from_ref(&seg)].concat();
                    walk_table(text, t, &child_path(&p, &seg), &s, walk);
                }
            }
        }
    }
}

fn walk_value(
    text: &str,
    v: &TValue,
    path: &str,
    segs: &[Seg],
    ctx: Ctx,
    key_span: Option<Range<usize>>,
    walk: &mut Walk,
) {
    let kind = match v {
        TValue::InlineTable(t) => {
            walk.containers.push((path.to_owned(), Container { segs: segs.to_vec(), inline: true }));
            for (name, v) in t.iter() {
                let seg = Seg::Key(name.to_owned());
                let s = [segs, std::slice::from_ref(&seg)].concat();
                walk_value(text, v, &child_path(path, &seg), &s, Ctx::Inline, None, walk);
            }
            return;
        }
        TValue::Array(a) => {
            walk.arrays.push(path.to_owned());
            for (i, v) in a.iter().enumerate() {
                let seg = Seg::Index(i);
                let s = [segs, std::slice::from_ref(&seg)].concat();
                walk_value(text, v, &child_path(path, &seg), &s, Ctx::Array, None, walk);
            }
            return;
        }
        TValue::String(_) => Kind::Str(StrStyle::Basic),
        TValue::Integer(_) => Kind::Int,
        TValue::Float(_) => Kind::Float,
        TValue::Boolean(_) => Kind::Bool,
        TValue::Datetime(_) => Kind::Datetime,
    };
    let Some(span) = v.span() else { return };
    let kind = match kind {
        Kind::Str(_) => {
            let raw = &text[span.clone()];
            Kind::Str(if raw.starts_with("\"\"\"") {
                StrStyle::MlBasic
            } else if raw.starts_with("'''") {
                StrStyle::MlLiteral
            } else if raw.starts_with('\'') {
                StrStyle::Literal
            } else {
                StrStyle::Basic
            })
        }
        k => k,
    };
    walk.leaves.push(Leaf { path: path.to_owned(), segs: segs.to_vec(), span, key_span, kind, ctx });
}

#[cfg(test)]
mod tests {
    use super::super::{EditError, EditOp};
    use crate::{Format, Value};

    use super::super::testkit::{remove, set, typed};

    fn ed(text: &str, ops: &[EditOp]) -> String {
        super::super::testkit::ed(Format::Toml, text, ops)
    }
    fn ed_err(text: &str, ops: &[EditOp]) -> EditError {
        super::super::testkit::ed_err(Format::Toml, text, ops)
    }

    /// Found by fuzzing (`formats_toml`): an integer beyond i64 parses (as a float) but
    /// toml_edit refuses the file; the edit failed its own check instead of saying why.
    #[test]
    fn a_file_the_editor_cannot_read_is_refused_with_a_reason() {
        let e = ed_err("big = 333333333333333333333333\nport = 1\n", &[set("port", "2")]);
        assert!(matches!(&e, EditError::Unsupported { reason, .. } if reason.contains("cannot read")), "{e}");
    }

    const DOC: &str = "# top\ntitle = \"x\"   # c\n\n[server]\nport = 8080\nhost = 'h'\nratio = 0.5\n\n# db\n[db.main]\nurl = \"\"\"\nmulti\"\"\"\nlist = [1, 2,  3]\npoint = { x = 1, y = 2 }\nwhen = 1979-05-27T07:32:00Z\n";

    #[test]
    fn values_spliced_in_place() {
        assert_eq!(
            ed(
                DOC,
                &[set("title", "30"), set("server.port", "9090"), set("server.host", "g"), set("server.ratio", "1")]
            ),
            DOC.replace("\"x\"", "\"30\"").replace("8080", "9090").replace("'h'", "'g'").replace("0.5", "1.0")
        );
        assert_eq!(
            ed(DOC, &[set("db.main.list[2]", "9"), set("db.main.point.y", "5"), set("db.main.url", "a\nb")]),
            DOC.replace("3]", "9]").replace("y = 2", "y = 5").replace("\"\"\"\nmulti\"\"\"", "\"\"\"a\nb\"\"\"")
        );
        assert_eq!(
            ed(DOC, &[set("db.main.when", "2024-01-02T03:04:05Z")]),
            DOC.replace("1979-05-27T07:32:00Z", "2024-01-02T03:04:05Z")
        );
        assert_eq!(ed(DOC, &[set("db.main.when", "soon")]), DOC.replace("1979-05-27T07:32:00Z", "\"soon\""));
        assert_eq!(ed(DOC, &[typed("server.port", Value::string("it's"))]), DOC.replace("8080", "\"it's\""));
        assert_eq!(ed(DOC, &[typed("server.host", Value::string("it's"))]), DOC.replace("'h'", "\"it's\""));
        assert_eq!(ed(DOC, &[typed("server.port", Value::float(1e20))]), DOC.replace("8080", "1.0e20"));
    }

    #[test]
    fn dotted_keys_and_arrays_of_tables() {
        let text = "a.b = 1\na.c = \"s\"\n\n[[srv]]\nname = \"one\"\n\n[[srv]]\nname = \"two\"\n";
        assert_eq!(
            ed(text, &[set("a.b", "2"), set("srv[1].name", "dos")]),
            text.replace("= 1", "= 2").replace("two", "dos")
        );
        assert_eq!(ed(text, &[remove("a.b")]), text.replace("a.b = 1\n", ""));
        assert_eq!(ed(text, &[remove("srv[0].name")]), text.replace("name = \"one\"\n", ""));
        assert_eq!(ed(text, &[set("a.d", "3")]), text.replace("a.c = \"s\"\n", "a.c = \"s\"\na.d = 3\n"));
    }

    #[test]
    fn removal_keeps_comments() {
        let text = "[s]\n# about a\na = 1  # trailing\nb = 2\n";
        assert_eq!(ed(text, &[remove("s.a")]), "[s]\n# about a\nb = 2\n");
        assert_eq!(ed(DOC, &[remove("db.main.point.x")]), DOC.replace("{ x = 1, y = 2 }", "{ y = 2 }"));
        assert!(matches!(ed_err(DOC, &[remove("db.main.list[0]")]), EditError::Unsupported { .. }));
    }

    #[test]
    fn new_keys() {
        // In an existing table, after its last key.
        assert_eq!(ed(DOC, &[set("server.workers", "4")]), DOC.replace("ratio = 0.5\n", "ratio = 0.5\nworkers = 4\n"));
        assert_eq!(ed("[s]\n  a=1\n", &[set("s.b", "x")]), "[s]\n  a=1\n  b=\"x\"\n");
        // At the root: before the first table.
        assert_eq!(ed(DOC, &[set("debug", "true")]), DOC.replace("   # c\n", "   # c\ndebug = true\n"));
        // A new table at the end.
        assert_eq!(ed("a = 1\n", &[set("log.level", "info")]), "a = 1\n\n[log]\nlevel = \"info\"\n");
        assert_eq!(ed("a = 1\n", &[set("x.y.z", "1")]), "a = 1\n\n[x.y]\nz = 1\n");
        // In an inline table.
        assert_eq!(ed("p = { x = 1 }\n", &[set("p.y", "2")]), "p = { x = 1, y = 2 }\n");
        // In an array-of-tables element; a key that needs quotes.
        let aot = "[[srv]]\nname = \"a\"\n\n[[srv]]\nname = \"b\"\n";
        assert_eq!(ed(aot, &[set("srv[1].port", "80")]), format!("{aot}port = 80\n"));
        assert_eq!(ed(aot, &[set("srv[0].port", "80")]), aot.replace("\"a\"\n", "\"a\"\nport = 80\n"));
        assert_eq!(ed("a = 1\n", &[set("b c", "x")]), "a = 1\n\"b c\" = \"x\"\n");
        // The file's literal-string habit.
        assert_eq!(ed("[s]\na = 'x'\nb = 'y'\n", &[set("s.c", "z")]), "[s]\na = 'x'\nb = 'y'\nc = 'z'\n");
    }

    #[test]
    fn unsupported_and_errors() {
        assert!(matches!(ed_err(DOC, &[typed("server.port", Value::null())]), EditError::Unsupported { .. }));
        assert!(matches!(ed_err(DOC, &[set("server", "1")]), EditError::Unsupported { .. }));
        assert!(matches!(ed_err(DOC, &[set("db.main.list", "1")]), EditError::Unsupported { .. }));
        assert!(matches!(ed_err(DOC, &[set("server.port.x", "1")]), EditError::Unsupported { .. }));
        assert!(matches!(ed_err(DOC, &[set("db.main.list[7]", "1")]), EditError::Unsupported { .. }));
        assert_eq!(ed_err(DOC, &[remove("server.nope")]), EditError::UnknownKey("server.nope".into()));
        assert_eq!(ed_err(DOC, &[typed("title", Value::masked("ab", "key name"))]), EditError::Masked("title".into()));
        assert!(matches!(ed_err("a = \n", &[set("a", "1")]), EditError::InvalidInput(_)));
    }
}
