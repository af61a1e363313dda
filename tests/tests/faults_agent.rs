//! Agent faults end to end, with a real server and real agents on loopback:
//! - a full disk under the agent's state dir (a small tmpfs, root only): the agent keeps
//!   watching, the server's view stays current from memory, the condition is reported;
//!   also when the state dir is already full at start;
//! - a long outage at the spool's size cap: rescans stay bounded, no file is wrongly
//!   pruned, the drops are visible (GetHost, a metric, a built-in alert);
//! - a record the server refuses (over `max_files_per_host`): retried with a growing
//!   backoff, not once a second, and delivered once the limit allows it.
//!
//! Every wait polls with a deadline; measured figures are printed, not asserted.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use driftwatch_agent::RunningAgent;
use driftwatch_proto::v1::{self, alerts_client::AlertsClient, fleet_client::FleetClient};
use driftwatch_server::{RunningServer, ServerConfig};
use driftwatch_tests::privilege::Tmpfs;
use driftwatch_tests::*;
use tonic::transport::Channel;

const WAIT: Duration = Duration::from_secs(60);

/// An env file of about `bytes` bytes: `REV=<rev>`, then numbered settings.
fn env_file(rev: u64, tag: usize, bytes: usize) -> String {
    let mut s = format!("REV={rev}\n");
    let mut k = 0;
    while s.len() < bytes {
        s.push_str(&format!("SETTING_{k:04}=value-{tag}-{k}-abcdefghijklmnop\n"));
        k += 1;
    }
    s
}

/// `n` files of about `bytes` bytes each in `dir`, all at rev 0.
fn write_files(dir: &Path, n: usize, bytes: usize) -> BTreeMap<PathBuf, u64> {
    std::fs::create_dir_all(dir).unwrap();
    (0..n)
        .map(|i| {
            let p = dir.join(format!("svc{i:02}.env"));
            std::fs::write(&p, env_file(0, i, bytes)).unwrap();
            (p, 0)
        })
        .collect()
}

/// A server config on a fixed port, so the agent finds the server again after a restart.
fn fixed_port_config(data: &Path) -> ServerConfig {
    let mut cfg = ServerConfig::for_tests(data);
    cfg.listen = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    cfg
}

async fn host(c: &mut FleetClient<Channel>, id: &str) -> Option<v1::Host> {
    c.get_host(v1::GetHostRequest { host_id: id.into() }).await.ok().map(|r| r.into_inner())
}

/// The paths the server lists for `id`.
async fn server_paths(c: &mut FleetClient<Channel>, id: &str) -> Vec<PathBuf> {
    host(c, id).await.map(|h| h.files.iter().map(|f| PathBuf::from(&f.path)).collect()).unwrap_or_default()
}

/// The server's `REV` of each file, None for a file it does not hold or shows without keys.
async fn server_revs(c: &mut FleetClient<Channel>, id: &str, files: &BTreeMap<PathBuf, u64>) -> BTreeMap<PathBuf, u64> {
    let mut out = BTreeMap::new();
    for p in files.keys() {
        if let Some(f) = get_file(c, id, p).await
            && let Some(v1::value::Kind::IntValue(rev)) =
                f.state.as_ref().and_then(|s| key(s, "REV")).and_then(|v| v.kind.clone())
        {
            out.insert(p.clone(), rev as u64);
        }
    }
    out
}

/// Wait until the server holds exactly `files` for `id`, each at its rev.
async fn wait_view(c: &mut FleetClient<Channel>, id: &str, files: &BTreeMap<PathBuf, u64>, what: &str) {
    let deadline = Instant::now() + WAIT;
    loop {
        let paths = server_paths(c, id).await;
        if paths.iter().eq(files.keys()) && server_revs(c, id, files).await == *files {
            return;
        }
        if Instant::now() >= deadline {
            let revs = server_revs(c, id, files).await;
            let wrong: Vec<_> = files.iter().filter(|(p, r)| revs.get(*p) != Some(r)).collect();
            panic!(
                "timed out waiting for {what}: server lists {} files, want {}; wrong revs: {wrong:?}",
                paths.len(),
                files.len()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The host's summary (panics when the server does not know the host).
async fn summary(c: &mut FleetClient<Channel>, id: &str) -> v1::HostSummary {
    host(c, id).await.and_then(|h| h.summary).unwrap_or_else(|| panic!("no host {id}"))
}

/// The kinds of the events of the built-in drop alert of `id`, in order.
async fn drop_alert_events(server: &RunningServer, id: &str) -> Vec<i32> {
    let mut alerts = AlertsClient::new(connect(&server_url(server)).await);
    let events = alerts.list_events(v1::ListEventsRequest { after_id: 0, limit: 10_000 }).await.unwrap().into_inner();
    events
        .events
        .into_iter()
        .filter_map(|e| e.alert.filter(|a| a.rule == "agent_spool_dropped" && a.host_id == id).map(|_| e.kind))
        .collect()
}

fn edit(files: &mut BTreeMap<PathBuf, u64>, path: &Path, tag: usize, bytes: usize) {
    let rev = files.get(path).copied().unwrap_or(0) + 1;
    std::fs::write(path, env_file(rev, tag, bytes)).unwrap();
    files.insert(path.to_path_buf(), rev);
}

/// A fleet of one agent whose state dir is a 512 KiB tmpfs and which watches 40 files
/// of about 22 KB (a listing of about 900 KB), with the server up; `None` (skipped, or
/// failed under CI) when no tmpfs can be mounted.
struct SmallStateDir {
    _dir: tempfile::TempDir,
    fs: Tmpfs,
    etc: PathBuf,
    files: BTreeMap<PathBuf, u64>,
    server: RunningServer,
    c: FleetClient<Channel>,
    cfg: driftwatch_agent::AgentConfig,
}

async fn small_state_dir(host: &str) -> Option<SmallStateDir> {
    let dir = tempfile::tempdir().unwrap();
    let fs = Tmpfs::required("the agent's state dir on a tmpfs", "512k")?;
    let etc = dir.path().join("etc");
    let files = write_files(&etc, 40, 22_000);
    let server = start_server(&dir.path().join("server")).await;
    let c = fleet_client(&server).await;
    let cfg = agent_config(&server, host, fs.path(), &[format!("{}/*.env", etc.display())]);
    Some(SmallStateDir { _dir: dir, fs, etc, files, server, c, cfg })
}

/// The state dir on a 512 KiB tmpfs, 40 watched files of about 22 KB (a listing of
/// about 900 KB), the server up. The disk fills during the first listing, then stays
/// full: the server still shows every file and every later edit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_on_the_agent_keeps_the_fleet_view_current() {
    let Some(SmallStateDir { _dir, fs, etc, mut files, server, mut c, cfg }) = small_state_dir("full").await else {
        return;
    };
    let started = Instant::now();
    let agent = start_agent(cfg).await;
    wait_view(&mut c, "full", &files, "every file of the first listing").await;
    println!("listing of 40 files shown after {:?} (free on the state dir: {} bytes)", started.elapsed(), fs.free());

    // Keep the disk full: every later snapshot has to go from memory.
    let filled = fs.fill("filler");
    let p = etc.join("svc07.env");
    for _ in 0..3 {
        edit(&mut files, &p, 7, 22_000);
        wait_view(&mut c, "full", &files, "an edit while the state dir is full").await;
    }
    // The condition reached the server.
    let s = summary(&mut c, "full").await;
    println!(
        "filler: {filled} bytes; edits shown while full; GetHost: spool_degraded {:?}, {} snapshots sent from memory, {} dropped",
        s.spool_degraded, s.unspooled_snapshots, s.dropped_snapshots
    );
    assert!(s.spool_degraded.contains("storage full"), "{:?}", s.spool_degraded);
    assert!(s.unspooled_snapshots > 0);
    assert!(agent.status.unspooled.load(Ordering::Relaxed) > 0);
    assert!(server.metrics.snapshots_unspooled.get() > 0);
    assert!(server.metrics.render().contains("driftwatch_snapshots_unspooled_total"));
    assert_eq!(agent.status.full_listings.load(Ordering::Relaxed), 1, "no rescans on a full disk");

    // Space again: after its backoff the agent spools again, and says so.
    std::fs::remove_file(fs.path().join("filler")).unwrap();
    let freed = Instant::now();
    let mut rev_tag = 0;
    wait_for("the spool writable again", WAIT, || {
        // A snapshot is what tries the spool again.
        rev_tag += 1;
        edit(&mut files, &p, 7, 22_000);
        let mut c = c.clone();
        async move {
            tokio::time::sleep(Duration::from_millis(500)).await;
            summary(&mut c, "full").await.spool_degraded.is_empty().then_some(())
        }
    })
    .await;
    println!("spool writable again {:?} after space was freed ({rev_tag} edits)", freed.elapsed());
    wait_view(&mut c, "full", &files, "an edit after space was freed").await;
    agent.stop().await.unwrap();
    server.stop().await.unwrap();
    drop(fs);
}

/// The state dir is full before the agent starts: it starts, and the server gets its
/// listing and its edits from memory. The first run is stopped while its listing may
/// still wait for room: stopping must not leave the listing looping (it did when the
/// stream task returned on stop without marking the link down).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_starts_on_a_full_state_dir() {
    let Some(SmallStateDir { _dir, fs, etc, mut files, server, mut c, cfg }) = small_state_dir("full0").await else {
        return;
    };
    // A first run leaves its spool and identity files; then the disk fills up.
    start_agent(cfg.clone()).await.stop().await.unwrap();
    let filled = fs.fill("filler");
    println!("filler: {filled} bytes, {} bytes free", fs.free());
    let agent = start_agent(cfg).await;
    wait_view(&mut c, "full0", &files, "the listing of an agent started on a full disk").await;
    let p = etc.join("svc03.env");
    edit(&mut files, &p, 3, 22_000);
    wait_view(&mut c, "full0", &files, "an edit on a full disk").await;
    agent.stop().await.unwrap();
    server.stop().await.unwrap();
    drop(fs);
}

/// Seconds the long-outage test keeps the server down (`DRIFTWATCH_OUTAGE_SECS`, 10 by default).
fn outage() -> Duration {
    let secs = std::env::var("DRIFTWATCH_OUTAGE_SECS").ok().and_then(|v| v.parse().ok()).unwrap_or(10);
    Duration::from_secs(secs)
}

/// A 64 KiB spool, 48 watched files of about 24 KB (1.1 MiB), and the server down under
/// edits (a file deleted, one created): the agent does not rescan over and over, the
/// server never lists fewer files than are on disk (nothing wrongly pruned) and ends
/// with exactly the files on disk at their last edit; the drops show.
///
/// Full form (a minute): `DRIFTWATCH_OUTAGE_SECS=60 cargo test -p driftwatch-tests
/// --test faults_agent -- long_outage --nocapture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_outage_at_the_spool_cap() {
    let dir = tempfile::tempdir().unwrap();
    let etc = dir.path().join("etc");
    let mut files = write_files(&etc, 48, 24_000);
    let cfg = fixed_port_config(&dir.path().join("server"));
    let server = start_server_with(cfg.clone()).await;
    let mut c = fleet_client(&server).await;
    let mut acfg = agent_config(&server, "cap", &dir.path().join("agent"), &[format!("{}/*.env", etc.display())]);
    acfg.spool_max_bytes = 64 * 1024;
    let agent = start_agent(acfg).await;
    wait_view(&mut c, "cap", &files, "the first listing").await;
    let listings = |a: &RunningAgent| a.status.full_listings.load(Ordering::Relaxed);
    let before = listings(&agent);

    server.stop().await.unwrap();
    let down = outage();
    let start = Instant::now();
    let (mut n, mut deleted, mut created) = (0usize, false, false);
    let gone = etc.join("svc00.env");
    let new = etc.join("svc99.env");
    while start.elapsed() < down {
        let i = 1 + n % 47;
        edit(&mut files, &etc.join(format!("svc{i:02}.env")), i, 24_000);
        n += 1;
        if !deleted && start.elapsed() > down / 3 {
            std::fs::remove_file(&gone).unwrap();
            files.remove(&gone);
            deleted = true;
        }
        if !created && start.elapsed() > down * 2 / 3 {
            edit(&mut files, &new, 99, 24_000);
            created = true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let during = listings(&agent) - before;
    println!("outage of {down:?}: {n} edits, {during} full listings scanned while the server was down");

    let server = start_server_with(cfg).await;
    let mut c = fleet_client(&server).await;
    // Until the view is whole: every file on disk for the whole outage must stay listed.
    let kept: Vec<PathBuf> = files.keys().filter(|p| **p != new).cloned().collect();
    let deadline = Instant::now() + WAIT;
    let mut missing = BTreeMap::<PathBuf, usize>::new();
    loop {
        let paths = server_paths(&mut c, "cap").await;
        if !paths.is_empty() {
            for p in kept.iter().filter(|p| !paths.contains(p)) {
                *missing.entry(p.clone()).or_default() += 1;
            }
        }
        if paths.iter().eq(files.keys()) && server_revs(&mut c, "cap", &files).await == files {
            break;
        }
        assert!(Instant::now() < deadline, "the view did not become whole; missing so far: {missing:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let total = listings(&agent) - before;
    let s = summary(&mut c, "cap").await;
    let metric = server.metrics.agent_spool_dropped.get();
    println!(
        "after the outage: {total} full listings in all; GetHost dropped_snapshots {}, driftwatch_agent_spool_dropped_total {metric}, incomplete listings {}",
        s.dropped_snapshots,
        server.metrics.listings_incomplete.get()
    );
    assert!(missing.is_empty(), "files wrongly pruned while the view healed: {missing:?}");
    assert_eq!(during, 0, "{during} full listings while the server was down");
    assert!(total <= 2, "{total} full listings for one outage");
    // The drops are visible: GetHost, the metric, and the built-in alert, which fired
    // and resolved once the whole listing healed the view.
    assert!(s.dropped_snapshots > 0, "a 64 KiB spool cannot hold {n} edits");
    assert!(metric >= s.dropped_snapshots, "{metric} < {}", s.dropped_snapshots);
    assert!(server.metrics.render().contains("driftwatch_agent_spool_dropped_total"));
    let fired = v1::AlertEventKind::Fired as i32;
    let resolved = v1::AlertEventKind::Resolved as i32;
    let kinds = wait_for("the drop alert fired and resolved", WAIT, || async {
        let k = drop_alert_events(&server, "cap").await;
        k.ends_with(&[fired, resolved]).then_some(k)
    })
    .await;
    println!("drop alert events: {kinds:?}");
    agent.stop().await.unwrap();
    server.stop().await.unwrap();
}

/// A listing over `max_files_per_host`: the server refuses it after the Welcome. The
/// agent tries again with a growing backoff (the refusal is the operator's to lift),
/// and once the limit allows it the listing goes through and the backoff starts over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_record_is_retried_with_a_growing_backoff() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = fixed_port_config(&dir.path().join("server"));
    cfg.limits.max_files_per_host = 3;
    let server = start_server_with(cfg.clone()).await;
    let etc = dir.path().join("etc");
    let files = write_files(&etc, 5, 100);
    let agent =
        start_agent(agent_config(&server, "many", &dir.path().join("agent"), &[format!("{}/*.env", etc.display())]))
            .await;
    let start = Instant::now();
    wait_for("four refusals", WAIT, || {
        let hits = server.metrics.limit_hits("max_files_per_host");
        async move { (hits >= 4).then_some(()) }
    })
    .await;
    let backoff = agent.status.backoff_ms.load(Ordering::Relaxed);
    let hits = server.metrics.limit_hits("max_files_per_host");
    println!("{hits} refusals in {:?}; the reconnect backoff is now {backoff} ms", start.elapsed());
    assert!(backoff >= 2_000, "the backoff must grow while the server refuses every attempt ({backoff} ms)");

    // The limit is raised: the next attempt delivers, and the backoff starts over.
    server.stop().await.unwrap();
    cfg.limits.max_files_per_host = 10;
    let server = start_server_with(cfg).await;
    let mut c = fleet_client(&server).await;
    wait_view(&mut c, "many", &files, "the listing once the limit allows it").await;
    wait_for("the backoff reset after progress", WAIT, || {
        let b = agent.status.backoff_ms.load(Ordering::Relaxed);
        async move { (b == 1_000).then_some(()) }
    })
    .await;
    agent.stop().await.unwrap();
    server.stop().await.unwrap();
}

/// A protocol-level host sends a full listing with its middle part missing (as a spool
/// that dropped it would): the server prunes nothing from it; a whole listing then
/// prunes what is really gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listing_with_a_missing_part_prunes_nothing() {
    use driftwatch_tests::gateway::{hello, open_agent_stream, snapshot};
    use tokio_stream::StreamExt;

    let dir = tempfile::tempdir().unwrap();
    let server = start_server(&dir.path().join("server")).await;
    let mut c = fleet_client(&server).await;
    let (tx, mut inbound) =
        open_agent_stream(connect(&server_url(&server)).await, hello("gap", [], "test", "raw")).await.unwrap();
    let file = |p: &str| v1::FileState { path: p.into(), exists: true, ..Default::default() };
    let send = |seq: u64, full: bool, first: u64, last: bool, paths: &[&str]| {
        let files = paths.iter().map(|p| file(p)).collect();
        let snap = v1::Snapshot { seq, full, full_first_seq: first, full_last: last, files, ..Default::default() };
        tx.send(snapshot(snap)).unwrap();
    };
    async fn acked(inbound: &mut tonic::Streaming<v1::ServerMessage>, seq: u64) {
        tokio::time::timeout(WAIT, async {
            while let Some(m) = inbound.next().await {
                if let Some(v1::server_message::Kind::Ack(a)) = m.unwrap().kind
                    && a.seq >= seq
                {
                    return;
                }
            }
            panic!("stream ended");
        })
        .await
        .expect("an ack");
    }
    send(1, false, 0, false, &["/etc/a", "/etc/b", "/etc/c"]);
    acked(&mut inbound, 1).await;
    // Seq 3 (listing /etc/b) never arrives.
    send(2, true, 0, false, &["/etc/a"]);
    send(4, true, 2, true, &["/etc/c"]);
    acked(&mut inbound, 4).await;
    let paths = server_paths(&mut c, "gap").await;
    assert_eq!(paths.len(), 3, "a listing with a part missing pruned {paths:?}");
    assert_eq!(server.metrics.listings_incomplete.get(), 1);
    // A whole listing without /etc/b: now it goes.
    send(5, true, 0, false, &["/etc/a"]);
    send(6, true, 5, true, &["/etc/c"]);
    acked(&mut inbound, 6).await;
    let paths = server_paths(&mut c, "gap").await;
    assert_eq!(paths, vec![PathBuf::from("/etc/a"), PathBuf::from("/etc/c")]);
    server.stop().await.unwrap();
}
