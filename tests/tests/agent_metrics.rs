//! The agent's own observability, end to end: `/metrics` and `/healthz` of a real agent
//! against a real server (connected, then the server gone), and the logs of the real
//! agent binary: `--log-format json` parsed line by line, and text without a terminal
//! free of colour codes.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use driftwatch_tests::agent::{agent_file, start_agent};
use driftwatch_tests::binaries::agent_binary;
use driftwatch_tests::process::ChildProcess;
use driftwatch_tests::server::{server_url, start_server};
use driftwatch_tests::wait::wait_for;

/// Every metric the agent exports, by the name a scrape shows.
const AGENT_METRICS: &[&str] = &[
    "driftwatch_agent_build_info{version=\"",
    "driftwatch_agent_connected ",
    "driftwatch_agent_connections_total ",
    "driftwatch_agent_last_ack_age_seconds ",
    "driftwatch_agent_spool_bytes ",
    "driftwatch_agent_spool_pending ",
    "driftwatch_agent_spool_dropped ",
    "driftwatch_agent_spool_degraded ",
    "driftwatch_agent_unspooled_pending ",
    "driftwatch_agent_unspooled_snapshots_total ",
    "driftwatch_agent_watched_files ",
    "driftwatch_agent_inotify_watches ",
    "driftwatch_agent_inotify_max_user_watches ",
    "driftwatch_agent_inotify_watch_headroom ",
    "driftwatch_agent_changes_total{outcome=\"applied\"} ",
    "driftwatch_agent_changes_total{outcome=\"failed\"} ",
    "process_resident_memory_bytes ",
    "process_cpu_seconds_total ",
    "process_open_fds ",
    "process_start_time_seconds ",
];

async fn get(url: &str) -> Option<(u16, String)> {
    let r = reqwest::get(url).await.ok()?;
    let status = r.status().as_u16();
    Some((status, r.text().await.ok()?))
}

/// The value of the sample line starting with `name ` (no labels).
fn value(text: &str, name: &str) -> f64 {
    let line = text.lines().find(|l| l.starts_with(&format!("{name} "))).unwrap_or_else(|| panic!("{name}:\n{text}"));
    line[name.len() + 1..].trim().parse().unwrap_or_else(|_| panic!("{line}"))
}

#[tokio::test]
async fn a_scrape_shows_every_agent_metric_and_healthz_follows_the_connection() {
    let dir = tempfile::tempdir().unwrap();
    let server = start_server(&dir.path().join("server")).await;
    let etc = dir.path().join("etc");
    std::fs::create_dir_all(&etc).unwrap();
    std::fs::write(etc.join("app.env"), "PORT=8080\n").unwrap();
    let mut file =
        agent_file(&server_url(&server), "obs-1", &dir.path().join("agent"), &[format!("{}/*.env", etc.display())]);
    file.metrics_listen = Some("127.0.0.1:0".into());
    file.healthz_grace = Some("1s".into());
    let agent = start_agent(driftwatch_agent::AgentConfig::resolve(file, "test").unwrap()).await;
    let addr = agent.metrics_addr.expect("the agent reports its metrics address");
    let (metrics, healthz) = (format!("http://{addr}/metrics"), format!("http://{addr}/healthz"));

    let ok = wait_for("/healthz 200 while connected", Duration::from_secs(15), || async {
        get(&healthz).await.filter(|(s, b)| *s == 200 && b.contains("connected"))
    })
    .await;
    println!("/healthz connected: {}", ok.1.trim());
    // The first listing acknowledged: the spool is empty again and an ack was seen.
    let text = wait_for("the first listing acknowledged", Duration::from_secs(15), || async {
        get(&metrics).await.map(|(_, t)| t).filter(|t| {
            value(t, "driftwatch_agent_connected") == 1.0 && value(t, "driftwatch_agent_spool_pending") == 0.0
        })
    })
    .await;
    for name in AGENT_METRICS {
        assert!(text.contains(name), "{name} missing from the agent's /metrics:\n{text}");
    }
    assert!(text.contains(",host=\"obs-1\"} 1"), "build info names the host: {text}");
    assert!(value(&text, "process_open_fds") >= 3.0, "{text}");
    assert!(value(&text, "driftwatch_agent_watched_files") >= 1.0, "{text}");
    assert!(value(&text, "driftwatch_agent_inotify_watches") >= 1.0, "{text}");
    let max = value(&text, "driftwatch_agent_inotify_max_user_watches");
    assert_eq!(
        value(&text, "driftwatch_agent_inotify_watch_headroom"),
        max - value(&text, "driftwatch_agent_inotify_watches"),
        "{text}"
    );
    assert!(value(&text, "driftwatch_agent_last_ack_age_seconds") < 60.0, "{text}");

    server.stop().await.unwrap();
    let (status, body) =
        wait_for("/healthz 503 once the server is gone past the grace", Duration::from_secs(30), || async {
            get(&healthz).await.filter(|(s, _)| *s == 503)
        })
        .await;
    println!("/healthz without the server: {status} {}", body.trim());
    assert!(body.starts_with("disconnected from the server for "), "{body}");
    assert_eq!(body.lines().count(), 1, "one line: {body}");
    let text = get(&metrics).await.expect("scrape").1;
    assert_eq!(value(&text, "driftwatch_agent_connected"), 0.0, "{text}");
    agent.stop().await.unwrap();
}

/// An agent binary with `args`, its stderr to `log` (a file: not a terminal), watching one file.
fn spawn_agent(dir: &Path, url: &str, args: &[&str], log: &Path) -> ChildProcess {
    let etc = dir.join("etc");
    std::fs::create_dir_all(&etc).unwrap();
    std::fs::write(etc.join("app.env"), "PORT=8080\n").unwrap();
    let mut cmd = Command::new(agent_binary());
    cmd.args(["--server", url, "--insecure", "--host-id", "logs-1", "--resource-interval", "0"])
        .arg("--state-dir")
        .arg(dir.join("state"))
        .arg("--watch")
        .arg(etc.join("app.env"))
        .args(args);
    ChildProcess::spawn("driftwatch-agent", cmd, Some(log)).expect("start the agent binary")
}

#[tokio::test]
async fn json_logs_are_one_object_per_line_with_structured_fields() {
    let dir = tempfile::tempdir().unwrap();
    let server = start_server(&dir.path().join("server")).await;
    let log = dir.path().join("agent.log");
    let args = ["--log-format", "json", "--metrics-listen", "127.0.0.1:0"];
    let mut agent = spawn_agent(dir.path(), &server_url(&server), &args, &log);
    // Its listener's port, from the structured field of the line saying it serves.
    let addr = wait_for("the metrics line in the JSON log", Duration::from_secs(30), || async {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        text.lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .find(|v| v["fields"]["message"] == "serving /metrics and /healthz")
            .and_then(|v| v["fields"]["addr"].as_str().map(str::to_string))
    })
    .await;
    wait_for("the stream up (/healthz connected)", Duration::from_secs(15), || async {
        get(&format!("http://{addr}/healthz")).await.filter(|(s, b)| *s == 200 && b.contains("connected"))
    })
    .await;
    let scraped = get(&format!("http://{addr}/metrics")).await.expect("scrape the agent binary").1;
    assert!(scraped.contains("driftwatch_agent_build_info{version=\""), "{scraped}");
    agent.stop(Duration::from_secs(10)).await;

    let text = std::fs::read_to_string(&log).unwrap();
    let mut lines = 0;
    let mut starting = None;
    for line in text.lines() {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not a JSON object ({e}): {line}\n{text}"));
        assert!(v["timestamp"].is_string(), "{line}");
        assert!(["TRACE", "DEBUG", "INFO", "WARN", "ERROR"].contains(&v["level"].as_str().unwrap_or("")), "{line}");
        assert!(v["target"].as_str().is_some_and(|t| t.starts_with("driftwatch_")), "{line}");
        assert!(v["fields"]["message"].is_string(), "{line}");
        if v["fields"]["message"] == "agent starting" {
            starting = Some(v.clone());
        }
        lines += 1;
    }
    println!("{lines} JSON log lines parsed");
    let starting = starting.unwrap_or_else(|| panic!("no 'agent starting' line:\n{text}"));
    assert_eq!(starting["level"], "INFO");
    assert_eq!(starting["target"], "driftwatch_agent::run");
    assert_eq!(starting["fields"]["host"], "logs-1", "a structured field: {starting}");
    assert_eq!(starting["fields"]["pending"], 0, "numbers stay numbers: {starting}");
    assert!(!text.contains("\x1b["), "no colour codes in JSON:\n{text}");
    server.stop().await.unwrap();
}

#[tokio::test]
async fn text_logs_without_a_terminal_have_no_colour_codes() {
    let dir = tempfile::tempdir().unwrap();
    let server = start_server(&dir.path().join("server")).await;
    let log = dir.path().join("agent.log");
    let mut agent = spawn_agent(dir.path(), &server_url(&server), &[], &log);
    wait_for("the agent's first log lines", Duration::from_secs(30), || async {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        text.contains("file watcher started").then_some(())
    })
    .await;
    agent.stop(Duration::from_secs(10)).await;
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains(" INFO ") && text.contains("agent starting"), "{text}");
    assert!(!text.contains("\x1b["), "stderr is a file, not a terminal: no colour codes:\n{text}");
    server.stop().await.unwrap();
}
