//! What a certificate says: identity, serial, validity, names.

use std::net::IpAddr;

use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use sha2::{Digest, Sha256};
use x509_parser::extensions::{GeneralName, ParsedExtension};

use crate::{Identity, PkiError, Result};

/// The parts of a certificate driftwatch decides on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertInfo {
    /// The driftwatch identity in a URI SAN, if exactly one is there.
    pub identity: Option<Identity>,
    /// Every URI SAN, as written.
    pub uris: Vec<String>,
    pub dns_names: Vec<String>,
    pub ips: Vec<IpAddr>,
    /// Serial number, lower-case hex without leading zero bytes' padding changes.
    pub serial: String,
    /// Validity, Unix seconds.
    pub not_before: i64,
    pub not_after: i64,
    pub is_ca: bool,
    /// SubjectPublicKeyInfo DER.
    pub public_key_der: Vec<u8>,
    /// SHA-256 of the DER, `AB:CD:…`.
    pub fingerprint: String,
    /// Subject and authority key identifiers: which CA issued a certificate
    /// (its AKI is the CA's SKI).
    pub subject_key_id: Option<Vec<u8>>,
    pub authority_key_id: Option<Vec<u8>>,
}

/// Read a DER certificate.
pub fn inspect(der: &[u8]) -> Result<CertInfo> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).map_err(|e| PkiError::BadCertificate(e.to_string()))?;
    let mut uris = Vec::new();
    let mut dns_names = Vec::new();
    let mut ips = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            match name {
                GeneralName::URI(u) => uris.push(u.to_string()),
                GeneralName::DNSName(d) => dns_names.push(d.to_string()),
                GeneralName::IPAddress(b) => match b.len() {
                    4 => ips.push(IpAddr::from(<[u8; 4]>::try_from(*b).expect("length checked"))),
                    16 => ips.push(IpAddr::from(<[u8; 16]>::try_from(*b).expect("length checked"))),
                    _ => {}
                },
                _ => {}
            }
        }
    }
    // Exactly one driftwatch identity, or none: a certificate naming two hosts speaks for neither.
    let mut ids = uris.iter().filter_map(|u| Identity::parse(u));
    let identity = match (ids.next(), ids.next()) {
        (Some(one), None) => Some(one),
        _ => None,
    };
    let is_ca = cert.basic_constraints().ok().flatten().is_some_and(|bc| bc.value.ca);
    let mut subject_key_id = None;
    let mut authority_key_id = None;
    for ext in cert.extensions() {
        match ext.parsed_extension() {
            ParsedExtension::SubjectKeyIdentifier(k) => subject_key_id = Some(k.0.to_vec()),
            ParsedExtension::AuthorityKeyIdentifier(a) => {
                authority_key_id = a.key_identifier.as_ref().map(|k| k.0.to_vec())
            }
            _ => {}
        }
    }
    Ok(CertInfo {
        identity,
        uris,
        dns_names,
        ips,
        serial: hex::encode(cert.raw_serial()),
        not_before: cert.validity().not_before.timestamp(),
        not_after: cert.validity().not_after.timestamp(),
        is_ca,
        public_key_der: cert.public_key().raw.to_vec(),
        fingerprint: fingerprint_sha256(der),
        subject_key_id,
        authority_key_id,
    })
}

/// Read the first certificate of a PEM text.
pub fn inspect_pem(pem: &str) -> Result<CertInfo> {
    let certs = certs_from_pem(pem)?;
    inspect(certs.first().ok_or_else(|| PkiError::BadCertificate("no certificate in the PEM text".into()))?)
}

/// Every certificate of a PEM text (a bundle), in order. Empty text is an error.
pub fn certs_from_pem(pem: &str) -> Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| PkiError::BadCertificate(e.to_string()))?;
    if certs.is_empty() {
        return Err(PkiError::BadCertificate("no certificate in the PEM text".into()));
    }
    Ok(certs)
}

/// SHA-256 of DER bytes as upper-case hex pairs joined by `:`.
pub fn fingerprint_sha256(der: &[u8]) -> String {
    let digest = Sha256::digest(der);
    digest.iter().map(|b| format!("{b:02X}")).collect::<Vec<_>>().join(":")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert!(inspect(b"").is_err());
        assert!(inspect(&[0x30, 0x03, 0x02, 0x01, 0x01]).is_err());
        assert!(inspect_pem("").is_err());
        assert!(certs_from_pem("-----BEGIN CERTIFICATE-----\n!!!\n-----END CERTIFICATE-----\n").is_err());
    }

    #[test]
    fn fingerprints_look_like_openssl() {
        assert_eq!(fingerprint_sha256(b"").len(), 95);
        assert!(fingerprint_sha256(b"").starts_with("E3:B0:C4:42"));
    }
}
