//! Test hook, off unless [`ACK_LOG_ENV`] names a file: a ledger of every snapshot the
//! server acknowledged, for the kill -9 chaos test (`tests/tests/faults_chaos.rs`),
//! which checks each one against the server's store.
//!
//! One JSON line per snapshot, appended after the server's Ack (or Welcome) covering
//! it: `{"spool_id":…,"seq":…,"ack":…,"via":"ack"|"welcome",`
//! `"files":[{"path":…,"hash":…},…]}`. Each line is one `write(2)` to a file opened
//! with `O_APPEND`, so a SIGKILL loses at most the line being written (a reader
//! tolerates a torn last line); it is not fsynced (the ledger survives a killed
//! process, not a power loss). Acks are cumulative, so the snapshots an ack covers are
//! read back from the spool (and from memory) before the spool drops them. Unset, the
//! hook costs an `Option` check (and a reference count) per ack.

use std::fs::File;
use std::io::Write;

use driftwatch_proto::v1::Snapshot;
use parking_lot::Mutex;
use serde::Serialize;

use super::Shared;
use super::unspooled::Unspooled;
use crate::error::Result;
use crate::spool::Spool;

/// What told the agent that the server stored a snapshot.
#[derive(Debug, Clone, Copy, Serialize)]
#[serde(rename_all = "lowercase")]
pub(super) enum Via {
    Ack,
    /// The `acked_seq` of a Welcome: stored before the stream it was sent on ended.
    Welcome,
}

/// The server stored everything up to `seq` (said by `via`): drop it from the spool
/// ([`Spool::ack`]), and with the ledger on, log each snapshot that covers.
pub(super) fn spool_ack(shared: &Shared, spool: &mut Spool, seq: u64, via: Via) -> Result<()> {
    let Some(log) = &shared.ack_log else { return spool.ack(seq) };
    // Lock order as in `append::place`: the spool, then memory.
    let covered = AckLog::covered(spool, &shared.unspooled.lock(), seq);
    let spool_id = spool.spool_id().to_string();
    let r = spool.ack(seq);
    // Whatever the spool could record: the server said these are stored.
    log.record(&spool_id, seq, via, &covered);
    r
}

/// The env var naming the ledger file.
pub const ACK_LOG_ENV: &str = "DRIFTWATCH_TEST_ACK_LOG";

/// The ledger file, when [`ACK_LOG_ENV`] is set.
#[derive(Debug)]
pub(super) struct AckLog {
    file: Mutex<File>,
}

#[derive(Serialize)]
struct Line<'a> {
    spool_id: &'a str,
    seq: u64,
    /// The ack (or Welcome) that covered it.
    ack: u64,
    via: Via,
    files: Vec<FileLine<'a>>,
}

#[derive(Serialize)]
struct FileLine<'a> {
    path: &'a str,
    hash: &'a str,
}

impl AckLog {
    /// Open the ledger named by [`ACK_LOG_ENV`] (created, appended to); `None` when the
    /// variable is unset or the file cannot be opened (said once, the agent runs on).
    pub fn from_env() -> Option<Self> {
        let path = std::env::var_os(ACK_LOG_ENV)?;
        match std::fs::OpenOptions::new().create(true).append(true).open(&path) {
            Ok(file) => {
                tracing::warn!(path = %std::path::Path::new(&path).display(), "test hook: logging every acknowledged snapshot");
                Some(Self { file: Mutex::new(file) })
            }
            Err(e) => {
                tracing::error!(path = %std::path::Path::new(&path).display(), error = %e, "cannot open the ack log; not logging");
                None
            }
        }
    }

    /// The snapshots above the spool's acked seq up to `seq` that an ack of `seq` covers:
    /// spooled ones read back, held ones from memory. Call before the spool drops them.
    pub fn covered(spool: &mut Spool, held: &Unspooled, seq: u64) -> Vec<Snapshot> {
        let mut out = Vec::new();
        let mut after = spool.acked();
        while after < seq {
            let batch = spool.read_after(after, 64).unwrap_or_default();
            let Some(last) = batch.last().map(|s| s.seq) else { break };
            out.extend(batch.into_iter().filter(|s| s.seq <= seq));
            after = last;
        }
        let mut after = spool.acked();
        while let Some(s) = held.first_after(after).filter(|s| s.seq <= seq) {
            after = s.seq;
            out.push(s.clone());
        }
        out.sort_by_key(|s| s.seq);
        out.dedup_by_key(|s| s.seq);
        out
    }

    /// Append one line per snapshot in `covered`, acknowledged by `ack` (`via`).
    pub fn record(&self, spool_id: &str, ack: u64, via: Via, covered: &[Snapshot]) {
        let mut file = self.file.lock();
        for s in covered {
            let files = s.files.iter().map(|f| FileLine { path: &f.path, hash: &f.content_hash }).collect();
            let line = Line { spool_id, seq: s.seq, ack, via, files };
            let Ok(mut text) = serde_json::to_string(&line) else { continue };
            text.push('\n');
            if let Err(e) = file.write_all(text.as_bytes()) {
                tracing::error!(error = %e, "cannot write the ack log");
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use driftwatch_proto::v1::FileState;

    use super::*;

    fn snap(path: &str) -> Snapshot {
        Snapshot {
            files: vec![FileState { path: path.into(), content_hash: format!("h-{path}"), ..Default::default() }],
            ..Default::default()
        }
    }

    /// An ack covers the spooled and the held snapshots above the last ack, up to its
    /// seq, each once, in seq order; each becomes one parseable line.
    #[test]
    fn an_ack_logs_every_snapshot_it_covers() {
        let dir = tempfile::tempdir().unwrap();
        let mut spool = Spool::open(&dir.path().join("spool"), 1 << 20).unwrap();
        for p in ["/a", "/b", "/c"] {
            spool.append(&mut snap(p)).unwrap();
        }
        spool.ack(1).unwrap();
        let mut held = Unspooled::default();
        let mut h = snap("/held");
        spool.take_seq(&mut h);
        held.push(h);
        spool.append(&mut snap("/d")).unwrap();

        let covered = AckLog::covered(&mut spool, &held, 4);
        let seqs: Vec<(u64, &str)> = covered.iter().map(|s| (s.seq, s.files[0].path.as_str())).collect();
        assert_eq!(seqs, vec![(2, "/b"), (3, "/c"), (4, "/held")]);

        let path = dir.path().join("acks.log");
        let log = AckLog { file: Mutex::new(File::create(&path).unwrap()) };
        log.record("sp", 4, Via::Welcome, &covered);
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<serde_json::Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(lines.len(), 3);
        assert_eq!(lines[2]["seq"], 4);
        assert_eq!(lines[2]["ack"], 4);
        assert_eq!(lines[2]["via"], "welcome");
        assert_eq!(lines[2]["spool_id"], "sp");
        assert_eq!(lines[2]["files"][0]["path"], "/held");
        assert_eq!(lines[2]["files"][0]["hash"], "h-/held");
    }
}
