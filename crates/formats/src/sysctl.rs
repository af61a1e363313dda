//! `sysctl.conf` and `sysctl.d/*.conf`, as `sysctl --system` and `systemd-sysctl` read
//! them.
//!
//! - `key = value` or `key=value`; blanks around the key and the value are trimmed, the
//!   value runs to the end of the line (no inline comments: sysctl has none, so
//!   `kernel.printk = 4 4 1 7` is one value);
//! - blank lines, and lines whose first non-blank character is `#` or `;`;
//! - a leading `-` (write errors ignored, e.g. for a key the running kernel lacks) is not
//!   part of the key: `-net.ipv6.conf.all.forwarding = 1` reports
//!   `net.ipv6.conf.all.forwarding`. Whether errors are ignored changes nothing in the
//!   setting itself, so the marker is not reported;
//! - a key whose first separator is `/` is written in path form: `/` and `.` swap places,
//!   as sysctl does (`net/ipv4/conf/eth0.10/rp_filter` → `net.ipv4.conf.eth0/10.rp_filter`);
//! - glob keys (`net.ipv4.conf.*.rp_filter`) are kept as written;
//! - a key set twice keeps its last value (sysctl applies the lines in order), at its first
//!   position;
//! - values get their type inferred like INI (`1` is an int, `4 4 1 7` a string).
//!
//! Errors (with line and column): a line without `=`, an empty key.

use crate::env::TextEntry;
use crate::errors::SyntaxError;

pub(crate) fn parse_sysctl(text: &str) -> Result<Vec<TextEntry>, SyntaxError> {
    let mut out = Vec::new();
    for (index, raw_line) in text.split('\n').enumerate() {
        let line_no = index + 1;
        let line = raw_line.strip_suffix('\r').unwrap_or(raw_line);
        let body = line.trim_start();
        let indent = line.chars().count() - body.chars().count();
        if body.trim_end().is_empty() || body.starts_with(['#', ';']) {
            continue;
        }
        let Some(eq) = body.find('=') else {
            return Err(SyntaxError::new(
                "expected '=' after the key",
                line_no,
                indent + body.trim_end().chars().count() + 1,
            ));
        };
        let raw_key = body[..eq].trim();
        let key = raw_key.strip_prefix('-').unwrap_or(raw_key).trim_start();
        if key.is_empty() {
            return Err(SyntaxError::new("missing key before '='", line_no, indent + 1));
        }
        out.push(TextEntry { key: normalise_key(key), value: body[eq + 1..].trim().to_owned(), literal: false });
    }
    Ok(out)
}

/// Path form (`net/ipv4/ip_forward`) to dotted form: sysctl swaps `/` and `.` when the
/// first separator is `/`.
pub(crate) fn normalise_key(key: &str) -> String {
    let key = key.strip_prefix('/').unwrap_or(key);
    match key.find(['.', '/']) {
        Some(i) if key[i..].starts_with('/') => key
            .chars()
            .map(|c| match c {
                '/' => '.',
                '.' => '/',
                c => c,
            })
            .collect(),
        _ => key.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries(text: &str) -> Vec<(String, String)> {
        parse_sysctl(text).unwrap().into_iter().map(|e| (e.key, e.value)).collect()
    }
    fn kv(k: &str, v: &str) -> (String, String) {
        (k.to_owned(), v.to_owned())
    }
    fn err(text: &str) -> (String, u32, u32) {
        let e = parse_sysctl(text).unwrap_err();
        (e.message, e.line, e.column)
    }

    #[test]
    fn debian_style_sysctl_conf() {
        let text = "#\n# /etc/sysctl.conf - Configuration file for setting system variables\n\n#kernel.domainname = example.com\n\n; Uncomment the following to stop low-level messages on console\nkernel.printk = 3 4 1 3\n\nnet.ipv4.conf.default.rp_filter=1\n  net.ipv4.ip_forward = 1  \n-net.ipv6.conf.all.forwarding = 1\nnet/ipv4/conf/eth0.10/rp_filter = 2\nnet.ipv4.conf.*.accept_redirects = 0\nvm.swappiness =\r\n";
        assert_eq!(
            entries(text),
            vec![
                kv("kernel.printk", "3 4 1 3"),
                kv("net.ipv4.conf.default.rp_filter", "1"),
                kv("net.ipv4.ip_forward", "1"),
                kv("net.ipv6.conf.all.forwarding", "1"),
                kv("net.ipv4.conf.eth0/10.rp_filter", "2"),
                kv("net.ipv4.conf.*.accept_redirects", "0"),
                kv("vm.swappiness", ""),
            ]
        );
    }

    #[test]
    fn value_keeps_hash_and_equals() {
        assert_eq!(
            entries("kernel.core_pattern = |/bin/x %e # y=z\n"),
            vec![kv("kernel.core_pattern", "|/bin/x %e # y=z")]
        );
    }

    #[test]
    fn errors_have_positions() {
        assert_eq!(err("a = 1\n  net.ipv4.ip_forward\n"), ("expected '=' after the key".into(), 2, 22));
        assert_eq!(err(" = 1\n"), ("missing key before '='".into(), 1, 2));
        assert_eq!(err("- = 1\n"), ("missing key before '='".into(), 1, 1));
    }
}
