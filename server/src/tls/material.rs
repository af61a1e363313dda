//! The listener's certificates and trusted CAs, loaded from files and reloaded when
//! they change: a renewed server certificate or an added CA needs no restart. A
//! reload that fails (a half-written file) keeps the last good set and logs why.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use parking_lot::{Mutex, RwLock};
use rustls::client::danger::HandshakeSignatureValid;
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use tokio_util::sync::CancellationToken;

use super::peer::CertStatus;
use super::{BuiltInCa, TlsSource, provider};
use crate::error::ServerError;

/// What one load of the files produced.
struct Loaded {
    server: Arc<rustls::ServerConfig>,
    /// Chain validation of client certificates against the trusted CAs (None: no
    /// client CA configured, so no client certificate is ever valid).
    clients: Option<Arc<dyn ClientCertVerifier>>,
    /// The trusted client CAs, PEM (handed to enrolling agents).
    trusted_pem: String,
}

/// The current TLS material; cheap to read on every handshake.
pub struct TlsMaterial {
    source: TlsSource,
    sans: Vec<String>,
    current: RwLock<Arc<Loaded>>,
    stamps: Mutex<Vec<Stamp>>,
}

type Stamp = (PathBuf, Option<(SystemTime, u64)>);

impl TlsMaterial {
    /// Load (creating the built-in CA's files first when that is the source).
    pub fn load(source: TlsSource) -> Result<Arc<Self>, ServerError> {
        let sans = match &source {
            TlsSource::BuiltIn { dir, sans } => {
                let ca = BuiltInCa { dir: dir.clone() }.ensure(sans)?;
                tracing::info!(
                    ca = %BuiltInCa { dir: dir.clone() }.ca_cert().display(),
                    sha256 = %ca.fingerprint(),
                    "fleet CA: copy ca.pem to agents and operators (--ca-file); check the fingerprint"
                );
                sans.clone()
            }
            TlsSource::Files { .. } => Vec::new(),
        };
        let loaded = build(&source)?;
        let stamps = stamp_all(&files(&source));
        Ok(Arc::new(Self { source, sans, current: RwLock::new(Arc::new(loaded)), stamps: Mutex::new(stamps) }))
    }

    pub fn server_config(&self) -> Arc<rustls::ServerConfig> {
        self.current.read().server.clone()
    }

    /// The CAs client certificates must chain to, PEM.
    pub fn trusted_ca_pem(&self) -> String {
        self.current.read().trusted_pem.clone()
    }

    /// The built-in CA's directory, when the server issues certificates itself.
    pub fn built_in(&self) -> Option<BuiltInCa> {
        match &self.source {
            TlsSource::BuiltIn { dir, .. } => Some(BuiltInCa { dir: dir.clone() }),
            TlsSource::Files { .. } => None,
        }
    }

    /// What a presented certificate chain is worth (chain and validity; revocation is
    /// checked per request).
    pub fn classify(&self, chain: Option<&[CertificateDer<'static>]>) -> CertStatus {
        let Some((end, intermediates)) = chain.and_then(|c| c.split_first()) else { return CertStatus::None };
        let Some(verifier) = self.current.read().clients.clone() else {
            return CertStatus::Invalid("this server trusts no client certificates (no client CA configured)".into());
        };
        if let Err(e) = verifier.verify_client_cert(end, intermediates, UnixTime::now()) {
            return CertStatus::Invalid(describe(&e));
        }
        match driftwatch_pki::inspect(end) {
            Ok(info) => CertStatus::Valid { identity: info.identity, serial: info.serial, not_after: info.not_after },
            Err(e) => CertStatus::Invalid(e.to_string()),
        }
    }

    /// Check the files now; rebuild when any changed. `None`: nothing changed.
    pub fn reload_if_changed(&self) -> Option<Result<(), ServerError>> {
        if let TlsSource::BuiltIn { dir, .. } = &self.source {
            // Re-issue the server certificate when it is due (it then changes on disk).
            if let Err(e) = (BuiltInCa { dir: dir.clone() }).ensure(&self.sans) {
                return Some(Err(e));
            }
        }
        let now = stamp_all(&files(&self.source));
        if *self.stamps.lock() == now {
            return None;
        }
        let result = build(&self.source).map(|loaded| {
            *self.current.write() = Arc::new(loaded);
        });
        if result.is_ok() {
            *self.stamps.lock() = now;
        }
        Some(result)
    }

    /// Check for changes every `interval` until shutdown.
    pub fn spawn_reload(
        self: Arc<Self>,
        interval: Duration,
        shutdown: CancellationToken,
    ) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tick.tick() => {}
                }
                let me = self.clone();
                match tokio::task::spawn_blocking(move || me.reload_if_changed()).await {
                    Ok(None) => {}
                    Ok(Some(Ok(()))) => tracing::info!("TLS certificates reloaded"),
                    Ok(Some(Err(e))) => {
                        tracing::error!(error = %e, "TLS reload failed; keeping the previous certificates")
                    }
                    Err(e) => tracing::error!(error = %e, "TLS reload task failed"),
                }
            }
        })
    }
}

/// Every file the material is built from (their changes trigger a reload).
fn files(source: &TlsSource) -> Vec<PathBuf> {
    match source {
        TlsSource::BuiltIn { dir, .. } => {
            let b = BuiltInCa { dir: dir.clone() };
            let mut v = vec![b.server_cert(), b.server_key(), b.ca_cert()];
            v.extend(trusted_files(&b.trusted_dir()));
            v
        }
        TlsSource::Files { cert, key, client_ca } => {
            let mut v = vec![cert.clone(), key.clone()];
            v.extend(client_ca.clone());
            v
        }
    }
}

fn trusted_files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok().map(|e| e.path())).filter(|p| p.extension().is_some_and(|e| e == "pem")).collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

fn stamp_all(paths: &[PathBuf]) -> Vec<Stamp> {
    paths
        .iter()
        .map(|p| {
            (p.clone(), std::fs::metadata(p).ok().map(|m| (m.modified().unwrap_or(SystemTime::UNIX_EPOCH), m.len())))
        })
        .collect()
}

fn build(source: &TlsSource) -> Result<Loaded, ServerError> {
    let (cert, key, cas): (PathBuf, PathBuf, Vec<PathBuf>) = match source {
        TlsSource::BuiltIn { dir, .. } => {
            let b = BuiltInCa { dir: dir.clone() };
            let mut cas = vec![b.ca_cert()];
            cas.extend(trusted_files(&b.trusted_dir()));
            (b.server_cert(), b.server_key(), cas)
        }
        TlsSource::Files { cert, key, client_ca } => (cert.clone(), key.clone(), client_ca.iter().cloned().collect()),
    };
    let bad = |p: &Path, e: String| ServerError::Config(vec![format!("{}: {e}", p.display())]);
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&cert)
        .map_err(|e| bad(&cert, e.to_string()))?
        .collect::<Result<_, _>>()
        .map_err(|e| bad(&cert, e.to_string()))?;
    if chain.is_empty() {
        return Err(bad(&cert, "no certificate in the file".into()));
    }
    let key_der = PrivateKeyDer::from_pem_file(&key).map_err(|e| bad(&key, e.to_string()))?;

    let mut roots = rustls::RootCertStore::empty();
    let mut trusted_pem = String::new();
    for ca in &cas {
        let text = std::fs::read_to_string(ca).map_err(|e| bad(ca, e.to_string()))?;
        for der in driftwatch_pki::certs_from_pem(&text).map_err(|e| bad(ca, e.to_string()))? {
            roots.add(der).map_err(|e| bad(ca, e.to_string()))?;
        }
        trusted_pem.push_str(text.trim_end());
        trusted_pem.push('\n');
    }
    let provider = provider();
    let clients: Option<Arc<dyn ClientCertVerifier>> = if roots.is_empty() {
        None
    } else {
        Some(
            WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                .allow_unauthenticated()
                .build()
                .map_err(|e| bad(&cas[0], e.to_string()))?,
        )
    };
    let mut server = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| ServerError::Config(vec![format!("tls: {e}")]))?
        .with_client_cert_verifier(Arc::new(AnyClientCert { provider }))
        .with_single_cert(chain, key_der)
        .map_err(|e| bad(&cert, format!("certificate and key: {e}")))?;
    server.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Loaded { server: Arc::new(server), clients, trusted_pem })
}

/// Let every client through the handshake, with a certificate or without, as long
/// as it proves it holds the certificate's key. What the certificate is worth is
/// decided after the handshake ([`TlsMaterial::classify`]), so a refused caller gets
/// a gRPC status that says why instead of a bare TLS alert.
#[derive(Debug)]
struct AnyClientCert {
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl ClientCertVerifier for AnyClientCert {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

/// A certificate error in words an operator can act on.
fn describe(e: &rustls::Error) -> String {
    use rustls::CertificateError as C;
    match e {
        rustls::Error::InvalidCertificate(C::Expired | C::ExpiredContext { .. }) => {
            "client certificate has expired; the agent needs a new enrollment token".into()
        }
        rustls::Error::InvalidCertificate(C::NotValidYet | C::NotValidYetContext { .. }) => {
            "client certificate is not valid yet (check the clocks)".into()
        }
        rustls::Error::InvalidCertificate(C::UnknownIssuer) => {
            "client certificate is not issued by a CA this server trusts".into()
        }
        rustls::Error::InvalidCertificate(C::InvalidPurpose | C::InvalidPurposeContext { .. }) => {
            "client certificate is not for client authentication".into()
        }
        other => format!("client certificate refused: {other}"),
    }
}
