//! Unified diffs of edits, with secret values masked on every line shown.
//!
//! Two layers, so that nothing secret leaves the agent in clear:
//! 1. each line is read as `key = value` / `key: value` / `"key": value` / `- value` (whatever
//!    the format) and its value is masked when the key names a secret or the value looks like
//!    one (the same rules as `analyze`); a secret-looking key is masked too;
//! 2. the old and new files are parsed as the format the path says, and every text of a value
//!    `analyze` would mask (each line of a multi-line one) is masked wherever it appears.
//!
//! A masked value shows as `<masked:` + 16 hex of the masker's fingerprint of it + `>`.

use std::ops::Range;
use std::path::Path;

use similar::algorithms::{Capture, Compact, Replace, myers};
use similar::{ChangeTag, DiffOp, DiffableStr, group_diff_ops};

use crate::flatten::{Node, Scalar, infer_text, mask_scalar};
use crate::{Format, Masker, detect_format, is_secret_key_name, secret_reason};

/// Lines of context around each change.
const CONTEXT: usize = 3;
/// Shorter pieces of known secrets are only masked where layer 1 finds them (a short piece
/// would mask unrelated text all over the diff).
const MIN_PIECE_CHARS: usize = 4;

/// Unified diff (3 lines of context, `--- a/PATH` / `+++ b/PATH` headers, `@@` hunks) of
/// old → new, secrets masked (see the module docs). "" when equal. A leading `/` of the path
/// is dropped (`a/etc/app.env`, like git).
pub fn unified_diff(path: &str, old: &str, new: &str, masker: &Masker) -> String {
    if old == new {
        return String::new();
    }
    let secrets = known_secrets(path, old, new, masker);
    let shown = path.trim_start_matches('/');
    let (old, new) = (old.tokenize_lines(), new.tokenize_lines());
    let mut out = format!("--- a/{shown}\n+++ b/{shown}\n");
    for group in group_diff_ops(line_ops(&old, &new), CONTEXT) {
        out.push_str(&hunk_header(&group));
        for op in &group {
            for change in op.iter_changes(&old, &new) {
                out.push(match change.tag() {
                    ChangeTag::Equal => ' ',
                    ChangeTag::Delete => '-',
                    ChangeTag::Insert => '+',
                });
                let line = change.value();
                out.push_str(&mask_line(line.strip_suffix('\n').unwrap_or(line), masker, &secrets));
                out.push('\n');
                if change.missing_newline() {
                    out.push_str("\\ No newline at end of file\n");
                }
            }
        }
    }
    out
}

/// The ops of a line diff: what `similar::TextDiff::from_lines` computes (Myers, then
/// compaction and replace detection), with Myers called directly. `TextDiff` picks its
/// algorithm at run time, which links every algorithm `similar` has into the agent.
fn line_ops(old: &[&str], new: &[&str]) -> Vec<DiffOp> {
    let mut d = Compact::new(Replace::new(Capture::new()), old, new);
    match myers::diff(&mut d, old, 0..old.len(), new, 0..new.len()) {
        Ok(()) => d.into_inner().into_inner().into_ops(),
        Err(never) => match never {},
    }
}

/// `@@ -start,len +start,len @@`, GNU style: `,1` left out, an empty range starts at the line
/// before it.
fn hunk_header(group: &[DiffOp]) -> String {
    let range = |r: Range<usize>| {
        let len = r.end - r.start;
        match len {
            1 => format!("{}", r.start + 1),
            0 => format!("{},0", r.start),
            _ => format!("{},{len}", r.start + 1),
        }
    };
    let (first, last) = (group[0], group[group.len() - 1]);
    format!(
        "@@ -{} +{} @@\n",
        range(first.old_range().start..last.old_range().end),
        range(first.new_range().start..last.new_range().end)
    )
}

fn marker(masker: &Masker, value: &str) -> String {
    let fp = masker.fingerprint(value.as_bytes());
    format!("<masked:{}>", driftwatch_proto::short_fingerprint(&fp))
}

/// One line with its secret parts replaced.
fn mask_line(line: &str, masker: &Masker, secrets: &[(String, String)]) -> String {
    let mut cuts: Vec<(Range<usize>, String)> = Vec::new();
    let body = line.trim_start();
    if let Some(text) = body.strip_prefix(['#', ';']).or_else(|| body.strip_prefix("//")) {
        // A comment is prose: each word that looks like a secret, and a one-word value after a
        // secret-named key (`# old password: hunter2`).
        let at = line.len() - text.len();
        for (start, word) in words(text) {
            let word = word.trim_matches(|c: char| matches!(c, '"' | '\'' | ',' | ';' | '(' | ')'));
            if secret_reason("", word).is_some() {
                let start = at + start + text[start..].find(word).unwrap_or(0);
                cuts.push((start..start + word.len(), marker(masker, word)));
            }
        }
        if let Some(parts) = split_line(text)
            && let Some(v) = parts.value
            && !text[v.clone()].contains(char::is_whitespace)
            && is_secret_key_name(&text[parts.key])
            && !matches!(&text[v.clone()], "" | "null" | "~")
        {
            cuts.push((at + v.start..at + v.end, marker(masker, &text[v])));
        }
    } else {
        mask_entry(line, masker, &mut cuts);
    }
    for (piece, mark) in secrets {
        let mut from = 0;
        while let Some(at) = line[from..].find(piece.as_str()) {
            let start = from + at;
            cuts.push((start..start + piece.len(), mark.clone()));
            from = start + piece.len();
        }
    }
    if cuts.is_empty() {
        return line.to_owned();
    }
    // Overlapping cuts merge into the first one's marker.
    cuts.sort_by_key(|(r, _)| (r.start, std::cmp::Reverse(r.end)));
    let mut merged: Vec<(Range<usize>, String)> = Vec::new();
    for (r, m) in cuts {
        match merged.last_mut() {
            Some((last, _)) if r.start < last.end => last.end = last.end.max(r.end),
            _ => merged.push((r, m)),
        }
    }
    let mut out = String::with_capacity(line.len());
    let mut at = 0;
    for (r, m) in merged {
        out.push_str(&line[at..r.start]);
        out.push_str(&m);
        at = r.end;
    }
    out.push_str(&line[at..]);
    out
}

/// Layer 1 on a `key = value` line (or a line with only a value).
fn mask_entry(line: &str, masker: &Masker, cuts: &mut Vec<(Range<usize>, String)>) {
    match split_line(line) {
        Some(parts) => {
            let key = &line[parts.key.clone()];
            if secret_reason("", key).is_some() {
                cuts.push((parts.key.clone(), marker(masker, key)));
            }
            if let Some(v) = parts.value {
                let value = &line[v.clone()];
                // A null is no secret, whatever the key is called.
                let nullish = matches!(value, "" | "null" | "~");
                if !nullish && (is_secret_key_name(key) || secret_reason(key, value).is_some()) {
                    cuts.push((v, marker(masker, value)));
                }
            }
        }
        None => {
            if let Some(v) = bare_value(line) {
                let value = &line[v.clone()];
                if secret_reason("", value).is_some() {
                    cuts.push((v, marker(masker, value)));
                }
            }
        }
    }
}

/// Whitespace-separated words with their byte offsets.
fn words(text: &str) -> impl Iterator<Item = (usize, &str)> {
    text.split_whitespace().map(move |w| (w.as_ptr() as usize - text.as_ptr() as usize, w))
}

/// Where the key and the value (unquoted, without comment or trailing comma) sit in a line.
struct Parts {
    key: Range<usize>,
    value: Option<Range<usize>>,
}

/// Read a line as `key = value`, `key: value`, `"key": value,` (with `export `, list dashes or
/// indentation before); None when it has no key.
fn split_line(line: &str) -> Option<Parts> {
    let b = line.as_bytes();
    let mut i = skip_prefix(line);
    if line[i..].starts_with("export ") || line[i..].starts_with("export\t") {
        i = skip_ws(line, i + 7);
    }
    let (key, after_key) = match b.get(i)? {
        q @ (b'"' | b'\'') => {
            let end = closing_quote(line, i, *q)?;
            (i + 1..end, skip_ws(line, end + 1))
        }
        _ => {
            let sep = (i..line.len())
                .find(|&j| b[j] == b'=' || (b[j] == b':' && matches!(b.get(j + 1), None | Some(b' ' | b'\t'))))?;
            let key = line[i..sep].trim_end();
            (i..i + key.len(), sep)
        }
    };
    if key.is_empty() || !matches!(b.get(after_key), Some(b'=' | b':')) {
        return None;
    }
    let v = skip_ws(line, after_key + 1);
    Some(Parts { key, value: value_range(line, v) })
}

/// The value starting at `v`: inside its quotes, or up to an inline comment / trailing comma.
fn value_range(line: &str, v: usize) -> Option<Range<usize>> {
    let b = line.as_bytes();
    match b.get(v)? {
        q @ (b'"' | b'\'') => {
            let end = closing_quote(line, v, *q).unwrap_or(line.len());
            Some(v + 1..end)
        }
        b'{' | b'[' => None,
        _ => {
            let comment = (v + 1..line.len())
                .find(|&j| matches!(b[j], b'#' | b';') && matches!(b[j - 1], b' ' | b'\t'))
                .unwrap_or(line.len());
            let value = line[v..comment].trim_end().trim_end_matches(',').trim_end();
            Some(v..v + value.len())
        }
    }
}

/// A line without a key (a list item, an array element, a line of a multi-line value).
fn bare_value(line: &str) -> Option<Range<usize>> {
    let v = skip_prefix(line);
    value_range(line, v).filter(|r| !r.is_empty())
}

fn skip_ws(line: &str, mut i: usize) -> usize {
    let b = line.as_bytes();
    while matches!(b.get(i), Some(b' ' | b'\t')) {
        i += 1;
    }
    i
}

/// Indentation and YAML list dashes.
fn skip_prefix(line: &str) -> usize {
    let mut i = skip_ws(line, 0);
    while line[i..].starts_with("- ") || line[i..].starts_with("-\t") {
        i = skip_ws(line, i + 2);
    }
    i
}

/// The offset of the quote closing the one at `open` (a backslash escapes in double quotes).
fn closing_quote(line: &str, open: usize, q: u8) -> Option<usize> {
    let b = line.as_bytes();
    let mut i = open + 1;
    while i < b.len() {
        match b[i] {
            b'\\' if q == b'"' => i += 2,
            c if c == q => return Some(i),
            _ => i += 1,
        }
    }
    None
}

/// Texts of the values `analyze` would mask in either file (each line of a multi-line value
/// on its own), with their markers, longest first.
fn known_secrets(path: &str, old: &str, new: &str, masker: &Masker) -> Vec<(String, String)> {
    let format = detect_format(Path::new(path));
    let mut values = Vec::new();
    for text in [old, new] {
        collect_secrets(format, text.strip_prefix('\u{feff}').unwrap_or(text), masker, &mut values);
    }
    let mut out: Vec<(String, String)> = Vec::new();
    for value in values {
        let mark = marker(masker, &value);
        for piece in value.split('\n').map(str::trim) {
            if piece.chars().count() >= MIN_PIECE_CHARS && !out.iter().any(|(p, _)| p == piece) {
                out.push((piece.to_owned(), mark.clone()));
            }
        }
    }
    out.sort_by_key(|(p, _)| std::cmp::Reverse(p.len()));
    out
}

fn collect_secrets(format: Format, text: &str, masker: &Masker, out: &mut Vec<String>) {
    let secret = |key: &str, scalar: Scalar, raw: Option<&str>| {
        matches!(mask_scalar(masker, key, scalar, raw).kind, Some(driftwatch_proto::v1::value::Kind::Masked(_)))
    };
    // Both dialects' values are collected: the path alone does not say which one the
    // file is read in, and a masked value must be hidden either way.
    let mut entries = crate::text_entries(format, crate::KeywordDialect::Sshd, text).and_then(Result::ok);
    if format == Format::Keyword
        && let Some(Ok(generic)) = crate::text_entries(format, crate::KeywordDialect::Generic, text)
    {
        entries.get_or_insert_with(Vec::new).extend(generic);
    }
    if let Some(entries) = entries {
        for e in entries {
            let scalar = if e.literal { Scalar::Str(e.value.clone()) } else { infer_text(&e.value) };
            if secret(&e.key, scalar, Some(&e.value)) {
                out.push(e.value);
            }
        }
        return;
    }
    let docs = match format {
        Format::Json => crate::structured::parse_json(text).map(|d| vec![d]).ok(),
        Format::Toml => crate::structured::parse_toml(text).map(|d| vec![d]).ok(),
        Format::Yaml => crate::structured::parse_yaml(text).ok(),
        _ => None,
    };
    let mut stack: Vec<(String, &Node)> = docs.iter().flatten().map(|d| (String::new(), d)).collect();
    while let Some((path, node)) = stack.pop() {
        let (scalar, text) = match node {
            Node::Map(entries) => {
                for (k, v) in entries {
                    let name = match k {
                        Node::Str(s) => s.clone(),
                        Node::Int(i) => i.to_string(),
                        Node::Bool(b) => b.to_string(),
                        _ => String::new(),
                    };
                    let p = if path.is_empty() { name } else { format!("{path}.{name}") };
                    stack.push((p, v));
                }
                continue;
            }
            Node::Seq(items) => {
                stack.extend(items.iter().enumerate().map(|(i, v)| (format!("{path}[{i}]"), v)));
                continue;
            }
            Node::Null | Node::Bool(_) => continue,
            Node::Int(i) => (Scalar::Int(*i), i.to_string()),
            Node::Float(f) => (Scalar::Float(*f), f.to_string()),
            Node::Str(s) => (Scalar::Str(s.clone()), s.clone()),
        };
        if secret(&path, scalar, None) {
            out.push(text);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn masker() -> Masker {
        Masker::new(b"test fleet key")
    }
    fn mark(v: &str) -> String {
        marker(&masker(), v)
    }

    proptest::proptest! {
        /// Myers called directly gives the ops `TextDiff` gives, on small inputs and on
        /// inputs above its 100-line threshold (where it trims and remaps lines first).
        #[test]
        fn line_ops_are_those_of_text_diff(
            old in proptest::collection::vec(0u8..6, 0..240),
            edits in proptest::collection::vec((0usize..240, 0u8..8), 0..12),
            crlf in proptest::bool::ANY,
            last_newline in proptest::bool::ANY,
        ) {
            let eol = if crlf { "\r\n" } else { "\n" };
            let text = |lines: &[u8]| {
                let mut t: String = lines.iter().map(|l| format!("k{l}=v{eol}")).collect();
                if !last_newline && !t.is_empty() {
                    t.truncate(t.len() - eol.len());
                }
                t
            };
            let mut new = old.clone();
            for (at, line) in edits {
                match line {
                    6 if !new.is_empty() => { new.remove(at % new.len()); }
                    _ => new.insert(at.min(new.len()), line % 6),
                }
            }
            let (old, new) = (text(&old), text(&new));
            let expected = similar::TextDiff::from_lines(old.as_str(), new.as_str()).ops().to_vec();
            proptest::prop_assert_eq!(line_ops(&old.tokenize_lines(), &new.tokenize_lines()), expected);
        }
    }

    #[test]
    fn format_is_unified() {
        let old = "a=1\nb=2\nc=3\nd=4\ne=5\nf=6\ng=7\nh=8\n";
        let new = "a=1\nb=2\nc=3\nd=40\ne=5\nf=6\ng=7\nh=8\n";
        assert_eq!(
            unified_diff("/etc/app/.env", old, new, &masker()),
            "--- a/etc/app/.env\n+++ b/etc/app/.env\n@@ -1,7 +1,7 @@\n a=1\n b=2\n c=3\n-d=4\n+d=40\n e=5\n f=6\n g=7\n"
        );
        assert_eq!(unified_diff("x.env", old, old, &masker()), "");
    }

    #[test]
    fn separate_hunks_insertions_and_missing_newline() {
        let old: String = (1..=12).map(|i| format!("k{i}={i}\n")).collect();
        let new = old.replace("k2=2\n", "k2=two\n").replace("k11=11\n", "k11=11\nk11b=x\n");
        assert_eq!(
            unified_diff("c.env", &old, &new, &masker()),
            "--- a/c.env\n+++ b/c.env\n@@ -1,5 +1,5 @@\n k1=1\n-k2=2\n+k2=two\n k3=3\n k4=4\n k5=5\n\
             @@ -9,4 +9,5 @@\n k9=9\n k10=10\n k11=11\n+k11b=x\n k12=12\n"
        );
        assert_eq!(
            unified_diff("c.env", "a=1", "a=2", &masker()),
            "--- a/c.env\n+++ b/c.env\n@@ -1 +1 @@\n-a=1\n\\ No newline at end of file\n+a=2\n\\ No newline at end of file\n"
        );
        assert_eq!(unified_diff("c.env", "", "a=1\n", &masker()), "--- a/c.env\n+++ b/c.env\n@@ -0,0 +1 @@\n+a=1\n");
    }

    #[test]
    fn secrets_never_in_clear() {
        let old = "HOST=db\nDB_PASSWORD=hunter2hunter2\nTOKEN=\"ghp_abcdefghijklmnopqrstuvwxyz0123456789\"\n";
        let new = "HOST=db2\nDB_PASSWORD=correcthorse\nTOKEN=\"ghp_zyxwvutsrqponmlkjihgfedcba9876543210\"\n";
        let diff = unified_diff(".env", old, new, &masker());
        for secret in [
            "hunter2hunter2",
            "correcthorse",
            "ghp_abcdefghijklmnopqrstuvwxyz0123456789",
            "ghp_zyxwvutsrqponmlkjihgfedcba9876543210",
        ] {
            assert!(!diff.contains(secret), "{secret} leaked:\n{diff}");
        }
        assert!(diff.contains(&format!("-DB_PASSWORD={}\n", mark("hunter2hunter2"))), "{diff}");
        assert!(diff.contains(&format!("+DB_PASSWORD={}\n", mark("correcthorse"))), "{diff}");
        assert!(diff.contains(&format!("+TOKEN=\"{}\"\n", mark("ghp_zyxwvutsrqponmlkjihgfedcba9876543210"))));
        assert!(diff.contains("-HOST=db\n") && diff.contains("+HOST=db2\n"), "{diff}");
    }

    #[test]
    fn a_url_password_stays_masked_on_changed_and_context_lines() {
        let (right, wrong) = ("postgres://u:hunter2@db/x", "postgres://u:letmein@db/x");
        let old = format!("DATABASE_URL={right}\nPOOL=5\nNAME=web\n");
        // The secret line changed (a guess written over it), and left as context.
        let changed = unified_diff("/etc/app.env", &old, &old.replace(right, wrong), &masker());
        let context = unified_diff("/etc/app.env", &old, &old.replace("POOL=5", "POOL=6"), &masker());
        for diff in [&changed, &context] {
            assert!(!diff.contains("hunter2") && !diff.contains("letmein") && !diff.contains("u:"), "{diff}");
        }
        assert!(changed.contains(&format!("-DATABASE_URL={}\n+DATABASE_URL={}\n", mark(right), mark(wrong))));
        assert!(context.contains(&format!(" DATABASE_URL={}\n-POOL=5\n+POOL=6\n", mark(right))), "{context}");
    }

    #[test]
    fn secrets_in_every_format_shape() {
        let m = masker();
        let cases = [
            ("c.json", "{\n  \"password\": \"s3cr3t-value\",\n  \"n\": 1\n}\n", "s3cr3t-value"),
            ("c.yaml", "db:\n  password: 's3cr3t-value'   # rotate\nn: 1\n", "s3cr3t-value"),
            ("c.toml", "[db]\npassword = \"s3cr3t-value\"\nn = 1\n", "s3cr3t-value"),
            ("c.ini", "[db]\npassword = s3cr3t-value ; rotate\nn = 1\n", "s3cr3t-value"),
            ("c.yaml", "urls:\n  - postgresql://u:pw-s3cr3t@db/x\nn: 1\n", "pw-s3cr3t"),
            // Only the parsed file knows these are secrets: `secrets.x` and a multi-line key.
            ("c.yaml", "secrets:\n  x: plainword1\nn: 1\n", "plainword1"),
            (
                "k.env",
                "KEY=\"-----BEGIN PRIVATE KEY-----\nQUJDREVGR0hJSktMTU5PUA\n-----END PRIVATE KEY-----\"\nN=1\n",
                "QUJDREVGR0hJSktMTU5PUA",
            ),
        ];
        for (path, old, secret) in cases {
            let new = old.replace(": 1", ": 2").replace("= 1", "= 2").replace("N=1", "N=2");
            let diff = unified_diff(path, old, &new, &m);
            assert!(!diff.is_empty(), "{path}");
            assert!(!diff.contains(secret), "{secret} leaked from {path}:\n{diff}");
            assert!(diff.contains("<masked:"), "{path}:\n{diff}");
        }
    }

    #[test]
    fn harmless_lines_untouched() {
        let m = masker();
        for line in ["max_tokens: 8192", "huggingface_token: null   # from env", "PORT=8080", "  - huggingface.co", "{"]
        {
            assert_eq!(mask_line(line, &m, &[]), line);
        }
        assert_eq!(mask_line("api_key: abc", &m, &[]), format!("api_key: {}", mark("abc")));
        // Comments: prose stays, secret-looking words and one-word secret values go.
        for line in
            ["# Secrets: the value must never leave the host", "; password rotation: monthly policy", "# api_key:"]
        {
            assert_eq!(mask_line(line, &m, &[]), line);
        }
        assert_eq!(mask_line("# old password: hunter2", &m, &[]), format!("# old password: {}", mark("hunter2")));
        let token = "ghp_abcdefghijklmnopqrstuvwxyz0123456789";
        assert_eq!(mask_line(&format!("#\u{3000}was ({token})"), &m, &[]), format!("#\u{3000}was ({})", mark(token)));
        assert_eq!(mask_line("\"token\": \"abc\",", &m, &[]), format!("\"token\": \"{}\",", mark("abc")));
        assert_eq!(mask_line("export SECRET = 'abc' # c", &m, &[]), format!("export SECRET = '{}' # c", mark("abc")));
    }
}
