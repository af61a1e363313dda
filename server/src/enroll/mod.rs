//! Fleet identity: enrollment tokens, enrolled hosts, certificates issued to them,
//! and revocation. One owner ([`Identities`]) holds the in-memory copy; every change
//! is durable (through the store writer, with its audit event in the same commit)
//! before it is answered or takes effect.

pub mod records;
pub mod service;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use driftwatch_pki::{Ca, Identity};
use driftwatch_proto::v1;
use driftwatch_store::{IdentityRecord, Op};
use parking_lot::Mutex;

use crate::audit::{AuditEntry, AuditLog};
use crate::error::ServerError;
use crate::tls::{BuiltInCa, DenyList};
use crate::writer::WriteSender;
use records::{HOST_KIND, Revocation, StoredHost, StoredToken, TOKEN_KIND};

/// Longest token lifetime (`--ttl`).
pub const MAX_TOKEN_TTL: Duration = Duration::from_secs(30 * 24 * 3600);
pub const DEFAULT_TOKEN_TTL: Duration = Duration::from_secs(3600);

/// Tokens and hosts. Cheap to share (`Arc`).
pub struct Identities {
    tokens: Mutex<BTreeMap<String, StoredToken>>,
    hosts: Mutex<HashMap<String, StoredHost>>,
    /// Serialises enrollments and revocations end to end (check, sign, commit), so two
    /// uses of a one-use token cannot both pass.
    write: tokio::sync::Mutex<()>,
    deny: DenyList,
    writer: WriteSender,
    /// Where the signing CA lives; None: this server issues no certificates.
    ca: Option<BuiltInCa>,
    cert_lifetime: Duration,
}

/// A certificate issued to a host.
#[derive(Debug, Clone)]
pub struct IssuedCert {
    pub host_id: String,
    pub cert_pem: String,
    pub not_after: i64,
    pub labels: BTreeMap<String, String>,
}

impl Identities {
    /// From the store's records; fills `deny` with every revoked host and serial.
    pub fn load(
        token_records: Vec<IdentityRecord>,
        host_records: Vec<IdentityRecord>,
        deny: DenyList,
        writer: WriteSender,
        ca: Option<BuiltInCa>,
        cert_lifetime: Duration,
    ) -> Arc<Self> {
        let mut tokens = BTreeMap::new();
        for r in token_records {
            match serde_json::from_slice::<StoredToken>(&r.body) {
                Ok(t) => {
                    tokens.insert(t.id.clone(), t);
                }
                Err(e) => tracing::warn!(token = %r.id, error = %e, "stored enrollment token does not decode; skipped"),
            }
        }
        let mut hosts = HashMap::new();
        for r in host_records {
            match serde_json::from_slice::<StoredHost>(&r.body) {
                Ok(h) => {
                    if let Some(rev) = &h.revoked {
                        deny.revoke_host(&h.host_id, &rev.reason);
                    }
                    deny.revoke_serials(h.revoked_serials.iter().map(String::as_str));
                    hosts.insert(h.host_id.clone(), h);
                }
                Err(e) => tracing::warn!(host = %r.id, error = %e, "stored host identity does not decode; skipped"),
            }
        }
        Arc::new(Self {
            tokens: Mutex::new(tokens),
            hosts: Mutex::new(hosts),
            write: tokio::sync::Mutex::new(()),
            deny,
            writer,
            ca,
            cert_lifetime,
        })
    }

    pub fn deny_list(&self) -> &DenyList {
        &self.deny
    }

    /// The labels a host streams with: server-side ones plus the agent's permitted
    /// ones; a host without a record keeps what its agent says.
    pub fn labels_for(&self, host_id: &str, agent: &BTreeMap<String, String>) -> BTreeMap<String, String> {
        match self.hosts.lock().get(host_id) {
            Some(h) if h.enrolled => records::effective_labels(h, agent),
            Some(h) => {
                let mut l = agent.clone();
                l.extend(h.labels.clone());
                l
            }
            None => agent.clone(),
        }
    }

    pub fn identity_of(&self, host_id: &str) -> Option<v1::HostIdentity> {
        let now_s = driftwatch_proto::now_millis() / 1000;
        self.hosts.lock().get(host_id).map(|h| h.to_proto(now_s))
    }

    pub fn tokens(&self, all: bool) -> Vec<v1::EnrollToken> {
        let now = driftwatch_proto::now_millis();
        self.tokens.lock().values().filter(|t| all || t.usable(now)).map(StoredToken::to_proto).collect()
    }

    /// A new token; returns it with its secret text (shown once).
    pub async fn create_token(
        &self,
        req: v1::CreateEnrollTokenRequest,
        actor: &str,
    ) -> Result<(v1::EnrollToken, String), ServerError> {
        if self.ca.is_none() {
            return Err(no_ca());
        }
        let ttl = match &req.ttl {
            None => DEFAULT_TOKEN_TTL,
            Some(d) => driftwatch_proto::duration::from_proto("ttl", d).map_err(ServerError::InvalidArgument)?,
        };
        if ttl.is_zero() || ttl > MAX_TOKEN_TTL {
            return Err(ServerError::InvalidArgument("ttl must be more than 0 and at most 30d".into()));
        }
        for (k, v) in &req.labels {
            check_label(k, v)?;
        }
        for k in &req.agent_label_keys {
            check_label(k, "")?;
        }
        let pattern = req.host_id_pattern.trim().to_string();
        if !pattern.is_empty() {
            globset::Glob::new(&pattern).map_err(|e| ServerError::InvalidArgument(format!("host_id_pattern: {e}")))?;
        }
        let (text, id) = records::new_token();
        let now = driftwatch_proto::now_millis();
        let token = StoredToken {
            id: id.clone(),
            hash: records::token_hash(&text),
            labels: req.labels.clone(),
            agent_label_keys: req.agent_label_keys.clone(),
            host_id_pattern: pattern,
            created_ms: now,
            expires_ms: now + ttl.as_millis() as i64,
            max_uses: req.max_uses.max(1),
            uses: 0,
            host_ids: Vec::new(),
            revoked_ms: None,
            actor: actor.to_string(),
            reason: req.reason.trim().to_string(),
        };
        let _guard = self.write.lock().await;
        let audit = AuditEntry {
            actor: actor.to_string(),
            action: "enroll_token.created".into(),
            target: format!("token:{id}"),
            detail: format!(
                "labels {:?}; uses {}; ttl {}; pattern {:?}{}",
                token.labels,
                token.max_uses,
                driftwatch_proto::duration::format(ttl),
                token.host_id_pattern,
                reason_suffix(&token.reason)
            ),
            ..Default::default()
        };
        self.commit(vec![token_op(&token)], audit).await?;
        let proto = token.to_proto();
        self.tokens.lock().insert(id, token);
        Ok((proto, text))
    }

    pub async fn revoke_token(&self, id: &str, reason: &str, actor: &str) -> Result<v1::EnrollToken, ServerError> {
        let _guard = self.write.lock().await;
        let mut token = self
            .tokens
            .lock()
            .get(id.trim())
            .cloned()
            .ok_or_else(|| ServerError::NotFound(format!("no enrollment token {id}")))?;
        if token.revoked_ms.is_none() {
            token.revoked_ms = Some(driftwatch_proto::now_millis());
            let audit = AuditEntry {
                actor: actor.to_string(),
                action: "enroll_token.revoked".into(),
                target: format!("token:{}", token.id),
                detail: reason_suffix(reason).trim_start_matches("; ").to_string(),
                ..Default::default()
            };
            self.commit(vec![token_op(&token)], audit).await?;
            self.tokens.lock().insert(token.id.clone(), token.clone());
        }
        Ok(token.to_proto())
    }

    /// Trade a token and a CSR for a certificate.
    pub async fn enroll(&self, req: &v1::EnrollRequest) -> Result<IssuedCert, ServerError> {
        let ca = self.ca.clone().ok_or_else(no_ca)?;
        let presented = req.token.trim();
        let id_part = presented.split('.').next().unwrap_or_default().to_string();
        let hash = records::token_hash(presented);
        let _guard = self.write.lock().await;
        let now = driftwatch_proto::now_millis();
        let mut token = self.tokens.lock().get(&id_part).cloned().ok_or_else(|| denied("unknown enrollment token"))?;
        if let Some(why) = records::token_refusal(&token, &hash, now) {
            return Err(denied(&why));
        }
        let host_id = records::choose_host_id(&token, &req.host_id).map_err(|e| denied(&e))?;
        let previous = self.hosts.lock().get(&host_id).cloned();
        if let Some(p) = &previous
            && p.enrolled
            && p.revoked.is_none()
            && !records::pins(&token, &host_id)
        {
            return Err(denied(&format!(
                "host '{host_id}' is already enrolled; revoke it first, or enroll with a token pinned to it (--host-id-pattern {host_id})"
            )));
        }
        let issued = sign(ca, req.csr_pem.clone(), Identity::Host(host_id.clone()), self.cert_lifetime).await?;

        let mut host = previous.clone().unwrap_or_default();
        host.host_id = host_id.clone();
        // A new enrollment replaces the host's key: certificates issued before stay refused.
        let old: Vec<String> = host.serials.drain(..).map(|(s, _)| s).collect();
        host.revoked_serials.extend(old.iter().cloned());
        host.serials.push((issued.serial.clone(), issued.not_after));
        host.revoked = None;
        host.enrolled = true;
        host.token_id = token.id.clone();
        let mut labels = token.labels.clone();
        // Operator edits made earlier survive only where the token says nothing.
        for (k, v) in previous.map(|p| p.labels).unwrap_or_default() {
            labels.entry(k).or_insert(v);
        }
        host.labels = labels;
        host.agent_label_keys = token.agent_label_keys.clone();
        token.uses += 1;
        token.host_ids.push(host_id.clone());
        let audit = AuditEntry {
            actor: format!("enroll-token:{}", token.id),
            action: "host.enrolled".into(),
            target: format!("host:{host_id}"),
            host_id: host_id.clone(),
            detail: format!("certificate {} valid until {}s since the epoch", issued.serial, issued.not_after),
            ..Default::default()
        };
        self.commit(vec![token_op(&token), host_op(&host)], audit).await?;
        self.deny.revoke_serials(old.iter().map(String::as_str));
        self.deny.restore_host(&host_id);
        let labels = records::effective_labels(&host, &req.labels);
        self.tokens.lock().insert(token.id.clone(), token);
        self.hosts.lock().insert(host_id.clone(), host);
        tracing::info!(host = %host_id, serial = %issued.serial, "host enrolled");
        Ok(IssuedCert { host_id, cert_pem: issued.cert_pem, not_after: issued.not_after, labels })
    }

    /// A fresh certificate for a host streaming with a valid one.
    pub async fn renew(&self, host_id: &str, csr_pem: String) -> Result<IssuedCert, ServerError> {
        let ca = self
            .ca
            .clone()
            .ok_or_else(|| ServerError::FailedPrecondition("this server does not issue certificates".into()))?;
        let _guard = self.write.lock().await;
        let mut host = self
            .hosts
            .lock()
            .get(host_id)
            .cloned()
            .filter(|h| h.enrolled && h.revoked.is_none())
            .ok_or_else(|| denied(&format!("host '{host_id}' is not enrolled here")))?;
        let issued = sign(ca, csr_pem, Identity::Host(host_id.to_string()), self.cert_lifetime).await?;
        let now_s = driftwatch_proto::now_millis() / 1000;
        host.serials.retain(|(_, na)| *na > now_s);
        host.serials.push((issued.serial.clone(), issued.not_after));
        let audit = AuditEntry {
            actor: format!("host:{host_id}"),
            action: "host.certificate_renewed".into(),
            target: format!("host:{host_id}"),
            host_id: host_id.to_string(),
            detail: format!("certificate {} valid until {}s since the epoch", issued.serial, issued.not_after),
            ..Default::default()
        };
        self.commit(vec![host_op(&host)], audit).await?;
        let labels = host.labels.clone();
        self.hosts.lock().insert(host_id.to_string(), host);
        Ok(IssuedCert { host_id: host_id.to_string(), cert_pem: issued.cert_pem, not_after: issued.not_after, labels })
    }

    /// Refuse the host's certificates from now on (durable first).
    pub async fn revoke_host(&self, host_id: &str, reason: &str, actor: &str) -> Result<(), ServerError> {
        driftwatch_pki::check_host_id(host_id).map_err(ServerError::InvalidArgument)?;
        let _guard = self.write.lock().await;
        let mut host = self.host_or_new(host_id);
        let serials: Vec<String> = host.serials.drain(..).map(|(s, _)| s).collect();
        host.revoked_serials.extend(serials.iter().cloned());
        host.revoked = Some(Revocation {
            at_ms: driftwatch_proto::now_millis(),
            reason: reason.trim().to_string(),
            by: actor.to_string(),
        });
        let audit = AuditEntry {
            actor: actor.to_string(),
            action: "host.revoked".into(),
            target: format!("host:{host_id}"),
            host_id: host_id.to_string(),
            detail: reason_suffix(reason).trim_start_matches("; ").to_string(),
            ..Default::default()
        };
        self.commit(vec![host_op(&host)], audit).await?;
        self.deny.revoke_host(host_id, reason.trim());
        self.deny.revoke_serials(serials.iter().map(String::as_str));
        self.hosts.lock().insert(host_id.to_string(), host);
        Ok(())
    }

    /// Set and remove server-side labels of a host; returns the new server-side set.
    pub async fn set_labels(
        &self,
        host_id: &str,
        set: &BTreeMap<String, String>,
        remove: &[String],
        reason: &str,
        actor: &str,
    ) -> Result<BTreeMap<String, String>, ServerError> {
        for (k, v) in set {
            check_label(k, v)?;
        }
        let _guard = self.write.lock().await;
        let mut host = self.host_or_new(host_id);
        for k in remove {
            host.labels.remove(k);
        }
        host.labels.extend(set.clone());
        let audit = AuditEntry {
            actor: actor.to_string(),
            action: "host.labelled".into(),
            target: format!("host:{host_id}"),
            host_id: host_id.to_string(),
            detail: format!("set {set:?}; removed {remove:?}{}", reason_suffix(reason)),
            ..Default::default()
        };
        self.commit(vec![host_op(&host)], audit).await?;
        let labels = host.labels.clone();
        self.hosts.lock().insert(host_id.to_string(), host);
        Ok(labels)
    }

    /// The host's record, or a new one (revocation and labels apply to hosts that
    /// never enrolled too: plaintext development, your own PKI).
    fn host_or_new(&self, host_id: &str) -> StoredHost {
        self.hosts
            .lock()
            .get(host_id)
            .cloned()
            .unwrap_or_else(|| StoredHost { host_id: host_id.to_string(), ..Default::default() })
    }

    async fn commit(&self, mut ops: Vec<Op>, audit: AuditEntry) -> Result<(), ServerError> {
        ops.push(AuditLog::op(audit));
        crate::writer::commit_durable(&self.writer, ops).await
    }
}

/// Sign `csr` for `identity` with the built-in CA (read from disk: a rotation may have replaced it).
pub(crate) async fn sign(
    ca: BuiltInCa,
    csr: String,
    identity: Identity,
    lifetime: Duration,
) -> Result<driftwatch_pki::Issued, ServerError> {
    tokio::task::spawn_blocking(move || {
        let (cert, key) = ca.signing();
        let cert = std::fs::read_to_string(cert)?;
        let key = std::fs::read_to_string(key)?;
        let ca = Ca::from_pem(&cert, &key).map_err(|e| ServerError::FailedPrecondition(format!("fleet CA: {e}")))?;
        ca.sign_request(&csr, &identity, lifetime).map_err(|e| ServerError::InvalidArgument(e.to_string()))
    })
    .await
    .map_err(|e| ServerError::Unavailable(format!("signing task failed: {e}")))?
}

pub(crate) fn no_ca() -> ServerError {
    ServerError::FailedPrecondition(
        "this server does not issue certificates: it runs --insecure, or with your own PKI ([tls] cert/key), whose CA issues agent certificates".into(),
    )
}

fn denied(why: &str) -> ServerError {
    ServerError::PermissionDenied(why.to_string())
}

fn check_label(k: &str, v: &str) -> Result<(), ServerError> {
    let ok_key = !k.is_empty() && k.len() <= 63 && k.chars().all(|c| c.is_ascii_alphanumeric() || "._-/".contains(c));
    if !ok_key || v.len() > 253 {
        return Err(ServerError::InvalidArgument(format!(
            "label {k:?}: keys are 1-63 characters of A-Z a-z 0-9 . _ - /, values at most 253"
        )));
    }
    Ok(())
}

fn reason_suffix(reason: &str) -> String {
    if reason.trim().is_empty() { String::new() } else { format!("; reason: {}", reason.trim()) }
}

fn token_op(t: &StoredToken) -> Op {
    Op::PutIdentity(IdentityRecord {
        kind: TOKEN_KIND.into(),
        id: t.id.clone(),
        updated_ms: driftwatch_proto::now_millis(),
        body: serde_json::to_vec(t).expect("token serializes"),
    })
}

fn host_op(h: &StoredHost) -> Op {
    Op::PutIdentity(IdentityRecord {
        kind: HOST_KIND.into(),
        id: h.host_id.clone(),
        updated_ms: driftwatch_proto::now_millis(),
        body: serde_json::to_vec(h).expect("host identity serializes"),
    })
}
