//! A fleet over a real network, with the real binaries: agents enroll with a token,
//! stream over mutual TLS, renew their certificates, and take corrections; a revoked
//! host is cut off. One test on loopback, one across network namespaces (each host
//! its own address; needs root and iproute2, and removes what it makes).

use std::path::Path;
use std::time::Duration;

use driftwatch_agent::AgentFile;
use driftwatch_proto::bearer::Bearer;
use driftwatch_proto::v1::{self, changes_client::ChangesClient, fleet_client::FleetClient};
use driftwatch_server::ServerConfig;
use driftwatch_tests::netns::{Lab, SERVER_ADDR, block_in_netns};
use driftwatch_tests::tls::{admin_channel, create_token, server_ca, tls_channel, tls_url};
use driftwatch_tests::*;

const T: Duration = Duration::from_secs(60);

/// An agent config for `url` over TLS with a token file (written next to the config).
fn tls_agent(dir: &Path, url: &str, host: &str, ca: &Path, token: Option<&str>, watch: &Path) -> AgentFile {
    let token_file = token.map(|t| {
        let p = dir.join("token.txt");
        std::fs::create_dir_all(dir).unwrap();
        std::fs::write(&p, format!("{t}\n")).unwrap();
        p
    });
    AgentFile {
        insecure: None,
        ca_file: Some(ca.to_path_buf()),
        enroll_token_file: token_file,
        writable: vec![watch.display().to_string()],
        ..agent_file(url, host, &dir.join("state"), &[format!("{}/*.env", watch.display())])
    }
}

fn token_req(labels: &[(&str, &str)], pattern: &str, uses: u32) -> v1::CreateEnrollTokenRequest {
    v1::CreateEnrollTokenRequest {
        labels: labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        host_id_pattern: pattern.into(),
        max_uses: uses,
        ..Default::default()
    }
}

async fn host_of(fleet: &FleetClient<tonic::transport::Channel>, id: &str) -> Option<v1::Host> {
    fleet.clone().get_host(v1::GetHostRequest { host_id: id.into() }).await.ok().map(|r| r.into_inner())
}

fn online(h: &v1::Host) -> bool {
    h.summary.as_ref().is_some_and(|s| s.state == v1::ConnectionState::Online as i32)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_agent_enrolls_renews_restarts_without_its_token_and_is_cut_off_when_revoked() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = ServerConfig::for_tests_tls(dir.path().join("server"));
    // Short-lived certificates: the agent renews at two thirds, about 8 s in.
    config.tls.as_mut().unwrap().cert_lifetime = Duration::from_secs(12);
    let server = start_server_with(config).await;
    let (url, ca_pem) = (tls_url(&server), server_ca(&dir.path().join("server")));
    let ca = dir.path().join("server/tls/ca.pem");
    let token =
        create_token(&url, &ca_pem, &dir.path().join("server"), token_req(&[("env", "production")], "real-*", 1)).await;
    let watch = dir.path().join("etc");
    std::fs::create_dir_all(&watch).unwrap();
    std::fs::write(watch.join("app.env"), "WORKERS=8\n").unwrap();
    let agent_dir = dir.path().join("agent");
    let file = tls_agent(&agent_dir, &url, "real-1", &ca, Some(&token), &watch);
    let mut agent = AgentProcess::start(&agent_dir, &file);

    let fleet = FleetClient::new(admin_channel(&url, &ca_pem, &dir.path().join("server")).await);
    let first = wait_for("the agent enrolled and streaming", T, || async {
        host_of(&fleet, "real-1").await.filter(|h| online(h) && h.files.len() == 1)
    })
    .await;
    let summary = first.summary.unwrap();
    assert_eq!(summary.labels.get("env").map(String::as_str), Some("production"), "labels from the token");
    let identity = summary.identity.unwrap();
    assert!(identity.enrolled, "{identity:?}");
    let key = agent_dir.join("state/identity/key.pem");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(&key).unwrap().permissions().mode() & 0o777, 0o600);

    // Renewal at two thirds of the lifetime, on the stream: a new serial, stored by the agent.
    let renewed = wait_for("a renewed certificate", T, || async {
        let h = host_of(&fleet, "real-1").await?;
        let i = h.summary?.identity?;
        (i.certificate_serial != identity.certificate_serial).then_some(i.certificate_serial)
    })
    .await;
    wait_for("the agent stored the renewed certificate", T, || async {
        let pem = std::fs::read_to_string(agent_dir.join("state/identity/cert.pem")).ok()?;
        (driftwatch_pki::inspect_pem(&pem).ok()?.serial == renewed).then_some(())
    })
    .await;

    // A restart needs no token: the stored certificate is enough.
    agent.stop().await;
    std::fs::remove_file(agent_dir.join("token.txt")).unwrap();
    agent.start_again_with(&AgentFile { enroll_token_file: None, ..file.clone() });
    wait_for("back online without a token", T, || async { host_of(&fleet, "real-1").await.filter(online) }).await;

    // Revocation cuts the stream, and the agent cannot come back.
    let mut f = fleet.clone();
    f.revoke_host(v1::RevokeHostRequest { host_id: "real-1".into(), reason: "test".into() }).await.unwrap();
    wait_for("the revoked host offline", T, || async { host_of(&fleet, "real-1").await.filter(|h| !online(h)) }).await;
    let log = wait_for("the agent to say it was revoked", T, || async {
        let log = agent.log();
        log.contains("revoked").then_some(log)
    })
    .await;
    assert!(log.contains("revoked"), "{log}");
    let h = host_of(&fleet, "real-1").await.unwrap();
    assert!(!online(&h), "still refused after its retries");
    agent.stop().await;
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_on_other_hosts_enroll_stream_over_mutual_tls_and_take_a_correction() {
    if !driftwatch_tests::privilege::require("network namespaces", driftwatch_tests::netns::unavailable()) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let lab = Lab::new(2).expect("namespaces");
    let data = dir.path().join("server");
    let mut cmd = Lab::command(&lab.server, server_binary());
    cmd.args(["--listen", "0.0.0.0:50051", "--metrics-listen", "off", "--tls-san", SERVER_ADDR, "--log", "info"])
        .arg("--data")
        .arg(&data);
    let mut server = ChildProcess::spawn("driftwatch-server", cmd, Some(&dir.path().join("server.log"))).unwrap();
    let ca_path = data.join("tls/ca.pem");

    // The operator, on the server's host (its loopback): wait for the server, make a
    // token with the admin token the first start wrote.
    let ca_file = ca_path.clone();
    let admin_file = data.join("admin.token");
    let token = tokio::task::spawn_blocking({
        let ns = lab.server.clone();
        move || {
            block_in_netns(&ns, move || async move {
                let ca = wait_for("the server's CA", T, || async { std::fs::read_to_string(&ca_file).ok() }).await;
                let ch = wait_for("the server listening", T, || async {
                    tls_channel("https://localhost:50051", &ca, None).await.ok()
                })
                .await;
                let admin = std::fs::read_to_string(&admin_file).expect("DATA/admin.token");
                v1::enrollment_client::EnrollmentClient::with_interceptor(ch, Bearer::new(Some(&admin)).unwrap())
                    .create_enroll_token(token_req(&[("env", "lab")], "lab-*", 2))
                    .await
                    .expect("a token from the server's host")
                    .into_inner()
                    .secret
            })
        }
    })
    .await
    .unwrap();

    // Two agents, each in its own namespace with its own address.
    let url = format!("https://{SERVER_ADDR}:50051");
    let mut agents = Vec::new();
    let mut files = Vec::new();
    for (i, ns) in lab.agents.iter().enumerate() {
        let watch = dir.path().join(format!("host{i}/etc"));
        std::fs::create_dir_all(&watch).unwrap();
        std::fs::write(watch.join("app.env"), "# workers\nWORKERS=8\n").unwrap();
        let adir = dir.path().join(format!("host{i}/agent"));
        let file = tls_agent(&adir, &url, &format!("lab-{i}"), &ca_path, Some(&token), &watch);
        agents.push(AgentProcess::start_in_netns(ns, &adir, &file));
        files.push(watch.join("app.env"));
    }

    // From the server's host: both enrolled and streaming; a correction reaches lab-0.
    let target = files[0].display().to_string();
    let ca_file = ca_path.clone();
    let result = tokio::task::spawn_blocking({
        let ns = lab.server.clone();
        let data = data.clone();
        move || {
            block_in_netns(&ns, move || async move {
                let ca = std::fs::read_to_string(&ca_file).unwrap();
                let ch = admin_channel("https://localhost:50051", &ca, &data).await;
                let fleet = FleetClient::new(ch.clone());
                for id in ["lab-0", "lab-1"] {
                    wait_for(&format!("{id} enrolled and streaming"), T, || async {
                        host_of(&fleet, id).await.filter(|h| online(h) && h.files.len() == 1)
                    })
                    .await;
                }
                ChangesClient::new(ch)
                    .correct(v1::CorrectRequest {
                        host_id: "lab-0".into(),
                        path: target,
                        action: Some(v1::correct_request::Action::SetKeys(v1::SetKeys {
                            values: [("WORKERS".to_string(), "9".to_string())].into(),
                            remove: Vec::new(),
                        })),
                        reason: "multi-host test".into(),
                        ..Default::default()
                    })
                    .await
                    .map(|r| r.into_inner())
            })
        }
    })
    .await
    .unwrap()
    .expect("the correction is answered");
    let outcome = result.result.unwrap().outcome;
    assert_eq!(outcome, v1::ChangeOutcome::Applied as i32);
    assert_eq!(std::fs::read_to_string(&files[0]).unwrap(), "# workers\nWORKERS=9\n", "comments kept");
    assert_eq!(std::fs::read_to_string(&files[1]).unwrap(), "# workers\nWORKERS=8\n", "the other host untouched");

    // From another host: without credentials refused; with a token, served over the network.
    let ca_file = ca_path.clone();
    let bearer = Bearer::new(Some(&std::fs::read_to_string(data.join("admin.token")).unwrap())).unwrap();
    let (refused, listed) = tokio::task::spawn_blocking({
        let ns = lab.agents[1].clone();
        move || {
            block_in_netns(&ns, move || async move {
                let ca = std::fs::read_to_string(&ca_file).unwrap();
                let ch = tls_channel(&format!("https://{SERVER_ADDR}:50051"), &ca, None).await.unwrap();
                let refused = FleetClient::new(ch.clone()).list_hosts(v1::ListHostsRequest::default()).await;
                let listed =
                    FleetClient::with_interceptor(ch, bearer).list_hosts(v1::ListHostsRequest::default()).await;
                (refused.unwrap_err(), listed.unwrap().into_inner())
            })
        }
    })
    .await
    .unwrap();
    assert_eq!(refused.code(), tonic::Code::Unauthenticated, "{}", refused.message());
    assert_eq!(listed.hosts.len(), 2, "{listed:?}");

    for a in &mut agents {
        a.stop().await;
    }
    server.stop(Duration::from_secs(10)).await;
    drop(lab);
}
