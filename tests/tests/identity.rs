//! Fleet identity over TLS, end to end with the real server: enrollment, certificates
//! as the only source of a stream's host id, revocation, and every refusal with a
//! status that says why. (The agent's own enrollment is tested with the real agent
//! binary elsewhere; here the test plays the agent with the PKI crate, so that it can
//! also play the impostor.)

use std::time::{Duration, Instant};

use driftwatch_pki::{AgentKey, Ca, Identity, certificate_request};
use driftwatch_proto::v1::{self, fleet_client::FleetClient};
use driftwatch_server::ServerConfig;
use driftwatch_tests::gateway::{hello, open_agent_stream, snapshot};
use driftwatch_tests::tls::{
    HostCert, admin_channel, admin_token, create_token, enroll, server_ca, tls_channel, tls_url,
};
use driftwatch_tests::*;
use tokio_stream::StreamExt;
use tonic::Code;

const T: Duration = Duration::from_secs(30);

fn token_req(pattern: &str, uses: u32) -> v1::CreateEnrollTokenRequest {
    v1::CreateEnrollTokenRequest {
        labels: [("env".to_string(), "production".to_string())].into(),
        host_id_pattern: pattern.into(),
        max_uses: uses,
        ..Default::default()
    }
}

async fn stream_as(
    url: &str,
    ca: &str,
    cert: &HostCert,
    hello_id: &str,
) -> Result<(AgentTxAlias, tonic::Streaming<v1::ServerMessage>), tonic::Status> {
    let channel = tls_channel(url, ca, Some((&cert.cert_pem, &cert.key_pem)))
        .await
        .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    open_agent_stream(channel, hello(hello_id, [("env".to_string(), "dev".to_string())], "test", "id")).await
}

type AgentTxAlias = driftwatch_tests::gateway::AgentTx;

fn one_file(seq: u64, path: &str) -> v1::AgentMessage {
    snapshot(v1::Snapshot {
        seq,
        full: true,
        full_last: true,
        files: vec![v1::FileState {
            path: path.into(),
            exists: true,
            status: v1::FileStatus::Ok as i32,
            ..Default::default()
        }],
        ..Default::default()
    })
}

async fn host(fleet: &mut FleetClient<tonic::transport::Channel>, id: &str) -> Option<v1::Host> {
    fleet.get_host(v1::GetHostRequest { host_id: id.into() }).await.ok().map(|r| r.into_inner())
}

#[tokio::test]
async fn an_enrolled_host_streams_as_its_certificate_says_and_impostors_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let server = start_server_with(ServerConfig::for_tests_tls(dir.path())).await;
    let (url, ca) = (tls_url(&server), server_ca(dir.path()));
    let mut fleet = FleetClient::new(admin_channel(&url, &ca, dir.path()).await);

    // lat-2 enrolls with a token pinned to it, streams a file, and stops.
    let token = create_token(&url, &ca, dir.path(), token_req("lat-2", 1)).await;
    let real = enroll(&url, &ca, &token, "").await.expect("enrolled");
    assert_eq!(real.host_id, "lat-2");
    let info = driftwatch_pki::inspect_pem(&real.cert_pem).unwrap();
    assert_eq!(info.identity, Some(Identity::Host("lat-2".into())));
    let (tx, _inbound) = stream_as(&url, &ca, &real, "lat-2").await.expect("welcomed");
    tx.send(one_file(1, "/etc/lat/app.env")).unwrap();
    wait_for("lat-2's file", T, || {
        let mut f = fleet.clone();
        async move { host(&mut f, "lat-2").await.filter(|h| h.files.len() == 1) }
    })
    .await;
    let h = host(&mut fleet, "lat-2").await.unwrap();
    let summary = h.summary.unwrap();
    assert_eq!(
        summary.labels.get("env").map(String::as_str),
        Some("production"),
        "labels come from the token, not the agent"
    );
    assert!(summary.identity.as_ref().is_some_and(|i| i.enrolled && !i.revoked));
    drop(tx);

    // The same token again: used up.
    let again = enroll(&url, &ca, &token, "lat-2").await.unwrap_err();
    assert_eq!(again.code(), Code::PermissionDenied);
    assert!(again.message().contains("used up"), "{}", again.message());

    // The impostor: no certificate at all.
    let plain = tls_channel(&url, &ca, None).await.unwrap();
    let err = open_agent_stream(plain, hello("lat-2", [], "evil", "x")).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "{}", err.message());
    // A certificate of its own (a token for another host), claiming lat-2 in Hello.
    let other_token = create_token(&url, &ca, dir.path(), token_req("", 1)).await;
    let evil = enroll(&url, &ca, &other_token, "evil-1").await.unwrap();
    let err = stream_as(&url, &ca, &evil, "lat-2").await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    assert!(err.message().contains("certificate is for host 'evil-1'"), "{}", err.message());
    // A certificate from another CA naming lat-2.
    let rogue_ca = Ca::generate("rogue").unwrap();
    let key = AgentKey::generate();
    let rogue = rogue_ca
        .sign_request(
            &certificate_request(&key, "lat-2").unwrap(),
            &Identity::Host("lat-2".into()),
            Duration::from_secs(600),
        )
        .unwrap();
    let forged = HostCert { host_id: "lat-2".into(), cert_pem: rogue.cert_pem, key_pem: key.to_pem() };
    let err = stream_as(&url, &ca, &forged, "lat-2").await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    assert!(err.message().contains("not issued by a CA this server trusts"), "{}", err.message());
    // Enrolling as lat-2 with a shared (unpinned) token: refused, lat-2 is enrolled.
    let shared = create_token(&url, &ca, dir.path(), token_req("", 5)).await;
    let err = enroll(&url, &ca, &shared, "lat-2").await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    assert!(err.message().contains("already enrolled"), "{}", err.message());

    // Nothing changed: lat-2's file and labels are intact.
    let h = host(&mut fleet, "lat-2").await.unwrap();
    assert_eq!(h.files.iter().map(|f| f.path.as_str()).collect::<Vec<_>>(), vec!["/etc/lat/app.env"]);
    assert_eq!(h.summary.unwrap().labels.get("env").map(String::as_str), Some("production"));

    // The real host comes back with its certificate; no token needed.
    let (_tx, _inbound) = stream_as(&url, &ca, &real, "lat-2").await.expect("welcomed again");
    server.stop().await.unwrap();
}

#[tokio::test]
async fn expired_certificates_and_tokens_are_refused_with_a_reason() {
    let dir = tempfile::tempdir().unwrap();
    let server = start_server_with(ServerConfig::for_tests_tls(dir.path())).await;
    let (url, ca) = (tls_url(&server), server_ca(dir.path()));

    // A certificate of this server's CA whose validity ended an hour ago.
    let fleet_ca = Ca::from_pem(&ca, &std::fs::read_to_string(dir.path().join("tls/ca.key")).unwrap()).unwrap();
    let key = AgentKey::generate();
    let now = time::OffsetDateTime::now_utc();
    let old = fleet_ca
        .sign_request_between(
            &certificate_request(&key, "web-1").unwrap(),
            &Identity::Host("web-1".into()),
            now - Duration::from_secs(7200),
            now - Duration::from_secs(3600),
        )
        .unwrap();
    let expired = HostCert { host_id: "web-1".into(), cert_pem: old.cert_pem, key_pem: key.to_pem() };
    let err = stream_as(&url, &ca, &expired, "web-1").await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    assert!(err.message().contains("expired") && err.message().contains("enrollment token"), "{}", err.message());

    // A token that is revoked, and one that expires.
    let channel = admin_channel(&url, &ca, dir.path()).await;
    let mut enrollment = v1::enrollment_client::EnrollmentClient::new(channel);
    let created = enrollment.create_enroll_token(token_req("", 3)).await.unwrap().into_inner();
    let id = created.token.unwrap().id;
    enrollment.revoke_enroll_token(v1::RevokeEnrollTokenRequest { id, reason: "leaked".into() }).await.unwrap();
    let err = enroll(&url, &ca, &created.secret, "web-2").await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    assert!(err.message().contains("revoked"), "{}", err.message());

    let short = enrollment
        .create_enroll_token(v1::CreateEnrollTokenRequest {
            ttl: Some(prost_types::Duration { seconds: 1, nanos: 0 }),
            ..token_req("", 1)
        })
        .await
        .unwrap()
        .into_inner();
    let expires_ms = driftwatch_proto::timestamp_millis(short.token.as_ref().unwrap().expires_at.as_ref().unwrap());
    // Not used before it expires: wait for the clock, then try it once.
    wait_for("the short token's expiry", T, || async { (driftwatch_proto::now_millis() > expires_ms).then_some(()) })
        .await;
    let msg = enroll(&url, &ca, &short.secret, "web-3").await.unwrap_err();
    assert!(msg.message().contains("expired"), "{}", msg.message());
    assert_eq!(msg.code(), Code::PermissionDenied);
    // A garbled token is a plain refusal, never a crash.
    assert_eq!(enroll(&url, &ca, "nonsense", "web-4").await.unwrap_err().code(), Code::PermissionDenied);
    let listed = enrollment.list_enroll_tokens(v1::ListEnrollTokensRequest { all: true }).await.unwrap().into_inner();
    assert_eq!(listed.tokens.len(), 2);
    assert!(
        listed.tokens.iter().all(|t| t.actor == "spiffe://driftwatch/operator/test-admin"),
        "the actor is the authenticated operator: {:?}",
        listed.tokens
    );
    server.stop().await.unwrap();
}

#[tokio::test]
async fn revoking_a_host_cuts_its_stream_at_once_and_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let server = start_server_with(ServerConfig::for_tests_tls(dir.path())).await;
    let (url, ca) = (tls_url(&server), server_ca(dir.path()));
    let token = create_token(&url, &ca, dir.path(), token_req("web-*", 2)).await;
    let web1 = enroll(&url, &ca, &token, "web-1").await.unwrap();

    // A second stream with the same certificate replaces the first.
    let (_tx1, mut first) = stream_as(&url, &ca, &web1, "web-1").await.unwrap();
    let (_tx2, mut second) = stream_as(&url, &ca, &web1, "web-1").await.expect("the newer stream wins");
    let replaced = tokio::time::timeout(T, first.next()).await.expect("the old stream ends");
    assert!(matches!(replaced, Some(Err(ref s)) if s.code() == Code::Aborted), "{replaced:?}");

    // Revoke: the open stream ends with PERMISSION_DENIED. (Keepalives are 30 s and
    // heartbeats far longer than this test waits for, so only revocation can end it.)
    let mut fleet = FleetClient::new(admin_channel(&url, &ca, dir.path()).await);
    let started = Instant::now();
    let revoked = fleet
        .revoke_host(v1::RevokeHostRequest { host_id: "web-1".into(), reason: "decommissioned".into() })
        .await
        .unwrap()
        .into_inner();
    let cut = tokio::time::timeout(T, second.next()).await.expect("the stream is cut");
    let elapsed = started.elapsed();
    println!("RESULT revocation_cut_ms={:.1}", elapsed.as_secs_f64() * 1000.0);
    match cut {
        Some(Err(s)) => {
            assert_eq!(s.code(), Code::PermissionDenied);
            assert!(s.message().contains("revoked: decommissioned"), "{}", s.message());
        }
        other => panic!("expected the stream to be cut, got {other:?}"),
    }
    let identity = revoked.summary.unwrap().identity.unwrap();
    assert!(
        identity.revoked
            && identity.revoked_reason == "decommissioned"
            && identity.revoked_by == "spiffe://driftwatch/operator/test-admin"
    );
    let err = stream_as(&url, &ca, &web1, "web-1").await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);

    // Durable: after a restart the certificate is still refused.
    server.stop().await.unwrap();
    let server = start_server_with(ServerConfig::for_tests_tls(dir.path())).await;
    let url = tls_url(&server);
    let err = stream_as(&url, &ca, &web1, "web-1").await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{}", err.message());
    // A new token pinned to it brings the host back with a new certificate; the old stays refused.
    let token = create_token(&url, &ca, dir.path(), token_req("web-1", 1)).await;
    let renewed = enroll(&url, &ca, &token, "web-1").await.unwrap();
    let (_tx, _inbound) = stream_as(&url, &ca, &renewed, "web-1").await.expect("re-enrolled host streams");
    let err = stream_as(&url, &ca, &web1, "web-1").await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    assert!(err.message().contains("revoked"), "{}", err.message());
    server.stop().await.unwrap();
}

#[tokio::test]
async fn a_certificate_replaced_on_disk_is_served_without_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = ServerConfig::for_tests_tls(dir.path());
    if let Some(t) = config.tls.as_mut() {
        t.reload_interval = Duration::from_millis(200);
    }
    let server = start_server_with(config).await;
    let (url, ca) = (tls_url(&server), server_ca(dir.path()));
    let served = || async {
        let (_, _) = (&url, &ca);
        peer_serial(server.grpc_addr, &ca).await
    };
    let before = served().await;
    // Issue a new server certificate with the same CA and put it in place.
    let fleet_ca = Ca::from_pem(&ca, &std::fs::read_to_string(dir.path().join("tls/ca.key")).unwrap()).unwrap();
    let next =
        fleet_ca.issue_server(&["localhost".into(), "127.0.0.1".into()], Duration::from_secs(90 * 86400)).unwrap();
    std::fs::write(dir.path().join("tls/server.key.new"), &next.key_pem).unwrap();
    std::fs::write(dir.path().join("tls/server.pem.new"), &next.cert_pem).unwrap();
    std::fs::rename(dir.path().join("tls/server.key.new"), dir.path().join("tls/server.key")).unwrap();
    std::fs::rename(dir.path().join("tls/server.pem.new"), dir.path().join("tls/server.pem")).unwrap();
    let want = driftwatch_pki::inspect_pem(&next.cert_pem).unwrap().serial;
    assert_ne!(before, want);
    wait_for("the new certificate to be served", T, || async {
        let s = peer_serial(server.grpc_addr, &ca).await;
        (s == want).then_some(())
    })
    .await;
    // And the server still answers over it.
    let mut fleet = FleetClient::new(admin_channel(&url, &ca, dir.path()).await);
    fleet.list_hosts(v1::ListHostsRequest::default()).await.unwrap();
    server.stop().await.unwrap();
}

/// The serial of the certificate the server presents right now.
async fn peer_serial(addr: std::net::SocketAddr, ca_pem: &str) -> String {
    try_peer_serial(addr, ca_pem).await.expect("TLS handshake with the server")
}

#[tokio::test]
async fn the_fleet_ca_rotates_with_an_overlap_and_no_restart() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = ServerConfig::for_tests_tls(dir.path());
    if let Some(t) = config.tls.as_mut() {
        t.reload_interval = Duration::from_millis(200);
    }
    let server = start_server_with(config).await;
    let (url, old_ca) = (tls_url(&server), server_ca(dir.path()));
    let token = create_token(&url, &old_ca, dir.path(), token_req("", 5)).await;
    let a = enroll(&url, &old_ca, &token, "host-a").await.unwrap();
    stream_as(&url, &old_ca, &a, "host-a").await.expect("old-CA agent streams");

    // Step 1, prepare: a next CA that signs from now on and is trusted at once.
    let rotate = |step: &str| {
        let out = std::process::Command::new(server_binary())
            .args(["--data", dir.path().to_str().unwrap(), "rotate-ca", step])
            .output()
            .expect("driftwatch-server runs");
        assert!(out.status.success(), "rotate-ca {step}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    let said = rotate("prepare");
    assert!(said.contains("ca-bundle.pem"), "{said}");
    let bundle = std::fs::read_to_string(dir.path().join("tls/ca-bundle.pem")).unwrap();
    let next_ca = std::fs::read_to_string(dir.path().join("tls/next/ca.pem")).unwrap();
    let b = enroll(&url, &bundle, &token, "host-b").await.unwrap();
    let next = Ca::from_pem(&next_ca, &std::fs::read_to_string(dir.path().join("tls/next/ca.key")).unwrap()).unwrap();
    assert!(next.issued(&b.cert_pem), "enrollment during the overlap gets a next-CA certificate");
    wait_for("the next CA trusted for client certificates", T, || {
        let (url, bundle, b) = (url.clone(), bundle.clone(), b.clone());
        async move { stream_as(&url, &bundle, &b, "host-b").await.ok().map(|_| ()) }
    })
    .await;
    stream_as(&url, &old_ca, &a, "host-a").await.expect("old-CA agents keep streaming");

    // Step 2, finish: the server presents a next-CA certificate; old-CA agents still stream.
    rotate("finish");
    let next_serial_issuer = next_ca.clone();
    wait_for("the server certificate from the new CA", T, || {
        let ca = next_serial_issuer.clone();
        let addr = server.grpc_addr;
        async move {
            // Trusting only the new CA: the handshake succeeds once the server switched.
            tokio::time::timeout(Duration::from_secs(5), try_peer_serial(addr, &ca)).await.ok().flatten()
        }
    })
    .await;
    assert!(tls_channel(&url, &old_ca, None).await.is_err(), "a client that trusts only the old CA is left behind");
    stream_as(&url, &bundle, &a, "host-a").await.expect("the old CA is still trusted for agent certificates");
    stream_as(&url, &bundle, &b, "host-b").await.expect("new-CA agent");

    // Step 3: drop the old CA; its certificates are refused, the new ones are fine.
    for e in std::fs::read_dir(dir.path().join("tls/trusted")).unwrap() {
        let p = e.unwrap().path();
        if p.file_name().unwrap().to_string_lossy().starts_with("previous-ca-") {
            std::fs::remove_file(p).unwrap();
        }
    }
    let refused = wait_for("the old CA dropped", T, || {
        let (url, bundle, a) = (url.clone(), bundle.clone(), a.clone());
        async move { stream_as(&url, &bundle, &a, "host-a").await.err() }
    })
    .await;
    assert_eq!(refused.code(), Code::Unauthenticated);
    stream_as(&url, &next_ca, &b, "host-b").await.expect("new-CA agent, trusting only the new CA");
    server.stop().await.unwrap();
}

/// Like [`peer_serial`], but `None` when the handshake fails.
async fn try_peer_serial(addr: std::net::SocketAddr, ca_pem: &str) -> Option<String> {
    let mut roots = rustls::RootCertStore::empty();
    for c in driftwatch_pki::certs_from_pem(ca_pem).ok()? {
        roots.add(c).ok()?;
    }
    #[allow(deprecated)]
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .ok()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(addr).await.ok()?;
    let tls = connector.connect(rustls_pki_types::ServerName::try_from("localhost").ok()?, tcp).await.ok()?;
    let cert = tls.get_ref().1.peer_certificates()?[0].clone();
    driftwatch_pki::inspect(&cert).ok().map(|i| i.serial)
}

/// Bring your own PKI: `[tls] cert, key, client_ca` from another CA (as cert-manager or
/// Vault would issue them, with the SPIFFE ID in the URI SAN). Agents stream with
/// certificates of that CA; the server issues none itself.
#[tokio::test]
async fn your_own_pki_serves_and_authenticates_agents_without_enrollment() {
    let dir = tempfile::tempdir().unwrap();
    let corp = Ca::generate("corp CA").unwrap();
    let served = corp.issue_server(&["localhost".into(), "127.0.0.1".into()], Duration::from_secs(86400)).unwrap();
    let p = |n: &str| dir.path().join(n);
    std::fs::write(p("server.pem"), &served.cert_pem).unwrap();
    std::fs::write(p("server.key"), &served.key_pem).unwrap();
    std::fs::write(p("corp-ca.pem"), corp.cert_pem()).unwrap();
    let mut config = ServerConfig::for_tests_tls(p("data"));
    config.tls.as_mut().unwrap().source = driftwatch_server::tls::TlsSource::Files {
        cert: p("server.pem"),
        key: p("server.key"),
        client_ca: Some(p("corp-ca.pem")),
    };
    let server = start_server_with(config).await;
    let url = tls_url(&server);
    assert!(!p("data/tls/ca.pem").exists(), "no built-in CA with your own PKI");

    let key = AgentKey::generate();
    let issued = corp
        .sign_request(
            &certificate_request(&key, "byo-1").unwrap(),
            &Identity::Host("byo-1".into()),
            Duration::from_secs(3600),
        )
        .unwrap();
    let cert = HostCert { host_id: "byo-1".into(), cert_pem: issued.cert_pem, key_pem: key.to_pem() };
    let (_tx, _inbound) =
        stream_as(&url, corp.cert_pem(), &cert, "byo-1").await.expect("streams with the corp certificate");

    // No built-in CA, so no operator certificates: operators use the admin token.
    let bearer = driftwatch_proto::bearer::Bearer::new(Some(&admin_token(&p("data")))).unwrap();
    let mut enrollment = v1::enrollment_client::EnrollmentClient::with_interceptor(
        tls_channel(&url, corp.cert_pem(), None).await.unwrap(),
        bearer,
    );
    let err = enrollment.create_enroll_token(token_req("", 1)).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(err.message().contains("does not issue certificates"), "{}", err.message());
    let err = enroll(&url, corp.cert_pem(), "0011223344556677.secret", "byo-2").await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    server.stop().await.unwrap();
}

/// Renewal on the authenticated stream: a new key's CSR in, a certificate for the
/// stream's own host out; it streams, and the host's identity shows it.
#[tokio::test]
async fn a_host_renews_its_certificate_on_its_stream() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = ServerConfig::for_tests_tls(dir.path());
    config.tls.as_mut().unwrap().cert_lifetime = Duration::from_secs(120);
    let server = start_server_with(config).await;
    let (url, ca) = (tls_url(&server), server_ca(dir.path()));
    let token = create_token(&url, &ca, dir.path(), token_req("", 1)).await;
    let first = enroll(&url, &ca, &token, "renew-1").await.unwrap();
    let (tx, mut inbound) = stream_as(&url, &ca, &first, "renew-1").await.unwrap();

    let key = AgentKey::generate();
    let csr = certificate_request(&key, "whatever-the-agent-says").unwrap();
    tx.send(v1::AgentMessage {
        kind: Some(v1::agent_message::Kind::RenewCertificate(v1::RenewCertificate { csr_pem: csr })),
    })
    .unwrap();
    let issued = loop {
        match tokio::time::timeout(T, inbound.next()).await.expect("an answer").expect("stream open").unwrap().kind {
            Some(v1::server_message::Kind::CertificateIssued(c)) => break c,
            _ => continue,
        }
    };
    assert!(issued.error.is_empty(), "{}", issued.error);
    let info = driftwatch_pki::inspect_pem(&issued.certificate_pem).unwrap();
    assert_eq!(info.identity, Some(Identity::Host("renew-1".into())), "the stream's identity, not the CSR's");
    assert_eq!(info.public_key_der, key.public_key_der());
    let lifetime = info.not_after - info.not_before;
    assert!((120..=120 + 600).contains(&lifetime), "cert_lifetime (plus the backdating): {lifetime}");
    let renewed = HostCert { host_id: "renew-1".into(), cert_pem: issued.certificate_pem, key_pem: key.to_pem() };
    drop(tx);
    let (_tx, _in) = stream_as(&url, &ca, &renewed, "renew-1").await.expect("the renewed certificate streams");
    let mut fleet = FleetClient::new(admin_channel(&url, &ca, dir.path()).await);
    let identity = host(&mut fleet, "renew-1").await.unwrap().summary.unwrap().identity.unwrap();
    assert_eq!(identity.certificate_serial, info.serial);
    server.stop().await.unwrap();
}
