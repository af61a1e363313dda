//! Keyword-file edits (sshd_config and friends), on the positions `crate::keyword` reports
//! (the parser stays the judge: every edit is verified by re-parsing).
//!
//! Edits read the file as `analyze` does (sshd dialect). Because which of several lines
//! counts depends on the program (sshd takes the first, redis the last), a single-valued
//! key set on more than one line of its block is refused rather than guessed.
//!
//! - Set replaces the arguments of the key's line and nothing else (keyword spelling,
//!   separator, indentation, trailing comment stay). A list item (`port[1]`) is its own
//!   line; the next index (`port[2]` of two) is added after the last one.
//! - A new top-level key is inserted **before the first `Match`/`Host` line**, where sshd
//!   still reads it for every connection (a key after a `Match` would belong to that
//!   block); a new key of an existing block goes after the block's last line, indented
//!   like it. Keywords are written in their canonical lower case (sshd accepts any case).
//! - Remove deletes every line of the key in its block; of a list only the last item can
//!   be removed (removing another would renumber the rest).
//! - Values are written bare when they read back the same (words separated by single
//!   spaces), otherwise double-quoted with `\"` and `\\` escaped. Items of per-argument
//!   lists (`allowusers[1]`), new blocks and line breaks in values are refused.

use std::ops::Range;

use super::{Applied, EditError, EditOp, Expect, NewValue, line_ending, remove_ranges, splice};
use super::{line_text, unsupported};
use crate::Format;
use crate::flatten::{Scalar, infer_text};
use crate::keyword::{KeywordDialect, KeywordFile, LineSpan, Repeat, repeat_rule, scan};

const F: Format = Format::Keyword;

/// One key of the file and the line that sets it.
struct Placed {
    key: String,
    /// Index into the spans.
    span: usize,
    /// For `subsystem.sftp`: the name written before the value.
    name: Option<String>,
}

pub(super) fn apply(text: &str, op: &EditOp) -> Result<Applied, EditError> {
    let (file, spans) = scan(text, KeywordDialect::Sshd)
        .map_err(|e| EditError::InvalidInput(format!("{} (line {}, column {})", e.message, e.line, e.column)))?;
    let placed = place(&file, &spans);
    let key = op.key();
    let on_lines: Vec<&Placed> = placed.iter().filter(|p| p.key == key).collect();
    let (block, keyword, index) = split_key(key);
    if per_arg(keyword) {
        return Err(unsupported(F, format!("`{key}`: items of this list share lines; edit the line itself")));
    }
    match op {
        EditOp::Set { value, .. } => {
            if let [one] = on_lines.as_slice() {
                let (written, expect) = render(key, value, one.name.as_deref())?;
                return Ok(Applied { text: splice(text, spans[one.span].value.clone(), &written), expect });
            }
            if on_lines.len() > 1 {
                return Err(unsupported(
                    F,
                    format!("`{key}` is set on several lines; which one counts depends on the program"),
                ));
            }
            // A new list item: only the next index, after the last item.
            let siblings: Vec<&Placed> = match index {
                Some(_) => {
                    let prefix = format!("{}[", key.rsplit_once('[').map(|(b, _)| b).unwrap_or(key));
                    placed
                        .iter()
                        .filter(|p| p.key.starts_with(&prefix) && !p.key[prefix.len()..].contains('.'))
                        .collect()
                }
                None => Vec::new(),
            };
            if let Some(i) = index
                && i != siblings.len()
            {
                return Err(unsupported(
                    F,
                    format!("`{key}`: only the next list index ({}) can be added", siblings.len()),
                ));
            }
            let (keyword, name) = match keyword.split_once('.') {
                Some((kw, name)) => (kw, Some(name)),
                None => (keyword, None),
            };
            if keyword.is_empty() || !keyword.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_')) {
                return Err(unsupported(F, format!("`{key}` is not a keyword")));
            }
            let rule = repeat_rule(KeywordDialect::Sshd, keyword);
            let shape_ok = match rule {
                Repeat::Single => name.is_none() && index.is_none(),
                Repeat::PerLine => name.is_none() && index.is_some(),
                Repeat::Named => name.is_some_and(bare_ok) && index.is_none(),
                Repeat::PerArg => false,
            };
            if matches!(keyword, "match" | "host") || !shape_ok {
                return Err(unsupported(F, format!("`{key}` does not name one line of this keyword")));
            }
            let (written, expect) = render(key, value, name)?;
            let at = match (siblings.last(), block) {
                (Some(last), _) => Insert::After(last.span),
                (None, None) => match spans.iter().position(|s| s.directive.is_none()) {
                    Some(first_block) => Insert::Before(first_block),
                    None => Insert::End,
                },
                (None, Some(b)) => match last_line_of_block(&file, &spans, b) {
                    Some(i) => Insert::After(i),
                    None => return Err(unsupported(F, format!("`{key}`: the file has no such block to add it to"))),
                },
            };
            Ok(Applied { text: insert(text, &spans, at, &format!("{keyword} {written}")), expect })
        }
        EditOp::Remove { .. } => {
            if on_lines.is_empty() {
                return Err(EditError::UnknownKey(key.to_owned()));
            }
            if let Some(i) = index {
                let prefix = format!("{}[", key.rsplit_once('[').map(|(b, _)| b).unwrap_or(key));
                let count = placed.iter().filter(|p| p.key.starts_with(&prefix)).count();
                if i + 1 != count {
                    return Err(unsupported(F, format!("`{key}`: only the last item of a list can be removed")));
                }
            }
            let ranges: Vec<Range<usize>> = on_lines.iter().map(|p| spans[p.span].line.clone()).collect();
            Ok(Applied { text: remove_ranges(text, ranges), expect: Expect::Gone })
        }
    }
}

enum Insert {
    Before(usize),
    After(usize),
    End,
}

/// `text` with a new line holding `body`, indented like its neighbour.
fn insert(text: &str, spans: &[LineSpan], at: Insert, body: &str) -> String {
    let nl = line_ending(text);
    match at {
        Insert::Before(i) => {
            let s = &spans[i];
            splice(text, s.line.start..s.line.start, &format!("{body}{nl}"))
        }
        Insert::After(i) => {
            let s = &spans[i];
            let end = s.line.end;
            let indent = &s.indent;
            if end == text.len() && !text.ends_with('\n') {
                splice(text, end..end, &format!("{nl}{indent}{body}{nl}"))
            } else {
                splice(text, end..end, &format!("{indent}{body}{nl}"))
            }
        }
        Insert::End => {
            let mut out = text.to_owned();
            if !out.is_empty() && !out.ends_with('\n') {
                out.push_str(nl);
            }
            out.push_str(body);
            out.push_str(nl);
            out
        }
    }
}

/// The last directive line of `block` (an empty block cannot take a key: nothing marks
/// where it ends).
fn last_line_of_block(file: &KeywordFile, spans: &[LineSpan], block: &str) -> Option<usize> {
    spans.iter().rposition(|s| s.directive.is_some_and(|d| file.directives[d].block.as_deref() == Some(block)))
}

/// `match[user=a].port[1]` → (Some(`match[user=a]`), `port`, Some(1)); `subsystem.sftp` →
/// (None, `subsystem.sftp`, None).
fn split_key(key: &str) -> (Option<&str>, &str, Option<usize>) {
    let (block, rest) = match key.find("].") {
        Some(i) if key.starts_with("match[") || key.starts_with("host[") => (Some(&key[..=i]), &key[i + 2..]),
        _ => (None, key),
    };
    match rest.strip_suffix(']').and_then(|r| r.rsplit_once('[')) {
        Some((kw, n)) => match n.parse::<usize>() {
            Ok(n) => (block, kw, Some(n)),
            Err(_) => (block, rest, None),
        },
        None => (block, rest, None),
    }
}

fn per_arg(keyword: &str) -> bool {
    matches!(repeat_rule(KeywordDialect::Sshd, keyword), Repeat::PerArg)
}

/// Every key a directive line sets, as `KeywordFile::entries` names them.
fn place(file: &KeywordFile, spans: &[LineSpan]) -> Vec<Placed> {
    let mut counts: std::collections::HashMap<String, usize> = std::collections::HashMap::new();
    let mut out = Vec::new();
    for (si, s) in spans.iter().enumerate() {
        let Some(d) = s.directive.map(|d| &file.directives[d]) else { continue };
        let base = match &d.block {
            Some(b) => format!("{b}.{}", d.keyword),
            None => d.keyword.clone(),
        };
        match repeat_rule(file.dialect, &d.keyword) {
            Repeat::Single => out.push(Placed { key: base, span: si, name: None }),
            Repeat::PerLine => {
                let n = counts.entry(base.clone()).or_insert(0);
                out.push(Placed { key: format!("{base}[{n}]"), span: si, name: None });
                *n += 1;
            }
            Repeat::PerArg => {
                for _ in &d.args {
                    let n = counts.entry(base.clone()).or_insert(0);
                    out.push(Placed { key: format!("{base}[{n}]"), span: si, name: None });
                    *n += 1;
                }
            }
            Repeat::Named => match d.args.first() {
                Some(name) => out.push(Placed { key: format!("{base}.{name}"), span: si, name: Some(name.clone()) }),
                None => out.push(Placed { key: base, span: si, name: None }),
            },
        }
    }
    out
}

/// Words separated by single spaces, nothing the parser would read differently.
fn bare_ok(text: &str) -> bool {
    !text.is_empty()
        && text.split(' ').all(|w| {
            !w.is_empty() && !w.starts_with('#') && !w.chars().any(|c| c.is_whitespace() || matches!(c, '"' | '\''))
        })
}

/// The arguments to write (after `name ` for a named key) and what they read back as.
fn render(key: &str, value: &NewValue, name: Option<&str>) -> Result<(String, Expect), EditError> {
    let (text, must_quote) = line_text(F, key, value, "keyword-file")?;
    if text.contains(['\n', '\r']) {
        return Err(unsupported(F, format!("`{key}`: a value cannot hold line breaks")));
    }
    if name.is_some() && must_quote {
        // Quoted, it would be one argument of several, which reads back as text.
        return Err(unsupported(F, format!("`{key}`: this string would read as another type here")));
    }
    let prefix = name.map(|n| format!("{n} ")).unwrap_or_default();
    if !must_quote && bare_ok(&text) {
        let scalar = infer_text(&text);
        return Ok((format!("{prefix}{text}"), Expect::Set { scalar, raw: Some(text) }));
    }
    let escaped = text.replace('\\', "\\\\").replace('"', "\\\"");
    Ok((format!("{prefix}\"{escaped}\""), Expect::Set { scalar: Scalar::Str(text.clone()), raw: Some(text) }))
}

#[cfg(test)]
mod tests {
    use super::super::EditError;
    use super::super::testkit::{ed, ed_err, remove, set, typed};
    use crate::{Format, Value};

    const F: Format = Format::Keyword;
    const SSHD: &str = "# head\nInclude /etc/ssh/sshd_config.d/*.conf\nPort 22\nPermitRootLogin no # hardening\nSubsystem\tsftp\t/usr/lib/openssh/sftp-server\n\nMatch User anoncvs\n\tX11Forwarding no\n\tPermitTTY no\n";

    #[test]
    fn replaces_only_the_arguments() {
        assert_eq!(
            ed(
                F,
                SSHD,
                &[
                    set("permitrootlogin", "prohibit-password"),
                    set("port[0]", "2222"),
                    set("match[user=anoncvs].permittty", "yes")
                ]
            ),
            SSHD.replace("PermitRootLogin no", "PermitRootLogin prohibit-password")
                .replace("Port 22", "Port 2222")
                .replace("PermitTTY no", "PermitTTY yes")
        );
        assert_eq!(
            ed(F, SSHD, &[set("subsystem.sftp", "internal-sftp")]),
            SSHD.replace("sftp\t/usr/lib/openssh/sftp-server", "sftp internal-sftp")
        );
        assert_eq!(ed(F, "Banner=none\n", &[set("banner", "/etc/issue net  x")]), "Banner=\"/etc/issue net  x\"\n");
        assert_eq!(ed(F, "Banner x\n", &[typed("banner", Value::string("22"))]), "Banner \"22\"\n");
    }

    #[test]
    fn new_keys_go_where_sshd_reads_them() {
        assert_eq!(
            ed(F, SSHD, &[set("passwordauthentication", "no")]),
            SSHD.replace("\nMatch User", "\npasswordauthentication no\nMatch User")
        );
        assert_eq!(
            ed(F, SSHD, &[set("match[user=anoncvs].forcecommand", "cvs server"), set("port[1]", "2222")]),
            SSHD.replace("PermitTTY no\n", "PermitTTY no\n\tforcecommand cvs server\n")
                .replace("Port 22\n", "Port 22\nport 2222\n")
        );
        assert_eq!(ed(F, "Port 22", &[set("usepam", "yes")]), "Port 22\nusepam yes\n");
    }

    #[test]
    fn removes_and_refuses() {
        assert_eq!(ed(F, SSHD, &[remove("permitrootlogin")]), SSHD.replace("PermitRootLogin no # hardening\n", ""));
        assert_eq!(ed(F, "Port 22\nPort 2222\n", &[remove("port[1]")]), "Port 22\n");
        for (text, op) in [
            ("Port 22\nPort 2222\n", remove("port[0]")),
            ("A 1\na 2\n", set("a", "3")),
            ("AllowUsers a b\n", set("allowusers[1]", "c")),
            ("Port 22\n", set("port[3]", "1")),
            ("Port 22\n", set("match[user=x].permittty", "no")),
            ("Port 22\n", set("banner", "two\nlines")),
            ("Port 22\n", typed("banner", Value::null())),
            ("Port 22\n", set("x.y", "1")),
            ("Port 22\n", set("usepam[0]", "yes")),
            ("Banner x\n", set("listenaddress", "::")),
            ("Subsystem sftp x\n", typed("subsystem.sftp", Value::string("1"))),
        ] {
            assert!(matches!(ed_err(F, text, std::slice::from_ref(&op)), EditError::Unsupported { .. }), "{op:?}");
        }
        assert_eq!(ed_err(F, "Port 22\n", &[remove("x")]), EditError::UnknownKey("x".into()));
    }
}
