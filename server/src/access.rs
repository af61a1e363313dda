//! Who may call what, decided once per request before any service sees it.
//!
//! - Health and reflection: anyone.
//! - `AgentGateway.Enroll`: anyone over TLS (the token is the credential).
//! - `AgentGateway.Connect`: over TLS, a valid, unrevoked agent certificate; the
//!   stream's host id is the certificate's ([`AgentCaller`]).
//! - Operator services: over TLS, an operator certificate, or a caller on this
//!   machine (loopback) until operator credentials exist; never an agent's
//!   certificate.
//! - Under `--insecure` (loopback development) nothing is checked and every
//!   operator call acts as [`Principal::INSECURE_LOCAL`].
//!
//! The decision is a plain function ([`decide`]); the tower layer only applies it.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use driftwatch_pki::Identity;
use tonic::Status;
use tonic::codegen::http;

use crate::principal::Principal;
use crate::tls::peer::CertStatus;
use crate::tls::{DenyList, PeerInfo};

/// How the listener runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Insecure,
    Tls,
}

/// The agent a `Connect` stream belongs to, from its certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentCaller {
    pub host_id: String,
    pub serial: String,
    /// Certificate expiry, Unix seconds.
    pub not_after: i64,
}

/// What a request is allowed to be, once [`decide`] let it through.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// Health, reflection, enrollment: no identity needed.
    Anyone,
    /// An agent stream: under `--insecure` the Hello names the host (None).
    Agent(Option<AgentCaller>),
    Operator(Principal),
}

const GATEWAY: &str = "/driftwatch.v1.AgentGateway/";

/// The access decision for one request to `path`.
pub fn decide(mode: Mode, path: &str, peer: Option<&PeerInfo>, deny: &DenyList) -> Result<Caller, Status> {
    if path.starts_with("/grpc.health.") || path.starts_with("/grpc.reflection.") {
        return Ok(Caller::Anyone);
    }
    if path == "/driftwatch.v1.AgentGateway/Enroll" {
        return match mode {
            Mode::Tls => Ok(Caller::Anyone),
            Mode::Insecure => Err(Status::failed_precondition(
                "enrollment needs TLS; this server runs --insecure (loopback development)",
            )),
        };
    }
    let cert = peer.map_or(&CertStatus::None, |p| &p.cert);
    // Revocation is checked on every request: a connection outlives a revocation.
    let valid = match cert {
        CertStatus::Valid { identity, serial, not_after } => {
            deny.check(identity.as_ref(), serial).map_err(Status::permission_denied)?;
            Some((identity.as_ref(), serial, *not_after))
        }
        CertStatus::Invalid(why) => return Err(Status::unauthenticated(why.clone())),
        CertStatus::None => None,
    };
    if path.starts_with(GATEWAY) {
        return match (mode, valid) {
            (Mode::Insecure, _) => Ok(Caller::Agent(None)),
            (Mode::Tls, Some((Some(Identity::Host(id)), serial, not_after))) => {
                Ok(Caller::Agent(Some(AgentCaller { host_id: id.clone(), serial: serial.clone(), not_after })))
            }
            (Mode::Tls, Some(_)) => Err(Status::permission_denied("only an agent certificate may stream as an agent")),
            (Mode::Tls, None) => Err(Status::unauthenticated(
                "an agent stream needs the agent's client certificate: enroll first (--enroll-token-file)",
            )),
        };
    }
    match (mode, valid) {
        (Mode::Insecure, _) => Ok(Caller::Operator(Principal::named(Principal::INSECURE_LOCAL))),
        (Mode::Tls, Some((Some(Identity::Operator(name)), _, _))) => {
            Ok(Caller::Operator(Principal::named(name.clone())))
        }
        (Mode::Tls, Some((Some(Identity::Host(id)), _, _))) => {
            Err(Status::permission_denied(format!("the agent certificate of host '{id}' may not call operator APIs")))
        }
        (Mode::Tls, _) if peer.is_some_and(PeerInfo::is_loopback) => {
            Ok(Caller::Operator(Principal::named(Principal::LOOPBACK)))
        }
        (Mode::Tls, _) => Err(Status::unauthenticated(
            "operator calls from other machines need an operator certificate; call from the server's host, or \
             use an operator certificate from the fleet CA",
        )),
    }
}

/// The tower layer that applies [`decide`] and attaches the caller to the request.
#[derive(Debug, Clone)]
pub struct AccessLayer {
    pub mode: Mode,
    pub deny: DenyList,
}

impl<S> tower::Layer<S> for AccessLayer {
    type Service = Access<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Access { inner, layer: self.clone() }
    }
}

#[derive(Debug, Clone)]
pub struct Access<S> {
    inner: S,
    layer: AccessLayer,
}

type BoxFuture<T, E> = Pin<Box<dyn Future<Output = Result<T, E>> + Send>>;

impl<S, B> tower::Service<http::Request<B>> for Access<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<tonic::body::Body>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<S::Response, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<B>) -> Self::Future {
        let peer = req.extensions().get::<PeerInfo>();
        match decide(self.layer.mode, req.uri().path(), peer, &self.layer.deny) {
            Ok(caller) => {
                match &caller {
                    Caller::Operator(p) => {
                        req.extensions_mut().insert(p.clone());
                    }
                    Caller::Agent(Some(a)) => {
                        req.extensions_mut().insert(a.clone());
                    }
                    Caller::Agent(None) | Caller::Anyone => {}
                }
                Box::pin(self.inner.call(req))
            }
            Err(status) => {
                tracing::info!(path = %req.uri().path(), peer = ?peer.map(|p| p.remote), reason = %status.message(), "call refused");
                Box::pin(std::future::ready(Ok(status.into_http())))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::Code;

    fn peer(addr: &str, cert: CertStatus) -> PeerInfo {
        PeerInfo { remote: addr.parse().unwrap(), tls: true, cert }
    }

    fn host_cert(id: &str, serial: &str) -> CertStatus {
        CertStatus::Valid { identity: Some(Identity::Host(id.into())), serial: serial.into(), not_after: 99 }
    }

    const CONNECT: &str = "/driftwatch.v1.AgentGateway/Connect";
    const ENROLL: &str = "/driftwatch.v1.AgentGateway/Enroll";
    const GET_HOST: &str = "/driftwatch.v1.Fleet/GetHost";

    fn code(r: Result<Caller, Status>) -> Code {
        r.map_or_else(|s| s.code(), |_| Code::Ok)
    }

    #[test]
    fn agent_streams_need_a_valid_unrevoked_host_certificate() {
        let deny = DenyList::default();
        let remote = "10.0.0.5:4000";
        let ok = decide(Mode::Tls, CONNECT, Some(&peer(remote, host_cert("web-1", "0a"))), &deny).unwrap();
        assert_eq!(
            ok,
            Caller::Agent(Some(AgentCaller { host_id: "web-1".into(), serial: "0a".into(), not_after: 99 }))
        );
        let none = decide(Mode::Tls, CONNECT, Some(&peer(remote, CertStatus::None)), &deny).unwrap_err();
        assert_eq!(none.code(), Code::Unauthenticated);
        assert!(none.message().contains("enroll"), "{}", none.message());
        let bad = decide(Mode::Tls, CONNECT, Some(&peer(remote, CertStatus::Invalid("expired".into()))), &deny);
        assert_eq!(bad.unwrap_err().message(), "expired");
        let op =
            CertStatus::Valid { identity: Some(Identity::Operator("alice".into())), serial: "0b".into(), not_after: 9 };
        assert_eq!(code(decide(Mode::Tls, CONNECT, Some(&peer(remote, op)), &deny)), Code::PermissionDenied);
        let anon = CertStatus::Valid { identity: None, serial: "0c".into(), not_after: 9 };
        assert_eq!(code(decide(Mode::Tls, CONNECT, Some(&peer(remote, anon)), &deny)), Code::PermissionDenied);
        deny.revoke_host("web-1", "decommissioned");
        let revoked = decide(Mode::Tls, CONNECT, Some(&peer(remote, host_cert("web-1", "0a"))), &deny).unwrap_err();
        assert_eq!(
            (revoked.code(), revoked.message()),
            (Code::PermissionDenied, "host 'web-1' is revoked: decommissioned")
        );
        // Even from loopback.
        assert_eq!(
            code(decide(Mode::Tls, CONNECT, Some(&peer("127.0.0.1:1", host_cert("web-1", "0a"))), &deny)),
            Code::PermissionDenied
        );
    }

    #[test]
    fn enrollment_health_and_reflection_need_nothing_but_enrollment_needs_tls() {
        let deny = DenyList::default();
        for path in
            [ENROLL, "/grpc.health.v1.Health/Check", "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo"]
        {
            assert_eq!(
                decide(Mode::Tls, path, Some(&peer("10.0.0.5:1", CertStatus::None)), &deny).unwrap(),
                Caller::Anyone
            );
        }
        assert_eq!(code(decide(Mode::Insecure, ENROLL, None, &deny)), Code::FailedPrecondition);
        // An invalid certificate does not block enrollment (it is the way back after expiry).
        assert!(
            decide(Mode::Tls, ENROLL, Some(&peer("10.0.0.5:1", CertStatus::Invalid("expired".into()))), &deny).is_ok()
        );
    }

    #[test]
    fn operators_are_loopback_or_operator_certificates_never_agents() {
        let deny = DenyList::default();
        let remote = "10.0.0.5:4000";
        assert_eq!(
            decide(Mode::Tls, GET_HOST, Some(&peer("127.0.0.1:5", CertStatus::None)), &deny).unwrap(),
            Caller::Operator(Principal::named("loopback"))
        );
        assert_eq!(
            code(decide(Mode::Tls, GET_HOST, Some(&peer(remote, CertStatus::None)), &deny)),
            Code::Unauthenticated
        );
        assert_eq!(
            code(decide(Mode::Tls, GET_HOST, Some(&peer(remote, host_cert("web-1", "01"))), &deny)),
            Code::PermissionDenied
        );
        assert_eq!(
            code(decide(Mode::Tls, GET_HOST, Some(&peer("127.0.0.1:5", host_cert("web-1", "01"))), &deny)),
            Code::PermissionDenied,
            "an agent's certificate is never an operator, even on the server's host"
        );
        let op =
            CertStatus::Valid { identity: Some(Identity::Operator("alice".into())), serial: "0b".into(), not_after: 9 };
        assert_eq!(
            decide(Mode::Tls, GET_HOST, Some(&peer(remote, op)), &deny).unwrap(),
            Caller::Operator(Principal::named("alice"))
        );
        assert_eq!(code(decide(Mode::Tls, GET_HOST, None, &deny)), Code::Unauthenticated);
    }

    #[test]
    fn insecure_mode_acts_as_insecure_local() {
        let deny = DenyList::default();
        assert_eq!(
            decide(Mode::Insecure, GET_HOST, None, &deny).unwrap(),
            Caller::Operator(Principal::named("insecure-local"))
        );
        assert_eq!(decide(Mode::Insecure, CONNECT, None, &deny).unwrap(), Caller::Agent(None));
    }
}
