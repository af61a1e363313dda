//! `rollout`: agents that apply changes, each holding /etc/bench/app.env: a rollout of
//! one key timed from StartRollout to SUCCEEDED.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use driftwatch_formats::Masker;
use driftwatch_proto::v1::{self, RolloutHostState as HS, RolloutState as RS};
use driftwatch_tests::ChangeAgent;
use driftwatch_tests::model_agent::{Held, decide};
use tokio_stream::StreamExt;

use crate::shared::{ServerProc, result};

/// The file every rollout bench agent holds.
const BENCH_PATH: &str = "/etc/bench/app.env";

/// The bench file: 20 keys of a plausible service, `POOL_SIZE=10` among them.
const BENCH_KEYS: &[(&str, &str)] = &[
    ("APP_NAME", "bench"),
    ("LISTEN_HOST", "0.0.0.0"),
    ("LISTEN_PORT", "8080"),
    ("LOG_LEVEL", "info"),
    ("LOG_FORMAT", "json"),
    ("POOL_SIZE", "10"),
    ("POOL_TIMEOUT_SECONDS", "30"),
    ("WORKERS", "4"),
    ("MAX_REQUEST_BYTES", "1048576"),
    ("REQUEST_TIMEOUT_SECONDS", "15"),
    ("CACHE_ENABLED", "true"),
    ("CACHE_TTL_SECONDS", "300"),
    ("CACHE_MAX_ENTRIES", "10000"),
    ("RATE_LIMIT_PER_SECOND", "250"),
    ("RETRY_BACKOFF_FACTOR", "1.5"),
    ("RETRY_MAX_ATTEMPTS", "3"),
    ("FEATURE_NEW_RENDERER", "false"),
    ("UPSTREAM_URL", "http://upstream.internal:9000"),
    ("METRICS_PORT", "9100"),
    ("SHUTDOWN_GRACE_SECONDS", "20"),
];

/// The fleet key of the simulated fleet (model agents mask and hash with it).
const SIM_FLEET_KEY: &[u8] = b"sim-fleet-key-0123456789";

fn bench_content() -> String {
    BENCH_KEYS.iter().map(|(k, v)| format!("{k}={v}\n")).collect()
}

/// The keyed hash of the bench file after `change`, as an agent computes it (a dry run
/// of the change on the model).
fn hash_after(masker: &Masker, content: &str, change: &v1::ApplyChange) -> anyhow::Result<String> {
    let held = Held {
        path: BENCH_PATH,
        format: driftwatch_formats::detect_format(Path::new(BENCH_PATH)),
        content: content.as_bytes(),
        backups: &HashMap::new(),
    };
    let dry =
        v1::ApplyChange { change_id: "expected".into(), path: BENCH_PATH.into(), dry_run: true, ..change.clone() };
    let d = decide(masker, held, &dry);
    anyhow::ensure!(d.result.outcome == v1::ChangeOutcome::DryRun as i32, "the bench change: {:?}", d.result);
    Ok(d.result.after_hash)
}

fn secs_between(a: Option<&driftwatch_proto::Timestamp>, b: Option<&driftwatch_proto::Timestamp>) -> Option<f64> {
    Some((driftwatch_proto::timestamp_millis(b?) - driftwatch_proto::timestamp_millis(a?)) as f64 / 1e3)
}

/// Model agents, not agent processes: a thousand `driftwatch-agent` processes (each
/// with its inotify watches, spool fsyncs and sysinfo) do not fit on the machine that
/// also runs the server, and what is measured here is the server's rollout. The model
/// answers as the agent does (`driftwatch_tests::model_agent`); the end-to-end tests
/// run rollouts against real agent processes.
pub async fn run(
    server: &ServerProc,
    agents: usize,
    per_conn: usize,
    waves: Vec<String>,
    poll: Option<Duration>,
) -> anyhow::Result<()> {
    println!(
        "rollout: {agents} agents ({per_conn} per connection), waves {waves:?}, {} keys in {BENCH_PATH}",
        BENCH_KEYS.len()
    );
    let masker = Arc::new(Masker::new(SIM_FLEET_KEY));
    let content = bench_content();

    // Connect: `per_conn` agents share each channel.
    let t0 = Instant::now();
    let limit = Arc::new(tokio::sync::Semaphore::new(64));
    let mut channels = Vec::new();
    for _ in 0..agents.div_ceil(per_conn) {
        let permit = limit.clone().acquire_owned().await?;
        let ep = tonic::transport::Endpoint::from_shared(server.url.clone())?.connect_timeout(Duration::from_secs(20));
        channels.push(tokio::spawn(async move {
            let ch = ep.connect().await;
            drop(permit);
            ch
        }));
    }
    let mut chans = Vec::with_capacity(channels.len());
    for c in channels {
        chans.push(c.await??);
    }
    let labels: std::collections::BTreeMap<String, String> = [("service".to_string(), "bench".to_string())].into();
    let mut connecting = Vec::with_capacity(agents);
    for i in 0..agents {
        let permit = limit.clone().acquire_owned().await?;
        let (ch, labels, content, masker) =
            (chans[i / per_conn].clone(), labels.clone(), content.clone(), masker.clone());
        connecting.push(tokio::spawn(async move {
            let a = ChangeAgent::connect_on(ch, &format!("bench-{i:05}"), labels, BENCH_PATH, &content, masker).await;
            drop(permit);
            a
        }));
    }
    let mut fleet = Vec::with_capacity(agents);
    for (i, c) in connecting.into_iter().enumerate() {
        fleet.push(c.await?.with_context(|| format!("agent bench-{i:05}"))?);
    }
    let connected = t0.elapsed();

    // Wait until the server holds the file of every agent.
    let ch = tonic::transport::Endpoint::from_shared(server.url.clone())?.connect().await?;
    let mut fleet_api = v1::fleet_client::FleetClient::new(ch.clone());
    let mut changes = v1::changes_client::ChangesClient::new(ch).max_decoding_message_size(64 << 20);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let hosts = fleet_api.list_hosts(v1::ListHostsRequest { selector: "service=bench".into() }).await?.into_inner();
        let ready =
            hosts.hosts.iter().filter(|h| h.state == v1::ConnectionState::Online as i32 && h.file_count >= 1).count();
        if ready >= agents {
            break;
        }
        if Instant::now() > deadline {
            bail!("after 60 s the server holds the file of {ready} of {agents} hosts");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    println!(
        "rollout: {agents} agents connected in {:.2} s, files held by the server after {:.2} s",
        connected.as_secs_f64(),
        t0.elapsed().as_secs_f64()
    );

    let before = masker.content_hash(content.as_bytes());
    let change =
        v1::ApplyChange { set_text: [("POOL_SIZE".to_string(), "12".to_string())].into(), ..Default::default() };
    let expected = hash_after(&masker, &content, &change)?;

    let wave_count = waves.len();
    let started = Instant::now();
    let resp = changes
        .start_rollout(v1::StartRolloutRequest {
            selector: "service=bench".into(),
            path: BENCH_PATH.into(),
            set_keys: [("POOL_SIZE".to_string(), "12".to_string())].into(),
            waves,
            bake: Some(driftwatch_proto::duration::seconds(0)),
            reason: "rollout benchmark".into(),
            ..Default::default()
        })
        .await
        .context("StartRollout")?
        .into_inner();
    let start_rpc = started.elapsed();
    let id = resp.rollout.context("StartRollout returned no rollout")?.id;
    // Follow it with WatchRollout, or (--poll-ms) with GetRollout, to see what the stream costs.
    let mut watch = match poll {
        Some(_) => None,
        None => Some(
            changes
                .watch_rollout(v1::WatchRolloutRequest { id: id.clone() })
                .await
                .context("WatchRollout")?
                .into_inner(),
        ),
    };
    // When this client first saw each wave done, and how many updates it read.
    let mut seen_done: Vec<Option<Duration>> = vec![None; wave_count];
    let mut updates = 0usize;
    let mut last = None;
    let watch_deadline = started + Duration::from_secs(300);
    loop {
        let left = watch_deadline.saturating_duration_since(Instant::now());
        let r = match (&mut watch, poll) {
            (Some(w), _) => match tokio::time::timeout(left, w.next()).await {
                Ok(Some(m)) => m?,
                _ => break,
            },
            (None, Some(every)) => {
                if left.is_zero() {
                    break;
                }
                tokio::time::sleep(every).await;
                changes.get_rollout(v1::GetRolloutRequest { id: id.clone() }).await.context("GetRollout")?.into_inner()
            }
            (None, None) => unreachable!("watching or polling"),
        };
        updates += 1;
        for (i, w) in r.waves.iter().enumerate() {
            if w.done && seen_done.get(i).is_some_and(Option::is_none) {
                seen_done[i] = Some(started.elapsed());
            }
        }
        let terminal = matches!(RS::try_from(r.state), Ok(RS::Succeeded | RS::Failed | RS::RolledBack | RS::Aborted));
        last = Some(r);
        if terminal {
            break;
        }
    }
    let took = started.elapsed();
    let r = last.context("no rollout state read")?;
    let state = RS::try_from(r.state).unwrap_or(RS::Unspecified);
    if matches!(state, RS::Pending | RS::Running | RS::Paused | RS::Unspecified) {
        bail!("rollout {id} did not end within {:.0} s: still {state:?}", took.as_secs_f64());
    }
    if state != RS::Succeeded {
        let failed: Vec<String> = r
            .waves
            .iter()
            .flat_map(|w| &w.hosts)
            .filter(|h| h.state != HS::Applied as i32)
            .take(5)
            .map(|h| format!("{} {:?}: {}", h.host_id, HS::try_from(h.state).unwrap_or(HS::Unspecified), h.message))
            .collect();
        bail!(
            "rollout {id} ended {state:?} after {:.3} s (not SUCCEEDED): stop_reason: {:?}; first hosts not applied: {failed:?}",
            took.as_secs_f64(),
            r.stop_reason
        );
    }

    println!(
        "rollout: {agents} agents, {} waves, StartRollout -> succeeded in {:.3} s (target <= 3 s)",
        r.waves.len(),
        took.as_secs_f64()
    );
    println!(
        "rollout: StartRollout answered in {:.1} ms; first wave started {:.1} ms after the rollout was created; {updates} {} updates",
        start_rpc.as_secs_f64() * 1e3,
        secs_between(r.created_at.as_ref(), r.waves.first().and_then(|w| w.started_at.as_ref())).unwrap_or(f64::NAN)
            * 1e3,
        if poll.is_some() { "GetRollout" } else { "WatchRollout" }
    );
    for (i, w) in r.waves.iter().enumerate() {
        let end = r.waves.get(i + 1).and_then(|n| n.started_at.as_ref()).or(r.updated_at.as_ref());
        let last_result = w.hosts.iter().filter_map(|h| h.updated_at.as_ref()).max_by_key(|t| (t.seconds, t.nanos));
        println!(
            "  wave {} ({:>4}, {:>4} hosts): {:.3} s (last host result after {:.3} s; seen done by the client at {:.3} s)",
            i + 1,
            w.size,
            w.hosts.len(),
            secs_between(w.started_at.as_ref(), end).unwrap_or(f64::NAN),
            secs_between(w.started_at.as_ref(), last_result).unwrap_or(f64::NAN),
            seen_done[i].map(|d| d.as_secs_f64()).unwrap_or(f64::NAN)
        );
    }

    // Every agent holds the new file, the rollout says so, and so does the server.
    let stale: Vec<&str> =
        fleet.iter().filter(|a| a.hash() != expected || a.applied() != 1).map(|a| a.host()).collect();
    if !stale.is_empty() {
        bail!("{} agents do not hold the new file (first: {:?})", stale.len(), &stale[..stale.len().min(5)]);
    }
    let hosts: Vec<&v1::RolloutHost> = r.waves.iter().flat_map(|w| &w.hosts).collect();
    let bad = hosts
        .iter()
        .filter(|h| h.state != HS::Applied as i32 || h.after_hash != expected || h.before_hash != before)
        .count();
    if hosts.len() != agents || bad > 0 {
        bail!(
            "rollout lists {} hosts, {bad} of them not APPLIED {} -> {}",
            hosts.len(),
            &before[..12],
            &expected[..12]
        );
    }
    let mut server_stale = 0;
    for a in &fleet {
        let f = fleet_api
            .get_file(v1::GetFileRequest { host_id: a.host().to_string(), path: BENCH_PATH.into() })
            .await?
            .into_inner();
        if f.state.map(|s| s.content_hash) != Some(expected.clone()) {
            server_stale += 1;
        }
    }
    if server_stale > 0 {
        bail!("the server shows the old file for {server_stale} hosts");
    }
    println!(
        "rollout: all {agents} agents hold {} (was {}), as the rollout and GetFile show",
        &expected[..12],
        &before[..12]
    );
    result!(
        "rollout agents={agents} waves={} seconds={:.3} start_rpc_ms={:.1} target_s=3",
        r.waves.len(),
        took.as_secs_f64(),
        start_rpc.as_secs_f64() * 1e3
    );
    drop(fleet);
    Ok(())
}
