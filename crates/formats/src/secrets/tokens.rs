//! Rule 3, **token shape**: well-known token formats (prefixed API tokens, AWS access
//! key ids, JWTs, PEM private keys, webhook URLs), found anywhere in a value at a word
//! boundary.

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
