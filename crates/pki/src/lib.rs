//! driftwatch's fleet PKI, as plain functions: the built-in certificate authority,
//! the agent's key and certificate signing request, and the identity a certificate
//! carries.
//!
//! Identities are SPIFFE IDs in the certificate's URI SAN:
//! `spiffe://driftwatch/host/<host-id>` for an agent, `spiffe://driftwatch/operator/<name>`
//! for an operator. The server signs only what it decided itself: of a CSR it keeps the
//! public key and nothing else (subject, SANs and extensions the agent asked for are
//! ignored), so an agent cannot ask for another host's identity.
//!
//! No I/O here beyond what a caller hands in as bytes; the server and agent read and
//! write the files (keys 0600).

mod ca;
mod csr;
mod error;
mod identity;
mod inspect;

pub use ca::{BACKDATE, Ca, Issued, ServerCert};
pub use csr::{AgentKey, certificate_request};
pub use error::{PkiError, Result};
pub use identity::{Identity, TRUST_DOMAIN, check_host_id, check_name};
pub use inspect::{CertInfo, certs_from_pem, fingerprint_sha256, inspect, inspect_pem};

/// The TLS crypto provider of every driftwatch process: ring, with X25519 first among
/// the key exchange groups. (rustls' ring provider now lists P-384 first; on CPUs
/// where ring has no assembly for it, each handshake then costs about a millisecond
/// of server CPU instead of a tenth of one.)
#[allow(deprecated)] // rustls prefers aws-lc-rs (post-quantum key exchange); ring builds without cmake.
pub fn tls_provider() -> std::sync::Arc<rustls::crypto::CryptoProvider> {
    use rustls::crypto::ring::{default_provider, kx_group};
    std::sync::Arc::new(rustls::crypto::CryptoProvider {
        kx_groups: vec![kx_group::X25519, kx_group::SECP256R1, kx_group::SECP384R1],
        ..default_provider()
    })
}

/// Make [`tls_provider`] the process default, which clients built without an explicit
/// provider (tonic's, reqwest's) use. Idempotent; a provider installed first stays.
pub fn install_tls_provider() {
    let _ = rustls::crypto::CryptoProvider::install_default((*tls_provider()).clone());
}

/// Default lifetime of agent and server certificates the built-in CA issues.
pub const DEFAULT_CERT_LIFETIME: std::time::Duration = std::time::Duration::from_secs(30 * 24 * 3600);
