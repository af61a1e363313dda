//! Fault test 1: kill -9 chaos with an ack ledger.
//!
//! The real `driftwatch-server` binary (plaintext loopback) and three real
//! `driftwatch-agent` binaries, each watching its own directory of .env and YAML files
//! that a writer edits every 50-100 ms (every edit a new value). Each round the server
//! is SIGKILLed at a random moment and restarted on the same port and data dir, and the
//! test waits, with a deadline, until every agent is connected again; every third round
//! one agent (in turn) is SIGKILLed first, while the server is up, and restarted on its
//! same state dir. Every agent logs each snapshot the server
//! acknowledged (`driftwatch_agent::run::ACK_LOG_ENV`, a test-only ledger).
//!
//! Oracles, after a last clean settle and a final SIGKILL of everything:
//! - every acknowledged snapshot is in the store (see [`check_ledger`] for what that
//!   means row by row);
//! - the stored state of every file equals the file on disk, parsed the agent's way
//!   (through the API while running, and in the store);
//! - no history row is stored twice (one host, path and seq);
//! - every agent reconnected after every round (each wait has a deadline).
//!
//! Short form (CI): `DRIFTWATCH_CHAOS_ROUNDS` rounds, 6 by default (two with an agent killed). Full form:
//!
//! ```text
//! DRIFTWATCH_CHAOS_ROUNDS=15 cargo test -p driftwatch-tests --test faults_chaos -- --nocapture
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use driftwatch_formats::{Limits, Masker, analyze, detect_format};
use driftwatch_proto::v1::{self, fleet_client::FleetClient};
use driftwatch_tests::*;
use prost::Message;
use rand::Rng;
use tonic::transport::Channel;

const AGENTS: usize = 3;
/// Every deadline: generous, a slow machine only takes longer.
const WAIT: Duration = Duration::from_secs(60);

/// The watched files of one agent: name and a template with the unique value `{n}`.
const FILES: &[(&str, &str)] = &[
    ("app.env", "V={n}\nNAME=app\nAPI_TOKEN=tok-{n}-0123456789abcdef\n"),
    ("db.env", "V={n}\nPOOL=8\n"),
    ("svc.yaml", "service:\n  v: {n}\n  replicas: 3\n"),
    ("flags.yaml", "v: {n}\nflags:\n  - a\n  - b\n"),
];

fn content(template: &str, n: u64) -> String {
    template.replace("{n}", &n.to_string())
}

/// The server binary on a fixed port and data dir, restartable.
struct Server {
    dir: PathBuf,
    port: u16,
    process: Option<ChildProcess>,
}

impl Server {
    fn start(dir: &Path) -> Self {
        // History is kept whole: retention must not remove what the ledger checks.
        std::fs::write(dir.join("server.toml"), "[retention]\nfile_history_versions = 0\n").unwrap();
        let mut s = Self { dir: dir.to_path_buf(), port: free_port(), process: None };
        s.launch();
        s
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn data(&self) -> PathBuf {
        self.dir.join("data")
    }

    fn launch(&mut self) {
        let mut cmd = Command::new(server_binary());
        cmd.arg("--insecure")
            .args(["--listen", &format!("127.0.0.1:{}", self.port), "--metrics-listen", "off"])
            .arg("--config")
            .arg(self.dir.join("server.toml"))
            .arg("--data")
            .arg(self.data());
        let p = ChildProcess::spawn("driftwatch-server", cmd, Some(&self.dir.join("server.log")));
        self.process = Some(p.expect("start the server process"));
    }

    fn kill(&mut self) {
        if let Some(mut p) = self.process.take() {
            p.kill();
        }
    }
}

/// A Fleet client once the server answers.
async fn fleet(url: &str) -> FleetClient<Channel> {
    wait_for("the server answering", WAIT, || async move {
        let ch = tonic::transport::Endpoint::from_shared(url.to_string()).ok()?.connect().await.ok()?;
        let mut c = FleetClient::new(ch);
        c.list_hosts(v1::ListHostsRequest::default()).await.ok()?;
        Some(c)
    })
    .await
}

/// Wait until every host in `ids` is online.
async fn wait_all_online(c: &FleetClient<Channel>, ids: &[String], what: &str) {
    wait_for(what, WAIT, || {
        let mut c = c.clone();
        async move {
            let hosts = c.list_hosts(v1::ListHostsRequest::default()).await.ok()?.into_inner().hosts;
            let online =
                |id: &String| hosts.iter().any(|h| &h.host_id == id && h.state == v1::ConnectionState::Online as i32);
            ids.iter().all(online).then_some(())
        }
    })
    .await;
}

/// One watched directory and what the agent should make of each file on disk.
struct Watched {
    host: String,
    dir: PathBuf,
}

impl Watched {
    fn paths(&self) -> Vec<PathBuf> {
        FILES.iter().map(|(name, _)| self.dir.join(name)).collect()
    }

    /// Each file as the agent parses it now: path → (keys, content hash).
    fn on_disk(&self, masker: &Masker) -> BTreeMap<String, (Vec<v1::KeyValue>, String)> {
        self.paths()
            .into_iter()
            .map(|p| {
                let bytes = std::fs::read(&p).unwrap();
                let a = analyze(&bytes, detect_format(&p), masker, &Limits::default());
                (p.display().to_string(), (a.keys, a.content_hash))
            })
            .collect()
    }
}

/// Keys as the API shows them: a masked value's fingerprint shortened (the store keeps
/// it whole).
fn as_shown(mut keys: Vec<v1::KeyValue>) -> Vec<v1::KeyValue> {
    for kv in &mut keys {
        if let Some(v1::Value { kind: Some(v1::value::Kind::Masked(m)) }) = &mut kv.value {
            m.fingerprint = driftwatch_proto::short_fingerprint(&m.fingerprint).to_string();
        }
    }
    keys
}

/// The server's state of each file of `w` (path → keys, content hash).
async fn served(c: &mut FleetClient<Channel>, w: &Watched) -> BTreeMap<String, (Vec<v1::KeyValue>, String)> {
    let mut out = BTreeMap::new();
    for p in w.paths() {
        if let Some(s) = get_file(c, &w.host, &p).await.and_then(|f| f.state) {
            out.insert(p.display().to_string(), (s.keys, s.content_hash));
        }
    }
    out
}

/// Wait until the server shows every file of `w` as it is on disk; on the deadline,
/// fail naming the files that differ.
async fn wait_as_on_disk(c: &mut FleetClient<Channel>, w: &Watched, masker: &Masker) {
    let want: BTreeMap<_, _> = w.on_disk(masker).into_iter().map(|(p, (k, h))| (p, (as_shown(k), h))).collect();
    let deadline = Instant::now() + WAIT;
    loop {
        let seen = served(c, w).await;
        if seen == want {
            return;
        }
        if Instant::now() >= deadline {
            let wrong: Vec<_> = want.iter().filter(|(p, v)| seen.get(*p) != Some(v)).collect();
            panic!("{}: files not as on disk after {WAIT:?}: want {wrong:#?}, the server shows {seen:#?}", w.host);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Edits one file of every watched directory every 50-100 ms, each a new value, until
/// told to stop. Returns how many edits it made.
fn spawn_writer(dirs: Vec<PathBuf>, stop: Arc<AtomicBool>, edits: Arc<AtomicU64>) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut rng = rand::rng();
        while !stop.load(Ordering::Relaxed) {
            for d in &dirs {
                let (name, template) = FILES[rng.random_range(0..FILES.len())];
                let n = edits.fetch_add(1, Ordering::Relaxed) + 1;
                replace_file(&d.join(name), &content(template, n));
            }
            // Pacing of the edit rate, not a wait for a condition.
            std::thread::sleep(Duration::from_millis(rng.random_range(50..=100)));
        }
    })
}

/// One acknowledged snapshot from an agent's ledger.
#[derive(Debug)]
struct Acked {
    spool_id: String,
    seq: u64,
    files: Vec<(String, String)>,
}

/// An agent's ledger; a torn last line (the agent killed while writing it) is skipped,
/// a bad line anywhere else fails the test. Returns the entries and whether the last
/// line was torn.
fn read_ledger(path: &Path) -> (Vec<Acked>, bool) {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.split_inclusive('\n').collect();
    let mut out = Vec::new();
    let mut torn = false;
    for (i, line) in lines.iter().enumerate() {
        let parsed =
            line.strip_suffix('\n').and_then(|l| serde_json::from_str::<serde_json::Value>(l).ok()).and_then(|v| {
                let files = v["files"]
                    .as_array()?
                    .iter()
                    .map(|f| Some((f["path"].as_str()?.to_string(), f["hash"].as_str()?.to_string())))
                    .collect::<Option<Vec<_>>>()?;
                Some(Acked { spool_id: v["spool_id"].as_str()?.to_string(), seq: v["seq"].as_u64()?, files })
            });
        match parsed {
            Some(a) => out.push(a),
            None if i + 1 == lines.len() => torn = true,
            None => panic!("{}: line {} is not a ledger entry: {line:?}", path.display(), i + 1),
        }
    }
    (out, torn)
}

/// The content hash of an encoded `FileState` (a stored row's `state`).
fn hash_of(state: &[u8]) -> String {
    v1::FileState::decode(state).map(|s| s.content_hash).unwrap_or_default()
}

/// Every acknowledged snapshot is in the store. Concretely, for an entry (host, spool
/// id, seq, files): the host's stored spool id is that spool id and its stored
/// `last_seq` (the highest seq applied and stored, from which the server dedups after a
/// restart) is at least seq; and for each file the snapshot held, `file_history` has
/// the row (host, path, seq) with that content hash: the server writes one history row
/// per file of each snapshot it stores, so a lost snapshot is a missing row. Returns
/// how many entries and file rows were checked.
fn check_ledger(db: &rusqlite::Connection, host: &str, ledger: &[Acked]) -> (usize, usize) {
    let (spool_id, last_seq): (String, i64) = db
        .query_row("SELECT spool_id, last_seq FROM hosts WHERE host_id = ?1", [host], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap_or_else(|e| panic!("host {host} not stored: {e}"));
    let mut rows = db.prepare("SELECT state FROM file_history WHERE host_id = ?1 AND path = ?2 AND seq = ?3").unwrap();
    let mut files = 0;
    for a in ledger {
        assert_eq!(
            a.spool_id, spool_id,
            "{host}: acknowledged seq {} of spool {} but the store has spool {spool_id}",
            a.seq, a.spool_id
        );
        assert!(a.seq as i64 <= last_seq, "{host}: seq {} acknowledged, the store's last seq is {last_seq}", a.seq);
        for (path, hash) in &a.files {
            let stored: Vec<Vec<u8>> = rows
                .query_map(rusqlite::params![host, path, a.seq as i64], |r| r.get(0))
                .unwrap()
                .map(Result::unwrap)
                .collect();
            assert!(
                stored.iter().any(|s| &hash_of(s) == hash),
                "{host}: acknowledged snapshot {} of {path} (content {hash}) missing from history; rows with that seq: {:?}",
                a.seq,
                stored.iter().map(|s| hash_of(s)).collect::<Vec<_>>()
            );
            files += 1;
        }
    }
    (ledger.len(), files)
}

fn median(v: &mut [Duration]) -> Duration {
    v.sort();
    v.get(v.len() / 2).copied().unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_snapshots_survive_kill_9_of_server_and_agents() {
    let rounds: usize = std::env::var("DRIFTWATCH_CHAOS_ROUNDS").ok().and_then(|s| s.parse().ok()).unwrap_or(6);
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    // Both binaries built (or found fresh) before anything starts.
    let _ = (server_binary(), agent_binary());
    let mut server = Server::start(dir.path());
    let url = server.url();
    let masker = Masker::new(TEST_FLEET_KEY.as_bytes());

    let mut watched = Vec::new();
    let mut agents = Vec::new();
    let mut ledgers = Vec::new();
    for i in 0..AGENTS {
        let host = format!("chaos-{i}");
        let etc = dir.path().join(format!("etc-{i}"));
        std::fs::create_dir_all(&etc).unwrap();
        for (name, template) in FILES {
            replace_file(&etc.join(name), &content(template, 0));
        }
        let adir = dir.path().join(format!("agent-{i}"));
        let ledger = dir.path().join(format!("acks-{i}.log"));
        let watch = [format!("{}/*.env", etc.display()), format!("{}/*.yaml", etc.display())];
        let file = agent_file(&url, &host, &adir.join("state"), &watch);
        agents.push(AgentProcess::start_with_env(&adir, &file, &[(driftwatch_agent::run::ACK_LOG_ENV, &ledger)]));
        watched.push(Watched { host, dir: etc });
        ledgers.push(ledger);
    }
    let ids: Vec<String> = watched.iter().map(|w| w.host.clone()).collect();
    let c = fleet(&url).await;
    wait_all_online(&c, &ids, "every agent connected at start").await;

    let stop = Arc::new(AtomicBool::new(false));
    let edits = Arc::new(AtomicU64::new(0));
    let writer = spawn_writer(watched.iter().map(|w| w.dir.clone()).collect(), stop.clone(), edits.clone());

    let mut rng = rand::rng();
    let (mut server_kills, mut agent_kills) = (0, 0);
    let mut reconnects = Vec::new();
    for round in 1..=rounds {
        // Edits and acks flowing for a while, then the crashes at random moments: an
        // agent (every third round, in turn) while the server is up, then the server.
        tokio::time::sleep(Duration::from_millis(rng.random_range(400..=1500))).await;
        let victim = (round % 3 == 0).then(|| (round / 3 - 1) % AGENTS);
        if let Some(v) = victim {
            agents[v].kill();
            agent_kills += 1;
            agents[v].start_again();
            tokio::time::sleep(Duration::from_millis(rng.random_range(300..=1200))).await;
        }
        server.kill();
        server_kills += 1;
        let restarted = Instant::now();
        server.launch();
        let c = fleet(&url).await;
        wait_all_online(&c, &ids, &format!("every agent reconnected after round {round}")).await;
        let took = restarted.elapsed();
        reconnects.push(took);
        let victim = victim.map(|v| format!(" (agent {} killed before it)", ids[v])).unwrap_or_default();
        println!(
            "round {round}: server killed{victim}; all {AGENTS} agents back {} ms after the restart",
            took.as_millis()
        );
    }

    // A clean settle: no more edits, the server's view catches up with the disk.
    stop.store(true, Ordering::Relaxed);
    writer.join().unwrap();
    let mut c = fleet(&url).await;
    for (w, ledger) in watched.iter().zip(&ledgers) {
        wait_as_on_disk(&mut c, w, &masker).await;
        // And acknowledged: the agent has logged every snapshot the server stored.
        wait_for(&format!("{}'s stored snapshots acknowledged", w.host), WAIT, || {
            let mut c = c.clone();
            async move {
                let h = c.get_host(v1::GetHostRequest { host_id: w.host.clone() }).await.ok()?.into_inner();
                let stored = h.summary?.last_seq;
                let logged = read_ledger(ledger).0.iter().map(|a| a.seq).max().unwrap_or(0);
                (logged >= stored).then_some(())
            }
        })
        .await;
    }
    let summaries = c.list_hosts(v1::ListHostsRequest::default()).await.unwrap().into_inner().hosts;
    let dropped: u64 = summaries.iter().map(|h| h.dropped_snapshots).sum();

    // Everything crashes once more; the store is read as the next start would find it.
    for a in &mut agents {
        a.kill();
    }
    server.kill();
    let db = rusqlite::Connection::open_with_flags(
        server.data().join("driftwatch.db"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .expect("open the server's database read-only");

    let (mut acks, mut rows, mut torn) = (0, 0, 0);
    for (w, ledger) in watched.iter().zip(&ledgers) {
        let (entries, was_torn) = read_ledger(ledger);
        torn += usize::from(was_torn);
        assert!(!entries.is_empty(), "{}: nothing acknowledged at all", w.host);
        let spools: BTreeSet<&str> = entries.iter().map(|a| a.spool_id.as_str()).collect();
        assert_eq!(spools.len(), 1, "{}: a kill -9 must not start a new spool: {spools:?}", w.host);
        let (n, f) = check_ledger(&db, &w.host, &entries);
        acks += n;
        rows += f;

        // The stored current state is the disk's.
        let mut stmt = db.prepare("SELECT path, state FROM files WHERE host_id = ?1 ORDER BY path").unwrap();
        let stored: BTreeMap<String, (Vec<v1::KeyValue>, String)> = stmt
            .query_map([&w.host], |r| Ok((r.get::<_, String>(0)?, r.get::<_, Vec<u8>>(1)?)))
            .unwrap()
            .map(Result::unwrap)
            .map(|(p, s)| {
                let s = v1::FileState::decode(s.as_slice()).unwrap();
                (p, (s.keys, s.content_hash))
            })
            .collect();
        assert_eq!(stored, w.on_disk(&masker), "{}: the stored files are not the files on disk", w.host);
    }

    let duplicates: Vec<(String, String, i64, i64)> = db
        .prepare(
            "SELECT host_id, path, seq, COUNT(*) FROM file_history GROUP BY host_id, path, seq HAVING COUNT(*) > 1",
        )
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert!(duplicates.is_empty(), "history rows stored twice (host, path, seq, count): {duplicates:?}");
    let history: i64 = db.query_row("SELECT COUNT(*) FROM file_history", [], |r| r.get(0)).unwrap();

    let mut times = reconnects.clone();
    let (min, max) = (times.iter().min().copied(), times.iter().max().copied());
    println!(
        "RESULT chaos: rounds={rounds} server_kills={server_kills} agent_kills={agent_kills} edits={} \
         acks_logged={acks} acks_checked={acks} file_rows_checked={rows} torn_ledger_lines={torn} \
         history_rows={history} duplicate_rows=0 dropped_snapshots={dropped} \
         reconnect_ms(min/median/max)={}/{}/{} total={:.1}s",
        edits.load(Ordering::Relaxed),
        min.unwrap_or_default().as_millis(),
        median(&mut times).as_millis(),
        max.unwrap_or_default().as_millis(),
        started.elapsed().as_secs_f64()
    );
}
