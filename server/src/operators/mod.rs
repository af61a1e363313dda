//! Operator credentials: bearer tokens and operator certificates, each with one
//! role. One owner ([`Operators`]) holds the in-memory copy the access layer checks
//! on every call; every change is durable (through the store writer, with its audit
//! event in the same commit) before it is answered or takes effect.

pub mod records;
pub mod service;

use std::collections::HashMap;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use driftwatch_pki::Identity;
use driftwatch_proto::v1::{self, Role};
use driftwatch_store::{IdentityRecord, Op};
use parking_lot::RwLock;

use crate::audit::{AuditEntry, AuditLog, SERVER_ACTOR};
use crate::error::ServerError;
use crate::tls::BuiltInCa;
use crate::writer::WriteSender;
use records::{Kind, OPERATOR_KIND, StoredCredential};

/// Default and longest lifetime of an operator certificate.
pub const DEFAULT_CERT_TTL: Duration = Duration::from_secs(30 * 24 * 3600);
pub const MAX_CERT_TTL: Duration = Duration::from_secs(365 * 24 * 3600);
/// The file the first start writes the admin token to, in the data directory.
pub const ADMIN_TOKEN_FILE: &str = "admin.token";

/// Who a credential authenticates, for the access layer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Authenticated {
    pub principal: String,
    pub role: Role,
}

/// Tokens and operator certificates. Cheap to share (`Arc`).
pub struct Operators {
    /// By id: a token's public part, a certificate's serial.
    creds: RwLock<HashMap<String, Live>>,
    /// Moves on with every change to `creds`: a connection's remembered verdict holds
    /// only while it has not moved. Each instance starts in its own range (a memo never
    /// vouches across servers in one process, as in tests).
    generation: AtomicU64,
    /// Serialises changes end to end (check, sign, commit).
    write: tokio::sync::Mutex<()>,
    writer: WriteSender,
    ca: Option<BuiltInCa>,
}

impl Operators {
    pub fn load(records: Vec<IdentityRecord>, writer: WriteSender, ca: Option<BuiltInCa>) -> Arc<Self> {
        let mut creds = HashMap::new();
        for r in records {
            match serde_json::from_slice::<StoredCredential>(&r.body) {
                Ok(c) => {
                    creds.insert(c.id.clone(), Live::new(c));
                }
                Err(e) => {
                    tracing::warn!(credential = %r.id, error = %e, "stored operator credential does not decode; skipped")
                }
            }
        }
        static RANGES: AtomicU64 = AtomicU64::new(0);
        let generation = AtomicU64::new(RANGES.fetch_add(1 << 32, Ordering::Relaxed));
        Arc::new(Self { creds: RwLock::new(creds), generation, write: tokio::sync::Mutex::new(()), writer, ca })
    }

    /// The principal and role of a presented bearer token. `memo`: the connection's
    /// last verdict; the same text again, while no credential changed and before the
    /// token expires, gets it without the hash and the lookup. Any change (a
    /// revocation) sends every connection through the full check on its next call.
    pub fn authenticate_token(&self, token: &str, memo: Option<&TokenMemo>) -> Result<Authenticated, String> {
        let token = token.trim();
        let now = driftwatch_proto::now_millis();
        // Read before `creds`: a change after this read is seen by the next call.
        let generation = self.generation.load(Ordering::Acquire);
        if let Some(who) = memo.and_then(|m| m.vouches(token, generation, now)) {
            return Ok(who);
        }
        let unknown = || "unknown token".to_string();
        let id = records::token_id(token).ok_or_else(unknown)?;
        let creds = self.creds.read();
        let live = creds.get(id).filter(|c| c.cred.kind == Kind::Token).ok_or_else(unknown)?;
        if !live.hash.is_some_and(|h| records::same_hash(&h, &records::token_digest(token))) {
            return Err(unknown());
        }
        if let Some(why) = live.cred.refusal(now) {
            return Err(why);
        }
        let who = Authenticated { principal: live.cred.name.clone(), role: live.role };
        if let Some(m) = memo {
            m.remember(Verified {
                token: token.into(),
                generation,
                expires_ms: live.cred.expires_ms,
                who: who.clone(),
            });
        }
        Ok(who)
    }

    /// Install a changed credential; remembered verdicts no longer hold.
    fn install(&self, cred: StoredCredential) {
        self.creds.write().insert(cred.id.clone(), Live::new(cred));
        self.generation.fetch_add(1, Ordering::Release);
    }

    /// The role of an operator certificate (already verified against the fleet CA):
    /// only certificates this server issued with a role have one.
    pub fn authenticate_certificate(&self, name: &str, serial: &str) -> Result<Authenticated, String> {
        let creds = self.creds.read();
        let live = creds.get(serial).filter(|c| c.cred.kind == Kind::Certificate && c.cred.name == name);
        let c = live.ok_or_else(|| {
            format!(
                "operator certificate {serial} of '{name}' has no role here: create operator certificates with \
                 `driftwatch operator-cert create`"
            )
        })?;
        if let Some(why) = c.cred.refusal(driftwatch_proto::now_millis()) {
            return Err(why);
        }
        Ok(Authenticated { principal: records::certificate_principal(name), role: c.role })
    }

    /// Newest first; `all` includes revoked and expired ones.
    pub fn list(&self, all: bool) -> Vec<v1::Credential> {
        let now = driftwatch_proto::now_millis();
        let creds = self.creds.read();
        let mut list: Vec<&StoredCredential> =
            creds.values().map(|l| &l.cred).filter(|c| all || c.refusal(now).is_none()).collect();
        list.sort_by(|a, b| b.created_ms.cmp(&a.created_ms).then_with(|| a.id.cmp(&b.id)));
        list.into_iter().map(StoredCredential::to_proto).collect()
    }

    /// A new token; returns it with its text (shown once).
    pub async fn create_token(
        &self,
        req: v1::CreateTokenRequest,
        actor: &str,
    ) -> Result<(v1::Credential, String), ServerError> {
        let name = req.name.trim().to_string();
        records::check_name(&name).map_err(ServerError::InvalidArgument)?;
        let role = role_of(req.role)?;
        let ttl = match &req.ttl {
            None => Duration::ZERO,
            Some(d) => driftwatch_proto::duration::from_proto("ttl", d).map_err(ServerError::InvalidArgument)?,
        };
        let (text, id) = records::new_token();
        let now = driftwatch_proto::now_millis();
        let cred = StoredCredential {
            id,
            kind: Kind::Token,
            name,
            role: driftwatch_proto::role_name(role as i32).into(),
            hash: records::token_hash(&text),
            created_ms: now,
            expires_ms: if ttl.is_zero() { 0 } else { now.saturating_add(ttl.as_millis() as i64) },
            revoked_ms: None,
            actor: actor.to_string(),
            reason: req.reason.trim().to_string(),
        };
        let detail = format!(
            "role {}; {}{}",
            cred.role,
            if ttl.is_zero() {
                "no expiry".to_string()
            } else {
                format!("ttl {}", driftwatch_proto::duration::format(ttl))
            },
            reason_suffix(&cred.reason)
        );
        let proto = self.put(cred, actor, "token.created", detail).await?;
        Ok((proto, text))
    }

    /// Sign an operator's CSR with the fleet CA and record the certificate's role.
    pub async fn create_certificate(
        &self,
        req: v1::CreateOperatorCertRequest,
        actor: &str,
    ) -> Result<(v1::Credential, driftwatch_pki::Issued, String), ServerError> {
        let ca = self.ca.clone().ok_or_else(crate::enroll::no_ca)?;
        let name = req.name.trim().to_string();
        records::check_name(&name).map_err(ServerError::InvalidArgument)?;
        let role = role_of(req.role)?;
        let ttl = match &req.ttl {
            None => DEFAULT_CERT_TTL,
            Some(d) => driftwatch_proto::duration::from_proto("ttl", d).map_err(ServerError::InvalidArgument)?,
        };
        if ttl < Duration::from_secs(60) || ttl > MAX_CERT_TTL {
            return Err(ServerError::InvalidArgument("ttl must be between 1m and 365d".into()));
        }
        if req.csr_pem.trim().is_empty() {
            return Err(ServerError::InvalidArgument("csr_pem is required (the key stays with the operator)".into()));
        }
        let ca_pem = std::fs::read_to_string(ca.ca_cert())
            .map_err(|e| ServerError::Unavailable(format!("fleet CA certificate: {e}")))?;
        let issued = crate::enroll::sign(ca, req.csr_pem, Identity::Operator(name.clone()), ttl).await?;
        let cred = StoredCredential {
            id: issued.serial.clone(),
            kind: Kind::Certificate,
            name,
            role: driftwatch_proto::role_name(role as i32).into(),
            hash: String::new(),
            created_ms: driftwatch_proto::now_millis(),
            expires_ms: issued.not_after.saturating_mul(1000),
            revoked_ms: None,
            actor: actor.to_string(),
            reason: req.reason.trim().to_string(),
        };
        let detail = format!("role {}; serial {}{}", cred.role, cred.id, reason_suffix(&cred.reason));
        let proto = self.put(cred, actor, "operator_cert.created", detail).await?;
        Ok((proto, issued, ca_pem))
    }

    /// From now on the credential authenticates nobody (the next call made with it is refused).
    pub async fn revoke(&self, id: &str, reason: &str, actor: &str) -> Result<v1::Credential, ServerError> {
        let _guard = self.write.lock().await;
        let mut cred = self
            .creds
            .read()
            .get(id.trim())
            .map(|l| l.cred.clone())
            .ok_or_else(|| ServerError::NotFound(format!("no token or operator certificate {}", id.trim())))?;
        if cred.revoked_ms.is_some() {
            return Ok(cred.to_proto());
        }
        cred.revoked_ms = Some(driftwatch_proto::now_millis());
        let action = match cred.kind {
            Kind::Token => "token.revoked",
            Kind::Certificate => "operator_cert.revoked",
        };
        let audit = entry(actor, action, &cred, reason_suffix(reason).trim_start_matches("; ").to_string());
        crate::writer::commit_durable(&self.writer, vec![op(&cred), AuditLog::op(audit)]).await?;
        let proto = cred.to_proto();
        self.install(cred);
        tracing::info!(credential = %id, %actor, "operator credential revoked");
        Ok(proto)
    }

    /// On the first start over TLS (no credential was ever created), an admin token
    /// written to `DATA/admin.token`, readable by the server's user only. It can be
    /// revoked like any other; it is never created again.
    pub async fn bootstrap_admin(&self, data_dir: &Path) -> Result<Option<PathBuf>, ServerError> {
        if !self.creds.read().is_empty() {
            return Ok(None);
        }
        let path = data_dir.join(ADMIN_TOKEN_FILE);
        let req = v1::CreateTokenRequest {
            name: "admin".into(),
            role: Role::Admin as i32,
            ttl: None,
            reason: "first start".into(),
        };
        let (_, text) = self.create_token(req, SERVER_ACTOR).await?;
        let write = |path: &Path| -> std::io::Result<()> {
            let tmp = path.with_extension("token.tmp");
            let _ = std::fs::remove_file(&tmp);
            let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&tmp)?;
            std::io::Write::write_all(&mut f, format!("{text}\n").as_bytes())?;
            f.sync_all()?;
            std::fs::rename(&tmp, path)
        };
        write(&path).map_err(|e| ServerError::Unavailable(format!("{}: {e}", path.display())))?;
        Ok(Some(path))
    }

    async fn put(
        &self,
        cred: StoredCredential,
        actor: &str,
        action: &str,
        detail: String,
    ) -> Result<v1::Credential, ServerError> {
        let _guard = self.write.lock().await;
        let audit = entry(actor, action, &cred, detail);
        crate::writer::commit_durable(&self.writer, vec![op(&cred), AuditLog::op(audit)]).await?;
        let proto = cred.to_proto();
        tracing::info!(credential = %cred.id, name = %cred.name, role = %cred.role, %actor, action, "operator credential");
        self.install(cred);
        Ok(proto)
    }
}

/// One connection's last verdict on a bearer token. A long-lived client sends the
/// same token on every call; checking it once per connection (until a credential
/// changes) instead of once per call removes the hash and the shared lookup. Only a
/// token that verified is remembered, compared in time independent of where it differs.
#[derive(Debug, Clone, Default)]
pub struct TokenMemo(Arc<parking_lot::Mutex<Option<Verified>>>);

/// A token that verified, when, and what it proved.
#[derive(Debug)]
struct Verified {
    token: Box<str>,
    /// [`Operators::generation`] read before the check.
    generation: u64,
    /// 0: never.
    expires_ms: i64,
    who: Authenticated,
}

impl TokenMemo {
    /// The remembered verdict, if `token` is the remembered text, no credential has
    /// changed since, and it has not expired.
    fn vouches(&self, token: &str, generation: u64, now_ms: i64) -> Option<Authenticated> {
        let memo = self.0.lock();
        let v = memo.as_ref()?;
        let holds = v.generation == generation
            && (v.expires_ms == 0 || now_ms < v.expires_ms)
            && records::same_hash(v.token.as_bytes(), token.as_bytes());
        holds.then(|| v.who.clone())
    }

    fn remember(&self, verified: Verified) {
        *self.0.lock() = Some(verified);
    }
}

/// A credential as the access layer checks it on every call: its role parsed and its
/// token hash decoded once, when it is loaded or changed.
struct Live {
    cred: StoredCredential,
    role: Role,
    /// A token's SHA-256 (`None`: a certificate, or a stored hash that does not decode,
    /// which then matches no token).
    hash: Option<[u8; 32]>,
}

impl Live {
    fn new(cred: StoredCredential) -> Self {
        let mut hash = [0u8; 32];
        let hash = (cred.kind == Kind::Token && hex::decode_to_slice(&cred.hash, &mut hash).is_ok()).then_some(hash);
        Self { role: cred.role(), hash, cred }
    }
}

fn role_of(role: i32) -> Result<Role, ServerError> {
    match Role::try_from(role) {
        Ok(Role::Unspecified) | Err(_) => {
            Err(ServerError::InvalidArgument("role is required: viewer, responder, operator or admin".into()))
        }
        Ok(r) => Ok(r),
    }
}

fn entry(actor: &str, action: &str, cred: &StoredCredential, detail: String) -> AuditEntry {
    AuditEntry {
        actor: actor.to_string(),
        action: action.into(),
        target: format!("{}:{} ({})", if cred.kind == Kind::Token { "token" } else { "cert" }, cred.id, cred.name),
        detail,
        ..Default::default()
    }
}

fn reason_suffix(reason: &str) -> String {
    if reason.trim().is_empty() { String::new() } else { format!("; reason: {}", reason.trim()) }
}

fn op(c: &StoredCredential) -> Op {
    Op::PutIdentity(IdentityRecord {
        kind: OPERATOR_KIND.into(),
        id: c.id.clone(),
        updated_ms: driftwatch_proto::now_millis(),
        body: serde_json::to_vec(c).expect("credential serializes"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn operators_with(token: &str, revoked: bool) -> Arc<Operators> {
        let cred = StoredCredential {
            id: records::token_id(token).unwrap().into(),
            kind: Kind::Token,
            name: "alice".into(),
            role: "operator".into(),
            hash: records::token_hash(token),
            created_ms: 1_000,
            revoked_ms: revoked.then_some(2_000),
            ..Default::default()
        };
        let record = IdentityRecord {
            kind: OPERATOR_KIND.into(),
            id: cred.id.clone(),
            updated_ms: 1_000,
            body: serde_json::to_vec(&cred).unwrap(),
        };
        let (tx, _rx) = tokio::sync::mpsc::channel(1);
        Operators::load(vec![record], WriteSender::for_tests(tx), None)
    }

    #[test]
    fn a_connection_remembers_only_a_verified_token_until_a_credential_changes() {
        let (token, _) = records::new_token();
        let ops = operators_with(&token, false);
        let memo = TokenMemo::default();
        let generation = || ops.generation.load(Ordering::Acquire);
        let now = driftwatch_proto::now_millis();
        let who = ops.authenticate_token(&token, Some(&memo)).unwrap();
        assert_eq!((who.principal.as_str(), who.role), ("alice", Role::Operator));
        assert_eq!(memo.vouches(&token, generation(), now), Some(who.clone()));
        // Same id, another secret: not the remembered text, so checked, and refused.
        let forged = format!("{}.{}", token.rsplit_once('.').unwrap().0, "f".repeat(64));
        assert_eq!(memo.vouches(&forged, generation(), now), None);
        assert_eq!(ops.authenticate_token(&forged, Some(&memo)).unwrap_err(), "unknown token");
        assert!(memo.vouches(&token, generation(), now).is_some(), "a refused token is not remembered");
        // Another server's verdict is not this one's: its own state says revoked.
        let revoked = operators_with(&token, true);
        assert!(revoked.authenticate_token(&token, Some(&memo)).unwrap_err().contains("revoked"));
        // A token that does not verify is never remembered.
        let fresh = TokenMemo::default();
        assert!(ops.authenticate_token(&forged, Some(&fresh)).is_err());
        assert_eq!(fresh.vouches(&forged, generation(), now), None);
        // Revoked on this server: the remembered verdict no longer holds, on the next call.
        let memo = TokenMemo::default();
        ops.authenticate_token(&token, Some(&memo)).unwrap();
        let mut cred = ops.creds.read().get(records::token_id(&token).unwrap()).unwrap().cred.clone();
        cred.revoked_ms = Some(now);
        ops.install(cred);
        assert_eq!(memo.vouches(&token, generation(), now), None);
        assert!(ops.authenticate_token(&token, Some(&memo)).unwrap_err().contains("revoked"));
    }

    #[test]
    fn a_remembered_token_expires_when_the_token_does() {
        let (token, _) = records::new_token();
        let ops = operators_with(&token, false);
        let now = driftwatch_proto::now_millis();
        let mut cred = ops.creds.read().get(records::token_id(&token).unwrap()).unwrap().cred.clone();
        cred.expires_ms = now + 60_000;
        ops.install(cred);
        let memo = TokenMemo::default();
        ops.authenticate_token(&token, Some(&memo)).unwrap();
        let generation = ops.generation.load(Ordering::Acquire);
        assert!(memo.vouches(&token, generation, now + 59_999).is_some());
        assert_eq!(memo.vouches(&token, generation, now + 60_000), None, "expired: checked in full again");
    }
}
