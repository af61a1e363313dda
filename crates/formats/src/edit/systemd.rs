//! systemd unit edits, by hand on the grammar of `crate::systemd` (which stays the judge:
//! every edit is verified by re-parsing).
//!
//! - `Section.Key` (one value in effect): Set replaces the value of the line that holds it
//!   and nothing else; a new key goes after the last line of its section (a new section is
//!   appended at the end). Remove deletes the lines that give it its value; an empty reset
//!   line (`ExecStart=`) stays, since in a drop-in it clears the unit's own value, which is a
//!   setting of its own.
//! - `Section.Key[i]` (a list): an item is its line; only the next index can be added and,
//!   of three or more, only the last removed (anything else would renumber the rest or turn
//!   the list into a scalar).
//! - `Section.Environment.NAME`: Set rewrites the `NAME=value` word that is in effect, or
//!   adds an `Environment=NAME=value` line; Remove deletes every word of the name in effect,
//!   and a line left without words (which would read as a reset).
//! - Values are written as is; systemd has no quoting outside `Environment=`, so a line
//!   break, surrounding blanks, an empty value (a reset), a trailing `\` (a continuation)
//!   or a string that would read as another type (`"1"`) are refused. Environment values
//!   are double-quoted when needed. Lines continued with `\` are not edited in place.

use std::ops::Range;

use super::{Applied, EditError, EditOp, Expect, NewValue, line_ending, remove_ranges, splice};
use super::{line_text, unsupported};
use crate::Format;
use crate::flatten::{Scalar, infer_text};
use crate::systemd::parse_systemd;

const F: Format = Format::Systemd;

/// One `Key=Value` line as written.
struct Assignment {
    section: String,
    key: String,
    /// All its physical lines, terminators included.
    lines: Range<usize>,
    /// The value on its first line (empty where a value would go).
    value: Range<usize>,
    continued: bool,
    empty: bool,
}

struct Scan {
    assignments: Vec<Assignment>,
    /// Per section name, the end of its last line (header or assignment) of its last
    /// occurrence.
    section_ends: Vec<(String, usize)>,
}

fn scan(text: &str) -> Result<Scan, EditError> {
    parse_systemd(text)
        .map_err(|e| EditError::InvalidInput(format!("{} (line {}, column {})", e.message, e.line, e.column)))?;
    let mut assignments: Vec<Assignment> = Vec::new();
    let mut section_ends: Vec<(String, usize)> = Vec::new();
    let mut section = String::new();
    let mut continuing = false;
    let mut start = 0;
    while start < text.len() {
        let end = text[start..].find('\n').map(|i| start + i + 1).unwrap_or(text.len());
        let body = text[start..end].trim_end_matches(['\n', '\r']);
        let trimmed = body.trim();
        let comment = trimmed.starts_with(['#', ';']);
        if continuing {
            if !comment {
                continuing = trimmed.ends_with('\\');
                if let Some(last) = assignments.last_mut() {
                    last.lines.end = end;
                    if let Some(s) = section_ends.iter_mut().find(|(s, _)| *s == last.section) {
                        s.1 = end;
                    }
                }
            }
        } else if !trimmed.is_empty() && !comment {
            if let Some(rest) = trimmed.strip_prefix('[') {
                section = rest.split(']').next().unwrap_or("").to_owned();
                section_ends.retain(|(s, _)| *s != section);
                section_ends.push((section.clone(), end));
            } else if let Some(eq) = body.find('=') {
                let after = &body[eq + 1..];
                let value_start = start + eq + 1 + (after.len() - after.trim_start().len());
                let value_end = (start + eq + 1 + after.trim_end().len()).max(value_start);
                continuing = trimmed.ends_with('\\');
                assignments.push(Assignment {
                    section: section.clone(),
                    key: body[..eq].trim().to_owned(),
                    lines: start..end,
                    value: value_start..value_end,
                    continued: continuing,
                    empty: after.trim().is_empty(),
                });
                if let Some(s) = section_ends.iter_mut().find(|(s, _)| *s == section) {
                    s.1 = end;
                }
            }
        }
        start = end;
    }
    Ok(Scan { assignments, section_ends })
}

pub(super) fn apply(text: &str, op: &EditOp) -> Result<Applied, EditError> {
    let scan = scan(text)?;
    let key = op.key();
    let Some((section, rest)) = key.split_once('.') else {
        return Err(unsupported(F, format!("`{key}`: unit keys are `Section.Key`")));
    };
    if let Some(name) = rest.strip_prefix("Environment.") {
        return environment(text, &scan, op, section, name);
    }
    let (name, index) = match rest.strip_suffix(']').and_then(|r| r.rsplit_once('[')) {
        Some((k, n)) => match n.parse::<usize>() {
            Ok(n) => (k, Some(n)),
            Err(_) => return Err(unsupported(F, format!("`{key}`: not a list index"))),
        },
        None => (rest, None),
    };
    if name.is_empty()
        || !name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-'))
        || name == "Environment"
    {
        return Err(unsupported(F, format!("`{key}` is not a unit key")));
    }
    let mine: Vec<&Assignment> = scan.assignments.iter().filter(|a| a.section == section && a.key == name).collect();
    let reset = mine.iter().rposition(|a| a.empty);
    let live: Vec<&Assignment> = mine.iter().skip(reset.map(|r| r + 1).unwrap_or(0)).copied().collect();
    let shape_ok = match index {
        None => live.len() <= 1,
        Some(i) => live.len() >= 2 && i <= live.len(),
    };
    if !shape_ok {
        return Err(match op {
            EditOp::Remove { .. } if live.is_empty() => EditError::UnknownKey(key.to_owned()),
            _ => unsupported(F, format!("`{key}`: the key holds {} values here", live.len())),
        });
    }
    match op {
        EditOp::Set { value, .. } => {
            let (written, expect) = render(key, value)?;
            let target = match index {
                None => live.first(),
                Some(i) => live.get(i),
            };
            if let Some(a) = target {
                if a.continued {
                    return Err(unsupported(F, format!("`{key}` continues over several lines")));
                }
                return Ok(Applied { text: splice(text, a.value.clone(), &written), expect });
            }
            let line = format!("{name}={written}");
            let after = match (live.last(), mine.last()) {
                (Some(a), _) | (None, Some(a)) => Some(a.lines.end),
                (None, None) => scan.section_ends.iter().find(|(s, _)| s == section).map(|(_, e)| *e),
            };
            Ok(Applied { text: insert_line(text, after, section, &line)?, expect })
        }
        EditOp::Remove { .. } => {
            if live.is_empty() {
                return Err(EditError::UnknownKey(key.to_owned()));
            }
            if let Some(i) = index
                && (i + 1 != live.len() || live.len() < 3)
            {
                return Err(unsupported(F, format!("`{key}`: only the last of three or more items can be removed")));
            }
            let ranges: Vec<Range<usize>> = match index {
                Some(i) => vec![live[i].lines.clone()],
                None => live.iter().map(|a| a.lines.clone()).collect(),
            };
            Ok(Applied { text: remove_ranges(text, ranges), expect: Expect::Gone })
        }
    }
}

/// A new line after offset `after` (the end of a line), or a new section at the end.
fn insert_line(text: &str, after: Option<usize>, section: &str, line: &str) -> Result<String, EditError> {
    let nl = line_ending(text);
    match after {
        Some(at) => {
            let lead = if at == text.len() && !text.is_empty() && !text.ends_with('\n') { nl } else { "" };
            Ok(splice(text, at..at, &format!("{lead}{line}{nl}")))
        }
        None => {
            if section.is_empty() || section.contains([']', '\n', '\r', '[']) {
                return Err(unsupported(F, format!("`{section}` is not a section name")));
            }
            let mut out = text.to_owned();
            if !out.is_empty() && !out.ends_with('\n') {
                out.push_str(nl);
            }
            if !out.is_empty() {
                out.push_str(nl);
            }
            out.push_str(&format!("[{section}]{nl}{line}{nl}"));
            Ok(out)
        }
    }
}

fn render(key: &str, value: &NewValue) -> Result<(String, Expect), EditError> {
    let (text, other_type) = line_text(F, key, value, "unit-file")?;
    if other_type {
        return Err(unsupported(
            F,
            format!("`{key}`: unit values have no quotes; this string would read as another type"),
        ));
    }
    if text.is_empty() || text.trim() != text || text.contains(['\n', '\r']) || text.ends_with('\\') {
        return Err(unsupported(
            F,
            format!("`{key}`: unit values cannot be empty, end in `\\`, hold line breaks or surrounding blanks"),
        ));
    }
    let scalar = infer_text(&text);
    Ok((text.clone(), Expect::Set { scalar, raw: Some(text) }))
}

/// One `NAME=value` word of an `Environment=` line: its bytes in the text.
struct Word {
    name: String,
    range: Range<usize>,
}

/// The words of a value starting at byte `base`, as `crate::systemd` splits them.
fn words(value: &str, base: usize) -> Vec<Word> {
    let mut out = Vec::new();
    let mut text = String::new();
    let mut chars = value.char_indices().peekable();
    while let Some(&(start, _)) = chars.peek() {
        if chars.next_if(|(_, c)| c.is_whitespace()).is_some() {
            continue;
        }
        text.clear();
        while let Some((_, c)) = chars.next_if(|(_, c)| !c.is_whitespace()) {
            match c {
                '"' | '\'' => {
                    while let Some((_, d)) = chars.next() {
                        if d == c {
                            break;
                        }
                        if d == '\\' && c == '"' {
                            if let Some((_, e)) = chars.next() {
                                text.push(e);
                            }
                            continue;
                        }
                        text.push(d);
                    }
                }
                '\\' => {
                    if let Some((_, e)) = chars.next() {
                        text.push(e);
                    }
                }
                c => text.push(c),
            }
        }
        let end = chars.peek().map(|&(i, _)| i).unwrap_or(value.len());
        if let Some((name, _)) = text.split_once('=') {
            out.push(Word { name: name.to_owned(), range: base + start..base + end });
        }
    }
    out
}

fn environment(text: &str, scan: &Scan, op: &EditOp, section: &str, name: &str) -> Result<Applied, EditError> {
    let key = op.key();
    let lines: Vec<&Assignment> =
        scan.assignments.iter().filter(|a| a.section == section && a.key == "Environment").collect();
    let reset = lines.iter().rposition(|a| a.empty);
    let live: Vec<&Assignment> = lines.iter().skip(reset.map(|r| r + 1).unwrap_or(0)).copied().collect();
    let found: Vec<(&Assignment, Word)> = live
        .iter()
        .flat_map(|a| words(&text[a.value.clone()], a.value.start).into_iter().map(move |w| (*a, w)))
        .filter(|(_, w)| w.name == name)
        .collect();
    match op {
        EditOp::Set { value, .. } => {
            if name.is_empty()
                || name.starts_with(|c: char| c.is_ascii_digit())
                || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
            {
                return Err(unsupported(F, format!("`{key}`: not an environment variable name")));
            }
            let (word, expect) = render_env(key, name, value)?;
            if let Some((a, w)) = found.last() {
                if a.continued {
                    return Err(unsupported(F, format!("`{key}`: its line continues over several lines")));
                }
                return Ok(Applied { text: splice(text, w.range.clone(), &word), expect });
            }
            let after = match lines.last() {
                Some(a) => Some(a.lines.end),
                None => scan.section_ends.iter().find(|(s, _)| s == section).map(|(_, e)| *e),
            };
            Ok(Applied { text: insert_line(text, after, section, &format!("Environment={word}"))?, expect })
        }
        EditOp::Remove { .. } => {
            if found.is_empty() {
                return Err(EditError::UnknownKey(key.to_owned()));
            }
            if found.iter().any(|(a, _)| a.continued) {
                return Err(unsupported(F, format!("`{key}`: its line continues over several lines")));
            }
            let mut ranges: Vec<Range<usize>> = Vec::new();
            for a in &live {
                let all = words(&text[a.value.clone()], a.value.start);
                let gone: Vec<&Word> = all.iter().filter(|w| w.name == name).collect();
                if gone.is_empty() {
                    continue;
                }
                if gone.len() == all.len() {
                    ranges.push(a.lines.clone());
                    continue;
                }
                for w in gone {
                    // The word and the blanks after it (or before it, at the end of the line).
                    let after =
                        text[w.range.end..a.value.end].len() - text[w.range.end..a.value.end].trim_start().len();
                    if w.range.end + after < a.value.end {
                        ranges.push(w.range.start..w.range.end + after);
                    } else {
                        let before = text[a.value.start..w.range.start].len()
                            - text[a.value.start..w.range.start].trim_end().len();
                        ranges.push(w.range.start - before..w.range.end);
                    }
                }
            }
            Ok(Applied { text: remove_ranges(text, ranges), expect: Expect::Gone })
        }
    }
}

fn render_env(key: &str, name: &str, value: &NewValue) -> Result<(String, Expect), EditError> {
    let (text, typed_str) = line_text(F, key, value, "unit-file")?;
    if text.contains(['\n', '\r']) {
        return Err(unsupported(F, format!("`{key}`: a unit value cannot hold line breaks")));
    }
    let bare = !typed_str && !text.chars().any(|c| c.is_whitespace() || matches!(c, '"' | '\'' | '\\'));
    if bare {
        let scalar = infer_text(&text);
        return Ok((format!("{name}={text}"), Expect::Set { scalar, raw: Some(text) }));
    }
    let escaped = text.replace('\\', "\\\\").replace('"', "\\\"");
    Ok((format!("\"{name}={escaped}\""), Expect::Set { scalar: Scalar::Str(text.clone()), raw: Some(text) }))
}

#[cfg(test)]
mod tests {
    use super::super::EditError;
    use super::super::testkit::{ed, ed_err, remove, set, typed};
    use crate::{Format, Value};

    const F: Format = Format::Systemd;
    const UNIT: &str = "[Unit]\nDescription=App\n\n[Service]\nType=simple\nEnvironment=\"A=1 2\" B=3\nEnvironment=C=x\nExecStart=\nExecStart=/usr/bin/app # not a comment\n\n[Install]\nWantedBy=multi-user.target\n";

    #[test]
    fn replaces_values_in_place() {
        assert_eq!(
            ed(
                F,
                UNIT,
                &[
                    set("Service.Type", "notify"),
                    set("Service.ExecStart", "/usr/bin/app --fast"),
                    set("Unit.Description", "The app")
                ]
            ),
            UNIT.replace("Type=simple", "Type=notify")
                .replace("ExecStart=/usr/bin/app # not a comment", "ExecStart=/usr/bin/app --fast")
                .replace("Description=App", "Description=The app")
        );
        assert_eq!(
            ed(
                F,
                UNIT,
                &[
                    set("Service.Environment.A", "x y"),
                    set("Service.Environment.B", "4"),
                    typed("Service.Environment.C", Value::string("5"))
                ]
            ),
            UNIT.replace("\"A=1 2\" B=3", "\"A=x y\" B=4").replace("Environment=C=x", "Environment=\"C=5\"")
        );
    }

    #[test]
    fn new_keys_go_to_their_section() {
        assert_eq!(
            ed(
                F,
                UNIT,
                &[set("Service.User", "app"), set("Service.Environment.D", "1"), set("Timer.OnCalendar", "daily")]
            ),
            UNIT.replace("# not a comment\n", "# not a comment\nUser=app\n")
                .replace("Environment=C=x\n", "Environment=C=x\nEnvironment=D=1\n")
                + "\n[Timer]\nOnCalendar=daily\n"
        );
        assert_eq!(
            ed(F, "[Service]\nExecStartPre=a\nExecStartPre=b\n", &[set("Service.ExecStartPre[2]", "c")]),
            "[Service]\nExecStartPre=a\nExecStartPre=b\nExecStartPre=c\n"
        );
    }

    #[test]
    fn removes_keep_resets_and_never_leave_an_empty_environment() {
        assert_eq!(
            ed(F, UNIT, &[remove("Service.ExecStart")]),
            UNIT.replace("ExecStart=/usr/bin/app # not a comment\n", "")
        );
        assert_eq!(ed(F, UNIT, &[remove("Service.Environment.C")]), UNIT.replace("Environment=C=x\n", ""));
        assert_eq!(ed(F, UNIT, &[remove("Service.Environment.B")]), UNIT.replace("\"A=1 2\" B=3", "\"A=1 2\""));
        assert_eq!(ed(F, UNIT, &[remove("Service.Environment.A")]), UNIT.replace("\"A=1 2\" B=3", "B=3"));
    }

    #[test]
    fn refuses_what_would_change_other_keys() {
        for (text, op) in [
            ("[S]\nA=1\nA=2\n", set("S.A", "3")),
            ("[S]\nA=1\nA=2\n", remove("S.A[1]")),
            ("[S]\nA=1\nA=2\n", set("S.A[3]", "3")),
            ("[S]\nA=1\n", set("S.A", "")),
            ("[S]\nA=1\n", set("S.A", "x\\")),
            ("[S]\nA=1\n", typed("S.A", Value::string("2"))),
            ("[S]\nA=1 \\\n  2\n", set("S.A", "3")),
            ("[S]\nA=1\n", set("S.Environment.1X", "3")),
            ("[S]\nA=1\n", set("nodot", "3")),
        ] {
            assert!(matches!(ed_err(F, text, std::slice::from_ref(&op)), EditError::Unsupported { .. }), "{op:?}");
        }
        assert_eq!(ed_err(F, UNIT, &[remove("Service.Nope")]), EditError::UnknownKey("Service.Nope".into()));
    }
}
