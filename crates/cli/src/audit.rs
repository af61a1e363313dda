//! `driftwatch audit`: who changed what, when (the server's audit log), and
//! `driftwatch audit verify`: the log's hash chain recomputed here, from the oldest record.

use crate::connect::Conn;
use crate::exit::Finding;
use clap::{Args, Subcommand};
use driftwatch_proto::audit_chain::{ChainRecord, ChainVerifier};
use driftwatch_proto::v1::{self, audit_client::AuditClient};

use crate::output::{Output, table, to_json};
use crate::status_err;

/// Longest detail shown in the table (the JSON output has it in full).
const DETAIL_WIDTH: usize = 60;
/// The server's page when no --limit is given.
const DEFAULT_LIMIT: u32 = 100;

#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct AuditArgs {
    #[command(subcommand)]
    command: Option<AuditCmd>,
    /// Only actions starting with this, e.g. `rollout.`, `baseline`, `correction.applied`.
    #[arg(long, value_name = "PREFIX")]
    action: Option<String>,
    /// Only events about this host.
    #[arg(long, value_name = "HOST")]
    host: Option<String>,
    /// Only events of this rollout or change.
    #[arg(long, value_name = "ID")]
    change: Option<String>,
    /// Only events with an id above this (where the previous page ended).
    #[arg(long, value_name = "ID")]
    after: Option<u64>,
    /// At most this many events (default 100; the server caps it at 1000).
    #[arg(long, value_name = "N")]
    limit: Option<u32>,
    /// Newest events first (default: oldest first).
    #[arg(long)]
    newest: bool,
}

#[derive(Debug, Subcommand)]
pub enum AuditCmd {
    /// Check the log's hash chain: page through every record from the oldest, recompute
    /// each hash here (a server's word is not taken for it), and fail naming the first
    /// record removed or altered. Prints the newest record's id and hash: keep them
    /// elsewhere to notice a rewritten or cut-off log later.
    Verify,
}

pub async fn run(ch: Conn, out: Output, args: AuditArgs) -> anyhow::Result<()> {
    if let Some(AuditCmd::Verify) = args.command {
        return verify(ch, out).await;
    }
    let limit = args.limit.unwrap_or(0);
    let req = v1::ListAuditEventsRequest {
        after_id: args.after.unwrap_or(0),
        action_prefix: args.action.unwrap_or_default(),
        host_id: args.host.unwrap_or_default(),
        change_id: args.change.unwrap_or_default(),
        newest_first: args.newest,
        limit,
    };
    let r = AuditClient::new(ch).list_audit_events(req).await.map_err(status_err)?.into_inner();
    match out {
        Output::Json => println!("{}", to_json(&r, "ListAuditEventsResponse")?),
        Output::Table => {
            print!("{}", audit_table(&r.events));
            // A full page in id order: say how to read on (on stderr, so the table stays clean).
            let page = if limit == 0 { DEFAULT_LIMIT } else { limit.min(1000) };
            if !args.newest
                && r.events.len() == page as usize
                && let Some(last) = r.events.last()
            {
                eprintln!("more may follow: driftwatch audit --after {}", last.id);
            }
        }
    }
    Ok(())
}

/// The largest page the server gives.
const VERIFY_PAGE: u32 = 1000;

async fn verify(ch: Conn, out: Output) -> anyhow::Result<()> {
    let mut client = AuditClient::new(ch);
    let mut chain = ChainVerifier::new();
    let mut after_id = 0;
    loop {
        let req = v1::ListAuditEventsRequest { after_id, limit: VERIFY_PAGE, ..Default::default() };
        let page = client.list_audit_events(req).await.map_err(status_err)?.into_inner().events;
        for e in &page {
            chain
                .push(&ChainRecord::of_event(e))
                .map_err(|b| anyhow::Error::new(Finding(format!("audit log verification failed: {b}"))))?;
        }
        match page.last() {
            Some(last) if page.len() == VERIFY_PAGE as usize => after_id = last.id,
            _ => break,
        }
    }
    let s = chain.finish().map_err(|b| anyhow::Error::new(Finding(format!("audit log verification failed: {b}"))))?;
    let (head_id, head_hash) = s.head.clone().unwrap_or_default();
    match out {
        Output::Json => println!(
            "{}",
            serde_json::json!({
                "ok": true,
                "records": s.records,
                "firstId": s.first_id.to_string(),
                "anchored": s.anchored,
                "headId": head_id.to_string(),
                "headHash": head_hash,
            })
        ),
        Output::Table if s.records == 0 => println!("audit log verified: no records"),
        Output::Table => {
            let from = if s.anchored { "a retention anchor" } else { "the start of the log" };
            println!(
                "audit log verified: {} records, ids {} to {head_id}, chained from {from}\nhead: {head_id} {head_hash}",
                s.records, s.first_id
            );
        }
    }
    Ok(())
}

/// `2026-11-24T09:30:00Z` (UTC, to the second): an audit log wants absolute times.
fn time(t: &Option<prost_types::Timestamp>) -> String {
    match t {
        None => "-".into(),
        Some(t) => prost_types::Timestamp { seconds: t.seconds, nanos: 0 }.to_string(),
    }
}

/// One line, at most `width` characters (`…` marks a cut).
fn truncate(s: &str, width: usize) -> String {
    let line = s.replace(['\n', '\r'], " ");
    if line.chars().count() <= width {
        return line;
    }
    let mut out: String = line.chars().take(width.saturating_sub(1)).collect();
    out.push('…');
    out
}

pub fn audit_table(events: &[v1::AuditEvent]) -> String {
    if events.is_empty() {
        return "no audit events\n".into();
    }
    let rows: Vec<Vec<String>> = events
        .iter()
        .map(|e| {
            vec![
                e.id.to_string(),
                time(&e.at),
                e.actor.clone(),
                e.action.clone(),
                if e.target.is_empty() { "-".into() } else { e.target.clone() },
                truncate(&e.detail, DETAIL_WIDTH),
            ]
        })
        .collect();
    table(&["ID", "TIME", "ACTOR", "ACTION", "TARGET", "DETAIL"], &rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_shows_absolute_times_and_cuts_long_details() {
        let e = v1::AuditEvent {
            id: 7,
            at: Some(prost_types::Timestamp { seconds: 1_700_000_000, nanos: 123 }),
            actor: "alice".into(),
            action: "baseline.pinned".into(),
            target: "tuned".into(),
            detail: format!("version 1; host web-1\n{}", "x".repeat(100)),
            ..Default::default()
        };
        let t = audit_table(&[e, v1::AuditEvent { id: 8, ..Default::default() }]);
        let lines: Vec<&str> = t.lines().collect();
        assert!(lines[0].starts_with("ID") && lines[0].contains("DETAIL"), "{t}");
        assert!(lines[1].starts_with("7 ") && lines[1].contains("2023-11-14T22:13:20Z"), "{t}");
        assert!(lines[1].contains("alice") && lines[1].contains("baseline.pinned") && lines[1].contains("tuned"));
        assert!(lines[1].contains("version 1; host web-1 xxx") && lines[1].ends_with('…'), "{t}");
        assert!(lines[2].starts_with("8 ") && lines[2].contains(" - "), "{t}");
        assert_eq!(audit_table(&[]), "no audit events\n");
    }

    #[test]
    fn truncate_counts_characters() {
        assert_eq!(truncate("short", 10), "short");
        assert_eq!(truncate("ääääääääääää", 5), "ääää…");
        assert_eq!(truncate("a\nb", 10), "a b");
    }
}
