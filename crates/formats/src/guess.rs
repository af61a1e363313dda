//! Which line-based format a `.conf` of unknown kind is most likely in.
//!
//! Pure and deterministic: the same text always gives the same ranking, so a caller that
//! picks the first candidate picks the same format for a path every time its content
//! keeps its shape. Each format that parses the text without error and finds at least one
//! key is a candidate; candidates are ranked by the share of significant lines (not blank,
//! not a comment) written the way that format writes them, then by the number of keys,
//! then in a fixed order (nginx, systemd, sysctl, keyword, INI).

use crate::Format;
use crate::keyword::KeywordDialect;

/// One format the text parses as, and why it ranks where it does.
#[derive(Debug, Clone, PartialEq)]
pub struct Candidate {
    pub format: Format,
    /// Keys the format finds.
    pub keys: usize,
    /// Significant lines written the way this format writes them.
    pub native_lines: usize,
    /// All significant lines.
    pub lines: usize,
}

impl Candidate {
    /// Why it was chosen, for a log line or a file's status.
    pub fn reason(&self) -> String {
        format!(
            "{} of {} lines look like {}; {} keys",
            self.native_lines,
            self.lines,
            driftwatch_proto::format_name(self.format as i32),
            self.keys
        )
    }
}

const ORDER: [Format; 5] = [Format::Nginx, Format::Systemd, Format::Sysctl, Format::Keyword, Format::Ini];

/// The formats `text` parses as, best first (see the module docs).
pub fn candidates(text: &str) -> Vec<Candidate> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let significant: Vec<&str> =
        text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with(['#', ';'])).collect();
    let mut out: Vec<(usize, Candidate)> = Vec::new();
    for (rank, format) in ORDER.into_iter().enumerate() {
        let Some(Ok(entries)) = crate::text_entries(format, KeywordDialect::Generic, text) else { continue };
        if entries.is_empty() {
            continue;
        }
        let native_lines = significant.iter().filter(|l| looks_native(format, l)).count();
        out.push((rank, Candidate { format, keys: entries.len(), native_lines, lines: significant.len() }));
    }
    // Every candidate counts the same lines, so the native count orders the shares.
    out.sort_by(|(ra, a), (rb, b)| b.native_lines.cmp(&a.native_lines).then(b.keys.cmp(&a.keys)).then(ra.cmp(rb)));
    out.into_iter().map(|(_, c)| c).collect()
}

fn looks_native(format: Format, line: &str) -> bool {
    let key_of = |l: &str| l.split_once('=').map(|(k, _)| k.trim().to_owned());
    match format {
        Format::Nginx => line.ends_with([';', '{', '}']),
        Format::Systemd => {
            let header = line.starts_with('[') && line[1..].starts_with(|c: char| c.is_ascii_uppercase());
            let key = key_of(line).is_some_and(|k| {
                k.starts_with(|c: char| c.is_ascii_uppercase()) && k.chars().all(|c| c.is_ascii_alphanumeric())
            });
            header || key
        }
        Format::Sysctl => key_of(line).is_some_and(|k| {
            let k = k.strip_prefix('-').unwrap_or(&k).to_owned();
            k.contains(['.', '/']) && !k.contains(char::is_whitespace)
        }),
        Format::Keyword => line
            .split_once(char::is_whitespace)
            .is_some_and(|(k, _)| !k.is_empty() && !k.contains(['=', '[', '{', ';'])),
        Format::Ini => line.starts_with('[') || key_of(line).is_some_and(|k| !k.is_empty()),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn best(text: &str) -> Format {
        candidates(text).first().map(|c| c.format).unwrap_or(Format::Text)
    }

    #[test]
    fn each_shape_ranks_its_format_first() {
        assert_eq!(best("worker_processes auto;\nevents {\n  worker_connections 768;\n}\n"), Format::Nginx);
        assert_eq!(best("[Service]\nExecStart=/usr/bin/x\nRestart=always\n"), Format::Systemd);
        assert_eq!(best("net.ipv4.ip_forward = 1\nvm.swappiness=10\n"), Format::Sysctl);
        assert_eq!(best("server 0.pool.ntp.org iburst\nmakestep 1 3\nrtcsync\n"), Format::Keyword);
        assert_eq!(best("[database]\nhost = db\nport = 5432\n"), Format::Ini);
    }

    #[test]
    fn unparsable_formats_are_not_candidates_and_reasons_say_why() {
        let c = candidates("listen 80\n}\n");
        assert!(c.iter().all(|c| c.format != Format::Nginx));
        let c = candidates("net.ipv4.ip_forward = 1\n");
        assert_eq!(c[0].reason(), "1 of 1 lines look like sysctl; 1 keys");
        assert!(candidates("").is_empty());
    }
}
