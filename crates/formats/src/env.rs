//! `.env` files, parsed by hand.
//!
//! Not a dotenv crate: those expand `${VAR}` / `$VAR` references from the *process
//! environment*, and an agent must never read its own environment into a snapshot (it may
//! hold the fleet key or cloud credentials). Here `$VAR` is plain text.
//!
//! Accepted syntax:
//! - `KEY=value`, `export KEY=value`, spaces around `=` allowed (`KEY = value`);
//! - keys made of ASCII letters, digits, `_`, `.` and `-`;
//! - blank lines and `#` comment lines;
//! - unquoted values run to the end of the line, trailing whitespace trimmed; a `#`
//!   preceded by whitespace starts an inline comment (`A=1 # note` is `1`, `A=x#y` is `x#y`);
//! - `'single quoted'`: literal, may span lines;
//! - `"double quoted"`: may span lines; escapes `\n` `\r` `\t` `\"` `\\` `\$`, a backslash
//!   before a line break joins the lines, other escapes are kept as written;
//! - after a closing quote only whitespace and a `#` comment may follow.
//!
//! Errors (with 1-based line and column): a line without `=`, an invalid character in a
//! key, an empty key, an unterminated quote, text after a closing quote.

use crate::errors::SyntaxError;

/// One `key = value` from a text format (.env or INI).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TextEntry {
    pub key: String,
    pub value: String,
    /// The value was quoted (or otherwise must stay a string): no type inference.
    pub literal: bool,
}

/// A position in the text, counting 1-based lines and columns (characters); the text
/// dialects' lexers (`.env` here, `nginx`) read through it.
pub(crate) struct Cursor {
    chars: Vec<char>,
    pos: usize,
    pub(crate) line: usize,
    pub(crate) col: usize,
}

impl Cursor {
    pub(crate) fn new(text: &str) -> Self {
        Self { chars: text.chars().collect(), pos: 0, line: 1, col: 1 }
    }
    pub(crate) fn peek(&self) -> Option<char> {
        self.chars.get(self.pos).copied()
    }
    fn peek_at(&self, n: usize) -> Option<char> {
        self.chars.get(self.pos + n).copied()
    }
    pub(crate) fn bump(&mut self) -> Option<char> {
        let c = self.peek()?;
        self.pos += 1;
        if c == '\n' {
            self.line += 1;
            self.col = 1;
        } else {
            self.col += 1;
        }
        Some(c)
    }
    fn starts_with(&self, s: &str) -> bool {
        s.chars().enumerate().all(|(i, c)| self.peek_at(i) == Some(c))
    }
    /// Skip spaces and tabs; returns how many.
    fn skip_blank(&mut self) -> usize {
        let mut n = 0;
        while matches!(self.peek(), Some(' ' | '\t' | '\r')) {
            self.bump();
            n += 1;
        }
        n
    }
    /// Skip to the start of the next line.
    fn skip_line(&mut self) {
        while let Some(c) = self.bump() {
            if c == '\n' {
                break;
            }
        }
    }
    fn error<T>(&self, message: &'static str) -> Result<T, SyntaxError> {
        Err(SyntaxError::new(message, self.line, self.col))
    }
}

fn is_key_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')
}

/// Parse a whole `.env` file into entries in file order (duplicates kept; the caller
/// resolves them, last one winning).
pub(crate) fn parse_env(text: &str) -> Result<Vec<TextEntry>, SyntaxError> {
    let text = text.replace("\r\n", "\n");
    let mut cur = Cursor::new(&text);
    let mut out = Vec::new();
    loop {
        cur.skip_blank();
        match cur.peek() {
            None => break,
            Some('\n') => {
                cur.bump();
                continue;
            }
            Some('#') => {
                cur.skip_line();
                continue;
            }
            Some(_) => {}
        }
        if cur.starts_with("export") && matches!(cur.peek_at(6), Some(' ' | '\t')) {
            for _ in 0..6 {
                cur.bump();
            }
            cur.skip_blank();
        }
        let mut key = String::new();
        while let Some(c) = cur.peek().filter(|&c| is_key_char(c)) {
            key.push(c);
            cur.bump();
        }
        match cur.peek() {
            Some('=') => {}
            Some(' ' | '\t' | '\r') => {
                let (line, col) = (cur.line, cur.col);
                cur.skip_blank();
                if cur.peek() != Some('=') {
                    return Err(SyntaxError::new("expected '=' after the variable name", line, col));
                }
            }
            None | Some('\n') => return cur.error("expected '=' after the variable name"),
            Some(_) => return cur.error("invalid character in variable name"),
        }
        if key.is_empty() {
            return cur.error("missing variable name before '='");
        }
        cur.bump(); // '='
        let had_blank = cur.skip_blank() > 0;
        let (value, literal) = match cur.peek() {
            Some('"') => (double_quoted(&mut cur)?, true),
            Some('\'') => (single_quoted(&mut cur)?, true),
            Some('#') if had_blank => {
                cur.skip_line();
                (String::new(), false)
            }
            _ => (unquoted(&mut cur), false),
        };
        out.push(TextEntry { key, value, literal });
    }
    Ok(out)
}

fn unquoted(cur: &mut Cursor) -> String {
    let mut value = String::new();
    while let Some(c) = cur.peek() {
        if c == '\n' {
            break;
        }
        if c == '#' && value.ends_with([' ', '\t']) {
            cur.skip_line();
            return value.trim_end().to_owned();
        }
        value.push(c);
        cur.bump();
    }
    value.trim_end().to_owned()
}

fn double_quoted(cur: &mut Cursor) -> Result<String, SyntaxError> {
    let (line, col) = (cur.line, cur.col);
    let unterminated = || Err(SyntaxError::new("unterminated double-quoted value", line, col));
    cur.bump(); // opening quote
    let mut value = String::new();
    loop {
        match cur.bump() {
            None => return unterminated(),
            Some('"') => break,
            Some('\\') => match cur.bump() {
                None => return unterminated(),
                Some('n') => value.push('\n'),
                Some('r') => value.push('\r'),
                Some('t') => value.push('\t'),
                Some('\n') => {}
                Some(c @ ('"' | '\\' | '$')) => value.push(c),
                Some(c) => {
                    value.push('\\');
                    value.push(c);
                }
            },
            Some(c) => value.push(c),
        }
    }
    after_quote(cur)?;
    Ok(value)
}

fn single_quoted(cur: &mut Cursor) -> Result<String, SyntaxError> {
    let (line, col) = (cur.line, cur.col);
    cur.bump(); // opening quote
    let mut value = String::new();
    loop {
        match cur.bump() {
            None => return Err(SyntaxError::new("unterminated single-quoted value", line, col)),
            Some('\'') => break,
            Some(c) => value.push(c),
        }
    }
    after_quote(cur)?;
    Ok(value)
}

/// After a closing quote: only blanks and an optional comment until the end of the line.
fn after_quote(cur: &mut Cursor) -> Result<(), SyntaxError> {
    cur.skip_blank();
    match cur.peek() {
        None => Ok(()),
        Some('\n' | '#') => {
            cur.skip_line();
            Ok(())
        }
        Some(_) => cur.error("unexpected text after the closing quote"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries(text: &str) -> Vec<(String, String, bool)> {
        parse_env(text).unwrap().into_iter().map(|e| (e.key, e.value, e.literal)).collect()
    }
    fn e(k: &str, v: &str, literal: bool) -> (String, String, bool) {
        (k.to_owned(), v.to_owned(), literal)
    }
    fn err(text: &str) -> (String, u32, u32) {
        let e = parse_env(text).unwrap_err();
        (e.message, e.line, e.column)
    }

    #[test]
    fn basic_lines_comments_blank_export() {
        let text = "# comment\n\nA=1\n  B = two  \nexport C=3\nexport\tD=x\n   # indented comment\nexport=5\n";
        assert_eq!(
            entries(text),
            vec![
                e("A", "1", false),
                e("B", "two", false),
                e("C", "3", false),
                e("D", "x", false),
                e("export", "5", false)
            ]
        );
    }

    #[test]
    fn inline_comments_only_after_whitespace() {
        assert_eq!(
            entries("A=1 # note\nB=x#y\nC= # only a comment\nD=#fff\nE=a\t# tab comment\n"),
            vec![
                e("A", "1", false),
                e("B", "x#y", false),
                e("C", "", false),
                e("D", "#fff", false),
                e("E", "a", false)
            ]
        );
    }

    #[test]
    fn quotes() {
        assert_eq!(
            entries(
                "A=\"12\"\nB='x # not a comment'\nC=\"a\\nb\\\"c\\\\d\\$e\\qf\"\nD=\"q\" # c\nE=''\nF=it's\nG='$HOME'\n"
            ),
            vec![
                e("A", "12", true),
                e("B", "x # not a comment", true),
                e("C", "a\nb\"c\\d$e\\qf", true),
                e("D", "q", true),
                e("E", "", true),
                e("F", "it's", false),
                e("G", "$HOME", true),
            ]
        );
    }

    #[test]
    fn multi_line_values() {
        let text = "KEY=\"-----BEGIN X-----\nline2\n-----END X-----\"\nNEXT=1\nS='a\nb'\nJ=\"one \\\ntwo\"\n";
        assert_eq!(
            entries(text),
            vec![
                e("KEY", "-----BEGIN X-----\nline2\n-----END X-----", true),
                e("NEXT", "1", false),
                e("S", "a\nb", true),
                e("J", "one two", true)
            ]
        );
    }

    #[test]
    fn crlf_and_no_trailing_newline() {
        assert_eq!(entries("A=1\r\nB=\"x\"\r\nC=y"), vec![e("A", "1", false), e("B", "x", true), e("C", "y", false)]);
    }

    #[test]
    fn no_variable_expansion() {
        assert_eq!(entries("A=${HOME}\nB=\"$PATH\"\n"), vec![e("A", "${HOME}", false), e("B", "$PATH", true)]);
    }

    #[test]
    fn errors_have_positions() {
        assert_eq!(
            err("GOOD=1\nthis line has no equals sign\n"),
            ("expected '=' after the variable name".into(), 2, 5)
        );
        assert_eq!(err("A=1\nNOEQUALS\n"), ("expected '=' after the variable name".into(), 2, 9));
        assert_eq!(err("A=1\nNOEQUALS"), ("expected '=' after the variable name".into(), 2, 9));
        assert_eq!(err("=x\n"), ("missing variable name before '='".into(), 1, 1));
        assert_eq!(err("A B=x\n"), ("expected '=' after the variable name".into(), 1, 2));
        assert_eq!(err("A!=x\n"), ("invalid character in variable name".into(), 1, 2));
        assert_eq!(err("A=1\nB=\"open\nstill open\n"), ("unterminated double-quoted value".into(), 2, 3));
        assert_eq!(err("B='open\n"), ("unterminated single-quoted value".into(), 1, 3));
        assert_eq!(err("B=\"x\"y\n"), ("unexpected text after the closing quote".into(), 1, 6));
        assert_eq!(err("B=\"x\\"), ("unterminated double-quoted value".into(), 1, 3));
        assert_eq!(err("export\n"), ("expected '=' after the variable name".into(), 1, 7));
    }
}
