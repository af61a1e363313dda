//! A protocol-level model of an agent that owns one config file in memory and applies
//! the changes the server sends down its stream: what lets the simulator run a thousand
//! agents on one machine (`driftwatch-sim rollout`).
//!
//! It differs from the real agent only in transport and I/O: the file's content lives in
//! memory (no disk, no inotify, no spool, no reload commands). Everything about content
//! goes through `driftwatch-formats` as the agent's does: the file state is
//! `driftwatch_formats::analyze` (parse, mask, keyed content hash with the fleet key), a
//! change is decided by [`decide`] (the `edit`, parse check and `unified_diff` the
//! agent's apply pipeline calls), and, as a real agent does, an applied change is
//! answered with its `ChangeResult` followed by a snapshot of the new file.
//!
//! End-to-end tests use real agent processes (`AgentProcess`); the model's unit tests
//! hold it to the real agent's `Applier` change by change.

mod decide;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use parking_lot::Mutex;

use driftwatch_formats::{Format, Limits, Masker};
use driftwatch_proto::v1::{self, agent_message, server_message};
use tonic::transport::Channel;

pub use decide::{Decision, Held, decide};

use crate::gateway::{AgentTx, hello, open_agent_stream, snapshot};

/// The state a model agent reports for its file.
fn file_state(masker: &Masker, path: &str, format: Format, content: &[u8]) -> v1::FileState {
    let a = driftwatch_formats::analyze(content, format, masker, &Limits::default());
    v1::FileState {
        path: path.to_string(),
        format: format as i32,
        status: a.status as i32,
        error: a.error,
        exists: true,
        size: content.len() as u64,
        mode: 0o100644,
        dir_mode: 0o40755,
        modified_at: Some(driftwatch_proto::timestamp(std::time::SystemTime::now())),
        content_hash: a.content_hash,
        keys: a.keys,
        ..Default::default()
    }
}

struct State {
    masker: Arc<Masker>,
    path: String,
    format: Format,
    content: Vec<u8>,
    /// The backup store: every content written over, and every content written.
    backups: HashMap<String, Vec<u8>>,
    applied: u64,
    seq: u64,
    results: Vec<v1::ChangeResult>,
    ended: Option<String>,
    /// Sends happen under the state lock, so seqs go out in order.
    tx: AgentTx,
}

impl State {
    /// Holding `content` at `path`, its first full snapshot (seq 1) already sent.
    fn new(masker: Arc<Masker>, path: &str, content: Vec<u8>, tx: AgentTx) -> Self {
        let format = driftwatch_formats::detect_format(std::path::Path::new(path));
        let mut s = State {
            masker,
            path: path.to_string(),
            format,
            content,
            backups: HashMap::new(),
            applied: 0,
            seq: 0,
            results: Vec::new(),
            ended: None,
            tx,
        };
        s.send_snapshot(true);
        s
    }

    fn send_snapshot(&mut self, full: bool) {
        self.seq += 1;
        let snap = v1::Snapshot {
            seq: self.seq,
            full,
            full_last: full,
            taken_at: Some(driftwatch_proto::timestamp(std::time::SystemTime::now())),
            files: vec![file_state(&self.masker, &self.path, self.format, &self.content)],
            ..Default::default()
        };
        let _ = self.tx.send(snapshot(snap));
    }

    fn handle(&mut self, change: &v1::ApplyChange) {
        let held = Held { path: &self.path, format: self.format, content: &self.content, backups: &self.backups };
        let Decision { result, written } = decide(&self.masker, held, change);
        let _ = self.tx.send(v1::AgentMessage { kind: Some(agent_message::Kind::ChangeResult(result.clone())) });
        self.results.push(result);
        if let Some(new) = written {
            let old = std::mem::replace(&mut self.content, new);
            self.backups.insert(self.masker.content_hash(&old), old);
            self.backups.insert(self.masker.content_hash(&self.content), self.content.clone());
            self.applied += 1;
            // As a real agent: the result, then the watcher's snapshot of the new file.
            self.send_snapshot(false);
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
    /// Connect on a channel (several agents may share one HTTP/2 connection): Hello,
    /// Welcome, then the first full snapshot (seq 1) of `content` at `path`, masked and
    /// hashed with `masker` (the fleet key).
    pub async fn connect_on(
        channel: Channel,
        host: &str,
        labels: BTreeMap<String, String>,
        path: &str,
        content: &str,
        masker: Arc<Masker>,
    ) -> Result<Self, tonic::Status> {
        let (tx, inbound) = open_agent_stream(channel, hello(host, labels, "change-agent", "change-agent")).await?;
        let state = Arc::new(Mutex::new(State::new(masker, path, content.as_bytes().to_vec(), tx)));
        let task = tokio::spawn(read_loop(state.clone(), inbound));
        Ok(Self { host: host.to_string(), state, task })
    }

    fn with<T>(&self, f: impl FnOnce(&mut State) -> T) -> T {
        f(&mut self.state.lock())
    }

    pub fn host(&self) -> &str {
        &self.host
    }

    /// The file's current keyed content hash.
    pub fn hash(&self) -> String {
        self.with(|s| s.masker.content_hash(&s.content))
    }

    /// The file's current content.
    pub fn content(&self) -> String {
        self.with(|s| String::from_utf8_lossy(&s.content).into_owned())
    }

    /// Changes written (outcome APPLIED).
    pub fn applied(&self) -> u64 {
        self.with(|s| s.applied)
    }

    /// Every result sent, in order.
    pub fn results(&self) -> Vec<v1::ChangeResult> {
        self.with(|s| s.results.clone())
    }

    /// Why the stream ended, once it has.
    pub fn ended(&self) -> Option<String> {
        self.with(|s| s.ended.clone())
    }
}

async fn read_loop(state: Arc<Mutex<State>>, mut inbound: tonic::Streaming<v1::ServerMessage>) {
    let why = loop {
        match tokio_stream::StreamExt::next(&mut inbound).await {
            Some(Ok(v1::ServerMessage { kind: Some(server_message::Kind::ApplyChange(c)) })) => {
                state.lock().handle(&c);
            }
            Some(Ok(_)) => {}
            Some(Err(status)) => break format!("stream failed: {status}"),
            None => break "stream ended".to_string(),
        }
    };
    state.lock().ended = Some(why);
}
