//! Does a key/value pair look like a secret?
//!
//! Four independent rules, tried in this order (the first match gives the reason):
//!
//! 1. **key name** — the last segment of the key path (list indexes stripped) names a
//!    secret (`password`, `api_key`, `clientSecret`, `DB_PASS`, ...) and no other word in it
//!    marks the key as a *setting about* the secret (`max_tokens`, `token_ttl_seconds`,
//!    `password_min_length`, `token_file`, ...). A key directly under a collection of
//!    secrets (`secrets.db`, `credentials.github`) counts too. A value that only points at
//!    the secret (an absolute path, `${VAR}`, `{{ template }}`) is not masked by this rule.
//! 2. **url with credentials** — the value holds a URL with user info:
//!    `postgresql://user:pass@host/db`, or `https://<long token>@host`. A bare short user
//!    name (`ssh://git@github.com/...`) is not a credential.
//! 3. **token shape** — well-known token formats (Hugging Face, OpenAI/Stripe, GitHub,
//!    GitLab, Slack, AWS access key ids, Google API keys, npm, PyPI, JWTs, PEM private keys,
//!    Slack/Discord webhook URLs), found anywhere in the value at a word boundary.
//! 4. **high entropy** — a long (≥ 24 chars), whitespace-free, random-looking string: see
//!    [`looks_random`] for what is excluded (paths, URLs, host names, versions, UUIDs,
//!    pure hex, digests, identifiers made of words).
//!
//! The value given here is always text. Typing is the caller's business: `analyze`
//! never masks null or bool values, masks numbers only under a secret key name, and
//! masks strings by all four rules.

/// Reason strings, exactly as the proto documents them.
pub const REASON_KEY_NAME: &str = "key name";
pub const REASON_URL_CREDENTIALS: &str = "url with credentials";
pub const REASON_TOKEN_SHAPE: &str = "token shape";
pub const REASON_HIGH_ENTROPY: &str = "high entropy";

/// Minimum length (in characters) for the high-entropy rule.
pub const HIGH_ENTROPY_MIN_LEN: usize = 24;
/// Minimum Shannon entropy (bits per character) for the high-entropy rule.
pub const HIGH_ENTROPY_MIN_BITS: f64 = 3.7;

/// Why a key/value pair looks secret, or None. Empty (or all-whitespace) values are never
/// secret.
pub fn secret_reason(key_path: &str, value: &str) -> Option<&'static str> {
    if value.trim().is_empty() {
        return None;
    }
    if key_name_match(key_path).is_some() && !is_reference(value) {
        return Some(REASON_KEY_NAME);
    }
    if url_has_credentials(value) {
        return Some(REASON_URL_CREDENTIALS);
    }
    if has_token_shape(value) {
        return Some(REASON_TOKEN_SHAPE);
    }
    if looks_random(value) {
        return Some(REASON_HIGH_ENTROPY);
    }
    None
}

/// Values under a secret-named key that point at the secret instead of holding it: an
/// absolute file path with at least two segments (`token_file`-like values under
/// `GOOGLE_APPLICATION_CREDENTIALS` or `ssh_key`), or a bare variable / template reference
/// (`${DB_PASSWORD}`, `$DB_PASSWORD`, `{{ vault_db_password }}`). A reference with a
/// default (`${X:-hunter2}`) is not bare and stays masked.
fn is_reference(value: &str) -> bool {
    let v = value.trim();
    let path_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
    let ident = |s: &str| {
        !s.is_empty()
            && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
            && !s.starts_with(|c: char| c.is_ascii_digit())
    };
    if let Some(rest) = v.strip_prefix('/').or_else(|| v.strip_prefix("~/")) {
        let segments: Vec<&str> = rest.trim_end_matches('/').split('/').collect();
        return segments.len() >= 2 && segments.iter().all(|s| !s.is_empty() && s.chars().all(path_char));
    }
    if let Some(inner) = v.strip_prefix("${").and_then(|r| r.strip_suffix('}')) {
        return ident(inner);
    }
    if let Some(inner) = v.strip_prefix('$') {
        return ident(inner);
    }
    if let Some(inner) = v.strip_prefix("{{").and_then(|r| r.strip_suffix("}}")) {
        let inner = inner.trim();
        return !inner.is_empty() && inner.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.'));
    }
    false
}

/// Does the key path's name alone say "secret"? (The "key name" rule.)
pub fn is_secret_key_name(key_path: &str) -> bool {
    key_name_match(key_path).is_some()
}

/// How a key name matched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct KeyMatch {
    /// Matched only through a plural (`tokens`, `passwords`) or a parent collection
    /// (`secrets.x`). Numbers under such keys are usually counts (`context_tokens: 8192`),
    /// so `analyze` masks only string values for these.
    pub weak: bool,
}

/// Single words that name a secret.
const SECRET_WORDS: &[&str] = &[
    "password",
    "passwd",
    "pwd",
    "pass",
    "pgpassword",
    "passphrase",
    "secret",
    "token",
    "credential",
    "credentials",
    "creds",
    "auth",
    "authorization",
    "bearer",
    "apikey",
    "apitoken",
    "authtoken",
    "accesstoken",
    "accesskey",
    "secretkey",
    "privatekey",
    "clientsecret",
    "sessionkey",
    "signingkey",
    "encryptionkey",
    "masterkey",
];

/// First words of two-word secret names whose second word is `key`: `api_key`,
/// `privateKey`, `ACCESS_KEY`, `app_key`, ...
const KEY_PAIR_FIRST: &[&str] =
    &["api", "private", "access", "secret", "session", "signing", "encryption", "master", "app", "account", "license"];

/// Words that make the key a setting *about* a secret wherever they stand: counts, sizes,
/// durations, toggles (`max_tokens`, `token_ttl_seconds`, `auth_enabled`,
/// `min_password_length`).
const SETTING_WORDS_ANYWHERE: &[&str] = &[
    "max",
    "maximum",
    "min",
    "minimum",
    "count",
    "num",
    "number",
    "limit",
    "limits",
    "size",
    "ttl",
    "timeout",
    "expiry",
    "expires",
    "expire",
    "expiration",
    "lifetime",
    "duration",
    "seconds",
    "secs",
    "ms",
    "millis",
    "minutes",
    "mins",
    "hours",
    "days",
    "length",
    "len",
    "enabled",
    "enable",
    "disabled",
    "disable",
    "required",
    "require",
    "rotation",
    "rotate",
    "interval",
    "retries",
    "retry",
    "attempts",
    "window",
    "rate",
    "budget",
    "per",
    "threshold",
    "score",
    "ratio",
    "percent",
    "percentage",
    "strength",
    "complexity",
    "policy",
    "usage",
    "used",
    "total",
    "reserved",
    "chars",
];

/// Words that make the key a setting about a secret when they come *after* the secret word
/// (`token_file`, `password_path`, `auth_provider`, `api_key_header`, `secret_name`), but
/// name the secret's owner when they come before it (`STORAGE_API_KEY`, `DB_USER_PASSWORD`,
/// `EMAIL_PASSWORD`, `SERVICE_TOKEN` stay secret).
const SETTING_WORDS_AFTER: &[&str] = &[
    "age",
    "sec",
    "file",
    "files",
    "path",
    "dir",
    "directory",
    "url",
    "uri",
    "endpoint",
    "host",
    "hostname",
    "port",
    "server",
    "service",
    "header",
    "name",
    "type",
    "mode",
    "provider",
    "method",
    "prefix",
    "format",
    "algorithm",
    "alg",
    "algo",
    "location",
    "source",
    "env",
    "var",
    "ref",
    "store",
    "storage",
    "backend",
    "driver",
    "plugin",
    "strategy",
    "engine",
    "manager",
    "mount",
    "version",
    "description",
    "label",
    "hint",
    "help",
    "scope",
    "scopes",
    "audience",
    "issuer",
    "realm",
    "domain",
    "level",
    "field",
    "param",
    "pattern",
    "regex",
    "user",
    "username",
    "email",
];

/// Parent segments that hold a collection of secrets (`secrets.db`, `credentials.github`).
const SECRET_COLLECTIONS: &[&str] = &["secrets", "credentials", "passwords", "creds"];

/// Apply the key-name rule to a flattened key path.
pub(crate) fn key_name_match(key_path: &str) -> Option<KeyMatch> {
    let mut segments = key_path.rsplit('.');
    let last = strip_indexes(segments.next().unwrap_or(""));
    let words = split_words(last);
    if words.iter().any(|w| SETTING_WORDS_ANYWHERE.contains(&w.as_str())) {
        return None;
    }
    let is_setting_after = |from: usize| words[from..].iter().any(|w| SETTING_WORDS_AFTER.contains(&w.as_str()));
    if let Some((end, found)) = secret_words_in(&words) {
        return if is_setting_after(end) { None } else { Some(found) };
    }
    // A key directly under a collection of secrets (`secrets.db`), unless its own name says
    // it is a setting (`credentials.username`, `secrets.type`).
    if words.is_empty() || is_setting_after(0) {
        return None;
    }
    let parent = split_words(strip_indexes(segments.next()?));
    if parent.last().is_some_and(|w| SECRET_COLLECTIONS.contains(&w.as_str())) {
        return Some(KeyMatch { weak: true });
    }
    None
}

/// The first secret name among `words`: (index just past it, how it matched). A singular
/// match beats a plural one (`tokens_secret` is a strong match).
fn secret_words_in(words: &[String]) -> Option<(usize, KeyMatch)> {
    let mut plural: Option<(usize, KeyMatch)> = None;
    for (i, w) in words.iter().enumerate() {
        let w = w.as_str();
        if SECRET_WORDS.contains(&w) {
            return Some((i + 1, KeyMatch { weak: false }));
        }
        if let Some(next) = words.get(i + 1)
            && KEY_PAIR_FIRST.contains(&w)
        {
            if next == "key" {
                return Some((i + 2, KeyMatch { weak: false }));
            }
            if next == "keys" && plural.is_none() {
                plural = Some((i + 2, KeyMatch { weak: true }));
            }
        }
        if let Some(singular) = w.strip_suffix('s')
            && singular.len() >= 3
            && SECRET_WORDS.contains(&singular)
            && plural.is_none()
        {
            plural = Some((i + 1, KeyMatch { weak: true }));
        }
    }
    plural
}

/// `a[0][1]` → `a`.
fn strip_indexes(mut segment: &str) -> &str {
    while segment.ends_with(']') {
        match segment.rfind('[') {
            Some(open) => segment = &segment[..open],
            None => break,
        }
    }
    segment
}

/// Split a key segment into lower-case words: on every non-alphanumeric character, on
/// camelCase humps (`apiKey` → api key, `APIKey` → api key) and on letter/digit boundaries
/// (`password2` → password 2). Whole words only, so `author` is not `auth`.
pub(crate) fn split_words(segment: &str) -> Vec<String> {
    let mut words = Vec::new();
    for part in segment.split(|c: char| !c.is_alphanumeric()) {
        let chars: Vec<char> = part.chars().collect();
        let mut current = String::new();
        for (i, &c) in chars.iter().enumerate() {
            if i > 0 {
                let prev = chars[i - 1];
                let next = chars.get(i + 1).copied();
                let boundary = (prev.is_lowercase() && c.is_uppercase())
                    || (prev.is_alphabetic() && c.is_numeric())
                    || (prev.is_numeric() && c.is_alphabetic())
                    || (prev.is_uppercase() && c.is_uppercase() && next.is_some_and(|n| n.is_lowercase()));
                if boundary && !current.is_empty() {
                    words.push(std::mem::take(&mut current));
                }
            }
            current.extend(c.to_lowercase());
        }
        if !current.is_empty() {
            words.push(current);
        }
    }
    words
}

// ---------------------------------------------------------------------------------------
// url with credentials

/// Does the value contain `scheme://userinfo@host` with real credentials?
///
/// Credentials are `user:password` with a non-empty password, or a user part alone that
/// is long (≥ 16 chars) or token-shaped (`https://ghp_...@github.com`). A short bare user
/// name (`ssh://git@github.com`, `postgres://postgres@localhost`) is not a credential.
pub fn url_has_credentials(value: &str) -> bool {
    let mut search = 0;
    while let Some(found) = value[search..].find("://") {
        let sep = search + found;
        search = sep + 3;
        // scheme: [A-Za-z][A-Za-z0-9+.-]* immediately before "://"
        let scheme_len = value[..sep]
            .chars()
            .rev()
            .take_while(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '.' | '-'))
            .count();
        if scheme_len == 0 || !value[sep - scheme_len..].starts_with(|c: char| c.is_ascii_alphabetic()) {
            continue;
        }
        let rest = &value[sep + 3..];
        let rest = &rest[..rest.find(char::is_whitespace).unwrap_or(rest.len())];
        // Standard form: the authority ends at the first / ? #, user info before its last @.
        let authority = &rest[..rest.find(['/', '?', '#']).unwrap_or(rest.len())];
        if let Some(at) = authority.rfind('@') {
            if userinfo_is_credential(&authority[..at]) {
                return true;
            }
            continue;
        }
        // Sloppy form: an unencoded '/' inside the password (`user:pa/ss@host`).
        if let Some(at) = rest.rfind('@') {
            let userinfo = &rest[..at];
            if let Some((user, password)) = userinfo.split_once(':') {
                let first_seg = password.split('/').next().unwrap_or("");
                let looks_like_port = !first_seg.is_empty() && first_seg.chars().all(|c| c.is_ascii_digit());
                if !user.is_empty() && !user.contains('/') && !password.is_empty() && !looks_like_port {
                    return true;
                }
            }
        }
    }
    false
}

fn userinfo_is_credential(userinfo: &str) -> bool {
    if userinfo.is_empty() {
        return false;
    }
    match userinfo.split_once(':') {
        Some((_, password)) if !password.is_empty() => true,
        Some((user, _)) => user_part_is_token(user),
        None => user_part_is_token(userinfo),
    }
}

fn user_part_is_token(user: &str) -> bool {
    user.chars().count() >= 16 || has_token_shape(user)
}

// ---------------------------------------------------------------------------------------
// token shape

fn is_alnum(c: char) -> bool {
    c.is_ascii_alphanumeric()
}
fn is_alnum_us(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}
fn is_alnum_dash(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '-'
}
fn is_alnum_us_dash(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == '-'
}
fn is_upper_alnum(c: char) -> bool {
    c.is_ascii_uppercase() || c.is_ascii_digit()
}

/// A prefixed token: the prefix, at a word boundary, followed by at least `min_body`
/// characters accepted by `body`, of which at least one is a digit or an upper-case letter
/// (real tokens are random; `sk_this_is_a_setting_name` is not).
struct Prefixed {
    prefix: &'static str,
    min_body: usize,
    body: fn(char) -> bool,
}

const PREFIXED: &[Prefixed] = &[
    Prefixed { prefix: "hf_", min_body: 20, body: is_alnum },
    Prefixed { prefix: "sk-", min_body: 20, body: is_alnum_us_dash },
    Prefixed { prefix: "sk_", min_body: 16, body: is_alnum_us },
    Prefixed { prefix: "rk_", min_body: 16, body: is_alnum_us },
    Prefixed { prefix: "ghp_", min_body: 20, body: is_alnum },
    Prefixed { prefix: "gho_", min_body: 20, body: is_alnum },
    Prefixed { prefix: "ghu_", min_body: 20, body: is_alnum },
    Prefixed { prefix: "ghs_", min_body: 20, body: is_alnum },
    Prefixed { prefix: "ghr_", min_body: 20, body: is_alnum },
    Prefixed { prefix: "github_pat_", min_body: 20, body: is_alnum_us },
    Prefixed { prefix: "glpat-", min_body: 20, body: is_alnum_us_dash },
    Prefixed { prefix: "xoxb-", min_body: 10, body: is_alnum_dash },
    Prefixed { prefix: "xoxa-", min_body: 10, body: is_alnum_dash },
    Prefixed { prefix: "xoxp-", min_body: 10, body: is_alnum_dash },
    Prefixed { prefix: "xoxr-", min_body: 10, body: is_alnum_dash },
    Prefixed { prefix: "xoxs-", min_body: 10, body: is_alnum_dash },
    Prefixed { prefix: "xapp-", min_body: 10, body: is_alnum_dash },
    Prefixed { prefix: "AIza", min_body: 30, body: is_alnum_us_dash },
    Prefixed { prefix: "npm_", min_body: 30, body: is_alnum },
    Prefixed { prefix: "pypi-", min_body: 40, body: is_alnum_us_dash },
];

/// Does the value contain a well-known token format?
pub fn has_token_shape(value: &str) -> bool {
    for p in PREFIXED {
        for (start, _) in value.match_indices(p.prefix) {
            if !at_word_start(value, start) {
                continue;
            }
            let body: String = value[start + p.prefix.len()..].chars().take_while(|&c| (p.body)(c)).collect();
            if body.chars().count() >= p.min_body && body.chars().any(|c| c.is_ascii_digit() || c.is_ascii_uppercase())
            {
                return true;
            }
        }
    }
    // AWS access key ids: AKIA/ASIA + exactly 16 upper-case alphanumerics.
    for prefix in ["AKIA", "ASIA"] {
        for (start, _) in value.match_indices(prefix) {
            if !at_word_start(value, start) {
                continue;
            }
            let rest = &value[start + 4..];
            let n = rest.chars().take_while(|&c| is_upper_alnum(c)).count();
            let after = rest.chars().nth(n);
            if n == 16 && !after.is_some_and(is_alnum) {
                return true;
            }
        }
    }
    // JWT: eyJ<header>.<payload>.<signature>, base64url parts.
    for (start, _) in value.match_indices("eyJ") {
        if at_word_start(value, start) && is_jwt_at(&value[start..]) {
            return true;
        }
    }
    // PEM private keys (RSA, EC, OPENSSH, ENCRYPTED, PGP ... PRIVATE KEY).
    if let Some(begin) = value.find("-----BEGIN ")
        && value[begin..].contains("PRIVATE KEY")
    {
        return true;
    }
    // Webhook URLs whose path is the credential.
    for marker in ["hooks.slack.com/services/", "discord.com/api/webhooks/", "discordapp.com/api/webhooks/"] {
        if let Some(at) = value.find(marker) {
            let tail = &value[at + marker.len()..];
            if tail.chars().take_while(|c| !c.is_whitespace()).count() >= 10 {
                return true;
            }
        }
    }
    false
}

/// Is `start` (a byte index at a char boundary) the start of a word?
fn at_word_start(value: &str, start: usize) -> bool {
    !value[..start].chars().next_back().is_some_and(|c| c.is_alphanumeric() || c == '_')
}

fn is_jwt_at(s: &str) -> bool {
    let token: &str = &s[..s.find(|c: char| !(is_alnum_us_dash(c) || c == '.')).unwrap_or(s.len())];
    let mut parts = token.split('.');
    let (Some(header), Some(payload), Some(_signature)) = (parts.next(), parts.next(), parts.next()) else {
        return false;
    };
    header.len() >= 10 && payload.len() >= 10
}

// ---------------------------------------------------------------------------------------
// high entropy

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
