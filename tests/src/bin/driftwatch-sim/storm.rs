//! `storm`: every agent connects at once, each on its own connection (a full TLS
//! handshake with its own client certificate under `--tls`), as after a server restart
//! or a network partition heals: time until all are connected, and handshakes per
//! second. The simulator's own handshakes run on the same machine as the server's.

use std::time::{Duration, Instant};

use crate::shared::ServerProc;
use crate::shared::{SimTls, connect_agent_as, p50_p99_max_ms, result};

pub async fn run(server: &ServerProc, agents: usize, hold: Duration) -> anyhow::Result<()> {
    // Certificates are minted before the clock starts (enrollment is not what is measured).
    let mut hosts = Vec::with_capacity(agents);
    for i in 0..agents {
        let host = format!("storm-{i:05}");
        let identity = if SimTls::on() { Some(SimTls::mint(&host)?) } else { None };
        hosts.push((host, identity));
    }
    let labels: std::collections::BTreeMap<String, String> = [("sim".to_string(), "true".to_string())].into();
    let cpu0 = server.cpu_ticks();
    let t0 = Instant::now();
    let mut tasks = Vec::with_capacity(agents);
    for (host, identity) in hosts {
        let (url, labels) = (server.url.clone(), labels.clone());
        tasks.push(tokio::spawn(async move {
            let started = Instant::now();
            let r = connect_agent_as(&url, &host, labels, identity).await;
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
    // The server's own CPU for the storm (the simulator's client handshakes share the
    // machine, so wall time is bounded by both).
    let ticks = server.cpu_ticks().zip(cpu0).map(|(b, a)| b.saturating_sub(a));
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let server_cpu_s = ticks.map(|t| t as f64 / hz);
    times.sort();
    let (p50, p99, max) = p50_p99_max_ms(&times);
    if let Some(e) = first_error {
        eprintln!("first connection error: {e}");
    }
    let rss = server.rss().map(|b| b as f64 / (1 << 20) as f64);
    result!(
        "storm agents={agents} tls={} connected={} failed={failed} all_connected_s={:.2} handshakes_per_s={:.0} connect_p50_ms={p50:.0} connect_p99_ms={p99:.0} connect_max_ms={max:.0} server_rss_mib={} server_cpu_s={} server_connections_per_cpu_s={}",
        SimTls::on(),
        held.len(),
        all.as_secs_f64(),
        held.len() as f64 / all.as_secs_f64(),
        rss.map_or("n/a".into(), |r| format!("{r:.1}")),
        server_cpu_s.map_or("n/a".into(), |c| format!("{c:.2}")),
        server_cpu_s.filter(|c| *c > 0.0).map_or("n/a".into(), |c| format!("{:.0}", held.len() as f64 / c)),
    );
    tokio::time::sleep(hold).await;
    drop(held);
    Ok(())
}
