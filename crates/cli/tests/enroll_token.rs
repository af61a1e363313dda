//! `driftwatch enroll-token create|list|revoke` over TLS (`--server https://…` with
//! `--ca-file` or DRIFTWATCH_CA_FILE) against a minimal in-test Enrollment service: the
//! secret alone on stdout, the details on stderr, the request built from the flags, and
//! the clear errors for https:// without a CA file or with the wrong one.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{cli, cli_env};
use driftwatch_pki::Ca;
use driftwatch_proto::v1::enrollment_server::{Enrollment, EnrollmentServer};
use driftwatch_proto::v1::{
    CreateEnrollTokenRequest, CreateEnrollTokenResponse, EnrollToken, ListEnrollTokensRequest,
    ListEnrollTokensResponse, RevokeEnrollTokenRequest,
};
use parking_lot::Mutex;
use tonic::transport::{Certificate, Identity, Server, ServerTlsConfig};
use tonic::{Request, Response, Status};

#[derive(Default)]
struct Tokens {
    tokens: Mutex<Vec<EnrollToken>>,
    created: Mutex<Vec<CreateEnrollTokenRequest>>,
    listed_all: Mutex<Vec<bool>>,
}

/// The service: shares its state with the test.
struct Service(Arc<Tokens>);

#[tonic::async_trait]
impl Enrollment for Service {
    async fn create_enroll_token(
        &self,
        request: Request<CreateEnrollTokenRequest>,
    ) -> Result<Response<CreateEnrollTokenResponse>, Status> {
        let r = request.into_inner();
        let now = driftwatch_proto::now_millis();
        let ttl = r.ttl.map(|d| d.seconds * 1000).unwrap_or(3_600_000);
        let token = EnrollToken {
            id: "tok1".into(),
            labels: r.labels.clone(),
            agent_label_keys: r.agent_label_keys.clone(),
            host_id_pattern: r.host_id_pattern.clone(),
            created_at: Some(driftwatch_proto::timestamp_from_millis(now)),
            expires_at: Some(driftwatch_proto::timestamp_from_millis(now + ttl)),
            max_uses: r.max_uses.max(1),
            actor: "unauthenticated".into(),
            reason: r.reason.clone(),
            ..Default::default()
        };
        self.0.tokens.lock().push(token.clone());
        self.0.created.lock().push(r);
        Ok(Response::new(CreateEnrollTokenResponse { token: Some(token), secret: "tok1.s3cret".into() }))
    }

    async fn list_enroll_tokens(
        &self,
        request: Request<ListEnrollTokensRequest>,
    ) -> Result<Response<ListEnrollTokensResponse>, Status> {
        let all = request.into_inner().all;
        self.0.listed_all.lock().push(all);
        let tokens = self.0.tokens.lock().iter().filter(|t| all || t.revoked_at.is_none()).cloned().collect();
        Ok(Response::new(ListEnrollTokensResponse { tokens }))
    }

    async fn revoke_enroll_token(
        &self,
        request: Request<RevokeEnrollTokenRequest>,
    ) -> Result<Response<EnrollToken>, Status> {
        let r = request.into_inner();
        let mut tokens = self.0.tokens.lock();
        let t = tokens
            .iter_mut()
            .find(|t| t.id == r.id)
            .ok_or_else(|| Status::not_found(format!("no enrollment token {}", r.id)))?;
        t.revoked_at = Some(driftwatch_proto::timestamp(std::time::SystemTime::now()));
        t.reason = r.reason;
        Ok(Response::new(t.clone()))
    }
}

struct Fake {
    url: String,
    ca_file: String,
    state: Arc<Tokens>,
    _dir: tempfile::TempDir,
}

async fn fake() -> Fake {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::generate("cli test CA").unwrap();
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, ca.cert_pem()).unwrap();
    let cert = ca.issue_server(&["localhost".into(), "127.0.0.1".into()], Duration::from_secs(3600)).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("https://127.0.0.1:{}", listener.local_addr().unwrap().port());
    let state = Arc::new(Tokens::default());
    let tls = ServerTlsConfig::new()
        .identity(Identity::from_pem(&cert.cert_pem, &cert.key_pem))
        .client_ca_root(Certificate::from_pem(ca.cert_pem()))
        .client_auth_optional(true);
    tokio::spawn(
        Server::builder()
            .tls_config(tls)
            .unwrap()
            .add_service(EnrollmentServer::new(Service(state.clone())))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    Fake { url, ca_file: ca_file.display().to_string(), state, _dir: dir }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_are_created_listed_and_revoked_over_tls() {
    let fake = fake().await;
    let (u, ca) = (fake.url.clone(), fake.ca_file.clone());
    let results = tokio::task::spawn_blocking(move || {
        let env = [("DRIFTWATCH_CA_FILE", ca.as_str())];
        vec![
            cli_env(
                &u,
                &[
                    "enroll-token",
                    "create",
                    "--label",
                    "env=production",
                    "--agent-label-key",
                    "node",
                    "--host-id-pattern",
                    "web-*",
                    "--ttl",
                    "2h",
                    "--uses",
                    "3",
                    "--reason",
                    "new rack",
                ],
                &env,
            ),
            cli(&u, &["--ca-file", &ca, "enroll-token", "list"]),
            cli(&u, &["--ca-file", &ca, "--output", "json", "enroll-token", "create"]),
            cli_env(&u, &["enroll-token", "revoke", "tok1", "--reason", "leaked"], &env),
            cli_env(&u, &["enroll-token", "list", "--all"], &env),
            cli_env(&u, &["enroll-token", "revoke", "nope"], &env),
        ]
    })
    .await
    .unwrap();
    let (ok, out, err) = &results[0];
    assert!(*ok, "{err}");
    assert_eq!(out, "tok1.s3cret\n", "the secret alone on stdout, so `> token.txt` is the token file");
    assert!(err.contains("enrollment token tok1: 3 uses, expires in "), "{err}");
    assert!(err.contains("hosts:            web-*") && err.contains("env=production"), "{err}");
    let req = fake.state.created.lock()[0].clone();
    assert_eq!(req.ttl, Some(prost_types::Duration { seconds: 7200, nanos: 0 }));
    assert_eq!((req.max_uses, req.host_id_pattern.as_str(), req.reason.as_str()), (3, "web-*", "new rack"));
    assert_eq!(req.agent_label_keys, ["node"]);

    let (ok, out, err) = &results[1];
    assert!(*ok && out.starts_with("ID") && out.contains("tok1") && out.contains("active"), "{out}{err}");
    let (ok, out, err) = &results[2];
    let j: serde_json::Value = serde_json::from_str(out).unwrap_or_else(|e| panic!("{e}: {out}{err}"));
    assert!(*ok && j["secret"] == "tok1.s3cret" && j["token"]["id"] == "tok1", "{out}");
    let (ok, out, err) = &results[3];
    assert!(*ok && out.trim() == "revoked enrollment token tok1", "{out}{err}");
    let (ok, out, _) = &results[4];
    assert!(*ok && out.contains("revoked") && out.contains("leaked"), "{out}");
    assert_eq!(*fake.state.listed_all.lock(), [false, true]);
    let (ok, _, err) = &results[5];
    assert!(!*ok && err.contains("not found: no enrollment token nope"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_needs_the_servers_ca() {
    let fake = fake().await;
    let other = tempfile::tempdir().unwrap();
    let wrong = other.path().join("other-ca.pem");
    std::fs::write(&wrong, Ca::generate("another CA").unwrap().cert_pem()).unwrap();
    let (u, wrong) = (fake.url.clone(), wrong.display().to_string());
    let (none, bad) = tokio::task::spawn_blocking(move || {
        (cli(&u, &["enroll-token", "list"]), cli(&u, &["--ca-file", &wrong, "enroll-token", "list"]))
    })
    .await
    .unwrap();
    let (ok, _, err) = none;
    assert!(!ok && err.contains("is https://: pass --ca-file FILE (or DRIFTWATCH_CA_FILE)"), "{err}");
    let (ok, _, err) = bad;
    assert!(!ok && err.contains("cannot reach the driftwatch server at https://127.0.0.1:"), "{err}");
    assert!(err.to_lowercase().contains("certificate") || err.contains("UnknownIssuer"), "{err}");
    assert!(fake.state.listed_all.lock().is_empty(), "nothing reached the service");
}
