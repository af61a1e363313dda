//! sysctl edits, by hand on the grammar of `crate::sysctl` (which stays the judge: the edit
//! is verified by re-parsing).
//!
//! Set replaces the value of the last assignment of the key (the one sysctl applies last)
//! and nothing else on the line: the key as written (path form, `-` prefix), the spacing
//! around `=`. A new key is appended as `key = value` (`key=value` when every other line of
//! the file is written that way). Remove deletes every assignment of the key. sysctl has no
//! quoting, so a value with a line break, surrounding blanks, or a string that would read
//! as another type (`"1"`) cannot be written.

use std::ops::Range;

use super::{Applied, EditError, EditOp, Expect, line_ending, line_text, remove_ranges, splice, unsupported};
use crate::Format;
use crate::flatten::infer_text;
use crate::sysctl::{normalise_key, parse_sysctl};

/// One `key = value` line as written.
struct Assignment {
    key: String,
    /// The whole line, terminator included.
    line: Range<usize>,
    /// The value as written (empty where an empty value would go).
    value: Range<usize>,
    /// Written `key=value`, without blanks around `=`.
    tight: bool,
}

fn scan(text: &str) -> Result<Vec<Assignment>, EditError> {
    parse_sysctl(text)
        .map_err(|e| EditError::InvalidInput(format!("{} (line {}, column {})", e.message, e.line, e.column)))?;
    let mut out = Vec::new();
    let mut start = 0;
    while start < text.len() {
        let end = text[start..].find('\n').map(|i| start + i + 1).unwrap_or(text.len());
        let line = &text[start..end];
        let body = line.trim_end_matches(['\n', '\r']);
        let trimmed = body.trim_start();
        if !trimmed.trim_end().is_empty()
            && !trimmed.starts_with(['#', ';'])
            && let Some(eq) = body.find('=')
        {
            let raw_key = body[..eq].trim();
            let key = normalise_key(raw_key.strip_prefix('-').unwrap_or(raw_key).trim_start());
            let after = &body[eq + 1..];
            let lead = after.len() - after.trim_start().len();
            let value_start = start + eq + 1 + lead;
            let value_end = (start + eq + 1 + after.trim_end().len()).max(value_start);
            let tight = body[..eq].ends_with(|c: char| !c.is_whitespace()) && lead == 0;
            out.push(Assignment { key, line: start..end, value: value_start..value_end, tight });
        }
        start = end;
    }
    Ok(out)
}

pub(super) fn apply(text: &str, op: &EditOp) -> Result<Applied, EditError> {
    let assignments = scan(text)?;
    match op {
        EditOp::Set { key, value } => {
            let (written, expect) = render(key, value)?;
            if let Some(a) = assignments.iter().rev().find(|a| a.key == *key) {
                return Ok(Applied { text: splice(text, a.value.clone(), &written), expect });
            }
            let valid = !key.is_empty()
                && !key.starts_with(['-', '#', ';'])
                && !key.chars().any(|c| c.is_whitespace() || c == '=')
                && normalise_key(key) == *key;
            if !valid {
                return Err(unsupported(Format::Sysctl, format!("`{key}` is not a key sysctl can hold as written")));
            }
            let tight = !assignments.is_empty() && assignments.iter().all(|a| a.tight);
            let nl = line_ending(text);
            let mut out = text.to_owned();
            if !out.is_empty() && !out.ends_with('\n') {
                out.push_str(nl);
            }
            let sep = if tight { "=" } else { " = " };
            out.push_str(&format!("{key}{sep}{written}{nl}"));
            Ok(Applied { text: out, expect })
        }
        EditOp::Remove { key } => {
            let ranges: Vec<Range<usize>> =
                assignments.iter().filter(|a| a.key == *key).map(|a| a.line.clone()).collect();
            if ranges.is_empty() {
                return Err(EditError::UnknownKey(key.clone()));
            }
            Ok(Applied { text: remove_ranges(text, ranges), expect: Expect::Gone })
        }
    }
}

/// The text to write and what it reads back as.
fn render(key: &str, value: &super::NewValue) -> Result<(String, Expect), EditError> {
    let (text, other_type) = line_text(Format::Sysctl, key, value, "sysctl")?;
    if other_type {
        return Err(unsupported(
            Format::Sysctl,
            format!("`{key}`: sysctl values have no quotes, so this string would read as another type"),
        ));
    }
    if text.contains(['\n', '\r']) || text.trim() != text {
        return Err(unsupported(
            Format::Sysctl,
            format!("`{key}`: a sysctl value cannot hold line breaks or surrounding blanks"),
        ));
    }
    let scalar = infer_text(&text);
    Ok((text.clone(), Expect::Set { scalar, raw: Some(text) }))
}

#[cfg(test)]
mod tests {
    use super::super::EditError;
    use super::super::testkit::{ed, ed_err, remove, set, typed};
    use crate::{Format, Value};

    #[test]
    fn replaces_only_the_value_of_the_last_assignment() {
        let text = "# tuning\nnet.ipv4.ip_forward = 0\n-net.ipv6.conf.all.forwarding=0\nnet/ipv4/conf/eth0.10/rp_filter = 1 \nnet.ipv4.ip_forward = 0\n";
        assert_eq!(
            ed(
                Format::Sysctl,
                text,
                &[
                    set("net.ipv4.ip_forward", "1"),
                    set("net.ipv6.conf.all.forwarding", "1"),
                    set("net.ipv4.conf.eth0/10.rp_filter", "2")
                ]
            ),
            "# tuning\nnet.ipv4.ip_forward = 0\n-net.ipv6.conf.all.forwarding=1\nnet/ipv4/conf/eth0.10/rp_filter = 2 \nnet.ipv4.ip_forward = 1\n"
        );
        assert_eq!(ed(Format::Sysctl, "vm.swappiness =\n", &[set("vm.swappiness", "10")]), "vm.swappiness =10\n");
    }

    #[test]
    fn appends_in_the_file_style_and_removes_every_assignment() {
        assert_eq!(ed(Format::Sysctl, "a.b=1", &[set("c.d", "x y")]), "a.b=1\nc.d=x y\n");
        assert_eq!(ed(Format::Sysctl, "a.b = 1\r\n", &[typed("c.d", Value::int(2))]), "a.b = 1\r\nc.d = 2\r\n");
        assert_eq!(ed(Format::Sysctl, "a = 1\n; c\na=2\nb = 3\n", &[remove("a")]), "; c\nb = 3\n");
    }

    #[test]
    fn refuses_what_sysctl_cannot_hold() {
        for op in [
            typed("a", Value::string("1")),
            typed("a", Value::null()),
            set("a", " padded"),
            set("a", "two\nlines"),
            set("net/ipv4/x", "1"),
            set("-a", "1"),
        ] {
            assert!(
                matches!(ed_err(Format::Sysctl, "a = 1\n", std::slice::from_ref(&op)), EditError::Unsupported { .. }),
                "{op:?}"
            );
        }
        assert_eq!(ed_err(Format::Sysctl, "a = 1\n", &[remove("b")]), EditError::UnknownKey("b".into()));
    }
}
