//! Faults on the server's write path. While the store writer cannot commit (another
//! process holds the database's write lock; the data dir's disk is full) nothing is
//! acknowledged, nothing queued for it is dropped, `/healthz` says why, and once the
//! fault is gone everything sent meanwhile is stored. A snapshot the store can never
//! take is refused on its own (its agent told, the refusal recorded) and everything
//! around it is stored.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use driftwatch_proto::v1::{self, server_message};
use driftwatch_tests::gateway::{hello, open_agent_stream, snapshot};
use driftwatch_tests::*;
use tokio_stream::StreamExt;

/// `GET path` on the metrics listener: the status code and the body.
async fn http_get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes()).await.unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    let code = out.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = out.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    (code, body)
}

fn file(path: &str, n: i64) -> v1::FileState {
    v1::FileState {
        path: path.into(),
        status: v1::FileStatus::Ok as i32,
        keys: vec![v1::KeyValue { key: "V".into(), value: Some(v1::Value::int(n)) }],
        ..Default::default()
    }
}

fn snap(seq: u64, path: &str) -> v1::AgentMessage {
    snapshot(v1::Snapshot { seq, files: vec![file(path, seq as i64)], ..Default::default() })
}

/// The next Ack on `inbound` at or above `seq`.
async fn wait_ack(inbound: &mut tonic::Streaming<v1::ServerMessage>, seq: u64) {
    let deadline = Duration::from_secs(60);
    tokio::time::timeout(deadline, async {
        while let Some(m) = inbound.next().await {
            if let Ok(v1::ServerMessage { kind: Some(server_message::Kind::Ack(a)) }) = m
                && a.seq >= seq
            {
                return;
            }
        }
        panic!("stream ended before ack {seq}");
    })
    .await
    .unwrap_or_else(|_| panic!("no ack {seq} within {deadline:?}"));
}

/// A second connection to the server's database holding its write lock (`BEGIN
/// IMMEDIATE`): the server's writer gets SQLITE_BUSY until it is released.
struct WriteLock(rusqlite::Connection);

impl WriteLock {
    fn take(db: &Path) -> Self {
        let c = rusqlite::Connection::open(db).unwrap();
        c.busy_timeout(Duration::from_secs(30)).unwrap();
        c.execute_batch("BEGIN IMMEDIATE").unwrap();
        Self(c)
    }

    fn release(self) {
        self.0.execute_batch("ROLLBACK").unwrap();
    }
}

/// The writer's queue fills up while it cannot commit. A host that connects then,
/// reports drops in its Hello and a heartbeat, and goes away again, has every one of
/// those records stored once the writer can commit: none is dropped for want of room.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_records_sent_while_the_writer_queue_is_full_are_stored() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("server");
    let mut config = driftwatch_server::ServerConfig::for_tests(&data);
    // One item per commit and a queue of four: easy to fill.
    config.max_batch = 1;
    let db = config.sqlite_path();
    let server = start_server_with(config.clone()).await;
    let url = server_url(&server);
    let metrics = server.metrics_addr.unwrap();

    let (busy, mut busy_in) = open_agent_stream(connect(&url).await, hello("busy", [], "t", "s")).await.unwrap();
    busy.send(snap(1, "/etc/f1")).unwrap();
    wait_ack(&mut busy_in, 1).await;

    let lock = WriteLock::take(&db);
    let stalled = Instant::now();
    // The writer takes seq 2 and is stuck on it; 3-6 fill the queue; the stream task
    // waits for a place for seq 7 before applying it; seq 8 stays unread.
    for seq in 2..=8 {
        busy.send(snap(seq, &format!("/etc/f{seq}"))).unwrap();
    }
    let c = fleet_client(&server).await;
    wait_for("seq 6 applied (the writer's queue is full)", Duration::from_secs(30), || {
        let mut c = c.clone();
        async move { get_file(&mut c, "busy", Path::new("/etc/f6")).await }
    })
    .await;

    // A host arrives, says it dropped snapshots, and leaves, all while the queue is full.
    let mut late_hello = hello("late", [("role".to_string(), "db".to_string())], "t", "s");
    late_hello.dropped_snapshots = 7;
    let (late, late_in) = open_agent_stream(connect(&url).await, late_hello).await.unwrap();
    let hb = v1::Heartbeat { dropped_snapshots: 9, ..Default::default() };
    late.send(v1::AgentMessage { kind: Some(v1::agent_message::Kind::Heartbeat(hb)) }).unwrap();
    // Half-close: what was sent is still read (a reset stream would discard it).
    drop(late);

    let health = wait_for("/healthz failing", Duration::from_secs(30), || async move {
        let (code, body) = http_get(metrics, "/healthz").await;
        (code == 503).then_some(body)
    })
    .await;
    let acked_while_locked = server.state.hosts.get("busy").map(|h| h.stored_seq).unwrap_or_default();
    lock.release();
    wait_ack(&mut busy_in, 8).await;
    wait_for("the late host offline with its drops", Duration::from_secs(30), || {
        let mut c = c.clone();
        async move {
            let h = c.get_host(v1::GetHostRequest { host_id: "late".into() }).await.ok()?.into_inner();
            let s = h.summary?;
            (s.state == v1::ConnectionState::Offline as i32 && s.dropped_snapshots == 9).then_some(())
        }
    })
    .await;
    println!("writer stalled {:?} by a held write lock; /healthz said {health:?}", stalled.elapsed());
    drop((busy, busy_in, late_in));
    server.stop().await.unwrap();

    // What the restarted server loads is what was stored.
    let server = start_server_with(config).await;
    let mut c = fleet_client(&server).await;
    let late = c.get_host(v1::GetHostRequest { host_id: "late".into() }).await;
    let late = late.expect("the late host was stored").into_inner().summary.unwrap();
    assert_eq!(late.dropped_snapshots, 9, "the heartbeat's drop count was stored");
    assert_eq!(late.labels.get("role").map(String::as_str), Some("db"));
    let busy = c.get_host(v1::GetHostRequest { host_id: "busy".into() }).await.unwrap().into_inner();
    assert_eq!(busy.files.len(), 8, "every snapshot of the busy host stored: {:?}", busy.files);
    assert_eq!(acked_while_locked, 1, "nothing acknowledged while the writer could not commit");
    assert!(health.contains("store: commits failing") && health.contains("locked"), "{health}");
    let text = server.metrics.render();
    assert!(text.contains("driftwatch_writer_queue_full_waits_total"), "{text}");
    assert!(text.contains("driftwatch_store_commit_failures_total{kind=\"busy\"}"), "{text}");
    server.stop().await.unwrap();
}

/// A snapshot the store can never take (here: a trigger on the database refuses its
/// file) is refused on its own: its agent gets a status naming its seq and why, the
/// refusal is recorded in the store's quarantine and counted, and the snapshots
/// before and after it are stored and acknowledged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_the_store_refuses_is_quarantined_and_the_rest_stored() {
    let dir = tempfile::tempdir().unwrap();
    let config = driftwatch_server::ServerConfig::for_tests(dir.path().join("server"));
    let db = config.sqlite_path();
    let server = start_server_with(config).await;
    let (tx, mut inbound) =
        open_agent_stream(connect(&server_url(&server)).await, hello("p", [], "t", "s")).await.unwrap();
    tx.send(snap(1, "/etc/ok1")).unwrap();
    wait_ack(&mut inbound, 1).await;

    let poison = rusqlite::Connection::open(&db).unwrap();
    poison.busy_timeout(Duration::from_secs(30)).unwrap();
    poison
        .execute_batch(
            "CREATE TRIGGER poison BEFORE INSERT ON files WHEN NEW.path = '/etc/poison'
             BEGIN SELECT RAISE(ABORT, 'poisoned row'); END;",
        )
        .unwrap();
    tx.send(snap(2, "/etc/poison")).unwrap();
    tx.send(snap(3, "/etc/ok3")).unwrap();
    let status = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            match inbound.next().await {
                Some(Ok(_)) => continue,
                Some(Err(s)) => return s,
                None => panic!("stream ended without a status"),
            }
        }
    })
    .await
    .expect("the refusal within 30 s");
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    assert!(status.message().contains("snapshot 2 of host 'p' was refused"), "{}", status.message());
    assert!(status.message().contains("poisoned row"), "{}", status.message());
    wait_for("seq 3 stored", Duration::from_secs(30), || {
        std::future::ready(server.state.hosts.get("p").is_some_and(|h| h.stored_seq >= 3).then_some(()))
    })
    .await;

    let store = driftwatch_store::Store::open(&db).unwrap();
    let paths: Vec<String> = store.load_files().unwrap().into_iter().map(|f| f.path).collect();
    assert_eq!(paths, vec!["/etc/ok1", "/etc/ok3"]);
    let q = store.quarantined(10).unwrap();
    assert_eq!(q.len(), 1, "{q:?}");
    assert_eq!((q[0].host_id.as_str(), q[0].seq), ("p", 2));
    assert!(q[0].error.contains("poisoned row") && q[0].detail.contains("/etc/poison"), "{q:?}");
    assert_eq!(server.metrics.store_quarantined.get(), 1);
    let (code, body) = http_get(server.metrics_addr.unwrap(), "/healthz").await;
    assert_eq!(code, 200, "one refused snapshot is not a failing store: {body}");
    server.stop().await.unwrap();
}

/// The same with a real agent: after the refusal it reconnects, is not sent the
/// refused snapshot again (the Welcome acknowledges it), and its later edits are
/// stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_agent_goes_on_after_a_refused_snapshot() {
    use std::sync::atomic::Ordering::Relaxed;
    let dir = tempfile::tempdir().unwrap();
    let config = driftwatch_server::ServerConfig::for_tests(dir.path().join("server"));
    let db = config.sqlite_path();
    let server = start_server_with(config).await;
    let etc = dir.path().join("etc");
    std::fs::create_dir_all(&etc).unwrap();
    let ok = etc.join("ok.env");
    std::fs::write(&ok, "V=1\n").unwrap();
    let agent =
        start_agent(agent_config(&server, "r-1", &dir.path().join("agent"), &[format!("{}/*.env", etc.display())]))
            .await;
    let status = agent.status.clone();
    let settled = || {
        let last = status.last_seq.load(Relaxed);
        (last > 0 && status.acked_seq.load(Relaxed) >= last).then_some(last)
    };
    let listed =
        wait_for("the first listing acknowledged", Duration::from_secs(30), || std::future::ready(settled())).await;

    let poison = rusqlite::Connection::open(&db).unwrap();
    poison.busy_timeout(Duration::from_secs(30)).unwrap();
    poison
        .execute_batch(
            "CREATE TRIGGER poison BEFORE INSERT ON files WHEN NEW.path LIKE '%/poison.env'
             BEGIN SELECT RAISE(ABORT, 'poisoned row'); END;",
        )
        .unwrap();
    let connections = status.connections.load(Relaxed);
    std::fs::write(etc.join("poison.env"), "V=666\n").unwrap();
    let refused = wait_for("the poisoned snapshot settled", Duration::from_secs(30), || {
        std::future::ready(settled().filter(|&last| last > listed))
    })
    .await;
    assert!(status.connections.load(Relaxed) > connections, "the refusal closed the stream and the agent reconnected");
    std::fs::write(&ok, "V=2\n").unwrap();
    let mut c = fleet_client(&server).await;
    wait_file(&mut c, "r-1", &ok, "the edit after the refusal", |s| key(s, "V") == Some(&v1::Value::int(2))).await;
    wait_for("the edit acknowledged", Duration::from_secs(30), || {
        std::future::ready(settled().filter(|&last| last > refused))
    })
    .await;

    let store = driftwatch_store::Store::open(&db).unwrap();
    let q = store.quarantined(10).unwrap();
    assert_eq!(q.len(), 1, "refused once, never resent: {q:?}");
    assert_eq!((q[0].host_id.as_str(), q[0].seq), ("r-1", refused));
    let stored: Vec<(String, Option<i64>)> =
        store.load_files().unwrap().into_iter().map(|f| (f.path, stored_v(&f.state))).collect();
    assert_eq!(stored, vec![(ok.display().to_string(), Some(2))]);
    println!("snapshot {refused} refused; {} connections", status.connections.load(Relaxed));
    agent.stop().await.unwrap();
    server.stop().await.unwrap();
}

/// The stored value of `V` in a stored file state.
fn stored_v(state: &[u8]) -> Option<i64> {
    use prost::Message;
    let s = v1::FileState::decode(state).ok()?;
    match key(&s, "V")?.kind {
        Some(v1::value::Kind::IntValue(n)) => Some(n),
        _ => None,
    }
}

/// Fault test 3, server side: the data dir on a small tmpfs fills up while a real
/// agent keeps sending edits. Nothing is acknowledged while commits fail and
/// `/healthz` says why; after the filler is deleted every edit made meanwhile is
/// stored and `/healthz` is healthy again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_under_the_server_loses_and_acknowledges_nothing() {
    let Some(tmpfs) = driftwatch_tests::privilege::Tmpfs::required("the server's data dir on a tmpfs", "16m") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let data = tmpfs.path().join("data");
    let config = driftwatch_server::ServerConfig::for_tests(&data);
    let db = config.sqlite_path();
    let server = start_server_with(config).await;
    let metrics = server.metrics_addr.unwrap();

    let etc = dir.path().join("etc");
    std::fs::create_dir_all(&etc).unwrap();
    let paths: Vec<PathBuf> = (0..5).map(|i| etc.join(format!("app{i}.env"))).collect();
    for p in &paths {
        std::fs::write(p, "V=0\n").unwrap();
    }
    let agent =
        start_agent(agent_config(&server, "full-1", &dir.path().join("agent"), &[format!("{}/*.env", etc.display())]))
            .await;
    let status = agent.status.clone();
    let all_acked = || {
        let last = status.last_seq.load(std::sync::atomic::Ordering::Relaxed);
        (last > 0 && status.acked_seq.load(std::sync::atomic::Ordering::Relaxed) >= last).then_some(())
    };
    wait_for("the first listing acknowledged", Duration::from_secs(30), || std::future::ready(all_acked())).await;

    let filler = tmpfs.path().join("filler");
    let filled = tmpfs.fill("filler");
    println!("filler: {filled} bytes");

    // Edit until commits fail; each edit waits until the agent has spooled it.
    let mut value = 0i64;
    let edit = |value: &mut i64| {
        *value += 1;
        let p = &paths[*value as usize % paths.len()];
        std::fs::write(p, format!("V={value}\n")).unwrap();
        (p.clone(), *value)
    };
    let seq = || status.last_seq.load(std::sync::atomic::Ordering::Relaxed);
    let acked = || status.acked_seq.load(std::sync::atomic::Ordering::Relaxed);
    let mut written = Vec::new();
    let failing_since = Instant::now();
    let reason = loop {
        let before = seq();
        written.push(edit(&mut value));
        wait_for("the edit spooled", Duration::from_secs(15), || std::future::ready((seq() > before).then_some(())))
            .await;
        let (code, body) = http_get(metrics, "/healthz").await;
        if code == 503 {
            break body;
        }
        assert!(failing_since.elapsed() < Duration::from_secs(120), "commits never failed on a full disk");
    };
    println!("commits failing after {} edits: /healthz says {reason:?}", written.len());
    assert!(reason.contains("store: commits failing") && reason.contains("full"), "{reason}");

    // Keep editing: nothing is stored, so nothing acknowledged, while the disk stays
    // full. (The writer publishes what a commit stored before it starts the next
    // one, whose failure /healthz shows: the server's stored seq is exact here.)
    let stored = || server.state.hosts.get("full-1").map(|h| h.stored_seq).unwrap_or_default();
    let stored_at_failure = stored();
    let first_unstored = seq() + 1;
    assert!(stored_at_failure < first_unstored);
    const EDITS_WHILE_FULL: usize = 20;
    for _ in 0..EDITS_WHILE_FULL {
        let before = seq();
        written.push(edit(&mut value));
        wait_for("the edit spooled", Duration::from_secs(15), || std::future::ready((seq() > before).then_some(())))
            .await;
        assert_eq!(stored(), stored_at_failure, "a commit while the disk is full");
        assert!(acked() <= stored_at_failure, "an acknowledgement of something not stored");
    }
    let (code, body) = http_get(metrics, "/healthz").await;
    assert_eq!(code, 503, "{body}");
    println!(
        "{EDITS_WHILE_FULL} edits (seq {first_unstored} to {}) while commits failed; acknowledged up to {}",
        seq(),
        acked()
    );

    std::fs::remove_file(&filler).unwrap();
    let freed = Instant::now();
    wait_for("/healthz healthy", Duration::from_secs(60), || async move {
        (http_get(metrics, "/healthz").await.0 == 200).then_some(())
    })
    .await;
    let healthy_after = freed.elapsed();
    wait_for("every edit acknowledged", Duration::from_secs(60), || std::future::ready(all_acked())).await;
    println!(
        "recovery: /healthz healthy {healthy_after:?} and every edit acknowledged {:?} after space was freed",
        freed.elapsed()
    );

    // Stored (read from the database itself): every edit in history, once, and each
    // file's current version is what is on disk.
    let store = driftwatch_store::Store::open(&db).unwrap();
    for (i, p) in paths.iter().enumerate() {
        let path = p.display().to_string();
        let history: Vec<i64> =
            store.file_history("full-1", &path, 1000).unwrap().iter().filter_map(|r| stored_v(&r.state)).collect();
        let mine: Vec<i64> = written.iter().filter(|(q, _)| q == p).map(|(_, v)| *v).collect();
        for v in &mine {
            assert_eq!(history.iter().filter(|h| *h == v).count(), 1, "{path}: edit V={v} in history {history:?}");
        }
        let on_disk = std::fs::read_to_string(p).unwrap();
        let current = store.load_files().unwrap().into_iter().find(|r| r.host_id == "full-1" && r.path == path);
        let current = current.and_then(|r| stored_v(&r.state));
        assert_eq!(current.map(|v| format!("V={v}\n")), Some(on_disk), "file {i}");
    }
    let text = server.metrics.render();
    assert!(text.contains("driftwatch_store_commit_failures_total{kind=\"disk_full\"}"), "{text}");
    drop(store);
    agent.stop().await.unwrap();
    server.stop().await.unwrap();
    drop(tmpfs);
}
