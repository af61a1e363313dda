//! Who may call what, decided once per request before any service sees it.
//!
//! - [`table`] says what each RPC needs: nothing (health), TLS only (`Enroll`: the
//!   token is the credential), an agent certificate (`Connect`), or an operator role.
//!   An RPC missing from the table is refused.
//! - Agents authenticate with their certificate only, never an operator token; the
//!   operator API takes operator credentials only (a bearer token, or an operator
//!   certificate from the fleet CA), never an agent's certificate.
//! - Roles: viewer < responder < operator < admin; each includes the ones before it.
//! - Under `--insecure` (loopback development) nothing is checked and every operator
//!   call acts as [`Principal::INSECURE_LOCAL`] with the admin role.
//!
//! The decision is a plain function ([`decide`]); the tower layer only applies it.

pub mod table;

use std::sync::Arc;
use std::task::{Context, Poll};

use driftwatch_pki::Identity;
use driftwatch_proto::v1::Role;
use tonic::Status;
use tonic::codegen::http;

use crate::operators::{Authenticated, Operators, TokenMemo};
use crate::principal::Principal;
use crate::tls::peer::CertStatus;
use crate::tls::{DenyList, PeerInfo};
use table::Need;

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

/// How an operator call was authenticated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Token,
    Certificate,
    Insecure,
}

impl Method {
    pub fn name(self) -> &'static str {
        match self {
            Method::Token => "token",
            Method::Certificate => "certificate",
            Method::Insecure => "insecure",
        }
    }
}

/// An authenticated operator call: who, with which role, how.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OperatorCaller {
    pub principal: Principal,
    pub role: Role,
    pub method: Method,
}

/// What a request is allowed to be, once [`decide`] let it through.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// Health, reflection (when open), enrollment: no identity needed.
    Anyone,
    /// An agent stream: under `--insecure` the Hello names the host (None).
    Agent(Option<AgentCaller>),
    Operator(OperatorCaller),
}

/// Checks operator credentials ([`Operators`] in the server; fakes in tests).
pub trait Credentials {
    /// `memo`: the connection's memory of its last verified token, if any.
    fn token(&self, token: &str, memo: Option<&TokenMemo>) -> Result<Authenticated, String>;
    fn certificate(&self, name: &str, serial: &str) -> Result<Authenticated, String>;
}

impl Credentials for Operators {
    fn token(&self, token: &str, memo: Option<&TokenMemo>) -> Result<Authenticated, String> {
        self.authenticate_token(token, memo)
    }
    fn certificate(&self, name: &str, serial: &str) -> Result<Authenticated, String> {
        self.authenticate_certificate(name, serial)
    }
}

/// Access settings from `[access]` in server.toml.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Policy {
    /// Server reflection without credentials (grpcurl without `-proto`); default: viewer.
    pub open_reflection: bool,
}

/// One request as the access decision sees it.
#[derive(Debug, Clone, Copy)]
pub struct Call<'a> {
    pub path: &'a str,
    pub peer: Option<&'a PeerInfo>,
    /// The `authorization` header, if any.
    pub authorization: Option<&'a str>,
}

/// The access decision for one request.
pub fn decide(
    mode: Mode,
    policy: Policy,
    call: Call<'_>,
    deny: &DenyList,
    creds: &dyn Credentials,
) -> Result<Caller, Status> {
    let Some(need) = table::need(call.path) else {
        return Err(Status::permission_denied(format!("{} is not in the access table; refused", call.path)));
    };
    let need = match need {
        Need::Reflection if policy.open_reflection => Need::Open,
        Need::Reflection => Need::Role(Role::Viewer),
        n => n,
    };
    match need {
        Need::Open => return Ok(Caller::Anyone),
        Need::Enroll => {
            return match mode {
                Mode::Tls => Ok(Caller::Anyone),
                Mode::Insecure => Err(Status::failed_precondition(
                    "enrollment needs TLS; this server runs --insecure (loopback development)",
                )),
            };
        }
        Need::Agent | Need::Role(_) | Need::Reflection => {}
    }
    if mode == Mode::Insecure {
        return Ok(match need {
            Need::Agent => Caller::Agent(None),
            _ => Caller::Operator(OperatorCaller {
                principal: Principal::named(Principal::INSECURE_LOCAL),
                role: Role::Admin,
                method: Method::Insecure,
            }),
        });
    }
    let cert = call.peer.map_or(&CertStatus::None, |p| &p.cert);
    // Revocation is checked on every request: a connection outlives a revocation.
    let valid = match cert {
        CertStatus::Valid { identity, serial, not_after } => {
            deny.check(identity.as_ref(), serial).map_err(Status::permission_denied)?;
            Some((identity.as_ref(), serial, *not_after))
        }
        CertStatus::Invalid(why) => return Err(Status::unauthenticated(why.clone())),
        CertStatus::None => None,
    };
    if need == Need::Agent {
        return match valid {
            Some((Some(Identity::Host(id)), serial, not_after)) => {
                Ok(Caller::Agent(Some(AgentCaller { host_id: id.clone(), serial: serial.clone(), not_after })))
            }
            Some(_) => Err(Status::permission_denied("only an agent certificate may stream as an agent")),
            None if call.authorization.is_some() => Err(Status::unauthenticated(
                "agent streams take the agent's certificate, never an operator token: enroll first (--enroll-token-file)",
            )),
            None => Err(Status::unauthenticated(
                "an agent stream needs the agent's client certificate: enroll first (--enroll-token-file)",
            )),
        };
    }
    let Need::Role(required) = need else { unreachable!("open, enroll and agent returned above") };
    if let Some((Some(Identity::Host(id)), _, _)) = valid {
        return Err(Status::permission_denied(format!(
            "the agent certificate of host '{id}' may not call operator APIs"
        )));
    }
    // A token names the caller of this one call; it wins over the connection's certificate.
    let (who, method) = match (call.authorization, valid) {
        (Some(header), _) => {
            let token = driftwatch_proto::bearer::parse(header).map_err(Status::unauthenticated)?;
            let memo = call.peer.map(|p| &p.token_memo);
            (creds.token(token, memo).map_err(Status::unauthenticated)?, Method::Token)
        }
        (None, Some((Some(Identity::Operator(name)), serial, _))) => {
            (creds.certificate(name, serial).map_err(Status::unauthenticated)?, Method::Certificate)
        }
        (None, _) => {
            return Err(Status::unauthenticated(
                "operator calls need credentials: `authorization: Bearer <token>` (driftwatch --token-file, \
                 DATA/admin.token on first start) or an operator certificate (driftwatch operator-cert create)",
            ));
        }
    };
    if who.role < required {
        return Err(Status::permission_denied(format!(
            "{} needs the {} role; '{}' has {}",
            call.path,
            driftwatch_proto::role_name(required as i32),
            who.principal,
            driftwatch_proto::role_name(who.role as i32)
        )));
    }
    Ok(Caller::Operator(OperatorCaller { principal: Principal::named(who.principal), role: who.role, method }))
}

/// The tower layer that applies [`decide`] and attaches the caller to the request.
#[derive(Clone)]
pub struct AccessLayer {
    pub mode: Mode,
    pub policy: Policy,
    pub deny: DenyList,
    pub creds: Arc<dyn Credentials + Send + Sync>,
}

impl<S> tower::Layer<S> for AccessLayer {
    type Service = Access<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Access { inner, layer: self.clone() }
    }
}

#[derive(Clone)]
pub struct Access<S> {
    inner: S,
    layer: AccessLayer,
}

impl<S, B> tower::Service<http::Request<B>> for Access<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<tonic::body::Body>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = AccessFuture<S::Future, S::Response>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<B>) -> Self::Future {
        let peer = req.extensions().get::<PeerInfo>();
        let authorization = req.headers().get(http::header::AUTHORIZATION).map(|v| v.to_str().unwrap_or("\u{0}"));
        let call = Call { path: req.uri().path(), peer, authorization };
        let l = &self.layer;
        match decide(l.mode, l.policy, call, &l.deny, l.creds.as_ref()) {
            Ok(caller) => {
                match caller {
                    Caller::Operator(op) => {
                        // One extension: `Principal::of` reads the principal from it.
                        req.extensions_mut().insert(op);
                    }
                    Caller::Agent(Some(a)) => {
                        req.extensions_mut().insert(a);
                    }
                    Caller::Agent(None) | Caller::Anyone => {}
                }
                AccessFuture::Admitted { call: self.inner.call(req) }
            }
            Err(status) => {
                tracing::info!(path = %req.uri().path(), peer = ?peer.map(|p| p.remote), reason = %status.message(), "call refused");
                AccessFuture::Refused { answer: Some(status.into_http()) }
            }
        }
    }
}

pin_project_lite::pin_project! {
    /// The inner call, or the refusal: a concrete type, so a call costs no allocation here.
    #[project = AccessProj]
    pub enum AccessFuture<F, R> {
        Admitted { #[pin] call: F },
        Refused { answer: Option<R> },
    }
}

impl<F, R, E> std::future::Future for AccessFuture<F, R>
where
    F: std::future::Future<Output = Result<R, E>>,
{
    type Output = Result<R, E>;

    fn poll(self: std::pin::Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            AccessProj::Admitted { call } => call.poll(cx),
            AccessProj::Refused { answer } => Poll::Ready(Ok(answer.take().expect("polled after completion"))),
        }
    }
}

#[cfg(test)]
mod tests;
