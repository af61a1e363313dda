//! The connection to the server: plaintext for `http://` (`driftwatch up`, loopback
//! development), TLS for `https://` trusting only `--ca-file` (the server's
//! `DATA/tls/ca.pem`), with the URL's host as the name the server's certificate must carry.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};

/// Where the CLI connects: `--server` and `--ca-file`.
#[derive(Debug, Clone)]
pub struct Target {
    pub server: String,
    pub ca_file: Option<PathBuf>,
}

/// The TLS settings for `target`, when it is `https://` (`None` for plaintext).
pub fn tls(target: &Target) -> anyhow::Result<Option<ClientTlsConfig>> {
    let uri: tonic::codegen::http::Uri =
        target.server.parse().with_context(|| format!("bad --server URL '{}'", target.server))?;
    if uri.scheme_str() != Some("https") {
        return Ok(None);
    }
    let host = uri
        .host()
        .filter(|h| !h.is_empty())
        .with_context(|| format!("bad --server URL '{}': no host", target.server))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let ca_file = target.ca_file.as_ref().with_context(|| {
        format!(
            "--server {} is https://: pass --ca-file FILE (or DRIFTWATCH_CA_FILE), the server's CA certificate \
             (DATA/tls/ca.pem on the server); the system's roots are not used",
            target.server
        )
    })?;
    let pem =
        std::fs::read_to_string(ca_file).with_context(|| format!("--ca-file {}: cannot read", ca_file.display()))?;
    anyhow::ensure!(
        pem.contains("-----BEGIN CERTIFICATE-----"),
        "--ca-file {}: no PEM certificate in it",
        ca_file.display()
    );
    Ok(Some(ClientTlsConfig::new().ca_certificate(Certificate::from_pem(pem)).domain_name(host)))
}

pub fn endpoint(target: &Target) -> anyhow::Result<Endpoint> {
    let endpoint = Endpoint::from_shared(target.server.clone())
        .with_context(|| format!("bad --server URL '{}'", target.server))?
        .connect_timeout(Duration::from_secs(5));
    match tls(target)? {
        Some(tls) => endpoint.tls_config(tls).with_context(|| format!("TLS for {}", target.server)),
        None => Ok(endpoint),
    }
}

pub async fn channel(target: &Target) -> anyhow::Result<Channel> {
    endpoint(target)?
        .connect()
        .await
        .map_err(|e| anyhow::anyhow!("{}", driftwatch_proto::error_chain(&e)))
        .with_context(|| format!("cannot reach the driftwatch server at {}", target.server))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(server: &str, ca_file: Option<PathBuf>) -> Target {
        Target { server: server.into(), ca_file }
    }

    #[test]
    fn https_without_a_ca_file_is_a_clear_error() {
        let err = tls(&target("https://dw.example:50051", None)).unwrap_err().to_string();
        assert!(err.contains("--server https://dw.example:50051 is https://: pass --ca-file FILE"), "{err}");
        assert!(err.contains("DRIFTWATCH_CA_FILE"), "{err}");
    }

    #[test]
    fn https_with_a_ca_file_is_tls_and_http_is_not() {
        let d = tempfile::tempdir().unwrap();
        let ca = d.path().join("ca.pem");
        std::fs::write(&ca, "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n").unwrap();
        assert!(tls(&target("https://dw.example:50051", Some(ca.clone()))).unwrap().is_some());
        assert!(tls(&target("https://[::1]:50051", Some(ca.clone()))).unwrap().is_some());
        // `driftwatch up` and loopback development stay plaintext, whatever DRIFTWATCH_CA_FILE says.
        assert!(tls(&target("http://127.0.0.1:50051", Some(ca))).unwrap().is_none());
        assert!(tls(&target("http://127.0.0.1:50051", None)).unwrap().is_none());
    }

    #[test]
    fn a_missing_or_empty_ca_file_is_named() {
        let d = tempfile::tempdir().unwrap();
        let err = tls(&target("https://x:1", Some(d.path().join("nope.pem")))).unwrap_err();
        assert!(format!("{err:#}").contains("nope.pem"), "{err:#}");
        std::fs::write(d.path().join("empty.pem"), "").unwrap();
        let err = tls(&target("https://x:1", Some(d.path().join("empty.pem")))).unwrap_err().to_string();
        assert!(err.contains("no PEM certificate"), "{err}");
    }
}
