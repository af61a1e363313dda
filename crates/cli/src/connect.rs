//! The connection to the server: plaintext for `http://` (`driftwatch up`, loopback
//! development), TLS for `https://` trusting only `--ca-file` (the server's
//! `DATA/tls/ca.pem`), with the URL's host as the name the server's certificate must carry.
//!
//! Credentials: a bearer token (`--token-file`, or the token itself in
//! `DRIFTWATCH_TOKEN`) on every call, and/or an operator certificate (`--cert-file`,
//! `--key-file`) presented in the TLS handshake.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use driftwatch_proto::bearer::Bearer;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

/// A channel that adds the operator's token to every call.
pub type Conn = InterceptedService<Channel, Bearer>;

/// Where the CLI connects (`--server`, `--ca-file`) and as whom.
#[derive(Debug, Clone, Default)]
pub struct Target {
    pub server: String,
    pub ca_file: Option<PathBuf>,
    /// The token text (read from `--token-file` or `DRIFTWATCH_TOKEN`).
    pub token: Option<String>,
    /// An operator certificate and its key (PEM files).
    pub identity: Option<(PathBuf, PathBuf)>,
}

/// The token from `--token-file` (which wins) or `DRIFTWATCH_TOKEN`.
pub fn token(file: Option<&Path>, env: Option<String>) -> anyhow::Result<Option<String>> {
    let text = match file {
        Some(f) => std::fs::read_to_string(f).with_context(|| format!("--token-file {}: cannot read", f.display()))?,
        None => match env {
            Some(t) => t,
            None => return Ok(None),
        },
    };
    let t = text.trim();
    anyhow::ensure!(
        !t.is_empty() && !t.contains(char::is_whitespace),
        "{}: expected one token",
        file.map_or("DRIFTWATCH_TOKEN".to_string(), |f| format!("--token-file {}", f.display()))
    );
    Ok(Some(t.to_string()))
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
    let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(pem)).domain_name(host);
    if let Some((cert, key)) = &target.identity {
        let read = |p: &PathBuf, flag: &str| {
            std::fs::read_to_string(p).with_context(|| format!("{flag} {}: cannot read", p.display()))
        };
        tls = tls.identity(Identity::from_pem(read(cert, "--cert-file")?, read(key, "--key-file")?));
    }
    Ok(Some(tls))
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

pub async fn channel(target: &Target) -> anyhow::Result<Conn> {
    let bearer = Bearer::new(target.token.as_deref()).map_err(|e| anyhow::anyhow!("the token: {e}"))?;
    let channel = endpoint(target)?
        .connect()
        .await
        .map_err(|e| anyhow::anyhow!("{}", driftwatch_proto::error_chain(&e)))
        .with_context(|| crate::exit::Unreachable(target.server.clone()))?;
    Ok(InterceptedService::new(channel, bearer))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(server: &str, ca_file: Option<PathBuf>) -> Target {
        Target { server: server.into(), ca_file, ..Default::default() }
    }

    #[test]
    fn the_token_comes_from_the_file_before_the_environment() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("t");
        std::fs::write(&f, "dwt_0011223344556677.abc\n").unwrap();
        assert_eq!(token(Some(&f), Some("other".into())).unwrap().as_deref(), Some("dwt_0011223344556677.abc"));
        assert_eq!(token(None, Some(" env-token ".into())).unwrap().as_deref(), Some("env-token"));
        assert_eq!(token(None, None).unwrap(), None);
        std::fs::write(&f, "\n").unwrap();
        assert!(token(Some(&f), None).unwrap_err().to_string().contains("expected one token"));
        let e = token(Some(&d.path().join("nope")), None).unwrap_err();
        assert!(format!("{e:#}").contains("--token-file"), "{e:#}");
        assert!(token(None, Some("two words".into())).unwrap_err().to_string().contains("DRIFTWATCH_TOKEN"));
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
