//! Certificate renewal on the stream. At two thirds of the certificate's lifetime
//! (right after Welcome when a connect finds it past that point) the agent makes a
//! new key and sends `renew_certificate` with its CSR; the server answers
//! `certificate_issued`. A certificate for the new key is stored with it (the order
//! that keeps a consistent pair across a crash is in `identity::files`) and used from
//! the next connect; the stream goes on. A refusal, a certificate that does not fit,
//! or no answer: try again after a tenth of the remaining lifetime (at least a minute).

use std::sync::Arc;
use std::sync::atomic::Ordering;

use driftwatch_pki::{AgentKey, certificate_request};
use driftwatch_proto::v1::{AgentMessage, CertificateIssued, RenewCertificate, agent_message};
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::Shared;
use crate::error::{AgentError, Result};
use crate::identity::{HostIdentity, MIN_RENEW_INTERVAL, now_unix, renew_in, retry_renewal_after, time};

/// When to ask for the next certificate, and the key of the request in flight.
pub(super) struct Renewal {
    due: Instant,
    pending: Option<AgentKey>,
}

impl Renewal {
    /// For the certificate this stream connected with.
    pub fn new(id: &HostIdentity) -> Self {
        let wait = renew_in(now_unix(), id.info.not_before, id.info.not_after);
        tracing::debug!(renew_in_s = wait.as_secs(), "certificate renewal scheduled");
        Self { due: Instant::now() + wait, pending: None }
    }

    pub fn due(&self) -> Instant {
        self.due
    }

    /// Ask for a certificate for a new key. Until an answer comes, the next request is
    /// due as after a refusal.
    pub async fn request(&mut self, shared: &Arc<Shared>, tx: &mpsc::Sender<AgentMessage>) -> Result<()> {
        let Some(current) = shared.identity.lock().clone() else {
            self.due = Instant::now() + MIN_RENEW_INTERVAL;
            return Ok(());
        };
        let key = AgentKey::generate();
        let csr_pem = certificate_request(&key, &current.host_id).map_err(|e| AgentError::Identity(e.to_string()))?;
        tx.send(AgentMessage { kind: Some(agent_message::Kind::RenewCertificate(RenewCertificate { csr_pem })) })
            .await
            .map_err(|_| AgentError::Watch("stream closed while asking for a certificate".into()))?;
        tracing::info!(
            host = %current.host_id,
            not_after = %time(current.info.not_after),
            "asked the server for a new certificate"
        );
        self.pending = Some(key);
        self.due = Instant::now() + retry_renewal_after(now_unix(), current.info.not_after);
        Ok(())
    }

    /// The server's answer: store and adopt the certificate, or plan another try.
    pub async fn issued(&mut self, shared: &Arc<Shared>, msg: CertificateIssued) {
        let Some(key) = self.pending.take() else {
            tracing::warn!("certificate_issued without a request in flight; ignored");
            return;
        };
        let Some(current) = shared.identity.lock().clone() else { return };
        let retry = retry_renewal_after(now_unix(), current.info.not_after);
        match self.adopt(shared, &current, key, msg).await {
            Ok(id) => {
                let next = renew_in(now_unix(), id.info.not_before, id.info.not_after).max(MIN_RENEW_INTERVAL);
                self.due = Instant::now() + next;
                shared.status.certificates_renewed.fetch_add(1, Ordering::Relaxed);
                tracing::info!(
                    host = %id.host_id,
                    serial = %id.info.serial,
                    not_after = %time(id.info.not_after),
                    next_renewal_in_s = next.as_secs(),
                    "certificate renewed and stored; used from the next connection"
                );
                *shared.identity.lock() = Some(id);
            }
            Err(why) => {
                self.due = Instant::now() + retry;
                tracing::warn!(error = %why, retry_in_s = retry.as_secs(), "certificate not renewed; trying again later");
            }
        }
    }

    async fn adopt(
        &self,
        shared: &Arc<Shared>,
        current: &HostIdentity,
        key: AgentKey,
        msg: CertificateIssued,
    ) -> std::result::Result<HostIdentity, String> {
        if !msg.error.is_empty() || msg.certificate_pem.is_empty() {
            let error = if msg.error.is_empty() { "no certificate in the answer" } else { msg.error.as_str() };
            return Err(format!("the server did not issue one: {error}"));
        }
        let id = HostIdentity::new(&key.to_pem(), &msg.certificate_pem)
            .map_err(|e| format!("the server's certificate cannot be used: {e}"))?;
        if id.host_id != current.host_id {
            return Err(format!("the new certificate names host {}, this stream is {}", id.host_id, current.host_id));
        }
        if id.info.not_after <= now_unix() {
            return Err(format!("the new certificate expired at {}", time(id.info.not_after)));
        }
        let (files, key_pem, cert_pem) = (shared.identity_files.clone(), id.key_pem.clone(), id.cert_pem.clone());
        tokio::task::spawn_blocking(move || files.replace(&key_pem, &cert_pem))
            .await
            .map_err(|e| format!("storing task failed: {e}"))?
            .map_err(|e| format!("cannot store it: {e}"))?;
        Ok(id)
    }
}
