//! Rule 4, **high entropy**: a long, random-looking string, with the everyday values
//! that merely look random (paths, URLs, host names, versions, UUIDs, hex digests)
//! left visible.

use super::names::split_words;
use super::{HIGH_ENTROPY_MIN_BITS, HIGH_ENTROPY_MIN_LEN};

/// Shannon entropy of the value's characters, in bits per character.
pub fn shannon_entropy(value: &str) -> f64 {
    let mut counts: std::collections::HashMap<char, usize> = std::collections::HashMap::new();
    let mut n = 0usize;
    for c in value.chars() {
        *counts.entry(c).or_default() += 1;
        n += 1;
    }
    if n == 0 {
        return 0.0;
    }
    let n = n as f64;
    counts.values().map(|&k| k as f64 / n).map(|p| -p * p.log2()).sum()
}

/// The "high entropy" rule: a random-looking string.
///
/// Requires ≥ 24 characters, no whitespace, at least two of {lower, upper, digit},
/// Shannon entropy ≥ 3.7 bits/char, and a random *texture*: split into words (on
/// punctuation, camelCase humps and letter/digit changes) the average word is at most 3
/// characters long — random strings change character class every couple of characters,
/// identifiers (`enable_multi_strategy_discovery_v2`, `BrowserPoolManagerConfig2024`) do not.
///
/// Never flagged (documented choices):
/// - absolute/home/relative paths (`/x`, `~/x`, `./x`, `C:\x`) and lower-case `a/b/c` paths;
/// - URLs (`scheme://...`; those with credentials are caught by their own rule);
/// - dotted names: host names, versions, Java-ish class names, file names;
/// - e-mail addresses;
/// - UUIDs and *pure hex of any length* (artifact checksums, commit ids, image digests are
///   everyday config values and their drift should stay visible; hex API keys are still
///   masked when their key is named like a secret);
/// - digests written as `sha256:...`, `sha512-...` (SRI), `md5:...`.
pub fn looks_random(value: &str) -> bool {
    let n = value.chars().count();
    if n < HIGH_ENTROPY_MIN_LEN || value.chars().any(char::is_whitespace) {
        return false;
    }
    if is_excluded_from_entropy(value) {
        return false;
    }
    let classes = [
        value.chars().any(|c| c.is_ascii_lowercase()),
        value.chars().any(|c| c.is_ascii_uppercase()),
        value.chars().any(|c| c.is_ascii_digit()),
    ]
    .iter()
    .filter(|&&b| b)
    .count();
    if classes < 2 {
        return false;
    }
    if shannon_entropy(value) < HIGH_ENTROPY_MIN_BITS {
        return false;
    }
    average_word_len(value) <= 3.0
}

fn average_word_len(value: &str) -> f64 {
    let words = split_words(value);
    if words.is_empty() {
        return f64::INFINITY;
    }
    let letters: usize = words.iter().map(|w| w.chars().count()).sum();
    letters as f64 / words.len() as f64
}

fn is_excluded_from_entropy(value: &str) -> bool {
    let lower = value.to_ascii_lowercase();
    // Paths.
    if value.starts_with('/')
        || value.starts_with("~/")
        || value.starts_with("./")
        || value.starts_with("../")
        || is_windows_path(value)
    {
        return true;
    }
    if value.contains('/')
        && value
            .split('/')
            .all(|seg| seg.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "._-".contains(c)))
    {
        return true;
    }
    // URLs (with credentials they were caught earlier).
    if value.contains("://") {
        return true;
    }
    // Hex (checksums, commit ids) and UUIDs.
    if value.chars().all(|c| c.is_ascii_hexdigit() || c == '-') {
        return true;
    }
    let inner = value.trim_start_matches('{').trim_end_matches('}');
    if is_uuid(inner) {
        return true;
    }
    // Digests.
    const DIGESTS: &[&str] = &["sha1", "sha224", "sha256", "sha384", "sha512", "md5", "blake2b", "blake2s", "blake3"];
    for d in DIGESTS {
        for sep in [':', '-', '='] {
            if lower.contains(&format!("{d}{sep}")) {
                return true;
            }
        }
    }
    // Dotted names: host names, versions, class and file names.
    if value.contains('.')
        && value.split('.').all(|label| {
            !label.is_empty() && label.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '+' | '~'))
        })
    {
        return true;
    }
    // host:port / version-ish with dots and a trailing port.
    if let Some((host, port)) = value.rsplit_once(':')
        && !port.is_empty()
        && port.chars().all(|c| c.is_ascii_digit())
        && host.contains('.')
        && host.split('.').all(|l| !l.is_empty() && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'))
    {
        return true;
    }
    // E-mail addresses.
    if let Some((local, domain)) = value.split_once('@')
        && !local.is_empty()
        && !domain.contains('@')
        && domain.contains('.')
    {
        return true;
    }
    false
}

fn is_windows_path(value: &str) -> bool {
    let b = value.as_bytes();
    b.len() >= 3 && b[0].is_ascii_alphabetic() && b[1] == b':' && (b[2] == b'\\' || b[2] == b'/')
}

fn is_uuid(value: &str) -> bool {
    let groups: Vec<&str> = value.split('-').collect();
    groups.len() == 5
        && groups.iter().zip([8, 4, 4, 4, 12]).all(|(g, n)| g.len() == n && g.chars().all(|c| c.is_ascii_hexdigit()))
}
