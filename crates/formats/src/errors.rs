//! Parse errors that are safe to leave the host.
//!
//! A secret may sit on the very line that fails to parse, and parsers like to quote the
//! offending text (`invalid type: integer `99999` ...`, `duplicate entry with key "x"`,
//! TOML's Display even prints the whole source line). So messages are built only from the
//! parser's own description and then scrubbed: quoted text is dropped unless it is a bare
//! punctuation token (`expected ',' or ']'`), any remaining word that also occurs in the
//! file and does not look like plain English is replaced, and the result is capped in length.

use crate::FileError;

/// Longest message we pass on, in characters.
const MAX_MESSAGE_CHARS: usize = 200;

/// A syntax error with a 1-based position (0 = unknown).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SyntaxError {
    pub message: String,
    pub line: u32,
    pub column: u32,
}

impl SyntaxError {
    /// `message` must not contain file text (our own parsers use fixed wording).
    pub(crate) fn new(message: impl Into<String>, line: usize, column: usize) -> Self {
        Self { message: message.into(), line: clamp(line), column: clamp(column) }
    }

    pub(crate) fn into_file_error(self) -> FileError {
        FileError { message: self.message, line: self.line, column: self.column }
    }
}

fn clamp(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// 1-based line and column (in characters) of byte offset `offset` in `text`.
pub(crate) fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map(|i| i + 1).unwrap_or(0);
    let column = before[line_start..].chars().count() + 1;
    (line, column)
}

/// Make a parser's description safe: see the module docs. `content` is the file's text.
pub(crate) fn sanitize_message(raw: &str, content: &str) -> String {
    let flat = collapse_whitespace(raw);
    let unquoted = strip_quoted(&flat);
    let scrubbed = scrub_file_words(&unquoted, content);
    let mut out: String = scrubbed.trim().trim_end_matches([',', ':', ';']).trim().to_owned();
    if out.chars().count() > MAX_MESSAGE_CHARS {
        out = out.chars().take(MAX_MESSAGE_CHARS - 1).collect::<String>();
        out.push('…');
    }
    if out.is_empty() { "syntax error".to_owned() } else { out }
}

fn collapse_whitespace(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut space = false;
    for c in s.chars() {
        if c.is_whitespace() || c.is_control() {
            space = true;
        } else {
            if space && !out.is_empty() {
                out.push(' ');
            }
            space = false;
            out.push(c);
        }
    }
    out
}

/// Replace quoted text with `…`, keeping only short punctuation tokens like `','` or `` `=` ``.
/// An unbalanced quote drops the rest of the message.
fn strip_quoted(s: &str) -> String {
    let chars: Vec<char> = s.chars().collect();
    let mut out = String::with_capacity(s.len());
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let is_quote = matches!(c, '"' | '\'' | '`');
        let apostrophe =
            c == '\'' && i > 0 && chars[i - 1].is_alphabetic() && chars.get(i + 1).is_some_and(|n| n.is_alphabetic());
        if !is_quote || apostrophe {
            out.push(c);
            i += 1;
            continue;
        }
        // Shortest quoted run first: `"` inside backticks is one token.
        match chars[i + 1..].iter().position(|&d| d == c) {
            Some(len) => {
                let inner: String = chars[i + 1..i + 1 + len].iter().collect();
                out.push(c);
                if is_safe_quoted(&inner) {
                    out.push_str(&inner);
                } else {
                    out.push('…');
                }
                out.push(c);
                i += len + 2;
            }
            None => {
                out.push('…');
                break;
            }
        }
    }
    out
}

fn is_safe_quoted(inner: &str) -> bool {
    let n = inner.chars().count();
    (1..=3).contains(&n) && inner.chars().all(|c| c.is_ascii_punctuation())
}

/// Replace words that also occur in the file, unless they are plain lower-case English-ish
/// words of ordinary length (`expected`, `mapping`), which parsers use and secrets rarely are.
fn scrub_file_words(s: &str, content: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for (i, token) in s.split(' ').enumerate() {
        if i > 0 {
            out.push(' ');
        }
        let core = token.trim_matches(|c: char| !c.is_alphanumeric());
        let plain_word = core.chars().all(|c| c.is_ascii_lowercase()) && core.chars().count() < 16;
        if core.chars().count() >= 4 && !plain_word && content.contains(core) {
            out.push_str(&token.replacen(core, "…", 1));
        } else {
            out.push_str(token);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_col_counts_chars_from_one() {
        let t = "ab\ncdé\nx";
        assert_eq!(line_col(t, 0), (1, 1));
        assert_eq!(line_col(t, 2), (1, 3));
        assert_eq!(line_col(t, 3), (2, 1));
        assert_eq!(line_col(t, t.find('x').unwrap()), (3, 1));
        // Not a char boundary (inside é): rounds down.
        assert_eq!(line_col(t, 6), (2, 3));
        assert_eq!(line_col(t, 1000), (3, 2));
    }

    #[test]
    fn quoted_text_is_removed_punctuation_kept() {
        let c = "";
        assert_eq!(sanitize_message("did not find expected ',' or ']'", c), "did not find expected ',' or ']'");
        assert_eq!(sanitize_message("duplicate entry with key \"password\"", c), "duplicate entry with key \"…\"");
        assert_eq!(
            sanitize_message("invalid type: integer `99999999999999999999` as i128, expected any valid TOML value", c),
            "invalid type: integer `…` as i128, expected any valid TOML value"
        );
        assert_eq!(sanitize_message("invalid basic string, expected `\"`", c), "invalid basic string, expected `\"`");
        assert_eq!(sanitize_message("unterminated 'Canary secret", c), "unterminated …");
        assert_eq!(sanitize_message("the parser doesn't like it", c), "the parser doesn't like it");
    }

    #[test]
    fn words_from_the_file_are_replaced() {
        let content = "password = CanaryS3cret\nsome text\n";
        assert_eq!(sanitize_message("bad value CanaryS3cret here", content), "bad value … here");
        assert_eq!(sanitize_message("bad (CanaryS3cret), here", content), "bad (…), here");
        // Plain lower-case words stay even when the file has them too.
        assert_eq!(sanitize_message("expected some text", content), "expected some text");
    }

    #[test]
    fn whitespace_collapsed_length_capped_never_empty() {
        assert_eq!(sanitize_message("a\n  b\t\tc", ""), "a b c");
        assert_eq!(sanitize_message("", ""), "syntax error");
        assert_eq!(sanitize_message("\"only quoted secret stuff\"", ""), "\"…\"");
        let long = "x ".repeat(500);
        assert!(sanitize_message(&long, "").chars().count() <= MAX_MESSAGE_CHARS);
    }
}
