//! Operator credentials as the server keeps them, and the pure rules over them:
//! token text, hashing, name checks, whether a credential is usable now. No I/O.

use driftwatch_proto::v1::{self, Role};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Store kind of [`driftwatch_store::IdentityRecord`] for operator credentials.
pub const OPERATOR_KIND: &str = "operator";

/// Every operator token starts with this, so a leaked one is recognisable (secret
/// scanners, logs) and never mistaken for an enrollment token.
pub const TOKEN_PREFIX: &str = "dwt_";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    #[default]
    Token,
    Certificate,
}

/// One token or operator certificate. A token is kept as its hash, never its text.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct StoredCredential {
    /// A token's public part, or a certificate's serial (hex).
    pub id: String,
    pub kind: Kind,
    pub name: String,
    /// As [`driftwatch_proto::role_name`] writes it.
    pub role: String,
    /// SHA-256 (hex) of the whole token text; empty for certificates.
    pub hash: String,
    pub created_ms: i64,
    /// 0: never.
    pub expires_ms: i64,
    pub revoked_ms: Option<i64>,
    pub actor: String,
    pub reason: String,
}

impl StoredCredential {
    pub fn role(&self) -> Role {
        driftwatch_proto::parse_role(&self.role).unwrap_or(Role::Unspecified)
    }

    /// Why it authenticates nobody at `now_ms` (`None`: it does).
    pub fn refusal(&self, now_ms: i64) -> Option<String> {
        let what = match self.kind {
            Kind::Token => "token",
            Kind::Certificate => "operator certificate",
        };
        if self.revoked_ms.is_some() {
            return Some(format!("{what} {} ('{}') is revoked", self.id, self.name));
        }
        if self.expires_ms != 0 && now_ms >= self.expires_ms {
            return Some(format!("{what} {} ('{}') has expired", self.id, self.name));
        }
        if self.role() == Role::Unspecified {
            return Some(format!("{what} {} ('{}') has no role", self.id, self.name));
        }
        None
    }

    pub fn to_proto(&self) -> v1::Credential {
        let ts = |ms: i64| Some(driftwatch_proto::timestamp_from_millis(ms));
        v1::Credential {
            id: self.id.clone(),
            kind: match self.kind {
                Kind::Token => v1::CredentialKind::Token,
                Kind::Certificate => v1::CredentialKind::Certificate,
            } as i32,
            name: self.name.clone(),
            role: self.role() as i32,
            created_at: ts(self.created_ms),
            expires_at: (self.expires_ms != 0).then(|| driftwatch_proto::timestamp_from_millis(self.expires_ms)),
            revoked_at: self.revoked_ms.and_then(ts),
            actor: self.actor.clone(),
            reason: self.reason.clone(),
        }
    }
}

/// A new token: (`dwt_<id>.<secret>`, id). 64 bits of id for listing, 256 bits of secret.
pub fn new_token() -> (String, String) {
    let id = hex::encode(rand::random::<[u8; 8]>());
    let secret = hex::encode(rand::random::<[u8; 32]>());
    (format!("{TOKEN_PREFIX}{id}.{secret}"), id)
}

/// The id part of a presented token, if it has the shape of one.
pub fn token_id(token: &str) -> Option<&str> {
    let (id, secret) = token.strip_prefix(TOKEN_PREFIX)?.split_once('.')?;
    (id.len() == 16 && id.bytes().all(|b| b.is_ascii_hexdigit()) && !secret.is_empty()).then_some(id)
}

/// The hash a token is stored by (hex) and compared by.
pub fn token_hash(token: &str) -> String {
    hex::encode(token_digest(token))
}

/// [`token_hash`] as bytes: checked on every operator call, so no allocation.
pub fn token_digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.trim().as_bytes()).into()
}

/// Equal in time independent of where they differ (both are digests, but the
/// comparison should not be the thing to reason about).
pub fn same_hash(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// A principal name: what the audit log shows as the actor.
pub fn check_name(name: &str) -> Result<(), String> {
    // The characters of a SPIFFE path segment (an operator certificate's name is one),
    // shorter, and not starting like a flag or a hidden file.
    let ok = driftwatch_pki::check_name(name).is_ok() && name.len() <= 64 && !name.starts_with(['.', '-']);
    if ok {
        Ok(())
    } else {
        Err(format!(
            "name {name:?}: 1-64 characters of A-Z a-z 0-9 . _ - (not starting with . or -); it is the audit log's actor"
        ))
    }
}

/// The principal a certificate authenticates as: its SPIFFE identity, so an audit
/// record tells a certificate from a token of the same name.
pub fn certificate_principal(name: &str) -> String {
    driftwatch_pki::Identity::Operator(name.to_string()).spiffe_id()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cred(kind: Kind, role: &str) -> StoredCredential {
        StoredCredential {
            id: "0011223344556677".into(),
            kind,
            name: "alice".into(),
            role: role.into(),
            created_ms: 1_000,
            ..Default::default()
        }
    }

    #[test]
    fn tokens_have_a_recognisable_shape_and_are_kept_as_hashes() {
        let (text, id) = new_token();
        assert!(text.starts_with("dwt_"), "{text}");
        assert_eq!(token_id(&text), Some(id.as_str()));
        assert_eq!(token_hash(&text), token_hash(&format!(" {text}\n")), "trimmed like a file's content");
        assert_ne!(token_hash(&text), token_hash(&new_token().0));
        for bad in ["", "dwt_", "dwt_0011.x", "abc.def", "dwt_00112233445566zz.x", "dwt_0011223344556677."] {
            assert_eq!(token_id(bad), None, "{bad:?}");
        }
        assert!(same_hash(b"ab", b"ab") && !same_hash(b"ab", b"ac") && !same_hash(b"ab", b"abc"));
        assert_eq!(token_hash(&text), hex::encode(token_digest(&text)));
    }

    #[test]
    fn a_credential_is_usable_until_revoked_or_expired_and_only_with_a_role() {
        let mut c = cred(Kind::Token, "viewer");
        assert_eq!(c.refusal(5_000), None);
        assert_eq!(c.role(), Role::Viewer);
        c.expires_ms = 5_000;
        assert_eq!(c.refusal(4_999), None);
        assert_eq!(c.refusal(5_000).unwrap(), "token 0011223344556677 ('alice') has expired");
        c.revoked_ms = Some(2_000);
        assert_eq!(c.refusal(1_500).unwrap(), "token 0011223344556677 ('alice') is revoked");
        let c = cred(Kind::Certificate, "root");
        assert_eq!(c.refusal(0).unwrap(), "operator certificate 0011223344556677 ('alice') has no role");
    }

    #[test]
    fn names_are_short_plain_words() {
        for ok in ["alice", "ci.deploy", "on_call-2"] {
            assert!(check_name(ok).is_ok(), "{ok}");
        }
        for bad in ["", "-x", ".x", "a b", "a/b", &"x".repeat(65), "ünï"] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
        assert_eq!(certificate_principal("alice"), "spiffe://driftwatch/operator/alice");
    }

    #[test]
    fn the_proto_shows_the_role_and_no_hash() {
        let mut c = cred(Kind::Certificate, "admin");
        c.hash = "secret-hash".into();
        let p = c.to_proto();
        assert_eq!((p.role, p.kind), (Role::Admin as i32, v1::CredentialKind::Certificate as i32));
        assert!(p.expires_at.is_none());
        assert!(!format!("{p:?}").contains("secret-hash"));
    }
}
