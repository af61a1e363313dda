//! TLS on the gRPC listener: where the certificates come from (the built-in CA in
//! the data dir, or the operator's own files), reloading them when they change on
//! disk, and what a client's certificate proves ([`peer`]).
//!
//! The server terminates TLS itself (tokio-rustls under `serve_with_incoming`)
//! rather than with tonic's `ServerTlsConfig`, because the handshake must accept
//! clients without a certificate (enrollment, health) and the server classifies a
//! presented certificate against its own CA set and revocation list.

pub mod bootstrap;
pub mod listener;
pub mod material;
pub mod peer;
pub mod rotate;

use std::path::PathBuf;
use std::time::Duration;

pub use bootstrap::BuiltInCa;
pub use listener::{Conn, serve_tls};
pub use material::TlsMaterial;
pub use peer::{DenyList, PeerInfo};

/// Where the listener's certificates come from.
#[derive(Debug, Clone, PartialEq)]
pub enum TlsSource {
    /// The built-in CA in this directory (`DATA/tls`), created on first start:
    /// `ca.pem`, `ca.key`, `server.pem`, `server.key`, and `trusted/*.pem` (more CAs
    /// trusted for client certificates, for a CA rotation's overlap).
    BuiltIn { dir: PathBuf, sans: Vec<String> },
    /// The operator's own PKI: server certificate and key, and the CA bundle that
    /// client certificates must chain to (none: no client certificates, so no agents).
    Files { cert: PathBuf, key: PathBuf, client_ca: Option<PathBuf> },
}

/// Resolved `[tls]` settings.
#[derive(Debug, Clone, PartialEq)]
pub struct TlsConfig {
    pub source: TlsSource,
    /// Lifetime of agent certificates the server issues (enrollment, renewal).
    pub cert_lifetime: Duration,
    /// How often certificate files are checked for changes.
    pub reload_interval: Duration,
}

pub const DEFAULT_RELOAD_INTERVAL: Duration = Duration::from_secs(10);
/// How long a client may take to finish its TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The crypto provider of every TLS config the server builds (the clients' too).
pub fn provider() -> std::sync::Arc<rustls::crypto::CryptoProvider> {
    driftwatch_pki::tls_provider()
}
