//! `driftwatch hosts [HOST]` (list, or one host in detail), `driftwatch hosts revoke HOST`
//! and `driftwatch hosts label HOST K=V... [--remove K]...`.

use std::collections::BTreeMap;

use crate::connect::Conn;
use clap::{Args, Subcommand};
use driftwatch_proto::v1::{self, fleet_client::FleetClient};

use crate::output::{Output, bytes, table, to_json, ts, until};
use crate::{error_text, status_err};

#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct HostsArgs {
    #[command(subcommand)]
    pub cmd: Option<HostsCmd>,
    /// Show this host: labels, agent, certificate, resources and every watched file.
    pub host_id: Option<String>,
    /// Label selector, e.g. env=production,service=web2img (also: k!=v, k, !k).
    #[arg(long, short = 'l')]
    pub selector: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum HostsCmd {
    /// Revoke a host's certificate: the server refuses its agent from now on (it takes a
    /// new enrollment token to come back).
    Revoke {
        host_id: String,
        /// Why (shown with the host and in the audit log).
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// Set labels on a host (K=V, replacing a value already there) and remove others
    /// (--remove K). Labels set here win over what the host's agent says.
    Label {
        host_id: String,
        /// Labels to set, K=V.
        #[arg(value_name = "K=V")]
        set: Vec<String>,
        /// A label key to remove; repeatable.
        #[arg(long = "remove", value_name = "K")]
        remove: Vec<String>,
        /// Why (recorded in the audit log).
        #[arg(long, default_value = "")]
        reason: String,
    },
}

pub async fn run(ch: Conn, out: Output, args: HostsArgs) -> anyhow::Result<()> {
    let mut c = FleetClient::new(ch);
    match (args.cmd, args.host_id) {
        (None, None) => {
            let req = v1::ListHostsRequest { selector: args.selector.unwrap_or_default() };
            let r = c.list_hosts(req).await.map_err(status_err)?.into_inner();
            match out {
                Output::Json => println!("{}", to_json(&r, "ListHostsResponse")?),
                Output::Table => print!("{}", hosts_table(&r.hosts)),
            }
        }
        (None, Some(id)) => {
            let h = c.get_host(v1::GetHostRequest { host_id: id }).await.map_err(status_err)?.into_inner();
            match out {
                Output::Json => println!("{}", to_json(&h, "Host")?),
                Output::Table => print!("{}", host_detail(&h)),
            }
        }
        (Some(HostsCmd::Revoke { host_id, reason }), _) => {
            let h = c.revoke_host(v1::RevokeHostRequest { host_id, reason }).await.map_err(status_err)?.into_inner();
            match out {
                Output::Json => println!("{}", to_json(&h, "Host")?),
                Output::Table => {
                    let s = h.summary.unwrap_or_default();
                    println!("revoked {}: its agent is refused until it enrolls again with a new token", s.host_id);
                }
            }
        }
        (Some(HostsCmd::Label { host_id, set, remove, reason }), _) => {
            let req = label_request(host_id, &set, remove, reason)?;
            let h = c.set_host_labels(req).await.map_err(status_err)?.into_inner();
            match out {
                Output::Json => println!("{}", to_json(&h, "Host")?),
                Output::Table => {
                    let s = h.summary.unwrap_or_default();
                    println!(
                        "{}: {}",
                        s.host_id,
                        if s.labels.is_empty() { "no labels".into() } else { labels(&s.labels) }
                    );
                }
            }
        }
    }
    Ok(())
}

/// `K=V` (a label to set): both sides non-empty.
pub fn parse_label(s: &str) -> anyhow::Result<(String, String)> {
    match s.split_once('=') {
        Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_string(), v.trim().to_string())),
        _ => anyhow::bail!("{s:?}: expected K=V"),
    }
}

/// Labels as `K=V` arguments, into a map (a repeated key: the last one wins).
pub fn parse_labels(args: &[String]) -> anyhow::Result<BTreeMap<String, String>> {
    args.iter().map(|s| parse_label(s)).collect()
}

fn label_request(
    host_id: String,
    set: &[String],
    remove: Vec<String>,
    reason: String,
) -> anyhow::Result<v1::SetHostLabelsRequest> {
    anyhow::ensure!(!set.is_empty() || !remove.is_empty(), "nothing to change: give K=V to set and/or --remove K");
    let set = parse_labels(set)?;
    if let Some(k) = remove.iter().find(|k| set.contains_key(*k)) {
        anyhow::bail!("label {k:?} is both set and removed");
    }
    Ok(v1::SetHostLabelsRequest { host_id, set, remove, reason })
}

pub fn labels(l: &BTreeMap<String, String>) -> String {
    l.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(",")
}

/// `2026-11-24T09:30:00Z`.
fn time(t: &prost_types::Timestamp) -> String {
    prost_types::Timestamp { seconds: t.seconds, nanos: 0 }.to_string()
}

/// The certificate state in one cell: `-` (no certificate: plaintext), `expires in 20d`,
/// `EXPIRED 3d ago`, `REVOKED: reason`.
pub fn identity_cell(id: &Option<v1::HostIdentity>) -> String {
    match id {
        Some(i) if i.revoked && i.revoked_reason.is_empty() => "REVOKED".into(),
        Some(i) if i.revoked => format!("REVOKED: {}", i.revoked_reason),
        Some(i) if i.expired => match &i.certificate_not_after {
            Some(t) => format!("EXPIRED {}", until(t)),
            None => "EXPIRED".into(),
        },
        Some(i) if i.enrolled => match &i.certificate_not_after {
            Some(t) => format!("expires {}", until(t)),
            None => "enrolled".into(),
        },
        _ => "-".into(),
    }
}

/// The `identity:` lines of a host's detail, when the server reports an identity.
pub fn identity_detail(id: &Option<v1::HostIdentity>) -> String {
    let Some(i) = id else { return String::new() };
    if !i.enrolled && !i.revoked {
        return "identity: not enrolled\n".into();
    }
    let mut out = String::new();
    let expiry = i.certificate_not_after.as_ref().map(|t| format!("{} ({})", until(t), time(t)));
    if i.revoked {
        out.push_str(&format!(
            "identity: REVOKED{}{}{}\n",
            i.revoked_at.as_ref().map(|t| format!(" {} ({})", ts(&Some(*t)), time(t))).unwrap_or_default(),
            if i.revoked_by.is_empty() { String::new() } else { format!(" by {}", i.revoked_by) },
            if i.revoked_reason.is_empty() { String::new() } else { format!(": {}", i.revoked_reason) },
        ));
    } else if i.expired {
        out.push_str(&format!(
            "identity: EXPIRED {}: the agent needs a new enrollment token\n",
            expiry.clone().unwrap_or_default()
        ));
    } else {
        out.push_str(&format!(
            "identity: enrolled, certificate expires {}\n",
            expiry.clone().unwrap_or_else(|| "-".into())
        ));
    }
    let mut cert = Vec::new();
    if !i.certificate_serial.is_empty() {
        cert.push(format!("serial {}", i.certificate_serial));
    }
    if !i.token_id.is_empty() {
        cert.push(format!("enrolled with token {}", i.token_id));
    }
    if !cert.is_empty() {
        out.push_str(&format!("          {}\n", cert.join(", ")));
    }
    out
}

pub fn hosts_table(hosts: &[v1::HostSummary]) -> String {
    let rows: Vec<Vec<String>> = hosts
        .iter()
        .map(|h| {
            let r = h.resources.clone().unwrap_or_default();
            vec![
                h.host_id.clone(),
                driftwatch_proto::connection_state_name(h.state).into(),
                ts(&h.last_seen),
                labels(&h.labels),
                format!("{}", h.file_count),
                format!("{}", h.files_with_problems),
                if h.resources.is_some() { format!("{:.1}", r.cpu_cores_used) } else { "-".into() },
                if h.resources.is_some() { bytes(r.memory_used_bytes) } else { "-".into() },
                identity_cell(&h.identity),
            ]
        })
        .collect();
    table(&["HOST", "STATE", "LAST SEEN", "LABELS", "FILES", "PROBLEMS", "CPU CORES", "MEMORY", "CERTIFICATE"], &rows)
}

pub fn host_detail(h: &v1::Host) -> String {
    let s = h.summary.clone().unwrap_or_default();
    let mut out = format!(
        "host:     {}\nstate:    {} (last seen {})\nlabels:   {}\nagent:    {}\nlast seq: {}  dropped by agent: {}\n",
        s.host_id,
        driftwatch_proto::connection_state_name(s.state),
        ts(&s.last_seen),
        labels(&s.labels),
        s.agent_version,
        s.last_seq,
        s.dropped_snapshots
    );
    if !s.spool_degraded.is_empty() || s.unspooled_snapshots > 0 {
        out.push_str(&format!(
            "spool:    {}  sent from memory: {}\n",
            if s.spool_degraded.is_empty() { "writable" } else { &s.spool_degraded },
            s.unspooled_snapshots
        ));
    }
    out.push_str(&identity_detail(&s.identity));
    if let Some(r) = &s.resources {
        out.push_str(&format!(
            "cpu:      {:.1}% ({:.2} of {} cores)  load {:.2} {:.2} {:.2}\nmemory:   {} of {}  swap {} of {}\nagent:    rss {}  cpu {:.1}%\n",
            r.cpu_percent,
            r.cpu_cores_used,
            r.cpu_count,
            r.load_1,
            r.load_5,
            r.load_15,
            bytes(r.memory_used_bytes),
            bytes(r.memory_total_bytes),
            bytes(r.swap_used_bytes),
            bytes(r.swap_total_bytes),
            bytes(r.agent_rss_bytes),
            r.agent_cpu_percent
        ));
        for d in &r.disks {
            out.push_str(&format!(
                "disk:     {} {} used of {}\n",
                d.mount_point,
                bytes(d.used_bytes),
                bytes(d.total_bytes)
            ));
        }
        for g in &r.process_groups {
            out.push_str(&format!(
                "group:    {} ({}) {} processes, rss {}, cpu {:.1}%\n",
                g.name,
                g.pattern,
                g.count,
                bytes(g.rss_bytes),
                g.cpu_percent
            ));
        }
    }
    out.push('\n');
    let rows: Vec<Vec<String>> = h
        .files
        .iter()
        .map(|f| {
            vec![
                f.path.clone(),
                driftwatch_proto::format_name(f.format).into(),
                driftwatch_proto::file_status_name(f.status).into(),
                f.key_count.to_string(),
                bytes(f.size),
                ts(&f.updated_at),
                error_text(&f.error),
            ]
        })
        .collect();
    out.push_str(&table(&["PATH", "FORMAT", "STATUS", "KEYS", "SIZE", "CHANGED", "ERROR"], &rows));
    out
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Debug, Parser)]
    struct T {
        #[command(flatten)]
        hosts: HostsArgs,
    }

    fn parse(args: &[&str]) -> Result<HostsArgs, clap::Error> {
        T::try_parse_from(std::iter::once("hosts").chain(args.iter().copied())).map(|t| t.hosts)
    }

    #[test]
    fn hosts_still_lists_and_shows_and_gains_revoke_and_label() {
        let a = parse(&[]).unwrap();
        assert!(a.cmd.is_none() && a.host_id.is_none());
        let a = parse(&["-l", "env=production"]).unwrap();
        assert_eq!(a.selector.as_deref(), Some("env=production"));
        let a = parse(&["web-1"]).unwrap();
        assert_eq!(a.host_id.as_deref(), Some("web-1"));
        let a = parse(&["revoke", "web-1", "--reason", "stolen laptop"]).unwrap();
        assert!(
            matches!(a.cmd, Some(HostsCmd::Revoke { host_id, reason }) if host_id == "web-1" && reason == "stolen laptop")
        );
        let a = parse(&["label", "web-1", "env=staging", "tier=2", "--remove", "canary"]).unwrap();
        let Some(HostsCmd::Label { host_id, set, remove, .. }) = a.cmd else { panic!() };
        assert_eq!((host_id.as_str(), set.len(), remove.as_slice()), ("web-1", 2, &["canary".to_string()][..]));
        assert!(parse(&["revoke"]).is_err(), "revoke needs a host");
    }

    #[test]
    fn label_requests_are_checked_before_sending() {
        let r =
            label_request("web-1".into(), &["env=staging".into(), "empty=".into()], vec!["canary".into()], "r".into())
                .unwrap();
        assert_eq!(r.set.get("env").map(String::as_str), Some("staging"));
        assert_eq!(r.set.get("empty").map(String::as_str), Some(""));
        assert_eq!(r.remove, ["canary"]);
        assert!(
            label_request("h".into(), &[], vec![], String::new())
                .unwrap_err()
                .to_string()
                .contains("nothing to change")
        );
        assert!(
            label_request("h".into(), &["novalue".into()], vec![], String::new())
                .unwrap_err()
                .to_string()
                .contains("expected K=V")
        );
        assert!(label_request("h".into(), &["=v".into()], vec![], String::new()).is_err());
        assert!(label_request("h".into(), &["a=1".into()], vec!["a".into()], String::new()).is_err());
    }

    fn at(secs_from_now: i64) -> Option<prost_types::Timestamp> {
        Some(prost_types::Timestamp { seconds: driftwatch_proto::now_millis() / 1000 + secs_from_now, nanos: 0 })
    }

    #[test]
    fn identity_shows_enrolled_expiry_revoked_and_expired() {
        assert_eq!(identity_cell(&None), "-");
        let enrolled = v1::HostIdentity { enrolled: true, certificate_not_after: at(3 * 86400), ..Default::default() };
        assert!(
            identity_cell(&Some(enrolled.clone())).starts_with("expires in "),
            "{}",
            identity_cell(&Some(enrolled.clone()))
        );
        let d = identity_detail(&Some(v1::HostIdentity {
            certificate_serial: "2d0b".into(),
            token_id: "tok1".into(),
            ..enrolled.clone()
        }));
        assert!(d.starts_with("identity: enrolled, certificate expires in "), "{d}");
        assert!(d.contains("serial 2d0b, enrolled with token tok1"), "{d}");
        let expired =
            v1::HostIdentity { enrolled: true, expired: true, certificate_not_after: at(-7200), ..Default::default() };
        assert_eq!(identity_cell(&Some(expired.clone())), "EXPIRED 2h ago");
        assert!(identity_detail(&Some(expired)).contains("EXPIRED 2h ago"));
        let revoked = v1::HostIdentity {
            enrolled: true,
            revoked: true,
            revoked_reason: "decommissioned".into(),
            revoked_by: "alice".into(),
            revoked_at: at(-60),
            ..Default::default()
        };
        assert_eq!(identity_cell(&Some(revoked.clone())), "REVOKED: decommissioned");
        let d = identity_detail(&Some(revoked));
        assert!(d.starts_with("identity: REVOKED 1m ago (") && d.contains(" by alice: decommissioned"), "{d}");
        let table =
            hosts_table(&[v1::HostSummary { host_id: "web-1".into(), identity: Some(enrolled), ..Default::default() }]);
        assert!(table.lines().next().unwrap().ends_with("CERTIFICATE") && table.contains("expires in"), "{table}");
    }
}
