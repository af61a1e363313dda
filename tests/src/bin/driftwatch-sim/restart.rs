//! `restart`: a reconnect storm. N virtual agents, each reconnecting as the real agent
//! does (`driftwatch_agent::backoff::Backoff`: a delay after every lost or failed
//! stream, reset on Welcome), hold a stream to a real server process; the server is
//! SIGKILLed and started again on the same port and data dir. Reported: connection
//! attempts per 100 ms from the kill until every agent is back (peak bucket, mean,
//! their ratio), attempts the server refused and attempts that found nobody listening,
//! the time from the restarted server accepting until every agent is back, and the
//! server's RSS then.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::bail;
use driftwatch_agent::backoff::{Backoff, MIN_CONNECT_TIMEOUT};
use driftwatch_proto::v1;
use driftwatch_tests::gateway::{AgentTx, open_agent_stream};
use parking_lot::Mutex;
use tokio_stream::StreamExt;
use tokio_util::sync::CancellationToken;

use crate::shared::{ServerProc, endpoint, result};

/// How an attempt ended.
#[derive(Clone, Copy, PartialEq)]
enum Outcome {
    Welcomed,
    /// The server answered with a status (a limit, a host id already connected...).
    Refused,
    /// No server: the connection or the stream failed before any answer.
    Unreachable,
}

/// What the agents record, and the phase they are in.
struct Log {
    attempts: Mutex<Vec<(Instant, Outcome)>>,
    /// 1 before the kill, 2 after: which counter a Welcome counts in.
    phase: AtomicU8,
    up: [AtomicUsize; 2],
    first_refusal: Mutex<Option<String>>,
}

pub async fn run(server: &mut ServerProc, agents: usize, deadline: Duration) -> anyhow::Result<()> {
    println!("restart: {agents} agents");
    let log = Arc::new(Log {
        attempts: Mutex::new(Vec::with_capacity(agents * 4)),
        phase: AtomicU8::new(1),
        up: [AtomicUsize::new(0), AtomicUsize::new(0)],
        first_refusal: Mutex::new(None),
    });
    let stop = CancellationToken::new();
    let _stop = stop.clone().drop_guard();
    for i in 0..agents {
        tokio::spawn(agent(server.url.clone(), format!("restart-{i:05}"), log.clone(), stop.clone()));
    }
    let t_start = Instant::now();
    wait_until("every agent connected", deadline, || log.up[0].load(Ordering::Relaxed) >= agents).await?;
    println!("all {agents} connected in {:.2} s", t_start.elapsed().as_secs_f64());
    let rss_before = server.rss();

    log.phase.store(2, Ordering::SeqCst);
    let t_kill = Instant::now();
    server.kill()?;
    server.restart()?;
    server.wait_ready().await?;
    let t_accept = Instant::now();
    wait_until("every agent back", deadline, || log.up[1].load(Ordering::Relaxed) >= agents).await?;
    let t_back = Instant::now();
    let rss = server.rss();

    let attempts: Vec<(Instant, Outcome)> =
        log.attempts.lock().iter().filter(|(t, _)| *t >= t_kill && *t <= t_back).copied().collect();
    let buckets = bucket_counts(attempts.iter().map(|(t, _)| t.duration_since(t_kill)), t_back - t_kill);
    let peak = buckets.iter().copied().max().unwrap_or(0);
    let mean = attempts.len() as f64 / buckets.len().max(1) as f64;
    let count = |o: Outcome| attempts.iter().filter(|(_, x)| *x == o).count();
    if let Some(e) = log.first_refusal.lock().as_ref() {
        eprintln!("first refusal: {e}");
    }
    let mib = |b: Option<u64>| b.map_or("n/a".into(), |b| format!("{:.1}", b as f64 / (1 << 20) as f64));
    let back_s = (t_back - t_accept).as_secs_f64();
    let ratio = if mean > 0.0 { peak as f64 / mean } else { 0.0 };
    // The span's end is the last agent back: one straggler (an agent whose attempts
    // before the server was up pushed its delay out) stretches it and lowers the mean.
    // The same ratio over the buckets that hold 99 % of the attempts shows the herd.
    let bulk = bulk_span(&buckets, 0.99);
    let bulk_mean = buckets[..bulk.min(buckets.len())].iter().sum::<usize>() as f64 / bulk.max(1) as f64;
    let bulk_ratio = if bulk_mean > 0.0 { peak as f64 / bulk_mean } else { 0.0 };
    result!(
        "restart agents={agents} restart_to_accepting_s={:.2} all_back_after_accepting_s={back_s:.2} kill_to_all_back_s={:.2} attempts={} welcomed={} refused={} unreachable={} peak_attempts_per_100ms={peak} mean_attempts_per_100ms={mean:.1} peak_over_mean={ratio:.2} server_rss_mib_before={} server_rss_mib_after={}",
        (t_accept - t_kill).as_secs_f64(),
        (t_back - t_kill).as_secs_f64(),
        attempts.len(),
        count(Outcome::Welcomed),
        count(Outcome::Refused),
        count(Outcome::Unreachable),
        mib(rss_before),
        mib(rss),
    );
    let profile: Vec<String> = buckets.iter().map(|n| n.to_string()).collect();
    println!("attempts per 100 ms from the kill: {}", profile.join(" "));
    result!(
        "restart buckets_holding_99pct={bulk} mean_attempts_per_100ms_over_them={bulk_mean:.1} peak_over_that_mean={bulk_ratio:.2}"
    );
    let verdict = if back_s <= 10.0 && ratio <= 3.0 { "met" } else { "missed" };
    println!("target (all back within 10 s of accepting, no bucket above 3x the mean): {verdict}");
    Ok(())
}

/// Attempts per 100 ms bucket over `span` (at least one bucket).
fn bucket_counts(offsets: impl Iterator<Item = Duration>, span: Duration) -> Vec<usize> {
    let n = (span.as_millis() / 100 + 1) as usize;
    let mut b = vec![0usize; n];
    for d in offsets {
        let i = ((d.as_millis() / 100) as usize).min(n - 1);
        b[i] += 1;
    }
    b
}

/// How many leading buckets hold `share` of all attempts (at least one).
fn bulk_span(buckets: &[usize], share: f64) -> usize {
    let total = buckets.iter().sum::<usize>() as f64;
    let mut seen = 0usize;
    for (i, n) in buckets.iter().enumerate() {
        seen += n;
        if seen as f64 >= total * share {
            return i + 1;
        }
    }
    buckets.len().max(1)
}

async fn wait_until(what: &str, deadline: Duration, mut f: impl FnMut() -> bool) -> anyhow::Result<()> {
    let end = Instant::now() + deadline;
    while !f() {
        if Instant::now() > end {
            bail!("timed out after {deadline:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(())
}

/// One virtual agent: the agent's stream loop without the payload. Connect, Hello (its
/// own spool id, kept across reconnects as a real agent's spool is), hold the stream
/// until it ends, then wait the backoff's delay and start over.
async fn agent(url: String, host: String, log: Arc<Log>, stop: CancellationToken) {
    let mut backoff = Backoff::default();
    let spool_id = format!("spool-{host}");
    let counted = [AtomicBool::new(false), AtomicBool::new(false)];
    loop {
        let at = Instant::now();
        let phase = log.phase.load(Ordering::SeqCst) as usize - 1;
        match connect(&url, &host, &spool_id).await {
            Ok((_tx, mut inbound)) => {
                // As the agent: the backoff starts over once the server welcomed us.
                backoff.reset_for_reconnect();
                log.attempts.lock().push((at, Outcome::Welcomed));
                if !counted[phase].swap(true, Ordering::Relaxed) {
                    log.up[phase].fetch_add(1, Ordering::Relaxed);
                }
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = async { while let Some(Ok(_)) = inbound.next().await {} } => {}
                }
            }
            Err(Some(status)) => {
                log.first_refusal.lock().get_or_insert_with(|| format!("{host}: {status}"));
                log.attempts.lock().push((at, Outcome::Refused));
            }
            Err(None) => log.attempts.lock().push((at, Outcome::Unreachable)),
        }
        if !continue_after_delay(&mut backoff, &stop).await {
            return;
        }
    }
}

/// Sleeps the backoff's next delay; false when stopped.
async fn continue_after_delay(backoff: &mut Backoff, stop: &CancellationToken) -> bool {
    let delay = backoff.next_delay(rand::random::<f64>());
    tokio::select! {
        _ = stop.cancelled() => false,
        _ = tokio::time::sleep(delay) => true,
    }
}

/// A stream past its Welcome; `Err(Some)`: the server's status, `Err(None)`: no answer.
async fn connect(
    url: &str,
    host: &str,
    spool_id: &str,
) -> Result<(AgentTx, tonic::Streaming<v1::ServerMessage>), Option<tonic::Status>> {
    let ep = endpoint(url, None).map_err(|_| None)?.connect_timeout(MIN_CONNECT_TIMEOUT).tcp_nodelay(true);
    let ch = ep.connect().await.map_err(|_| None)?;
    let hello = v1::Hello {
        host_id: host.to_string(),
        labels: [("sim".to_string(), "true".to_string())].into(),
        agent_version: "sim".into(),
        spool_id: spool_id.to_string(),
        ..Default::default()
    };
    match open_agent_stream(ch, hello).await {
        Ok(stream) => Ok(stream),
        Err(s) if matches!(s.code(), tonic::Code::Unavailable | tonic::Code::Unknown | tonic::Code::Cancelled) => {
            Err(None)
        }
        Err(s) => Err(Some(s)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_cover_the_span() {
        let b = bucket_counts(
            [0, 50, 99, 100, 250, 999].into_iter().map(Duration::from_millis),
            Duration::from_millis(300),
        );
        assert_eq!(b, vec![3, 1, 1, 1]);
    }

    #[test]
    fn the_bulk_leaves_out_a_straggler() {
        let mut b = vec![0, 100, 100, 100];
        b.extend([0; 20]);
        b.push(1);
        assert_eq!(bulk_span(&b, 0.99), 4);
        assert_eq!(bulk_span(&[], 0.99), 1);
        assert_eq!(bulk_span(&[5], 0.99), 1);
    }
}
