//! `query`: operators' reads under load: `GetHost` of a random host from many
//! concurrent clients (one connection each), calls per second and p50/p99.
//!
//! Under `--tls` every call carries the admin token, so the figure includes the
//! access layer's per-call work (token check, role table); without it the server
//! runs `--insecure` and checks nothing: the two runs bound what authentication costs.

use std::time::{Duration, Instant};

use driftwatch_proto::v1::{self, server_message};
use tokio_stream::StreamExt;

use crate::shared::{ServerProc, connect_agent, file_state, p50_p99_max_ms, result, snapshot};

pub async fn run(server: &ServerProc, hosts: usize, clients: usize, duration: Duration) -> anyhow::Result<()> {
    println!("query: {hosts} hosts of 3 files × 20 keys, {clients} clients, {}s", duration.as_secs());
    let mut agents = Vec::with_capacity(hosts);
    for i in 0..hosts {
        let mut a = connect_agent(&server.url, &format!("sim-q-{i:05}")).await?;
        let fs = (0..3).map(|f| file_state(&format!("/etc/sim/{f}.env"), 20, 1)).collect();
        a.tx.send(snapshot(1, true, fs))?;
        loop {
            match a.inbound.next().await {
                Some(Ok(v1::ServerMessage { kind: Some(server_message::Kind::Ack(_)) })) => break,
                Some(Ok(_)) => continue,
                other => anyhow::bail!("sim-q-{i:05}: no ack: {other:?}"),
            }
        }
        agents.push(a);
    }
    let start = Instant::now() + Duration::from_millis(200);
    let end = start + duration;
    let mut tasks = Vec::new();
    for c in 0..clients {
        let ch = server.channel().await?;
        tasks.push(tokio::spawn(async move {
            let mut fleet = v1::fleet_client::FleetClient::new(ch);
            tokio::time::sleep_until(start.into()).await;
            let mut lat = Vec::new();
            let mut errors = 0u64;
            let mut i = c;
            while Instant::now() < end {
                i = (i * 7919 + 13) % hosts;
                let t = Instant::now();
                match fleet.get_host(v1::GetHostRequest { host_id: format!("sim-q-{i:05}") }).await {
                    Ok(_) => lat.push(t.elapsed()),
                    Err(_) => errors += 1,
                }
            }
            (lat, errors)
        }));
    }
    tokio::time::sleep_until(start.into()).await;
    let cpu0 = server.cpu_ticks();
    let mut all = Vec::new();
    let mut errors = 0;
    for t in tasks {
        let (l, e) = t.await?;
        all.extend(l);
        errors += e;
    }
    let cpu = cpu0.zip(server.cpu_ticks()).map(|(a, b)| b.saturating_sub(a));
    all.sort();
    let (p50, p99, max) = p50_p99_max_ms(&all);
    let secs = duration.as_secs_f64();
    result!(
        "query calls={} errors={errors} calls_per_second={:.0} p50_ms={p50:.3} p99_ms={p99:.3} max_ms={max:.1} tls={}",
        all.len(),
        all.len() as f64 / secs,
        crate::shared::SimTls::on()
    );
    if let Some(ticks) = cpu {
        // Clock ticks are 10 ms (USER_HZ 100).
        let us = ticks as f64 * 10_000.0 / all.len().max(1) as f64;
        result!("query server_cpu_us_per_call={us:.2} server_cpu_s={:.2}", ticks as f64 / 100.0);
    }
    drop(agents);
    Ok(())
}
