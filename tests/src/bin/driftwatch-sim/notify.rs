//! `notify`: a webhook notifier pointed at a receiver in this process, and one agent
//! whose file change fires or resolves an alert (paced, so that it measures latency,
//! not queueing): for each fired event, the time from the event's own time (`at` in the
//! webhook body) to its receipt at the webhook. Every fired event must be delivered.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use driftwatch_proto::v1;
use driftwatch_tests::webhook::Receiver;

use crate::shared::{LevelFlipper, ServerProc, p50_p99_max_ms, result};

/// The target (issue 5): fired → delivered to a healthy webhook, p99 on loopback.
const TARGET_P99_MS: f64 = 50.0;

/// First successful delivery of each fired event: event id → time from the event's own
/// time (`at` in the body) to its receipt.
fn fired_latencies(receiver: &Receiver) -> BTreeMap<u64, Duration> {
    let mut out = BTreeMap::new();
    for h in receiver.delivered("fired") {
        let at = h.json["at"].as_str().and_then(|s| driftwatch_proto::Timestamp::from_str(s).ok());
        if let (Some(id), Some(at)) = (h.json["event_id"].as_u64(), at) {
            let lag = h.at_ms - driftwatch_proto::timestamp_millis(&at);
            out.entry(id).or_insert(Duration::from_millis(lag.max(0) as u64));
        }
    }
    out
}

/// A server config with one webhook notifier (every event kind it sends by default:
/// fired and resolved) pointed at `receiver`.
pub fn server_config(dir: &Path, receiver: &Receiver) -> anyhow::Result<PathBuf> {
    let p = dir.join("server.toml");
    std::fs::write(
        &p,
        format!(
            "insecure = true\n\n[[notifiers]]\nname = \"bench-webhook\"\nkind = \"webhook\"\nurl = \"{}\"\n",
            receiver.url
        ),
    )?;
    Ok(p)
}

/// Every fired event the server recorded, by id.
async fn fired_events(server: &ServerProc) -> anyhow::Result<Vec<u64>> {
    let mut c = v1::alerts_client::AlertsClient::new(server.channel().await?);
    let (mut out, mut after_id) = (Vec::new(), 0);
    loop {
        let page = c.list_events(v1::ListEventsRequest { after_id, limit: 10_000 }).await?.into_inner().events;
        let Some(last) = page.last() else { break };
        after_id = last.id;
        out.extend(page.iter().filter(|e| e.kind == v1::AlertEventKind::Fired as i32).map(|e| e.id));
    }
    Ok(out)
}

pub async fn run(server: &ServerProc, receiver: &Receiver, alerts: usize, interval: Duration) -> anyhow::Result<()> {
    println!(
        "notify: {alerts} alerts fired and resolved ({} events, one every {} ms) to a webhook at {}",
        2 * alerts,
        interval.as_millis(),
        receiver.url
    );
    let mut agent = LevelFlipper::connect(&server.url, "sim-notify").await?;
    let started = Instant::now();
    for _ in 0..2 * alerts {
        agent.flip()?;
        tokio::time::sleep(interval).await;
    }
    let produced = started.elapsed();
    // Every fired event the server recorded must reach the webhook: wait for them, up to a deadline.
    let deadline = Instant::now() + Duration::from_secs(30);
    let (fired, delivered) = loop {
        let fired = fired_events(server).await.context("ListEvents")?;
        let delivered = fired_latencies(receiver);
        let all = fired.len() >= alerts && fired.iter().all(|id| delivered.contains_key(id));
        if all || Instant::now() > deadline {
            break (fired, delivered);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let missing: Vec<u64> = fired.iter().copied().filter(|id| !delivered.contains_key(id)).collect();
    let mut lats: Vec<Duration> = fired.iter().filter_map(|id| delivered.get(id).copied()).collect();
    lats.sort();
    let (p50, p99, max) = p50_p99_max_ms(&lats);
    result!("notify alerts={} delivered={} p50_ms={p50:.1} p99_ms={p99:.1} max_ms={max:.1}", fired.len(), lats.len());
    println!(
        "notify: alert fired -> webhook delivery p50 {p50:.1} ms, p99 {p99:.1} ms, max {max:.1} ms over {} alerts \
         produced in {:.1} s (target p99 <= {TARGET_P99_MS} ms: {})",
        fired.len(),
        produced.as_secs_f64(),
        if p99 <= TARGET_P99_MS { "met" } else { "missed" }
    );
    if fired.len() < alerts {
        bail!("the server recorded {} fired events, {alerts} expected", fired.len());
    }
    if !missing.is_empty() {
        bail!("{} fired events never reached the webhook: ids {:?}", missing.len(), &missing[..missing.len().min(20)]);
    }
    Ok(())
}
