//! `driftwatch enroll-token create|list|revoke`: the tokens a new agent presents, once,
//! to get its certificate (`driftwatch-agent --enroll-token-file FILE`).
//!
//! `create` prints the secret alone on stdout, so `driftwatch enroll-token create > token.txt`
//! writes exactly the token file the agent reads; what the token allows goes to stderr.
//! With `--output json` the whole response (secret included) is printed to stdout.

use crate::connect::Conn;
use clap::{Args, Subcommand};
use driftwatch_proto::v1::{self, enrollment_client::EnrollmentClient};

use crate::hosts::{labels, parse_labels};
use crate::output::{Output, duration_arg, table, to_json, ts, until};
use crate::status_err;

#[derive(Debug, Subcommand)]
pub enum EnrollTokenCmd {
    /// Create a token. Its secret is shown only now: alone on stdout (`> token.txt`),
    /// with what it allows on stderr.
    Create(CreateArgs),
    /// List tokens that can still enroll hosts (--all: also expired, used-up and revoked ones).
    List {
        #[arg(long)]
        all: bool,
    },
    /// Revoke a token: it enrolls nobody from now on (hosts it enrolled keep their certificates).
    Revoke {
        /// The token's id (the part before the dot; `driftwatch enroll-token list` shows it).
        id: String,
        /// Why (recorded in the audit log).
        #[arg(long, default_value = "")]
        reason: String,
    },
}

#[derive(Debug, Args)]
pub struct CreateArgs {
    /// A label every host enrolled with this token gets, K=V; repeatable.
    #[arg(long = "label", value_name = "K=V")]
    labels: Vec<String>,
    /// A label key the agent may set itself (its own --label), e.g. `node` for a
    /// DaemonSet's shared token; repeatable. Other agent labels are dropped.
    #[arg(long = "agent-label-key", value_name = "K")]
    agent_label_keys: Vec<String>,
    /// Host ids the token may enroll: a glob (`web-*`) or an exact id [default: any].
    #[arg(long, value_name = "GLOB")]
    host_id_pattern: Option<String>,
    /// How long the token can be used: 30m, 1h, 7d (at most 30d) [default: 1h, the server's].
    #[arg(long, value_name = "DURATION")]
    ttl: Option<String>,
    /// How many hosts may enroll with it [default: 1].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    uses: Option<u32>,
    /// Why (recorded with the token and in the audit log).
    #[arg(long, default_value = "")]
    reason: String,
}

/// The request `create` sends (flags checked here, before anything is sent).
pub fn create_request(a: &CreateArgs) -> anyhow::Result<v1::CreateEnrollTokenRequest> {
    let labels = parse_labels(&a.labels).map_err(|e| anyhow::anyhow!("--label {e}"))?;
    if let Some(k) = a.agent_label_keys.iter().find(|k| k.trim().is_empty() || k.contains('=')) {
        anyhow::bail!("--agent-label-key {k:?}: a label key, not K=V");
    }
    Ok(v1::CreateEnrollTokenRequest {
        labels,
        agent_label_keys: a.agent_label_keys.clone(),
        host_id_pattern: a.host_id_pattern.clone().unwrap_or_default(),
        ttl: a.ttl.as_deref().map(|t| duration_arg(t, "ttl")).transpose()?,
        max_uses: a.uses.unwrap_or(0),
        reason: a.reason.clone(),
    })
}

pub async fn run(ch: Conn, out: Output, cmd: EnrollTokenCmd) -> anyhow::Result<()> {
    let mut c = EnrollmentClient::new(ch);
    match cmd {
        EnrollTokenCmd::Create(a) => {
            let r = c.create_enroll_token(create_request(&a)?).await.map_err(status_err)?.into_inner();
            match out {
                Output::Json => println!("{}", to_json(&r, "CreateEnrollTokenResponse")?),
                Output::Table => {
                    println!("{}", r.secret);
                    eprint!("{}", created_text(&r.token.unwrap_or_default()));
                }
            }
        }
        EnrollTokenCmd::List { all } => {
            let r = c.list_enroll_tokens(v1::ListEnrollTokensRequest { all }).await.map_err(status_err)?.into_inner();
            match out {
                Output::Json => println!("{}", to_json(&r, "ListEnrollTokensResponse")?),
                Output::Table => print!("{}", tokens_table(&r.tokens, driftwatch_proto::now_millis())),
            }
        }
        EnrollTokenCmd::Revoke { id, reason } => {
            let t = c
                .revoke_enroll_token(v1::RevokeEnrollTokenRequest { id, reason })
                .await
                .map_err(status_err)?
                .into_inner();
            match out {
                Output::Json => println!("{}", to_json(&t, "EnrollToken")?),
                Output::Table => println!("revoked enrollment token {}", t.id),
            }
        }
    }
    Ok(())
}

/// What a new token allows, for stderr (the secret itself is on stdout).
fn created_text(t: &v1::EnrollToken) -> String {
    let mut out = format!(
        "enrollment token {}: {} use{}, expires {}\n",
        t.id,
        t.max_uses.max(1),
        if t.max_uses > 1 { "s" } else { "" },
        t.expires_at
            .as_ref()
            .map(|e| format!("{} ({})", until(e), prost_types::Timestamp { seconds: e.seconds, nanos: 0 }))
            .unwrap_or_else(|| "-".into())
    );
    if !t.host_id_pattern.is_empty() {
        out.push_str(&format!("  hosts:            {}\n", t.host_id_pattern));
    }
    if !t.labels.is_empty() {
        out.push_str(&format!("  labels:           {}\n", labels(&t.labels)));
    }
    if !t.agent_label_keys.is_empty() {
        out.push_str(&format!("  agent label keys: {}\n", t.agent_label_keys.join(",")));
    }
    out.push_str(
        "The secret (stdout) is shown only now. On the host: save it to a file and run\n  \
         driftwatch-agent --server https://SERVER:PORT --ca-file ca.pem --enroll-token-file FILE\n",
    );
    out
}

/// `active`, `revoked`, `expired` or `used up`, at `now_ms`.
pub fn token_state(t: &v1::EnrollToken, now_ms: i64) -> &'static str {
    if t.revoked_at.is_some() {
        "revoked"
    } else if t.expires_at.as_ref().is_some_and(|e| driftwatch_proto::timestamp_millis(e) <= now_ms) {
        "expired"
    } else if t.max_uses > 0 && t.uses >= t.max_uses {
        "used up"
    } else {
        "active"
    }
}

pub fn tokens_table(tokens: &[v1::EnrollToken], now_ms: i64) -> String {
    if tokens.is_empty() {
        return "no enrollment tokens\n".into();
    }
    let dash = |s: String| if s.is_empty() { "-".to_string() } else { s };
    let rows: Vec<Vec<String>> = tokens
        .iter()
        .map(|t| {
            vec![
                t.id.clone(),
                token_state(t, now_ms).into(),
                format!("{}/{}", t.uses, t.max_uses.max(1)),
                t.expires_at.as_ref().map(until).unwrap_or_else(|| "-".into()),
                dash(t.host_id_pattern.clone()),
                dash(labels(&t.labels)),
                dash(t.agent_label_keys.join(",")),
                dash(t.host_ids.join(",")),
                ts(&t.created_at),
                dash(t.actor.clone()),
                dash(t.reason.clone()),
            ]
        })
        .collect();
    table(
        &["ID", "STATE", "USES", "EXPIRES", "HOSTS", "LABELS", "AGENT KEYS", "ENROLLED", "CREATED", "BY", "REASON"],
        &rows,
    )
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Debug, Parser)]
    struct T {
        #[command(subcommand)]
        cmd: EnrollTokenCmd,
    }

    fn create(args: &[&str]) -> anyhow::Result<v1::CreateEnrollTokenRequest> {
        let t = T::try_parse_from(["enroll-token", "create"].iter().chain(args.iter()))?;
        let EnrollTokenCmd::Create(a) = t.cmd else { panic!() };
        create_request(&a)
    }

    #[test]
    fn create_builds_the_request_from_the_flags() {
        let r = create(&[
            "--label",
            "env=production",
            "--label",
            "service=web2img",
            "--agent-label-key",
            "node",
            "--host-id-pattern",
            "web-*",
            "--ttl",
            "1h30m",
            "--uses",
            "5",
            "--reason",
            "new racks",
        ])
        .unwrap();
        assert_eq!(labels(&r.labels), "env=production,service=web2img");
        assert_eq!(r.agent_label_keys, ["node"]);
        assert_eq!(r.host_id_pattern, "web-*");
        assert_eq!(r.ttl, Some(prost_types::Duration { seconds: 5400, nanos: 0 }));
        assert_eq!((r.max_uses, r.reason.as_str()), (5, "new racks"));
        // Defaults are the server's: no ttl, 0 uses (= 1).
        let r = create(&[]).unwrap();
        assert_eq!((r.ttl, r.max_uses, r.labels.len()), (None, 0, 0));
    }

    #[test]
    fn bad_flags_are_refused_naming_the_flag() {
        let e = create(&["--ttl", "10"]).unwrap_err().to_string();
        assert!(e.contains("--ttl") && e.contains("needs a unit"), "{e}");
        let e = create(&["--label", "env"]).unwrap_err().to_string();
        assert!(e.contains("--label") && e.contains("expected K=V"), "{e}");
        let e = create(&["--agent-label-key", "node=a"]).unwrap_err().to_string();
        assert!(e.contains("--agent-label-key"), "{e}");
        assert!(create(&["--uses", "0"]).is_err());
        assert!(T::try_parse_from(["enroll-token", "revoke"]).is_err(), "revoke needs an id");
    }

    #[test]
    fn token_states_and_table() {
        let now = 1_700_000_000_000;
        let at = |ms: i64| Some(driftwatch_proto::timestamp_from_millis(ms));
        let t = v1::EnrollToken {
            id: "tok1".into(),
            max_uses: 2,
            uses: 1,
            expires_at: at(now + 3_600_000),
            ..Default::default()
        };
        assert_eq!(token_state(&t, now), "active");
        assert_eq!(token_state(&v1::EnrollToken { uses: 2, ..t.clone() }, now), "used up");
        assert_eq!(token_state(&v1::EnrollToken { expires_at: at(now), ..t.clone() }, now), "expired");
        assert_eq!(token_state(&v1::EnrollToken { revoked_at: at(now), ..t.clone() }, now), "revoked");
        let table = tokens_table(&[v1::EnrollToken { host_ids: vec!["web-1".into()], ..t }], now);
        let line = table.lines().nth(1).unwrap();
        assert!(
            line.starts_with("tok1") && line.contains("active") && line.contains("1/2") && line.contains("web-1"),
            "{table}"
        );
        assert_eq!(tokens_table(&[], now), "no enrollment tokens\n");
    }

    #[test]
    fn the_details_of_a_new_token_say_how_to_use_it() {
        let t = v1::EnrollToken {
            id: "tok1".into(),
            max_uses: 3,
            host_id_pattern: "web-*".into(),
            labels: [("env".to_string(), "production".to_string())].into(),
            ..Default::default()
        };
        let text = created_text(&t);
        assert!(text.starts_with("enrollment token tok1: 3 uses, expires -"), "{text}");
        assert!(
            text.contains("hosts:            web-*") && text.contains("labels:           env=production"),
            "{text}"
        );
        assert!(text.contains("--enroll-token-file FILE"), "{text}");
    }
}
