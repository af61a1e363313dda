use std::path::Path;

use driftwatch_store::{BaselineRecord, FailureKind};
use tokio::sync::{oneshot, watch};

use super::*;
use crate::state::{Connection, HostEntry};

fn baseline(name: &str, version: u64) -> Op {
    Op::Baseline(BaselineRecord { name: name.into(), version, content: b"x".to_vec(), ..Default::default() })
}

/// An item that can never be stored: one baseline version written twice.
fn bad_ops() -> Vec<Op> {
    vec![baseline("bad", 1), baseline("bad", 1)]
}

fn file(host: &str, path: &str, seq: u64) -> FileRecord {
    FileRecord { host_id: host.into(), path: path.into(), seq, updated_ms: 1, state: vec![1, 2, 3] }
}

/// Wait for a durability notice: Some(true) durable, Some(false) refused (the sender
/// was dropped), None when nothing came within `timeout`.
fn outcome(mut rx: oneshot::Receiver<()>, timeout: Duration) -> Option<bool> {
    let deadline = Instant::now() + timeout;
    loop {
        match rx.try_recv() {
            Ok(()) => return Some(true),
            Err(oneshot::error::TryRecvError::Closed) => return Some(false),
            Err(oneshot::error::TryRecvError::Empty) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(_) => return None,
        }
    }
}

fn open(path: &Path) -> Store {
    Store::open(path).unwrap()
}

#[test]
fn an_item_that_can_never_be_stored_does_not_stop_the_others() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("db");
    let metrics = Metrics::new();
    let (tx, writer) = spawn(open(&db), FleetState::new(), metrics.clone(), 16);
    let mut waits = Vec::new();
    for ops in [vec![baseline("a", 1)], bad_ops(), vec![baseline("c", 1)]] {
        let (done, durable) = oneshot::channel();
        tx.blocking_send(WriteItem { ops, done: Some(done), ..Default::default() }).unwrap();
        waits.push(durable);
    }
    let got: Vec<Option<bool>> = waits.into_iter().map(|w| outcome(w, Duration::from_secs(10))).collect();
    assert_eq!(got, vec![Some(true), Some(false), Some(true)]);
    drop(tx);
    writer.join().unwrap();

    let store = open(&db);
    let names: Vec<String> = store.load_baselines().unwrap().into_iter().map(|b| b.name).collect();
    assert_eq!(names, vec!["a", "c"]);
    let q = store.quarantined(10).unwrap();
    assert_eq!(q.len(), 1, "{q:?}");
    assert!(q[0].error.contains("UNIQUE constraint failed"), "{q:?}");
    assert_eq!(q[0].detail, "2 baseline");
    assert_eq!(metrics.store_quarantined.get(), 1);
    assert_eq!(metrics.unhealthy(), None, "one bad item is not a failing store");
    assert_eq!(metrics.writer_queue_depth.get(), 0);
}

/// A host entry connected on spool `s1`; the receivers of its ack and cut channels.
fn connected(state: &FleetState, host: &str) -> (watch::Receiver<u64>, watch::Receiver<Option<tonic::Status>>) {
    let (acks, acks_rx) = watch::channel(0);
    let (cut, cut_rx) = watch::channel(None);
    let (commands, _) = mpsc::channel(1);
    let mut h = HostEntry::new(0);
    h.spool_id = "s1".into();
    h.connection = Some(Connection { id: 1, since_ms: 0, peer: "test".into(), acks, commands, cut });
    state.hosts.insert(host.into(), h);
    (acks_rx, cut_rx)
}

#[test]
fn a_refused_snapshot_is_recorded_its_agent_told_why_and_later_ones_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("db");
    let state = FleetState::new();
    let (acks, cut) = connected(&state, "h");
    let metrics = Metrics::new();
    let (tx, writer) = spawn(open(&db), state.clone(), metrics.clone(), 16);
    for seq in 1..=3 {
        let mut item = WriteItem {
            files: vec![file("h", &format!("/etc/{seq}"), seq)],
            ack: Some(AckTarget { host_id: "h".into(), spool_id: "s1".into(), seq }),
            ..Default::default()
        };
        if seq == 2 {
            item.ops = bad_ops();
        }
        tx.blocking_send(item).unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while *acks.borrow() < 3 {
        assert!(Instant::now() < deadline, "seq 3 never acknowledged");
        std::thread::sleep(Duration::from_millis(5));
    }
    let status = cut.borrow().clone().expect("the stream was cut with the reason");
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert!(status.message().contains("snapshot 2 of host 'h' was refused"), "{}", status.message());
    assert!(status.message().contains("UNIQUE constraint failed"), "{}", status.message());
    drop(tx);
    writer.join().unwrap();

    let store = open(&db);
    let paths: Vec<String> = store.load_files().unwrap().into_iter().map(|f| f.path).collect();
    assert_eq!(paths, vec!["/etc/1", "/etc/3"], "everything but the refused snapshot stored");
    let q = store.quarantined(10).unwrap();
    assert_eq!((q[0].host_id.as_str(), q[0].seq), ("h", 2));
    assert_eq!(q[0].detail, "1 file, 2 baseline; paths: /etc/2");
    assert_eq!(metrics.snapshots_ingested.get(), 2);
}

fn full() -> StoreError {
    // As SQLite words it.
    let e = rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_FULL);
    let source = rusqlite::Error::SqliteFailure(e, Some("database or disk is full".into()));
    StoreError::Sqlite { path: "/data/driftwatch.db".into(), source }
}

#[test]
fn a_full_disk_is_retried_with_the_reason_on_healthz_and_refuses_nothing() {
    let metrics = Metrics::new();
    let ops = vec![baseline("a", 1), baseline("b", 1), baseline("c", 1)];
    let ranges = [0..1, 1..3];
    let mut calls = 0;
    let mut seen = Vec::new();
    let fates = commit_all(&metrics, &ops, &ranges, Duration::from_millis(1), |parts| {
        calls += 1;
        seen.push(metrics.unhealthy());
        if calls <= 3 {
            return Err(full());
        }
        // The whole batch again, not pieces of it: a full disk is nobody's item.
        assert_eq!(parts.iter().map(|p| p.len()).collect::<Vec<_>>(), vec![1, 2]);
        Ok(())
    });
    assert_eq!(calls, 4);
    assert!(fates.iter().all(|f| matches!(f, Fate::Committed)));
    assert_eq!(seen[0], None);
    for s in &seen[1..] {
        assert_eq!(s.as_deref(), Some("store: commits failing: database or disk is full"));
    }
    assert_eq!(metrics.unhealthy(), None, "healthy after the commit");
    let failures = |k: FailureKind| metrics.store_commit_failures.get_or_create(&[("kind", k.label())]).get();
    assert_eq!(failures(FailureKind::DiskFull), 3);
    assert_eq!(failures(FailureKind::Data), 0);
    assert_eq!(metrics.store_quarantined.get(), 0);
}

#[tokio::test]
async fn a_full_queue_makes_senders_wait_and_is_counted() {
    let metrics = Metrics::new();
    let (tx, mut rx) = mpsc::channel(1);
    let s = WriteSender {
        tx,
        depth: metrics.writer_queue_depth.clone(),
        full_waits: metrics.writer_queue_full_waits.clone(),
    };
    s.send(WriteItem::default()).await.unwrap();
    assert_eq!((metrics.writer_queue_depth.get(), metrics.writer_queue_full_waits.get()), (1, 0));
    // Full: the second send waits (here: is given up after a while) instead of dropping.
    let waited = tokio::time::timeout(Duration::from_millis(50), s.send(WriteItem::default())).await;
    assert!(waited.is_err(), "a send into a full queue waits");
    assert_eq!((metrics.writer_queue_depth.get(), metrics.writer_queue_full_waits.get()), (1, 1));
    assert_eq!(s.try_send(WriteItem::default()), Err(NotQueued::Full));
    assert_eq!(metrics.writer_queue_depth.get(), 1);
    // Room again: a waiting send gets in.
    let sending = tokio::spawn({
        let s = s.clone();
        async move { s.send(WriteItem::default()).await.is_ok() }
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    while metrics.writer_queue_full_waits.get() < 2 {
        assert!(Instant::now() < deadline, "the third send never found the queue full");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    assert!(rx.recv().await.is_some());
    assert!(sending.await.unwrap());
    assert_eq!(metrics.writer_queue_depth.get(), 2, "one taken by nobody yet, one just queued");
}

/// A reserved place keeps the order in which items were made, not the order in which
/// their senders got to the queue.
#[tokio::test]
async fn a_reserved_place_queues_ahead_of_later_sends_and_is_given_back_if_unused() {
    let metrics = Metrics::new();
    let (tx, mut rx) = mpsc::channel(2);
    let s = WriteSender {
        tx,
        depth: metrics.writer_queue_depth.clone(),
        full_waits: metrics.writer_queue_full_waits.clone(),
    };
    let unused = s.reserve().await.unwrap();
    assert_eq!(metrics.writer_queue_depth.get(), 1);
    drop(unused);
    assert_eq!(metrics.writer_queue_depth.get(), 0, "an unused place is given back");
    let permit = s.reserve().await.unwrap();
    let item = |seq| WriteItem {
        ack: Some(AckTarget { host_id: "h".into(), spool_id: "s".into(), seq }),
        ..Default::default()
    };
    permit.send(item(1));
    s.send(item(2)).await.unwrap();
    let order: Vec<u64> = [rx.recv().await.unwrap(), rx.recv().await.unwrap()]
        .iter()
        .map(|i| i.ack.as_ref().map_or(0, |a| a.seq))
        .collect();
    assert_eq!(order, vec![1, 2]);
    drop(rx);
    assert_eq!(s.reserve().await.err(), Some(NotQueued::Stopped));
}

#[test]
fn what_a_refused_write_held_is_described_without_values() {
    let ops = vec![
        Op::File(file("h", "/a", 1)),
        Op::File(file("h", "/b", 1)),
        Op::RemoveFile { host_id: "h".into(), path: "/c".into() },
        Op::Host(HostRecord { host_id: "h".into(), ..Default::default() }),
    ];
    assert_eq!(describe(&ops), "2 file, 1 remove_file, 1 host; paths: /a, /b, /c");
    assert_eq!(host_of(&ops), Some("h"));
    let many: Vec<Op> = (0..7).map(|i| Op::File(file("h", &format!("/f{i}"), 1))).collect();
    assert_eq!(describe(&many), "7 file; paths: /f0, /f1, /f2, /f3, /f4 and 2 more");
    assert_eq!(describe(&[baseline("x", 1)]), "1 baseline");
}
