//! Enrollment: trade the token (from `enroll_token_file`) and a CSR for this host's
//! certificate, with `AgentGateway.Enroll` over TLS, trusting only `ca_file`, without
//! a client certificate. The key is made here and never leaves the host.

use std::path::Path;
use std::time::Duration;

use driftwatch_pki::{AgentKey, certificate_request};
use driftwatch_proto::v1::{EnrollRequest, agent_gateway_client::AgentGatewayClient};
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};

use super::{EnrollFailure, HostIdentity, IdentityFiles, enroll_failure, time};
use crate::backoff::MIN_CONNECT_TIMEOUT;
use crate::config::AgentConfig;
use crate::error::{AgentError, Result};

/// How long one Enroll call may take once connected.
const ENROLL_TIMEOUT: Duration = Duration::from_secs(30);

/// The token in `path`, trimmed. Never logged: errors name the file only.
pub fn read_token(path: &Path) -> Result<String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| AgentError::Identity(format!("enroll_token_file {}: {e}", path.display())))?;
    let token = text.trim();
    if token.is_empty() {
        return Err(AgentError::Identity(format!("enroll_token_file {} is empty", path.display())));
    }
    Ok(token.to_string())
}

/// TLS trusting only `ca_pem` (a PEM bundle), checking the server's certificate for
/// `domain`, presenting `identity` when given.
pub fn client_tls(ca_pem: &str, domain: &str, identity: Option<&HostIdentity>) -> ClientTlsConfig {
    let tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca_pem)).domain_name(domain);
    match identity {
        Some(id) => tls.identity(Identity::from_pem(&id.cert_pem, &id.key_pem)),
        None => tls,
    }
}

/// The configured CA file's text.
pub(crate) async fn read_ca(config: &AgentConfig) -> Result<String> {
    let path = config.ca_file.as_ref().ok_or_else(|| AgentError::Config("an https:// server needs ca_file".into()))?;
    tokio::fs::read_to_string(path).await.map_err(|e| AgentError::io(path, e))
}

/// An endpoint for the configured server: TLS with the CA file (and `identity`), or
/// plaintext for `http://` on loopback.
pub(crate) async fn endpoint(config: &AgentConfig, identity: Option<&HostIdentity>) -> Result<Endpoint> {
    let connect_err = |message: String| AgentError::Connect { url: config.server.clone(), message };
    let endpoint = Endpoint::from_shared(config.server.clone())
        .map_err(|e| connect_err(e.to_string()))?
        .connect_timeout(MIN_CONNECT_TIMEOUT)
        .tcp_nodelay(true);
    if !config.tls {
        return Ok(endpoint);
    }
    let ca = read_ca(config).await?;
    endpoint
        .tls_config(client_tls(&ca, &config.server_host, identity))
        .map_err(|e| connect_err(driftwatch_proto::error_chain(&e)))
}

/// One enrollment attempt. [`AgentError::EnrollRefused`] is final (the token or the
/// request was refused); any other error is worth another try after a backoff.
pub async fn enroll(config: &AgentConfig, files: &IdentityFiles) -> Result<HostIdentity> {
    let token_file = config
        .enroll_token_file
        .clone()
        .ok_or_else(|| AgentError::Identity("enrolling needs enroll_token_file".into()))?;
    let f = files.clone();
    let (token, key) = tokio::task::spawn_blocking(move || {
        let token = read_token(&token_file)?;
        // The key of an earlier attempt, when there is one: its CSR is as good.
        let key = match f.read()?.0.map(|pem| AgentKey::from_pem(&pem)) {
            Some(Ok(key)) => key,
            _ => {
                let key = AgentKey::generate();
                f.write_key(&key.to_pem())?;
                key
            }
        };
        Ok::<_, AgentError>((token, key))
    })
    .await
    .map_err(|e| AgentError::Identity(format!("enrollment task failed: {e}")))??;
    let csr = certificate_request(&key, &config.host_id).map_err(|e| AgentError::Identity(e.to_string()))?;

    let channel =
        endpoint(config, None).await?.timeout(ENROLL_TIMEOUT).connect().await.map_err(|e| AgentError::Connect {
            url: config.server.clone(),
            message: driftwatch_proto::error_chain(&e),
        })?;
    let request = EnrollRequest { token, csr_pem: csr, host_id: config.host_id.clone(), labels: config.labels.clone() };
    let response = match AgentGatewayClient::new(channel).enroll(request).await {
        Ok(r) => r.into_inner(),
        Err(status) => {
            return Err(match enroll_failure(status.code()) {
                EnrollFailure::Fatal => AgentError::EnrollRefused(status),
                EnrollFailure::Retry => AgentError::Connect {
                    url: config.server.clone(),
                    message: format!("enroll: {:?}: {}", status.code(), status.message()),
                },
            });
        }
    };
    let key_pem = key.to_pem();
    let id = HostIdentity::new(&key_pem, &response.certificate_pem)
        .map_err(|e| AgentError::Identity(format!("the server's certificate cannot be used: {e}")))?;
    let (f, cert) = (files.clone(), response.certificate_pem.clone());
    tokio::task::spawn_blocking(move || f.write_cert(&cert))
        .await
        .map_err(|e| AgentError::Identity(format!("enrollment task failed: {e}")))??;
    tracing::info!(
        host = %id.host_id,
        serial = %id.info.serial,
        not_after = %time(id.info.not_after),
        cert = %files.cert_path().display(),
        "enrolled"
    );
    if id.host_id != config.host_id {
        tracing::info!(host = %id.host_id, proposed = %config.host_id, "the server enrolled this host under another id; using the certificate's");
    }
    Ok(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_token_is_trimmed_and_an_empty_or_missing_file_named() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("token");
        std::fs::write(&p, "  abc.def\n").unwrap();
        assert_eq!(read_token(&p).unwrap(), "abc.def");
        std::fs::write(&p, "\n").unwrap();
        assert!(read_token(&p).unwrap_err().to_string().contains("is empty"));
        let missing = read_token(&d.path().join("nope")).unwrap_err().to_string();
        assert!(missing.contains("enroll_token_file") && missing.contains("nope"), "{missing}");
    }
}
