//! The server's own observability, end to end: a real server scraped after real gRPC
//! calls and an agent's stream: per-RPC counts by code and latency, build info,
//! process metrics, and alerts, hosts and rollouts by state.

use std::time::Duration;

use driftwatch_proto::v1;
use driftwatch_tests::*;

/// Every metric this adds to the server's scrape, by the name a scrape shows.
const SERVER_METRICS: &[&str] = &[
    "driftwatch_build_info{version=\"",
    "driftwatch_grpc_requests_total{service=\"",
    "driftwatch_grpc_request_duration_seconds_bucket{le=\"",
    "driftwatch_grpc_request_duration_seconds_count{service=\"",
    "process_resident_memory_bytes ",
    "process_cpu_seconds_total ",
    "process_open_fds ",
    "process_start_time_seconds ",
    "driftwatch_alerts{state=\"pending\"} ",
    "driftwatch_alerts{state=\"firing\"} ",
    "driftwatch_alerts{state=\"resolved\"} ",
    "driftwatch_hosts{state=\"online\"} ",
    "driftwatch_hosts{state=\"offline\"} ",
    "driftwatch_rollouts{state=\"pending\"} ",
    "driftwatch_rollouts{state=\"running\"} ",
    "driftwatch_rollouts{state=\"paused\"} ",
];

async fn scrape(addr: std::net::SocketAddr) -> String {
    let r = reqwest::get(format!("http://{addr}/metrics")).await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
    r.text().await.unwrap()
}

/// The value of the sample line starting with `series ` (labels included), or None.
fn value(text: &str, series: &str) -> Option<f64> {
    let line = text.lines().find(|l| l.starts_with(&format!("{series} ")))?;
    line[series.len() + 1..].trim().parse().ok()
}

fn calls(text: &str, service: &str, method: &str, code: &str) -> f64 {
    value(text, &format!("driftwatch_grpc_requests_total{{service=\"{service}\",method=\"{method}\",code=\"{code}\"}}"))
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scrape_shows_rpc_counts_build_info_process_and_state_gauges() {
    let dir = tempfile::tempdir().unwrap();
    let server = start_server(&dir.path().join("server")).await;
    let addr = server.metrics_addr.expect("the test server serves metrics");
    let before = scrape(addr).await;
    for m in SERVER_METRICS {
        assert!(before.contains(m), "missing {m} in:\n{before}");
    }
    assert_eq!(
        calls(&before, "driftwatch.v1.Fleet", "ListHosts", "OK"),
        0.0,
        "every RPC's OK series exists from the start"
    );

    let etc = dir.path().join("etc");
    std::fs::create_dir_all(&etc).unwrap();
    std::fs::write(etc.join("app.env"), "PORT=8080\n").unwrap();
    let agent =
        start_agent(agent_config(&server, "obs-1", &dir.path().join("agent"), &[format!("{}/*.env", etc.display())]))
            .await;
    let mut c = fleet_client(&server).await;
    wait_for("the agent online", Duration::from_secs(20), || {
        let mut c = c.clone();
        async move {
            let hosts = c.list_hosts(v1::ListHostsRequest::default()).await.ok()?.into_inner().hosts;
            hosts.iter().any(|h| h.state == v1::ConnectionState::Online as i32).then_some(())
        }
    })
    .await;
    let missing = c.get_host(v1::GetHostRequest { host_id: "nobody".into() }).await.unwrap_err();
    assert_eq!(missing.code(), tonic::Code::NotFound);

    let text = scrape(addr).await;
    let ok = calls(&text, "driftwatch.v1.Fleet", "ListHosts", "OK");
    assert!(ok >= 1.0, "ListHosts OK counted: {ok}");
    assert_eq!(calls(&text, "driftwatch.v1.Fleet", "GetHost", "NOT_FOUND"), 1.0, "{text}");
    let timed = value(
        &text,
        "driftwatch_grpc_request_duration_seconds_count{service=\"driftwatch.v1.Fleet\",method=\"ListHosts\"}",
    )
    .unwrap();
    assert_eq!(timed, ok, "every counted call is timed");
    assert_eq!(value(&text, "driftwatch_hosts{state=\"online\"}"), Some(1.0), "{text}");
    let version = format!("driftwatch_build_info{{version=\"{}\"}} 1", env!("CARGO_PKG_VERSION"));
    assert!(text.contains(&version), "{version} in:\n{text}");
    assert!(value(&text, "process_resident_memory_bytes").unwrap() > 0.0);
    assert!(value(&text, "process_open_fds").unwrap() > 0.0);
    println!(
        "ListHosts calls {ok}, their summed latency {:?} s",
        value(
            &text,
            "driftwatch_grpc_request_duration_seconds_sum{service=\"driftwatch.v1.Fleet\",method=\"ListHosts\"}"
        )
    );

    // A stream is counted when it ends: the agent's Connect, once the agent stops.
    let connects = |t: &str| {
        ["OK", "CANCELLED", "UNAVAILABLE", "UNKNOWN"]
            .iter()
            .map(|code| calls(t, "driftwatch.v1.AgentGateway", "Connect", code))
            .sum::<f64>()
    };
    assert_eq!(connects(&text), 0.0, "a live stream is not counted yet:\n{text}");
    agent.stop().await.unwrap();
    let after = wait_for("the ended stream counted and the host offline", Duration::from_secs(20), || async move {
        let t = scrape(addr).await;
        (connects(&t) >= 1.0 && value(&t, "driftwatch_hosts{state=\"offline\"}") == Some(1.0)).then_some(t)
    })
    .await;
    println!(
        "Connect stream lasted {:?} s",
        value(
            &after,
            "driftwatch_grpc_request_duration_seconds_sum{service=\"driftwatch.v1.AgentGateway\",method=\"Connect\"}"
        )
    );
    server.stop().await.unwrap();
}
