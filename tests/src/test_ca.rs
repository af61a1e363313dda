//! A throwaway certificate authority for TLS tests: a CA made on the spot, the
//! certificates it signs (server and client), and the rustls server config that
//! serves one of them (optionally requiring a client certificate the CA signed).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// A CA that lives as long as the test.
pub struct TestCa {
    issuer: rcgen::CertifiedIssuer<'static, rcgen::KeyPair>,
}

/// A certificate and its private key, PEM.
pub struct Issued {
    pub cert_pem: String,
    pub key_pem: String,
}

impl Default for TestCa {
    fn default() -> Self {
        Self::new("driftwatch test CA")
    }
}

impl TestCa {
    pub fn new(common_name: &str) -> Self {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("CA parameters");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.distinguished_name.push(rcgen::DnType::CommonName, common_name);
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
            rcgen::KeyUsagePurpose::DigitalSignature,
        ];
        let key = rcgen::KeyPair::generate().expect("CA key");
        Self { issuer: rcgen::CertifiedIssuer::self_signed(params, key).expect("CA certificate") }
    }

    /// The CA certificate, PEM.
    pub fn cert_pem(&self) -> String {
        self.issuer.pem()
    }

    /// Write the CA certificate to `dir/name`.
    pub fn write(&self, dir: &Path, name: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, self.cert_pem()).expect("write the CA certificate");
        p
    }

    /// A certificate for `names` (DNS names, or IP addresses such as `127.0.0.1`),
    /// usable by servers and clients.
    pub fn issue(&self, names: &[&str]) -> Issued {
        let mut params =
            rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).expect("names");
        params.distinguished_name.push(rcgen::DnType::CommonName, names.first().copied().unwrap_or("driftwatch"));
        params.extended_key_usages =
            vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth, rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        let key = rcgen::KeyPair::generate().expect("key");
        let cert = params.signed_by(&key, &*self.issuer).expect("sign");
        Issued { cert_pem: cert.pem(), key_pem: key.serialize_pem() }
    }

    /// A server config presenting `leaf`; with `require_client_cert`, a client must
    /// present a certificate this CA signed.
    pub fn server_config(&self, leaf: &Issued, require_client_cert: bool) -> Arc<rustls::ServerConfig> {
        // The process-wide provider: ring, the only one this workspace builds.
        let builder = rustls::ServerConfig::builder();
        let builder = if require_client_cert {
            let mut roots = rustls::RootCertStore::empty();
            roots.add(self.issuer.der().clone()).expect("CA as a root");
            let verifier =
                rustls::server::WebPkiClientVerifier::builder(Arc::new(roots)).build().expect("client verifier");
            builder.with_client_cert_verifier(verifier)
        } else {
            builder.with_no_client_auth()
        };
        let chain = CertificateDer::pem_slice_iter(leaf.cert_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .expect("certificate PEM");
        let key = PrivateKeyDer::from_pem_slice(leaf.key_pem.as_bytes()).expect("key PEM");
        Arc::new(builder.with_single_cert(chain, key).expect("certificate and key"))
    }
}

impl Issued {
    /// Write `dir/<stem>.pem` (certificate) and `dir/<stem>.key`; returns both paths.
    pub fn write(&self, dir: &Path, stem: &str) -> (PathBuf, PathBuf) {
        let (cert, key) = (dir.join(format!("{stem}.pem")), dir.join(format!("{stem}.key")));
        std::fs::write(&cert, &self.cert_pem).expect("write the certificate");
        std::fs::write(&key, &self.key_pem).expect("write the key");
        (cert, key)
    }
}
