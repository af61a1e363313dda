//! `subscribers`: many `Alerts.Subscribe` streams (one connection each) and one agent
//! whose file change fires or resolves an alert: time from the event to its delivery on
//! every stream.

use std::sync::Arc;
use std::time::{Duration, Instant};

use driftwatch_proto::v1;
use tokio::sync::mpsc;
use tokio_stream::StreamExt;

use crate::shared::{LevelFlipper, ServerProc, p50_p99_max_ms, result, since_event};

pub async fn run(server: &ServerProc, n: usize, events: usize, stuck: usize, interval: Duration) -> anyhow::Result<()> {
    println!("subscribers: {n} streams (+{stuck} that never read), {events} events");
    let (lat_tx, mut lat_rx) = mpsc::unbounded_channel::<(u64, Duration)>();
    let ready = Arc::new(tokio::sync::Barrier::new(n + 1));
    let mut handles = Vec::new();
    for _ in 0..n {
        let (url, lat_tx, ready) = (server.url.clone(), lat_tx.clone(), ready.clone());
        handles.push(tokio::spawn(async move {
            let ch = tonic::transport::Endpoint::from_shared(url)?.connect().await?;
            let mut c = v1::alerts_client::AlertsClient::new(ch);
            let mut s = c
                .subscribe(v1::SubscribeRequest {
                    heartbeat_interval: Some(driftwatch_proto::duration::seconds(5)),
                    ..Default::default()
                })
                .await?
                .into_inner();
            ready.wait().await;
            while let Some(m) = s.next().await {
                if let Some(v1::subscribe_response::Kind::Event(e)) = m?.kind {
                    let at = e.at.as_ref().map(driftwatch_proto::timestamp_millis).unwrap_or(0);
                    let _ = lat_tx.send((e.id, since_event(at)));
                }
            }
            anyhow::Ok(())
        }));
    }
    drop(lat_tx);
    // Subscribers that never read, each on its own connection.
    let mut stuck_streams = Vec::new();
    for _ in 0..stuck {
        let s = v1::alerts_client::AlertsClient::new(server.channel().await?)
            .subscribe(v1::SubscribeRequest::default())
            .await?
            .into_inner();
        stuck_streams.push(s);
    }
    ready.wait().await;
    let mut agent = LevelFlipper::connect(&server.url, "sim-subscribers").await?;
    let started = Instant::now();
    for _ in 0..events {
        agent.flip()?;
        // One event at a time, so each delivery is timed on its own.
        tokio::time::sleep(interval).await;
    }
    let produced = started.elapsed();
    // Collect until every stream has every event, or a deadline.
    let mut lats = Vec::with_capacity(n * events);
    let deadline = Instant::now() + Duration::from_secs(30);
    while lats.len() < n * events {
        match tokio::time::timeout(deadline.saturating_duration_since(Instant::now()), lat_rx.recv()).await {
            Ok(Some((_, l))) => lats.push(l),
            _ => break,
        }
    }
    for h in handles {
        h.abort();
    }
    drop(stuck_streams);
    lats.sort();
    result!(
        "subscribers streams={n} stuck={stuck} events={events} deliveries={} expected={} produced_in_s={:.1}",
        lats.len(),
        n * events,
        produced.as_secs_f64()
    );
    let (p50, p99, max) = p50_p99_max_ms(&lats);
    result!(
        "subscribers delivery_latency_p50_ms={p50:.1} p99_ms={p99:.1} max_ms={max:.1} (event time to receipt, ms clock)"
    );
    Ok(())
}
