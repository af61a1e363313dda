//! The real agent binary against a minimal in-test AgentGateway: a change the server
//! sends is applied and then reported by the watcher; and a `kill -9` in the middle of
//! a write (fault injection: `DRIFTWATCH_AGENT_FAULT`) leaves the file whole, the backup
//! of the old content on disk, and an agent that starts again and cleans up.
//!
//! Every wait polls for a condition with a deadline.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

mod common;

use common::{Agent, OutStream, POLL, msg};
use driftwatch_formats::Masker;
use driftwatch_proto::v1::agent_gateway_server::AgentGateway;
use driftwatch_proto::v1::{
    Ack, AgentMessage, ApplyChange, ChangeOutcome, ChangeResult, FileState, Welcome, agent_message, server_message,
};
use parking_lot::Mutex;
use tokio::sync::mpsc;
use tokio_stream::StreamExt;
use tonic::{Request, Response, Status, Streaming};

const DEADLINE: Duration = Duration::from_secs(30);
const OLD: &str = "PORT=8080\nHOST=0.0.0.0\n";

#[derive(Debug)]
enum Event {
    Hello,
    File(FileState),
    Result(ChangeResult),
}

/// The change the server sends once, when a snapshot first shows `path` with a hash.
#[derive(Debug, Clone)]
struct Plan {
    change_id: String,
    path: String,
    set_text: BTreeMap<String, String>,
}

struct Gateway {
    events: mpsc::UnboundedSender<Event>,
    plan: Arc<Mutex<Option<Plan>>>,
}

#[tonic::async_trait]
impl AgentGateway for Gateway {
    type ConnectStream = OutStream;

    async fn enroll(
        &self,
        _request: Request<driftwatch_proto::v1::EnrollRequest>,
    ) -> Result<Response<driftwatch_proto::v1::EnrollResponse>, Status> {
        Err(Status::unimplemented("this test's gateway does not enroll"))
    }

    async fn connect(&self, request: Request<Streaming<AgentMessage>>) -> Result<Response<OutStream>, Status> {
        let mut inbound = request.into_inner();
        let (tx, rx) = mpsc::channel(64);
        let events = self.events.clone();
        let plan = self.plan.clone();
        tokio::spawn(async move {
            while let Some(Ok(m)) = inbound.next().await {
                match m.kind {
                    Some(agent_message::Kind::Hello(h)) => {
                        let _ = events.send(Event::Hello);
                        let welcome = Welcome { acked_seq: h.last_acked_seq, settings: None, ..Default::default() };
                        let _ = tx.send(msg(server_message::Kind::Welcome(welcome))).await;
                    }
                    Some(agent_message::Kind::Snapshot(s)) => {
                        for f in &s.files {
                            let _ = events.send(Event::File(f.clone()));
                            let send = {
                                let mut p = plan.lock();
                                match p.as_ref() {
                                    Some(plan) if plan.path == f.path && !f.content_hash.is_empty() => p.take(),
                                    _ => None,
                                }
                            };
                            if let Some(plan) = send {
                                let change = ApplyChange {
                                    change_id: plan.change_id,
                                    path: plan.path,
                                    expected_hash: f.content_hash.clone(),
                                    set_text: plan.set_text,
                                    reason: "crash test".into(),
                                    ..Default::default()
                                };
                                let _ = tx.send(msg(server_message::Kind::ApplyChange(change))).await;
                            }
                        }
                        let _ = tx.send(msg(server_message::Kind::Ack(Ack { seq: s.seq }))).await;
                    }
                    Some(agent_message::Kind::ChangeResult(r)) => {
                        let _ = events.send(Event::Result(r));
                    }
                    _ => {}
                }
            }
        });
        Ok(Response::new(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))))
    }
}

struct Server {
    url: String,
    events: mpsc::UnboundedReceiver<Event>,
    plan: Arc<Mutex<Option<Plan>>>,
}

async fn server() -> Server {
    let (events_tx, events) = mpsc::unbounded_channel();
    let plan = Arc::new(Mutex::new(None));
    let url = common::serve_plaintext(Gateway { events: events_tx, plan: plan.clone() }).await;
    Server { url, events, plan }
}

impl Server {
    /// The next event matching `want`, within the deadline.
    async fn wait_for<T>(&mut self, what: &str, agent: &mut Agent, mut want: impl FnMut(&Event) -> Option<T>) -> T {
        let deadline = Instant::now() + DEADLINE;
        loop {
            agent.check_running();
            match tokio::time::timeout(POLL * 10, self.events.recv()).await {
                Ok(Some(e)) => {
                    if let Event::File(f) = &e {
                        assert!(!f.path.contains(".driftwatch-tmp-"), "a temp file was reported: {}", f.path);
                    }
                    if let Some(t) = want(&e) {
                        return t;
                    }
                }
                Ok(None) => panic!("server gone"),
                Err(_) => {}
            }
            assert!(Instant::now() < deadline, "timed out waiting for {what}\n--- agent log ---\n{}", agent.log());
        }
    }
}

/// The agent under test: plaintext to `server`, writing only `dir/app`, with a fault
/// armed (`DRIFTWATCH_AGENT_FAULT`) if given.
fn start_agent(server: &str, dir: &Path, fault: Option<&str>, run: u32) -> Agent {
    Agent::spawn(dir, run, |cmd| {
        cmd.args(["--server", server, "--insecure", "--host-id", "crash-test"])
            // The watched glob would match the agent's own temp files, were they not excluded.
            .arg("--writable")
            .arg(dir.join("app"));
        if let Some(f) = fault {
            cmd.env("DRIFTWATCH_AGENT_FAULT", f);
        }
    })
}

async fn wait_until(what: &str, agent: &mut Agent, cond: impl FnMut() -> bool) {
    common::wait_until(what, agent, DEADLINE, cond).await
}

fn temp_files(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.file_name().unwrap().to_string_lossy().contains(".driftwatch-tmp-"))
        .collect()
}

fn setup() -> (tempfile::TempDir, PathBuf) {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path().canonicalize().unwrap();
    std::fs::create_dir_all(dir.join("app")).unwrap();
    std::fs::write(dir.join("app/app.env"), OLD).unwrap();
    (t, dir)
}

fn plan(dir: &Path, id: &str) -> Plan {
    Plan {
        change_id: id.into(),
        path: dir.join("app/app.env").to_string_lossy().into_owned(),
        set_text: [("PORT".to_string(), "9090".to_string())].into(),
    }
}

fn masker(dir: &Path) -> Masker {
    let key = std::fs::read(dir.join("state/fleet.key")).unwrap();
    Masker::new(key.trim_ascii())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn applied_change_is_reported_and_seen_by_the_watcher() {
    let (_t, dir) = setup();
    let mut server = server().await;
    *server.plan.lock() = Some(plan(&dir, "apply-1"));
    let mut agent = start_agent(&server.url, &dir, None, 1);
    let result = server
        .wait_for("the change result", &mut agent, |e| match e {
            Event::Result(r) => Some(r.clone()),
            _ => None,
        })
        .await;
    assert_eq!(result.change_id, "apply-1");
    assert_eq!(ChangeOutcome::try_from(result.outcome).unwrap(), ChangeOutcome::Applied, "{result:?}");
    let content = std::fs::read_to_string(dir.join("app/app.env")).unwrap();
    assert!(content.contains("PORT=9090") && content.contains("HOST=0.0.0.0"), "{content}");
    let m = masker(&dir);
    assert_eq!(result.before_hash, m.content_hash(OLD.as_bytes()));
    assert_eq!(result.after_hash, m.content_hash(content.as_bytes()));
    assert!(result.diff.contains("+PORT=9090"), "{}", result.diff);
    // The watcher reports the new content as any other change.
    let path = dir.join("app/app.env").to_string_lossy().into_owned();
    let after = result.after_hash.clone();
    server
        .wait_for("a snapshot with the new hash", &mut agent, |e| match e {
            Event::File(f) if f.path == path && f.content_hash == after => Some(()),
            _ => None,
        })
        .await;
}

/// Kill the agent at a fault point of its write; check what is on disk; start it again.
async fn crash_at(fault: &str) {
    let (_t, dir) = setup();
    let app = dir.join("app");
    let target = app.join("app.env");
    let mut server = server().await;
    *server.plan.lock() = Some(plan(&dir, "crash-1"));
    let mut agent = start_agent(&server.url, &dir, Some(fault), 1);
    let marker = dir.join("state/fault-paused");
    wait_until("the fault marker", &mut agent, || marker.exists()).await;
    agent.kill();

    // The file is whole: the old content, or all of the new one.
    let m = masker(&dir);
    let content = std::fs::read(&target).unwrap();
    let blobs = dir.join("state/backups/blobs");
    let old_hash = m.content_hash(OLD.as_bytes());
    assert_eq!(std::fs::read(blobs.join(&old_hash)).unwrap(), OLD.as_bytes(), "the old content is backed up");
    let new_hash = m.content_hash(&content);
    let new_backup = std::fs::read_dir(&blobs)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .find(|n| *n != old_hash)
        .expect("the new content is backed up too");
    let new = std::fs::read(blobs.join(&new_backup)).unwrap();
    assert!(String::from_utf8_lossy(&new).contains("PORT=9090"));
    match fault {
        "pause_before_rename" => {
            assert_eq!(content, OLD.as_bytes(), "killed before the rename: the old file");
            let temps = temp_files(&app);
            assert_eq!(temps.len(), 1, "the temp file of the interrupted write is left");
            assert_eq!(std::fs::read(&temps[0]).unwrap(), new, "and it is complete (fsynced before the pause)");
        }
        _ => {
            assert_eq!(content, new, "killed after the rename: the whole new file");
            assert_eq!(new_hash, new_backup);
            assert!(temp_files(&app).is_empty());
        }
    }

    // A restart (no fault) cleans up and reports the file as it is.
    let mut agent = start_agent(&server.url, &dir, None, 2);
    let path = target.to_string_lossy().into_owned();
    server
        .wait_for("the restarted agent's snapshot of the file", &mut agent, |e| match e {
            Event::File(f) if f.path == path && f.content_hash == new_hash => Some(()),
            _ => None,
        })
        .await;
    wait_until("the leftover temp file to be removed", &mut agent, || temp_files(&app).is_empty()).await;
    assert_eq!(std::fs::read(&target).unwrap(), content);
    if fault == "pause_before_rename" {
        // The line is written just after the removal: wait for it, do not race it.
        let log = agent.log_file().to_path_buf();
        let logged = move || {
            std::fs::read_to_string(&log)
                .unwrap_or_default()
                .contains("removed a temp file left by an interrupted write")
        };
        wait_until("the removal to be logged", &mut agent, logged).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_before_rename_leaves_the_old_file() {
    crash_at("pause_before_rename").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_after_rename_leaves_the_new_file() {
    crash_at("pause_after_rename").await;
}
