//! Rule 1, **key name**: does the key path name a secret (`DB_PASSWORD`, `apiKey`,
//! `secrets.db`) rather than a setting about one (`token_ttl_seconds`, `password_file`)?
//! Words come from splitting the key on punctuation, camelCase humps and letter/digit
//! changes; whole words only, so `author` is not `auth`.

/// Values under a secret-named key that point at the secret instead of holding it: an
/// absolute file path with at least two segments (`token_file`-like values under
/// `GOOGLE_APPLICATION_CREDENTIALS` or `ssh_key`), or a bare variable / template reference
/// (`${DB_PASSWORD}`, `$DB_PASSWORD`, `{{ vault_db_password }}`). A reference with a
/// default (`${X:-hunter2}`) is not bare and stays masked.
pub(super) fn is_reference(value: &str) -> bool {
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
    "pw",
    "pass",
    "pin",
    "psk",
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
    // redis.conf: the server's password and the one it uses towards its primary.
    "requirepass",
    "masterauth",
];

/// Words that, followed by `key`, name key material: what it is for (`api_key`,
/// `signing_key`, `ACCESS_KEY`, `app_key`) or the primitive it feeds (`hmac_key`,
/// `aes_key`, `jwt_key`). A `key` after any other word is an identifier
/// (`sort_key`, `cache_key`, `primary_key`, `public_key`).
const KEY_PAIR_FIRST: &[&str] = &[
    "api",
    "private",
    "access",
    "secret",
    "session",
    "signing",
    "encryption",
    "master",
    "app",
    "account",
    "license",
    "hmac",
    "jwt",
    "aes",
    "cipher",
    "crypto",
    "csrf",
    "cookie",
    "shared",
    "preshared",
    "sign",
    "decryption",
    "wrapping",
];

/// Words that, after the last secret word, make the key a setting *about* the secret:
/// counts, sizes, durations, toggles (`token_ttl_seconds`, `auth_enabled`,
/// `password_min_length`, `SECRET_ROTATION_DAYS`), and where or how it is found
/// (`token_file`, `password_path`, `auth_provider`, `api_key_header`, `secret_name`).
/// Before the secret word they never cancel it: they name the secret's owner or use
/// (`STORAGE_API_KEY`, `AUTH_SERVICE_TOKEN`, `MS_CLIENT_SECRET`, `DB_USER_PASSWORD`).
const SETTING_WORDS: &[&str] = &[
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

/// Words that make a following *plural* secret word a count: `max_tokens`,
/// `num_tokens`, `min_passwords`. (A singular one stays a secret: `MAX_TOKEN` is
/// not a count.)
const COUNT_WORDS: &[&str] = &["max", "maximum", "min", "minimum", "num", "number", "count", "total"];

/// Parent segments that hold a collection of secrets (`secrets.db`, `credentials.github`).
const SECRET_COLLECTIONS: &[&str] = &["secrets", "credentials", "passwords", "creds"];

/// Apply the key-name rule to a flattened key path.
pub(crate) fn key_name_match(key_path: &str) -> Option<KeyMatch> {
    let mut segments = key_path.rsplit('.');
    let last = strip_indexes(segments.next().unwrap_or(""));
    let words = split_words(last);
    let setting_in = |ws: &[String]| ws.iter().any(|w| SETTING_WORDS.contains(&w.as_str()));
    // The last secret word decides: only words after it can make the key a setting.
    if let Some(m) = last_secret_word(&words) {
        if setting_in(&words[m.end..]) {
            return None;
        }
        if m.found.weak && words[..m.start].iter().any(|w| COUNT_WORDS.contains(&w.as_str())) {
            return None;
        }
        return Some(m.found);
    }
    // A key directly under a collection of secrets (`secrets.db`), unless its own name says
    // it is a setting (`credentials.username`, `secrets.type`).
    if words.is_empty() || setting_in(&words) {
        return None;
    }
    let parent = split_words(strip_indexes(segments.next()?));
    if parent.last().is_some_and(|w| SECRET_COLLECTIONS.contains(&w.as_str())) {
        return Some(KeyMatch { weak: true });
    }
    None
}

/// One secret name found among a key's words.
struct SecretWord {
    /// Index of its first word, and just past its last.
    start: usize,
    end: usize,
    found: KeyMatch,
}

/// The last secret name among `words`. A singular one (`token`, `api_key`) is strong; a
/// plural (`tokens`, `api_keys`) weak, and a strong one anywhere wins over a later
/// plural (`tokens_secret` is strong).
fn last_secret_word(words: &[String]) -> Option<SecretWord> {
    let mut strong: Option<SecretWord> = None;
    let mut weak: Option<SecretWord> = None;
    for (i, w) in words.iter().enumerate() {
        let w = w.as_str();
        if SECRET_WORDS.contains(&w) {
            strong = Some(SecretWord { start: i, end: i + 1, found: KeyMatch { weak: false } });
        }
        if let Some(next) = words.get(i + 1)
            && KEY_PAIR_FIRST.contains(&w)
        {
            if next == "key" {
                strong = Some(SecretWord { start: i, end: i + 2, found: KeyMatch { weak: false } });
            }
            if next == "keys" {
                weak = Some(SecretWord { start: i, end: i + 2, found: KeyMatch { weak: true } });
            }
        }
        if let Some(singular) = w.strip_suffix('s')
            && singular.len() >= 3
            && SECRET_WORDS.contains(&singular)
        {
            weak = Some(SecretWord { start: i, end: i + 1, found: KeyMatch { weak: true } });
        }
    }
    strong.or(weak)
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
pub(super) fn split_words(segment: &str) -> Vec<String> {
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
