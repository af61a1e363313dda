//! `soak`: many virtual agents with steady file churn plus a few real agent processes
//! whose files a writer edits, for minutes: the slope of server and agent RSS after a
//! warm-up, as a percentage of their size per 10 minutes (least squares over samples
//! every 5 s), and whether every snapshot was acknowledged.
//!
//! Full form: `driftwatch-sim soak --agents 1000 --duration-secs 600`.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use driftwatch_agent::AgentFile;
use driftwatch_proto::v1::{self, agent_message, server_message};
use driftwatch_tests::{AgentProcess, agent_file, sibling_binary};
use tokio_stream::StreamExt;

use crate::shared::{ServerProc, connect_agent, file_state, result, rss_bytes, snapshot};

pub struct Run {
    pub agents: usize,
    pub duration: Duration,
    pub warmup: Duration,
    /// Each virtual agent sends a changed file this often.
    pub every: Duration,
    pub real_agents: usize,
    pub agent_bin: Option<PathBuf>,
}

const SAMPLE: Duration = Duration::from_secs(5);
/// Files each real agent watches; the writer edits one of them per real agent every 200 ms.
const REAL_FILES: usize = 50;

/// Least-squares slope of `ys` over `xs` (per unit of x).
pub fn slope(xs: &[f64], ys: &[f64]) -> f64 {
    let n = xs.len() as f64;
    if xs.len() < 2 {
        return 0.0;
    }
    let (mx, my) = (xs.iter().sum::<f64>() / n, ys.iter().sum::<f64>() / n);
    let num: f64 = xs.iter().zip(ys).map(|(x, y)| (x - mx) * (y - my)).sum();
    let den: f64 = xs.iter().map(|x| (x - mx) * (x - mx)).sum();
    if den == 0.0 { 0.0 } else { num / den }
}

/// Growth per 10 minutes as a percentage of the mean of `ys` (samples at `xs` seconds).
fn pct_per_10min(xs: &[f64], ys: &[f64]) -> f64 {
    let mean = ys.iter().sum::<f64>() / ys.len().max(1) as f64;
    if mean == 0.0 { 0.0 } else { slope(xs, ys) * 600.0 / mean * 100.0 }
}

fn env_text(i: usize, rev: u64) -> String {
    format!("WORKERS={}\nPOOL_SIZE={}\nREVISION={rev}\nNAME=svc{i}\n", 4 + rev % 8, 10 + rev % 20)
}

pub async fn run(server: &ServerProc, run: Run, tmp: &Path) -> anyhow::Result<()> {
    let Run { agents, duration, warmup, every, real_agents, agent_bin } = run;
    println!(
        "soak: {agents} virtual agents (a changed file each every {} ms), {real_agents} real agents \
         ({REAL_FILES} files, one edited every 200 ms), {}s, warm-up {}s",
        every.as_millis(),
        duration.as_secs(),
        warmup.as_secs()
    );
    let stop = Arc::new(AtomicBool::new(false));
    let (sent, acked, failures) =
        (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let mut tasks = Vec::new();
    for i in 0..agents {
        let (url, stop, sent, acked, failures) =
            (server.url.clone(), stop.clone(), sent.clone(), acked.clone(), failures.clone());
        // Spread the agents over the interval so the load is steady, not in waves.
        let offset = every.mul_f64(i as f64 / agents.max(1) as f64);
        tasks.push(tokio::spawn(async move {
            let host = format!("sim-soak-{i:05}");
            let mut a = match connect_agent(&url, &host).await {
                Ok(a) => a,
                Err(e) => {
                    eprintln!("{host}: {e}");
                    failures.fetch_add(1, Ordering::Relaxed);
                    return;
                }
            };
            let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + offset, every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let path = format!("/etc/soak/{}.env", i % 3);
            let mut seq = 0u64;
            while !stop.load(Ordering::Relaxed) {
                tick.tick().await;
                seq += 1;
                let mut msg = snapshot(seq, seq == 1, vec![file_state(&path, 20, seq)]);
                if seq.is_multiple_of(10)
                    && let Some(agent_message::Kind::Snapshot(s)) = &mut msg.kind
                {
                    s.resources = Some(v1::ResourceSample {
                        sampled_at: Some(driftwatch_proto::timestamp(std::time::SystemTime::now())),
                        memory_total_bytes: 16 << 30,
                        memory_used_bytes: (4 << 30) + (seq % 97) * (8 << 20),
                        ..Default::default()
                    });
                }
                if a.tx.send(msg).is_err() {
                    failures.fetch_add(1, Ordering::Relaxed);
                    return;
                }
                sent.fetch_add(1, Ordering::Relaxed);
                loop {
                    match tokio::time::timeout(Duration::from_secs(30), a.inbound.next()).await {
                        Ok(Some(Ok(v1::ServerMessage { kind: Some(server_message::Kind::Ack(ack)) }))) => {
                            if ack.seq >= seq {
                                acked.fetch_add(1, Ordering::Relaxed);
                                break;
                            }
                        }
                        Ok(Some(Ok(_))) => {}
                        other => {
                            eprintln!("{host}: no ack for seq {seq}: {other:?}");
                            failures.fetch_add(1, Ordering::Relaxed);
                            return;
                        }
                    }
                }
            }
        }));
    }

    // Real agents, each on its own directory; one writer edits them all.
    let bin = agent_bin.unwrap_or_else(|| sibling_binary("driftwatch-agent"));
    let mut procs = Vec::new();
    let mut dirs = Vec::new();
    for r in 0..real_agents {
        let dir = tmp.join(format!("soak-real-{r}"));
        std::fs::create_dir_all(&dir)?;
        for f in 0..REAL_FILES {
            std::fs::write(dir.join(format!("svc{f:02}.env")), env_text(f, 0))?;
        }
        let config = AgentFile {
            resource_interval: Some("10s".into()),
            ..agent_file(
                &server.url,
                &format!("soak-real-{r}"),
                &tmp.join(format!("soak-state-{r}")),
                &[format!("{}/*.env", dir.display())],
            )
        };
        let p = AgentProcess::spawn(&bin, &tmp.join(format!("soak-agent-{r}")), &config, "warn", None)
            .with_context(|| format!("start {}", bin.display()))?;
        procs.push(p);
        dirs.push(dir);
    }
    let writer = {
        let (stop, dirs) = (stop.clone(), dirs.clone());
        tokio::spawn(async move {
            let mut rev = 0u64;
            while !stop.load(Ordering::Relaxed) {
                rev += 1;
                for d in &dirs {
                    let f = (rev as usize) % REAL_FILES;
                    let _ = std::fs::write(d.join(format!("svc{f:02}.env")), env_text(f, rev));
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            rev
        })
    };

    let pids: Vec<u32> = procs.iter().filter_map(AgentProcess::pid).collect();
    let t0 = Instant::now();
    let (mut xs, mut server_rss, mut agent_rss) = (Vec::new(), Vec::new(), vec![Vec::new(); pids.len()]);
    let (mut first, mut last) = (None, None);
    while t0.elapsed() < duration {
        tokio::time::sleep(SAMPLE).await;
        let t = t0.elapsed().as_secs_f64();
        let s = server.rss().unwrap_or(0) as f64;
        let a: Vec<f64> = pids.iter().map(|p| rss_bytes(*p).unwrap_or(0) as f64).collect();
        if t0.elapsed() >= warmup {
            xs.push(t);
            server_rss.push(s);
            for (v, r) in agent_rss.iter_mut().zip(&a) {
                v.push(*r);
            }
            first.get_or_insert((s, a.clone()));
            last = Some((s, a));
        }
    }
    stop.store(true, Ordering::Relaxed);
    let edits = writer.await.unwrap_or(0);
    for t in tasks {
        let _ = t.await;
    }
    for p in &mut procs {
        p.stop().await;
    }
    let mib = |b: f64| b / 1048576.0;
    let (sent, acked, failures) =
        (sent.load(Ordering::Relaxed), acked.load(Ordering::Relaxed), failures.load(Ordering::Relaxed));
    result!("soak virtual_agents={agents} snapshots_sent={sent} acked={acked} failed_agents={failures}");
    result!("soak real_agents={real_agents} edits_per_agent={edits} samples_after_warmup={}", xs.len());
    if let (Some((s0, a0)), Some((s1, a1))) = (first, last) {
        result!(
            "soak server_rss_mib_after_warmup={:.1} end={:.1} slope_pct_per_10min={:.2}",
            mib(s0),
            mib(s1),
            pct_per_10min(&xs, &server_rss)
        );
        for (i, ys) in agent_rss.iter().enumerate() {
            result!(
                "soak agent{i}_rss_mib_after_warmup={:.2} end={:.2} slope_pct_per_10min={:.2}",
                mib(a0[i]),
                mib(a1[i]),
                pct_per_10min(&xs, ys)
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slope_of_a_line_and_of_a_flat_series() {
        let xs = [0.0, 5.0, 10.0, 15.0];
        assert!((slope(&xs, &[1.0, 2.0, 3.0, 4.0]) - 0.2).abs() < 1e-12);
        assert_eq!(slope(&xs, &[7.0; 4]), 0.0);
        assert_eq!(slope(&[1.0], &[1.0]), 0.0);
        // 100 → 101 over 600 s: 1 % per 10 minutes.
        assert!((pct_per_10min(&[0.0, 600.0], &[100.0, 101.0]) - 0.995).abs() < 0.01);
    }
}
