//! Test harness: a real server and real agents in-process on `127.0.0.1:0` with
//! temp dirs, plus polling helpers that wait for a condition with a deadline.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use driftwatch_agent::config::WatchEntry;
use driftwatch_agent::{AgentConfig, AgentFile, RunningAgent};
use driftwatch_proto::v1::{self, fleet_client::FleetClient};
use driftwatch_server::{RunningServer, ServerConfig};
use tonic::transport::Channel;

/// The shared fixtures folder (`../shared/fixtures` next to the repository).
pub fn fixtures_dir() -> Option<PathBuf> {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/fixtures");
    if p.is_dir() {
        return Some(p);
    }
    let local = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/examples/configs");
    local.is_dir().then_some(local)
}

/// The example configs shipped in the repository (copies of the fixtures).
pub fn example_configs() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/examples/configs")
}

/// Poll `f` until it returns `Some`, or panic with `what` after `timeout`.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        if Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

pub async fn start_server(data: &Path) -> RunningServer {
    start_server_with(ServerConfig::for_tests(data)).await
}

pub async fn start_server_with(config: ServerConfig) -> RunningServer {
    driftwatch_server::start(config).await.expect("server starts")
}

/// An agent config for tests: fast resource sampling off unless asked, small debounce.
pub fn agent_config(server: &RunningServer, host_id: &str, state_dir: &Path, watch: &[String]) -> AgentConfig {
    agent_config_url(&format!("http://{}", server.grpc_addr), host_id, state_dir, watch)
}

pub fn agent_config_url(url: &str, host_id: &str, state_dir: &Path, watch: &[String]) -> AgentConfig {
    AgentConfig::resolve(
        AgentFile {
            server: Some(url.to_string()),
            host_id: Some(host_id.to_string()),
            labels: [("env".to_string(), "test".to_string())].into(),
            watch: watch.iter().cloned().map(WatchEntry::Plain).collect(),
            resource_interval: Some("0".into()),
            state_dir: Some(state_dir.to_path_buf()),
            insecure: Some(true),
            fleet_key_file: Some(fleet_key(state_dir.parent().unwrap_or(state_dir))),
            ..Default::default()
        },
        "test",
    )
    .expect("valid agent config")
}

/// One fleet key per test directory so several agents' fingerprints compare.
pub fn fleet_key(dir: &Path) -> PathBuf {
    let p = dir.join("fleet.key");
    if !p.exists() {
        std::fs::create_dir_all(dir).expect("key dir");
        std::fs::write(&p, "test-fleet-key-0123456789abcdef").expect("write key");
    }
    p
}

pub async fn start_agent(config: AgentConfig) -> RunningAgent {
    driftwatch_agent::start(config).await.expect("agent starts")
}

pub async fn fleet_client(server: &RunningServer) -> FleetClient<Channel> {
    fleet_client_addr(&format!("http://{}", server.grpc_addr)).await
}

pub async fn fleet_client_addr(url: &str) -> FleetClient<Channel> {
    let ch = tonic::transport::Endpoint::from_shared(url.to_string()).expect("url").connect().await.expect("connect");
    FleetClient::new(ch)
}

/// GetFile, or None when the server does not know it (yet).
pub async fn get_file(c: &mut FleetClient<Channel>, host: &str, path: &Path) -> Option<v1::File> {
    c.get_file(v1::GetFileRequest { host_id: host.into(), path: path.display().to_string() })
        .await
        .ok()
        .map(|r| r.into_inner())
}

/// Wait until the server shows `path` on `host` satisfying `pred`.
pub async fn wait_file(
    c: &mut FleetClient<Channel>,
    host: &str,
    path: &Path,
    what: &str,
    pred: impl Fn(&v1::FileState) -> bool,
) -> v1::File {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if let Some(f) = get_file(c, host, path).await
            && f.state.as_ref().is_some_and(&pred)
        {
            return f;
        }
        if Instant::now() >= deadline {
            let last = get_file(c, host, path).await;
            panic!("timed out waiting for {what} on {host}:{}; last seen: {last:#?}", path.display());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The value of `key` in a file state.
pub fn key<'a>(state: &'a v1::FileState, key: &str) -> Option<&'a v1::Value> {
    state.keys.iter().find(|kv| kv.key == key).and_then(|kv| kv.value.as_ref())
}

/// Copy every fixture file (recursively, flattened per folder) into `dst`.
pub fn copy_fixtures(dst: &Path) -> Vec<PathBuf> {
    let src = fixtures_dir().expect("fixtures");
    let mut out = Vec::new();
    copy_dir(&src, dst, &mut out);
    out
}

fn copy_dir(src: &Path, dst: &Path, out: &mut Vec<PathBuf>) {
    std::fs::create_dir_all(dst).expect("mkdir");
    for e in std::fs::read_dir(src).expect("read fixtures") {
        let e = e.expect("entry");
        let p = e.path();
        let to = dst.join(e.file_name());
        if p.is_dir() {
            copy_dir(&p, &to, out);
        } else if e.file_name() != "rules.md" {
            std::fs::copy(&p, &to).expect("copy");
            let mut perm = std::fs::metadata(&to).expect("meta").permissions();
            #[allow(clippy::permissions_set_readonly_false)]
            perm.set_readonly(false);
            std::fs::set_permissions(&to, perm).expect("chmod");
            out.push(to);
        }
    }
}

/// Write a file atomically the way editors do (temp + rename).
pub fn replace_file(path: &Path, content: &str) {
    let tmp = path.with_extension("dwtmp");
    std::fs::write(&tmp, content).expect("write temp");
    std::fs::rename(&tmp, path).expect("rename");
}

/// A protocol-level agent: Hello, then snapshots carrying resource samples (for
/// resource levels a test machine cannot reach: 6 GiB used, 12 cores busy).
pub struct SampleAgent {
    tx: tokio::sync::mpsc::Sender<v1::AgentMessage>,
    inbound: tonic::Streaming<v1::ServerMessage>,
    seq: u64,
}

impl SampleAgent {
    pub async fn connect(url: &str, host: &str, labels: &[(&str, &str)]) -> Self {
        let ch =
            tonic::transport::Endpoint::from_shared(url.to_string()).expect("url").connect().await.expect("connect");
        let mut gw = v1::agent_gateway_client::AgentGatewayClient::new(ch);
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        let labels: std::collections::BTreeMap<String, String> =
            labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        tx.send(v1::AgentMessage {
            kind: Some(v1::agent_message::Kind::Hello(v1::Hello {
                host_id: host.into(),
                labels,
                agent_version: "test".into(),
                spool_id: "samples".into(),
                ..Default::default()
            })),
        })
        .await
        .unwrap();
        let mut inbound = gw.connect(tokio_stream::wrappers::ReceiverStream::new(rx)).await.unwrap().into_inner();
        let welcome = tokio_stream::StreamExt::next(&mut inbound).await.unwrap().unwrap();
        assert!(matches!(welcome.kind, Some(v1::server_message::Kind::Welcome(_))));
        Self { tx, inbound, seq: 0 }
    }

    /// Send samples `(time_ms, memory_used_bytes, cpu_cores_used)` and wait for their ack.
    pub async fn send(&mut self, samples: &[(i64, f64, f64)]) {
        for &(t, mem, cores) in samples {
            self.seq += 1;
            let r = v1::ResourceSample {
                sampled_at: Some(driftwatch_proto::timestamp_from_millis(t)),
                cpu_cores_used: cores,
                cpu_percent: cores / 16.0 * 100.0,
                cpu_count: 16,
                memory_total_bytes: 64 << 30,
                memory_used_bytes: mem as u64,
                ..Default::default()
            };
            let snap = v1::Snapshot { seq: self.seq, resources: Some(r), ..Default::default() };
            self.tx.send(v1::AgentMessage { kind: Some(v1::agent_message::Kind::Snapshot(snap)) }).await.unwrap();
        }
        loop {
            match tokio_stream::StreamExt::next(&mut self.inbound).await.unwrap().unwrap().kind {
                Some(v1::server_message::Kind::Ack(a)) if a.seq >= self.seq => break,
                _ => {}
            }
        }
    }
}
