//! `ingest`: many agents sending changed-file snapshots as fast as durable acks allow.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::bail;
use driftwatch_proto::v1::{self, agent_message, server_message};
use tokio::sync::mpsc;
use tokio_stream::StreamExt;

use crate::shared::{ServerProc, connect_agent_labels, file_state, ms, pct, result, snapshot};

pub struct Run {
    pub agents: usize,
    pub duration: Duration,
    /// Unacknowledged snapshots each agent keeps in flight.
    pub window: usize,
    pub keys: usize,
    pub labels: BTreeMap<String, String>,
}

pub fn parse_labels(s: &str) -> anyhow::Result<BTreeMap<String, String>> {
    s.split(',')
        .filter(|p| !p.trim().is_empty())
        .map(|p| match p.split_once('=') {
            Some((k, v)) => Ok((k.trim().to_string(), v.trim().to_string())),
            None => bail!("label {p:?} is not k=v"),
        })
        .collect()
}

/// The run, with `stuck` alert subscribers that never read held open (each on its own
/// connection) meanwhile.
pub async fn run_with_stuck_subscribers(server: &ServerProc, run: Run, stuck: usize) -> anyhow::Result<()> {
    let mut streams = Vec::new();
    for _ in 0..stuck {
        let mut c = v1::alerts_client::AlertsClient::new(server.channel().await?);
        streams.push(c.subscribe(v1::SubscribeRequest::default()).await?.into_inner());
    }
    let r = ingest(server, run).await;
    if let Some(events) = server.metric("driftwatch_alert_events_total") {
        result!("ingest alert_events={events} stuck_subscribers={stuck}");
    }
    drop(streams);
    r
}

/// A plausible web2img host: 4–5 GiB used, 10 cores busy.
fn resource_sample(seq: u64) -> v1::ResourceSample {
    v1::ResourceSample {
        sampled_at: Some(driftwatch_proto::timestamp(std::time::SystemTime::now())),
        cpu_cores_used: 10.0 + (seq % 7) as f64 / 10.0,
        cpu_percent: 65.0,
        cpu_count: 16,
        memory_total_bytes: 16 << 30,
        memory_used_bytes: (4 << 30) + (seq % 97) * (8 << 20),
        ..Default::default()
    }
}

async fn ingest(server: &ServerProc, run: Run) -> anyhow::Result<()> {
    let Run { agents, duration, window, keys, labels } = run;
    let with_resources = labels.keys().any(|k| k != "sim");
    println!(
        "ingest: {agents} agents, window {window}, {keys} keys per file, {}s, labels {labels:?}{}",
        duration.as_secs(),
        if with_resources { ", a resource sample per agent per second" } else { "" }
    );
    let acked = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let (lat_tx, mut lat_rx) = mpsc::unbounded_channel::<Vec<Duration>>();
    let mut handles = Vec::new();
    let start_barrier = Arc::new(tokio::sync::Barrier::new(agents + 1));
    for i in 0..agents {
        let url = server.url.clone();
        let acked = acked.clone();
        let stop = stop.clone();
        let lat_tx = lat_tx.clone();
        let barrier = start_barrier.clone();
        let labels = labels.clone();
        handles.push(tokio::spawn(async move {
            let host = format!("sim-ingest-{i:05}");
            let mut a = match connect_agent_labels(&url, &host, labels).await {
                Ok(a) => a,
                Err(e) => {
                    eprintln!("{host}: {e}");
                    barrier.wait().await;
                    return;
                }
            };
            let path = format!("/etc/sim/{i}/.env");
            barrier.wait().await;
            let mut sent_at: HashMap<u64, Instant> = HashMap::new();
            let mut lats = Vec::new();
            let mut seq = 0u64;
            let mut last_ack = 0u64;
            let mut last_sample = Instant::now() - Duration::from_secs(1);
            loop {
                while !stop.load(Ordering::Relaxed) && (seq - last_ack) < window as u64 {
                    seq += 1;
                    sent_at.insert(seq, Instant::now());
                    let mut msg = snapshot(seq, seq == 1, vec![file_state(&path, keys, seq)]);
                    if with_resources
                        && last_sample.elapsed() >= Duration::from_secs(1)
                        && let Some(agent_message::Kind::Snapshot(s)) = &mut msg.kind
                    {
                        last_sample = Instant::now();
                        s.resources = Some(resource_sample(seq));
                    }
                    if a.tx.send(msg).is_err() {
                        break;
                    }
                }
                if stop.load(Ordering::Relaxed) && last_ack >= seq {
                    break;
                }
                match tokio::time::timeout(Duration::from_secs(30), a.inbound.next()).await {
                    Ok(Some(Ok(v1::ServerMessage { kind: Some(server_message::Kind::Ack(ack)) }))) => {
                        let now = Instant::now();
                        for s in (last_ack + 1)..=ack.seq {
                            if let Some(t) = sent_at.remove(&s) {
                                lats.push(now - t);
                            }
                        }
                        if !stop.load(Ordering::Relaxed) {
                            acked.fetch_add(ack.seq - last_ack, Ordering::Relaxed);
                        }
                        last_ack = ack.seq;
                    }
                    Ok(Some(Ok(_))) => {}
                    other => {
                        eprintln!("{host}: stream ended: {other:?}");
                        break;
                    }
                }
            }
            let _ = lat_tx.send(lats);
        }));
    }
    drop(lat_tx);
    start_barrier.wait().await;
    let rss0 = server.rss();
    let t0 = Instant::now();
    let a0 = acked.load(Ordering::Relaxed);
    tokio::time::sleep(duration).await;
    let n = acked.load(Ordering::Relaxed) - a0;
    let elapsed = t0.elapsed();
    stop.store(true, Ordering::Relaxed);
    let rss1 = server.rss();
    for h in handles {
        let _ = h.await;
    }
    let mut lats = Vec::new();
    while let Some(mut l) = lat_rx.recv().await {
        lats.append(&mut l);
    }
    lats.sort();
    result!("ingest agents={agents} snapshots_acked={n} elapsed_s={:.1}", elapsed.as_secs_f64());
    result!("ingest snapshots_per_second={:.0}", n as f64 / elapsed.as_secs_f64());
    result!(
        "ingest ack_latency_p50_ms={:.2} ack_latency_p99_ms={:.2} samples={}",
        ms(pct(&lats, 0.50)),
        ms(pct(&lats, 0.99)),
        lats.len()
    );
    if let (Some(a), Some(b)) = (rss0, rss1) {
        result!("ingest server_rss_mib_start={:.1} end={:.1}", a as f64 / 1048576.0, b as f64 / 1048576.0);
    }
    if let (Some(rules), Some(evals), Some(overflows)) = (
        server.metric("driftwatch_rules_loaded"),
        server.metric("driftwatch_rule_evaluations_total"),
        server.metric("driftwatch_rule_queue_overflows_total"),
    ) {
        result!("ingest rules_loaded={rules} rule_evaluations={evals} rule_queue_overflows={overflows}");
    }
    Ok(())
}
