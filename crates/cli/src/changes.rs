//! `driftwatch correct` and `driftwatch rollout …`: change files through the agents.

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};

use crate::connect::Conn;
use anyhow::Context;
use driftwatch_proto::v1::{self, changes_client::ChangesClient, correct_request::Action};
use driftwatch_proto::{
    change_outcome_name as outcome_name, rollout_host_state_name as host_state_name,
    rollout_is_terminal as is_terminal, rollout_state_name as state_name,
};

use crate::output::{Output, duration_arg, table, to_json, ts};
use crate::status_err;

#[derive(Debug, clap::Args)]
pub struct CorrectArgs {
    /// Host id.
    host_id: String,
    /// Absolute path of the file on the host.
    path: String,
    /// Put keys back to the host's effective baseline (every differing key, or those given with --key).
    #[arg(long, conflicts_with_all = ["set", "remove", "restore_version"])]
    restore_baseline: bool,
    /// With --restore-baseline: only this key (repeatable).
    #[arg(long = "key", requires = "restore_baseline")]
    keys: Vec<String>,
    /// Set KEY=VALUE (repeatable), written in the file's own syntax.
    #[arg(long, value_name = "KEY=VALUE")]
    set: Vec<String>,
    /// Remove a key (repeatable).
    #[arg(long, value_name = "KEY")]
    remove: Vec<String>,
    /// Put back the file's earlier version with this content hash (from the agent's backups).
    #[arg(long, value_name = "HASH", conflicts_with_all = ["set", "remove"])]
    restore_version: Option<String>,
    /// Show the exact diff the agent would write; write nothing.
    #[arg(long)]
    dry_run: bool,
    /// Why (recorded in the audit log).
    #[arg(long, default_value = "")]
    reason: String,
    /// How long to wait for the agent: 30s, 2m.
    #[arg(long, default_value = "30s")]
    timeout: String,
}

#[derive(Debug, clap::Subcommand)]
pub enum RolloutCmd {
    /// Roll a change out to every host the selector picks, in waves, gated by the rules.
    Start(Box<StartArgs>),
    /// One rollout in detail, or (without ID) the recent ones.
    Status { id: Option<String> },
    /// Follow a rollout live, wave by wave, until it ends.
    Watch { id: String },
    /// Stop a rollout and roll back every host it changed.
    Abort {
        id: String,
        /// Why (recorded in the audit log).
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// Continue a paused rollout.
    Resume {
        id: String,
        /// Why (recorded in the audit log).
        #[arg(long, default_value = "")]
        reason: String,
    },
}

#[derive(Debug, clap::Args)]
pub struct StartArgs {
    /// Absolute path of the file on the hosts.
    path: String,
    /// Target hosts: label selector, e.g. service=web2img,env=production.
    #[arg(long, short = 'l')]
    selector: String,
    /// Set KEY=VALUE (repeatable).
    #[arg(long, value_name = "KEY=VALUE")]
    set: Vec<String>,
    /// Remove a key (repeatable).
    #[arg(long, value_name = "KEY")]
    remove: Vec<String>,
    /// Restore this content hash instead of editing keys.
    #[arg(long, value_name = "HASH", conflicts_with_all = ["set", "remove"])]
    restore_version: Option<String>,
    /// Cumulative wave sizes: host counts or shares.
    #[arg(long, value_delimiter = ',', default_value = "1,10%,50%,100%")]
    waves: Vec<String>,
    /// Bake time per wave before its gate is checked: 30s, 5m.
    #[arg(long, default_value = "0s")]
    bake: String,
    /// Fail the gate on a new alert at or above this severity.
    #[arg(long, default_value = "medium")]
    gate_severity: String,
    /// On a failed gate: roll back every applied host, or pause.
    #[arg(long, value_parser = ["rollback", "pause"], default_value = "rollback")]
    on_failure: String,
    /// How long to wait for an offline host before skipping it: 60s, 5m.
    #[arg(long, default_value = "60s")]
    host_timeout: String,
    /// Start even if pre-flight finds rules the change would fire.
    #[arg(long)]
    force: bool,
    /// On success, write the new values into the touched hosts' baselines.
    #[arg(long)]
    promote_baseline: bool,
    /// Show the plan and every host's diff; write nothing.
    #[arg(long)]
    dry_run: bool,
    /// Follow the rollout until it ends.
    #[arg(long)]
    watch: bool,
    /// Why (recorded with the rollout and in the audit log).
    #[arg(long, default_value = "")]
    reason: String,
}

fn key_values(pairs: &[String]) -> anyhow::Result<BTreeMap<String, String>> {
    pairs
        .iter()
        .map(|p| {
            let (k, v) = p.split_once('=').with_context(|| format!("--set {p:?}: expected KEY=VALUE"))?;
            anyhow::ensure!(!k.trim().is_empty(), "--set {p:?}: empty key");
            Ok((k.trim().to_string(), v.to_string()))
        })
        .collect()
}

fn short(h: &str) -> &str {
    &h[..h.len().min(12)]
}

/// `driftwatch correct`: exit status 1 unless the change was applied (or a dry run, or nothing to do).
pub async fn correct(ch: Conn, out: Output, a: CorrectArgs) -> anyhow::Result<bool> {
    let action = if a.restore_baseline {
        Action::RestoreBaseline(v1::RestoreBaseline { keys: a.keys })
    } else if let Some(h) = a.restore_version {
        Action::RestoreVersion(v1::RestoreVersion { content_hash: h })
    } else if !a.set.is_empty() || !a.remove.is_empty() {
        Action::SetKeys(v1::SetKeys { values: key_values(&a.set)?.into_iter().collect(), remove: a.remove })
    } else {
        anyhow::bail!(
            "say what to change: --restore-baseline, --set KEY=VALUE / --remove KEY, or --restore-version HASH"
        );
    };
    let req = v1::CorrectRequest {
        host_id: a.host_id,
        path: a.path,
        action: Some(action),
        dry_run: a.dry_run,
        reason: a.reason,
        timeout: Some(duration_arg(&a.timeout, "timeout")?),
    };
    let r = ChangesClient::new(ch).correct(req).await.map_err(status_err)?.into_inner();
    let result = r.result.clone().unwrap_or_default();
    match out {
        Output::Json => println!("{}", to_json(&r, "CorrectResponse")?),
        Output::Table => print!("{}", result_text(&r.host_id, &r.change_id, &result)),
    }
    Ok(matches!(
        v1::ChangeOutcome::try_from(result.outcome),
        Ok(v1::ChangeOutcome::Applied | v1::ChangeOutcome::DryRun | v1::ChangeOutcome::Unchanged)
    ))
}

fn result_text(host: &str, change_id: &str, r: &v1::ChangeResult) -> String {
    let mut s = format!("{}  {host}:{}  (change {change_id})\n", outcome_name(r.outcome).to_uppercase(), r.path);
    if !r.message.is_empty() {
        s.push_str(&format!("{}\n", r.message));
    }
    if !r.before_hash.is_empty() || !r.after_hash.is_empty() {
        s.push_str(&format!("hash {} -> {}\n", short(&r.before_hash), short(&r.after_hash)));
    }
    if !r.backup_hash.is_empty() {
        s.push_str(&format!("backup {}\n", short(&r.backup_hash)));
    }
    if !r.diff.is_empty() {
        s.push('\n');
        s.push_str(&r.diff);
        if !r.diff.ends_with('\n') {
            s.push('\n');
        }
    }
    for (name, text) in [("reload", &r.reload_output), ("health", &r.health_output)] {
        if !text.is_empty() {
            s.push_str(&format!("\n{name} output (last lines):\n{text}\n"));
        }
    }
    s
}

pub async fn rollout(ch: Conn, out: Output, cmd: RolloutCmd) -> anyhow::Result<bool> {
    let mut c = ChangesClient::new(ch);
    match cmd {
        RolloutCmd::Start(a) => {
            let a = *a;
            let req = v1::StartRolloutRequest {
                selector: a.selector,
                path: a.path,
                set_keys: key_values(&a.set)?.into_iter().collect(),
                remove_keys: a.remove,
                restore_hash: a.restore_version.unwrap_or_default(),
                waves: a.waves,
                bake: Some(duration_arg(&a.bake, "bake")?),
                gate_severity: crate::alerts::severity_arg(&a.gate_severity)? as i32,
                on_failure: if a.on_failure == "pause" { v1::OnFailure::Pause } else { v1::OnFailure::RollBack } as i32,
                dry_run: a.dry_run,
                force: a.force,
                promote_baseline: a.promote_baseline,
                reason: a.reason,
                host_timeout: Some(duration_arg(&a.host_timeout, "host-timeout")?),
            };
            let r = c.start_rollout(req).await.map_err(status_err)?.into_inner();
            let rollout = r.rollout.clone().unwrap_or_default();
            match out {
                Output::Json => println!("{}", to_json(&r, "StartRolloutResponse")?),
                Output::Table => {
                    if !r.preflight.is_empty() {
                        println!("pre-flight findings (the change would fire these rules):");
                        for f in &r.preflight {
                            println!(
                                "  {}: {} ({}) {} {}",
                                f.host_id,
                                f.rule,
                                driftwatch_proto::severity_name(f.severity),
                                f.key,
                                f.summary
                            );
                        }
                    }
                    if a.dry_run {
                        print!("{}", plan_text(&rollout));
                    } else {
                        println!("rollout {} started", rollout.id);
                    }
                }
            }
            if a.watch && !a.dry_run {
                return watch(c, out, rollout.id).await;
            }
            Ok(true)
        }
        RolloutCmd::Status { id: Some(id) } => {
            let r = c.get_rollout(v1::GetRolloutRequest { id }).await.map_err(status_err)?.into_inner();
            match out {
                Output::Json => println!("{}", to_json(&r, "Rollout")?),
                Output::Table => print!("{}", progress_text(&r, true)),
            }
            Ok(true)
        }
        RolloutCmd::Status { id: None } => {
            let r = c.list_rollouts(v1::ListRolloutsRequest::default()).await.map_err(status_err)?.into_inner();
            match out {
                Output::Json => println!("{}", to_json(&r, "ListRolloutsResponse")?),
                Output::Table => {
                    let rows: Vec<Vec<String>> = r
                        .rollouts
                        .iter()
                        .map(|x| {
                            let (done, total) = counts(x);
                            vec![
                                x.id.clone(),
                                state_name(x.state).into(),
                                x.path.clone(),
                                x.selector.clone(),
                                format!("{done}/{total}"),
                                ts(&x.created_at),
                                x.actor.clone(),
                            ]
                        })
                        .collect();
                    print!("{}", table(&["ID", "STATE", "PATH", "SELECTOR", "HOSTS", "CREATED", "BY"], &rows));
                }
            }
            Ok(true)
        }
        RolloutCmd::Watch { id } => watch(c, out, id).await,
        RolloutCmd::Abort { id, reason } => {
            let r = c.abort_rollout(v1::AbortRolloutRequest { id, reason }).await.map_err(status_err)?.into_inner();
            match out {
                Output::Json => println!("{}", to_json(&r, "Rollout")?),
                Output::Table => print!("{}", progress_text(&r, true)),
            }
            Ok(true)
        }
        RolloutCmd::Resume { id, reason } => {
            let r = c.resume_rollout(v1::ResumeRolloutRequest { id, reason }).await.map_err(status_err)?.into_inner();
            match out {
                Output::Json => println!("{}", to_json(&r, "Rollout")?),
                Output::Table => print!("{}", progress_text(&r, false)),
            }
            Ok(true)
        }
    }
}

/// Hosts done (applied, skipped, failed, rolled back) and in total.
fn counts(r: &v1::Rollout) -> (usize, usize) {
    let hosts = r.waves.iter().flat_map(|w| &w.hosts);
    let total = hosts.clone().count();
    let done = hosts
        .filter(|h| {
            !matches!(
                v1::RolloutHostState::try_from(h.state),
                Ok(v1::RolloutHostState::Waiting | v1::RolloutHostState::Applying)
            )
        })
        .count();
    (done, total)
}

/// Follow a rollout; redraws in place on a terminal, one block per update otherwise.
/// Exit status 1 unless it succeeded.
async fn watch(mut c: ChangesClient<Conn>, out: Output, id: String) -> anyhow::Result<bool> {
    let mut stream = c.watch_rollout(v1::WatchRolloutRequest { id }).await.map_err(status_err)?.into_inner();
    let tty = std::io::stdout().is_terminal() && out == Output::Table;
    let mut drawn = 0usize;
    let mut last = v1::Rollout::default();
    while let Some(r) = stream.message().await.map_err(status_err)? {
        match out {
            Output::Json => println!("{}", to_json(&r, "Rollout")?),
            Output::Table => {
                let text = progress_text(&r, false);
                let mut stdout = std::io::stdout().lock();
                if tty && drawn > 0 {
                    // Move up over the previous block and clear it.
                    write!(stdout, "\x1b[{drawn}A\x1b[J")?;
                }
                write!(stdout, "{text}")?;
                stdout.flush()?;
                drawn = text.lines().count();
            }
        }
        last = r;
    }
    if out == Output::Table && !last.stop_reason.is_empty() {
        println!("{}", last.stop_reason);
    }
    Ok(last.state == v1::RolloutState::Succeeded as i32 && is_terminal(last.state))
}

fn wave_line(w: &v1::Wave, n: usize) -> String {
    let mut by: BTreeMap<&str, usize> = BTreeMap::new();
    for h in &w.hosts {
        *by.entry(host_state_name(h.state)).or_default() += 1;
    }
    let parts: Vec<String> = by.iter().map(|(k, v)| format!("{v} {k}")).collect();
    let phase = if w.done {
        "done".to_string()
    } else if w.started_at.is_none() {
        "waiting".to_string()
    } else {
        match &w.bake_until {
            Some(t) if driftwatch_proto::timestamp_millis(t) > driftwatch_proto::now_millis() => {
                format!("baking, gate {}", crate::output::until(t))
            }
            Some(_) => "checking gate".into(),
            None => "applying".into(),
        }
    };
    format!(
        "  wave {}/{n} ({:>4}, {:>4} hosts)  {:<24} {}\n",
        w.index + 1,
        w.size,
        w.hosts.len(),
        phase,
        parts.join(", ")
    )
}

fn progress_text(r: &v1::Rollout, hosts: bool) -> String {
    let (done, total) = counts(r);
    let mut s = format!(
        "rollout {}  {}  {}  [{}]  {done}/{total} hosts\n",
        r.id,
        state_name(r.state).to_uppercase(),
        r.path,
        r.selector
    );
    for w in &r.waves {
        s.push_str(&wave_line(w, r.waves.len()));
    }
    if !r.stop_reason.is_empty() && is_terminal(r.state) || r.state == v1::RolloutState::Paused as i32 {
        s.push_str(&format!("  stopped: {}\n", r.stop_reason));
    }
    if !r.promoted_baseline.is_empty() {
        s.push_str(&format!("  promoted baseline: {}\n", r.promoted_baseline));
    }
    if hosts {
        let rows: Vec<Vec<String>> = r
            .waves
            .iter()
            .flat_map(|w| w.hosts.iter().map(move |h| (w.index, h)))
            .map(|(i, h)| {
                vec![
                    (i + 1).to_string(),
                    h.host_id.clone(),
                    host_state_name(h.state).into(),
                    short(&h.before_hash).into(),
                    short(&h.after_hash).into(),
                    h.message.clone(),
                ]
            })
            .collect();
        s.push_str(&table(&["WAVE", "HOST", "STATE", "BEFORE", "AFTER", "MESSAGE"], &rows));
    }
    s
}

fn plan_text(r: &v1::Rollout) -> String {
    let mut s = format!("dry run: {} in {} wave(s) — nothing written\n", r.path, r.waves.len());
    for w in &r.waves {
        let hosts: Vec<&str> = w.hosts.iter().map(|h| h.host_id.as_str()).collect();
        s.push_str(&format!("  wave {} ({}): {}\n", w.index + 1, w.size, hosts.join(", ")));
    }
    for h in r.waves.iter().flat_map(|w| &w.hosts) {
        s.push_str(&format!("\n== {} ({})\n", h.host_id, h.message));
        s.push_str(&h.diff);
    }
    s
}
