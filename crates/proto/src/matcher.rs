//! Alert label matchers as operators write them: `name=value`, `name!=value`,
//! `name=~regex`, `name!~regex`. One grammar for the server (silences, notifier and
//! subscription filters) and the CLI.

use crate::v1::{self, matcher::Op};

/// Parse `name=value`, `name!=value`, `name=~regex`, `name!~regex`. The operator is the
/// first `=` or `!` (a label name has neither); blanks around the name and the value
/// are dropped, and one pair of double quotes around the value (`name="  x"`).
pub fn parse_matcher(s: &str) -> Result<v1::Matcher, String> {
    let Some(at) = s.find(['=', '!']) else {
        return Err(format!("matcher {s:?}: expected name=value, name!=value, name=~regex or name!~regex"));
    };
    let rest = &s[at..];
    let (op, len) = if rest.starts_with("!~") {
        (Op::NotRegex, 2)
    } else if rest.starts_with("!=") {
        (Op::NotEqual, 2)
    } else if rest.starts_with("=~") {
        (Op::Regex, 2)
    } else if rest.starts_with('=') {
        (Op::Equal, 1)
    } else {
        return Err(format!("matcher {s:?}: `!` must be followed by `=` or `~`"));
    };
    let name = s[..at].trim();
    if name.is_empty() {
        return Err(format!("matcher {s:?}: missing label name"));
    }
    let value = rest[len..].trim();
    let value = match value.strip_prefix('"').and_then(|v| v.strip_suffix('"')) {
        Some(inner) => inner,
        None => value,
    };
    Ok(v1::Matcher { name: name.to_string(), value: value.to_string(), op: op as i32 })
}

/// The matcher as `name=value`, `name!=value`, `name=~regex`, `name!~regex`, reading back
/// as the same matcher: the value is quoted when it would not (blanks around it, a
/// leading `~` or `=` that would change the operator, or quotes around it).
pub fn matcher_text(m: &v1::Matcher) -> String {
    let op = match Op::try_from(m.op) {
        Ok(Op::NotEqual) => "!=",
        Ok(Op::Regex) => "=~",
        Ok(Op::NotRegex) => "!~",
        _ => "=",
    };
    let v = &m.value;
    let quoted = v.trim() != v || v.starts_with(['~', '=']) || (v.len() >= 2 && v.starts_with('"') && v.ends_with('"'));
    if quoted { format!("{}{op}\"{v}\"", m.name) } else { format!("{}{op}{v}", m.name) }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Found by fuzzing (`silence_matchers`): a matcher's text did not read back as the
    /// same matcher (`x="~a"` was shown as `x=~a`, a regex; blanks and quotes around a
    /// value were lost), and an operator later in the text won over the first
    /// (`a=b!=c` was `a=b` not-equal `c`).
    #[test]
    fn matcher_text_reads_back_as_the_same_matcher() {
        let m = |name: &str, op: Op, value: &str| v1::Matcher { name: name.into(), value: value.into(), op: op as i32 };
        for (text, want) in [
            ("x=\"~a\"", m("x", Op::Equal, "~a")),
            ("x!=\"~a\"", m("x", Op::NotEqual, "~a")),
            ("x = \"  web-2\" ", m("x", Op::Equal, "  web-2")),
            ("x=\"\"a\"\"", m("x", Op::Equal, "\"a\"")),
            ("x=\"a", m("x", Op::Equal, "\"a")),
            ("x=\"=\"", m("x", Op::Equal, "=")),
            ("a=b!=c", m("a", Op::Equal, "b!=c")),
            ("a=~b=~c", m("a", Op::Regex, "b=~c")),
        ] {
            assert_eq!(parse_matcher(text).as_ref(), Ok(&want), "{text}");
            let shown = matcher_text(&want);
            assert_eq!(parse_matcher(&shown), Ok(want), "{text} shown as {shown}");
        }
        assert!(parse_matcher("a!b").is_err());
    }
}
