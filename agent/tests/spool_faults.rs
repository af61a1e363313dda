//! The real agent binary with spool faults: writes the kernel cuts short (a file size
//! limit, `RLIMIT_FSIZE`, with SIGXFSZ ignored), and a spool damaged between two runs
//! (a bit flipped in the middle of a segment, a corrupt `meta`). Each time the agent
//! keeps running, delivers every valid record, and reports every lost one.
//!
//! Every wait polls for a condition with a deadline.

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

mod common;

use common::{Agent, OutStream, msg, wait_until};
use driftwatch_agent::spool::segment;
use driftwatch_proto::v1::agent_gateway_server::AgentGateway;
use driftwatch_proto::v1::{Ack, AgentMessage, Welcome, agent_message, server_message};
use parking_lot::Mutex;
use tokio_stream::StreamExt;
use tonic::{Request, Response, Status, Streaming};

const DEADLINE: Duration = Duration::from_secs(60);
/// The agent's file size limit in the first test: a full listing (parts of at most
/// 256 KiB) crosses it in every segment.
const FSIZE: u64 = 384 * 1024;

/// What the in-test gateway has seen.
#[derive(Default)]
struct Seen {
    /// Spool ids of the Hellos, in order.
    spool_ids: Vec<String>,
    /// The highest dropped count the agent reported (Hello, Heartbeat).
    dropped: u64,
    /// Every snapshot seq received.
    seqs: BTreeSet<u64>,
    /// Per path, every content hash received.
    hashes: BTreeMap<String, BTreeSet<String>>,
}

#[derive(Clone, Default)]
struct Gateway {
    seen: Arc<Mutex<Seen>>,
    /// Never acknowledge: what the agent sends stays in its spool.
    silent: bool,
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

    /// Welcomes with nothing stored, acks every snapshot at once (unless silent).
    async fn connect(&self, request: Request<Streaming<AgentMessage>>) -> Result<Response<OutStream>, Status> {
        let mut inbound = request.into_inner();
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        let seen = self.seen.clone();
        let silent = self.silent;
        tokio::spawn(async move {
            while let Some(Ok(m)) = inbound.next().await {
                match m.kind {
                    Some(agent_message::Kind::Hello(h)) => {
                        {
                            let mut s = seen.lock();
                            s.spool_ids.push(h.spool_id.clone());
                            s.dropped = s.dropped.max(h.dropped_snapshots);
                        }
                        let _ = tx.send(msg(server_message::Kind::Welcome(Welcome::default()))).await;
                    }
                    Some(agent_message::Kind::Heartbeat(h)) => {
                        let mut s = seen.lock();
                        s.dropped = s.dropped.max(h.dropped_snapshots);
                    }
                    Some(agent_message::Kind::Snapshot(snap)) => {
                        {
                            let mut s = seen.lock();
                            s.seqs.insert(snap.seq);
                            for f in &snap.files {
                                s.hashes.entry(f.path.clone()).or_default().insert(f.content_hash.clone());
                            }
                        }
                        if !silent {
                            let _ = tx.send(msg(server_message::Kind::Ack(Ack { seq: snap.seq }))).await;
                        }
                    }
                    _ => {}
                }
            }
        });
        Ok(Response::new(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))))
    }
}

/// A gateway on 127.0.0.1:0: its URL and what it sees.
async fn gateway() -> (String, Arc<Mutex<Seen>>) {
    gateway_with(Gateway::default()).await
}

async fn gateway_with(gw: Gateway) -> (String, Arc<Mutex<Seen>>) {
    let seen = gw.seen.clone();
    (common::serve_plaintext(gw).await, seen)
}

fn setup(files: usize, lines: usize) -> (tempfile::TempDir, PathBuf) {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path().canonicalize().unwrap();
    std::fs::create_dir_all(dir.join("app")).unwrap();
    for i in 0..files {
        write_file(&dir, i, lines, 0);
    }
    (t, dir)
}

fn write_file(dir: &Path, i: usize, lines: usize, round: usize) {
    let text: String =
        (0..lines).map(|j| format!("KEY_{j}=value-{i}-{j}-{round}-abcdefghijklmnopqrstuvwxyz\n")).collect();
    std::fs::write(dir.join(format!("app/f{i:02}.env")), text).unwrap();
}

fn spool_dir(dir: &Path) -> PathBuf {
    dir.join("state/spool")
}

fn segments(dir: &Path) -> Vec<(u64, PathBuf)> {
    let mut v: Vec<(u64, PathBuf)> = std::fs::read_dir(spool_dir(dir))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .filter_map(|p| Some((p.file_stem()?.to_str()?.parse().ok()?, p.clone())))
        .collect();
    v.sort();
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_cut_short_by_a_file_size_limit_are_rolled_back_and_everything_is_delivered() {
    let (_t, dir) = setup(30, 500);
    let (url, seen) = gateway().await;
    let mut agent = Agent::spawn(&dir, 1, |cmd| {
        cmd.args(["--server", &url, "--insecure", "--host-id", "fsize-test"]);
        // SAFETY: only async-signal-safe calls between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
                let lim = libc::rlimit { rlim_cur: FSIZE, rlim_max: FSIZE };
                if libc::setrlimit(libc::RLIMIT_FSIZE, &lim) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    });
    let all = |n: usize| {
        let seen = seen.clone();
        move || {
            let s = seen.lock();
            s.hashes.len() == 30 && s.hashes.values().all(|h| h.len() >= n)
        }
    };
    wait_until("the full listing delivered", &mut agent, DEADLINE, all(1)).await;
    // Edits: more records, more segments cut at the limit.
    for round in 1..=3 {
        for i in 0..30 {
            write_file(&dir, i, 500, round);
        }
        wait_until("every edit delivered", &mut agent, DEADLINE, all(round + 1)).await;
    }
    agent.check_running();
    let log = agent.log();
    let cut = log.matches("retrying the append once").count();
    println!("appends cut short by the {FSIZE} byte file size limit and retried: {cut}");
    assert!(cut > 0, "no write reached the limit\n{log}");
    assert_eq!(seen.lock().dropped, 0, "nothing lost");
    agent.kill();
    for (first, path) in segments(&dir) {
        let data = std::fs::read(&path).unwrap();
        assert!(data.len() as u64 <= FSIZE);
        let found = segment::scan(first, 0, &data, None);
        assert!(found.damage.is_empty(), "{}: bytes of a failed write left behind: {:?}", path.display(), found.damage);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flipped_bit_and_a_corrupt_meta_lose_one_record_counted_and_the_rest_is_delivered() {
    let (_t, dir) = setup(4, 5);
    // Run 1: a server that never acknowledges, so everything stays in the spool.
    let (silent, _) = gateway_with(Gateway { silent: true, ..Default::default() }).await;
    let mut agent = Agent::spawn(&dir, 1, |cmd| {
        cmd.args(["--server", &silent, "--insecure", "--host-id", "damage-test"]);
    });
    wait_until("the full listing spooled", &mut agent, DEADLINE, || {
        agent_log(&dir, 1).contains("full snapshot placed")
    })
    .await;
    for round in 1..=4 {
        write_file(&dir, round % 4, 5, round);
        wait_until("the edit spooled", &mut agent, DEADLINE, || {
            agent_log(&dir, 1).matches("change spooled").count() >= round
        })
        .await;
    }
    agent.kill();

    // What the spool holds, then a bit flipped in the middle record's payload.
    let segs = segments(&dir);
    let mut records = Vec::new();
    for (first, path) in &segs {
        let data = std::fs::read(path).unwrap();
        for r in segment::scan(*first, 0, &data, None).records {
            records.push((r.seq, path.clone(), r.offset, r.len));
        }
    }
    assert!(records.len() >= 5, "{records:?}");
    let (flipped, path, offset, len) = records[records.len() / 2].clone();
    let mut data = std::fs::read(&path).unwrap();
    let at = offset as usize + segment::HEADER + len as usize / 2;
    data[at] ^= 0x20;
    std::fs::write(&path, data).unwrap();
    let meta = spool_dir(&dir).join("meta");
    let old_id = std::fs::read_to_string(&meta).unwrap();
    std::fs::write(&meta, b"\x00garbage\xff").unwrap();

    // Run 2: the agent starts, reports the loss, and delivers everything else.
    let (url, seen) = gateway().await;
    let mut agent = Agent::spawn(&dir, 2, |cmd| {
        cmd.args(["--server", &url, "--insecure", "--host-id", "damage-test"]);
    });
    let want: BTreeSet<u64> = records.iter().map(|r| r.0).filter(|s| *s != flipped).collect();
    wait_until("every valid record delivered", &mut agent, DEADLINE, || {
        let s = seen.lock();
        want.is_subset(&s.seqs) && s.dropped >= 1
    })
    .await;
    {
        let s = seen.lock();
        assert!(!s.seqs.contains(&flipped), "the damaged record was not sent");
        assert_eq!(s.dropped, 1, "exactly the damaged record counted");
        assert!(!old_id.contains(&s.spool_ids[0]), "a new spool id after the corrupt meta");
        println!("records spooled {}, delivered {}, damaged seq {flipped}", records.len(), want.len());
    }
    let log = agent.log();
    assert!(log.contains("spool meta is corrupt"), "{log}");
    assert!(log.contains("damaged bytes"), "{log}");
    // It keeps running and keeps delivering.
    let f00 = dir.join("app/f00.env").to_string_lossy().into_owned();
    let before = seen.lock().hashes[&f00].len();
    write_file(&dir, 0, 5, 99);
    wait_until("an edit after the recovery delivered", &mut agent, DEADLINE, || {
        seen.lock().hashes[&f00].len() > before
    })
    .await;
    agent.check_running();
}

fn agent_log(dir: &Path, run: u32) -> String {
    std::fs::read_to_string(dir.join(format!("agent-{run}.log"))).unwrap_or_default()
}
