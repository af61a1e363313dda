//! `latency`: a real agent (in this process) on a temp file: write → visible in GetFile.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::bail;
use driftwatch_proto::v1;

use crate::shared::{ServerProc, p50_p99_max_ms, result};

pub async fn run(server: &ServerProc, iterations: usize, tmp: &Path) -> anyhow::Result<()> {
    let dir = tmp.join("latency");
    std::fs::create_dir_all(&dir)?;
    let file = dir.join("app.env");
    std::fs::write(&file, "VALUE=0\n")?;
    let cfg = driftwatch_tests::agent_config_url(
        &server.url,
        "sim-latency",
        &dir.join("state"),
        &[file.display().to_string()],
    );
    let agent = driftwatch_agent::start(cfg).await?;
    let mut c = v1::fleet_client::FleetClient::new(server.channel().await?);
    let req = v1::GetFileRequest { host_id: "sim-latency".into(), path: file.display().to_string() };
    let value_of = |f: &v1::File| {
        f.state.as_ref().and_then(|s| s.keys.iter().find(|k| k.key == "VALUE")).and_then(|k| k.value.clone())
    };
    // Wait for the initial state.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(r) = c.get_file(req.clone()).await
            && value_of(r.get_ref()) == Some(v1::Value::int(0))
        {
            break;
        }
        if Instant::now() > deadline {
            bail!("agent never reported the file");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut lats = Vec::with_capacity(iterations);
    for i in 1..=iterations as i64 {
        let t = Instant::now();
        std::fs::write(&file, format!("VALUE={i}\n"))?;
        loop {
            let r = c.get_file(req.clone()).await?;
            if value_of(r.get_ref()) == Some(v1::Value::int(i)) {
                break;
            }
            if t.elapsed() > Duration::from_secs(10) {
                bail!("write {i} never became visible");
            }
            tokio::time::sleep(Duration::from_micros(500)).await;
        }
        lats.push(t.elapsed());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    lats.sort();
    let (p50, p99, max) = p50_p99_max_ms(&lats);
    result!("latency write_to_getfile_p50_ms={p50:.2} p99_ms={p99:.2} max_ms={max:.2} iterations={iterations}");
    agent.stop().await?;
    Ok(())
}
