//! `driftwatch baseline pin|show|list|set|diff|delete`.

use crate::connect::Conn;
use crate::exit::Outcome;
use clap::Subcommand;
use driftwatch_proto::v1::{self, baselines_client::BaselinesClient};

use crate::output::{Output, table, to_json, ts};

#[derive(Debug, Subcommand)]
pub enum BaselineCmd {
    /// Capture a host's current state (every file, or one) as a new version of NAME.
    Pin {
        /// The host whose state is captured.
        host_id: String,
        /// Baseline name (A-Z a-z 0-9 . _ -).
        name: String,
        /// Only this file (absolute path on the host).
        #[arg(long)]
        path: Option<String>,
        /// Apply to every host this label selector matches (e.g. service=web2img,env=production).
        #[arg(long)]
        selector: Option<String>,
        /// Also capture the host's latest resource sample as expectations (resource rules see
        /// them as `baseline`); optionally only these metrics (comma separated).
        #[arg(long, value_name = "METRICS", num_args = 0..=1, default_missing_value = "")]
        resources: Option<String>,
        /// Why (recorded with the version).
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// Show a baseline: the newest version, or --version N.
    Show {
        name: String,
        #[arg(long, default_value_t = 0)]
        version: u64,
    },
    /// List baselines (their newest versions).
    List {
        /// Include deleted baselines.
        #[arg(long)]
        all: bool,
    },
    /// Change expected keys of one file in a new version.
    Set {
        name: String,
        /// The file (absolute path).
        path: String,
        /// KEY=VALUE to expect (VALUE typed like a .env value: 12 is an int, true a bool, "12" a string).
        #[arg(value_name = "KEY=VALUE")]
        set: Vec<String>,
        /// A key to drop from the baseline; repeatable.
        #[arg(long = "remove", value_name = "KEY")]
        remove: Vec<String>,
        /// Take these keys' current values from --from-host (an intended change, not drift); repeatable.
        #[arg(long = "promote", value_name = "KEY", requires = "from_host")]
        promote: Vec<String>,
        /// The host to promote values from.
        #[arg(long)]
        from_host: Option<String>,
        /// METRIC=VALUE resource expectation to set (PATH may then be `-`); repeatable.
        #[arg(long = "resource", value_name = "METRIC=VALUE")]
        resources: Vec<String>,
        /// A resource expectation to drop; repeatable.
        #[arg(long = "remove-resource", value_name = "METRIC")]
        remove_resources: Vec<String>,
        /// Why (recorded with the version).
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// Compare a host's file with its effective baseline (same as `diff HOST PATH --baseline`).
    Diff { host_id: String, path: String },
    /// Record the deletion of a baseline as a new version (history stays readable).
    Delete {
        name: String,
        /// Why (recorded with the version).
        #[arg(long, default_value = "")]
        reason: String,
    },
}

/// `KEY=VALUE` with the value typed as a .env file would type it.
fn key_value(s: &str) -> anyhow::Result<v1::KeyValue> {
    let (k, v) = s.split_once('=').ok_or_else(|| anyhow::anyhow!("'{s}': expected KEY=VALUE"))?;
    let value = if let Some(q) = v.strip_prefix('"').and_then(|v| v.strip_suffix('"')) {
        v1::Value::string(q)
    } else if let Ok(i) = v.parse::<i64>() {
        v1::Value::int(i)
    } else if let Ok(f) = v.parse::<f64>().map_err(|_| ()).and_then(|f| if f.is_finite() { Ok(f) } else { Err(()) }) {
        v1::Value::float(f)
    } else if v.eq_ignore_ascii_case("true") || v.eq_ignore_ascii_case("false") {
        v1::Value::bool(v.eq_ignore_ascii_case("true"))
    } else if v == "null" {
        v1::Value::null()
    } else {
        v1::Value::string(v)
    };
    Ok(v1::KeyValue { key: k.to_string(), value: Some(value) })
}

pub async fn run(channel: Conn, out: Output, cmd: BaselineCmd) -> anyhow::Result<Outcome> {
    let mut c = BaselinesClient::new(channel.clone());
    let b = match cmd {
        BaselineCmd::Pin { host_id, name, path, selector, resources, reason } => {
            let r = v1::PinBaselineRequest {
                host_id,
                name,
                path: path.unwrap_or_default(),
                selector: selector.unwrap_or_default(),
                reason,
                include_resources: resources.is_some(),
                resource_metrics: resources
                    .iter()
                    .flat_map(|m| m.split(','))
                    .map(str::trim)
                    .filter(|m| !m.is_empty())
                    .map(String::from)
                    .collect(),
            };
            c.pin_baseline(r).await.map_err(crate::status_err)?.into_inner()
        }
        BaselineCmd::Show { name, version } => {
            c.get_baseline(v1::GetBaselineRequest { name, version }).await.map_err(crate::status_err)?.into_inner()
        }
        BaselineCmd::List { all } => {
            let r = c
                .list_baselines(v1::ListBaselinesRequest { include_deleted: all })
                .await
                .map_err(crate::status_err)?
                .into_inner();
            match out {
                Output::Json => println!("{}", to_json(&r, "ListBaselinesResponse")?),
                Output::Table => print!("{}", list_table(&r.baselines)),
            }
            return Ok(Outcome::Clean);
        }
        BaselineCmd::Set { name, path, set, remove, promote, from_host, resources, remove_resources, reason } => {
            let set = set.iter().map(|s| key_value(s)).collect::<anyhow::Result<Vec<_>>>()?;
            let set_resources = resources
                .iter()
                .map(|s| {
                    let (m, v) = s.split_once('=').ok_or_else(|| anyhow::anyhow!("{s:?} is not METRIC=VALUE"))?;
                    let value: f64 = v.trim().parse().map_err(|_| anyhow::anyhow!("{s:?}: {v:?} is not a number"))?;
                    Ok(v1::ResourceExpectation { metric: m.trim().to_string(), value })
                })
                .collect::<anyhow::Result<Vec<_>>>()?;
            let r = v1::SetBaselineKeysRequest {
                name,
                path: if path == "-" { String::new() } else { path },
                set_resources,
                remove_resources,
                set,
                remove,
                promote_from_host_id: from_host.unwrap_or_default(),
                promote_keys: promote,
                reason,
            };
            c.set_baseline_keys(r).await.map_err(crate::status_err)?.into_inner()
        }
        BaselineCmd::Diff { host_id, path } => {
            let d = v1::DiffRequest { host_id, path, against_baseline: true, ..Default::default() };
            let d = v1::fleet_client::FleetClient::new(channel).diff(d).await.map_err(crate::status_err)?.into_inner();
            match out {
                Output::Json => println!("{}", to_json(&d, "DiffResponse")?),
                Output::Table => print!("{}", crate::diff_table(&d)),
            }
            return Ok(crate::diff_outcome(&d));
        }
        BaselineCmd::Delete { name, reason } => {
            c.delete_baseline(v1::DeleteBaselineRequest { name, reason }).await.map_err(crate::status_err)?.into_inner()
        }
    };
    match out {
        Output::Json => println!("{}", to_json(&b, "Baseline")?),
        Output::Table => print!("{}", detail(&b)),
    }
    Ok(Outcome::Clean)
}

fn scope(b: &v1::Baseline) -> String {
    if b.host_id.is_empty() { format!("selector {}", b.selector) } else { format!("host {}", b.host_id) }
}

fn list_table(bs: &[v1::Baseline]) -> String {
    let rows: Vec<Vec<String>> = bs
        .iter()
        .map(|b| {
            vec![
                b.name.clone(),
                b.version.to_string(),
                scope(b),
                b.files.len().to_string(),
                b.actor.clone(),
                ts(&b.created_at),
                if b.deleted { "deleted".into() } else { b.reason.clone() },
            ]
        })
        .collect();
    table(&["NAME", "VERSION", "APPLIES TO", "FILES", "AUTHOR", "CHANGED", "REASON"], &rows)
}

fn detail(b: &v1::Baseline) -> String {
    let mut out = format!(
        "baseline: {} version {}{}\napplies:  {}\nchanged:  {} by {}\nreason:   {}\n",
        b.name,
        b.version,
        if b.deleted { " (deleted)" } else { "" },
        scope(b),
        ts(&b.created_at),
        b.actor,
        b.reason
    );
    for f in &b.files {
        out.push_str(&format!("\n{}\n", f.path));
        out.push_str(&crate::keys_table(&f.keys, "EXPECTED"));
    }
    if !b.resources.is_empty() {
        let rows: Vec<Vec<String>> =
            b.resources.iter().map(|r| vec![r.metric.clone(), format!("{}", r.value)]).collect();
        out.push_str("\nresources\n");
        out.push_str(&table(&["METRIC", "EXPECTED"], &rows));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_typed_like_env_values() {
        let v = |s: &str| key_value(s).unwrap().value.unwrap();
        assert_eq!(v("A=12"), v1::Value::int(12));
        assert_eq!(v("A=1.5"), v1::Value::float(1.5));
        assert_eq!(v("A=true"), v1::Value::bool(true));
        assert_eq!(v("A=\"12\""), v1::Value::string("12"));
        assert_eq!(v("A=null"), v1::Value::null());
        assert_eq!(v("A=inf"), v1::Value::string("inf"));
        assert_eq!(v("A=x=y"), v1::Value::string("x=y"));
        assert!(key_value("novalue").is_err());
    }
}
