//! The real agent binary against a minimal in-test AgentGateway over TLS (a CA from
//! driftwatch-pki; client certificates optional at the handshake, like the server's):
//! enrollment with a token file, the stored identity, connecting with the client
//! certificate (checked against `hello.host_id`), a restart without the token, renewal
//! on the stream, and the refusals that stop the agent.
//!
//! Every wait polls for a condition with a deadline.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

mod common;

use common::{Agent, OutStream, POLL, msg};
use driftwatch_pki::{AgentKey, Ca, Identity, inspect, inspect_pem};
use driftwatch_proto::v1::agent_gateway_server::{AgentGateway, AgentGatewayServer};
use driftwatch_proto::v1::{
    Ack, AgentMessage, CertificateIssued, EnrollRequest, EnrollResponse, Welcome, agent_message, server_message,
};
use parking_lot::Mutex;
use tokio::sync::{mpsc, watch};
use tokio_stream::StreamExt;
use tonic::transport::{Certificate, Identity as TlsIdentity, Server, ServerTlsConfig};
use tonic::{Request, Response, Status, Streaming};

const DEADLINE: Duration = Duration::from_secs(60);
const TOKEN: &str = "tok1.s3cret-enroll-token";
/// The id the fake server gives (the agent proposes `web-1`): the agent must use the certificate's.
const ENROLLED_AS: &str = "web-enrolled";

#[derive(Debug)]
enum Event {
    Enrolled {
        proposed: String,
        serial: String,
    },
    /// A stream's Hello, with the host in the client certificate and its serial.
    Hello {
        host_id: String,
        serial: String,
    },
    Renewed {
        serial: String,
    },
}

struct Gateway {
    ca: Arc<Ca>,
    /// Lifetime of certificates from Enroll, and from renewals.
    enroll_lifetime: Duration,
    renew_lifetime: Duration,
    /// Enroll answers UNAVAILABLE this many times first.
    unavailable: AtomicU32,
    used: Mutex<bool>,
    events: mpsc::UnboundedSender<Event>,
    /// Bumped to end every open stream (the agents reconnect).
    kick: watch::Receiver<u32>,
}

#[tonic::async_trait]
impl AgentGateway for Gateway {
    type ConnectStream = OutStream;

    async fn enroll(&self, request: Request<EnrollRequest>) -> Result<Response<EnrollResponse>, Status> {
        if self.unavailable.load(Ordering::SeqCst) > 0 {
            self.unavailable.fetch_sub(1, Ordering::SeqCst);
            return Err(Status::unavailable("starting up"));
        }
        let r = request.into_inner();
        if r.token != TOKEN {
            return Err(Status::permission_denied("unknown enrollment token"));
        }
        if std::mem::replace(&mut *self.used.lock(), true) {
            return Err(Status::permission_denied("enrollment token already used"));
        }
        let issued = self
            .ca
            .sign_request(&r.csr_pem, &Identity::Host(ENROLLED_AS.into()), self.enroll_lifetime)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let _ = self.events.send(Event::Enrolled { proposed: r.host_id, serial: issued.serial.clone() });
        Ok(Response::new(EnrollResponse {
            host_id: ENROLLED_AS.into(),
            certificate_pem: issued.cert_pem,
            ca_pem: self.ca.cert_pem().into(),
            not_after: Some(driftwatch_proto::Timestamp { seconds: issued.not_after, nanos: 0 }),
            labels: r.labels,
        }))
    }

    async fn connect(&self, request: Request<Streaming<AgentMessage>>) -> Result<Response<OutStream>, Status> {
        let peer = request
            .peer_certs()
            .and_then(|certs| certs.first().map(|c| inspect(c.as_ref())))
            .ok_or_else(|| Status::unauthenticated("a client certificate is required"))?
            .map_err(|e| Status::unauthenticated(e.to_string()))?;
        let Some(Identity::Host(peer_host)) = peer.identity.clone() else {
            return Err(Status::permission_denied("the certificate names no host"));
        };
        let mut inbound = request.into_inner();
        let (tx, rx) = mpsc::channel(64);
        let (events, ca, lifetime, mut kick) =
            (self.events.clone(), self.ca.clone(), self.renew_lifetime, self.kick.clone());
        kick.mark_unchanged();
        tokio::spawn(async move {
            loop {
                let m = tokio::select! {
                    _ = kick.changed() => return,
                    m = inbound.next() => match m {
                        Some(Ok(m)) => m,
                        _ => return,
                    },
                };
                match m.kind {
                    Some(agent_message::Kind::Hello(h)) => {
                        if h.host_id != peer_host {
                            let _ =
                                tx.send(Err(Status::permission_denied("hello.host_id is not the certificate's"))).await;
                            return;
                        }
                        let _ = events.send(Event::Hello { host_id: h.host_id, serial: peer.serial.clone() });
                        let welcome = Welcome { acked_seq: h.last_acked_seq, settings: None, ..Default::default() };
                        let _ = tx.send(msg(server_message::Kind::Welcome(welcome))).await;
                    }
                    Some(agent_message::Kind::Snapshot(s)) => {
                        let _ = tx.send(msg(server_message::Kind::Ack(Ack { seq: s.seq }))).await;
                    }
                    Some(agent_message::Kind::RenewCertificate(r)) => {
                        let answer = match ca.sign_request(&r.csr_pem, &Identity::Host(peer_host.clone()), lifetime) {
                            Ok(issued) => {
                                let _ = events.send(Event::Renewed { serial: issued.serial.clone() });
                                CertificateIssued {
                                    certificate_pem: issued.cert_pem,
                                    not_after: Some(driftwatch_proto::Timestamp {
                                        seconds: issued.not_after,
                                        nanos: 0,
                                    }),
                                    error: String::new(),
                                }
                            }
                            Err(e) => CertificateIssued { error: e.to_string(), ..Default::default() },
                        };
                        let _ = tx.send(msg(server_message::Kind::CertificateIssued(answer))).await;
                    }
                    _ => {}
                }
            }
        });
        Ok(Response::new(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))))
    }
}

struct Fake {
    url: String,
    ca_file: PathBuf,
    events: mpsc::UnboundedReceiver<Event>,
    kick: watch::Sender<u32>,
}

async fn fake(dir: &Path, enroll_lifetime: Duration, unavailable: u32) -> Fake {
    let ca = Arc::new(Ca::generate("enroll test CA").unwrap());
    let ca_file = dir.join("ca.pem");
    std::fs::write(&ca_file, ca.cert_pem()).unwrap();
    let server_cert = ca.issue_server(&["localhost".into(), "127.0.0.1".into()], Duration::from_secs(3600)).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("https://127.0.0.1:{}", listener.local_addr().unwrap().port());
    let (events_tx, events) = mpsc::unbounded_channel();
    let (kick, kick_rx) = watch::channel(0);
    let gateway = Gateway {
        ca: ca.clone(),
        enroll_lifetime,
        renew_lifetime: Duration::from_secs(3600),
        unavailable: AtomicU32::new(unavailable),
        used: Mutex::new(false),
        events: events_tx,
        kick: kick_rx,
    };
    let tls = ServerTlsConfig::new()
        .identity(TlsIdentity::from_pem(&server_cert.cert_pem, &server_cert.key_pem))
        .client_ca_root(Certificate::from_pem(ca.cert_pem()))
        .client_auth_optional(true);
    tokio::spawn(
        Server::builder()
            .tls_config(tls)
            .unwrap()
            .add_service(AgentGatewayServer::new(gateway))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    Fake { url, ca_file, events, kick }
}

impl Fake {
    /// The next event matching `want`, within the deadline.
    async fn wait_for<T>(&mut self, what: &str, agent: &mut Agent, mut want: impl FnMut(&Event) -> Option<T>) -> T {
        let deadline = Instant::now() + DEADLINE;
        loop {
            agent.check_running();
            match tokio::time::timeout(POLL * 10, self.events.recv()).await {
                Ok(Some(e)) => {
                    if let Some(t) = want(&e) {
                        return t;
                    }
                }
                Ok(None) => panic!("server gone"),
                Err(_) => {}
            }
            assert!(Instant::now() < deadline, "timed out waiting for {what}\n--- agent log ---\n{}", agent.log());
        }
    }
}

/// The agent under test: TLS to the fake server trusting its CA, enrolling with
/// `token_file` if given.
fn start_agent(fake: &Fake, dir: &Path, token_file: Option<&Path>, run: u32) -> Agent {
    Agent::spawn(dir, run, |cmd| {
        cmd.args(["--server", &fake.url, "--host-id", "web-1"]).arg("--ca-file").arg(&fake.ca_file);
        if let Some(t) = token_file {
            cmd.arg("--enroll-token-file").arg(t);
        }
    })
}

async fn wait_until(what: &str, agent: &mut Agent, cond: impl FnMut() -> bool) {
    common::wait_until(what, agent, DEADLINE, cond).await
}

fn setup() -> (tempfile::TempDir, PathBuf) {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path().canonicalize().unwrap();
    std::fs::create_dir_all(dir.join("app")).unwrap();
    std::fs::write(dir.join("app/app.env"), "PORT=8080\n").unwrap();
    (t, dir)
}

fn token_file(dir: &Path, token: &str) -> PathBuf {
    let p = dir.join("token");
    std::fs::write(&p, format!("{token}\n")).unwrap();
    p
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

/// The stored key and certificate belong together; the certificate's serial.
fn stored_serial(dir: &Path) -> Option<String> {
    let key = std::fs::read_to_string(dir.join("state/identity/key.pem")).ok()?;
    let cert = inspect_pem(&std::fs::read_to_string(dir.join("state/identity/cert.pem")).ok()?).ok()?;
    (cert.public_key_der == AgentKey::from_pem(&key).ok()?.public_key_der()).then_some(cert.serial)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enrolls_with_a_token_then_connects_with_its_certificate_also_after_a_restart() {
    let (_t, dir) = setup();
    // The first Enroll finds the server unavailable: the agent backs off and tries again.
    let mut fake = fake(&dir, Duration::from_secs(3600), 1).await;
    let token = token_file(&dir, TOKEN);
    let mut agent = start_agent(&fake, &dir, Some(&token), 1);
    let (proposed, serial) = fake
        .wait_for("the enrollment", &mut agent, |e| match e {
            Event::Enrolled { proposed, serial } => Some((proposed.clone(), serial.clone())),
            _ => None,
        })
        .await;
    assert_eq!(proposed, "web-1", "the agent proposes its configured host id");
    let (host, hello_serial) = fake
        .wait_for("a stream with the client certificate", &mut agent, |e| match e {
            Event::Hello { host_id, serial } => Some((host_id.clone(), serial.clone())),
            _ => None,
        })
        .await;
    assert_eq!(host, ENROLLED_AS, "hello carries the certificate's host id, not the proposed one");
    assert_eq!(hello_serial, serial);
    let id_dir = dir.join("state/identity");
    assert_eq!(mode(&id_dir), 0o700);
    assert_eq!(mode(&id_dir.join("key.pem")), 0o600);
    assert_eq!(stored_serial(&dir).as_deref(), Some(serial.as_str()), "key and certificate stored as a pair");
    let log = agent.log();
    assert!(!log.contains(TOKEN) && !log.contains("s3cret"), "the token is never logged\n{log}");
    assert!(log.contains("enrolled") && log.contains("using the certificate's"), "{log}");
    agent.kill();

    // A restart without the token (the file is gone too) connects with the stored identity.
    std::fs::remove_file(&token).unwrap();
    let mut agent = start_agent(&fake, &dir, None, 2);
    let (host, again) = fake
        .wait_for("the restarted agent's stream", &mut agent, |e| match e {
            Event::Hello { host_id, serial } => Some((host_id.clone(), serial.clone())),
            Event::Enrolled { .. } => panic!("enrolled twice"),
            _ => None,
        })
        .await;
    assert_eq!((host.as_str(), again.as_str()), (ENROLLED_AS, serial.as_str()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_lived_certificate_is_renewed_on_the_stream_and_used_on_the_next_connect() {
    let (_t, dir) = setup();
    // 6 s from the server; issued certificates start 5 minutes back, so the agent is
    // past two thirds of the lifetime at once and asks right after Welcome.
    let mut fake = fake(&dir, Duration::from_secs(6), 0).await;
    let token = token_file(&dir, TOKEN);
    let mut agent = start_agent(&fake, &dir, Some(&token), 1);
    let first = fake
        .wait_for("the enrollment", &mut agent, |e| match e {
            Event::Enrolled { serial, .. } => Some(serial.clone()),
            _ => None,
        })
        .await;
    let renewed = fake
        .wait_for("a renew_certificate on the stream", &mut agent, |e| match e {
            Event::Renewed { serial } => Some(serial.clone()),
            _ => None,
        })
        .await;
    assert_ne!(renewed, first);
    let d = dir.clone();
    wait_until("the renewed certificate stored with its new key", &mut agent, || {
        stored_serial(&d).as_deref() == Some(renewed.as_str())
    })
    .await;
    assert_eq!(mode(&dir.join("state/identity/key.pem")), 0o600);
    let names: Vec<String> = std::fs::read_dir(dir.join("state/identity"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names.len(), 2, "only key.pem and cert.pem are left: {names:?}");

    // The server ends the stream: the agent comes back with the renewed certificate.
    fake.kick.send_modify(|n| *n += 1);
    let serial = fake
        .wait_for("a stream with the renewed certificate", &mut agent, |e| match e {
            Event::Hello { serial, .. } if *serial != first => Some(serial.clone()),
            _ => None,
        })
        .await;
    assert_eq!(serial, renewed);
    assert!(agent.log().contains("certificate renewed and stored"), "{}", agent.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_token_stops_the_agent_with_the_servers_message() {
    let (_t, dir) = setup();
    let fake = fake(&dir, Duration::from_secs(3600), 0).await;
    let token = token_file(&dir, "tok9.wrong-secret");
    let mut agent = start_agent(&fake, &dir, Some(&token), 1);
    let status = agent.exit(DEADLINE).await;
    let log = agent.log();
    assert!(!status.success(), "{log}");
    assert!(log.contains("enrollment refused by the server (permission denied): unknown enrollment token"), "{log}");
    assert!(!log.contains("wrong-secret"), "the token is never logged\n{log}");
    // The key stays for the next attempt; no certificate.
    assert!(dir.join("state/identity/key.pem").exists());
    assert!(!dir.join("state/identity/cert.pem").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_certificate_or_a_token_the_agent_says_how_to_enroll() {
    let (_t, dir) = setup();
    let fake = fake(&dir, Duration::from_secs(3600), 0).await;
    let mut agent = start_agent(&fake, &dir, None, 1);
    let status = agent.exit(DEADLINE).await;
    let log = agent.log();
    assert!(!status.success(), "{log}");
    assert!(log.contains("not enrolled: pass --enroll-token-file"), "{log}");
}
