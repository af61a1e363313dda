//! `driftwatch alerts`, `driftwatch ack`, `driftwatch silence add|list|expire`.

use crate::connect::Conn;
use clap::{Args, Subcommand};
use driftwatch_proto::matcher::matcher_text;
use driftwatch_proto::v1::{self, alerts_client::AlertsClient};

use crate::output::{Output, table, to_json, ts};
use crate::status_err;

#[derive(Debug, Args)]
pub struct AlertsArgs {
    #[command(subcommand)]
    pub watch: Option<AlertsCmd>,
    /// States to show: pending, firing, resolved (repeatable; default pending and firing).
    #[arg(long = "state", value_name = "STATE")]
    states: Vec<String>,
    /// At least this severity: info, low, medium, high, critical.
    #[arg(long)]
    severity: Option<String>,
    /// Only this host.
    #[arg(long)]
    host: Option<String>,
    /// Host label selector, e.g. env=production,service=web2img.
    #[arg(long, short = 'l')]
    selector: Option<String>,
    /// Only this rule (name, or group/name).
    #[arg(long)]
    rule: Option<String>,
    /// Hide silenced alerts.
    #[arg(long)]
    hide_silenced: bool,
    /// Show one alert in full (fingerprint or a unique prefix of it).
    #[arg(long)]
    show: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum AlertsCmd {
    /// Print alert events as they happen (after the alerts firing now); reconnects and
    /// resumes after the last event seen when the connection drops or the server
    /// restarts, so nothing is missed or printed twice. Ctrl-C stops.
    Watch(WatchArgs),
}

#[derive(Debug, Args)]
pub struct WatchArgs {
    /// At least this severity: info, low, medium, high, critical.
    #[arg(long)]
    severity: Option<String>,
    /// Only these hosts (repeatable).
    #[arg(long = "host")]
    hosts: Vec<String>,
    /// Only these rules, name or group/name (repeatable).
    #[arg(long = "rule")]
    rules: Vec<String>,
    /// Alert label matchers: name=value, name!=value, name=~regex, name!~regex (repeatable).
    #[arg(long = "match", short = 'm', value_name = "MATCHER")]
    matchers: Vec<String>,
    /// Start after this event id (default: the alerts firing now, then new events).
    #[arg(long)]
    since: Option<u64>,
    /// Time between server heartbeats (1s to 300s); no message for three of them means a dead stream.
    #[arg(long, default_value = "5s")]
    heartbeat: String,
}

#[derive(Debug, Subcommand)]
pub enum SilenceCmd {
    /// Silence alerts whose labels match every matcher (name=value, name!=value,
    /// name=~regex, name!~regex; labels: alertname, group, severity, host, path, key,
    /// metric, the host's labels and the rule's labels).
    Add {
        #[arg(required = true, value_name = "MATCHER")]
        matchers: Vec<String>,
        /// How long: 2h, 30m, 1d, 1h30m.
        #[arg(long, short = 'd', default_value = "2h")]
        duration: String,
        /// Why (shown with the silence and in the audit log).
        #[arg(long, short = 'c', default_value = "")]
        comment: String,
    },
    /// List silences (active and pending; --all adds expired ones).
    List {
        #[arg(long)]
        all: bool,
    },
    /// End a silence now.
    Expire { id: String },
}

pub fn severity_arg(s: &str) -> anyhow::Result<v1::Severity> {
    Ok(match s.to_ascii_lowercase().as_str() {
        "info" => v1::Severity::Info,
        "low" => v1::Severity::Low,
        "medium" => v1::Severity::Medium,
        "high" => v1::Severity::High,
        "critical" => v1::Severity::Critical,
        other => anyhow::bail!("unknown severity {other:?} (info, low, medium, high, critical)"),
    })
}

fn state_arg(s: &str) -> anyhow::Result<v1::AlertState> {
    Ok(match s.to_ascii_lowercase().as_str() {
        "pending" => v1::AlertState::Pending,
        "firing" => v1::AlertState::Firing,
        "resolved" => v1::AlertState::Resolved,
        other => anyhow::bail!("unknown state {other:?} (pending, firing, resolved)"),
    })
}

fn value(v: &Option<v1::Value>) -> String {
    v.as_ref().map(|v| v.display()).unwrap_or_else(|| "-".into())
}

/// What an alert is about: `path key`, `metric`, or `agent`.
pub fn subject(a: &v1::Alert) -> String {
    match (a.path.is_empty(), a.metric.is_empty()) {
        (false, _) if a.key.is_empty() => a.path.clone(),
        (false, _) => format!("{} {}", a.path, a.key),
        (true, false) => a.metric.clone(),
        (true, true) => "agent".into(),
    }
}

pub fn alerts_table(alerts: &[v1::Alert]) -> String {
    let rows: Vec<Vec<String>> = alerts
        .iter()
        .map(|a| {
            let mut state = driftwatch_proto::alert_state_name(a.state).to_string();
            if a.acknowledged.is_some() {
                state.push_str(" (acked)");
            }
            if !a.silenced_by.is_empty() {
                state.push_str(" (silenced)");
            }
            let since = match v1::AlertState::try_from(a.state) {
                Ok(v1::AlertState::Resolved) => ts(&a.resolved_at),
                Ok(v1::AlertState::Firing) => ts(&a.fired_at),
                _ => ts(&a.active_since),
            };
            vec![
                a.fingerprint.chars().take(12).collect(),
                driftwatch_proto::severity_name(a.severity).into(),
                state,
                since,
                a.host_id.clone(),
                a.rule.clone(),
                subject(a),
                value(&a.value),
            ]
        })
        .collect();
    if rows.is_empty() {
        return "no alerts\n".into();
    }
    table(&["ID", "SEVERITY", "STATE", "SINCE", "HOST", "RULE", "SUBJECT", "VALUE"], &rows)
}

fn alert_detail(a: &v1::Alert) -> String {
    let mut rows = vec![
        vec!["fingerprint".into(), a.fingerprint.clone()],
        vec!["rule".into(), format!("{}/{}", a.group, a.rule)],
        vec!["host".into(), a.host_id.clone()],
        vec!["subject".into(), subject(a)],
        vec!["state".into(), driftwatch_proto::alert_state_name(a.state).into()],
        vec!["severity".into(), driftwatch_proto::severity_name(a.severity).into()],
        vec!["value".into(), value(&a.value)],
        vec!["baseline".into(), value(&a.baseline)],
        vec!["previous".into(), value(&a.previous)],
        vec!["active since".into(), ts(&a.active_since)],
        vec!["fired".into(), ts(&a.fired_at)],
        vec!["resolved".into(), ts(&a.resolved_at)],
        vec!["evaluated".into(), ts(&a.evaluated_at)],
    ];
    if !a.evaluation_error.is_empty() {
        rows.push(vec!["evaluation error".into(), a.evaluation_error.clone()]);
    }
    if let Some(ack) = &a.acknowledged {
        rows.push(vec!["acknowledged".into(), format!("by {} {} {}", ack.actor, ts(&ack.at), ack.comment)]);
    }
    if !a.silenced_by.is_empty() {
        rows.push(vec!["silenced by".into(), a.silenced_by.join(", ")]);
    }
    for (k, v) in &a.annotations {
        rows.push(vec![format!("annotation {k}"), v.clone()]);
    }
    let labels: Vec<String> = a.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
    rows.push(vec!["labels".into(), labels.join(",")]);
    table(&["FIELD", "VALUE"], &rows)
}

/// Find an alert by full fingerprint or unique prefix (any state).
async fn find(c: &mut AlertsClient<Conn>, id: &str) -> anyhow::Result<v1::Alert> {
    if id.len() == 32
        && let Ok(a) = c.get_alert(v1::GetAlertRequest { fingerprint: id.to_string() }).await
    {
        return Ok(a.into_inner());
    }
    let all = c
        .list_alerts(v1::ListAlertsRequest {
            states: vec![
                v1::AlertState::Pending as i32,
                v1::AlertState::Firing as i32,
                v1::AlertState::Resolved as i32,
            ],
            ..Default::default()
        })
        .await
        .map_err(status_err)?
        .into_inner()
        .alerts;
    let matches: Vec<v1::Alert> = all.into_iter().filter(|a| a.fingerprint.starts_with(id)).collect();
    match matches.len() {
        0 => anyhow::bail!("not found: no alert with id {id:?} (driftwatch alerts lists ids)"),
        1 => Ok(matches.into_iter().next().expect("one")),
        n => anyhow::bail!("id {id:?} is ambiguous ({n} alerts); give more characters"),
    }
}

/// One line per event: `#ID  KIND  SEVERITY  HOST  RULE  SUBJECT  VALUE`.
fn event_line(id: Option<u64>, kind: &str, a: &v1::Alert) -> String {
    format!(
        "{:<8} {:<12} {:<8} {:<16} {:<32} {} = {}",
        id.map(|i| format!("#{i}")).unwrap_or_else(|| "now".into()),
        kind,
        driftwatch_proto::severity_name(a.severity),
        a.host_id,
        a.rule,
        subject(a),
        value(&a.value)
    )
}

/// `alerts watch`: follow `Alerts.Subscribe`, resuming after the last id seen.
pub async fn watch(target: crate::connect::Target, out: Output, args: WatchArgs) -> anyhow::Result<()> {
    use tokio_stream::StreamExt;
    let heartbeat = driftwatch_proto::duration::parse(&args.heartbeat)
        .map_err(|e| anyhow::anyhow!("--heartbeat: {e}"))?
        .clamp(std::time::Duration::from_secs(1), std::time::Duration::from_secs(300));
    let request = |since: u64, first: bool| -> anyhow::Result<v1::SubscribeRequest> {
        Ok(v1::SubscribeRequest {
            since_event_id: since,
            include_firing: first && since == 0,
            min_severity: args.severity.as_deref().map(severity_arg).transpose()?.map(|s| s as i32).unwrap_or(0),
            matchers: args.matchers.iter().map(|m| parse_matcher(m)).collect::<anyhow::Result<_>>()?,
            rules: args.rules.clone(),
            hosts: args.hosts.clone(),
            heartbeat_interval: Some(driftwatch_proto::duration::to_proto(heartbeat)),
        })
    };
    request(0, true)?; // bad filters fail now, not on the first reconnect
    let dead_after = heartbeat * 3;
    let mut last = args.since.unwrap_or(0);
    let mut first = true;
    let mut backoff = std::time::Duration::from_millis(250);
    loop {
        let stream = match crate::channel(&target).await {
            Ok(ch) => AlertsClient::new(ch).subscribe(request(last, first)?).await.map_err(status_err),
            Err(e) => Err(e),
        };
        let reason = match stream {
            Err(e) if first => return Err(e),
            Err(e) => e.to_string(),
            Ok(resp) => {
                if !first {
                    eprintln!("resumed after event #{last}");
                }
                first = false;
                backoff = std::time::Duration::from_millis(250);
                let mut s = resp.into_inner();
                loop {
                    let m = match tokio::time::timeout(dead_after, s.next()).await {
                        Err(_) => break format!("no message for {} s", dead_after.as_secs()),
                        Ok(None) => break "the server closed the stream".to_string(),
                        Ok(Some(Err(st))) => break status_err(st).to_string(),
                        Ok(Some(Ok(m))) => m,
                    };
                    match m.kind {
                        Some(v1::subscribe_response::Kind::Event(e)) => {
                            last = last.max(e.id);
                            match out {
                                Output::Json => println!("{}", to_json(&e, "AlertEvent")?.replace('\n', " ")),
                                Output::Table => {
                                    if let Some(a) = &e.alert {
                                        println!(
                                            "{}",
                                            event_line(
                                                Some(e.id),
                                                v1::AlertEventKind::try_from(e.kind)
                                                    .map(driftwatch_proto::alert_event_kind_name)
                                                    .unwrap_or("unspecified"),
                                                a
                                            )
                                        );
                                    }
                                }
                            }
                        }
                        Some(v1::subscribe_response::Kind::Firing(a)) => match out {
                            Output::Json => println!("{}", to_json(&a, "Alert")?.replace('\n', " ")),
                            Output::Table => println!("{}", event_line(None, "firing", &a)),
                        },
                        Some(v1::subscribe_response::Kind::Heartbeat(h)) => last = last.max(h.last_event_id),
                        None => {}
                    }
                }
            }
        };
        eprintln!("stream lost ({reason}); resuming after event #{last} in {} ms", backoff.as_millis());
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(std::time::Duration::from_secs(10));
    }
}

pub async fn list(ch: Conn, out: Output, args: AlertsArgs) -> anyhow::Result<()> {
    let mut c = AlertsClient::new(ch);
    if let Some(id) = &args.show {
        let a = find(&mut c, id).await?;
        match out {
            Output::Json => println!("{}", to_json(&a, "Alert")?),
            Output::Table => print!("{}", alert_detail(&a)),
        }
        return Ok(());
    }
    let req = v1::ListAlertsRequest {
        states: args.states.iter().map(|s| state_arg(s).map(|s| s as i32)).collect::<anyhow::Result<_>>()?,
        min_severity: args.severity.as_deref().map(severity_arg).transpose()?.map(|s| s as i32).unwrap_or(0),
        host_id: args.host.unwrap_or_default(),
        selector: args.selector.unwrap_or_default(),
        rule: args.rule.unwrap_or_default(),
        hide_silenced: args.hide_silenced,
        limit: 0,
    };
    let r = c.list_alerts(req).await.map_err(status_err)?.into_inner();
    match out {
        Output::Json => println!("{}", to_json(&r, "ListAlertsResponse")?),
        Output::Table => print!("{}", alerts_table(&r.alerts)),
    }
    Ok(())
}

pub async fn ack(ch: Conn, out: Output, id: String, comment: String) -> anyhow::Result<()> {
    let mut c = AlertsClient::new(ch);
    let a = find(&mut c, &id).await?;
    let a = c
        .acknowledge(v1::AcknowledgeRequest { fingerprint: a.fingerprint, comment })
        .await
        .map_err(status_err)?
        .into_inner();
    match out {
        Output::Json => println!("{}", to_json(&a, "Alert")?),
        Output::Table => {
            println!("acknowledged {} ({} on {})", &a.fingerprint[..12.min(a.fingerprint.len())], a.rule, a.host_id)
        }
    }
    Ok(())
}

fn parse_matcher(s: &str) -> anyhow::Result<v1::Matcher> {
    driftwatch_proto::matcher::parse_matcher(s).map_err(anyhow::Error::msg)
}

pub async fn silence(ch: Conn, out: Output, cmd: SilenceCmd) -> anyhow::Result<()> {
    let mut c = AlertsClient::new(ch);
    match cmd {
        SilenceCmd::Add { matchers, duration, comment } => {
            let matchers = matchers.iter().map(|m| parse_matcher(m)).collect::<anyhow::Result<Vec<_>>>()?;
            let s = c
                .create_silence(v1::CreateSilenceRequest {
                    matchers,
                    duration: Some(crate::output::duration_arg(&duration, "duration")?),
                    comment,
                    ..Default::default()
                })
                .await
                .map_err(status_err)?
                .into_inner();
            match out {
                Output::Json => println!("{}", to_json(&s, "Silence")?),
                Output::Table => println!("{}", s.id),
            }
        }
        SilenceCmd::List { all } => {
            let r = c
                .list_silences(v1::ListSilencesRequest { include_expired: all })
                .await
                .map_err(status_err)?
                .into_inner();
            match out {
                Output::Json => println!("{}", to_json(&r, "ListSilencesResponse")?),
                Output::Table if r.silences.is_empty() => println!("no silences"),
                Output::Table => {
                    let rows: Vec<Vec<String>> = r
                        .silences
                        .iter()
                        .map(|s| {
                            vec![
                                s.id.clone(),
                                driftwatch_proto::silence_state_name(s.state).into(),
                                s.matchers.iter().map(matcher_text).collect::<Vec<_>>().join(","),
                                ts(&s.starts_at),
                                s.ends_at.map(|t| crate::output::until(&t)).unwrap_or_default(),
                                s.actor.clone(),
                                s.comment.clone(),
                            ]
                        })
                        .collect();
                    print!("{}", table(&["ID", "STATE", "MATCHERS", "STARTED", "ENDS", "BY", "COMMENT"], &rows));
                }
            }
        }
        SilenceCmd::Expire { id } => {
            let s = c.expire_silence(v1::ExpireSilenceRequest { id }).await.map_err(status_err)?.into_inner();
            match out {
                Output::Json => println!("{}", to_json(&s, "Silence")?),
                Output::Table => println!("expired {}", s.id),
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matchers_parse() {
        let m = parse_matcher("host=~web-.*").unwrap();
        assert_eq!((m.name.as_str(), m.value.as_str(), m.op), ("host", "web-.*", v1::matcher::Op::Regex as i32));
        assert_eq!(matcher_text(&parse_matcher("severity!=low").unwrap()), "severity!=low");
        assert!(parse_matcher("nothing").is_err());
        assert!(parse_matcher("=x").is_err());
    }

    #[test]
    fn table_marks_acked_and_silenced() {
        let a = v1::Alert {
            fingerprint: "0123456789abcdef0123456789abcdef".into(),
            rule: "workers-above-12".into(),
            host_id: "web-1".into(),
            path: "/etc/web2img/.env".into(),
            key: "WORKERS".into(),
            state: v1::AlertState::Firing as i32,
            severity: v1::Severity::High as i32,
            value: Some(v1::Value::int(16)),
            acknowledged: Some(v1::Acknowledgement::default()),
            silenced_by: vec!["x".into()],
            ..Default::default()
        };
        let t = alerts_table(&[a]);
        assert!(t.contains("firing (acked) (silenced)"), "{t}");
        assert!(t.contains("/etc/web2img/.env WORKERS"), "{t}");
        assert!(t.contains("0123456789ab"), "{t}");
    }
}
