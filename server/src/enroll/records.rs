//! What the server keeps about fleet identity, and the pure rules over it: token
//! checks, host id choice, labels. No I/O here.

use std::collections::BTreeMap;

use driftwatch_proto::v1;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Store kinds of [`driftwatch_store::IdentityRecord`].
pub const TOKEN_KIND: &str = "token";
pub const HOST_KIND: &str = "host";

/// An enrollment token as stored: its hash, never its secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct StoredToken {
    pub id: String,
    /// SHA-256 (hex) of the whole token text `<id>.<secret>`.
    pub hash: String,
    pub labels: BTreeMap<String, String>,
    pub agent_label_keys: Vec<String>,
    pub host_id_pattern: String,
    pub created_ms: i64,
    pub expires_ms: i64,
    pub max_uses: u32,
    pub uses: u32,
    pub host_ids: Vec<String>,
    pub revoked_ms: Option<i64>,
    pub actor: String,
    pub reason: String,
}

/// An enrolled (or revoked) host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct StoredHost {
    pub host_id: String,
    /// Server-side labels: the token's, then operators' edits. They win over the agent's.
    pub labels: BTreeMap<String, String>,
    /// Label keys the agent may set itself (from its token).
    pub agent_label_keys: Vec<String>,
    pub token_id: String,
    /// Certificates issued to this host and not revoked: (serial, not_after seconds).
    pub serials: Vec<(String, i64)>,
    /// Serials that must never be accepted again (revocation, re-enrollment).
    pub revoked_serials: Vec<String>,
    pub revoked: Option<Revocation>,
    /// Labels were set by an operator (`hosts label`); without enrollment they still apply.
    pub enrolled: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Revocation {
    pub at_ms: i64,
    pub reason: String,
    pub by: String,
}

/// The hash a token is stored and looked up by.
pub fn token_hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.trim().as_bytes()))
}

/// A new token: (`<id>.<secret>`, id). 64 bits of id for listing, 256 bits of secret.
pub fn new_token() -> (String, String) {
    let id = hex::encode(rand::random::<[u8; 8]>());
    let secret = hex::encode(rand::random::<[u8; 32]>());
    (format!("{id}.{secret}"), id)
}

/// Why a token cannot enroll `host_id` now (`None`: it can).
pub fn token_refusal(t: &StoredToken, presented_hash: &str, now_ms: i64) -> Option<String> {
    // Both are SHA-256 hex of attacker-chosen and stored text; comparing digests
    // leaks nothing useful about the secret.
    if t.hash != presented_hash {
        return Some("unknown enrollment token".into());
    }
    if t.revoked_ms.is_some() {
        return Some(format!("enrollment token {} is revoked", t.id));
    }
    if now_ms >= t.expires_ms {
        return Some(format!("enrollment token {} expired at {}", t.id, rfc3339(t.expires_ms)));
    }
    if t.uses >= t.max_uses {
        return Some(format!("enrollment token {} is used up ({} of {} uses)", t.id, t.uses, t.max_uses));
    }
    None
}

/// The host id a token enrolls: the agent's proposal, or the token's pinned id when
/// the agent proposes none. `Err` says why not.
pub fn choose_host_id(t: &StoredToken, proposed: &str) -> Result<String, String> {
    let proposed = proposed.trim();
    let pattern = t.host_id_pattern.trim();
    let pinned = !pattern.is_empty() && !pattern.contains(['*', '?', '[']);
    let id = if proposed.is_empty() && pinned { pattern } else { proposed };
    driftwatch_pki::check_name(id).map_err(|e| format!("host id {e}"))?;
    if !pattern.is_empty() {
        let glob = globset::Glob::new(pattern).map_err(|e| format!("token's host id pattern: {e}"))?.compile_matcher();
        if !glob.is_match(id) {
            return Err(format!("enrollment token {} may not enroll host '{id}' (allowed: {pattern})", t.id));
        }
    }
    Ok(id.to_string())
}

/// Whether the token pins exactly this host id (the only way to enroll an id that is
/// already enrolled: a shared token must not take over a live host's identity).
pub fn pins(t: &StoredToken, host_id: &str) -> bool {
    t.host_id_pattern.trim() == host_id
}

/// The labels a host streams with: server-side labels, plus the agent's own for the
/// keys its token permits (never overriding a server-side label).
pub fn effective_labels(host: &StoredHost, agent: &BTreeMap<String, String>) -> BTreeMap<String, String> {
    let mut labels = host.labels.clone();
    for (k, v) in agent {
        if host.agent_label_keys.iter().any(|a| a == k) && !labels.contains_key(k) {
            labels.insert(k.clone(), v.clone());
        }
    }
    labels
}

impl StoredToken {
    pub fn to_proto(&self) -> v1::EnrollToken {
        v1::EnrollToken {
            id: self.id.clone(),
            labels: self.labels.clone(),
            agent_label_keys: self.agent_label_keys.clone(),
            host_id_pattern: self.host_id_pattern.clone(),
            created_at: Some(driftwatch_proto::timestamp_from_millis(self.created_ms)),
            expires_at: Some(driftwatch_proto::timestamp_from_millis(self.expires_ms)),
            max_uses: self.max_uses,
            uses: self.uses,
            host_ids: self.host_ids.clone(),
            revoked_at: self.revoked_ms.map(driftwatch_proto::timestamp_from_millis),
            actor: self.actor.clone(),
            reason: self.reason.clone(),
        }
    }

    /// Still able to enroll someone (for listings without `all`).
    pub fn usable(&self, now_ms: i64) -> bool {
        self.revoked_ms.is_none() && now_ms < self.expires_ms && self.uses < self.max_uses
    }
}

impl StoredHost {
    pub fn to_proto(&self, now_s: i64) -> v1::HostIdentity {
        let newest = self.serials.iter().max_by_key(|(_, na)| *na);
        v1::HostIdentity {
            enrolled: self.enrolled,
            certificate_serial: newest.map(|(s, _)| s.clone()).unwrap_or_default(),
            certificate_not_after: newest.map(|(_, na)| prost_types::Timestamp { seconds: *na, nanos: 0 }),
            expired: self.enrolled && newest.is_none_or(|(_, na)| *na <= now_s),
            revoked: self.revoked.is_some(),
            revoked_at: self.revoked.as_ref().map(|r| driftwatch_proto::timestamp_from_millis(r.at_ms)),
            revoked_reason: self.revoked.as_ref().map(|r| r.reason.clone()).unwrap_or_default(),
            revoked_by: self.revoked.as_ref().map(|r| r.by.clone()).unwrap_or_default(),
            token_id: self.token_id.clone(),
        }
    }
}

fn rfc3339(ms: i64) -> String {
    let t = driftwatch_proto::timestamp_from_millis(ms);
    format!("{}s since the epoch", t.seconds)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(pattern: &str) -> StoredToken {
        let (text, id) = new_token();
        StoredToken {
            id,
            hash: token_hash(&text),
            host_id_pattern: pattern.into(),
            expires_ms: 1_000,
            max_uses: 2,
            ..Default::default()
        }
    }

    #[test]
    fn tokens_are_refused_when_wrong_revoked_expired_or_used_up() {
        let (text, id) = new_token();
        assert!(text.starts_with(&format!("{id}.")) && text.len() == 16 + 1 + 64);
        let mut t = StoredToken { id, hash: token_hash(&text), expires_ms: 1_000, max_uses: 1, ..Default::default() };
        assert_eq!(token_refusal(&t, &token_hash(&text), 999), None);
        assert_eq!(token_refusal(&t, &token_hash(&format!(" {text}\n")), 999), None, "whitespace from a file is fine");
        assert_eq!(token_refusal(&t, &token_hash("x.y"), 999).unwrap(), "unknown enrollment token");
        assert!(token_refusal(&t, &t.hash.clone(), 1_000).unwrap().contains("expired"));
        t.uses = 1;
        assert!(token_refusal(&t, &t.hash.clone(), 0).unwrap().contains("used up (1 of 1 uses)"));
        t.uses = 0;
        t.revoked_ms = Some(5);
        assert!(token_refusal(&t, &t.hash.clone(), 0).unwrap().contains("revoked"));
        assert!(!t.usable(0));
    }

    #[test]
    fn host_ids_follow_the_tokens_pattern() {
        assert_eq!(choose_host_id(&token(""), "web-1").unwrap(), "web-1");
        assert_eq!(choose_host_id(&token("web-*"), "web-7").unwrap(), "web-7");
        assert!(choose_host_id(&token("web-*"), "db-1").unwrap_err().contains("may not enroll host 'db-1'"));
        assert_eq!(choose_host_id(&token("lat-2"), "").unwrap(), "lat-2", "a pinned id needs no proposal");
        assert!(choose_host_id(&token("lat-2"), "lat-3").is_err());
        assert!(choose_host_id(&token(""), "").is_err());
        assert!(choose_host_id(&token(""), "a:b").unwrap_err().contains("host id"));
        assert!(pins(&token("lat-2"), "lat-2") && !pins(&token("lat-*"), "lat-2"));
    }

    #[test]
    fn agents_set_only_permitted_labels_and_never_override_the_servers() {
        let host = StoredHost {
            labels: [("env".to_string(), "production".to_string())].into(),
            agent_label_keys: vec!["node".into(), "env".into()],
            ..Default::default()
        };
        let agent: BTreeMap<String, String> = [("env", "dev"), ("node", "n1"), ("service", "x")]
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let got = effective_labels(&host, &agent);
        assert_eq!(got, [("env".to_string(), "production".to_string()), ("node".to_string(), "n1".to_string())].into());
    }
}
