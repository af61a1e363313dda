//! The built-in certificate authority: create one, load one, issue the server's
//! certificate, and sign an agent's CSR for the identity the server chose.

use std::net::IpAddr;
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use rustls_pki_types::CertificateSigningRequestDer;
use rustls_pki_types::pem::PemObject;
use time::OffsetDateTime;

use crate::{Identity, PkiError, Result};

/// How long a CA created by [`Ca::generate`] is valid.
const CA_LIFETIME: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// Issued certificates start this much in the past, for clocks that lag the server's
/// (their lifetime counts from when they were issued: see the agent's renewal).
pub const BACKDATE: Duration = Duration::from_secs(5 * 60);

/// A CA that can sign: its certificate and its key.
pub struct Ca {
    cert_pem: String,
    key_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

/// A certificate the CA issued.
#[derive(Debug, Clone)]
pub struct Issued {
    pub cert_pem: String,
    /// Serial number, lower-case hex (as [`crate::CertInfo::serial`]).
    pub serial: String,
    /// Expiry, Unix seconds.
    pub not_after: i64,
}

/// A server certificate and the key it was issued for (the key is generated here).
#[derive(Debug, Clone)]
pub struct ServerCert {
    pub cert_pem: String,
    pub key_pem: String,
    pub not_after: i64,
}

impl std::fmt::Debug for Ca {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key.
        f.debug_struct("Ca").field("fingerprint", &self.fingerprint()).finish_non_exhaustive()
    }
}

impl Ca {
    /// A new CA with a fresh P-256 key, valid for ten years.
    pub fn generate(common_name: &str) -> Result<Self> {
        let key = KeyPair::generate().map_err(sign_err)?;
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, common_name);
        params.distinguished_name.push(DnType::OrganizationName, "driftwatch");
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages =
            vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
        let now = OffsetDateTime::now_utc();
        params.not_before = now - BACKDATE;
        params.not_after = now + CA_LIFETIME;
        params.serial_number = Some(random_serial());
        let cert = params.self_signed(&key).map_err(sign_err)?;
        let key_pem = key.serialize_pem();
        Ok(Self { cert_pem: cert.pem(), key_pem, issuer: Issuer::new(params, key) })
    }

    /// A CA from its certificate and key (PEM), e.g. files written by [`Ca::generate`]'s caller.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Self> {
        let key = KeyPair::from_pem(key_pem).map_err(|e| PkiError::BadKey(e.to_string()))?;
        let info = crate::inspect_pem(cert_pem)?;
        if !info.is_ca {
            return Err(PkiError::BadCertificate("not a CA certificate (basicConstraints CA:FALSE or absent)".into()));
        }
        if info.public_key_der != rcgen::PublicKeyData::subject_public_key_info(&key) {
            return Err(PkiError::BadKey("the key does not belong to the CA certificate".into()));
        }
        let issuer = Issuer::from_ca_cert_pem(cert_pem, key).map_err(|e| PkiError::BadCertificate(e.to_string()))?;
        Ok(Self { cert_pem: cert_pem.to_string(), key_pem: key_pem.to_string(), issuer })
    }

    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    pub fn key_pem(&self) -> &str {
        &self.key_pem
    }

    /// SHA-256 of the CA certificate's DER, as `AB:CD:…` (what `openssl x509 -fingerprint -sha256` prints).
    pub fn fingerprint(&self) -> String {
        crate::certs_from_pem(&self.cert_pem)
            .ok()
            .and_then(|c| c.first().map(|d| crate::fingerprint_sha256(d)))
            .unwrap_or_default()
    }

    /// Whether this CA issued the certificate (PEM), by key identifier.
    pub fn issued(&self, cert_pem: &str) -> bool {
        let (Ok(me), Ok(leaf)) = (crate::inspect_pem(&self.cert_pem), crate::inspect_pem(cert_pem)) else {
            return false;
        };
        me.subject_key_id.is_some() && leaf.authority_key_id == me.subject_key_id
    }

    /// A server certificate for these DNS names and IP addresses, with a new key.
    pub fn issue_server(&self, names: &[String], lifetime: Duration) -> Result<ServerCert> {
        let key = KeyPair::generate().map_err(sign_err)?;
        let mut params = leaf_params(lifetime);
        params.distinguished_name.push(DnType::CommonName, names.first().map(String::as_str).unwrap_or("driftwatch"));
        for name in names {
            let san = match name.parse::<IpAddr>() {
                Ok(ip) => SanType::IpAddress(ip),
                Err(_) => SanType::DnsName(
                    name.clone()
                        .try_into()
                        .map_err(|_| PkiError::BadIdentity(format!("{name:?} is not a DNS name")))?,
                ),
            };
            if !params.subject_alt_names.contains(&san) {
                params.subject_alt_names.push(san);
            }
        }
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let not_after = params.not_after.unix_timestamp();
        let cert = params.signed_by(&key, &self.issuer).map_err(sign_err)?;
        Ok(ServerCert { cert_pem: cert.pem(), key_pem: key.serialize_pem(), not_after })
    }

    /// Sign a CSR (PEM) for `identity`. Only the CSR's public key is used: subject,
    /// SANs and extensions come from here, never from the request. The CSR's own
    /// signature is checked (the requester holds the key).
    pub fn sign_request(&self, csr_pem: &str, identity: &Identity, lifetime: Duration) -> Result<Issued> {
        let now = OffsetDateTime::now_utc();
        self.sign_request_between(csr_pem, identity, now - BACKDATE, now + lifetime)
    }

    /// [`Ca::sign_request`] with an explicit validity period (tests of expiry, and
    /// certificates for clocks known to be off).
    pub fn sign_request_between(
        &self,
        csr_pem: &str,
        identity: &Identity,
        not_before: OffsetDateTime,
        not_after: OffsetDateTime,
    ) -> Result<Issued> {
        let der = CertificateSigningRequestDer::from_pem_slice(csr_pem.as_bytes())
            .map_err(|e| PkiError::BadRequest(e.to_string()))?;
        let csr = CertificateSigningRequestParams::from_der(&der).map_err(|e| PkiError::BadRequest(e.to_string()))?;
        let mut params = leaf_params(Duration::ZERO);
        params.not_before = not_before;
        params.not_after = not_after;
        let name = match identity {
            Identity::Host(n) | Identity::Operator(n) => n,
        };
        crate::check_name(name).map_err(PkiError::BadIdentity)?;
        params.distinguished_name.push(DnType::CommonName, name.as_str());
        params.subject_alt_names = vec![SanType::URI(
            identity.spiffe_id().try_into().map_err(|_| PkiError::BadIdentity(format!("{identity} is not ASCII")))?,
        )];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let not_after = params.not_after.unix_timestamp();
        let serial = hex::encode(params.serial_number.as_ref().map(SerialNumber::to_bytes).unwrap_or_default());
        let signed = CertificateSigningRequestParams { params, public_key: csr.public_key };
        let cert = signed.signed_by(&self.issuer).map_err(sign_err)?;
        Ok(Issued { cert_pem: cert.pem(), serial, not_after })
    }
}

fn leaf_params(lifetime: Duration) -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params.distinguished_name.push(DnType::OrganizationName, "driftwatch");
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    let now = OffsetDateTime::now_utc();
    params.not_before = now - BACKDATE;
    params.not_after = now + lifetime;
    params.serial_number = Some(random_serial());
    params.use_authority_key_identifier_extension = true;
    params
}

/// 16 random bytes, positive (top bit clear) as RFC 5280 wants.
fn random_serial() -> SerialNumber {
    let mut bytes: [u8; 16] = rand::random();
    bytes[0] &= 0x7f;
    bytes[0] |= 0x01; // no leading zero byte: the hex form is the DER integer's
    SerialNumber::from_slice(&bytes)
}

fn sign_err(e: rcgen::Error) -> PkiError {
    PkiError::Sign(e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{AgentKey, certificate_request, inspect_pem};

    #[test]
    fn a_generated_ca_reloads_from_its_pem_and_signs() {
        let ca = Ca::generate("test CA").unwrap();
        let again = Ca::from_pem(ca.cert_pem(), ca.key_pem()).unwrap();
        assert_eq!(again.fingerprint(), ca.fingerprint());
        assert_eq!(ca.fingerprint().len(), 32 * 3 - 1);
        let key = AgentKey::generate();
        let csr = certificate_request(&key, "web-1").unwrap();
        let issued = again.sign_request(&csr, &Identity::Host("web-1".into()), Duration::from_secs(3600)).unwrap();
        let info = inspect_pem(&issued.cert_pem).unwrap();
        assert_eq!(info.identity, Some(Identity::Host("web-1".into())));
        assert_eq!(info.serial, issued.serial);
        assert_eq!(info.not_after, issued.not_after);
        assert!(!info.is_ca);
        assert_eq!(info.public_key_der, key.public_key_der(), "the certificate is for the requester's key");
        let ca_info = inspect_pem(ca.cert_pem()).unwrap();
        assert!(ca_info.subject_key_id.is_some());
        assert_eq!(info.authority_key_id, ca_info.subject_key_id, "the leaf names its issuer");
        assert!(ca.issued(&issued.cert_pem));
        assert!(!Ca::generate("other").unwrap().issued(&issued.cert_pem));
    }

    #[test]
    fn the_request_cannot_choose_its_identity() {
        let ca = Ca::generate("test CA").unwrap();
        let key = AgentKey::generate();
        // The agent asks for "db-1"; the server decided "web-1".
        let csr = certificate_request(&key, "db-1").unwrap();
        let issued = ca.sign_request(&csr, &Identity::Host("web-1".into()), Duration::from_secs(60)).unwrap();
        let info = inspect_pem(&issued.cert_pem).unwrap();
        assert_eq!(info.identity, Some(Identity::Host("web-1".into())));
        assert_eq!(info.uris, vec!["spiffe://driftwatch/host/web-1".to_string()]);
    }

    #[test]
    fn a_tampered_request_or_a_foreign_key_is_refused() {
        let ca = Ca::generate("test CA").unwrap();
        let key = AgentKey::generate();
        let csr = certificate_request(&key, "web-1").unwrap();
        // Flip one byte inside the base64 body.
        let mut bytes = csr.into_bytes();
        let i = bytes.len() / 2;
        bytes[i] = if bytes[i] == b'A' { b'B' } else { b'A' };
        let tampered = String::from_utf8(bytes).unwrap();
        assert!(ca.sign_request(&tampered, &Identity::Host("web-1".into()), Duration::from_secs(60)).is_err());
        assert!(matches!(
            ca.sign_request("not pem", &Identity::Host("x".into()), Duration::from_secs(60)),
            Err(PkiError::BadRequest(_))
        ));
        let other = Ca::generate("other").unwrap();
        assert!(matches!(Ca::from_pem(ca.cert_pem(), other.key_pem()), Err(PkiError::BadKey(_))));
        let leaf = ca.issue_server(&["localhost".into()], Duration::from_secs(60)).unwrap();
        assert!(matches!(Ca::from_pem(&leaf.cert_pem, &leaf.key_pem), Err(PkiError::BadCertificate(_))));
    }

    #[test]
    fn identities_that_cannot_be_spiffe_ids_are_refused() {
        let ca = Ca::generate("test CA").unwrap();
        let csr = certificate_request(&AgentKey::generate(), "x").unwrap();
        for bad in ["a/b", "a:b", "", ".."] {
            assert!(matches!(
                ca.sign_request(&csr, &Identity::Host(bad.into()), Duration::from_secs(60)),
                Err(PkiError::BadIdentity(_))
            ));
        }
    }

    #[test]
    fn server_certificates_carry_names_and_addresses() {
        let ca = Ca::generate("test CA").unwrap();
        let s = ca
            .issue_server(
                &["localhost".into(), "127.0.0.1".into(), "dw.example".into(), "localhost".into()],
                Duration::from_secs(60),
            )
            .unwrap();
        let info = inspect_pem(&s.cert_pem).unwrap();
        assert_eq!(info.dns_names, vec!["localhost".to_string(), "dw.example".to_string()]);
        assert_eq!(info.ips, vec!["127.0.0.1".parse::<IpAddr>().unwrap()]);
        assert_eq!(info.identity, None);
        assert!(KeyPair::from_pem(&s.key_pem).is_ok());
    }
}
