use super::*;
use std::collections::HashMap;
use tonic::Code;

fn peer(addr: &str, cert: CertStatus) -> PeerInfo {
    PeerInfo {
        remote: addr.parse().unwrap(),
        tls: true,
        cert,
        streams: Default::default(),
        token_memo: Default::default(),
    }
}

fn host_cert(id: &str, serial: &str) -> CertStatus {
    CertStatus::Valid { identity: Some(Identity::Host(id.into())), serial: serial.into(), not_after: 99 }
}

fn op_cert(name: &str, serial: &str) -> CertStatus {
    CertStatus::Valid { identity: Some(Identity::Operator(name.into())), serial: serial.into(), not_after: 99 }
}

/// Tokens `tok-<role>` with that role; certificates by serial.
struct Fake {
    certs: HashMap<String, (String, Role)>,
}

impl Fake {
    fn new() -> Self {
        Self { certs: HashMap::from([("0b".into(), ("alice".into(), Role::Responder))]) }
    }
}

impl Credentials for Fake {
    fn token(&self, token: &str, _memo: Option<&TokenMemo>) -> Result<Authenticated, String> {
        let role = token.strip_prefix("tok-").and_then(driftwatch_proto::parse_role).ok_or("unknown token")?;
        Ok(Authenticated { principal: format!("{token}-name"), role })
    }
    fn certificate(&self, name: &str, serial: &str) -> Result<Authenticated, String> {
        match self.certs.get(serial) {
            Some((n, role)) if n == name => {
                Ok(Authenticated { principal: format!("spiffe://driftwatch/operator/{n}"), role: *role })
            }
            _ => Err(format!("operator certificate {serial} of '{name}' has no role here")),
        }
    }
}

const CONNECT: &str = "/driftwatch.v1.AgentGateway/Connect";
const ENROLL: &str = "/driftwatch.v1.AgentGateway/Enroll";
const GET_HOST: &str = "/driftwatch.v1.Fleet/GetHost";
const START_ROLLOUT: &str = "/driftwatch.v1.Changes/StartRollout";
const REFLECTION: &str = "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo";
const REMOTE: &str = "10.0.0.5:4000";

fn run(mode: Mode, path: &str, peer: Option<&PeerInfo>, auth: Option<&str>, deny: &DenyList) -> Result<Caller, Status> {
    decide(mode, Policy::default(), Call { path, peer, authorization: auth }, deny, &Fake::new())
}

fn code(r: Result<Caller, Status>) -> Code {
    r.map_or_else(|s| s.code(), |_| Code::Ok)
}

fn operator(name: &str, role: Role, method: Method) -> Caller {
    Caller::Operator(OperatorCaller { principal: Principal::named(name), role, method })
}

#[test]
fn agent_streams_need_a_valid_unrevoked_host_certificate_never_a_token() {
    let deny = DenyList::default();
    let ok = run(Mode::Tls, CONNECT, Some(&peer(REMOTE, host_cert("web-1", "0a"))), None, &deny).unwrap();
    assert_eq!(ok, Caller::Agent(Some(AgentCaller { host_id: "web-1".into(), serial: "0a".into(), not_after: 99 })));
    let none = run(Mode::Tls, CONNECT, Some(&peer(REMOTE, CertStatus::None)), None, &deny).unwrap_err();
    assert_eq!(none.code(), Code::Unauthenticated);
    assert!(none.message().contains("enroll"), "{}", none.message());
    let token = run(Mode::Tls, CONNECT, Some(&peer(REMOTE, CertStatus::None)), Some("Bearer tok-admin"), &deny);
    let token = token.unwrap_err();
    assert_eq!(token.code(), Code::Unauthenticated);
    assert!(token.message().contains("never an operator token"), "{}", token.message());
    let bad = run(Mode::Tls, CONNECT, Some(&peer(REMOTE, CertStatus::Invalid("expired".into()))), None, &deny);
    assert_eq!(bad.unwrap_err().message(), "expired");
    assert_eq!(
        code(run(Mode::Tls, CONNECT, Some(&peer(REMOTE, op_cert("alice", "0b"))), None, &deny)),
        Code::PermissionDenied
    );
    let anon = CertStatus::Valid { identity: None, serial: "0c".into(), not_after: 9 };
    assert_eq!(code(run(Mode::Tls, CONNECT, Some(&peer(REMOTE, anon)), None, &deny)), Code::PermissionDenied);
    deny.revoke_host("web-1", "decommissioned");
    let revoked = run(Mode::Tls, CONNECT, Some(&peer(REMOTE, host_cert("web-1", "0a"))), None, &deny).unwrap_err();
    assert_eq!(
        (revoked.code(), revoked.message()),
        (Code::PermissionDenied, "host 'web-1' is revoked: decommissioned")
    );
}

#[test]
fn enrollment_and_health_need_nothing_but_enrollment_needs_tls() {
    let deny = DenyList::default();
    for path in [ENROLL, "/grpc.health.v1.Health/Check", "/grpc.health.v1.Health/Watch"] {
        assert_eq!(run(Mode::Tls, path, Some(&peer(REMOTE, CertStatus::None)), None, &deny).unwrap(), Caller::Anyone);
    }
    assert_eq!(code(run(Mode::Insecure, ENROLL, None, None, &deny)), Code::FailedPrecondition);
    // An invalid certificate does not block enrollment (it is the way back after expiry).
    assert!(run(Mode::Tls, ENROLL, Some(&peer(REMOTE, CertStatus::Invalid("expired".into()))), None, &deny).is_ok());
}

#[test]
fn operator_calls_need_a_token_or_an_operator_certificate_even_from_loopback() {
    let deny = DenyList::default();
    for addr in ["127.0.0.1:5", REMOTE] {
        let e = run(Mode::Tls, GET_HOST, Some(&peer(addr, CertStatus::None)), None, &deny).unwrap_err();
        assert_eq!(e.code(), Code::Unauthenticated, "{addr}");
        assert!(e.message().contains("Bearer"), "{}", e.message());
    }
    assert_eq!(code(run(Mode::Tls, GET_HOST, None, None, &deny)), Code::Unauthenticated);
    assert_eq!(
        run(Mode::Tls, GET_HOST, Some(&peer(REMOTE, CertStatus::None)), Some("Bearer tok-viewer"), &deny).unwrap(),
        operator("tok-viewer-name", Role::Viewer, Method::Token)
    );
    assert_eq!(
        run(Mode::Tls, GET_HOST, Some(&peer(REMOTE, op_cert("alice", "0b"))), None, &deny).unwrap(),
        operator("spiffe://driftwatch/operator/alice", Role::Responder, Method::Certificate)
    );
    // A token names the caller of one call: it wins over the connection's certificate.
    assert_eq!(
        run(Mode::Tls, GET_HOST, Some(&peer(REMOTE, op_cert("alice", "0b"))), Some("Bearer tok-admin"), &deny).unwrap(),
        operator("tok-admin-name", Role::Admin, Method::Token)
    );
    for (auth, why) in [
        ("Bearer nope", "unknown token"),
        ("Basic dXNlcg==", "the authorization header is not 'Bearer <token>'"),
        ("\u{0}", "the authorization header is not 'Bearer <token>'"),
    ] {
        let e = run(Mode::Tls, GET_HOST, Some(&peer(REMOTE, CertStatus::None)), Some(auth), &deny).unwrap_err();
        assert_eq!((e.code(), e.message()), (Code::Unauthenticated, why));
    }
    // An operator certificate this server gave no role (another CA's, or not issued here).
    let e = run(Mode::Tls, GET_HOST, Some(&peer(REMOTE, op_cert("mallory", "0b"))), None, &deny).unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated);
}

#[test]
fn agent_certificates_never_act_as_operators() {
    let deny = DenyList::default();
    for addr in ["127.0.0.1:5", REMOTE] {
        for auth in [None, Some("Bearer tok-admin")] {
            let r = run(Mode::Tls, GET_HOST, Some(&peer(addr, host_cert("web-1", "01"))), auth, &deny);
            assert_eq!(code(r), Code::PermissionDenied, "{addr} {auth:?}");
        }
    }
}

#[test]
fn roles_include_the_ones_before_them_and_nothing_more() {
    let deny = DenyList::default();
    let p = peer(REMOTE, CertStatus::None);
    let call =
        |path: &str, role: &str| code(run(Mode::Tls, path, Some(&p), Some(&format!("Bearer tok-{role}")), &deny));
    assert_eq!(call(GET_HOST, "viewer"), Code::Ok);
    let e = run(Mode::Tls, START_ROLLOUT, Some(&p), Some("Bearer tok-viewer"), &deny).unwrap_err();
    assert_eq!(
        (e.code(), e.message()),
        (
            Code::PermissionDenied,
            "/driftwatch.v1.Changes/StartRollout needs the operator role; 'tok-viewer-name' has viewer"
        )
    );
    assert_eq!(call(START_ROLLOUT, "responder"), Code::PermissionDenied);
    assert_eq!(call(START_ROLLOUT, "operator"), Code::Ok);
    assert_eq!(call(START_ROLLOUT, "admin"), Code::Ok);
    assert_eq!(call("/driftwatch.v1.Access/CreateToken", "operator"), Code::PermissionDenied);
    assert_eq!(call("/driftwatch.v1.Access/CreateToken", "admin"), Code::Ok);
}

#[test]
fn unmapped_rpcs_are_refused_for_everyone() {
    let deny = DenyList::default();
    for mode in [Mode::Tls, Mode::Insecure] {
        let r = run(mode, "/driftwatch.v1.Fleet/DropEverything", None, Some("Bearer tok-admin"), &deny);
        assert_eq!(code(r), Code::PermissionDenied, "{mode:?}");
    }
}

#[test]
fn reflection_needs_a_viewer_unless_opened() {
    let deny = DenyList::default();
    let p = peer(REMOTE, CertStatus::None);
    assert_eq!(code(run(Mode::Tls, REFLECTION, Some(&p), None, &deny)), Code::Unauthenticated);
    assert_eq!(code(run(Mode::Tls, REFLECTION, Some(&p), Some("Bearer tok-viewer"), &deny)), Code::Ok);
    let open = Policy { open_reflection: true };
    let r =
        decide(Mode::Tls, open, Call { path: REFLECTION, peer: Some(&p), authorization: None }, &deny, &Fake::new());
    assert_eq!(r.unwrap(), Caller::Anyone);
}

#[test]
fn insecure_mode_acts_as_insecure_local_admin() {
    let deny = DenyList::default();
    assert_eq!(
        run(Mode::Insecure, START_ROLLOUT, None, None, &deny).unwrap(),
        operator("insecure-local", Role::Admin, Method::Insecure)
    );
    assert_eq!(run(Mode::Insecure, CONNECT, None, None, &deny).unwrap(), Caller::Agent(None));
}
