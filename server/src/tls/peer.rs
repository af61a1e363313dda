//! Who is on the other end of a connection: its address, whether it speaks TLS,
//! and what its client certificate proves. Revocation is checked per request
//! against the [`DenyList`], because a connection outlives a revocation.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;

use driftwatch_pki::Identity;
use parking_lot::RwLock;

/// One connection's peer, attached to every request on it (tonic puts a
/// connection's `ConnectInfo` into each request's extensions).
#[derive(Debug, Clone)]
pub struct PeerInfo {
    pub remote: SocketAddr,
    pub tls: bool,
    pub cert: CertStatus,
    /// Requests open on this connection now (shared by every request's copy).
    pub streams: StreamCount,
    /// The last bearer token verified on this connection (shared likewise).
    pub token_memo: crate::operators::TokenMemo,
}

/// A connection's open request count: one atomic per connection, so counting costs
/// no lock shared between connections.
#[derive(Debug, Clone, Default)]
pub struct StreamCount(pub Arc<std::sync::atomic::AtomicU32>);

/// What the client certificate of a connection is worth.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CertStatus {
    /// No certificate (plaintext, or a TLS client that sent none).
    None,
    /// Chains to a CA this server trusts and is within its validity period.
    Valid { identity: Option<Identity>, serial: String, not_after: i64 },
    /// Presented, but worth nothing; the reason is told to the caller.
    Invalid(String),
}

impl PeerInfo {
    pub fn plaintext(remote: SocketAddr) -> Self {
        Self { remote, tls: false, cert: CertStatus::None, streams: Default::default(), token_memo: Default::default() }
    }

    /// The peer's address is on this machine (127.0.0.0/8, ::1, or IPv4-mapped loopback).
    pub fn is_loopback(&self) -> bool {
        match self.remote.ip() {
            std::net::IpAddr::V4(v4) => v4.is_loopback(),
            std::net::IpAddr::V6(v6) => v6.is_loopback() || v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback()),
        }
    }
}

/// Revoked hosts and certificate serials. Durable copies live in the store (host
/// identities); this is the in-memory set every request is checked against.
#[derive(Debug, Clone, Default)]
pub struct DenyList(Arc<RwLock<Deny>>);

#[derive(Debug, Default)]
struct Deny {
    /// Host id → why it was revoked.
    hosts: HashMap<String, String>,
    serials: HashSet<String>,
}

impl DenyList {
    /// Refuse every certificate of this host.
    pub fn revoke_host(&self, host_id: &str, reason: &str) {
        self.0.write().hosts.insert(host_id.to_string(), reason.to_string());
    }

    /// The host enrolled again (with a new token): its new certificates are good;
    /// the serials revoked with it stay revoked.
    pub fn restore_host(&self, host_id: &str) {
        self.0.write().hosts.remove(host_id);
    }

    pub fn revoke_serials<'a>(&self, serials: impl IntoIterator<Item = &'a str>) {
        let mut d = self.0.write();
        d.serials.extend(serials.into_iter().map(str::to_string));
    }

    /// `Err(why)` when this certificate may not be used.
    pub fn check(&self, identity: Option<&Identity>, serial: &str) -> Result<(), String> {
        let d = self.0.read();
        if let Some(Identity::Host(id)) = identity
            && let Some(reason) = d.hosts.get(id)
        {
            return Err(if reason.is_empty() {
                format!("host '{id}' is revoked")
            } else {
                format!("host '{id}' is revoked: {reason}")
            });
        }
        if d.serials.contains(serial) {
            return Err(format!("certificate {serial} is revoked"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_revoked_host_and_its_old_serials_stay_refused_after_it_enrolls_again() {
        let deny = DenyList::default();
        let h = Identity::Host("web-1".into());
        assert!(deny.check(Some(&h), "01").is_ok());
        deny.revoke_host("web-1", "stolen laptop");
        deny.revoke_serials(["01"]);
        assert_eq!(deny.check(Some(&h), "02").unwrap_err(), "host 'web-1' is revoked: stolen laptop");
        deny.restore_host("web-1");
        assert!(deny.check(Some(&h), "02").is_ok());
        assert_eq!(deny.check(Some(&h), "01").unwrap_err(), "certificate 01 is revoked");
        assert!(deny.check(Some(&Identity::Host("web-2".into())), "03").is_ok());
    }

    #[test]
    fn loopback_includes_mapped_addresses() {
        for (a, l) in [("127.0.0.1:1", true), ("[::1]:1", true), ("[::ffff:127.0.0.2]:1", true), ("10.0.0.1:1", false)]
        {
            assert_eq!(PeerInfo::plaintext(a.parse().unwrap()).is_loopback(), l, "{a}");
        }
    }
}
