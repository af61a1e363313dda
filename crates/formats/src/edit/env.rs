//! `.env` edits, by hand on the grammar of `crate::env` (which stays the judge: every scan is
//! checked against its parse).
//!
//! Set replaces the value of the last assignment of the key (the one the parser keeps) and
//! nothing else on the line: `export `, spacing around `=`, the quote style and an inline
//! comment stay. A new key is appended as `KEY=value` (`export KEY=value` when every other
//! assignment is exported). Remove deletes the line(s) of every assignment of the key.

use std::ops::Range;

use super::{
    Applied, EditError, EditOp, Expect, NewValue, Quote, float_text, line_ending, new_scalar, remove_ranges, splice,
    unsupported,
};
use crate::Format;
use crate::env::parse_env;
use crate::flatten::{Scalar, infer_text};

/// One `KEY=value` as written.
#[derive(Debug)]
struct Assignment {
    key: String,
    export: bool,
    /// Start of the line the assignment begins on.
    line_start: usize,
    /// The value as written, quotes included (empty range where an empty value would go).
    value: Range<usize>,
    quote: Quote,
    /// Just past the terminator of the assignment's last line.
    end: usize,
}

pub(super) fn apply(text: &str, op: &EditOp) -> Result<Applied, EditError> {
    let assignments = scan(text)?;
    match op {
        EditOp::Set { key, value } => {
            if let Some(a) = assignments.iter().rev().find(|a| a.key == *key) {
                let (mut written, expect) = render(key, value, a.quote)?;
                // An empty value right before its comment (`KEY= # note`): keep a blank between.
                let mut range = a.value.clone();
                let after = &text[range.end..];
                if a.value.is_empty() && after.starts_with('#') && !written.is_empty() {
                    written.push(' ');
                }
                // `KEY="x"# note` set bare: a comment after a bare value needs a blank before it.
                if a.quote != Quote::None
                    && after.starts_with('#')
                    && !written.is_empty()
                    && !written.starts_with(['"', '\''])
                {
                    written.push(' ');
                }
                // Emptying `KEY=x # note` gives `KEY= # note`: one blank before the comment goes too.
                // (Only with a blank before the value: the comment needs one after `=`.)
                if written.is_empty()
                    && !a.value.is_empty()
                    && text[..range.start].ends_with([' ', '\t'])
                    && after.starts_with([' ', '\t'])
                    && after[1..].starts_with('#')
                {
                    range.end += 1;
                }
                return Ok(Applied { text: splice(text, range, &written), expect });
            }
            if key.is_empty() || !key.chars().all(is_key_char) {
                return Err(unsupported(
                    Format::Env,
                    format!("`{key}` is not a valid variable name (letters, digits, `_`, `.`, `-`)"),
                ));
            }
            let (written, expect) = render(key, value, Quote::None)?;
            let export = !assignments.is_empty() && assignments.iter().all(|a| a.export);
            let nl = line_ending(text);
            let mut out = text.to_owned();
            if !out.is_empty() && !out.ends_with('\n') {
                out.push_str(nl);
            }
            out.push_str(if export { "export " } else { "" });
            out.push_str(key);
            out.push('=');
            out.push_str(&written);
            out.push_str(nl);
            Ok(Applied { text: out, expect })
        }
        EditOp::Remove { key } => {
            let ranges: Vec<Range<usize>> =
                assignments.iter().filter(|a| a.key == *key).map(|a| a.line_start..a.end).collect();
            if ranges.is_empty() {
                return Err(EditError::UnknownKey(key.clone()));
            }
            Ok(Applied { text: remove_ranges(text, ranges), expect: Expect::Gone })
        }
    }
}

/// The text to write for `value` on a line whose value was quoted `old`, and what it reads as.
fn render(key: &str, value: &NewValue, old: Quote) -> Result<(String, Expect), EditError> {
    enum Mode {
        /// Written bare and read back typed (numbers, booleans).
        Bare,
        /// Operator text: bare when the line was and the text allows it, else quoted.
        Text,
        /// A string that would be typed if bare (`"30"`, `"true"`).
        Quoted,
    }
    let (text, mode) = match value {
        NewValue::Text(t) => (t.clone(), Mode::Text),
        NewValue::Typed(_) => match new_scalar(Format::Env, key, value, None)? {
            Scalar::Null => {
                return Err(unsupported(
                    Format::Env,
                    format!("`{key}`: null has no .env form (an empty value reads as an empty string)"),
                ));
            }
            Scalar::Bool(b) => (b.to_string(), Mode::Bare),
            Scalar::Int(i) => (i.to_string(), Mode::Bare),
            Scalar::Float(f) => (float_text(f), Mode::Bare),
            Scalar::Str(s) => {
                let mode = if infer_text(&s) == Scalar::Str(s.clone()) { Mode::Text } else { Mode::Quoted };
                (s, mode)
            }
        },
    };
    let bare = match mode {
        Mode::Bare => true,
        Mode::Text => old == Quote::None && bare_ok(&text),
        Mode::Quoted => false,
    };
    if bare {
        let scalar = infer_text(&text);
        return Ok((text.clone(), Expect::Set { scalar, raw: Some(text) }));
    }
    let written = quote(if old == Quote::None { Quote::Double } else { old }, &text);
    Ok((written, Expect::Set { scalar: Scalar::Str(text.clone()), raw: Some(text) }))
}

/// Can `text` be written unquoted? Whitespace and `#` need quotes (also for shells and other
/// dotenv readers), and so does a leading quote character.
fn bare_ok(text: &str) -> bool {
    !text.chars().any(|c| c.is_whitespace() || c == '#') && !text.starts_with(['"', '\''])
}

/// `text` in `style` quotes: single when asked and possible (no `'` inside), else double with
/// the escapes the parser reads back.
fn quote(style: Quote, text: &str) -> String {
    // Single quotes have no escapes, and a CR in them reads back as nothing before an LF.
    if style == Quote::Single && !text.contains(['\'', '\r']) {
        return format!("'{text}'");
    }
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn is_key_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')
}

/// Find every assignment with its spans. Mirrors `crate::env::parse_env` on the raw text
/// (CRLF kept), then checks that both agree on the keys.
fn scan(text: &str) -> Result<Vec<Assignment>, EditError> {
    let parsed = parse_env(text)
        .map_err(|e| EditError::InvalidInput(format!("{} (line {}, column {})", e.message, e.line, e.column)))?;
    let b = text.as_bytes();
    let n = b.len();
    // Blanks as the parser sees them after CRLF → LF: a CR right before LF is the line break.
    let is_blank = |i: usize| matches!(b[i], b' ' | b'\t') || (b[i] == b'\r' && b.get(i + 1) != Some(&b'\n'));
    let skip_blank = |mut i: usize| {
        while i < n && is_blank(i) {
            i += 1;
        }
        i
    };
    let to_next_line = |i: usize| text[i..].find('\n').map(|j| i + j + 1).unwrap_or(n);
    let mut out = Vec::new();
    let mut i = 0;
    let disagree = || EditError::Verification("the .env scanner disagrees with the parser".to_owned());
    while i < n {
        let line_start = i;
        i = skip_blank(i);
        if i >= n {
            break;
        }
        if b[i] == b'\r' || b[i] == b'\n' {
            i = to_next_line(i);
            continue;
        }
        if b[i] == b'#' {
            i = to_next_line(i);
            continue;
        }
        let mut export = false;
        if text[i..].starts_with("export") && matches!(b.get(i + 6), Some(b' ' | b'\t')) {
            export = true;
            i = skip_blank(i + 6);
        }
        let key_start = i;
        while i < n && is_key_char(b[i] as char) {
            i += 1;
        }
        let key = text[key_start..i].to_owned();
        i = skip_blank(i);
        if b.get(i) != Some(&b'=') {
            return Err(disagree());
        }
        i += 1;
        let after_eq = i;
        i = skip_blank(i);
        let had_blank = i > after_eq;
        let value_start = i;
        let (value_end, quote) = match b.get(i) {
            Some(b'"') => {
                i += 1;
                loop {
                    match b.get(i) {
                        None => return Err(disagree()),
                        Some(b'\\') => i += 2,
                        Some(b'"') => break,
                        Some(_) => i += 1,
                    }
                }
                (i + 1, Quote::Double)
            }
            Some(b'\'') => {
                let close = text[i + 1..].find('\'').ok_or_else(disagree)?;
                (i + 1 + close + 1, Quote::Single)
            }
            Some(b'#') if had_blank => (value_start, Quote::None),
            _ => {
                let mut j = i;
                while j < n && b[j] != b'\n' && !(b[j] == b'#' && j > value_start && matches!(b[j - 1], b' ' | b'\t')) {
                    j += 1;
                }
                let trimmed = text[value_start..j].trim_end_matches([' ', '\t', '\r']);
                (value_start + trimmed.len(), Quote::None)
            }
        };
        i = to_next_line(value_end);
        out.push(Assignment { key, export, line_start, value: value_start..value_end, quote, end: i });
    }
    if out.len() != parsed.len() || out.iter().zip(&parsed).any(|(a, p)| a.key != p.key) {
        return Err(disagree());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::super::{EditError, EditOp};
    use crate::{Format, Value};

    use super::super::testkit::{remove, set, typed};

    fn ed(text: &str, ops: &[EditOp]) -> String {
        super::super::testkit::ed(Format::Env, text, ops)
    }
    fn ed_err(text: &str, ops: &[EditOp]) -> EditError {
        super::super::testkit::ed_err(Format::Env, text, ops)
    }

    /// Found by fuzzing (`formats_env`): a quoted value right before its comment, set to a
    /// bare number, took the comment into the value; and a CR in single quotes read back
    /// as another string (CRLF is read as LF).
    #[test]
    fn comments_after_quotes_and_line_breaks_in_single_quotes() {
        assert_eq!(ed("A=\" x\"# note\n", &[typed("A", Value::float(1.5))]), "A=1.5 # note\n");
        assert_eq!(ed("A=\" x\"# note\n", &[set("A", "y z")]), "A=\"y z\"# note\n");
        assert_eq!(ed("Q='s'\n", &[set("Q", "a\r\nb")]), "Q=\"a\\r\\nb\"\n");
        assert_eq!(ed("Q='s'\n", &[set("Q", "a b")]), "Q='a b'\n");
    }

    #[test]
    fn replaces_only_the_value() {
        let text = "# head\n\nA=1\nexport B = two  # note\n  C=\"x y\" # q\nD='lit'\n";
        assert_eq!(
            ed(text, &[set("A", "2"), set("B", "three"), set("C", "p q"), set("D", "new")]),
            "# head\n\nA=2\nexport B = three  # note\n  C=\"p q\" # q\nD='new'\n"
        );
    }

    #[test]
    fn last_assignment_wins_and_remove_takes_all() {
        let text = "A=1\n# keep\nA=2\nB=3\n";
        assert_eq!(ed(text, &[set("A", "9")]), "A=1\n# keep\nA=9\nB=3\n");
        assert_eq!(ed(text, &[remove("A")]), "# keep\nB=3\n");
    }

    #[test]
    fn quoting_added_kept_and_escaped() {
        assert_eq!(ed("A=1\n", &[set("A", "has space")]), "A=\"has space\"\n");
        assert_eq!(ed("A=1\n", &[set("A", "x#y")]), "A=\"x#y\"\n");
        assert_eq!(ed("A=\"1\"\n", &[set("A", "say \"hi\" \\ $HOME")]), "A=\"say \\\"hi\\\" \\\\ $HOME\"\n");
        assert_eq!(ed("A='1'\n", &[set("A", "it's")]), "A=\"it's\"\n");
        assert_eq!(ed("A='1'\n", &[set("A", "two\nlines")]), "A='two\nlines'\n");
        assert_eq!(ed("A=\"1\"\n", &[set("A", "two\nlines")]), "A=\"two\\nlines\"\n");
        // Quoted text stays a string; bare text is typed by inference.
        assert_eq!(ed("A=\"20\"\n", &[set("A", "30")]), "A=\"30\"\n");
        assert_eq!(ed("A=x\n", &[set("A", "")]), "A=\n");
    }

    #[test]
    fn typed_values() {
        assert_eq!(ed("A=\"20\"\n", &[typed("A", Value::int(30))]), "A=30\n");
        assert_eq!(ed("A=20\n", &[typed("A", Value::string("30"))]), "A=\"30\"\n");
        assert_eq!(ed("A='x'\n", &[typed("A", Value::string("true"))]), "A='true'\n");
        assert_eq!(ed("A=1\n", &[typed("A", Value::float(1e20))]), "A=1.0e20\n");
        assert_eq!(ed("A=1\n", &[typed("A", Value::bool(false))]), "A=false\n");
        assert_eq!(ed("A=1\n", &[typed("A", Value::string("plain"))]), "A=plain\n");
        assert!(matches!(ed_err("A=1\n", &[typed("A", Value::null())]), EditError::Unsupported { .. }));
        assert_eq!(ed_err("A=1\n", &[typed("A", Value::masked("ab", "key name"))]), EditError::Masked("A".into()));
    }

    #[test]
    fn empty_values_and_comments() {
        assert_eq!(ed("A=\nB=1\n", &[set("A", "v")]), "A=v\nB=1\n");
        assert_eq!(ed("A= # note\n", &[set("A", "v")]), "A= v # note\n");
        assert_eq!(ed("A=   \n", &[set("A", "v")]), "A=   v\n");
        assert_eq!(ed("A=#fff\n", &[set("A", "000")]), "A=000\n");
        assert_eq!(ed("A=x # note\n", &[set("A", "")]), "A= # note\n");
    }

    #[test]
    fn multi_line_values_replaced_whole() {
        let text = "K=\"line1\nline2\"\nN=1\n";
        assert_eq!(ed(text, &[set("K", "one")]), "K=\"one\"\nN=1\n");
        assert_eq!(ed(text, &[remove("K")]), "N=1\n");
    }

    #[test]
    fn new_keys_appended() {
        assert_eq!(ed("A=1\n", &[set("B", "2")]), "A=1\nB=2\n");
        assert_eq!(ed("A=1", &[set("B", "x y")]), "A=1\nB=\"x y\"\n");
        assert_eq!(ed("", &[set("B", "2")]), "B=2\n");
        assert_eq!(ed("export A=1\nexport C=3\n", &[set("B", "2")]), "export A=1\nexport C=3\nexport B=2\n");
        assert_eq!(ed("A=1\r\n", &[set("B", "2")]), "A=1\r\nB=2\r\n");
        assert!(matches!(ed_err("A=1\n", &[set("B C", "2")]), EditError::Unsupported { .. }));
    }

    #[test]
    fn crlf_lines() {
        assert_eq!(ed("A=1\r\nB=\r\nC=3\r\n", &[set("A", "9"), set("B", "x")]), "A=9\r\nB=x\r\nC=3\r\n");
        assert_eq!(ed("A=1\r\nB=2\r\n", &[remove("A")]), "B=2\r\n");
    }

    #[test]
    fn errors() {
        assert_eq!(ed_err("A=1\n", &[remove("B")]), EditError::UnknownKey("B".into()));
        assert!(matches!(ed_err("A=\"open\n", &[set("A", "1")]), EditError::InvalidInput(_)));
    }

    #[test]
    fn ops_apply_in_order() {
        assert_eq!(ed("A=1\n", &[set("B", "2"), set("B", "3"), remove("A")]), "B=3\n");
    }
}
