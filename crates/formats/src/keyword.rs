//! Keyword-value files as OpenSSH reads them: `sshd_config`, `ssh_config`, and files in
//! the same shape (`redis.conf`, `chrony.conf`).
//!
//! # Syntax
//!
//! - one directive per line: `Keyword arg arg...`; the keyword ends at whitespace or at a
//!   single `=` (`Port 22`, `Port=22`, `Port = 22` are the same);
//! - blank lines and lines whose first non-blank character is `#`; a `#` at the start of a
//!   later argument ends the line (`Port 22 # ssh` is `22`), inside an argument it is text;
//! - arguments are separated by blanks; `"..."` and `'...'` quote one argument (blanks
//!   kept, `\"`, `\'` and `\\` unescaped inside);
//! - the value is the arguments joined by single spaces; a value that is one quoted
//!   argument stays a string, anything else has its type inferred like INI (`22` is an
//!   int, `yes` a string).
//!
//! Errors (with line and column): a line starting with `=`, an unclosed quote, a `Match` or
//! `Host` without a condition, a `Match` criterion without its value.
//!
//! # Key paths
//!
//! ```text
//! key     = [block "."] keyword [ "[" index "]" | "." name ]
//! block   = "match[" criterion "=" value { " " criterion "=" value } "]"
//!         | "host[" pattern { " " pattern } "]"
//! keyword = the keyword in lower case, as `sshd -T` prints it
//! ```
//!
//! Keywords are case-insensitive and canonicalised to lower case (`PermitRootLogin` →
//! `permitrootlogin`), so a snapshot lines up with `sshd -T` output. In the sshd dialect a
//! `Match` (or ssh_config `Host`) line opens a block that lasts until the next one; its
//! keys get a prefix that states the condition: criteria lower-cased, values kept as
//! written, in order (`Match User alice Address 10.0.0.0/8` → `match[user=alice
//! address=10.0.0.0/8].permitrootlogin`; `Match all` → `match[all]`, as are `canonical`
//! and `final`, which take no value). An empty block emits nothing.
//!
//! # Repeated keywords
//!
//! The dialect decides (see [`KeywordDialect`], chosen from the file name by
//! [`keyword_dialect`]):
//!
//! - **sshd** (`sshd_config`, `ssh_config` and their `.d/` drop-ins): a single-valued
//!   keyword keeps its **first** value, as both sshd and ssh do; each block is its own
//!   scope (first wins within it). List keywords accumulate in order: one item per line
//!   for `port`, `listenaddress`, `hostkey`, `hostcertificate`, `identityfile`,
//!   `certificatefile`, `localforward`, `remoteforward`, `dynamicforward`; one item per
//!   argument for `acceptenv`, `sendenv`, `setenv`, `allowusers`, `denyusers`,
//!   `allowgroups`, `denygroups`, `include` (`AllowUsers a b` + `AllowUsers c` →
//!   `allowusers[0..2]`). `Subsystem sftp /usr/lib/sftp-server` is keyed by its name:
//!   `subsystem.sftp` (first wins per name).
//! - **generic** (redis.conf, chrony.conf, anything else): no blocks (`match` and `host`
//!   are ordinary keywords); a single-valued keyword keeps its **last** value, as redis
//!   and chronyd apply lines in order; one item per line for `save`, `rename-command`,
//!   `loadmodule`, `client-output-buffer-limit`, `user`, `include` (redis) and `server`,
//!   `pool`, `peer`, `allow`, `deny`, `refclock`, `bindaddress`, `confdir`, `sourcedir`
//!   (chrony).
//!
//! # Include
//!
//! `Include` is reported as a list of patterns; resolving them is the caller's business
//! (it needs the file system). [`KeywordFile::with_includes`] then computes the keys sshd
//! would see: an included file's lines are processed in place of the `Include` line (so
//! with first-wins they beat later lines of the main file), inherit the block the
//! `Include` stands in, and their own `Match` blocks end with the included file.

use crate::env::TextEntry;
use crate::errors::SyntaxError;

/// How repeated keywords and `Match`/`Host` lines are read: see the module docs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeywordDialect {
    /// sshd_config / ssh_config: first value wins, `Match` and `Host` open blocks.
    Sshd,
    /// redis.conf, chrony.conf and the like: last value wins, no blocks.
    Generic,
}

/// The dialect for a keyword file, from its path: `sshd_config`, `ssh_config` and any
/// file under a `sshd_config.d` / `ssh_config.d` directory read as sshd; everything else
/// is generic. Case-insensitive.
pub fn keyword_dialect(path: &std::path::Path) -> KeywordDialect {
    let lower = |s: Option<&std::ffi::OsStr>| s.and_then(|s| s.to_str()).map(str::to_ascii_lowercase);
    let name = lower(path.file_name()).unwrap_or_default();
    let parent = lower(path.parent().and_then(|p| p.file_name())).unwrap_or_default();
    if matches!(name.as_str(), "sshd_config" | "ssh_config")
        || matches!(parent.as_str(), "sshd_config.d" | "ssh_config.d")
    {
        KeywordDialect::Sshd
    } else {
        KeywordDialect::Generic
    }
}

/// One directive line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeywordDirective {
    /// The block prefix (`match[user=alice]`), None at top level.
    pub block: Option<String>,
    /// Lower-cased keyword.
    pub keyword: String,
    /// Arguments, unquoted.
    pub args: Vec<String>,
    /// The value is one quoted argument: it stays a string.
    pub quoted: bool,
}

/// A parsed keyword file: its directives in order, and how to read repeats.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeywordFile {
    pub dialect: KeywordDialect,
    pub directives: Vec<KeywordDirective>,
}

/// How a keyword repeats.
pub(crate) enum Repeat {
    Single,
    /// Each line adds one item (its arguments joined).
    PerLine,
    /// Each argument adds one item.
    PerArg,
    /// Keyed by the first argument: `subsystem.sftp`.
    Named,
}

pub(crate) fn repeat_rule(dialect: KeywordDialect, keyword: &str) -> Repeat {
    match dialect {
        KeywordDialect::Sshd => match keyword {
            "port" | "listenaddress" | "hostkey" | "hostcertificate" | "identityfile" | "certificatefile"
            | "localforward" | "remoteforward" | "dynamicforward" => Repeat::PerLine,
            "acceptenv" | "sendenv" | "setenv" | "allowusers" | "denyusers" | "allowgroups" | "denygroups"
            | "include" => Repeat::PerArg,
            "subsystem" => Repeat::Named,
            _ => Repeat::Single,
        },
        KeywordDialect::Generic => match keyword {
            "save"
            | "rename-command"
            | "loadmodule"
            | "client-output-buffer-limit"
            | "user"
            | "include"
            | "server"
            | "pool"
            | "peer"
            | "allow"
            | "deny"
            | "refclock"
            | "bindaddress"
            | "confdir"
            | "sourcedir" => Repeat::PerLine,
            _ => Repeat::Single,
        },
    }
}

/// Parse a keyword file (see the module docs).
pub fn parse_keyword(text: &str, dialect: KeywordDialect) -> Result<KeywordFile, crate::FileError> {
    parse(text, dialect).map_err(SyntaxError::into_file_error)
}

pub(crate) fn parse(text: &str, dialect: KeywordDialect) -> Result<KeywordFile, SyntaxError> {
    scan(text, dialect).map(|(file, _)| file)
}

/// Where one significant line sits in the text (byte offsets), for in-place edits.
#[derive(Debug, Clone)]
pub(crate) struct LineSpan {
    /// The whole line, terminator included.
    pub line: std::ops::Range<usize>,
    /// From the first argument to the end of the last (empty where a value would go).
    pub value: std::ops::Range<usize>,
    /// The leading blanks of the line.
    pub indent: String,
    /// The index of its directive in the file, None for a `Match`/`Host` line.
    pub directive: Option<usize>,
}

/// [`parse`], also returning where each directive and block header sits.
pub(crate) fn scan(text: &str, dialect: KeywordDialect) -> Result<(KeywordFile, Vec<LineSpan>), SyntaxError> {
    let mut directives = Vec::new();
    let mut spans = Vec::new();
    let mut block: Option<String> = None;
    let mut offset = 0;
    for (index, raw_line) in text.split('\n').enumerate() {
        let line_start = offset;
        offset += raw_line.len() + 1;
        let line_no = index + 1;
        let line = raw_line.strip_suffix('\r').unwrap_or(raw_line);
        let chars: Vec<char> = line.chars().collect();
        let byte_at = |pos: usize| line_start + line.char_indices().nth(pos).map(|(b, _)| b).unwrap_or(line.len());
        let mut pos = skip_blank(&chars, 0);
        if pos == chars.len() || chars[pos] == '#' {
            continue;
        }
        let start = pos;
        while pos < chars.len() && !chars[pos].is_whitespace() && chars[pos] != '=' {
            pos += 1;
        }
        if pos == start {
            return Err(SyntaxError::new("missing keyword before '='", line_no, start + 1));
        }
        let keyword: String = chars[start..pos].iter().collect::<String>().to_lowercase();
        let keyword_end = pos;
        pos = skip_blank(&chars, pos);
        if chars.get(pos) == Some(&'=') {
            pos = skip_blank(&chars, pos + 1);
        }
        let (args, args_end) = split_args(&chars, pos, line_no)?;
        let value_start = if args.is_empty() { keyword_end } else { pos };
        let mut span = LineSpan {
            line: line_start..offset.min(text.len()),
            value: byte_at(value_start)..byte_at(args_end.max(value_start)),
            indent: chars[..start].iter().collect(),
            directive: None,
        };
        if dialect == KeywordDialect::Sshd && matches!(keyword.as_str(), "match" | "host") {
            block = Some(block_prefix(&keyword, &args, line_no, start + 1)?);
            spans.push(span);
            continue;
        }
        span.directive = Some(directives.len());
        spans.push(span);
        let quoted = args.len() == 1 && args[0].1;
        directives.push(KeywordDirective {
            block: block.clone(),
            keyword,
            args: args.into_iter().map(|(a, _)| a).collect(),
            quoted,
        });
    }
    Ok((KeywordFile { dialect, directives }, spans))
}

fn skip_blank(chars: &[char], mut pos: usize) -> usize {
    while pos < chars.len() && chars[pos].is_whitespace() {
        pos += 1;
    }
    pos
}

/// Blank-separated arguments from `pos`, each with whether it was quoted; a `#` starting
/// an argument ends the line. Also returns where the last argument ends.
fn split_args(chars: &[char], mut pos: usize, line_no: usize) -> Result<(Vec<(String, bool)>, usize), SyntaxError> {
    let mut args = Vec::new();
    let mut end = pos;
    loop {
        pos = skip_blank(chars, pos);
        let Some(&c) = chars.get(pos) else { break };
        if c == '#' {
            break;
        }
        let mut arg = String::new();
        let mut quoted = false;
        while let Some(&c) = chars.get(pos) {
            if c.is_whitespace() {
                break;
            }
            if c == '"' || c == '\'' {
                let open = pos;
                quoted = true;
                pos += 1;
                loop {
                    match chars.get(pos) {
                        None => return Err(SyntaxError::new("unclosed quote", line_no, open + 1)),
                        Some(&q) if q == c => break,
                        Some('\\') if matches!(chars.get(pos + 1), Some('"' | '\'' | '\\')) => {
                            arg.push(chars[pos + 1]);
                            pos += 2;
                        }
                        Some(&other) => {
                            arg.push(other);
                            pos += 1;
                        }
                    }
                }
                pos += 1;
                continue;
            }
            arg.push(c);
            pos += 1;
        }
        args.push((arg, quoted));
        end = pos;
    }
    Ok((args, end))
}

/// `match[user=alice address=10.0.0.0/8]` or `host[*.example.com !bastion]`.
fn block_prefix(keyword: &str, args: &[(String, bool)], line_no: usize, col: usize) -> Result<String, SyntaxError> {
    if args.is_empty() {
        return Err(SyntaxError::new("a Match or Host line needs a condition", line_no, col));
    }
    if keyword == "host" {
        let patterns: Vec<&str> = args.iter().map(|(a, _)| a.as_str()).collect();
        return Ok(format!("host[{}]", patterns.join(" ")));
    }
    let mut parts = Vec::new();
    let mut it = args.iter();
    while let Some((criterion, _)) = it.next() {
        let criterion = criterion.to_lowercase();
        if matches!(criterion.as_str(), "all" | "canonical" | "final") {
            parts.push(criterion);
            continue;
        }
        // `Match User=alice` is not sshd syntax, but its intent is plain.
        if let Some((c, v)) = criterion.split_once('=') {
            parts.push(format!("{c}={v}"));
            continue;
        }
        let Some((value, _)) = it.next() else {
            return Err(SyntaxError::new("a Match criterion needs a value", line_no, col));
        };
        parts.push(format!("{criterion}={value}"));
    }
    Ok(format!("match[{}]", parts.join(" ")))
}

impl KeywordFile {
    /// The `Include` patterns, in order (top level and inside blocks).
    pub fn include_patterns(&self) -> Vec<String> {
        self.directives.iter().filter(|d| d.keyword == "include").flat_map(|d| d.args.iter().cloned()).collect()
    }

    /// The file as sshd sees it with its includes resolved: `included[i]` holds what the
    /// i-th `Include` line expands to (the matched files' directives concatenated, in the
    /// order sshd reads them, their own includes already resolved). Each is processed in
    /// place of its `Include` line; directives outside a block take the block the
    /// `Include` stands in; the `Include` line itself is kept (its patterns stay a key).
    /// Missing entries (fewer `included` than `Include` lines) include nothing.
    pub fn with_includes(&self, included: &[KeywordFile]) -> KeywordFile {
        let mut out = Vec::new();
        let mut next = included.iter();
        for d in &self.directives {
            out.push(d.clone());
            if d.keyword != "include" {
                continue;
            }
            let Some(file) = next.next() else { continue };
            for inner in &file.directives {
                let mut inner = inner.clone();
                if inner.block.is_none() {
                    inner.block = d.block.clone();
                }
                out.push(inner);
            }
        }
        KeywordFile { dialect: self.dialect, directives: out }
    }

    /// Flattened entries: unique keys in first-seen order, repeats resolved by dialect.
    pub(crate) fn entries(&self) -> Vec<TextEntry> {
        let mut out: Vec<TextEntry> = Vec::new();
        let mut index: std::collections::HashMap<String, usize> = std::collections::HashMap::new();
        let mut counts: std::collections::HashMap<String, usize> = std::collections::HashMap::new();
        let first_wins = self.dialect == KeywordDialect::Sshd;
        for d in &self.directives {
            let base = match &d.block {
                Some(b) => format!("{b}.{}", d.keyword),
                None => d.keyword.clone(),
            };
            let mut put = |key: String, value: String, literal: bool| match index.get(&key) {
                Some(_) if first_wins => {}
                Some(&i) => out[i] = TextEntry { key, value, literal },
                None => {
                    index.insert(key.clone(), out.len());
                    out.push(TextEntry { key, value, literal });
                }
            };
            match repeat_rule(self.dialect, &d.keyword) {
                Repeat::Single => put(base, d.args.join(" "), d.quoted),
                Repeat::PerLine => {
                    let n = counts.entry(base.clone()).or_insert(0);
                    let key = format!("{base}[{n}]");
                    *n += 1;
                    put(key, d.args.join(" "), d.quoted);
                }
                Repeat::PerArg => {
                    for arg in &d.args {
                        let n = counts.entry(base.clone()).or_insert(0);
                        let key = format!("{base}[{n}]");
                        *n += 1;
                        put(key, arg.clone(), true);
                    }
                }
                Repeat::Named => match d.args.split_first() {
                    Some((name, rest)) => put(format!("{base}.{name}"), rest.join(" "), rest.len() == 1 && d.quoted),
                    None => put(base, String::new(), false),
                },
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(text: &str, dialect: KeywordDialect) -> Vec<(String, String)> {
        parse(text, dialect).unwrap().entries().into_iter().map(|e| (e.key, e.value)).collect()
    }
    fn kv(k: &str, v: &str) -> (String, String) {
        (k.to_owned(), v.to_owned())
    }
    fn err(text: &str) -> (String, u32, u32) {
        let e = parse(text, KeywordDialect::Sshd).unwrap_err();
        (e.message, e.line, e.column)
    }

    /// Debian's default sshd_config (comments trimmed), with a Match block added.
    const DEBIAN_SSHD: &str = "\
# This is the sshd server system-wide configuration file.
Include /etc/ssh/sshd_config.d/*.conf

#Port 22
#AddressFamily any
#PermitRootLogin prohibit-password
KbdInteractiveAuthentication no
UsePAM yes
X11Forwarding yes
PrintMotd no
# Allow client to pass locale environment variables
AcceptEnv LANG LC_*
# override default of no subsystems
Subsystem\tsftp\t/usr/lib/openssh/sftp-server

# Example of overriding settings on a per-user basis
Match User anoncvs
\tX11Forwarding no
\tAllowTcpForwarding no
\tPermitTTY no
\tForceCommand cvs server
";

    #[test]
    fn debian_sshd_config() {
        assert_eq!(
            keys(DEBIAN_SSHD, KeywordDialect::Sshd),
            vec![
                kv("include[0]", "/etc/ssh/sshd_config.d/*.conf"),
                kv("kbdinteractiveauthentication", "no"),
                kv("usepam", "yes"),
                kv("x11forwarding", "yes"),
                kv("printmotd", "no"),
                kv("acceptenv[0]", "LANG"),
                kv("acceptenv[1]", "LC_*"),
                kv("subsystem.sftp", "/usr/lib/openssh/sftp-server"),
                kv("match[user=anoncvs].x11forwarding", "no"),
                kv("match[user=anoncvs].allowtcpforwarding", "no"),
                kv("match[user=anoncvs].permittty", "no"),
                kv("match[user=anoncvs].forcecommand", "cvs server"),
            ]
        );
    }

    #[test]
    fn separators_quotes_comments() {
        let text = "Port=22\nListenAddress = 0.0.0.0\nBanner \"/etc/issue net\" # c\nForceCommand 'a \\'b\\'' x\nAuthorizedKeysFile .ssh/a#b\n  # indented\n";
        assert_eq!(
            keys(text, KeywordDialect::Sshd),
            vec![
                kv("port[0]", "22"),
                kv("listenaddress[0]", "0.0.0.0"),
                kv("banner", "/etc/issue net"),
                kv("forcecommand", "a 'b' x"),
                kv("authorizedkeysfile", ".ssh/a#b"),
            ]
        );
        let f = parse("Banner \"12\"\nPort 22\n", KeywordDialect::Sshd).unwrap();
        assert!(f.entries()[0].literal);
        assert!(!f.entries()[1].literal);
    }

    #[test]
    fn sshd_first_wins_lists_accumulate() {
        let text = "PermitRootLogin no\npermitrootlogin yes\nPort 22\nPort 2222\nAllowUsers a b\nAllowUsers c\nSubsystem sftp x\nSubsystem sftp y\nSubsystem other z\n";
        assert_eq!(
            keys(text, KeywordDialect::Sshd),
            vec![
                kv("permitrootlogin", "no"),
                kv("port[0]", "22"),
                kv("port[1]", "2222"),
                kv("allowusers[0]", "a"),
                kv("allowusers[1]", "b"),
                kv("allowusers[2]", "c"),
                kv("subsystem.sftp", "x"),
                kv("subsystem.other", "z"),
            ]
        );
    }

    #[test]
    fn match_blocks_are_scopes() {
        let text = "PasswordAuthentication no\nMatch User alice,bob Address 10.0.0.0/8\n  PasswordAuthentication yes\n  PasswordAuthentication no\nMATCH all\n  PermitTTY no\nHost *.example.com !bastion\n  User deploy\n";
        assert_eq!(
            keys(text, KeywordDialect::Sshd),
            vec![
                kv("passwordauthentication", "no"),
                kv("match[user=alice,bob address=10.0.0.0/8].passwordauthentication", "yes"),
                kv("match[all].permittty", "no"),
                kv("host[*.example.com !bastion].user", "deploy"),
            ]
        );
    }

    #[test]
    fn generic_dialect_redis() {
        let text = "# Redis configuration file example.\nbind 127.0.0.1 -::1\nport 6379\nsave 900 1\nsave 300 10\nrequirepass \"foobared\"\nmasterauth s3cret\nmaxmemory 100mb\nmaxmemory 200mb\nMatch x y\n";
        assert_eq!(
            keys(text, KeywordDialect::Generic),
            vec![
                kv("bind", "127.0.0.1 -::1"),
                kv("port", "6379"),
                kv("save[0]", "900 1"),
                kv("save[1]", "300 10"),
                kv("requirepass", "foobared"),
                kv("masterauth", "s3cret"),
                kv("maxmemory", "200mb"),
                kv("match", "x y"),
            ]
        );
    }

    #[test]
    fn includes_are_processed_in_place() {
        let main = parse(
            "Include /etc/ssh/sshd_config.d/*.conf\nPasswordAuthentication yes\nX11Forwarding yes\nMatch User a\n  Include /etc/ssh/match.conf\n  PermitTTY yes\n",
            KeywordDialect::Sshd,
        )
        .unwrap();
        assert_eq!(main.include_patterns(), vec!["/etc/ssh/sshd_config.d/*.conf", "/etc/ssh/match.conf"]);
        let dropin =
            parse("PasswordAuthentication no\nMatch Group admins\n  X11Forwarding no\n", KeywordDialect::Sshd).unwrap();
        let in_match = parse("PermitTTY no\n", KeywordDialect::Sshd).unwrap();
        let effective = main.with_includes(&[dropin, in_match]);
        let keys: Vec<(String, String)> = effective.entries().into_iter().map(|e| (e.key, e.value)).collect();
        assert_eq!(
            keys,
            vec![
                kv("include[0]", "/etc/ssh/sshd_config.d/*.conf"),
                // The drop-in comes first, so it wins over the main file's later line.
                kv("passwordauthentication", "no"),
                kv("match[group=admins].x11forwarding", "no"),
                // The drop-in's Match ends with the drop-in.
                kv("x11forwarding", "yes"),
                kv("match[user=a].include[0]", "/etc/ssh/match.conf"),
                kv("match[user=a].permittty", "no"),
            ]
        );
        // Fewer resolved includes than Include lines: the rest include nothing.
        assert_eq!(main.with_includes(&[]).entries(), main.entries());
    }

    #[test]
    fn dialect_from_path() {
        use std::path::Path;
        for p in ["/etc/ssh/sshd_config", "/etc/ssh/ssh_config", "/etc/ssh/sshd_config.d/50-cloud.conf", "SSH_CONFIG"] {
            assert_eq!(keyword_dialect(Path::new(p)), KeywordDialect::Sshd, "{p}");
        }
        for p in ["/etc/redis/redis.conf", "/etc/chrony/chrony.conf", "x"] {
            assert_eq!(keyword_dialect(Path::new(p)), KeywordDialect::Generic, "{p}");
        }
    }

    #[test]
    fn errors_have_positions() {
        assert_eq!(err("Port 22\n= 5\n"), ("missing keyword before '='".into(), 2, 1));
        assert_eq!(err("Banner \"open\n"), ("unclosed quote".into(), 1, 8));
        assert_eq!(err("  Match\n"), ("a Match or Host line needs a condition".into(), 1, 3));
        assert_eq!(err("Match User a Group\n"), ("a Match criterion needs a value".into(), 1, 1));
    }
}
