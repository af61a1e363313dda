//! JSON, YAML and TOML: parsed with serde into an order-keeping [`Node`] tree, with parse
//! errors turned into safe [`SyntaxError`]s.

use serde::Deserialize;

use crate::errors::{SyntaxError, line_col, sanitize_message};
use crate::flatten::Node;

/// Phrases that start serde-level messages. serde_yaml_ng prefixes these with the key path
/// (`database.password: invalid type ...`), which is file text: everything before the
/// phrase is dropped.
const SERDE_PHRASES: &[&str] = &[
    "invalid type",
    "invalid value",
    "invalid length",
    "unknown variant",
    "unknown field",
    "missing field",
    "duplicate field",
    "duplicate entry",
    "recursion limit exceeded",
    "repetition limit exceeded",
    "unknown anchor",
    "deserializing nested enum",
    "failed to parse YAML number",
    "empty YAML tag",
    "expected a mapping",
    "unexpected tagged value",
];

pub(crate) fn parse_json(text: &str) -> Result<Node, SyntaxError> {
    serde_json::from_str::<Node>(text).map_err(|e| {
        let (line, column) = (e.line(), e.column());
        let mut message = e.to_string();
        if line > 0 {
            let suffix = format!(" at line {line} column {column}");
            if let Some(stripped) = message.strip_suffix(&suffix) {
                message = stripped.to_owned();
            }
        }
        // serde_json reports column 0 for an error at the very start of a line.
        let column = if line > 0 { column.max(1) } else { 0 };
        SyntaxError::new(sanitize_message(&message, text), line, column)
    })
}

pub(crate) fn parse_toml(text: &str) -> Result<Node, SyntaxError> {
    toml::from_str::<Node>(text).map_err(|e| {
        // `message()`, not Display: Display quotes the offending source line.
        let (line, column) = match e.span() {
            Some(span) => line_col(text, span.start),
            None => (0, 0),
        };
        SyntaxError::new(sanitize_message(e.message(), text), line, column)
    })
}

/// A YAML stream: one node per document (`---`).
pub(crate) fn parse_yaml(text: &str) -> Result<Vec<Node>, SyntaxError> {
    let mut docs = Vec::new();
    for document in serde_yaml_ng::Deserializer::from_str(text) {
        // After an error the iterator keeps yielding it: stop at the first.
        docs.push(Node::deserialize(document).map_err(|e| yaml_error(&e, text))?);
    }
    Ok(docs)
}

fn yaml_error(e: &serde_yaml_ng::Error, text: &str) -> SyntaxError {
    let (mut line, mut column) = match e.location() {
        Some(loc) => (loc.line(), loc.column()),
        None => (0, 0),
    };
    // At the end of a stream without a final line break the parser reports the line
    // after the last one: point at the end of the last line instead.
    let last = yaml_lines(text);
    if line > last.len() {
        line = last.len();
        column = last.last().map_or(0, |l| l.chars().count()) + 1;
    }
    let mut message = e.to_string();
    // The primary position is reported in fields; a context position (`while parsing a
    // flow sequence at line 2 column 4`) stays in the text.
    let primary = format!(" at line {line} column {column}");
    if let Some(at) = message.find(&primary) {
        message.replace_range(at..at + primary.len(), "");
    }
    if let Some(start) = SERDE_PHRASES.iter().filter_map(|p| message.find(p)).min() {
        message.drain(..start);
    }
    SyntaxError::new(sanitize_message(&message, text), line, column)
}

/// The lines of `text` as YAML counts them (`\r\n`, `\n` and a lone `\r` end a line).
pub(crate) fn yaml_lines(text: &str) -> Vec<&str> {
    text.split('\n').flat_map(|l| l.strip_suffix('\r').unwrap_or(l).split('\r')).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Found by fuzzing (`formats_yaml`): an error at the end of a stream without a final
    /// line break was reported on the line after the last one.
    #[test]
    fn yaml_errors_point_into_the_file() {
        for text in ["a: 1\nb: [1, {c", "a: 1\rb: [1, {c", "x: [\n"] {
            let e = parse_yaml(text).unwrap_err();
            let lines = yaml_lines(text);
            assert!(e.line >= 1 && e.line as usize <= lines.len(), "{text:?}: line {} of {}", e.line, lines.len());
        }
        assert_eq!(yaml_lines("a\r\nb\rc\n"), ["a", "b", "c", ""]);
    }
}
