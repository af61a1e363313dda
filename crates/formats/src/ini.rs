//! INI files (`.ini`, `.cfg`, `.conf`), parsed line by line.
//!
//! Hand-written rather than rust-ini, because we need to know whether a value was quoted
//! (`"12"` stays a string, rust-ini strips the quotes), we do not want backslash escapes
//! (rust-ini turns `C:\Windows` into `C:Windows`), and an unclosed `[section` must be
//! reported on its own line (rust-ini reports the end of the file).
//!
//! Dialect:
//! - `[section]` headers (surrounding blanks trimmed; a comment may follow the `]`); keys
//!   before any section are top-level (`key`), others are `section.key`; a repeated section
//!   continues the earlier one;
//! - `key = value` or `key: value` (the first `=` or `:` splits), key and value trimmed,
//!   keys may contain spaces, keys may be indented (git-config style);
//! - full-line comments start with `;` or `#`; in unquoted values `;` or `#` preceded by
//!   whitespace starts an inline comment;
//! - a value wholly in `"..."` or `'...'` is a literal string (quotes removed, no escapes);
//! - an indented line without `=`/`:` right after a key continues that key's value on a new
//!   line (Python configparser style); the value is then a string;
//! - duplicate keys: the last value wins (at the first key's position).
//!
//! Errors: an unclosed or empty section header, text after a header, a line that is
//! neither a comment, a header, a key nor a continuation.

use crate::env::TextEntry;
use crate::errors::SyntaxError;

pub(crate) fn parse_ini(text: &str) -> Result<Vec<TextEntry>, SyntaxError> {
    let mut out: Vec<TextEntry> = Vec::new();
    let mut section: Option<String> = None;
    // Index of the entry a continuation line would extend.
    let mut last: Option<usize> = None;
    for (index, raw_line) in text.split('\n').enumerate() {
        let line_no = index + 1;
        let line = raw_line.strip_suffix('\r').unwrap_or(raw_line);
        let body = line.trim_start();
        let indent = line.chars().count() - body.chars().count();
        let body = body.trim_end();
        if body.is_empty() {
            last = None;
            continue;
        }
        if body.starts_with([';', '#']) {
            continue;
        }
        if let Some(rest) = body.strip_prefix('[') {
            last = None;
            let Some(close) = rest.find(']') else {
                return Err(SyntaxError::new(
                    "section header is missing its closing ']'",
                    line_no,
                    indent + body.chars().count() + 1,
                ));
            };
            let after = &rest[close + 1..];
            let after_trimmed = after.trim_start();
            if !after_trimmed.is_empty() && !after_trimmed.starts_with([';', '#']) {
                let col = indent
                    + 1
                    + rest[..close + 1].chars().count()
                    + (after.chars().count() - after_trimmed.chars().count())
                    + 1;
                return Err(SyntaxError::new("unexpected text after the section header", line_no, col));
            }
            let name = rest[..close].trim();
            if name.is_empty() {
                return Err(SyntaxError::new("empty section name", line_no, indent + 1));
            }
            section = Some(name.to_owned());
            continue;
        }
        let delimiter = body.find(['=', ':']);
        if let (None, true, Some(i)) = (delimiter, indent > 0, last) {
            let entry = &mut out[i];
            entry.value.push('\n');
            entry.value.push_str(body);
            entry.literal = true;
            continue;
        }
        let Some(d) = delimiter else {
            return Err(SyntaxError::new("expected '=' or ':' after the key", line_no, indent + 1));
        };
        let key = body[..d].trim();
        if key.is_empty() {
            return Err(SyntaxError::new(
                "missing key before '=' or ':'",
                line_no,
                indent + body[..d].chars().count() + 1,
            ));
        }
        let (value, literal) = value_of(&body[d + 1..]);
        let key = match &section {
            Some(s) => format!("{s}.{key}"),
            None => key.to_owned(),
        };
        out.push(TextEntry { key, value, literal });
        last = Some(out.len() - 1);
    }
    Ok(out)
}

/// The value after the delimiter: a quoted literal, or unquoted text without its inline
/// comment.
fn value_of(rest: &str) -> (String, bool) {
    let trimmed = rest.trim();
    if let Some(quote) = trimmed.chars().next().filter(|c| matches!(c, '"' | '\''))
        && let Some(end) = trimmed[1..].find(quote)
    {
        let after = trimmed[1 + end + 1..].trim_start();
        if after.is_empty() || after.starts_with([';', '#']) {
            return (trimmed[1..1 + end].to_owned(), true);
        }
    }
    let mut cut = rest.len();
    for (i, c) in rest.char_indices() {
        // Whitespace must come first: `a=#fff` and `d = x;y` are values, `c = 5 ; five` is not.
        if matches!(c, ';' | '#') && rest[..i].ends_with([' ', '\t']) {
            cut = i;
            break;
        }
    }
    (rest[..cut].trim().to_owned(), false)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries(text: &str) -> Vec<(String, String, bool)> {
        parse_ini(text).unwrap().into_iter().map(|e| (e.key, e.value, e.literal)).collect()
    }
    fn e(k: &str, v: &str, literal: bool) -> (String, String, bool) {
        (k.to_owned(), v.to_owned(), literal)
    }
    fn err(text: &str) -> (String, u32, u32) {
        let e = parse_ini(text).unwrap_err();
        (e.message, e.line, e.column)
    }

    #[test]
    fn sections_keys_comments() {
        let text = "; top comment\ntop = 1\n# another\n[scheduler]\nworkers = 4\ninterval_seconds=60\n\n[ database ] ; c\nhost: db.internal\n\tindented = yes\nmy key = spaced\n";
        assert_eq!(
            entries(text),
            vec![
                e("top", "1", false),
                e("scheduler.workers", "4", false),
                e("scheduler.interval_seconds", "60", false),
                e("database.host", "db.internal", false),
                e("database.indented", "yes", false),
                e("database.my key", "spaced", false),
            ]
        );
    }

    #[test]
    fn quoting_and_inline_comments() {
        let text = "[s]\na = \"12\"\nb = '  padded '\nc = 5 ; five\nd = x;y\ne = #fff\nf=#fff\ng = \"q\" ; comment\nh = \"unbalanced\ni = C:\\Windows\\x\nj =\nk = \"a\" b\n";
        assert_eq!(
            entries(text),
            vec![
                e("s.a", "12", true),
                e("s.b", "  padded ", true),
                e("s.c", "5", false),
                e("s.d", "x;y", false),
                e("s.e", "", false),
                e("s.f", "#fff", false),
                e("s.g", "q", true),
                e("s.h", "\"unbalanced", false),
                e("s.i", "C:\\Windows\\x", false),
                e("s.j", "", false),
                e("s.k", "\"a\" b", false),
            ]
        );
    }

    #[test]
    fn continuation_lines() {
        let text = "[s]\nlist =\n    one\n    two\nnext = 1\n";
        assert_eq!(entries(text), vec![e("s.list", "\none\ntwo", true), e("s.next", "1", false)]);
    }

    #[test]
    fn crlf() {
        assert_eq!(entries("[a]\r\nb = 1\r\nc = \"x\"\r\n"), vec![e("a.b", "1", false), e("a.c", "x", true)]);
    }

    #[test]
    fn repeated_sections_continue() {
        assert_eq!(
            entries("[a]\nx=1\n[b]\ny=2\n[a]\nz=3\n"),
            vec![e("a.x", "1", false), e("b.y", "2", false), e("a.z", "3", false)]
        );
    }

    #[test]
    fn errors_have_positions() {
        assert_eq!(err("[ok]\na = 1\n[broken\nb = 2\n"), ("section header is missing its closing ']'".into(), 3, 8));
        assert_eq!(err("[ok]\nno delimiter here\n"), ("expected '=' or ':' after the key".into(), 2, 1));
        assert_eq!(err("[]\n"), ("empty section name".into(), 1, 1));
        assert_eq!(err("  [x] junk\n"), ("unexpected text after the section header".into(), 1, 7));
        assert_eq!(err("[s]\n = value\n"), ("missing key before '=' or ':'".into(), 2, 2));
        // An indented line without a key before it is not a continuation.
        assert_eq!(err("[s]\n   stray\n"), ("expected '=' or ':' after the key".into(), 2, 4));
    }
}
