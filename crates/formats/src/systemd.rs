//! systemd unit files and drop-ins (`x.service`, `x.service.d/override.conf`), as
//! systemd's own parser reads them.
//!
//! - `[Section]` headers and `Key=Value` lines (blanks around `=` trimmed); keys keep their
//!   case, since systemd's are case-sensitive: `Service.ExecStart`;
//! - blank lines, and lines whose first non-blank character is `#` or `;` (no inline
//!   comments: `#` later on a line is part of the value);
//! - a line ending in `\` continues on the next one, the backslash becoming a space;
//!   comment lines inside a continued line are skipped;
//! - values are kept as written (specifiers like `%i`, `ExecStart=` quoting), with their
//!   type inferred like INI (`LimitNOFILE=65536` is an int);
//! - **repeated keys**: every assignment adds a value and an empty one (`ExecStart=`)
//!   clears what came before, as systemd does. A key left with one value is a scalar
//!   (`Service.ExecStart`), with several a list (`Service.ExecStartPre[0]`, `[1]`): most
//!   unit keys are set once, and a drop-in's `ExecStart=` + `ExecStart=/x` pair then keeps
//!   the path the unit file had. A key left with none emits nothing;
//! - **`Environment=`** is split into its variables by systemd's quoting rules (words
//!   separated by blanks, `"..."` and `'...'` group, `\` escapes the next character), each
//!   `NAME=value` reported as `Section.Environment.NAME`; a later assignment of a name wins,
//!   an empty `Environment=` clears them all, a word without `=` is ignored (systemd
//!   ignores it too, with a warning). A value that was quoted stays a string.
//!
//! Errors (with line and column): a header without its `]` or with text after it, an
//! assignment before any section, a line without `=`, an empty key, an unclosed quote in
//! `Environment=`.

use crate::env::TextEntry;
use crate::errors::SyntaxError;

/// What one `Section.Key` holds so far.
enum Slot {
    Values(Vec<String>),
    /// `Environment=`: (name, value, quoted), a name at most once.
    Env(Vec<(String, String, bool)>),
}

pub(crate) fn parse_systemd(text: &str) -> Result<Vec<TextEntry>, SyntaxError> {
    let mut slots: Vec<(String, Slot)> = Vec::new();
    let mut index: std::collections::HashMap<String, usize> = std::collections::HashMap::new();
    let mut section: Option<String> = None;
    for (line_no, indent, body) in logical_lines(text) {
        if let Some(rest) = body.strip_prefix('[') {
            let Some(close) = rest.find(']') else {
                return Err(SyntaxError::new(
                    "section header is missing its closing ']'",
                    line_no,
                    indent + body.chars().count() + 1,
                ));
            };
            if !rest[close + 1..].trim().is_empty() {
                let col = indent + rest[..close].chars().count() + 3;
                return Err(SyntaxError::new("unexpected text after the section header", line_no, col));
            }
            section = Some(rest[..close].to_owned());
            continue;
        }
        let Some(section) = &section else {
            return Err(SyntaxError::new("assignment outside of a section", line_no, indent + 1));
        };
        let Some(eq) = body.find('=') else {
            return Err(SyntaxError::new("expected '=' after the key", line_no, indent + body.chars().count() + 1));
        };
        let key = body[..eq].trim();
        if key.is_empty() {
            return Err(SyntaxError::new("missing key before '='", line_no, indent + 1));
        }
        let value = body[eq + 1..].trim();
        let path = format!("{section}.{key}");
        let i = *index.entry(path.clone()).or_insert_with(|| {
            let slot = if key == "Environment" { Slot::Env(Vec::new()) } else { Slot::Values(Vec::new()) };
            slots.push((path, slot));
            slots.len() - 1
        });
        match &mut slots[i].1 {
            Slot::Values(values) if value.is_empty() => values.clear(),
            Slot::Values(values) => values.push(value.to_owned()),
            Slot::Env(vars) if value.is_empty() => vars.clear(),
            Slot::Env(vars) => {
                let value_col = indent + body[..eq + 1].chars().count() + 1;
                for (word, quoted) in split_words(value)
                    .map_err(|_| SyntaxError::new("unclosed quote in Environment=", line_no, value_col))?
                {
                    let Some((name, v)) = word.split_once('=') else { continue };
                    match vars.iter_mut().find(|(n, _, _)| n == name) {
                        Some(slot) => {
                            slot.1 = v.to_owned();
                            slot.2 = quoted;
                        }
                        None => vars.push((name.to_owned(), v.to_owned(), quoted)),
                    }
                }
            }
        }
    }
    let mut out = Vec::new();
    for (path, slot) in slots {
        match slot {
            Slot::Values(values) if values.len() == 1 => {
                out.extend(values.into_iter().map(|value| TextEntry { key: path.clone(), value, literal: false }));
            }
            Slot::Values(values) => {
                for (i, value) in values.into_iter().enumerate() {
                    out.push(TextEntry { key: format!("{path}[{i}]"), value, literal: false });
                }
            }
            Slot::Env(vars) => {
                for (name, value, literal) in vars {
                    out.push(TextEntry { key: format!("{path}.{name}"), value, literal });
                }
            }
        }
    }
    Ok(out)
}

/// Non-comment lines with continuations joined: (1-based line of the first piece, its
/// indent in characters, the trimmed text).
fn logical_lines(text: &str) -> Vec<(usize, usize, String)> {
    let mut out = Vec::new();
    let mut pending: Option<(usize, usize, String)> = None;
    for (index, raw_line) in text.split('\n').enumerate() {
        let line = raw_line.strip_suffix('\r').unwrap_or(raw_line);
        let body = line.trim_start();
        let indent = line.chars().count() - body.chars().count();
        let body = body.trim_end();
        if body.starts_with(['#', ';']) {
            continue;
        }
        let (piece, continues) = match body.strip_suffix('\\') {
            Some(p) => (p, true),
            None => (body, false),
        };
        let mut current = match pending.take() {
            Some((n, ind, mut acc)) => {
                acc.push_str(piece);
                (n, ind, acc)
            }
            None if body.is_empty() => continue,
            None => (index + 1, indent, piece.to_owned()),
        };
        if continues {
            current.2.push(' ');
            pending = Some(current);
        } else {
            current.2 = current.2.trim_end().to_owned();
            out.push(current);
        }
    }
    if let Some(mut last) = pending {
        last.2 = last.2.trim_end().to_owned();
        out.push(last);
    }
    out
}

/// systemd's word splitting for `Environment=`: (word, had quotes).
fn split_words(value: &str) -> Result<Vec<(String, bool)>, ()> {
    let mut words = Vec::new();
    let mut chars = value.chars().peekable();
    loop {
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.peek().is_none() {
            break;
        }
        let mut word = String::new();
        let mut quoted = false;
        while let Some(c) = chars.next_if(|c| !c.is_whitespace()) {
            match c {
                '"' | '\'' => {
                    quoted = true;
                    loop {
                        match chars.next() {
                            None => return Err(()),
                            Some(q) if q == c => break,
                            Some('\\') if c == '"' => word.push(chars.next().ok_or(())?),
                            Some(other) => word.push(other),
                        }
                    }
                }
                '\\' => {
                    if let Some(next) = chars.next() {
                        word.push(next);
                    }
                }
                c => word.push(c),
            }
        }
        words.push((word, quoted));
    }
    Ok(words)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries(text: &str) -> Vec<(String, String)> {
        parse_systemd(text).unwrap().into_iter().map(|e| (e.key, e.value)).collect()
    }
    fn kv(k: &str, v: &str) -> (String, String) {
        (k.to_owned(), v.to_owned())
    }
    fn err(text: &str) -> (String, u32, u32) {
        let e = parse_systemd(text).unwrap_err();
        (e.message, e.line, e.column)
    }

    #[test]
    fn service_with_environment_and_reset() {
        let text = "\
# /etc/systemd/system/app.service
[Unit]
Description=App server
After=network-online.target postgresql.service
Wants=network-online.target

[Service]
Type=simple
User=app
Environment=\"DB_HOST=db.internal\" DB_PORT=5432
Environment=\"GREETING=hello world\" DB_PASSWORD=hunter2
ExecStartPre=/usr/bin/app migrate
ExecStartPre=/usr/bin/app check
ExecStart=/usr/bin/app --old
ExecStart=
ExecStart=/usr/bin/app serve \\
    --port 8080 \\
    # a comment inside the continued line
    --workers 4
Restart=on-failure
LimitNOFILE=65536

[Install]
WantedBy=multi-user.target
";
        assert_eq!(
            entries(text),
            vec![
                kv("Unit.Description", "App server"),
                kv("Unit.After", "network-online.target postgresql.service"),
                kv("Unit.Wants", "network-online.target"),
                kv("Service.Type", "simple"),
                kv("Service.User", "app"),
                kv("Service.Environment.DB_HOST", "db.internal"),
                kv("Service.Environment.DB_PORT", "5432"),
                kv("Service.Environment.GREETING", "hello world"),
                kv("Service.Environment.DB_PASSWORD", "hunter2"),
                kv("Service.ExecStartPre[0]", "/usr/bin/app migrate"),
                kv("Service.ExecStartPre[1]", "/usr/bin/app check"),
                kv("Service.ExecStart", "/usr/bin/app serve  --port 8080  --workers 4"),
                kv("Service.Restart", "on-failure"),
                kv("Service.LimitNOFILE", "65536"),
                kv("Install.WantedBy", "multi-user.target"),
            ]
        );
    }

    #[test]
    fn environment_quoting_and_reset() {
        let text = "[Service]\nEnvironment=\"A=1 2\" B=3 'C=x y' D=a\\ b junk E=\"q\\\"r\"\nEnvironment=B=4\n";
        assert_eq!(
            entries(text),
            vec![
                kv("Service.Environment.A", "1 2"),
                kv("Service.Environment.B", "4"),
                kv("Service.Environment.C", "x y"),
                kv("Service.Environment.D", "a b"),
                kv("Service.Environment.E", "q\"r"),
            ]
        );
        assert_eq!(
            entries("[Service]\nEnvironment=A=1\nEnvironment=\nEnvironment=B=2\n"),
            vec![kv("Service.Environment.B", "2")]
        );
        assert_eq!(err("[Service]\nEnvironment=\"A=1 B=2\n"), ("unclosed quote in Environment=".into(), 2, 13));
    }

    #[test]
    fn drop_in_reset_keeps_a_scalar_and_empty_emits_nothing() {
        assert_eq!(
            entries("[Service]\nExecStart=\nExecStart=/usr/sbin/nginx -g 'daemon off;'\nExecReload=\n"),
            vec![kv("Service.ExecStart", "/usr/sbin/nginx -g 'daemon off;'")]
        );
    }

    #[test]
    fn errors_have_positions() {
        assert_eq!(err("Description=x\n"), ("assignment outside of a section".into(), 1, 1));
        assert_eq!(err("[Unit\n"), ("section header is missing its closing ']'".into(), 1, 6));
        assert_eq!(err("[Unit] x\n"), ("unexpected text after the section header".into(), 1, 7));
        assert_eq!(err("[Unit]\n  NoEquals\n"), ("expected '=' after the key".into(), 2, 11));
        assert_eq!(err("[Unit]\n=x\n"), ("missing key before '='".into(), 2, 1));
    }
}
