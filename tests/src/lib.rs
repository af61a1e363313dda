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

pub use change_agent::{Behaviour, ChangeAgent};

/// A protocol-level agent that owns one simulated `.env` file and applies the changes
/// the server sends down its stream, the way a real agent answers them (allowlist,
/// expected hash, dry run, restore from its backups, typed key edits), without a disk.
///
/// The pure parts (value typing, rendering and hashing, deciding a change's outcome)
/// are plain functions here, so tests of the protocol and the unit tests below share them.
pub mod change_agent {
    use std::collections::{BTreeMap, HashMap};
    use std::sync::{Arc, Mutex};

    use driftwatch_proto::v1::{self, agent_message, server_message, value::Kind};
    use sha2::{Digest, Sha256};
    use tokio::sync::mpsc;
    use tonic::transport::Channel;

    /// A file's keys, by name.
    pub type Keys = BTreeMap<String, v1::Value>;

    /// How the agent answers a change.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
    pub enum Behaviour {
        /// Check and apply as a real agent with this path in its allowlist would.
        #[default]
        Apply,
        /// REFUSED (the path is not in the agent's allowlist), dry runs included.
        Refuse,
        /// FAILED: the write went wrong; nothing written (dry runs still answer normally).
        Fail,
        /// ROLLED_BACK: written, the reload command failed, the previous file put back
        /// (dry runs still answer normally).
        RollBack,
        /// Never answer (the server's wait for the result runs out).
        Ignore,
    }

    /// What the agent makes of one `ApplyChange`.
    #[derive(Debug, Clone, PartialEq)]
    pub struct Decision {
        pub result: v1::ChangeResult,
        /// The file's new keys, when the change was written.
        pub written: Option<Keys>,
    }

    /// Keys from `(name, text)` pairs, each typed as an unquoted .env value would be.
    pub fn env_keys(pairs: &[(&str, &str)]) -> Keys {
        pairs.iter().map(|(k, v)| (k.to_string(), infer_text(v))).collect()
    }

    /// The type an unquoted config value reads as: bool (`true`/`false`, any case), int
    /// (no leading zero: `0755` stays a string), float (`1.5`, `0.95`, `1.5e3`), else string.
    pub fn infer_text(text: &str) -> v1::Value {
        if text.eq_ignore_ascii_case("true") || text.eq_ignore_ascii_case("false") {
            return v1::Value::bool(text.eq_ignore_ascii_case("true"));
        }
        let digits = text.strip_prefix('-').unwrap_or(text);
        let plain_int =
            |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) && (s == "0" || !s.starts_with('0'));
        if plain_int(digits) {
            return text.parse().map(v1::Value::int).unwrap_or_else(|_| v1::Value::string(text));
        }
        let (mantissa, exponent) = match digits.find(['e', 'E']) {
            Some(i) => (&digits[..i], Some(&digits[i + 1..])),
            None => (digits, None),
        };
        let float_shape = mantissa
            .split_once('.')
            .is_some_and(|(i, f)| plain_int(i) && !f.is_empty() && f.bytes().all(|b| b.is_ascii_digit()))
            && exponent.is_none_or(|e| {
                let e = e.strip_prefix(['+', '-']).unwrap_or(e);
                !e.is_empty() && e.bytes().all(|b| b.is_ascii_digit())
            });
        if float_shape
            && let Ok(f) = text.parse::<f64>()
            && f.is_finite()
        {
            return v1::Value::float(f);
        }
        v1::Value::string(text)
    }

    /// Operator text for a key (`ApplyChange.set_text`): quoted text is a string; otherwise
    /// the text keeps the type of the value it replaces when it reads as that type (`12`
    /// for an int stays an int), else it is a string; a new key's text is inferred.
    pub fn text_value(existing: Option<&v1::Value>, text: &str) -> v1::Value {
        let t = text.trim();
        for q in ['"', '\''] {
            if t.len() >= 2 && t.starts_with(q) && t.ends_with(q) {
                return v1::Value::string(&t[1..t.len() - 1]);
            }
        }
        match existing.and_then(|v| v.kind.as_ref()) {
            Some(Kind::IntValue(_)) => t.parse::<i64>().map(v1::Value::int).unwrap_or_else(|_| v1::Value::string(t)),
            Some(Kind::FloatValue(_)) => match t.parse::<f64>() {
                Ok(f) if f.is_finite() => v1::Value::float(f),
                _ => v1::Value::string(t),
            },
            Some(Kind::BoolValue(_)) => match t.to_ascii_lowercase().as_str() {
                "true" => v1::Value::bool(true),
                "false" => v1::Value::bool(false),
                _ => v1::Value::string(t),
            },
            Some(Kind::StringValue(_)) => v1::Value::string(t),
            None | Some(Kind::NullValue(_)) | Some(Kind::Masked(_)) => infer_text(t),
        }
    }

    /// A value as it is written in a .env file (a string that would read as another type,
    /// or holds blanks or quotes, is double-quoted).
    pub fn render_value(v: &v1::Value) -> String {
        match &v.kind {
            None | Some(Kind::NullValue(_)) => String::new(),
            Some(Kind::BoolValue(b)) => b.to_string(),
            Some(Kind::IntValue(i)) => i.to_string(),
            Some(Kind::FloatValue(f)) => format!("{f:?}"),
            Some(Kind::Masked(m)) => format!("masked:{}", m.fingerprint),
            Some(Kind::StringValue(s)) => {
                let plain = !s.is_empty()
                    && !s.contains(|c: char| c.is_whitespace() || matches!(c, '"' | '\'' | '#' | '\\' | '$'))
                    && matches!(infer_text(s).kind, Some(Kind::StringValue(_)));
                if plain { s.clone() } else { format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\"")) }
            }
        }
    }

    /// The file's content: one `KEY=value` line per key, in key order.
    pub fn render(keys: &Keys) -> String {
        keys.iter().map(|(k, v)| format!("{k}={}\n", render_value(v))).collect()
    }

    /// The content hash: lower-case hex SHA-256 of the rendered content.
    pub fn content_hash(keys: &Keys) -> String {
        hex::encode(Sha256::digest(render(keys).as_bytes()))
    }

    /// A small unified-style diff of two versions (changed lines only).
    pub fn diff(path: &str, before: &Keys, after: &Keys) -> String {
        let mut out = String::new();
        let names: std::collections::BTreeSet<&String> = before.keys().chain(after.keys()).collect();
        for k in names {
            match (before.get(k), after.get(k)) {
                (Some(a), Some(b)) if a == b => {}
                (a, b) => {
                    if let Some(a) = a {
                        out.push_str(&format!("-{k}={}\n", render_value(a)));
                    }
                    if let Some(b) = b {
                        out.push_str(&format!("+{k}={}\n", render_value(b)));
                    }
                }
            }
        }
        if out.is_empty() { out } else { format!("--- a{path}\n+++ b{path}\n{out}") }
    }

    /// The keys after a key edit (`set_keys`, `set_text`, `remove_keys`), or why it is rejected.
    pub fn edit_keys(current: &Keys, change: &v1::ApplyChange) -> Result<Keys, String> {
        let mut keys = current.clone();
        for kv in &change.set_keys {
            if kv.key.is_empty() {
                return Err("empty key name".into());
            }
            let v = kv.value.clone().unwrap_or_else(v1::Value::null);
            if matches!(v.kind, Some(Kind::Masked(_))) {
                return Err(format!("{}: a masked value cannot be written", kv.key));
            }
            keys.insert(kv.key.clone(), v);
        }
        for (k, text) in &change.set_text {
            if k.is_empty() {
                return Err("empty key name".into());
            }
            let v = text_value(current.get(k), text);
            keys.insert(k.clone(), v);
        }
        for k in &change.remove_keys {
            if keys.remove(k).is_none() {
                return Err(format!("unknown key '{k}'"));
            }
        }
        Ok(keys)
    }

    /// What an agent holding `current` at `path` (and every earlier version in `history`,
    /// by hash) answers to `change`. `None`: it does not answer (`Behaviour::Ignore`).
    pub fn decide(
        path: &str,
        current: &Keys,
        history: &HashMap<String, Keys>,
        change: &v1::ApplyChange,
        behaviour: Behaviour,
    ) -> Option<Decision> {
        let before = content_hash(current);
        let answer = |outcome: v1::ChangeOutcome, message: String| v1::ChangeResult {
            change_id: change.change_id.clone(),
            outcome: outcome as i32,
            message,
            before_hash: before.clone(),
            after_hash: before.clone(),
            path: change.path.clone(),
            ..Default::default()
        };
        let done = |result| Some(Decision { result, written: None });
        if behaviour == Behaviour::Ignore {
            return None;
        }
        if change.path != path || behaviour == Behaviour::Refuse {
            return done(answer(
                v1::ChangeOutcome::Refused,
                format!("'{}' is not in the agent's allowlist", change.path),
            ));
        }
        if !change.expected_hash.is_empty() && change.expected_hash != before {
            return done(answer(
                v1::ChangeOutcome::Conflict,
                format!("the file's hash is {before}, not the expected {}", change.expected_hash),
            ));
        }
        let edits = !change.set_keys.is_empty() || !change.set_text.is_empty() || !change.remove_keys.is_empty();
        let after = match (edits, change.restore_hash.is_empty()) {
            (true, false) => {
                return done(answer(v1::ChangeOutcome::Rejected, "key edits and restore_hash together".into()));
            }
            (false, true) => return done(answer(v1::ChangeOutcome::Rejected, "the change is empty".into())),
            (false, false) => match history.get(&change.restore_hash) {
                Some(keys) => keys.clone(),
                None => return done(answer(v1::ChangeOutcome::Rejected, "no backup with that hash".into())),
            },
            (true, true) => match edit_keys(current, change) {
                Ok(keys) => keys,
                Err(e) => return done(answer(v1::ChangeOutcome::Rejected, e)),
            },
        };
        let after_hash = content_hash(&after);
        let mut r = answer(v1::ChangeOutcome::Unspecified, String::new());
        r.diff = diff(path, current, &after);
        if change.dry_run {
            r.outcome = v1::ChangeOutcome::DryRun as i32;
            r.after_hash = after_hash;
            return done(r);
        }
        if after_hash == before {
            r.outcome = v1::ChangeOutcome::Unchanged as i32;
            r.message = "the file already has this content".into();
            return done(r);
        }
        match behaviour {
            Behaviour::Fail => {
                r.outcome = v1::ChangeOutcome::Failed as i32;
                r.message = "simulated write failure".into();
                r.diff.clear();
                done(r)
            }
            Behaviour::RollBack => {
                r.outcome = v1::ChangeOutcome::RolledBack as i32;
                r.message = "simulated reload failure: previous file put back".into();
                r.backup_hash = before.clone();
                done(r)
            }
            _ => {
                r.outcome = v1::ChangeOutcome::Applied as i32;
                r.after_hash = after_hash;
                r.backup_hash = before.clone();
                Some(Decision { result: r, written: Some(after) })
            }
        }
    }

    /// The file state a real agent would send for these keys.
    pub fn file_state(path: &str, keys: &Keys) -> v1::FileState {
        let now = driftwatch_proto::timestamp(std::time::SystemTime::now());
        v1::FileState {
            path: path.to_string(),
            format: v1::Format::Env as i32,
            status: v1::FileStatus::Ok as i32,
            exists: true,
            size: render(keys).len() as u64,
            mode: 0o100644,
            dir_mode: 0o40755,
            modified_at: Some(now),
            content_hash: content_hash(keys),
            keys: keys.iter().map(|(k, v)| v1::KeyValue { key: k.clone(), value: Some(v.clone()) }).collect(),
            ..Default::default()
        }
    }

    struct State {
        path: String,
        keys: Keys,
        hash: String,
        history: HashMap<String, Keys>,
        applied: u64,
        seq: u64,
        acked: u64,
        behaviour: Behaviour,
        next: Option<Behaviour>,
        received: Vec<v1::ApplyChange>,
        results: Vec<v1::ChangeResult>,
        ended: Option<String>,
        /// Sends happen under the state lock, so seqs go out in order.
        tx: mpsc::UnboundedSender<v1::AgentMessage>,
    }

    impl State {
        /// Holding `keys` at `path`, its first full snapshot (seq 1) already sent.
        fn new(path: &str, keys: Keys, tx: mpsc::UnboundedSender<v1::AgentMessage>) -> Self {
            let mut s = State {
                path: path.to_string(),
                keys: Keys::new(),
                hash: String::new(),
                history: HashMap::new(),
                applied: 0,
                seq: 0,
                acked: 0,
                behaviour: Behaviour::Apply,
                next: None,
                received: Vec::new(),
                results: Vec::new(),
                ended: None,
                tx,
            };
            s.hold(keys);
            s.send_snapshot(true, true, None);
            s
        }

        fn send(&self, kind: agent_message::Kind) {
            let _ = self.tx.send(v1::AgentMessage { kind: Some(kind) });
        }

        fn send_snapshot(&mut self, full: bool, file: bool, resources: Option<v1::ResourceSample>) {
            self.seq += 1;
            let snap = v1::Snapshot {
                seq: self.seq,
                full,
                full_last: full,
                taken_at: Some(driftwatch_proto::timestamp(std::time::SystemTime::now())),
                files: if file { vec![file_state(&self.path, &self.keys)] } else { Vec::new() },
                resources,
                ..Default::default()
            };
            self.send(agent_message::Kind::Snapshot(snap));
        }

        fn hold(&mut self, keys: Keys) {
            self.hash = content_hash(&keys);
            self.history.insert(self.hash.clone(), keys.clone());
            self.keys = keys;
        }

        fn handle(&mut self, change: v1::ApplyChange) {
            let behaviour = if change.dry_run { self.behaviour } else { self.next.take().unwrap_or(self.behaviour) };
            let decision = decide(&self.path, &self.keys, &self.history, &change, behaviour);
            self.received.push(change);
            let Some(Decision { result, written }) = decision else { return };
            self.send(agent_message::Kind::ChangeResult(result.clone()));
            self.results.push(result);
            if let Some(keys) = written {
                // As a real agent: the result, then the watcher's snapshot of the new file.
                self.hold(keys);
                self.applied += 1;
                self.send_snapshot(false, true, None);
            }
        }
    }

    /// See the module documentation. Dropping it closes its stream.
    pub struct ChangeAgent {
        host: String,
        state: Arc<Mutex<State>>,
        task: tokio::task::JoinHandle<()>,
    }

    impl Drop for ChangeAgent {
        fn drop(&mut self) {
            self.task.abort();
        }
    }

    impl ChangeAgent {
        /// Connect on its own connection; panics when the server does not welcome it.
        pub async fn connect(url: &str, host: &str, labels: &[(&str, &str)], path: &str, keys: Keys) -> Self {
            let ch = tonic::transport::Endpoint::from_shared(url.to_string())
                .expect("url")
                .connect()
                .await
                .expect("connect");
            let labels = labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
            Self::connect_on(ch, host, labels, path, keys).await.expect("agent welcomed")
        }

        /// Connect on a shared channel (many agents per HTTP/2 connection): Hello, Welcome,
        /// then the first full snapshot (seq 1) of the file.
        pub async fn connect_on(
            channel: Channel,
            host: &str,
            labels: BTreeMap<String, String>,
            path: &str,
            keys: Keys,
        ) -> Result<Self, tonic::Status> {
            let mut gw = v1::agent_gateway_client::AgentGatewayClient::new(channel);
            let (tx, rx) = mpsc::unbounded_channel();
            let hello = v1::Hello {
                host_id: host.into(),
                labels,
                agent_version: "change-agent".into(),
                spool_id: format!("change-agent-{:016x}", rand::random::<u64>()),
                ..Default::default()
            };
            let _ = tx.send(v1::AgentMessage { kind: Some(agent_message::Kind::Hello(hello)) });
            let mut inbound = gw.connect(tokio_stream::wrappers::UnboundedReceiverStream::new(rx)).await?.into_inner();
            match tokio_stream::StreamExt::next(&mut inbound).await {
                Some(Ok(v1::ServerMessage { kind: Some(server_message::Kind::Welcome(_)) })) => {}
                Some(Err(s)) => return Err(s),
                other => return Err(tonic::Status::unavailable(format!("expected a welcome, got {other:?}"))),
            }
            let s = State::new(path, keys, tx);
            let state = Arc::new(Mutex::new(s));
            let task = tokio::spawn(read_loop(state.clone(), inbound));
            Ok(Self { host: host.to_string(), state, task })
        }

        fn with<T>(&self, f: impl FnOnce(&mut State) -> T) -> T {
            f(&mut self.state.lock().expect("change agent lock"))
        }

        pub fn host(&self) -> &str {
            &self.host
        }

        pub fn path(&self) -> String {
            self.with(|s| s.path.clone())
        }

        /// The file's current content hash.
        pub fn hash(&self) -> String {
            self.with(|s| s.hash.clone())
        }

        pub fn keys(&self) -> Keys {
            self.with(|s| s.keys.clone())
        }

        /// Distinct versions the agent has held (its backup store).
        pub fn history_len(&self) -> usize {
            self.with(|s| s.history.len())
        }

        /// Changes written (outcome APPLIED).
        pub fn applied(&self) -> u64 {
            self.with(|s| s.applied)
        }

        /// Every `ApplyChange` received, in order (answered or not).
        pub fn received(&self) -> Vec<v1::ApplyChange> {
            self.with(|s| s.received.clone())
        }

        /// Every result sent, in order.
        pub fn results(&self) -> Vec<v1::ChangeResult> {
            self.with(|s| s.results.clone())
        }

        /// Highest seq sent, and highest the server acknowledged.
        pub fn seq(&self) -> u64 {
            self.with(|s| s.seq)
        }

        pub fn acked(&self) -> u64 {
            self.with(|s| s.acked)
        }

        /// Why the stream ended, once it has.
        pub fn ended(&self) -> Option<String> {
            self.with(|s| s.ended.clone())
        }

        /// How every later change is answered.
        pub fn set_behaviour(&self, b: Behaviour) {
            self.with(|s| s.behaviour = b);
        }

        /// How the next change that is not a dry run is answered; then back to `set_behaviour`'s.
        pub fn set_next_behaviour(&self, b: Behaviour) {
            self.with(|s| s.next = Some(b));
        }

        /// A change made on the host behind the server's back (drift): `None` removes the key.
        /// Sends the new file state.
        pub fn edit_locally(&self, key: &str, value: Option<v1::Value>) {
            self.with(|s| {
                let mut keys = s.keys.clone();
                match value {
                    Some(v) => keys.insert(key.to_string(), v),
                    None => keys.remove(key),
                };
                s.hold(keys);
                s.send_snapshot(false, true, None);
            });
        }

        /// A snapshot carrying a resource sample taken now (16 cores, 64 GiB).
        pub fn send_resources(&self, memory_used_bytes: f64, cpu_cores_used: f64) {
            let r = v1::ResourceSample {
                sampled_at: Some(driftwatch_proto::timestamp(std::time::SystemTime::now())),
                cpu_cores_used,
                cpu_percent: cpu_cores_used / 16.0 * 100.0,
                cpu_count: 16,
                memory_total_bytes: 64 << 30,
                memory_used_bytes: memory_used_bytes as u64,
                ..Default::default()
            };
            self.with(|s| s.send_snapshot(false, false, Some(r)));
        }
    }

    async fn read_loop(state: Arc<Mutex<State>>, mut inbound: tonic::Streaming<v1::ServerMessage>) {
        let why = loop {
            match tokio_stream::StreamExt::next(&mut inbound).await {
                Some(Ok(m)) => {
                    let mut s = state.lock().expect("change agent lock");
                    match m.kind {
                        Some(server_message::Kind::ApplyChange(c)) => s.handle(c),
                        Some(server_message::Kind::Ack(a)) => s.acked = s.acked.max(a.seq),
                        _ => {}
                    }
                }
                Some(Err(status)) => break format!("stream failed: {status}"),
                None => break "stream ended".to_string(),
            }
        };
        state.lock().expect("change agent lock").ended = Some(why);
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        fn change(expected: &str) -> v1::ApplyChange {
            v1::ApplyChange {
                change_id: "c1".into(),
                path: "/etc/app.env".into(),
                expected_hash: expected.into(),
                ..Default::default()
            }
        }

        fn outcome(d: &Option<Decision>) -> v1::ChangeOutcome {
            v1::ChangeOutcome::try_from(d.as_ref().expect("answered").result.outcome).unwrap()
        }

        #[test]
        fn text_keeps_the_replaced_type_when_it_reads_as_it() {
            let int = v1::Value::int(10);
            assert_eq!(text_value(Some(&int), "12"), v1::Value::int(12));
            assert_eq!(text_value(Some(&int), "\"12\""), v1::Value::string("12"));
            assert_eq!(text_value(Some(&int), "twelve"), v1::Value::string("twelve"));
            let float = v1::Value::float(0.5);
            assert_eq!(text_value(Some(&float), "2"), v1::Value::float(2.0));
            assert_eq!(text_value(Some(&v1::Value::bool(false)), "TRUE"), v1::Value::bool(true));
            assert_eq!(text_value(Some(&v1::Value::bool(false)), "yes"), v1::Value::string("yes"));
            assert_eq!(text_value(Some(&v1::Value::string("a")), "30"), v1::Value::string("30"));
            // New keys are inferred.
            assert_eq!(text_value(None, "30"), v1::Value::int(30));
            assert_eq!(text_value(None, "0.95"), v1::Value::float(0.95));
            assert_eq!(text_value(None, "0755"), v1::Value::string("0755"));
            assert_eq!(text_value(None, "10.0.0.1"), v1::Value::string("10.0.0.1"));
            assert_eq!(text_value(None, "false"), v1::Value::bool(false));
            assert_eq!(text_value(None, "-3"), v1::Value::int(-3));
        }

        #[test]
        fn hash_is_deterministic_and_sees_types() {
            let a = env_keys(&[("B", "2"), ("A", "x")]);
            assert_eq!(render(&a), "A=x\nB=2\n");
            assert_eq!(content_hash(&a), hex::encode(Sha256::digest(b"A=x\nB=2\n")));
            let mut b = a.clone();
            b.insert("B".into(), v1::Value::string("2"));
            assert_eq!(render(&b), "A=x\nB=\"2\"\n");
            assert_ne!(content_hash(&a), content_hash(&b));
            assert_eq!(render_value(&v1::Value::float(1.0)), "1.0");
            assert_eq!(render_value(&v1::Value::string("a b")), "\"a b\"");
        }

        #[test]
        fn apply_sets_removes_and_reports_before_after_and_diff() {
            let keys = env_keys(&[("POOL_SIZE", "10"), ("DEBUG", "false"), ("OLD", "1")]);
            let h0 = content_hash(&keys);
            let mut c = change(&h0);
            c.set_text.insert("POOL_SIZE".into(), "12".into());
            c.set_keys.push(v1::KeyValue { key: "NEW".into(), value: Some(v1::Value::string("on")) });
            c.remove_keys.push("OLD".into());
            let d = decide("/etc/app.env", &keys, &HashMap::new(), &c, Behaviour::Apply).unwrap();
            assert_eq!(d.result.outcome, v1::ChangeOutcome::Applied as i32);
            let after = d.written.expect("written");
            assert_eq!(after.get("POOL_SIZE"), Some(&v1::Value::int(12)));
            assert_eq!(after.get("NEW"), Some(&v1::Value::string("on")));
            assert!(!after.contains_key("OLD"));
            assert_eq!(d.result.before_hash, h0);
            assert_eq!(d.result.after_hash, content_hash(&after));
            assert_eq!(d.result.backup_hash, h0);
            assert_eq!(d.result.path, "/etc/app.env");
            assert_eq!(
                d.result.diff,
                "--- a/etc/app.env\n+++ b/etc/app.env\n+NEW=on\n-OLD=1\n-POOL_SIZE=10\n+POOL_SIZE=12\n"
            );
        }

        #[test]
        fn conflicts_dry_runs_unchanged_and_rejections_write_nothing() {
            let keys = env_keys(&[("POOL_SIZE", "10")]);
            let h0 = content_hash(&keys);
            let none = HashMap::new();
            let mut c = change("not-the-hash");
            c.set_text.insert("POOL_SIZE".into(), "12".into());
            let d = decide("/etc/app.env", &keys, &none, &c, Behaviour::Apply);
            assert_eq!(outcome(&d), v1::ChangeOutcome::Conflict);

            let mut dry = c.clone();
            dry.expected_hash.clear();
            dry.dry_run = true;
            let d = decide("/etc/app.env", &keys, &none, &dry, Behaviour::Apply).unwrap();
            assert_eq!(d.result.outcome, v1::ChangeOutcome::DryRun as i32);
            assert!(d.written.is_none());
            assert_eq!(d.result.after_hash, content_hash(&env_keys(&[("POOL_SIZE", "12")])));
            assert!(d.result.diff.contains("+POOL_SIZE=12"), "{}", d.result.diff);

            let mut same = change(&h0);
            same.set_text.insert("POOL_SIZE".into(), "10".into());
            assert_eq!(
                outcome(&decide("/etc/app.env", &keys, &none, &same, Behaviour::Apply)),
                v1::ChangeOutcome::Unchanged
            );

            let mut unknown = change(&h0);
            unknown.remove_keys.push("NOPE".into());
            let d = decide("/etc/app.env", &keys, &none, &unknown, Behaviour::Apply);
            assert_eq!(outcome(&d), v1::ChangeOutcome::Rejected);
            assert!(d.unwrap().result.message.contains("NOPE"));

            let mut other = c.clone();
            other.path = "/etc/other.env".into();
            assert_eq!(
                outcome(&decide("/etc/app.env", &keys, &none, &other, Behaviour::Apply)),
                v1::ChangeOutcome::Refused
            );
            assert_eq!(
                outcome(&decide("/etc/app.env", &keys, &none, &change(&h0), Behaviour::Apply)),
                v1::ChangeOutcome::Rejected
            );
        }

        #[test]
        fn restore_comes_from_history_or_is_rejected() {
            let old = env_keys(&[("POOL_SIZE", "10")]);
            let now = env_keys(&[("POOL_SIZE", "12")]);
            let history: HashMap<String, Keys> =
                [(content_hash(&old), old.clone()), (content_hash(&now), now.clone())].into();
            let mut c = change(&content_hash(&now));
            c.restore_hash = content_hash(&old);
            let d = decide("/etc/app.env", &now, &history, &c, Behaviour::Apply).unwrap();
            assert_eq!(d.result.outcome, v1::ChangeOutcome::Applied as i32);
            assert_eq!(d.written, Some(old));
            c.restore_hash = "0".repeat(64);
            let d = decide("/etc/app.env", &now, &history, &c, Behaviour::Apply);
            assert_eq!(outcome(&d), v1::ChangeOutcome::Rejected);
            assert_eq!(d.unwrap().result.message, "no backup with that hash");
            c.set_text.insert("A".into(), "1".into());
            assert_eq!(
                outcome(&decide("/etc/app.env", &now, &history, &c, Behaviour::Apply)),
                v1::ChangeOutcome::Rejected
            );
        }

        fn state(keys: Keys) -> (State, mpsc::UnboundedReceiver<v1::AgentMessage>) {
            let (tx, rx) = mpsc::unbounded_channel();
            let s = State::new("/etc/app.env", keys, tx);
            (s, rx)
        }

        #[test]
        fn an_applied_change_sends_its_result_then_the_new_file() {
            let (mut s, mut rx) = state(env_keys(&[("POOL_SIZE", "10")]));
            let Some(agent_message::Kind::Snapshot(first)) = rx.try_recv().unwrap().kind else { panic!("snapshot") };
            assert_eq!((first.seq, first.full, first.full_last, first.files.len()), (1, true, true, 1));
            assert_eq!(first.files[0].content_hash, s.hash);
            let h0 = s.hash.clone();
            let mut c = change(&h0);
            c.set_text.insert("POOL_SIZE".into(), "12".into());
            s.next = Some(Behaviour::Fail);
            s.handle(c.clone());
            let Some(agent_message::Kind::ChangeResult(r)) = rx.try_recv().unwrap().kind else { panic!("result") };
            assert_eq!(r.outcome, v1::ChangeOutcome::Failed as i32);
            assert!(rx.try_recv().is_err(), "nothing written, no snapshot");
            s.handle(c.clone());
            let Some(agent_message::Kind::ChangeResult(r)) = rx.try_recv().unwrap().kind else { panic!("result") };
            assert_eq!(r.outcome, v1::ChangeOutcome::Applied as i32);
            let Some(agent_message::Kind::Snapshot(next)) = rx.try_recv().unwrap().kind else { panic!("snapshot") };
            assert_eq!((next.seq, next.full), (2, false));
            assert_eq!(next.files[0].content_hash, r.after_hash);
            assert_eq!((s.applied, s.history.len(), s.received.len()), (1, 2, 2));
            // The old version is a backup: restoring it works, and adds no new version.
            let mut back = change(&r.after_hash);
            back.restore_hash = h0.clone();
            s.handle(back);
            let Some(agent_message::Kind::ChangeResult(r)) = rx.try_recv().unwrap().kind else { panic!("result") };
            assert_eq!((r.outcome, r.after_hash.as_str()), (v1::ChangeOutcome::Applied as i32, h0.as_str()));
            assert_eq!((s.hash.as_str(), s.history.len()), (h0.as_str(), 2));
        }

        #[test]
        fn behaviours() {
            let keys = env_keys(&[("POOL_SIZE", "10")]);
            let h0 = content_hash(&keys);
            let none = HashMap::new();
            let mut c = change(&h0);
            c.set_text.insert("POOL_SIZE".into(), "12".into());
            assert!(decide("/etc/app.env", &keys, &none, &c, Behaviour::Ignore).is_none());
            assert_eq!(
                outcome(&decide("/etc/app.env", &keys, &none, &c, Behaviour::Refuse)),
                v1::ChangeOutcome::Refused
            );
            let d = decide("/etc/app.env", &keys, &none, &c, Behaviour::Fail).unwrap();
            assert_eq!(
                (d.result.outcome, d.written, d.result.after_hash.as_str()),
                (v1::ChangeOutcome::Failed as i32, None, h0.as_str())
            );
            let d = decide("/etc/app.env", &keys, &none, &c, Behaviour::RollBack).unwrap();
            assert_eq!(
                (d.result.outcome, d.written, d.result.after_hash.as_str()),
                (v1::ChangeOutcome::RolledBack as i32, None, h0.as_str())
            );
            // A failing write does not spoil a dry run.
            c.dry_run = true;
            assert_eq!(outcome(&decide("/etc/app.env", &keys, &none, &c, Behaviour::Fail)), v1::ChangeOutcome::DryRun);
        }
    }
}
