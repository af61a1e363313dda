//! What `deploy/` ships to watch driftwatch itself, checked against the code:
//!
//! - `deploy/prometheus/driftwatch-alerts.yaml` passes `promtool check rules`, and its
//!   unit tests (`driftwatch-alerts.test.yaml`: every alert fires, and stays quiet,
//!   on synthetic series) pass `promtool test rules`; every runbook link names a
//!   section of `docs/runbook.md`;
//! - `deploy/grafana/driftwatch.json` is a well-formed dashboard (every panel has a
//!   data source and queries, unique panel ids and uids) whose queries parse as
//!   PromQL (`promtool check rules` on them as recording rules);
//! - every metric name the dashboard's and the rules' PromQL uses is exported by a
//!   live server or a live agent, scraped after some traffic: an agent streaming, a
//!   query, an alert firing and notified (whose webhook body links to the dashboard
//!   under `external_url`).

use std::collections::{BTreeSet, HashMap, HashSet};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use driftwatch_proto::v1;
use driftwatch_server::ServerConfig;
use driftwatch_tests::webhook::Receiver;
use driftwatch_tests::*;
use serde_json::Value as Json;

const PROMTOOL: &str = "/usr/bin/promtool";
/// Made by Prometheus for every target, not exported by anything.
const PROMETHEUS_MADE: &[&str] = &["up"];
const RULE: &str = "browser-pool-max-size-above-20";
const EXTERNAL_URL: &str = "https://grafana.example.com/ops";

fn deploy() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

fn promtool_installed() -> bool {
    outside_program("promtool", Path::new(PROMTOOL).exists(), "apt-get install -y prometheus")
}

fn promtool(args: &[&str]) -> String {
    let out = Command::new(PROMTOOL).args(args).current_dir(deploy().join("prometheus")).output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "promtool {args:?} failed:\n{text}");
    text
}

#[test]
fn the_alert_rules_pass_promtool_check_and_their_unit_tests() {
    if !promtool_installed() {
        return;
    }
    let version = Command::new(PROMTOOL).arg("--version").output().unwrap();
    println!("{}", String::from_utf8_lossy(&version.stdout).lines().next().unwrap_or(""));
    println!("{}", promtool(&["check", "rules", "driftwatch-alerts.yaml"]));
    println!("{}", promtool(&["test", "rules", "driftwatch-alerts.test.yaml"]));
}

/// The dashboard's queries parse as PromQL: each one (Grafana's variables replaced by
/// what they expand to) as a recording rule, through `promtool check rules`.
#[test]
fn the_dashboard_queries_are_valid_promql() {
    if !promtool_installed() {
        return;
    }
    let exprs = dashboard_exprs(&dashboard());
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (i, e) in exprs.iter().enumerate() {
        let e = e
            .replace("$__rate_interval", "5m")
            .replace("$__range", "6h")
            .replace("$server", ".*")
            .replace("$agent", ".*")
            .replace("$host", ".*");
        rules.push_str(&format!(
            "      - record: dashboard:query_{i}\n        expr: {}\n",
            serde_json::to_string(&e).unwrap()
        ));
    }
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("dashboard-queries.yaml");
    std::fs::write(&file, rules).unwrap();
    println!("{}", promtool(&["check", "rules", file.to_str().unwrap()]));
}

#[test]
fn every_alert_has_severity_annotations_and_a_runbook_section() {
    let rules = std::fs::read_to_string(deploy().join("prometheus/driftwatch-alerts.yaml")).unwrap();
    let runbook = std::fs::read_to_string(deploy().join("../docs/runbook.md")).unwrap();
    let anchors: HashSet<String> = runbook.lines().filter_map(|l| l.strip_prefix("## ")).map(anchor).collect();
    let tests = std::fs::read_to_string(deploy().join("prometheus/driftwatch-alerts.test.yaml")).unwrap();
    let alerts: Vec<&str> = rules.split("- alert: ").skip(1).collect();
    assert!(alerts.len() >= 8, "{} alerts", alerts.len());
    for a in alerts {
        let name = a.lines().next().unwrap().trim();
        for field in ["expr:", "for:", "severity:", "summary:", "description:", "runbook_url:"] {
            assert!(a.contains(field), "{name} has no {field}");
        }
        let url = a.lines().find_map(|l| l.trim().strip_prefix("runbook_url: ")).unwrap().trim_matches('"');
        let section = url.split_once("docs/runbook.md#").map(|(_, s)| s).unwrap_or_else(|| panic!("{name}: {url}"));
        assert!(anchors.contains(section), "{name}: no section #{section} in docs/runbook.md ({anchors:?})");
        assert!(tests.contains(&format!("alertname: {name}\n")), "{name} has no promtool unit test");
    }
}

/// GitHub's anchor of a heading: lower case, spaces to '-', other punctuation dropped.
fn anchor(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
            _ => None,
        })
        .collect()
}

fn dashboard() -> Json {
    let text = std::fs::read_to_string(deploy().join("grafana/driftwatch.json")).unwrap();
    serde_json::from_str(&text).expect("the dashboard parses as JSON")
}

/// Every panel, rows' nested panels included.
fn panels(d: &Json) -> Vec<&Json> {
    let mut out = Vec::new();
    for p in d["panels"].as_array().expect("panels") {
        out.push(p);
        out.extend(p["panels"].as_array().into_iter().flatten());
    }
    out
}

#[test]
fn the_dashboard_is_well_formed() {
    let d = dashboard();
    assert_eq!(d["uid"], "driftwatch", "notifications link to /d/driftwatch");
    assert!(d["schemaVersion"].as_u64().unwrap() >= 36);
    let vars = d["templating"]["list"].as_array().unwrap();
    let names: Vec<&str> = vars.iter().map(|v| v["name"].as_str().unwrap()).collect();
    assert!(vars.iter().any(|v| v["name"] == "DS_PROMETHEUS" && v["type"] == "datasource"), "{names:?}");
    for var in ["server", "host", "agent"] {
        assert!(names.contains(&var), "no ${var} variable: {names:?}");
    }
    let (mut ids, mut titles) = (HashSet::new(), BTreeSet::new());
    let mut queries = 0;
    for p in panels(&d) {
        let title = p["title"].as_str().unwrap_or_default();
        assert!(!title.is_empty(), "a panel without a title: {p}");
        assert!(ids.insert(p["id"].as_u64().unwrap()), "panel id {} twice", p["id"]);
        if p["type"] == "row" {
            assert!(titles.insert(format!("row {title}")));
            continue;
        }
        assert_eq!(p["datasource"]["uid"], "${DS_PROMETHEUS}", "{title}: data source");
        let targets = p["targets"].as_array().unwrap_or_else(|| panic!("{title}: no targets"));
        assert!(!targets.is_empty(), "{title}: no targets");
        let mut refs = HashSet::new();
        for t in targets {
            assert!(!t["expr"].as_str().unwrap_or_default().is_empty(), "{title}: empty query");
            assert!(refs.insert(t["refId"].as_str().unwrap()), "{title}: refId twice");
            queries += 1;
        }
        for k in ["h", "w", "x", "y"] {
            assert!(p["gridPos"][k].is_u64(), "{title}: gridPos.{k}");
        }
    }
    let rows: Vec<_> = titles.iter().collect();
    println!("dashboard: {} panels, {queries} queries, {rows:?}", ids.len());
    for row in ["Fleet health", "Drift", "Ingest", "RPC", "Notifier delivery", "Process"] {
        assert!(titles.contains(&format!("row {row}")), "no row {row}: {rows:?}");
    }
}

/// Every PromQL expression of the dashboard (panels and variable queries).
fn dashboard_exprs(d: &Json) -> Vec<String> {
    let mut out: Vec<String> = panels(d)
        .iter()
        .flat_map(|p| p["targets"].as_array().into_iter().flatten())
        .filter_map(|t| t["expr"].as_str().map(str::to_string))
        .collect();
    for v in d["templating"]["list"].as_array().unwrap() {
        if let Some(q) = v["query"]["query"].as_str() {
            // label_values(<selector>, <label>): the selector is PromQL, the label is not.
            let inner = q.strip_prefix("label_values(").and_then(|r| r.rsplit_once(',')).map(|(s, _)| s);
            out.push(inner.unwrap_or(q).to_string());
        }
    }
    out
}

/// Every `expr:` of the rules file (one line, or a `|` block).
fn rule_exprs(yaml: &str) -> Vec<String> {
    let lines: Vec<&str> = yaml.lines().collect();
    let mut out = Vec::new();
    for (i, l) in lines.iter().enumerate() {
        let Some(e) = l.trim_start().strip_prefix("expr: ") else { continue };
        if e.trim() != "|" {
            out.push(e.to_string());
            continue;
        }
        let indent = l.len() - l.trim_start().len();
        let block = lines[i + 1..].iter().take_while(|b| b.len() - b.trim_start().len() > indent || b.is_empty());
        out.push(block.copied().collect::<Vec<_>>().join("\n"));
    }
    out
}

const KEYWORDS: &[&str] = &["and", "or", "unless", "offset", "bool", "atan2", "inf", "nan"];
/// Followed by a parenthesised list of label names.
const LABEL_LISTS: &[&str] = &["by", "without", "on", "ignoring", "group_left", "group_right"];

/// The metric names in a PromQL expression: identifiers not followed by `(`, outside
/// strings, label matchers `{...}`, ranges `[...]` and label lists (`by (...)`), and
/// not keywords or numbers (durations).
fn metric_names(expr: &str) -> Vec<String> {
    let chars: Vec<char> = expr.chars().collect();
    let mut names = Vec::new();
    let mut i = 0;
    let skip_to = |from: usize, close: char| {
        let mut j = from;
        let mut quote = None;
        while j < chars.len() {
            match (quote, chars[j]) {
                (Some(q), c) if c == q => quote = None,
                (Some(_), '\\') => j += 1,
                (Some(_), _) => {}
                (None, c @ ('"' | '\'' | '`')) => quote = Some(c),
                (None, c) if c == close => return j + 1,
                _ => {}
            }
            j += 1;
        }
        j
    };
    while i < chars.len() {
        let c = chars[i];
        match c {
            '{' => i = skip_to(i + 1, '}'),
            '[' => i = skip_to(i + 1, ']'),
            '"' | '\'' | '`' => {
                i += 1;
                while i < chars.len() && chars[i] != c {
                    i += if chars[i] == '\\' { 2 } else { 1 };
                }
                i += 1;
            }
            c if c.is_ascii_digit() || (c == '.' && chars.get(i + 1).is_some_and(char::is_ascii_digit)) => {
                while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '.') {
                    i += 1;
                }
            }
            c if c.is_ascii_alphabetic() || c == '_' || c == ':' => {
                let start = i;
                while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '_' || chars[i] == ':') {
                    i += 1;
                }
                let word: String = chars[start..i].iter().collect();
                let mut next = i;
                while next < chars.len() && chars[next].is_whitespace() {
                    next += 1;
                }
                // A call, or an aggregation with its label list first (`sum by (le) (…)`).
                let rest: String = chars[next..].iter().take(8).collect();
                let call = chars.get(next) == Some(&'(')
                    || ["by", "without"].iter().any(|k| {
                        rest.strip_prefix(k).is_some_and(|r| r.starts_with(|c: char| c == '(' || c.is_whitespace()))
                    });
                if LABEL_LISTS.contains(&word.as_str()) {
                    if call {
                        i = skip_to(next + 1, ')');
                    }
                } else if !call && !KEYWORDS.contains(&word.to_lowercase().as_str()) {
                    names.push(word);
                }
            }
            _ => i += 1,
        }
    }
    names
}

#[test]
fn the_promql_tokenizer_finds_metric_names_only() {
    let e = r#"histogram_quantile(0.99, sum by (le, method) (rate(driftwatch_x_bucket{instance=~"$s", a="b}c"}[$__rate_interval])))
        and on (instance, job) time() - last_seen offset 15m > 300 or vector(1) unless absent(up{job="x"})"#;
    assert_eq!(metric_names(e), ["driftwatch_x_bucket", "last_seen", "up"]);
}

/// What a scrape shows: every sample's name, and every `# TYPE` family with its type.
struct Exported {
    samples: HashSet<String>,
    families: HashMap<String, String>,
}

fn exported(scrape: &str) -> Exported {
    let (mut samples, mut families) = (HashSet::new(), HashMap::new());
    for l in scrape.lines() {
        if let Some(rest) = l.strip_prefix("# TYPE ") {
            let mut words = rest.split_whitespace();
            if let (Some(name), Some(kind)) = (words.next(), words.next()) {
                families.insert(name.to_string(), kind.to_string());
            }
        } else if !l.starts_with('#') && !l.is_empty() {
            samples.extend(l.split(['{', ' ']).next().map(str::to_string));
        }
    }
    Exported { samples, families }
}

/// Is `name` (as PromQL uses it) exported: a sample of that name, or a family whose
/// samples have it (a counter's `_total`, a histogram's `_bucket`, `_sum`, `_count`; a
/// gauge with no series yet). A counter family `x` does not export a gauge `x`.
fn is_exported(name: &str, e: &Exported) -> bool {
    let family = |base: &str, kinds: &[&str]| e.families.get(base).is_some_and(|k| kinds.contains(&k.as_str()));
    e.samples.contains(name)
        || family(name, &["gauge", "unknown"])
        || name.strip_suffix("_total").is_some_and(|b| family(b, &["counter"]))
        || ["_bucket", "_sum", "_count"].iter().any(|s| name.strip_suffix(s).is_some_and(|b| family(b, &["histogram"])))
}

async fn scrape(addr: std::net::SocketAddr) -> String {
    let r = reqwest::get(format!("http://{addr}/metrics")).await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
    r.text().await.unwrap()
}

/// `external_url` and a webhook for every alert, through the config file's own parsing.
fn server_settings(dir: &Path, hook_url: &str) -> ServerConfig {
    let p = dir.join("server.toml");
    std::fs::write(
        &p,
        format!(
            "insecure = true\nexternal_url = \"{EXTERNAL_URL}\"\n\
             [[notifiers]]\nname = \"hook\"\nkind = \"webhook\"\nurl = \"{hook_url}\"\n"
        ),
    )
    .unwrap();
    ServerConfig::resolve(ServerConfig::load_file(&p).unwrap(), "server.toml").unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_the_dashboard_and_the_alerts_use_is_exported_by_a_live_server_or_agent() {
    let dir = tempfile::tempdir().unwrap();
    let configs = dir.path().join("configs");
    copy_fixtures(&configs);
    let file = configs.join("web2img/.env.production");
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let hook = Receiver::start(0).await;
    let settings = server_settings(dir.path(), &hook.url);
    let mut cfg = ServerConfig::for_tests(dir.path().join("server"));
    cfg.rules = Some(example_configs().join("../rules"));
    cfg.notifiers = settings.notifiers;
    cfg.external_url = settings.external_url;
    let server = start_server_with(cfg).await;
    let mut acfg = agent_config(&server, "obs-1", &dir.path().join("agent"), &[file.display().to_string()]);
    acfg.labels =
        [("env", "production"), ("service", "web2img")].iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    acfg.metrics_listen = Some("127.0.0.1:0".parse().unwrap());
    let agent = start_agent(acfg).await;

    // Traffic: the agent streams its file, a query, an edit that fires an alert and
    // its notification (linking to the dashboard of the host).
    let mut fleet = fleet_client(&server).await;
    wait_file(&mut fleet, "obs-1", &file, "parsed", |s| !s.keys.is_empty()).await;
    let hosts = fleet.list_hosts(v1::ListHostsRequest::default()).await.unwrap().into_inner();
    assert_eq!(hosts.hosts.len(), 1);
    let original = std::fs::read_to_string(&file).unwrap();
    assert!(original.contains("BROWSER_POOL_MAX_SIZE=12\n"), "fixture changed?");
    replace_file(&file, &original.replace("BROWSER_POOL_MAX_SIZE=12\n", "BROWSER_POOL_MAX_SIZE=30\n"));
    let fired = hook.wait_delivered("fired").await;
    assert_eq!(fired.json["alert"]["rule"], RULE);
    let link = format!("{EXTERNAL_URL}/d/driftwatch/driftwatch?var-host=obs-1");
    assert_eq!(fired.json["link"], link.as_str(), "{:#}", fired.json);
    println!("webhook link: {link}");

    let server_scrape = scrape(server.metrics_addr.expect("server metrics")).await;
    let agent_scrape = scrape(agent.metrics_addr.expect("agent metrics")).await;
    let (on_server, on_agent) = (exported(&server_scrape), exported(&agent_scrape));
    let d = dashboard();
    let rules = std::fs::read_to_string(deploy().join("prometheus/driftwatch-alerts.yaml")).unwrap();
    let mut used = BTreeSet::new();
    for (source, exprs) in [("dashboard", dashboard_exprs(&d)), ("alert rules", rule_exprs(&rules))] {
        assert!(!exprs.is_empty(), "no expressions in the {source}");
        for e in &exprs {
            for name in metric_names(e) {
                used.insert((name, source));
            }
        }
    }
    let mut missing = Vec::new();
    for (name, source) in &used {
        let by = match (is_exported(name, &on_server), is_exported(name, &on_agent)) {
            (true, true) => "server, agent",
            (true, false) => "server",
            (false, true) => "agent",
            _ if PROMETHEUS_MADE.contains(&name.as_str()) => "Prometheus",
            _ => {
                missing.push(format!("{name} ({source})"));
                continue;
            }
        };
        println!("checked {name:<50} {source:<12} exported by {by}");
    }
    assert!(
        missing.is_empty(),
        "used but exported by neither:\n{}\n--- server:\n{server_scrape}\n--- agent:\n{agent_scrape}",
        missing.join("\n")
    );
    // The series the per-host alert and the notifier panels read exist, not only their families.
    assert!(server_scrape.contains("driftwatch_host_connected{host=\"obs-1\"} 1"), "{server_scrape}");
    assert!(server_scrape.contains("driftwatch_host_last_seen_timestamp_seconds{host=\"obs-1\"} "), "{server_scrape}");
    assert!(
        server_scrape.contains("driftwatch_notifier_circuit_open{notifier=\"hook\",target=\"0\"} 0"),
        "{server_scrape}"
    );
    assert!(agent_scrape.contains("host=\"obs-1\"} 1"), "{agent_scrape}");
    println!("{} metric names checked", used.iter().map(|(n, _)| n).collect::<BTreeSet<_>>().len());
    agent.stop().await.unwrap();
    server.stop().await.unwrap();
}
