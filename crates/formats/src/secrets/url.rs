//! Rule 2, **url with credentials**: a URL whose user info holds a password or a token
//! (`postgresql://user:pass@host/db`, `https://<long token>@host`).

use super::tokens::has_token_shape;

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
