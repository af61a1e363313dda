//! Limits on every input, end to end: each is hit with a small configured value. The
//! offender gets a status naming the limit, its value and its config key; the limit's
//! metric (`driftwatch_limit_hits_total{limit}`) counts it; another host or client is
//! still served. Retention-like limits (offline hosts, file history) run with a short
//! interval and tiny ages. Under `--insecure` every operator call is one principal
//! (`insecure-local`): principals apart are the unit tests' (`limits::PrincipalSlots`).

use std::path::{Path, PathBuf};
use std::time::Duration;

use driftwatch_agent::RunningAgent;
use driftwatch_proto::v1::{self, alerts_client::AlertsClient, changes_client::ChangesClient, server_message};
use driftwatch_server::{RunningServer, ServerConfig};
use driftwatch_tests::gateway::{AgentTx, hello, open_agent_stream, snapshot};
use driftwatch_tests::*;
use tokio_stream::StreamExt;
use tonic::transport::Channel;
use tonic::{Code, Status};

const WAIT: Duration = Duration::from_secs(20);

async fn server_with(dir: &Path, f: impl FnOnce(&mut ServerConfig)) -> RunningServer {
    let mut cfg = ServerConfig::for_tests(dir.join("server"));
    f(&mut cfg);
    start_server_with(cfg).await
}

/// The status has `code` and names the limit's key and value.
fn assert_limit(status: &Status, code: Code, key: &str, value: &str) {
    assert_eq!(status.code(), code, "{status:?}");
    let m = status.message();
    assert!(m.contains(&format!("the limit is {value} ([limits] {key} in the server config file")), "{m}");
}

/// Wait until the limit `key` has been hit at least `n` times.
async fn wait_hits(server: &RunningServer, key: &'static str, n: u64) {
    wait_for(&format!("{n} hits of {key}"), WAIT, || {
        let hits = server.metrics.limit_hits(key);
        async move { (hits >= n).then_some(()) }
    })
    .await;
}

/// A real agent watching `dir/<host>/app.env` (written with `content`).
async fn real_agent(server: &RunningServer, dir: &Path, host: &str, content: &str) -> (RunningAgent, PathBuf) {
    let files = dir.join(host);
    std::fs::create_dir_all(&files).unwrap();
    let file = files.join("app.env");
    std::fs::write(&file, content).unwrap();
    let agent =
        start_agent(agent_config(server, host, &dir.join(format!("{host}-state")), &[file.display().to_string()]))
            .await;
    (agent, file)
}

/// The host's agent is still served: an edit of its file reaches the server.
async fn still_served(server: &RunningServer, host: &str, file: &Path, value: i64) {
    let mut fleet = fleet_client(server).await;
    // Replaced whole: the agent never reads a half-written file (a version without A).
    driftwatch_tests::files::replace_file(file, &format!("A={value}\n"));
    wait_file(&mut fleet, host, file, "an edit on a host that broke no limit", |s| {
        key(s, "A") == Some(&v1::Value::int(value))
    })
    .await;
}

/// A protocol-level host (for what a real agent will not send, and to read the status
/// its stream ends with).
struct RawHost {
    tx: AgentTx,
    inbound: tonic::Streaming<v1::ServerMessage>,
    seq: u64,
}

impl RawHost {
    async fn connect(server: &RunningServer, host: &str, labels: &[(&str, &str)]) -> Result<Self, Status> {
        let labels = labels.iter().map(|(k, v)| (k.to_string(), v.to_string()));
        let channel = connect(&server_url(server)).await;
        let (tx, inbound) = open_agent_stream(channel, hello(host, labels, "test", "raw")).await?;
        Ok(Self { tx, inbound, seq: 0 })
    }

    /// Send a snapshot of `files`: Ok once acknowledged, else the status the stream ended with.
    async fn send(&mut self, files: Vec<v1::FileState>) -> Result<(), Status> {
        self.seq += 1;
        let snap = v1::Snapshot { seq: self.seq, files, ..Default::default() };
        self.tx.send(snapshot(snap)).map_err(|_| Status::unavailable("stream closed"))?;
        let seq = self.seq;
        tokio::time::timeout(WAIT, async {
            loop {
                match self.inbound.next().await {
                    Some(Ok(v1::ServerMessage { kind: Some(server_message::Kind::Ack(a)) })) if a.seq >= seq => {
                        return Ok(());
                    }
                    Some(Ok(_)) => {}
                    Some(Err(s)) => return Err(s),
                    None => return Err(Status::unavailable("stream ended without a status")),
                }
            }
        })
        .await
        .expect("an ack or a status")
    }

    /// The next change the server sends down this stream.
    async fn next_change(&mut self) -> v1::ApplyChange {
        tokio::time::timeout(WAIT, async {
            loop {
                match self.inbound.next().await {
                    Some(Ok(v1::ServerMessage { kind: Some(server_message::Kind::ApplyChange(c)) })) => return c,
                    Some(Ok(_)) => {}
                    other => panic!("stream ended: {other:?}"),
                }
            }
        })
        .await
        .expect("a change")
    }

    fn answer(&self, change: &v1::ApplyChange, outcome: v1::ChangeOutcome) {
        let result = v1::ChangeResult {
            change_id: change.change_id.clone(),
            outcome: outcome as i32,
            message: "test".into(),
            path: change.path.clone(),
            ..Default::default()
        };
        let msg = v1::AgentMessage { kind: Some(v1::agent_message::Kind::ChangeResult(result)) };
        self.tx.send(msg).unwrap();
    }
}

/// An env file state with `keys` keys whose values are `pad` bytes long.
fn file_state(path: &str, keys: usize, pad: usize) -> v1::FileState {
    v1::FileState {
        path: path.into(),
        format: v1::Format::Env as i32,
        status: v1::FileStatus::Ok as i32,
        exists: true,
        content_hash: "ab".repeat(32),
        keys: (0..keys)
            .map(|i| v1::KeyValue { key: format!("K{i}"), value: Some(v1::Value::string("x".repeat(pad))) })
            .collect(),
        ..Default::default()
    }
}

async fn file_count(server: &RunningServer, host: &str) -> u32 {
    let mut fleet = fleet_client(server).await;
    let h = fleet.get_host(v1::GetHostRequest { host_id: host.into() }).await.unwrap().into_inner();
    h.summary.unwrap().file_count
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_per_host() {
    let dir = tempfile::tempdir().unwrap();
    let server = server_with(dir.path(), |c| c.limits.max_files_per_host = 3).await;
    // A real agent watching five files: its listing is refused whole (and retried).
    let many = dir.path().join("many");
    std::fs::create_dir_all(&many).unwrap();
    for i in 0..5 {
        std::fs::write(many.join(format!("f{i}.env")), "A=1\n").unwrap();
    }
    let glob = format!("{}/*", many.display());
    let offender = start_agent(agent_config(&server, "many", &dir.path().join("many-state"), &[glob])).await;
    let (other, other_file) = real_agent(&server, dir.path(), "other", "A=1\n").await;
    wait_hits(&server, "max_files_per_host", 1).await;
    assert_eq!(file_count(&server, "many").await, 0, "nothing of a refused snapshot is applied");

    // What the offender is told, on a protocol-level stream.
    let mut raw = RawHost::connect(&server, "raw", &[]).await.unwrap();
    raw.send(vec![file_state("/etc/a.env", 1, 1), file_state("/etc/b.env", 1, 1)]).await.unwrap();
    let status = raw.send(vec![file_state("/etc/c.env", 1, 1), file_state("/etc/d.env", 1, 1)]).await.unwrap_err();
    assert_limit(&status, Code::ResourceExhausted, "max_files_per_host", "3");
    assert!(status.message().contains("host 'raw' would hold 4 files"), "{}", status.message());
    assert_eq!(file_count(&server, "raw").await, 2, "what it held before stays");

    still_served(&server, "other", &other_file, 2).await;
    offender.stop().await.unwrap();
    other.stop().await.unwrap();
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytes_per_host() {
    let dir = tempfile::tempdir().unwrap();
    let server = server_with(dir.path(), |c| c.limits.max_bytes_per_host = 4096).await;
    // A real agent with a 6 KiB file: its parsed state is over the limit.
    let big = dir.path().join("big.env");
    std::fs::write(&big, (0..60).map(|i| format!("KEY_{i}={}\n", "v".repeat(90))).collect::<String>()).unwrap();
    let offender =
        start_agent(agent_config(&server, "big", &dir.path().join("big-state"), &[big.display().to_string()])).await;
    let (other, other_file) = real_agent(&server, dir.path(), "other", "A=1\n").await;
    wait_hits(&server, "max_bytes_per_host", 1).await;
    assert_eq!(file_count(&server, "big").await, 0);

    let mut raw = RawHost::connect(&server, "raw", &[]).await.unwrap();
    raw.send(vec![file_state("/etc/a.env", 1, 1000)]).await.unwrap();
    // A new version replaces the old one: counted once.
    raw.send(vec![file_state("/etc/a.env", 1, 3000)]).await.unwrap();
    let status = raw.send(vec![file_state("/etc/b.env", 1, 2000)]).await.unwrap_err();
    assert_limit(&status, Code::ResourceExhausted, "max_bytes_per_host", "4096");
    assert!(status.message().contains("bytes of file state"), "{}", status.message());

    still_served(&server, "other", &other_file, 2).await;
    offender.stop().await.unwrap();
    other.stop().await.unwrap();
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_per_file() {
    let dir = tempfile::tempdir().unwrap();
    let server = server_with(dir.path(), |c| c.limits.max_keys_per_file = 5).await;
    let wide = dir.path().join("wide.env");
    std::fs::write(&wide, (0..8).map(|i| format!("K{i}={i}\n")).collect::<String>()).unwrap();
    let offender =
        start_agent(agent_config(&server, "wide", &dir.path().join("wide-state"), &[wide.display().to_string()])).await;
    let (other, other_file) = real_agent(&server, dir.path(), "other", "A=1\nB=2\nC=3\n").await;
    wait_hits(&server, "max_keys_per_file", 1).await;
    assert_eq!(file_count(&server, "wide").await, 0);

    let mut raw = RawHost::connect(&server, "raw", &[]).await.unwrap();
    raw.send(vec![file_state("/etc/ok.env", 5, 1)]).await.unwrap();
    let status = raw.send(vec![file_state("/etc/wide.env", 6, 1)]).await.unwrap_err();
    assert_limit(&status, Code::ResourceExhausted, "max_keys_per_file", "5");
    assert!(status.message().contains("6 keys for /etc/wide.env"), "{}", status.message());

    still_served(&server, "other", &other_file, 2).await;
    offender.stop().await.unwrap();
    other.stop().await.unwrap();
    server.stop().await.unwrap();
}

fn small_labels(c: &mut ServerConfig) {
    c.limits.max_labels = 2;
    c.limits.max_label_key_bytes = 8;
    c.limits.max_label_value_bytes = 10;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn labels_at_hello() {
    let dir = tempfile::tempdir().unwrap();
    let server = server_with(dir.path(), small_labels).await;
    let (other, other_file) = real_agent(&server, dir.path(), "other", "A=1\n").await;

    /// Labels of a Hello, and the status they get: code, limit, value.
    type Case<'a> = (&'a [(&'a str, &'a str)], Code, &'a str, &'a str);
    let cases: [Case; 3] = [
        (&[("a", "1"), ("b", "2"), ("c", "3")], Code::ResourceExhausted, "max_labels", "2"),
        (&[("much-too-long", "1")], Code::InvalidArgument, "max_label_key_bytes", "8"),
        (&[("env", "production-eu")], Code::InvalidArgument, "max_label_value_bytes", "10"),
    ];
    for (labels, code, limit, value) in cases {
        let status = RawHost::connect(&server, "labelled", labels).await.err().expect("refused");
        assert_limit(&status, code, limit, value);
        assert_eq!(server.metrics.limit_hits(limit), 1, "{limit}");
    }
    // Within the limits, the same host id is welcome.
    RawHost::connect(&server, "labelled", &[("env", "prod"), ("team", "ops")]).await.unwrap();

    still_served(&server, "other", &other_file, 2).await;
    other.stop().await.unwrap();
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn set_host_labels() {
    let dir = tempfile::tempdir().unwrap();
    let server = server_with(dir.path(), small_labels).await;
    let (h1, _) = real_agent(&server, dir.path(), "h1", "A=1\n").await;
    let (h2, h2_file) = real_agent(&server, dir.path(), "h2", "A=1\n").await;
    let mut fleet = fleet_client(&server).await;
    wait_for("h1 known", WAIT, || {
        let mut f = fleet.clone();
        async move { f.get_host(v1::GetHostRequest { host_id: "h1".into() }).await.ok().map(|_| ()) }
    })
    .await;
    let set = |pairs: &[(&str, &str)]| v1::SetHostLabelsRequest {
        host_id: "h1".into(),
        set: pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        ..Default::default()
    };
    // h1 has env=test: two more would be three.
    let status = fleet.set_host_labels(set(&[("a", "1"), ("b", "2")])).await.unwrap_err();
    assert_limit(&status, Code::ResourceExhausted, "max_labels", "2");
    assert!(status.message().contains("SetHostLabels for host 'h1': 3 labels"), "{}", status.message());
    let status = fleet.set_host_labels(set(&[("team", "operations!")])).await.unwrap_err();
    assert_limit(&status, Code::InvalidArgument, "max_label_value_bytes", "10");
    let status = fleet.set_host_labels(set(&[("much-too-long", "x")])).await.unwrap_err();
    assert_limit(&status, Code::InvalidArgument, "max_label_key_bytes", "8");
    for key in ["max_labels", "max_label_value_bytes", "max_label_key_bytes"] {
        assert_eq!(server.metrics.limit_hits(key), 1, "{key}");
    }
    let labels = |h: v1::Host| h.summary.unwrap().labels;
    let now = fleet.get_host(v1::GetHostRequest { host_id: "h1".into() }).await.unwrap().into_inner();
    assert_eq!(labels(now).len(), 1, "refused changes change nothing");
    // Within the limits, the same call is served.
    let done = fleet.set_host_labels(set(&[("team", "ops")])).await.unwrap().into_inner();
    assert_eq!(labels(done).get("team").map(String::as_str), Some("ops"));

    still_served(&server, "h2", &h2_file, 2).await;
    h1.stop().await.unwrap();
    h2.stop().await.unwrap();
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribers_per_principal() {
    let dir = tempfile::tempdir().unwrap();
    let server = server_with(dir.path(), |c| c.limits.max_subscribers_per_principal = 2).await;
    let (other, other_file) = real_agent(&server, dir.path(), "other", "A=1\n").await;
    let channel = connect(&server_url(&server)).await;
    let mut alerts = AlertsClient::new(channel.clone());
    let mut changes = ChangesClient::new(channel);
    let first = alerts.subscribe(v1::SubscribeRequest::default()).await.unwrap().into_inner();
    let _second = alerts.subscribe(v1::SubscribeRequest::default()).await.unwrap().into_inner();
    let status = alerts.subscribe(v1::SubscribeRequest::default()).await.unwrap_err();
    assert_limit(&status, Code::ResourceExhausted, "max_subscribers_per_principal", "2");
    assert!(status.message().contains("'insecure-local' already has 2"), "{}", status.message());
    // WatchRollout streams count with Subscribe's (refused before the id is looked at).
    let status = changes.watch_rollout(v1::WatchRolloutRequest { id: "r-none".into() }).await.unwrap_err();
    assert_limit(&status, Code::ResourceExhausted, "max_subscribers_per_principal", "2");
    assert_eq!(server.metrics.limit_hits("max_subscribers_per_principal"), 2);

    // Other calls and agents are served meanwhile.
    alerts.list_silences(v1::ListSilencesRequest::default()).await.unwrap();
    still_served(&server, "other", &other_file, 2).await;
    // A closed stream gives its place back.
    drop(first);
    let third = wait_for("a place after a stream closed", WAIT, || {
        let mut a = alerts.clone();
        async move { a.subscribe(v1::SubscribeRequest::default()).await.ok() }
    })
    .await;
    drop(third);
    other.stop().await.unwrap();
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn active_silences() {
    let dir = tempfile::tempdir().unwrap();
    let server = server_with(dir.path(), |c| c.limits.max_active_silences = 2).await;
    let (other, other_file) = real_agent(&server, dir.path(), "other", "A=1\n").await;
    let mut alerts = AlertsClient::new(connect(&server_url(&server)).await);
    let create = |host: &str| v1::CreateSilenceRequest {
        matchers: vec![driftwatch_server::silences::parse_matcher(&format!("host={host}")).unwrap()],
        duration: Some(driftwatch_proto::duration::seconds(3600)),
        comment: "maintenance".into(),
        ..Default::default()
    };
    let first = alerts.create_silence(create("a")).await.unwrap().into_inner();
    alerts.create_silence(create("b")).await.unwrap();
    let status = alerts.create_silence(create("c")).await.unwrap_err();
    assert_limit(&status, Code::ResourceExhausted, "max_active_silences", "2");
    assert!(status.message().contains("2 silences are active or pending"), "{}", status.message());
    assert_eq!(server.metrics.limit_hits("max_active_silences"), 1);
    let listed = alerts.list_silences(v1::ListSilencesRequest::default()).await.unwrap().into_inner();
    assert_eq!(listed.silences.len(), 2, "the refused one was not created");

    still_served(&server, "other", &other_file, 2).await;
    // An expired silence frees its place.
    alerts.expire_silence(v1::ExpireSilenceRequest { id: first.id }).await.unwrap();
    alerts.create_silence(create("c")).await.unwrap();
    other.stop().await.unwrap();
    server.stop().await.unwrap();
}

async fn rollout_state(changes: &mut ChangesClient<Channel>, id: &str) -> i32 {
    changes.get_rollout(v1::GetRolloutRequest { id: id.into() }).await.unwrap().into_inner().state
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollouts_per_principal() {
    let dir = tempfile::tempdir().unwrap();
    let server = server_with(dir.path(), |c| c.limits.max_rollouts_per_principal = 1).await;
    let (other, other_file) = real_agent(&server, dir.path(), "other", "A=1\n").await;
    let mut host = RawHost::connect(&server, "canary", &[("role", "canary")]).await.unwrap();
    host.send(vec![file_state("/etc/a.env", 1, 1), file_state("/etc/b.env", 1, 1)]).await.unwrap();
    let mut changes = ChangesClient::new(connect(&server_url(&server)).await);
    let start = |path: &str| v1::StartRolloutRequest {
        selector: "role=canary".into(),
        path: path.into(),
        set_keys: [("K0".to_string(), "2".to_string())].into(),
        on_failure: v1::OnFailure::Pause as i32,
        ..Default::default()
    };
    // The first rollout's change fails on the host: it pauses, and still holds its place.
    let first = changes.start_rollout(start("/etc/a.env")).await.unwrap().into_inner().rollout.unwrap();
    let change = host.next_change().await;
    host.answer(&change, v1::ChangeOutcome::Failed);
    wait_for("the first rollout paused", WAIT, || {
        let (mut c, id) = (changes.clone(), first.id.clone());
        async move { (rollout_state(&mut c, &id).await == v1::RolloutState::Paused as i32).then_some(()) }
    })
    .await;
    let status = changes.start_rollout(start("/etc/b.env")).await.unwrap_err();
    assert_limit(&status, Code::ResourceExhausted, "max_rollouts_per_principal", "1");
    assert!(status.message().contains("'insecure-local' has 1 rollouts"), "{}", status.message());
    assert_eq!(server.metrics.limit_hits("max_rollouts_per_principal"), 1);

    // Other calls and hosts are served; an aborted rollout gives its place back.
    changes.list_rollouts(v1::ListRolloutsRequest::default()).await.unwrap();
    still_served(&server, "other", &other_file, 2).await;
    changes.abort_rollout(v1::AbortRolloutRequest { id: first.id.clone(), reason: "test".into() }).await.unwrap();
    wait_for("the first rollout aborted", WAIT, || {
        let (mut c, id) = (changes.clone(), first.id.clone());
        async move { (rollout_state(&mut c, &id).await == v1::RolloutState::Aborted as i32).then_some(()) }
    })
    .await;
    let second = changes.start_rollout(start("/etc/b.env")).await.unwrap().into_inner().rollout.unwrap();
    // Leave nothing waiting on the host when the server stops.
    let change = host.next_change().await;
    host.answer(&change, v1::ChangeOutcome::Failed);
    wait_for("the second rollout paused", WAIT, || {
        let (mut c, id) = (changes.clone(), second.id.clone());
        async move { (rollout_state(&mut c, &id).await == v1::RolloutState::Paused as i32).then_some(()) }
    })
    .await;
    other.stop().await.unwrap();
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents() {
    let dir = tempfile::tempdir().unwrap();
    let server = server_with(dir.path(), |c| c.limits.max_agents = 1).await;
    let (other, other_file) = real_agent(&server, dir.path(), "other", "A=1\n").await;
    wait_for("the first agent connected", WAIT, || {
        let n = server.metrics.connected_agents.get();
        async move { (n == 1).then_some(()) }
    })
    .await;
    let status = RawHost::connect(&server, "second", &[]).await.err().expect("refused");
    assert_limit(&status, Code::ResourceExhausted, "max_agents", "1");
    assert_eq!(server.metrics.limit_hits("max_agents"), 1);
    // As Prometheus scrapes it.
    let url = format!("http://{}/metrics", server.metrics_addr.unwrap());
    let body = reqwest::get(url).await.unwrap().text().await.unwrap();
    assert!(body.contains("driftwatch_limit_hits_total{limit=\"max_agents\"} 1"), "{body}");
    still_served(&server, "other", &other_file, 2).await;
    other.stop().await.unwrap();
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn message_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let server = server_with(dir.path(), |c| c.limits.max_message_bytes = 64 * 1024).await;
    let (other, other_file) = real_agent(&server, dir.path(), "other", "A=1\n").await;
    let mut raw = RawHost::connect(&server, "raw", &[]).await.unwrap();
    let status = raw.send(vec![file_state("/etc/huge.env", 1, 100 * 1024)]).await.unwrap_err();
    assert_limit(&status, Code::ResourceExhausted, "max_message_bytes", "65536");
    assert_eq!(server.metrics.limit_hits("max_message_bytes"), 1);
    still_served(&server, "other", &other_file, 2).await;
    other.stop().await.unwrap();
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_streams_per_connection() {
    let dir = tempfile::tempdir().unwrap();
    let server = server_with(dir.path(), |c| c.limits.max_concurrent_streams = 2).await;
    let (other, other_file) = real_agent(&server, dir.path(), "other", "A=1\n").await;
    let crowded = connect(&server_url(&server)).await;
    let mut alerts = AlertsClient::new(crowded.clone());
    let first = alerts.subscribe(v1::SubscribeRequest::default()).await.unwrap().into_inner();
    let _second = alerts.subscribe(v1::SubscribeRequest::default()).await.unwrap().into_inner();
    wait_hits(&server, "max_concurrent_streams", 1).await;
    // A third call on that connection waits for a stream to end (HTTP/2 flow control,
    // not an error); another connection is served meanwhile.
    let mut waiting = fleet_client_addr(&server_url(&server)).await;
    let mut crowded_fleet = driftwatch_proto::v1::fleet_client::FleetClient::new(crowded);
    let mut third = tokio::spawn(async move { crowded_fleet.list_hosts(v1::ListHostsRequest::default()).await });
    waiting.list_hosts(v1::ListHostsRequest::default()).await.unwrap();
    still_served(&server, "other", &other_file, 2).await;
    // Nothing to wait for here: the call must not be answered while both streams are open.
    let early = tokio::time::timeout(Duration::from_millis(500), &mut third).await;
    assert!(early.is_err(), "the third stream of a full connection waits: {early:?}");
    drop(first);
    let hosts = tokio::time::timeout(WAIT, third).await.expect("served once a stream ended").unwrap().unwrap();
    assert!(!hosts.into_inner().hosts.is_empty());
    other.stop().await.unwrap();
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_requests_in_flight() {
    let dir = tempfile::tempdir().unwrap();
    let server = server_with(dir.path(), |c| c.limits.max_operator_requests = 1).await;
    let mut host = RawHost::connect(&server, "slow", &[]).await.unwrap();
    host.send(vec![file_state("/etc/a.env", 1, 1)]).await.unwrap();
    // A correction waits for the agent's answer: it holds the one place meanwhile.
    let mut changes = ChangesClient::new(connect(&server_url(&server)).await);
    let correction = tokio::spawn(async move {
        let req = v1::CorrectRequest {
            host_id: "slow".into(),
            path: "/etc/a.env".into(),
            action: Some(v1::correct_request::Action::SetKeys(v1::SetKeys {
                values: [("K0".to_string(), "2".to_string())].into(),
                remove: vec![],
            })),
            timeout: Some(driftwatch_proto::duration::seconds(60)),
            ..Default::default()
        };
        changes.correct(req).await
    });
    let change = host.next_change().await;
    let mut fleet = fleet_client(&server).await;
    let status = fleet.list_hosts(v1::ListHostsRequest::default()).await.unwrap_err();
    assert_limit(&status, Code::ResourceExhausted, "max_operator_requests", "1");
    assert_eq!(server.metrics.limit_hits("max_operator_requests"), 1);
    // Agent streams are outside the operator budget.
    let (other, other_file) = real_agent(&server, dir.path(), "other", "A=1\n").await;
    wait_for("an agent's file, while operators are at their limit", WAIT, || {
        let n = server.state.hosts.get("other").map_or(0, |h| h.files.len());
        async move { (n == 1).then_some(()) }
    })
    .await;
    // The correction ends: its place is free again.
    host.answer(&change, v1::ChangeOutcome::Applied);
    correction.await.unwrap().unwrap();
    fleet.list_hosts(v1::ListHostsRequest::default()).await.unwrap();
    still_served(&server, "other", &other_file, 2).await;
    other.stop().await.unwrap();
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_deadline() {
    let dir = tempfile::tempdir().unwrap();
    let server = server_with(dir.path(), |c| c.limits.request_timeout = Duration::from_secs(1)).await;
    let (other, other_file) = real_agent(&server, dir.path(), "other", "A=1\n").await;
    // A dry run waits for the host's diff; this host never answers.
    let mut host = RawHost::connect(&server, "mute", &[("role", "mute")]).await.unwrap();
    host.send(vec![file_state("/etc/a.env", 1, 1)]).await.unwrap();
    let mut changes = ChangesClient::new(connect(&server_url(&server)).await);
    let dry_run = v1::StartRolloutRequest {
        selector: "role=mute".into(),
        path: "/etc/a.env".into(),
        set_keys: [("K0".to_string(), "2".to_string())].into(),
        dry_run: true,
        ..Default::default()
    };
    let status = changes.start_rollout(dry_run.clone()).await.unwrap_err();
    assert_limit(&status, Code::DeadlineExceeded, "request_timeout", "\"1s\"");
    assert!(status.message().contains("/driftwatch.v1.Changes/StartRollout did not finish within 1s"), "{status:?}");
    assert_eq!(server.metrics.limit_hits("request_timeout"), 1);
    // A shorter deadline of the caller's wins, and is not the server's limit.
    let mut short = tonic::Request::new(dry_run);
    short.set_timeout(Duration::from_millis(200));
    let status = changes.start_rollout(short).await.unwrap_err();
    // tonic's server ends a call at the caller's deadline ("Timeout expired", CANCELLED).
    assert!(matches!(status.code(), Code::Cancelled | Code::DeadlineExceeded), "{status:?}");
    assert_eq!(server.metrics.limit_hits("request_timeout"), 1, "the caller's deadline is not counted");
    // Other calls and hosts are served.
    fleet_client(&server).await.list_hosts(v1::ListHostsRequest::default()).await.unwrap();
    still_served(&server, "other", &other_file, 2).await;
    drop(host);
    other.stop().await.unwrap();
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_hosts_expire() {
    let dir = tempfile::tempdir().unwrap();
    let server = server_with(dir.path(), |c| {
        c.retention.offline_hosts = Duration::from_secs(1);
        c.retention.interval = Duration::from_millis(200);
    })
    .await;
    let (gone, gone_file) = real_agent(&server, dir.path(), "gone", "A=1\n").await;
    let (stays, stays_file) = real_agent(&server, dir.path(), "stays", "A=1\n").await;
    let mut fleet = fleet_client(&server).await;
    wait_file(&mut fleet, "gone", &gone_file, "the host's file", |_| true).await;
    wait_file(&mut fleet, "stays", &stays_file, "the host's file", |_| true).await;
    gone.stop().await.unwrap();

    let listed = |mut f: driftwatch_proto::v1::fleet_client::FleetClient<Channel>| async move {
        let hosts = f.list_hosts(v1::ListHostsRequest::default()).await.unwrap().into_inner().hosts;
        hosts.into_iter().map(|h| h.host_id).collect::<Vec<_>>()
    };
    wait_for("the offline host expired", WAIT, || {
        let f = fleet.clone();
        async move { (listed(f).await == ["stays"]).then_some(()) }
    })
    .await;
    // Counted once its removal is durable.
    wait_hits(&server, "offline_hosts", 1).await;
    let status = fleet.get_host(v1::GetHostRequest { host_id: "gone".into() }).await.unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    // The audit log says who removed it and why.
    let audit = v1::audit_client::AuditClient::new(connect(&server_url(&server)).await);
    let events = wait_for("the expiry audited", WAIT, || {
        let mut a = audit.clone();
        async move {
            let req = v1::ListAuditEventsRequest { action_prefix: "host.expired".into(), ..Default::default() };
            let events = a.list_audit_events(req).await.unwrap().into_inner().events;
            (!events.is_empty()).then_some(events)
        }
    })
    .await;
    assert_eq!((events[0].actor.as_str(), events[0].host_id.as_str()), ("driftwatch", "gone"));
    assert!(events[0].detail.contains("offline for"), "{}", events[0].detail);
    // And the store holds nothing of it.
    let db = dir.path().join("server/driftwatch.db");
    let store = driftwatch_store::Store::open(&db).unwrap();
    assert!(store.host("gone").unwrap().is_none());
    assert!(store.file_history("gone", &gone_file.display().to_string(), 10).unwrap().is_empty());
    assert!(store.host("stays").unwrap().is_some());

    // The online host is never expired, however long it has been connected.
    still_served(&server, "stays", &stays_file, 2).await;
    assert_eq!(listed(fleet.clone()).await, ["stays"]);
    stays.stop().await.unwrap();
    server.stop().await.unwrap();
}

/// Versions of a file in the store, oldest first.
fn history(db: &Path, host: &str, file: &Path) -> Vec<i64> {
    use prost::Message;
    let store = driftwatch_store::Store::open(db).unwrap();
    let versions = store.file_history(host, &file.display().to_string(), 100).unwrap();
    versions
        .iter()
        .map(|r| {
            let s = v1::FileState::decode(r.state.as_slice()).unwrap();
            match key(&s, "A").and_then(|v| v.kind.clone()) {
                Some(v1::value::Kind::IntValue(i)) => i,
                other => panic!("A is {other:?}"),
            }
        })
        .collect()
}

/// Versions A=1..=n of `file`, each seen by the server (A=1 is what it starts with:
/// written again, it makes no new version, but waits for the agent's first one).
async fn edit_versions(server: &RunningServer, host: &str, file: &Path, n: i64) {
    for v in 1..=n {
        still_served(server, host, file, v).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_history_versions() {
    let dir = tempfile::tempdir().unwrap();
    let server = server_with(dir.path(), |c| {
        c.retention.file_history_versions = 2;
        c.retention.interval = Duration::from_millis(200);
    })
    .await;
    let (busy, busy_file) = real_agent(&server, dir.path(), "busy", "A=1\n").await;
    let (quiet, quiet_file) = real_agent(&server, dir.path(), "quiet", "A=1\n").await;
    edit_versions(&server, "busy", &busy_file, 5).await;
    edit_versions(&server, "quiet", &quiet_file, 2).await;
    let db = dir.path().join("server/driftwatch.db");
    wait_for("the busy file's history cut to its newest two", WAIT, || {
        let versions = history(&db, "busy", &busy_file);
        async move { (versions == [4, 5]).then_some(()) }
    })
    .await;
    wait_hits(&server, "file_history_versions", 3).await;
    assert_eq!(history(&db, "quiet", &quiet_file), [1, 2], "a file within the limit keeps its versions");
    busy.stop().await.unwrap();
    quiet.stop().await.unwrap();
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_history_age() {
    let dir = tempfile::tempdir().unwrap();
    let server = server_with(dir.path(), |c| {
        c.retention.file_history = Duration::from_millis(300);
        c.retention.file_history_versions = 0;
        c.retention.interval = Duration::from_millis(200);
    })
    .await;
    let (agent, file) = real_agent(&server, dir.path(), "h", "A=1\n").await;
    edit_versions(&server, "h", &file, 3).await;
    let db = dir.path().join("server/driftwatch.db");
    wait_for("old versions gone, the newest kept", WAIT, || {
        let versions = history(&db, "h", &file);
        async move { (versions == [3]).then_some(()) }
    })
    .await;
    wait_hits(&server, "file_history", 2).await;
    // The newest version stays however old it gets; the host is still served.
    still_served(&server, "h", &file, 4).await;
    agent.stop().await.unwrap();
    server.stop().await.unwrap();
}
