//! In-memory state of the fleet: one entry per host, the current version of every
//! file it watches and its latest resources. Queries read only this; the store is
//! its durable copy, loaded back at start-up.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use dashmap::DashMap;
use driftwatch_proto::v1::{self, FileState, ResourceSample};
use tokio::sync::watch;

use crate::error::ServerError;
use crate::spool_report::{Drops, Listing};

/// The one NotFound for a host id the server does not know.
pub fn unknown_host(id: &str) -> ServerError {
    ServerError::NotFound(format!("no host '{id}' (ListHosts shows the known hosts)"))
}

/// The one NotFound for a file a known host does not watch.
pub fn unknown_file(host: &str, path: &str) -> ServerError {
    ServerError::NotFound(format!("host '{host}' does not watch '{path}' (GetHost lists its files)"))
}

/// Live connection of a host's agent.
#[derive(Debug)]
pub struct Connection {
    pub id: u64,
    pub since_ms: i64,
    pub peer: String,
    /// Highest durably stored seq, published to the connection task which sends Acks.
    pub acks: watch::Sender<u64>,
    /// Messages for the agent (changes to apply), forwarded by the connection task.
    pub commands: tokio::sync::mpsc::Sender<v1::ServerMessage>,
    /// Cancelled to cut the stream now (its host was revoked, or a newer stream of
    /// the same certificate replaced it); the reason goes to the agent as a status.
    pub cut: tokio::sync::watch::Sender<Option<tonic::Status>>,
}

/// The current version of one watched file.
///
/// Held encoded: a decoded `FileState` (a `String` and a 56-byte enum per key)
/// is several times larger than its protobuf bytes, and the fleet's files are
/// most of the server's memory. Queries decode the few files they return.
#[derive(Debug, Clone)]
pub struct FileEntry {
    /// Shared so the rule engine can take a version without copying it.
    encoded: Arc<[u8]>,
    /// `FileStatus` as i32, kept decoded for host summaries.
    pub status: i32,
    pub seq: u64,
    pub updated_ms: i64,
}

impl FileEntry {
    pub fn new(state: &FileState, seq: u64, updated_ms: i64) -> Self {
        use prost::Message;
        Self { encoded: state.encode_to_vec().into(), status: state.status, seq, updated_ms }
    }

    /// From stored bytes; None when they do not decode.
    pub fn from_encoded(bytes: Vec<u8>, seq: u64, updated_ms: i64) -> Option<Self> {
        use prost::Message;
        let state = FileState::decode(bytes.as_slice()).ok()?;
        Some(Self { encoded: bytes.into(), status: state.status, seq, updated_ms })
    }

    /// The encoded `FileState`, as stored.
    pub fn encoded(&self) -> &[u8] {
        &self.encoded
    }

    /// The encoded `FileState`, shared.
    pub fn shared(&self) -> Arc<[u8]> {
        self.encoded.clone()
    }

    pub fn state(&self) -> FileState {
        use prost::Message;
        // Only bytes that decoded (or that we encoded) are ever held.
        FileState::decode(&*self.encoded).expect("held file state decodes")
    }
}

#[derive(Debug)]
pub struct HostEntry {
    pub labels: BTreeMap<String, String>,
    pub agent_version: String,
    pub spool_id: String,
    pub fleet_key_id: String,
    /// Highest seq applied to this in-memory state.
    pub applied_seq: u64,
    /// Highest seq durably stored (what Welcome/Ack report).
    pub stored_seq: u64,
    pub first_seen_ms: i64,
    pub last_seen_ms: i64,
    pub dropped_snapshots: u64,
    /// The drops the agent reported against what whole listings healed (the alert).
    pub drops: Drops,
    /// Why the agent cannot write its spool, as it last said ("" when it can).
    pub spool_degraded: String,
    /// Snapshots the agent sent from memory since it started, as it last said.
    pub unspooled_snapshots: u64,
    /// The full listing being received (in memory: a restart in the middle of one
    /// means it cannot be vouched for, and it prunes nothing).
    pub listing: Option<Listing>,
    pub connection: Option<Connection>,
    pub files: BTreeMap<String, FileEntry>,
    pub resources: Option<ResourceSample>,
}

impl HostEntry {
    pub fn new(now_ms: i64) -> Self {
        Self {
            labels: BTreeMap::new(),
            agent_version: String::new(),
            spool_id: String::new(),
            fleet_key_id: String::new(),
            applied_seq: 0,
            stored_seq: 0,
            first_seen_ms: now_ms,
            last_seen_ms: now_ms,
            dropped_snapshots: 0,
            drops: Drops::default(),
            spool_degraded: String::new(),
            unspooled_snapshots: 0,
            listing: None,
            connection: None,
            files: BTreeMap::new(),
            resources: None,
        }
    }

    pub fn record(&self, host_id: &str) -> driftwatch_store::HostRecord {
        driftwatch_store::HostRecord {
            host_id: host_id.to_string(),
            labels: self.labels.clone(),
            agent_version: self.agent_version.clone(),
            spool_id: self.spool_id.clone(),
            last_seq: self.applied_seq,
            first_seen_ms: self.first_seen_ms,
            last_seen_ms: self.last_seen_ms,
            dropped_snapshots: self.dropped_snapshots,
        }
    }

    pub fn summary(&self, host_id: &str) -> v1::HostSummary {
        let problems = self.files.values().filter(|f| f.status != v1::FileStatus::Ok as i32).count();
        v1::HostSummary {
            host_id: host_id.to_string(),
            labels: self.labels.clone(),
            agent_version: self.agent_version.clone(),
            state: if self.connection.is_some() { v1::ConnectionState::Online } else { v1::ConnectionState::Offline }
                as i32,
            last_seen: Some(driftwatch_proto::timestamp_from_millis(self.last_seen_ms)),
            connected_since: self.connection.as_ref().map(|c| driftwatch_proto::timestamp_from_millis(c.since_ms)),
            file_count: self.files.len() as u32,
            files_with_problems: problems as u32,
            resources: self.resources.clone(),
            last_seq: self.stored_seq,
            dropped_snapshots: self.dropped_snapshots,
            identity: None,
            spool_degraded: self.spool_degraded.clone(),
            unspooled_snapshots: self.unspooled_snapshots,
        }
    }
}

/// Every host the server knows, keyed by host id.
#[derive(Debug, Default)]
pub struct FleetState {
    pub hosts: DashMap<String, HostEntry>,
    next_connection_id: AtomicU64,
}

impl FleetState {
    /// The current state of one host's file, decoded.
    pub fn file_state(&self, host: &str, path: &str) -> Result<FileState, ServerError> {
        let h = self.hosts.get(host).ok_or_else(|| unknown_host(host))?;
        let f = h.files.get(path).ok_or_else(|| unknown_file(host, path))?;
        Ok(f.state())
    }

    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    pub fn next_connection_id(&self) -> u64 {
        self.next_connection_id.fetch_add(1, Ordering::Relaxed) + 1
    }

    pub fn connected_count(&self) -> usize {
        self.hosts.iter().filter(|h| h.connection.is_some()).count()
    }

    /// Rebuild from the store at start-up: every host offline until it reconnects.
    pub fn load(
        &self,
        hosts: Vec<driftwatch_store::HostRecord>,
        files: Vec<driftwatch_store::FileRecord>,
        latest_resources: Vec<driftwatch_store::ResourceRecord>,
    ) -> usize {
        use prost::Message;
        let mut skipped = 0;
        for h in hosts {
            let mut e = HostEntry::new(h.first_seen_ms);
            e.labels = h.labels;
            e.agent_version = h.agent_version;
            e.spool_id = h.spool_id;
            e.applied_seq = h.last_seq;
            e.stored_seq = h.last_seq;
            e.last_seen_ms = h.last_seen_ms;
            e.dropped_snapshots = h.dropped_snapshots;
            e.drops = Drops::loaded(h.dropped_snapshots);
            self.hosts.insert(h.host_id, e);
        }
        for f in files {
            let Some(entry) = FileEntry::from_encoded(f.state, f.seq, f.updated_ms) else {
                tracing::warn!(host = %f.host_id, path = %f.path, "stored file state does not decode; skipped");
                skipped += 1;
                continue;
            };
            if let Some(mut h) = self.hosts.get_mut(&f.host_id) {
                h.files.insert(f.path, entry);
            }
        }
        for r in latest_resources {
            if let (Ok(sample), Some(mut h)) =
                (ResourceSample::decode(r.sample.as_slice()), self.hosts.get_mut(&r.host_id))
            {
                h.resources = Some(sample);
            }
        }
        skipped
    }
}
