//! Who may call what, end to end over TLS with real tokens and certificates: every
//! RPC × every role, no credentials, revoked and expired tokens, an agent certificate.
//!
//! The expected role of each RPC is written here, independently of the server's
//! table (`server/src/access/table.rs`); the test also fails when the wire contract
//! gains an RPC this file does not list.

use std::collections::BTreeMap;
use std::time::Duration;

use driftwatch_proto::bearer::Bearer;
use driftwatch_proto::v1::{self, Role, access_client::AccessClient};
use driftwatch_server::ServerConfig;
use driftwatch_tests::gateway::{hello, open_agent_stream};
use driftwatch_tests::tls::{admin_token, create_token, enroll, operator_cert, server_ca, tls_channel, tls_url};
use driftwatch_tests::*;
use prost::Message;
use tonic::Code;
use tonic::transport::Channel;

const T: Duration = Duration::from_secs(30);

/// The least role each operator RPC needs (`None`: no operator may call it).
fn expected() -> BTreeMap<&'static str, Role> {
    use Role::*;
    BTreeMap::from([
        ("/driftwatch.v1.Fleet/ListHosts", Viewer),
        ("/driftwatch.v1.Fleet/GetHost", Viewer),
        ("/driftwatch.v1.Fleet/GetFile", Viewer),
        ("/driftwatch.v1.Fleet/Diff", Viewer),
        ("/driftwatch.v1.Fleet/GetResourceSummary", Viewer),
        ("/driftwatch.v1.Fleet/SetHostLabels", Operator),
        ("/driftwatch.v1.Fleet/RevokeHost", Admin),
        ("/driftwatch.v1.Alerts/ListAlerts", Viewer),
        ("/driftwatch.v1.Alerts/GetAlert", Viewer),
        ("/driftwatch.v1.Alerts/ListSilences", Viewer),
        ("/driftwatch.v1.Alerts/ListEvents", Viewer),
        ("/driftwatch.v1.Alerts/Subscribe", Viewer),
        ("/driftwatch.v1.Alerts/ListNotifiers", Viewer),
        ("/driftwatch.v1.Alerts/Acknowledge", Responder),
        ("/driftwatch.v1.Alerts/CreateSilence", Responder),
        ("/driftwatch.v1.Alerts/ExpireSilence", Responder),
        ("/driftwatch.v1.Audit/ListAuditEvents", Viewer),
        ("/driftwatch.v1.Baselines/GetBaseline", Viewer),
        ("/driftwatch.v1.Baselines/ListBaselines", Viewer),
        ("/driftwatch.v1.Baselines/PinBaseline", Operator),
        ("/driftwatch.v1.Baselines/SetBaselineKeys", Operator),
        ("/driftwatch.v1.Baselines/DeleteBaseline", Operator),
        ("/driftwatch.v1.Changes/GetRollout", Viewer),
        ("/driftwatch.v1.Changes/ListRollouts", Viewer),
        ("/driftwatch.v1.Changes/WatchRollout", Viewer),
        ("/driftwatch.v1.Changes/Correct", Operator),
        ("/driftwatch.v1.Changes/StartRollout", Operator),
        ("/driftwatch.v1.Changes/AbortRollout", Operator),
        ("/driftwatch.v1.Changes/ResumeRollout", Operator),
        ("/driftwatch.v1.Rules/ListRules", Viewer),
        ("/driftwatch.v1.Rules/CheckRules", Viewer),
        ("/driftwatch.v1.Rules/ReloadRules", Operator),
        ("/driftwatch.v1.Enrollment/CreateEnrollToken", Admin),
        ("/driftwatch.v1.Enrollment/ListEnrollTokens", Admin),
        ("/driftwatch.v1.Enrollment/RevokeEnrollToken", Admin),
        ("/driftwatch.v1.Access/WhoAmI", Viewer),
        ("/driftwatch.v1.Access/CreateToken", Admin),
        ("/driftwatch.v1.Access/ListTokens", Admin),
        ("/driftwatch.v1.Access/RevokeToken", Admin),
        ("/driftwatch.v1.Access/CreateOperatorCert", Admin),
    ])
}

/// RPCs that are not operator RPCs: what they take instead.
const NOT_OPERATOR: [&str; 2] = ["/driftwatch.v1.AgentGateway/Connect", "/driftwatch.v1.AgentGateway/Enroll"];

/// Every RPC of the wire contract, with whether the server streams its answer.
fn contract() -> Vec<(String, bool)> {
    let set = prost_types::FileDescriptorSet::decode(driftwatch_proto::FILE_DESCRIPTOR_SET).unwrap();
    let mut out = Vec::new();
    for f in set.file.iter().filter(|f| f.package() == "driftwatch.v1") {
        for s in &f.service {
            for m in &s.method {
                out.push((format!("/driftwatch.v1.{}/{}", s.name(), m.name()), m.server_streaming()));
            }
        }
    }
    out
}

/// Call `path` with an empty request (every field at its default) as `token`
/// (or none), on `channel`: the status code, or OK. An empty request is enough:
/// the access decision comes before any service reads the request, and a service's
/// own answer to it (NOT_FOUND, INVALID_ARGUMENT) is never an access code.
async fn call(channel: &Channel, path: &str, streaming: bool, token: Option<&str>) -> Code {
    let mut grpc = tonic::client::Grpc::new(channel.clone());
    grpc.ready().await.expect("channel ready");
    let mut req = tonic::Request::new(());
    Bearer::new(token).unwrap().apply(req.metadata_mut());
    req.set_timeout(Duration::from_secs(10));
    let path: tonic::codegen::http::uri::PathAndQuery = path.parse().unwrap();
    let codec = tonic_prost::ProstCodec::<(), ()>::default();
    let r = if streaming {
        grpc.server_streaming(req, path, codec).await.map(|_| ())
    } else {
        grpc.unary(req, path, codec).await.map(|_| ())
    };
    r.map_or_else(|s| s.code(), |_| Code::Ok)
}

fn access_code(c: Code) -> bool {
    matches!(c, Code::Unauthenticated | Code::PermissionDenied)
}

/// A token made by the admin (`admin`: the server's first-start admin token).
async fn new_token(channel: &Channel, admin: &Bearer, name: &str, role: Role, ttl_s: i64) -> (String, String) {
    let mut req = tonic::Request::new(v1::CreateTokenRequest {
        name: name.into(),
        role: role as i32,
        ttl: (ttl_s > 0).then_some(prost_types::Duration { seconds: ttl_s, nanos: 0 }),
        reason: "access test".into(),
    });
    admin.apply(req.metadata_mut());
    let r = AccessClient::new(channel.clone()).create_token(req).await.unwrap().into_inner();
    (r.token, r.credential.unwrap().id)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_rpc_by_every_role_over_tls() {
    let dir = tempfile::tempdir().unwrap();
    let server = start_server_with(ServerConfig::for_tests_tls(dir.path())).await;
    let (url, ca) = (tls_url(&server), server_ca(dir.path()));
    let admin_text = admin_token(dir.path());
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(dir.path().join("admin.token")).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "DATA/admin.token is readable by the server's user only");
    let admin = Bearer::new(Some(&admin_text)).unwrap();

    // The test's table covers the wire contract exactly.
    let contract = contract();
    let want = expected();
    let listed: Vec<&str> = contract.iter().map(|(p, _)| p.as_str()).filter(|p| !NOT_OPERATOR.contains(p)).collect();
    let missing: Vec<&&str> = listed.iter().filter(|p| !want.contains_key(**p)).collect();
    assert!(missing.is_empty(), "RPCs this test does not list (add their expected role): {missing:?}");
    assert_eq!(listed.len(), want.len(), "this test lists RPCs the contract does not have");

    let plain = tls_channel(&url, &ca, None).await.unwrap();
    let mut tokens = Vec::new();
    for role in [Role::Viewer, Role::Responder, Role::Operator, Role::Admin] {
        let name = format!("t-{}", driftwatch_proto::role_name(role as i32));
        tokens.push((role, new_token(&plain, &admin, &name, role, 0).await.0));
    }
    let (revoked, revoked_id) = new_token(&plain, &admin, "t-revoked", Role::Admin, 0).await;
    let mut req = tonic::Request::new(v1::RevokeTokenRequest { id: revoked_id, reason: "test".into() });
    admin.apply(req.metadata_mut());
    AccessClient::new(plain.clone()).revoke_token(req).await.unwrap();
    let (expired, _) = new_token(&plain, &admin, "t-expired", Role::Admin, 1).await;
    wait_for("the one-second token to expire", T, || async {
        (call(&plain, "/driftwatch.v1.Access/WhoAmI", false, Some(&expired)).await == Code::Unauthenticated)
            .then_some(())
    })
    .await;

    // An enrolled agent's certificate.
    let enroll_token = create_token(&url, &ca, dir.path(), v1::CreateEnrollTokenRequest::default()).await;
    let agent = enroll(&url, &ca, &enroll_token, "web-1").await.unwrap();
    let agent_ch = tls_channel(&url, &ca, Some((&agent.cert_pem, &agent.key_pem))).await.unwrap();

    let mut failures = Vec::new();
    for (path, streaming) in contract.iter().filter(|(p, _)| !NOT_OPERATOR.contains(&p.as_str())) {
        let need = want[path.as_str()];
        for (role, token) in &tokens {
            let got = call(&plain, path, *streaming, Some(token)).await;
            let allowed = *role >= need;
            let ok = if allowed { !access_code(got) } else { got == Code::PermissionDenied };
            if !ok {
                failures.push(format!("{path} as {role:?}: {got:?} (needs {need:?})"));
            }
        }
        for (who, token) in [("no token", None), ("revoked", Some(revoked.as_str())), ("expired", Some(&expired))] {
            let got = call(&plain, path, *streaming, token).await;
            if got != Code::Unauthenticated {
                failures.push(format!("{path} with {who}: {got:?}, want Unauthenticated"));
            }
        }
        let got = call(&agent_ch, path, *streaming, None).await;
        if got != Code::PermissionDenied {
            failures.push(format!("{path} with an agent certificate: {got:?}, want PermissionDenied"));
        }
    }
    assert!(failures.is_empty(), "{} wrong answers:\n{}", failures.len(), failures.join("\n"));

    // The agent gateway takes agent certificates only, never operator credentials.
    let admin_tok = tokens.iter().find(|(r, _)| *r == Role::Admin).unwrap().1.clone();
    let connect = "/driftwatch.v1.AgentGateway/Connect";
    let mut grpc = tonic::client::Grpc::new(plain.clone());
    grpc.ready().await.unwrap();
    let mut req = tonic::Request::new(tokio_stream::iter(Vec::<()>::new()));
    Bearer::new(Some(&admin_tok)).unwrap().apply(req.metadata_mut());
    let err = grpc
        .streaming(req, connect.parse().unwrap(), tonic_prost::ProstCodec::<(), ()>::default())
        .await
        .map(|_| ())
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "{}", err.message());
    let (op_cert, op_key) = operator_cert(&url, &ca, dir.path(), "ops", Role::Admin).await;
    let op_ch = tls_channel(&url, &ca, Some((&op_cert, &op_key))).await.unwrap();
    let err = open_agent_stream(op_ch.clone(), hello("web-1", [], "x", "s")).await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{}", err.message());
    assert!(open_agent_stream(agent_ch.clone(), hello("web-1", [], "x", "s")).await.is_ok());
    // The operator certificate is an operator: its role, its SPIFFE id as the principal.
    let me = AccessClient::new(op_ch).who_am_i(v1::WhoAmIRequest {}).await.unwrap().into_inner();
    assert_eq!(
        (me.principal.as_str(), me.role, me.method.as_str()),
        ("spiffe://driftwatch/operator/ops", Role::Admin as i32, "certificate")
    );

    // Health is open (probes); reflection needs a viewer.
    let health = tonic_health::pb::health_client::HealthClient::new(plain.clone())
        .check(tonic_health::pb::HealthCheckRequest { service: String::new() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(health.status, tonic_health::pb::health_check_response::ServingStatus::Serving as i32);
    let reflection = "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo";
    let stream_call = |token: Option<String>| {
        let plain = plain.clone();
        async move {
            let mut grpc = tonic::client::Grpc::new(plain);
            grpc.ready().await.unwrap();
            let mut req = tonic::Request::new(tokio_stream::iter(Vec::<()>::new()));
            Bearer::new(token.as_deref()).unwrap().apply(req.metadata_mut());
            grpc.streaming(req, reflection.parse().unwrap(), tonic_prost::ProstCodec::<(), ()>::default())
                .await
                .map(|_| ())
                .map_err(|s| s.code())
        }
    };
    assert_eq!(stream_call(None).await, Err(Code::Unauthenticated));
    let viewer = tokens[0].1.clone();
    assert_eq!(stream_call(Some(viewer)).await, Ok(()));
    server.stop().await.unwrap();
}

/// The audit actor is the authenticated principal, never a request field, and a
/// token's creation and revocation are audited by whoever did them.
/// A connection remembers the token it last verified; revoking that token, from
/// another connection, still refuses the very next call on this one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_revoked_mid_connection_is_refused_on_its_next_call() {
    let dir = tempfile::tempdir().unwrap();
    let server = start_server_with(ServerConfig::for_tests_tls(dir.path())).await;
    let (url, ca) = (tls_url(&server), server_ca(dir.path()));
    let admin = Bearer::new(Some(&admin_token(dir.path()))).unwrap();
    let control = tls_channel(&url, &ca, None).await.unwrap();
    let (token, id) = new_token(&control, &admin, "t-held", Role::Viewer, 0).await;
    let held = tls_channel(&url, &ca, None).await.unwrap();
    let who_am_i = "/driftwatch.v1.Access/WhoAmI";
    for _ in 0..3 {
        assert_eq!(call(&held, who_am_i, false, Some(&token)).await, Code::Ok, "the token works before revocation");
    }
    let mut req = tonic::Request::new(v1::RevokeTokenRequest { id, reason: "test".into() });
    admin.apply(req.metadata_mut());
    AccessClient::new(control).revoke_token(req).await.unwrap();
    assert_eq!(call(&held, who_am_i, false, Some(&token)).await, Code::Unauthenticated);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_audit_actor_is_the_authenticated_principal() {
    let dir = tempfile::tempdir().unwrap();
    let server = start_server_with(ServerConfig::for_tests_tls(dir.path())).await;
    let (url, ca) = (tls_url(&server), server_ca(dir.path()));
    let plain = tls_channel(&url, &ca, None).await.unwrap();
    let admin = Bearer::new(Some(&admin_token(dir.path()))).unwrap();
    let (responder, _) = new_token(&plain, &admin, "carol", Role::Responder, 0).await;
    let bearer = Bearer::new(Some(&responder)).unwrap();
    let mut alerts = v1::alerts_client::AlertsClient::with_interceptor(plain.clone(), bearer.clone());
    let silence = alerts
        .create_silence(v1::CreateSilenceRequest {
            matchers: vec![v1::Matcher { name: "host".into(), value: "web-1".into(), ..Default::default() }],
            duration: Some(prost_types::Duration { seconds: 600, nanos: 0 }),
            comment: "maintenance".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(silence.actor, "carol", "{silence:?}");
    let mut audit = v1::audit_client::AuditClient::with_interceptor(plain, bearer);
    let events = audit.list_audit_events(v1::ListAuditEventsRequest::default()).await.unwrap().into_inner().events;
    let actors: Vec<(&str, &str)> = events.iter().map(|e| (e.action.as_str(), e.actor.as_str())).collect();
    assert!(actors.contains(&("token.created", "admin")), "{actors:?}");
    assert!(actors.iter().any(|(a, who)| a.starts_with("silence") && *who == "carol"), "{actors:?}");
    assert!(actors.contains(&("token.created", "driftwatch")), "the first start's admin token: {actors:?}");
    server.stop().await.unwrap();
}

/// `/metrics` behind a token when one is configured; `/healthz` open for probes; no
/// notifier URL in what a scraper reads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_need_the_scrape_token_and_health_stays_open() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = ServerConfig::for_tests(dir.path());
    config.metrics_token = Some("scrape-0123456789abcdef".into());
    let server = start_server_with(config).await;
    let base = format!("http://{}", server.metrics_addr.unwrap());
    let http = reqwest::Client::new();
    let get = |path: &str, token: Option<&str>| {
        let mut r = http.get(format!("{base}{path}"));
        if let Some(t) = token {
            r = r.bearer_auth(t);
        }
        async move { r.send().await.unwrap().status().as_u16() }
    };
    assert_eq!(get("/metrics", None).await, 401);
    assert_eq!(get("/metrics", Some("wrong-0123456789abcdef")).await, 401);
    assert_eq!(get("/metrics", Some("scrape-0123456789abcdef")).await, 200);
    assert_eq!(get("/healthz", None).await, 200);
    server.stop().await.unwrap();
}

/// Per-caller limits count per authenticated principal: one operator at its limit
/// leaves another untouched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscriber_places_are_counted_per_principal() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = ServerConfig::for_tests_tls(dir.path());
    config.limits.max_subscribers_per_principal = 2;
    let server = start_server_with(config).await;
    let (url, ca) = (tls_url(&server), server_ca(dir.path()));
    let plain = tls_channel(&url, &ca, None).await.unwrap();
    let admin = Bearer::new(Some(&admin_token(dir.path()))).unwrap();
    let (alice, _) = new_token(&plain, &admin, "alice", Role::Viewer, 0).await;
    let (bob, _) = new_token(&plain, &admin, "bob", Role::Viewer, 0).await;
    let subscribe = |token: String| {
        let plain = plain.clone();
        async move {
            v1::alerts_client::AlertsClient::with_interceptor(plain, Bearer::new(Some(&token)).unwrap())
                .subscribe(v1::SubscribeRequest::default())
                .await
        }
    };
    let a1 = subscribe(alice.clone()).await.expect("alice's first");
    let a2 = subscribe(alice.clone()).await.expect("alice's second");
    let err = subscribe(alice.clone()).await.unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{}", err.message());
    assert!(err.message().contains("max_subscribers_per_principal"), "{}", err.message());
    let b1 = subscribe(bob.clone()).await.expect("bob is not held to alice's count");
    drop((a1, a2, b1));
    server.stop().await.unwrap();
}
