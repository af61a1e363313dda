//! The agent's TLS identity: a key that never leaves the host and the certificate the
//! server issued for it, in `<state_dir>/identity/` (`key.pem` 0600 in a 0700
//! directory, `cert.pem`; [`files`]). An agent without one enrolls with a token
//! ([`enroll`]); a connected agent asks for a new certificate, with a new key, at two
//! thirds of its certificate's lifetime (the stream's side: `run/renew.rs`).
//!
//! The decisions are plain functions: [`examine`] (is what is on disk usable),
//! [`plan`] (use it, enroll, or stop with a message), [`renew_at`] and
//! [`retry_renewal_after`] (when to ask for a new certificate), [`enroll_failure`]
//! (which refusals are final).

pub(crate) mod enroll;
mod files;

use std::fmt;
use std::path::Path;
use std::time::Duration;

use driftwatch_pki::{AgentKey, CertInfo, Identity};

pub use enroll::{client_tls, enroll, read_token};
pub use files::IdentityFiles;

/// Never ask for certificates more often than this (a server issuing certificates
/// shorter than the agent's renewal point must not make it ask in a loop).
pub const MIN_RENEW_INTERVAL: Duration = Duration::from_secs(60);

/// A key and the certificate issued for it, naming a host: what the agent streams with.
#[derive(Clone)]
pub struct HostIdentity {
    pub key_pem: String,
    pub cert_pem: String,
    pub info: CertInfo,
    /// The host id in the certificate (`spiffe://driftwatch/host/<host_id>`).
    pub host_id: String,
}

impl fmt::Debug for HostIdentity {
    // Never the key.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HostIdentity")
            .field("host_id", &self.host_id)
            .field("serial", &self.info.serial)
            .field("not_after", &self.info.not_after)
            .finish_non_exhaustive()
    }
}

impl HostIdentity {
    /// A key and a certificate that belong together and name a host; else why not.
    pub fn new(key_pem: &str, cert_pem: &str) -> Result<Self, String> {
        let key = AgentKey::from_pem(key_pem).map_err(|e| format!("key.pem: {e}"))?;
        let info = driftwatch_pki::inspect_pem(cert_pem).map_err(|e| format!("cert.pem: {e}"))?;
        if info.public_key_der != key.public_key_der() {
            return Err("cert.pem is not the certificate of key.pem".into());
        }
        let host_id = match &info.identity {
            Some(Identity::Host(id)) => id.clone(),
            _ => return Err("cert.pem names no host (spiffe://driftwatch/host/ID)".into()),
        };
        Ok(Self { key_pem: key_pem.to_string(), cert_pem: cert_pem.to_string(), info, host_id })
    }
}

/// What is on disk, as [`plan`] sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stored {
    /// No certificate: never enrolled, or an enrollment that did not finish.
    Missing,
    /// A certificate that cannot be used at any time (not for this key, no host in it, unreadable).
    Unusable(String),
    /// A certificate for the stored key, naming a host.
    Cert { not_after: i64 },
}

/// What to do at start (and before a reconnect).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    UseStored,
    /// Enroll with the token file; the text says why, for the log.
    Enroll(String),
    /// Stop: the text says what the operator has to do.
    Fail(String),
}

/// Judge the stored key and certificate (PEM texts, when present).
pub fn examine(key_pem: Option<&str>, cert_pem: Option<&str>) -> (Stored, Option<HostIdentity>) {
    let Some(cert_pem) = cert_pem else { return (Stored::Missing, None) };
    let Some(key_pem) = key_pem else {
        return (Stored::Unusable("cert.pem is there but key.pem is not".into()), None);
    };
    match HostIdentity::new(key_pem, cert_pem) {
        Ok(id) => (Stored::Cert { not_after: id.info.not_after }, Some(id)),
        Err(why) => (Stored::Unusable(why), None),
    }
}

/// Use the stored certificate while it is valid; else enroll when a token file is
/// configured; else stop with what to do.
pub fn plan(now: i64, stored: &Stored, have_token: bool) -> Plan {
    match stored {
        Stored::Cert { not_after } if now <= *not_after => Plan::UseStored,
        Stored::Cert { not_after } if have_token => {
            Plan::Enroll(format!("certificate expired at {}", time(*not_after)))
        }
        Stored::Cert { not_after } => Plan::Fail(format!(
            "certificate expired at {}; an agent that was off past expiry needs a new enrollment token: \
             --enroll-token-file FILE (from `driftwatch enroll-token create`)",
            time(*not_after)
        )),
        Stored::Missing if have_token => Plan::Enroll("not enrolled yet".into()),
        Stored::Missing => Plan::Fail(
            "not enrolled: pass --enroll-token-file FILE (enroll_token_file) with a token from \
             `driftwatch enroll-token create` on the server"
                .into(),
        ),
        Stored::Unusable(why) if have_token => Plan::Enroll(why.clone()),
        Stored::Unusable(why) => Plan::Fail(format!(
            "{why}: enroll again with --enroll-token-file FILE (from `driftwatch enroll-token create`)"
        )),
    }
}

/// Whether there is a token to enroll with: the configured file exists. A file that is
/// configured but gone (removed after enrolling, as it may be) counts as no token, so
/// an agent whose certificate expired while running keeps trying, and enrolls as soon
/// as a new token is put there.
pub fn have_token(token_file: Option<&Path>) -> bool {
    token_file.is_some_and(Path::is_file)
}

/// [`Plan::Fail`]'s text, completed with a configured token file that is not there.
pub fn fail_text(msg: &str, token_file: Option<&Path>) -> String {
    match token_file {
        Some(p) if !p.is_file() => format!("{msg} (enroll_token_file {} does not exist)", p.display()),
        _ => msg.to_string(),
    }
}

/// When to ask for a new certificate: two thirds into its lifetime (Unix seconds).
///
/// The lifetime counts from issue: the server backdates `not_before` by
/// [`driftwatch_pki::BACKDATE`] for lagging clocks, which would otherwise put two
/// thirds of a short lifetime (a 12 s test certificate, a 1 m `cert_lifetime`) before
/// the certificate was even issued. A certificate of another CA that spans less than
/// the backdate is taken as it is.
pub fn renew_at(not_before: i64, not_after: i64) -> i64 {
    let backdate = driftwatch_pki::BACKDATE.as_secs() as i64;
    let issued = if not_after - not_before > backdate { not_before + backdate } else { not_before };
    issued + (not_after - issued).max(0) * 2 / 3
}

/// How long from `now` until [`renew_at`]; zero when it has passed.
pub fn renew_in(now: i64, not_before: i64, not_after: i64) -> Duration {
    Duration::from_secs(renew_at(not_before, not_after).saturating_sub(now).max(0) as u64)
}

/// After a refused or unanswered renewal: try again after a tenth of the remaining
/// lifetime, at least [`MIN_RENEW_INTERVAL`].
pub fn retry_renewal_after(now: i64, not_after: i64) -> Duration {
    Duration::from_secs((not_after.saturating_sub(now).max(0) / 10) as u64).max(MIN_RENEW_INTERVAL)
}

/// Whether a failed Enroll is worth another try.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EnrollFailure {
    /// The server could not answer now (unavailable, overloaded, timed out): back off, retry.
    Retry,
    /// The server said no (a bad, used-up, expired or revoked token; a host id the token
    /// does not allow; a request it cannot take): trying again cannot help.
    Fatal,
}

pub fn enroll_failure(code: tonic::Code) -> EnrollFailure {
    use tonic::Code::*;
    match code {
        Unavailable | DeadlineExceeded | ResourceExhausted | Aborted | Internal | Unknown | Cancelled => {
            EnrollFailure::Retry
        }
        _ => EnrollFailure::Fatal,
    }
}

/// Unix seconds as RFC 3339 (`2026-11-24T09:30:00Z`).
pub fn time(unix: i64) -> String {
    driftwatch_proto::Timestamp { seconds: unix, nanos: 0 }.to_string()
}

/// Now, Unix seconds.
pub fn now_unix() -> i64 {
    driftwatch_proto::now_millis().div_euclid(1000)
}

#[cfg(test)]
mod tests {
    use super::*;
    use driftwatch_pki::{Ca, certificate_request};

    fn issue(ca: &Ca, key: &AgentKey, host: &str) -> String {
        let csr = certificate_request(key, host).unwrap();
        ca.sign_request(&csr, &Identity::Host(host.into()), Duration::from_secs(3600)).unwrap().cert_pem
    }

    #[test]
    fn a_valid_certificate_is_used_until_it_expires() {
        let s = Stored::Cert { not_after: 1000 };
        assert_eq!(plan(999, &s, false), Plan::UseStored);
        assert_eq!(plan(1000, &s, false), Plan::UseStored, "valid through not_after");
        assert_eq!(plan(999, &s, true), Plan::UseStored, "a token does not replace a valid certificate");
    }

    #[test]
    fn without_a_certificate_enroll_with_a_token_or_say_how() {
        assert_eq!(plan(0, &Stored::Missing, true), Plan::Enroll("not enrolled yet".into()));
        let Plan::Fail(msg) = plan(0, &Stored::Missing, false) else { panic!() };
        assert!(msg.starts_with("not enrolled: pass --enroll-token-file"), "{msg}");
    }

    #[test]
    fn an_expired_certificate_needs_a_new_token() {
        let s = Stored::Cert { not_after: 1_700_000_000 };
        let Plan::Fail(msg) = plan(1_700_000_001, &s, false) else { panic!() };
        assert!(
            msg.starts_with("certificate expired at 2023-11-14T22:13:20Z; an agent that was off past expiry"),
            "{msg}"
        );
        assert!(msg.contains("--enroll-token-file"), "{msg}");
        assert!(matches!(plan(1_700_000_001, &s, true), Plan::Enroll(m) if m.contains("expired at")));
    }

    #[test]
    fn an_unusable_certificate_is_replaced_by_enrolling_or_explained() {
        let s = Stored::Unusable("cert.pem is not the certificate of key.pem".into());
        assert_eq!(plan(0, &s, true), Plan::Enroll("cert.pem is not the certificate of key.pem".into()));
        let Plan::Fail(msg) = plan(0, &s, false) else { panic!() };
        assert!(msg.contains("not the certificate of key.pem") && msg.contains("--enroll-token-file"), "{msg}");
    }

    #[test]
    fn examine_checks_the_pair() {
        let ca = Ca::generate("test").unwrap();
        let key = AgentKey::generate();
        let cert = issue(&ca, &key, "web-1");
        let (s, id) = examine(Some(&key.to_pem()), Some(&cert));
        let id = id.unwrap();
        assert_eq!(s, Stored::Cert { not_after: id.info.not_after });
        assert_eq!(id.host_id, "web-1");
        assert!(!format!("{id:?}").contains("PRIVATE"), "Debug never shows the key");
        assert_eq!(examine(Some(&key.to_pem()), None).0, Stored::Missing, "a key alone: enrollment unfinished");
        assert!(matches!(examine(None, Some(&cert)).0, Stored::Unusable(m) if m.contains("key.pem is not")));
        let other = AgentKey::generate();
        assert!(
            matches!(examine(Some(&other.to_pem()), Some(&cert)).0, Stored::Unusable(m) if m.contains("not the certificate"))
        );
        assert!(matches!(examine(Some("junk"), Some(&cert)).0, Stored::Unusable(m) if m.starts_with("key.pem")));
        assert!(
            matches!(examine(Some(&key.to_pem()), Some("junk")).0, Stored::Unusable(m) if m.starts_with("cert.pem"))
        );
        // A server certificate names no host.
        let server = ca.issue_server(&["localhost".into()], Duration::from_secs(60)).unwrap();
        assert!(
            matches!(examine(Some(&server.key_pem), Some(&server.cert_pem)).0, Stored::Unusable(m) if m.contains("names no host"))
        );
    }

    #[test]
    fn a_configured_token_file_that_is_gone_is_no_token_and_is_named() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("token");
        assert!(!have_token(None));
        assert!(!have_token(Some(&p)));
        assert!(fail_text("not enrolled", Some(&p)).ends_with("token does not exist)"));
        assert_eq!(fail_text("not enrolled", None), "not enrolled");
        std::fs::write(&p, "t").unwrap();
        assert!(have_token(Some(&p)));
        assert_eq!(fail_text("x", Some(&p)), "x");
    }

    #[test]
    fn renewal_at_two_thirds_of_the_lifetime() {
        // As the server issues them: not_before is 5 minutes before issue.
        let issued = 1_000_000;
        let (nb, day) = (issued - 300, 86400);
        assert_eq!(renew_at(nb, issued + 30 * day), issued + 20 * day);
        assert_eq!(renew_at(nb, issued + 12), issued + 8, "a short lifetime renews after issue, not before");
        assert_eq!(renew_at(nb, issued + 60), issued + 40);
        // Spans within the backdate (another CA's, or odd): two thirds of what is there.
        assert_eq!(renew_at(1000, 1000 + 300), 1200);
        assert_eq!(renew_at(1000, 900), 1000, "a backwards validity renews at once");
        assert_eq!(renew_in(1100, 1000, 1300), Duration::from_secs(100));
        assert_eq!(renew_in(1250, 1000, 1300), Duration::ZERO, "past the point: now");
    }

    #[test]
    fn a_failed_renewal_retries_after_a_tenth_of_what_is_left_at_least_a_minute() {
        assert_eq!(retry_renewal_after(0, 10 * 86400), Duration::from_secs(86400));
        assert_eq!(retry_renewal_after(0, 100), MIN_RENEW_INTERVAL);
        assert_eq!(retry_renewal_after(500, 100), MIN_RENEW_INTERVAL, "expired: still at least a minute");
    }

    #[test]
    fn refusals_are_final_outages_are_retried() {
        for code in [tonic::Code::PermissionDenied, tonic::Code::Unauthenticated, tonic::Code::InvalidArgument] {
            assert_eq!(enroll_failure(code), EnrollFailure::Fatal, "{code:?}");
        }
        assert_eq!(enroll_failure(tonic::Code::FailedPrecondition), EnrollFailure::Fatal);
        assert_eq!(enroll_failure(tonic::Code::Unimplemented), EnrollFailure::Fatal);
        assert_eq!(enroll_failure(tonic::Code::Unavailable), EnrollFailure::Retry);
        assert_eq!(enroll_failure(tonic::Code::DeadlineExceeded), EnrollFailure::Retry);
    }
}
