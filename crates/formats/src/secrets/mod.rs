//! Does a key/value pair look like a secret?
//!
//! Four independent rules (a module each: `names`, `url`, `tokens`, `entropy`), tried in
//! this order (the first match gives the reason):
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

mod entropy;
mod names;
mod tokens;
mod url;

pub use entropy::looks_random;
use names::is_reference;
pub use names::is_secret_key_name;
pub(crate) use names::key_name_match;
pub use tokens::has_token_shape;
pub use url::url_has_credentials;

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
