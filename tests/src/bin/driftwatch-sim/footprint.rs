//! `agent-footprint`: the real agent binary watching N files: RSS and idle CPU.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use driftwatch_agent::AgentFile;
use driftwatch_proto::v1;
use driftwatch_tests::{AgentProcess, agent_file, sibling_binary};

use crate::shared::{ServerProc, cpu_ticks, result, rss_bytes};

pub async fn run(
    server: &ServerProc,
    files: usize,
    duration: Duration,
    agent_bin: Option<PathBuf>,
    tmp: &Path,
) -> anyhow::Result<()> {
    let dir = tmp.join("footprint");
    for i in 0..files {
        let sub = dir.join(format!("svc{:02}", i % 50));
        std::fs::create_dir_all(&sub)?;
        std::fs::write(
            sub.join(format!("app{i}.env")),
            (0..20).map(|k| format!("SETTING_{k}={}\n", k * i)).collect::<String>(),
        )?;
    }
    let config = AgentFile {
        labels: Default::default(),
        resource_interval: Some("10s".into()),
        ..agent_file(&server.url, "footprint", &tmp.join("agent-state"), &[format!("{}/**/*.env", dir.display())])
    };
    let bin = agent_bin.unwrap_or_else(|| sibling_binary("driftwatch-agent"));
    let mut agent =
        AgentProcess::spawn(&bin, tmp, &config, "warn", None).with_context(|| format!("start {}", bin.display()))?;
    let pid = agent.pid().context("the agent process")?;
    // Warm up: wait until the server holds all files.
    let mut c = v1::fleet_client::FleetClient::new(server.channel().await?);
    let t0 = Instant::now();
    // A cheap poll (the host's file count, not its files) every 10 ms: the figure is
    // the agent's, not the poll's.
    loop {
        if let Ok(l) = c.list_hosts(v1::ListHostsRequest::default()).await
            && l.get_ref().hosts.iter().any(|h| h.host_id == "footprint" && h.file_count as usize >= files)
        {
            break;
        }
        if t0.elapsed() > Duration::from_secs(60) {
            bail!("agent did not report {files} files within 60 s");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let startup = t0.elapsed();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let ticks0 = cpu_ticks(pid).unwrap_or(0);
    let w0 = Instant::now();
    let mut peak = 0u64;
    while w0.elapsed() < duration {
        peak = peak.max(rss_bytes(pid).unwrap_or(0));
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let ticks1 = cpu_ticks(pid).unwrap_or(0);
    let hz = 100.0; // USER_HZ on Linux
    let cpu = (ticks1 - ticks0) as f64 / hz / w0.elapsed().as_secs_f64() * 100.0;
    let rss = rss_bytes(pid).unwrap_or(0);
    result!("agent files={files} initial_report_s={:.2}", startup.as_secs_f64());
    result!(
        "agent rss_mib={:.2} peak_rss_mib={:.2} idle_cpu_percent_of_core={cpu:.3} window_s={}",
        rss as f64 / 1048576.0,
        peak as f64 / 1048576.0,
        duration.as_secs()
    );
    agent.stop().await;
    Ok(())
}
