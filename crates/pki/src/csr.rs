//! The agent's side: a key that never leaves the host, and a request to sign it.

use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair};

use crate::{PkiError, Result};

/// The agent's private key (P-256). Stored in its state dir, 0600; only the public
/// half ever leaves the host, inside a CSR.
pub struct AgentKey(KeyPair);

impl AgentKey {
    pub fn generate() -> Self {
        Self(KeyPair::generate().expect("P-256 key generation does not fail with ring"))
    }

    pub fn from_pem(pem: &str) -> Result<Self> {
        KeyPair::from_pem(pem).map(Self).map_err(|e| PkiError::BadKey(e.to_string()))
    }

    pub fn to_pem(&self) -> String {
        self.0.serialize_pem()
    }

    /// The SubjectPublicKeyInfo DER (to check a certificate belongs to this key).
    pub fn public_key_der(&self) -> Vec<u8> {
        rcgen::PublicKeyData::subject_public_key_info(&self.0)
    }
}

/// A PKCS#10 request (PEM) signed with `key`. The common name is only a hint for
/// the operator reading logs: the server decides the identity.
pub fn certificate_request(key: &AgentKey, hint: &str) -> Result<String> {
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, hint);
    let csr = params.serialize_request(&key.0).map_err(|e| PkiError::Sign(e.to_string()))?;
    csr.pem().map_err(|e| PkiError::Sign(e.to_string()))
}
