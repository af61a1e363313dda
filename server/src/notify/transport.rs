//! How a notifier reaches its endpoints: which certificates it trusts (the system
//! roots, or `ca_file`), the client certificate it presents (`client_cert` +
//! `client_key`), the `Authorization` header it sends (`authorization_file`), and
//! how its URLs are shown (a URL read from `url_file` is a credential: only its
//! scheme and host are ever shown).
//!
//! Every file is read and checked once, when the configuration is loaded (at
//! server start): a changed file takes effect at the next restart.

use std::path::Path;
use std::time::Duration;

use reqwest::header::HeaderValue;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use super::config::{NotifierFile, Secret};

/// TLS settings and the `Authorization` header of one notifier.
#[derive(Clone, Default)]
pub struct Transport {
    /// DER certificates trusted instead of the system roots (`ca_file`).
    pub ca: Option<Vec<Vec<u8>>>,
    /// The client certificate chain (PEM) followed by its private key (PEM).
    pub identity: Option<Secret>,
    /// The `Authorization` header value, marked sensitive.
    pub authorization: Option<HeaderValue>,
}

impl std::fmt::Debug for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Transport")
            .field("ca_certificates", &self.ca.as_ref().map(Vec::len))
            .field("client_certificate", &self.identity.is_some())
            .field("authorization", &self.authorization.as_ref().map(|_| ".."))
            .finish()
    }
}

impl Transport {
    /// Uses the system roots and no client certificate: the shared client will do.
    pub fn is_plain(&self) -> bool {
        self.ca.is_none() && self.identity.is_none()
    }

    /// A client for this notifier. `system_roots`: load the system's trusted roots
    /// (only worth it when some endpoint is https:// and no `ca_file` is set).
    pub fn client(&self, system_roots: bool) -> Result<reqwest::Client, reqwest::Error> {
        let mut b = reqwest::Client::builder()
            .use_rustls_tls()
            // Straight to the endpoint: no environment proxies, no redirects (a 3xx is a failure).
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("driftwatch/", env!("CARGO_PKG_VERSION")))
            .pool_idle_timeout(Duration::from_secs(30))
            // http:// endpoints stay allowed (a receiver on loopback, a local proxy).
            .https_only(false)
            .min_tls_version(reqwest::tls::Version::TLS_1_2)
            .tls_built_in_root_certs(system_roots && self.ca.is_none());
        for der in self.ca.iter().flatten() {
            b = b.add_root_certificate(reqwest::Certificate::from_der(der)?);
        }
        if let Some(id) = &self.identity {
            b = b.identity(reqwest::Identity::from_pem(&id.0)?);
        }
        b.build()
    }
}

/// Read `ca_file`, `client_cert` + `client_key` and `authorization_file`;
/// problems go to `err(field, message)`, and then None.
pub fn load(f: &NotifierFile, err: &mut impl FnMut(&str, String)) -> Option<Transport> {
    let mut ok = true;
    let mut t = Transport::default();
    if let Some(p) = &f.ca_file {
        match read(p).and_then(|pem| ca_certificates(&pem).map_err(|e| format!("{}: {e}", p.display()))) {
            Ok(ca) => t.ca = Some(ca),
            Err(e) => {
                err("ca_file", e);
                ok = false;
            }
        }
    }
    match (&f.client_cert, &f.client_key) {
        (None, None) => {}
        (Some(_), None) => {
            err("client_key", "client_cert needs client_key (the certificate's private key, PEM)".into());
            ok = false;
        }
        (None, Some(_)) => {
            err("client_cert", "client_key needs client_cert (the client certificate, PEM)".into());
            ok = false;
        }
        (Some(cert), Some(key)) => match identity(cert, key) {
            Ok(id) => t.identity = Some(id),
            Err((field, e)) => {
                err(field, e);
                ok = false;
            }
        },
    }
    if let Some(p) = &f.authorization_file {
        match read(p).and_then(|bytes| authorization(&bytes).map_err(|e| format!("{}: {e}", p.display()))) {
            Ok(v) => t.authorization = Some(v),
            Err(e) => {
                err("authorization_file", e);
                ok = false;
            }
        }
    }
    ok.then_some(t)
}

fn read(p: &Path) -> Result<Vec<u8>, String> {
    std::fs::read(p).map_err(|e| format!("{}: {e}", p.display()))
}

/// Every certificate of a PEM bundle, each one checked to be usable as a trust anchor.
pub fn ca_certificates(pem: &[u8]) -> Result<Vec<Vec<u8>>, String> {
    let mut out = Vec::new();
    for cert in CertificateDer::pem_slice_iter(pem) {
        let cert = cert.map_err(|e| format!("not a PEM certificate bundle: {e}"))?;
        let mut store = rustls::RootCertStore::empty();
        store.add(cert.clone()).map_err(|e| format!("certificate {} is not usable as a CA: {e}", out.len() + 1))?;
        out.push(cert.to_vec());
    }
    if out.is_empty() {
        return Err("no PEM certificate (-----BEGIN CERTIFICATE-----) in it".into());
    }
    Ok(out)
}

/// The certificate chain and its key, checked to belong together; the error names the field.
fn identity(cert_path: &Path, key_path: &Path) -> Result<Secret, (&'static str, String)> {
    let cert_pem = read(cert_path).map_err(|e| ("client_cert", e))?;
    let key_pem = read(key_path).map_err(|e| ("client_key", e))?;
    let chain = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| ("client_cert", format!("{}: not a PEM certificate: {e}", cert_path.display())))?;
    if chain.is_empty() {
        return Err((
            "client_cert",
            format!("{}: no PEM certificate (-----BEGIN CERTIFICATE-----) in it", cert_path.display()),
        ));
    }
    // The parser's messages could quote the key file: never shown.
    let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|_| {
        ("client_key", format!("{}: no PEM private key (PKCS#8, PKCS#1 or SEC1) in it", key_path.display()))
    })?;
    // The same key types and checks as the TLS client (rustls with ring).
    let signing_key = rustls::crypto::ring::sign::any_supported_type(&key)
        .map_err(|e| ("client_key", format!("{}: unusable private key: {e}", key_path.display())))?;
    match rustls::sign::CertifiedKey::new(chain, signing_key).keys_match() {
        Ok(()) | Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {}
        Err(rustls::Error::InconsistentKeys(_)) => {
            return Err((
                "client_key",
                format!("{} is not the private key of the certificate in {}", key_path.display(), cert_path.display()),
            ));
        }
        Err(e) => return Err(("client_cert", format!("{}: unusable certificate: {e}", cert_path.display()))),
    }
    // reqwest's `Identity::from_pem` takes the certificates and the key in one buffer.
    let mut both = cert_pem;
    both.push(b'\n');
    both.extend_from_slice(&key_pem);
    Ok(Secret(both))
}

/// The header value from the file's content: trimmed; a single word is a bearer token.
pub fn authorization(content: &[u8]) -> Result<HeaderValue, String> {
    let text = content.trim_ascii();
    if text.is_empty() {
        return Err("is empty".into());
    }
    let value =
        if text.iter().any(u8::is_ascii_whitespace) { text.to_vec() } else { [b"Bearer ".as_slice(), text].concat() };
    // The content is never quoted in the message.
    let mut v = HeaderValue::from_bytes(&value)
        .map_err(|_| "holds characters an HTTP header cannot carry (a line break or control character)".to_string())?;
    v.set_sensitive(true);
    Ok(v)
}

/// A URL as it may be shown when it is itself a credential: scheme and host (and
/// port) only, e.g. `https://hooks.example.com/…`.
pub fn redacted(url: &reqwest::Url) -> String {
    let host = url.host_str().unwrap_or("");
    match url.port() {
        Some(port) => format!("{}://{host}:{port}/…", url.scheme()),
        None => format!("{}://{host}/…", url.scheme()),
    }
}

/// `text` with every secret in `secrets` replaced by `…` (secrets shorter than 4
/// characters are left: replacing them would garble the text, not protect anything).
pub fn scrub(text: &str, secrets: &[String]) -> String {
    let mut out = text.to_string();
    for s in secrets.iter().filter(|s| s.len() >= 4) {
        if out.contains(s.as_str()) {
            out = out.replace(s.as_str(), "…");
        }
    }
    out
}

/// What must never be shown for a notifier: the URL read from `url_file` (whole,
/// and its path and query), and the `Authorization` value (whole, and its credentials).
pub fn secrets(url_from_file: Option<&reqwest::Url>, authorization: Option<&HeaderValue>) -> Vec<String> {
    let mut out = Vec::new();
    if let Some(u) = url_from_file {
        out.push(u.as_str().to_string());
        out.push(u.path().to_string());
        if let Some(q) = u.query() {
            out.push(format!("{}?{q}", u.path()));
            out.push(q.to_string());
        }
    }
    if let Some(v) = authorization {
        let text = String::from_utf8_lossy(v.as_bytes()).into_owned();
        if let Some((_, credentials)) = text.split_once(' ') {
            out.push(credentials.trim().to_string());
        }
        out.push(text);
    }
    // Longest first: a secret containing another is replaced whole.
    out.sort_by_key(|s| std::cmp::Reverse(s.len()));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_single_word_is_a_bearer_token_anything_else_is_the_header_value() {
        assert_eq!(authorization(b"abc123\n").unwrap().as_bytes(), b"Bearer abc123");
        assert_eq!(authorization(b"  Bearer abc123 \n").unwrap().as_bytes(), b"Bearer abc123");
        assert_eq!(authorization(b"Basic dXNlcjpwYXNz").unwrap().as_bytes(), b"Basic dXNlcjpwYXNz");
        assert!(authorization(b"abc123").unwrap().is_sensitive());
        assert!(authorization(b"\n").unwrap_err().contains("empty"));
        assert!(!authorization(b"Bearer hunt\x01er2").unwrap_err().contains("hunt"));
    }

    #[test]
    fn a_redacted_url_keeps_scheme_host_and_port() {
        let u = |s: &str| reqwest::Url::parse(s).unwrap();
        assert_eq!(redacted(&u("https://hooks.slack.com/services/T0/B0/x")), "https://hooks.slack.com/…");
        assert_eq!(redacted(&u("http://127.0.0.1:8080/a?b=c")), "http://127.0.0.1:8080/…");
        assert_eq!(redacted(&u("https://[::1]:8443/t")), "https://[::1]:8443/…");
    }

    #[test]
    fn scrub_removes_the_url_its_path_and_query_and_the_credentials() {
        let url = reqwest::Url::parse("https://h.example/hook/T0k3n?sig=QqQq").unwrap();
        let auth = authorization(b"Bearer Zz9zZz9z").unwrap();
        let secrets = secrets(Some(&url), Some(&auth));
        let text = "POST https://h.example/hook/T0k3n?sig=QqQq failed; GET /hook/T0k3n; sig=QqQq; got Bearer Zz9zZz9z \
                    then Zz9zZz9z";
        let out = scrub(text, &secrets);
        for s in ["T0k3n", "QqQq", "Zz9zZz9z"] {
            assert!(!out.contains(s), "{out}");
        }
        assert_eq!(out, "POST … failed; GET …; …; got … then …", "the query is a secret as a whole");
        // A one-character path is no secret worth garbling the text for.
        let root = reqwest::Url::parse("https://h.example/").unwrap();
        assert_eq!(scrub("a / b", &super::secrets(Some(&root), None)), "a / b");
    }
}
