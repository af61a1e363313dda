//! `storm`: every agent connects at once, each on its own connection (a full TLS
//! handshake with its own client certificate under `--tls`), as after a server restart
//! or a network partition heals: time until all are connected, and handshakes per
//! second. The simulator's own handshakes run on the same machine as the server's.

use std::time::{Duration, Instant};

use crate::shared::ServerProc;
use crate::shared::{SimTls, connect_agent, ms, p50_p99_max_ms, result};

pub async fn run(server: &ServerProc, agents: usize, hold: Duration) -> anyhow::Result<()> {
    // Certificates are minted before the clock starts (enrollment is not what is measured).
    let hosts: Vec<String> = (0..agents).map(|i| format!("storm-{i:05}")).collect();
    let t0 = Instant::now();
    let mut tasks = Vec::with_capacity(agents);
    for host in hosts {
        let url = server.url.clone();
        tasks.push(tokio::spawn(async move {
            let started = Instant::now();
            let r = connect_agent(&url, &host).await;
            (r, started.elapsed())
        }));
    }
    let mut held = Vec::with_capacity(agents);
    let mut times = Vec::with_capacity(agents);
    let mut failed = 0usize;
    let mut first_error = None;
    for t in tasks {
        match t.await? {
            (Ok(a), d) => {
                held.push(a);
                times.push(d);
            }
            (Err(e), _) => {
                failed += 1;
                first_error.get_or_insert_with(|| format!("{e:#}"));
            }
        }
    }
    let all = t0.elapsed();
    times.sort();
    let (p50, p99, max) = p50_p99_max_ms(&times);
    if let Some(e) = first_error {
        eprintln!("first connection error: {e}");
    }
    let rss = server.rss().map(|b| b as f64 / (1 << 20) as f64);
    result!(
        "storm agents={agents} tls={} connected={} failed={failed} all_connected_s={:.2} handshakes_per_s={:.0} connect_p50_ms={p50:.0} connect_p99_ms={p99:.0} connect_max_ms={max:.0} server_rss_mib={}",
        SimTls::on(),
        held.len(),
        all.as_secs_f64(),
        held.len() as f64 / all.as_secs_f64(),
        rss.map_or("n/a".into(), |r| format!("{r:.1}")),
    );
    let _ = ms(all);
    tokio::time::sleep(hold).await;
    drop(held);
    Ok(())
}
