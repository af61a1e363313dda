//! `idle`: many agents connected and idle (heartbeats only): server memory per agent.

use std::sync::Arc;
use std::time::{Duration, Instant};

use driftwatch_proto::v1::{self, server_message};
use tokio::sync::mpsc;
use tokio_stream::StreamExt;

use crate::shared::{ServerProc, connect_agent, file_state, result, snapshot};

pub async fn run(server: &ServerProc, agents: usize, files: usize, hold: Duration) -> anyhow::Result<()> {
    println!("idle: {agents} agents, {files} files each");
    let rss0 = server.rss();
    let t0 = Instant::now();
    let (done_tx, mut done_rx) = mpsc::channel::<bool>(agents);
    let release = Arc::new(tokio::sync::Notify::new());
    let connect_limit = Arc::new(tokio::sync::Semaphore::new(64));
    for i in 0..agents {
        let url = server.url.clone();
        let done = done_tx.clone();
        let release = release.clone();
        let limit = connect_limit.clone();
        tokio::spawn(async move {
            let host = format!("sim-idle-{i:05}");
            let permit = limit.acquire_owned().await;
            let mut a = match connect_agent(&url, &host).await {
                Ok(a) => a,
                Err(e) => {
                    eprintln!("{host}: {e}");
                    let _ = done.send(false).await;
                    return;
                }
            };
            let fs = (0..files).map(|f| file_state(&format!("/etc/sim/{f}.env"), 20, 1)).collect();
            let _ = a.tx.send(snapshot(1, true, fs));
            // Wait for the durable ack so the state is really held.
            loop {
                match a.inbound.next().await {
                    Some(Ok(v1::ServerMessage { kind: Some(server_message::Kind::Ack(_)) })) => break,
                    Some(Ok(_)) => continue,
                    _ => {
                        let _ = done.send(false).await;
                        return;
                    }
                }
            }
            drop(permit);
            let _ = done.send(true).await;
            release.notified().await;
            drop(a);
        });
    }
    drop(done_tx);
    let mut ok = 0usize;
    let mut failed = 0usize;
    while ok + failed < agents {
        match done_rx.recv().await {
            Some(true) => ok += 1,
            Some(false) => failed += 1,
            None => break,
        }
    }
    let connect_time = t0.elapsed();
    tokio::time::sleep(hold).await;
    let rss1 = server.rss();
    result!("idle connected={ok} failed={failed} connect_all_s={:.1}", connect_time.as_secs_f64());
    if let (Some(a), Some(b)) = (rss0, rss1) {
        result!(
            "idle server_rss_mib_before={:.1} after={:.1} per_agent_kib={:.1}",
            a as f64 / 1048576.0,
            b as f64 / 1048576.0,
            (b.saturating_sub(a)) as f64 / 1024.0 / ok.max(1) as f64
        );
    } else {
        result!("idle server RSS unknown (pass --server-pid with --server)");
    }
    release.notify_waiters();
    Ok(())
}
