//! The built-in CA: created on first start in `DATA/tls`, so that a server is TLS
//! from its first minute with no PKI to set up.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use driftwatch_pki::Ca;

use crate::error::ServerError;

/// Server certificates the built-in CA issues live this long; the server re-issues its
/// own when less than a third is left (at start, and on each reload check).
pub const SERVER_CERT_LIFETIME: Duration = Duration::from_secs(90 * 24 * 3600);

/// The files of the built-in CA directory.
#[derive(Debug, Clone)]
pub struct BuiltInCa {
    pub dir: PathBuf,
}

impl BuiltInCa {
    pub fn ca_cert(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }
    pub fn ca_key(&self) -> PathBuf {
        self.dir.join("ca.key")
    }
    pub fn server_cert(&self) -> PathBuf {
        self.dir.join("server.pem")
    }
    pub fn server_key(&self) -> PathBuf {
        self.dir.join("server.key")
    }
    /// More CA certificates trusted for client certificates (a rotation's old CA).
    pub fn trusted_dir(&self) -> PathBuf {
        self.dir.join("trusted")
    }
    /// The next CA while a rotation is under way (see `tls::rotate`).
    pub fn next_dir(&self) -> PathBuf {
        self.dir.join("next")
    }

    /// The CA that signs agent certificates: the next one during a rotation (so that
    /// renewals move agents over), else the current one. (certificate, key) paths.
    pub fn signing(&self) -> (PathBuf, PathBuf) {
        let next = self.next_dir();
        if next.join("ca.pem").exists() && next.join("ca.key").exists() {
            (next.join("ca.pem"), next.join("ca.key"))
        } else {
            (self.ca_cert(), self.ca_key())
        }
    }

    /// Create what is missing: the CA (once), and a server certificate for `sans`
    /// when there is none, it has expired or is due, or it lacks one of `sans`.
    /// Returns the CA.
    pub fn ensure(&self, sans: &[String]) -> Result<Ca, ServerError> {
        std::fs::create_dir_all(&self.dir)?;
        std::fs::set_permissions(&self.dir, std::fs::Permissions::from_mode(0o700))?;
        let ca = if self.ca_cert().exists() || self.ca_key().exists() {
            let cert = read(&self.ca_cert())?;
            let key = read(&self.ca_key())?;
            Ca::from_pem(&cert, &key).map_err(|e| config(&self.ca_cert(), e))?
        } else {
            let ca = Ca::generate("driftwatch fleet CA").map_err(|e| config(&self.ca_cert(), e))?;
            write_private(&self.ca_key(), ca.key_pem())?;
            write_public(&self.ca_cert(), ca.cert_pem())?;
            tracing::info!(ca = %self.ca_cert().display(), "created the fleet CA");
            ca
        };
        if self.server_cert_due(sans, &ca) {
            let issued = ca.issue_server(sans, SERVER_CERT_LIFETIME).map_err(|e| config(&self.server_cert(), e))?;
            write_private(&self.server_key(), &issued.key_pem)?;
            write_public(&self.server_cert(), &issued.cert_pem)?;
            tracing::info!(cert = %self.server_cert().display(), names = ?sans, "issued the server certificate");
        }
        Ok(ca)
    }

    fn server_cert_due(&self, sans: &[String], ca: &Ca) -> bool {
        let Ok(pem) = std::fs::read_to_string(self.server_cert()) else { return true };
        if !ca.issued(&pem) {
            // The CA changed (a rotation finished): the server presents the new one's.
            return true;
        }
        if !self.server_key().exists() {
            return true;
        }
        let Ok(info) = driftwatch_pki::inspect_pem(&pem) else { return true };
        let now = driftwatch_proto::now_millis() / 1000;
        let left = info.not_after - now;
        let lifetime = (info.not_after - info.not_before).max(1);
        let covers = sans.iter().all(|s| match s.parse::<std::net::IpAddr>() {
            Ok(ip) => info.ips.contains(&ip),
            Err(_) => info.dns_names.iter().any(|d| d.eq_ignore_ascii_case(s)),
        });
        left < lifetime / 3 || !covers
    }
}

/// The names the built-in server certificate carries: `--tls-san` values, the listen
/// address (unless unspecified), the hostname, and localhost with its addresses.
pub fn default_sans(extra: &[String], listen: std::net::SocketAddr) -> Vec<String> {
    let mut sans: Vec<String> = extra.iter().map(|s| s.trim().to_string()).filter(|s| !s.is_empty()).collect();
    if !listen.ip().is_unspecified() {
        sans.push(listen.ip().to_string());
    }
    if let Some(h) = hostname() {
        sans.push(h);
    }
    sans.extend(["localhost".to_string(), "127.0.0.1".to_string(), "::1".to_string()]);
    let mut seen = std::collections::HashSet::new();
    sans.retain(|s| seen.insert(s.to_ascii_lowercase()));
    sans
}

fn hostname() -> Option<String> {
    let h = std::fs::read_to_string("/proc/sys/kernel/hostname").ok()?;
    let h = h.trim();
    (!h.is_empty()).then(|| h.to_string())
}

fn read(path: &Path) -> Result<String, ServerError> {
    std::fs::read_to_string(path).map_err(|e| ServerError::Config(vec![format!("{}: {e}", path.display())]))
}

fn config(path: &Path, e: driftwatch_pki::PkiError) -> ServerError {
    ServerError::Config(vec![format!("{}: {e}", path.display())])
}

/// Write a key: 0600 from its first byte, then renamed into place.
pub fn write_private(path: &Path, text: &str) -> Result<(), ServerError> {
    write_atomic(path, text, 0o600)
}

pub fn write_public(path: &Path, text: &str) -> Result<(), ServerError> {
    write_atomic(path, text, 0o644)
}

fn write_atomic(path: &Path, text: &str, mode: u32) -> Result<(), ServerError> {
    let tmp = path.with_extension("tmp");
    {
        let mut f = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(mode).open(&tmp)?;
        f.set_permissions(std::fs::Permissions::from_mode(mode))?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_start_creates_the_ca_and_a_server_certificate_and_later_starts_keep_them() {
        let dir = tempfile::tempdir().unwrap();
        let b = BuiltInCa { dir: dir.path().join("tls") };
        let sans = vec!["localhost".to_string(), "10.0.0.1".to_string()];
        let ca = b.ensure(&sans).unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&b.ca_key()), 0o600);
        assert_eq!(mode(&b.server_key()), 0o600);
        assert_eq!(mode(&b.dir), 0o700);
        let cert = std::fs::read_to_string(b.server_cert()).unwrap();
        let again = b.ensure(&sans).unwrap();
        assert_eq!(again.fingerprint(), ca.fingerprint(), "the CA is created once");
        assert_eq!(std::fs::read_to_string(b.server_cert()).unwrap(), cert, "a fitting server certificate is kept");
        // A new name re-issues the server certificate under the same CA.
        b.ensure(&["localhost".into(), "dw.example".into()]).unwrap();
        let info = driftwatch_pki::inspect_pem(&std::fs::read_to_string(b.server_cert()).unwrap()).unwrap();
        assert!(info.dns_names.contains(&"dw.example".to_string()));
    }

    #[test]
    fn a_ca_key_that_does_not_match_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let b = BuiltInCa { dir: dir.path().join("tls") };
        b.ensure(&["localhost".into()]).unwrap();
        let other = Ca::generate("other").unwrap();
        std::fs::write(b.ca_key(), other.key_pem()).unwrap();
        let err = b.ensure(&["localhost".into()]).unwrap_err().to_string();
        assert!(err.contains("ca.pem") && err.contains("does not belong"), "{err}");
    }

    #[test]
    fn default_names_include_the_listen_address_and_loopback_once() {
        let sans = default_sans(&["dw.example".into(), "LOCALHOST".into()], "10.1.2.3:50051".parse().unwrap());
        assert_eq!(sans[0], "dw.example");
        assert!(sans.contains(&"10.1.2.3".to_string()));
        assert_eq!(sans.iter().filter(|s| s.eq_ignore_ascii_case("localhost")).count(), 1);
        let sans = default_sans(&[], "0.0.0.0:50051".parse().unwrap());
        assert!(!sans.contains(&"0.0.0.0".to_string()));
    }
}
