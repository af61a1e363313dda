//! INI edits, line by line on the dialect of `crate::ini` (which stays the judge: every scan is
//! checked against its parse).
//!
//! Set replaces the value of the last occurrence of `section.key` (the one the parser keeps),
//! keeping the delimiter, spacing, quote style and inline comment; continuation lines of the
//! old value go. A new key goes after the last key of its section (matching its indentation and
//! delimiter style), a global key before the first section, a new section at the end. INI has
//! no escapes: a value that needs quotes but holds both quote characters, or a line break,
//! cannot be written.

use std::ops::Range;

use super::{
    Applied, EditError, EditOp, Expect, NewValue, Quote, float_text, line_ending, new_scalar, remove_ranges, splice,
    unsupported,
};
use crate::Format;
use crate::flatten::{Scalar, infer_text};
use crate::ini::parse_ini;

#[derive(Debug)]
struct Entry {
    section: Option<String>,
    key: String,
    /// Just past the key name (before the blanks and the delimiter).
    key_end: usize,
    /// The value as written, quotes included (empty range where an empty value would go).
    value: Range<usize>,
    quote: Quote,
    /// The key line's leading whitespace.
    indent: String,
    /// The key line, then its continuation lines, each with its terminator.
    lines: Vec<Range<usize>>,
}

#[derive(Debug, PartialEq)]
enum Line {
    Blank,
    Comment,
    Header(String),
    Entry,
}

struct Scan {
    entries: Vec<Entry>,
    /// Every line with what it is.
    lines: Vec<(Range<usize>, Line)>,
}

pub(super) fn apply(text: &str, op: &EditOp) -> Result<Applied, EditError> {
    let scan = scan(text)?;
    match op {
        EditOp::Set { key, value } => {
            if let Some(e) = scan.entries.iter().rev().find(|e| e.key == *key) {
                let (mut written, expect) = render(key, value, e.quote)?;
                // The rest of the key line.
                let after = text[e.value.end..e.lines[0].end].trim_end_matches(['\n', '\r']);
                if e.value.is_empty() && !written.is_empty() {
                    // `key =` + value → `key = value`; `k = ; note` keeps the blank before the comment.
                    if after.starts_with([';', '#']) {
                        written.push(' ');
                    } else if e.value.start > 0
                        && matches!(text.as_bytes()[e.value.start - 1], b'=' | b':')
                        && text[..e.value.start - 1].ends_with([' ', '\t'])
                    {
                        written.insert(0, ' ');
                    }
                }
                if !e.value.is_empty()
                    && !written.is_empty()
                    && e.quote != Quote::None
                    && after.starts_with([';', '#'])
                    && !written.starts_with(['"', '\''])
                {
                    // `k = "x";note` set bare: a comment after a bare value needs a blank before it.
                    written.push(' ');
                }
                let mut range = e.value.clone();
                if written.is_empty() && !e.value.is_empty() {
                    let rest = after.trim_start_matches([' ', '\t']);
                    let blank_before = text[..range.start].ends_with([' ', '\t']);
                    if rest.starts_with([';', '#']) && after.len() > rest.len() && blank_before {
                        // `k = x ; note` → `k = ; note`.
                        range.end += 1;
                    } else if rest.trim().is_empty() {
                        // `k = x` → `k =`.
                        range.start = text[..range.start].trim_end_matches([' ', '\t']).len();
                    }
                }
                // Continuation lines come after the key line: drop them first, offsets before stay valid.
                let without = remove_ranges(text, e.lines[1..].to_vec());
                return Ok(Applied { text: splice(&without, range, &written), expect });
            }
            add_key(text, &scan, key, value)
        }
        EditOp::Remove { key } => {
            let ranges: Vec<Range<usize>> =
                scan.entries.iter().filter(|e| e.key == *key).flat_map(|e| e.lines.iter().cloned()).collect();
            if ranges.is_empty() {
                return Err(EditError::UnknownKey(key.clone()));
            }
            Ok(Applied { text: remove_ranges(text, ranges), expect: Expect::Gone })
        }
    }
}

fn add_key(text: &str, scan: &Scan, key: &str, value: &NewValue) -> Result<Applied, EditError> {
    let sections: Vec<&str> = scan
        .lines
        .iter()
        .filter_map(|(_, l)| match l {
            Line::Header(name) => Some(name.as_str()),
            _ => None,
        })
        .collect();
    // The longest existing section the key is under, else a new section up to the first dot.
    let existing = sections
        .iter()
        .filter(|s| key.len() > s.len() + 1 && key.starts_with(**s) && key.as_bytes()[s.len()] == b'.')
        .max_by_key(|s| s.len());
    let (section, name, new_section) = match existing {
        Some(s) => (Some(*s), &key[s.len() + 1..], false),
        None => match key.split_once('.') {
            Some((s, name)) => (Some(s), name, true),
            None => (None, key, false),
        },
    };
    let bad_name = name.is_empty()
        || name.trim() != name
        || name.contains(['=', ':', '\n', '\r'])
        || name.starts_with(['[', ';', '#']);
    if bad_name {
        return Err(unsupported(Format::Ini, format!("`{key}`: not a key name INI can hold")));
    }
    if let Some(s) = section
        && (s.is_empty() || s.trim() != s || s.contains([']', '\n', '\r']))
    {
        return Err(unsupported(Format::Ini, format!("`{key}`: not a section name INI can hold")));
    }
    let (written, expect) = render(key, value, Quote::None)?;
    let nl = line_ending(text);
    let in_section: Vec<&Entry> = scan.entries.iter().filter(|e| e.section.as_deref() == section).collect();
    // Delimiter and indentation like the section's last key with a value (else any key).
    let own = in_section.iter().rev().find(|e| !e.value.is_empty()).or(in_section.last()).copied();
    let template = own.or_else(|| scan.entries.iter().find(|e| !e.value.is_empty()));
    let indent = own.map(|e| e.indent.as_str()).unwrap_or("");
    let delim = template.map(|e| &text[e.key_end..e.value.start]).filter(|d| !d.is_empty()).unwrap_or(" = ");
    let line = format!("{indent}{name}{delim}{written}{nl}");

    if new_section {
        let mut out = text.to_owned();
        if !out.is_empty() && !out.ends_with('\n') {
            out.push_str(nl);
        }
        if scan.lines.iter().rev().find(|(r, _)| !r.is_empty()).is_some_and(|(_, l)| *l != Line::Blank) {
            out.push_str(nl);
        }
        out.push_str(&format!("[{}]{nl}{line}", section.unwrap_or_default()));
        return Ok(Applied { text: out, expect });
    }
    let at = match (in_section.last(), section) {
        (Some(e), _) => e.lines.last().map(|r| r.end).unwrap_or(text.len()),
        (None, Some(s)) => scan
            .lines
            .iter()
            .rev()
            .find(|(_, l)| *l == Line::Header(s.to_owned()))
            .map(|(r, _)| r.end)
            .unwrap_or(text.len()),
        // A first global key: before the first section and the comment lines right above it.
        (None, None) => match scan.lines.iter().position(|(_, l)| matches!(l, Line::Header(_))) {
            Some(mut i) => {
                while i > 0 && scan.lines[i - 1].1 == Line::Comment {
                    i -= 1;
                }
                scan.lines[i].0.start
            }
            None => text.len(),
        },
    };
    let prefix = if at == text.len() && !text.is_empty() && !text.ends_with('\n') { nl } else { "" };
    Ok(Applied { text: splice(text, at..at, &format!("{prefix}{line}")), expect })
}

/// The text to write for `value` where the old value was quoted `old`, and what it reads as.
fn render(key: &str, value: &NewValue, old: Quote) -> Result<(String, Expect), EditError> {
    let (text, must_bare, must_quote) = match value {
        NewValue::Text(t) => (t.clone(), false, false),
        NewValue::Typed(_) => match new_scalar(Format::Ini, key, value, None)? {
            Scalar::Null => {
                return Err(unsupported(
                    Format::Ini,
                    format!("`{key}`: null has no INI form (an empty value reads as an empty string)"),
                ));
            }
            Scalar::Bool(b) => (b.to_string(), true, false),
            Scalar::Int(i) => (i.to_string(), true, false),
            Scalar::Float(f) => (float_text(f), true, false),
            Scalar::Str(s) => {
                let typed_if_bare = infer_text(&s) != Scalar::Str(s.clone());
                (s, false, typed_if_bare)
            }
        },
    };
    if text.contains(['\n', '\r']) {
        return Err(unsupported(Format::Ini, format!("`{key}`: INI values cannot hold line breaks in place")));
    }
    if must_bare || (!must_quote && old == Quote::None && bare_ok(&text)) {
        let scalar = infer_text(&text);
        return Ok((text.clone(), Expect::Set { scalar, raw: Some(text) }));
    }
    let (first, second) = match old {
        Quote::Single => ('\'', '"'),
        _ => ('"', '\''),
    };
    let q = if !text.contains(first) {
        first
    } else if !text.contains(second) {
        second
    } else {
        return Err(unsupported(
            Format::Ini,
            format!("`{key}`: the value needs quotes but holds both quote characters (INI has no escapes)"),
        ));
    };
    Ok((format!("{q}{text}{q}"), Expect::Set { scalar: Scalar::Str(text.clone()), raw: Some(text) }))
}

/// Can `text` be written unquoted and read back as itself? Not with surrounding whitespace, a
/// leading quote or comment character, or a `;`/`#` after whitespace (an inline comment).
fn bare_ok(text: &str) -> bool {
    text.trim() == text
        && !text.starts_with(['"', '\'', ';', '#'])
        && !text.char_indices().any(|(i, c)| matches!(c, ';' | '#') && text[..i].ends_with([' ', '\t']))
}

/// Every line and entry with spans. Mirrors `crate::ini::parse_ini`, then checks that both
/// agree on the keys.
fn scan(text: &str) -> Result<Scan, EditError> {
    let parsed = parse_ini(text)
        .map_err(|e| EditError::InvalidInput(format!("{} (line {}, column {})", e.message, e.line, e.column)))?;
    let mut entries: Vec<Entry> = Vec::new();
    let mut lines = Vec::new();
    let mut section: Option<String> = None;
    let mut last: Option<usize> = None;
    let mut offset = 0;
    for raw in text.split('\n') {
        let start = offset;
        offset += raw.len() + 1;
        let range = start..offset.min(text.len());
        let line = raw.strip_suffix('\r').unwrap_or(raw);
        let body_at = start + (line.len() - line.trim_start().len());
        let indent = &line[..line.len() - line.trim_start().len()];
        let body = line.trim();
        if body.is_empty() {
            last = None;
            lines.push((range, Line::Blank));
            continue;
        }
        if body.starts_with([';', '#']) {
            lines.push((range, Line::Comment));
            continue;
        }
        if let Some(rest) = body.strip_prefix('[') {
            last = None;
            let close = rest.find(']').ok_or_else(disagree)?;
            let name = rest[..close].trim().to_owned();
            section = Some(name.clone());
            lines.push((range, Line::Header(name)));
            continue;
        }
        let delimiter = body.find(['=', ':']);
        if let (None, false, Some(i)) = (delimiter, indent.is_empty(), last) {
            entries[i].lines.push(range.clone());
            lines.push((range, Line::Entry));
            continue;
        }
        let d = delimiter.ok_or_else(disagree)?;
        let key = body[..d].trim();
        let key_end = body_at + body[..d].trim_end().len();
        let rest = &body[d + 1..];
        let rest_at = body_at + d + 1;
        let (value, quote) = value_span(rest, rest_at);
        entries.push(Entry {
            key: match &section {
                Some(s) => format!("{s}.{key}"),
                None => key.to_owned(),
            },
            section: section.clone(),
            key_end,
            value,
            quote,
            indent: indent.to_owned(),
            lines: vec![range.clone()],
        });
        last = Some(entries.len() - 1);
        lines.push((range, Line::Entry));
    }
    if entries.len() != parsed.len() || entries.iter().zip(&parsed).any(|(e, p)| e.key != p.key) {
        return Err(disagree());
    }
    Ok(Scan { entries, lines })
}

fn disagree() -> EditError {
    EditError::Verification("the INI scanner disagrees with the parser".to_owned())
}

/// Where the value sits in `rest` (the text after the delimiter, line end trimmed), as
/// `crate::ini` reads it: a wholly quoted literal, or unquoted text before an inline comment.
fn value_span(rest: &str, at: usize) -> (Range<usize>, Quote) {
    let lead = rest.len() - rest.trim_start().len();
    let trimmed = rest.trim();
    if let Some(q) = trimmed.chars().next().filter(|c| matches!(c, '"' | '\''))
        && let Some(end) = trimmed[1..].find(q)
    {
        let after = trimmed[1 + end + 1..].trim_start();
        if after.is_empty() || after.starts_with([';', '#']) {
            let quote = if q == '"' { Quote::Double } else { Quote::Single };
            return (at + lead..at + lead + end + 2, quote);
        }
    }
    let cut = rest
        .char_indices()
        .find(|&(i, c)| matches!(c, ';' | '#') && rest[..i].ends_with([' ', '\t']))
        .map(|(i, _)| i)
        .unwrap_or(rest.len());
    let v = &rest[..cut];
    let v_lead = v.len() - v.trim_start().len();
    let v_trim = v.trim();
    if v_trim.is_empty() {
        return (at + cut..at + cut, Quote::None);
    }
    (at + v_lead..at + v_lead + v_trim.len(), Quote::None)
}

#[cfg(test)]
mod tests {
    use super::super::{EditError, EditOp};
    use crate::{Format, Value};

    use super::super::testkit::{remove, set, typed};

    fn ed(text: &str, ops: &[EditOp]) -> String {
        super::super::testkit::ed(Format::Ini, text, ops)
    }
    fn ed_err(text: &str, ops: &[EditOp]) -> EditError {
        super::super::testkit::ed_err(Format::Ini, text, ops)
    }

    const DOC: &str = "; head\ntop = 1\n\n[s]\na = 1 ; one\nb: \"q\"\n  c=x\n\n[t] # tail\nd = 4\n";

    #[test]
    fn replaces_only_the_value() {
        assert_eq!(
            ed(DOC, &[set("top", "2"), set("s.a", "10"), set("s.b", "r"), set("s.c", "y"), set("t.d", "5 6")]),
            "; head\ntop = 2\n\n[s]\na = 10 ; one\nb: \"r\"\n  c=y\n\n[t] # tail\nd = 5 6\n"
        );
    }

    #[test]
    fn quoting() {
        assert_eq!(ed("[s]\na = 1\n", &[set("s.a", " padded")]), "[s]\na = \" padded\"\n");
        assert_eq!(ed("[s]\na = 1\n", &[set("s.a", "x ; y")]), "[s]\na = \"x ; y\"\n");
        assert_eq!(ed("[s]\na = 1\n", &[set("s.a", "x;y")]), "[s]\na = x;y\n");
        assert_eq!(ed("[s]\na = 'q'\n", &[set("s.a", "it\"s")]), "[s]\na = 'it\"s'\n");
        assert_eq!(ed("[s]\na = \"q\"\n", &[set("s.a", "it\"s")]), "[s]\na = 'it\"s'\n");
        assert_eq!(ed("[s]\na = 1\n", &[typed("s.a", Value::string("12"))]), "[s]\na = \"12\"\n");
        assert_eq!(ed("[s]\na = \"1\"\n", &[typed("s.a", Value::int(12))]), "[s]\na = 12\n");
        assert!(matches!(ed_err("[s]\na = 1\n", &[set("s.a", " '\" ")]), EditError::Unsupported { .. }));
        assert!(matches!(ed_err("[s]\na = 1\n", &[set("s.a", "two\nlines")]), EditError::Unsupported { .. }));
        assert!(matches!(ed_err("[s]\na = 1\n", &[typed("s.a", Value::null())]), EditError::Unsupported { .. }));
        assert_eq!(
            ed_err("[s]\na = 1\n", &[typed("s.a", Value::masked("ff", "key name"))]),
            EditError::Masked("s.a".into())
        );
    }

    #[test]
    fn empty_values() {
        // An empty value reads as a string, so text that would read as a number is quoted
        // (what `text_value` tells the server); other text stays bare.
        assert_eq!(ed("[s]\na =\nb=\n", &[set("s.a", "1"), set("s.b", "x")]), "[s]\na = \"1\"\nb=x\n");
        assert_eq!(ed("[s]\ne = #fff\n", &[set("s.e", "one")]), "[s]\ne = one #fff\n");
        assert_eq!(ed("[s]\ne = 1 #fff\n", &[set("s.e", "")]), "[s]\ne = #fff\n");
        assert_eq!(ed("[s]\na = 1\n", &[set("s.a", "")]), "[s]\na =\n");
    }

    /// Found by fuzzing (`formats_ini`): a quoted value right before its comment, set to a
    /// bare number, took the comment into the value (`host=2.5;note` reads as a string),
    /// and the edit failed its own check.
    #[test]
    fn a_bare_value_keeps_the_comment_after_a_quoted_one() {
        assert_eq!(ed("[s]\nhost=\"x\";note\n", &[typed("s.host", Value::float(2.5))]), "[s]\nhost=2.5 ;note\n");
        assert_eq!(ed("[s]\nhost=\"x\";note\n", &[set("s.host", "y")]), "[s]\nhost=\"y\";note\n");
    }

    #[test]
    fn continuation_lines_replaced() {
        let text = "[s]\nlist =\n    one\n    two\nnext = 1\n";
        assert_eq!(ed(text, &[set("s.list", "x")]), "[s]\nlist = x\nnext = 1\n");
        assert_eq!(ed(text, &[remove("s.list")]), "[s]\nnext = 1\n");
    }

    #[test]
    fn duplicates_and_repeated_sections() {
        let text = "[a]\nx = 1\n[b]\ny = 2\n[a]\nx = 3\n";
        assert_eq!(ed(text, &[set("a.x", "9")]), "[a]\nx = 1\n[b]\ny = 2\n[a]\nx = 9\n");
        assert_eq!(ed(text, &[remove("a.x")]), "[a]\n[b]\ny = 2\n[a]\n");
        assert_eq!(ed(text, &[set("a.z", "5")]), "[a]\nx = 1\n[b]\ny = 2\n[a]\nx = 3\nz = 5\n");
    }

    #[test]
    fn new_keys() {
        // In a section: after its last key, in its style.
        assert_eq!(ed("[s]\n\tk=1\n\n[t]\n", &[set("s.new", "2")]), "[s]\n\tk=1\n\tnew=2\n\n[t]\n");
        assert_eq!(ed("[s]\n\n[t]\nk: 1\n", &[set("s.new", "2")]), "[s]\nnew: 2\n\n[t]\nk: 1\n");
        // Global: after the global keys, else before the first section and its comment.
        assert_eq!(ed("g = 1\n[s]\nk = 1\n", &[set("h", "2")]), "g = 1\nh = 2\n[s]\nk = 1\n");
        assert_eq!(
            ed("; file\n\n; about s\n[s]\nk = 1\n", &[set("h", "2")]),
            "; file\n\nh = 2\n; about s\n[s]\nk = 1\n"
        );
        assert_eq!(ed("", &[set("h", "2")]), "h = 2\n");
        // A new section at the end, after a blank line.
        assert_eq!(ed("[s]\nk = 1", &[set("n.x", "v w")]), "[s]\nk = 1\n\n[n]\nx = v w\n");
        assert_eq!(ed("[s]\nk = 1\n\n", &[set("n.x", "1")]), "[s]\nk = 1\n\n[n]\nx = 1\n");
        // The longest existing section wins.
        assert_eq!(ed("[a]\n[a.b]\nk = 1\n", &[set("a.b.c", "2")]), "[a]\n[a.b]\nk = 1\nc = 2\n");
        assert!(matches!(ed_err("[s]\n", &[set("s.a=b", "2")]), EditError::Unsupported { .. }));
    }

    #[test]
    fn crlf() {
        assert_eq!(ed("[s]\r\na = 1\r\n", &[set("s.a", "2"), set("s.b", "3")]), "[s]\r\na = 2\r\nb = 3\r\n");
    }

    #[test]
    fn errors() {
        assert_eq!(ed_err(DOC, &[remove("s.zz")]), EditError::UnknownKey("s.zz".into()));
        assert!(matches!(ed_err("[broken\n", &[set("a", "1")]), EditError::InvalidInput(_)));
    }
}
