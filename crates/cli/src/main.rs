//! `driftwatch`: the operator CLI, and `driftwatch up` (the one-command tour).

mod access;
mod alerts;
mod audit;
mod baseline;
mod changes;
mod connect;
mod enroll_token;
mod exit;
mod hosts;
mod manual;
mod output;
mod rules_test;
mod up;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
use connect::Target;
use driftwatch_proto::v1::{self, fleet_client::FleetClient};
use exit::Outcome;
use output::{Output, bytes, table, to_json, ts};

/// driftwatch: keep a fleet's configuration and resource use from regressing.
///
/// Query commands talk to a driftwatch server over gRPC (the same API grpcurl uses).
#[derive(Debug, Parser)]
#[command(name = "driftwatch", version, after_help = exit::EXIT_STATUS_HELP)]
struct Cli {
    /// Server URL: https://HOST:PORT (with --ca-file), or http:// for a server on loopback
    /// without TLS (`driftwatch up`).
    #[arg(long, global = true, env = "DRIFTWATCH_SERVER", default_value = "http://127.0.0.1:50051")]
    server: String,
    /// The server's CA certificate (PEM; DATA/tls/ca.pem on the server), the only CA
    /// trusted for an https:// server. Not used for http://.
    #[arg(long, global = true, env = "DRIFTWATCH_CA_FILE", value_name = "FILE")]
    ca_file: Option<std::path::PathBuf>,
    /// A file holding an operator bearer token (`driftwatch token create`; on the
    /// server's first start, DATA/admin.token). The token itself may instead be in
    /// DRIFTWATCH_TOKEN. Not needed for a --insecure server (`driftwatch up`).
    #[arg(long, global = true, env = "DRIFTWATCH_TOKEN_FILE", value_name = "FILE")]
    token_file: Option<std::path::PathBuf>,
    /// An operator certificate (PEM; `driftwatch operator-cert create`), with --key-file.
    #[arg(long, global = true, env = "DRIFTWATCH_CERT_FILE", value_name = "FILE", requires = "key_file")]
    cert_file: Option<std::path::PathBuf>,
    /// The operator certificate's key (PEM).
    #[arg(long, global = true, env = "DRIFTWATCH_KEY_FILE", value_name = "FILE", requires = "cert_file")]
    key_file: Option<std::path::PathBuf>,
    /// Output format: an aligned table for people, or proto3 JSON (as grpcurl prints) for scripts.
    #[arg(long, short, global = true, value_enum, default_value = "table")]
    output: Output,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Start an embedded server (SQLite) and a local agent on the example configs.
    Up(up::UpArgs),
    /// Rule files: check a directory before deploying it.
    #[command(subcommand)]
    Rules(RulesCmd),
    /// Baselines: pin a host's state, show, list, edit, diff against, delete.
    #[command(subcommand)]
    Baseline(baseline::BaselineCmd),
    /// List alerts (default: pending and firing), or show one with --show ID.
    Alerts(alerts::AlertsArgs),
    /// Acknowledge an alert's current episode (ID: as `driftwatch alerts` shows it).
    Ack {
        id: String,
        /// Why (shown with the alert and in the audit log).
        #[arg(long, short = 'c', default_value = "")]
        comment: String,
    },
    /// Change one file on one host now: restore baseline keys, set keys, or put back an
    /// earlier version. The agent checks its own allowlist and the file's hash, backs the
    /// file up, writes atomically and runs its reload/health commands.
    Correct(changes::CorrectArgs),
    /// Roll a change out in canary waves that stop and roll back when a rule fires.
    #[command(subcommand)]
    Rollout(changes::RolloutCmd),
    /// Silences: mute alerts matching labels for a while.
    #[command(subcommand)]
    Silence(alerts::SilenceCmd),
    /// The audit log: who changed what, when (corrections, rollouts, baselines, rule
    /// reloads, acknowledgements, silences), oldest first unless --newest.
    Audit(audit::AuditArgs),
    /// List hosts (optionally filtered by labels), show one host in detail, revoke a
    /// host's certificate, or set its labels.
    Hosts(hosts::HostsArgs),
    /// Enrollment tokens: what a new agent presents, once, to get its certificate.
    #[command(subcommand)]
    EnrollToken(enroll_token::EnrollTokenCmd),
    /// Operator bearer tokens: create (with a role), list, revoke.
    #[command(subcommand)]
    Token(access::TokenCmd),
    /// Operator client certificates from the fleet CA, each with a role.
    #[command(subcommand)]
    OperatorCert(access::OperatorCertCmd),
    /// Who the server takes you to be, and your role.
    Whoami,
    /// Show one watched file of a host: metadata, parse status and every key (secrets masked).
    File {
        /// Host id, as `driftwatch hosts` lists it.
        host_id: String,
        /// Absolute path of the file on that host.
        path: String,
    },
    /// Compare one file between two hosts, or a host's file with its baseline
    /// (--baseline): added, removed and changed keys.
    Diff {
        /// Left host.
        host_id: String,
        /// File path on the left host (and on the right unless --other-path is given).
        path: String,
        /// Right host (not with --baseline).
        #[arg(required_unless_present = "baseline", conflicts_with = "baseline")]
        other_host_id: Option<String>,
        /// Compare with the host's effective baseline (left) instead of another host.
        #[arg(long)]
        baseline: bool,
        /// File path on the right host, when it differs.
        #[arg(long)]
        other_path: Option<String>,
    },
    /// Print the shell completion script for SHELL to stdout, e.g.
    /// `driftwatch completions bash > /etc/bash_completion.d/driftwatch`.
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

#[derive(Debug, Subcommand)]
enum RulesCmd {
    /// Load every rule file in DIR and print `file:line:col: message` for each
    /// problem (exit status 1), or a summary when all is well. Needs no server.
    Check {
        /// The rules directory (*.yaml, *.yml).
        dir: std::path::PathBuf,
    },
    /// Run rule unit tests (YAML test files, as `promtool test rules`): replay file
    /// snapshots, resource series and agent connectivity through the rules and check the
    /// alerts at given times. Prints `PASS name` / `FAIL name` with what differed; exit status
    /// 1 on any failure or error. Needs no server.
    Test {
        /// Test files.
        #[arg(required = true)]
        files: Vec<std::path::PathBuf>,
    },
    /// The rules the server runs now, and the state of its last reload.
    List,
    /// Ask the server to reload its rules directory now (it also does within a second of a change).
    Reload,
}

fn rules_check(dir: &std::path::Path, out: Output) -> anyhow::Result<bool> {
    if !dir.is_dir() {
        anyhow::bail!("{} is not a directory", dir.display());
    }
    let errors = driftwatch_rules::RuleSet::check_dir(dir);
    match out {
        Output::Json => {
            let list: Vec<serde_json::Value> = errors
                .iter()
                .map(|e| {
                    serde_json::json!({"file": e.file.display().to_string(), "line": e.line, "column": e.column, "message": e.message})
                })
                .collect();
            println!("{}", serde_json::json!({ "errors": list }));
        }
        Output::Table if errors.is_empty() => {
            let set = driftwatch_rules::RuleSet::load_dir(dir)
                .map_err(|_| anyhow::anyhow!("rules changed while checking"))?;
            println!("{}: {} rules OK", dir.display(), set.rules().len());
        }
        Output::Table => errors.iter().for_each(|e| println!("{e}")),
    }
    Ok(errors.is_empty())
}

fn main() -> std::process::ExitCode {
    // A usage error exits here, with clap's own message and status 2. `man` is added
    // here only, so that neither completions nor the man pages offer it.
    let matches = Cli::command().subcommand(manual::man_command()).get_matches();
    if let Some(("man", m)) = matches.subcommand() {
        return exit::finish(manual::man_pages(Cli::command(), m).map(|()| Outcome::Clean));
    }
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    exit::finish(run(cli))
}

fn run(cli: Cli) -> anyhow::Result<Outcome> {
    // Completions need no server and no credentials (a stale DRIFTWATCH_TOKEN_FILE must not stop them).
    if let Command::Completions { shell } = &cli.command {
        return manual::completions(*shell, Cli::command()).map(|()| Outcome::Clean);
    }
    driftwatch_pki::install_tls_provider();
    let target = Target {
        server: cli.server.clone(),
        ca_file: cli.ca_file.clone(),
        token: connect::token(cli.token_file.as_deref(), std::env::var("DRIFTWATCH_TOKEN").ok())?,
        identity: cli.cert_file.clone().zip(cli.key_file.clone()),
    };
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(async move {
        match cli.command {
            Command::Up(args) => up::run(args).await.map(|()| Outcome::Clean),
            Command::Rules(RulesCmd::Check { dir }) => rules_check(&dir, cli.output).map(Outcome::clean_if),
            Command::Rules(RulesCmd::Test { files }) => Ok(Outcome::clean_if(rules_test::run(&files, cli.output))),
            cmd @ Command::Rules(RulesCmd::List | RulesCmd::Reload) => query(&target, cli.output, cmd).await,
            Command::Alerts(a) if a.watch.is_some() => match a.watch {
                Some(alerts::AlertsCmd::Watch(w)) => {
                    alerts::watch(target, cli.output, w).await.map(|()| Outcome::Clean)
                }
                None => unreachable!("checked"),
            },
            cmd => query(&target, cli.output, cmd).await,
        }
    })
}

pub(crate) async fn channel(target: &Target) -> anyhow::Result<connect::Conn> {
    connect::channel(target).await
}

/// A refused or failed call as an error that keeps its code (for the exit status) and
/// reads `not found: no host "x"`.
pub(crate) fn status_err(s: tonic::Status) -> anyhow::Error {
    let text = match s.message() {
        "" => code_name(s.code()).to_string(),
        m => format!("{}: {m}", code_name(s.code())),
    };
    anyhow::Error::new(exit::CallFailed { code: s.code(), text })
}

fn code_name(c: tonic::Code) -> &'static str {
    match c {
        tonic::Code::NotFound => "not found",
        tonic::Code::InvalidArgument => "invalid argument",
        tonic::Code::Unavailable => "unavailable",
        tonic::Code::PermissionDenied => "permission denied",
        tonic::Code::Unauthenticated => "unauthenticated",
        tonic::Code::AlreadyExists => "already exists",
        tonic::Code::FailedPrecondition => "failed precondition",
        // A CLI newer than its server (e.g. enroll-token against a server without enrollment).
        tonic::Code::Unimplemented => "not supported by this server",
        _ => "error",
    }
}

async fn query(target: &Target, out: Output, cmd: Command) -> anyhow::Result<Outcome> {
    let ch = channel(target).await?;
    let mut c = FleetClient::new(ch.clone());
    match cmd {
        Command::Rules(RulesCmd::List) => {
            let r = v1::rules_client::RulesClient::new(ch)
                .list_rules(v1::ListRulesRequest {})
                .await
                .map_err(status_err)?
                .into_inner();
            match out {
                Output::Json => println!("{}", to_json(&r, "ListRulesResponse")?),
                Output::Table => {
                    let rows: Vec<Vec<String>> = r
                        .rules
                        .iter()
                        .map(|x| {
                            vec![
                                format!("{}/{}", x.group, x.name),
                                x.severity.clone(),
                                x.selector.clone(),
                                x.target.clone(),
                                crate::output::duration_text(&x.r#for),
                                x.source.clone(),
                            ]
                        })
                        .collect();
                    print!("{}", table(&["RULE", "SEVERITY", "SELECTOR", "TARGET", "FOR", "FILE"], &rows));
                    if let Some(s) = &r.status {
                        print!("{}", reload_status(s));
                    }
                }
            }
        }
        Command::Rules(RulesCmd::Reload) => {
            let r = v1::rules_client::RulesClient::new(ch)
                .reload_rules(v1::ReloadRulesRequest {})
                .await
                .map_err(status_err)?
                .into_inner();
            let status = r.status.unwrap_or_default();
            match out {
                Output::Json => println!("{}", to_json(&status, "ReloadStatus")?),
                Output::Table => print!("{}", reload_status(&status)),
            }
            return Ok(Outcome::clean_if(status.ok));
        }
        Command::Up(_) | Command::Rules(_) | Command::Completions { .. } => {
            unreachable!("handled in main")
        }
        Command::Alerts(a) => alerts::list(ch, out, a).await?,
        Command::Ack { id, comment } => alerts::ack(ch, out, id, comment).await?,
        Command::Silence(cmd) => alerts::silence(ch, out, cmd).await?,
        Command::Audit(a) => audit::run(ch, out, a).await?,
        Command::Correct(a) => return changes::correct(ch, out, a).await.map(Outcome::clean_if),
        Command::Rollout(cmd) => return changes::rollout(ch, out, cmd).await.map(Outcome::clean_if),
        Command::Hosts(args) => hosts::run(ch, out, args).await?,
        Command::EnrollToken(cmd) => enroll_token::run(ch, out, cmd).await?,
        Command::Token(cmd) => access::token(ch, out, cmd).await?,
        Command::OperatorCert(cmd) => access::operator_cert(ch, out, cmd).await?,
        Command::Whoami => access::whoami(ch, out).await?,
        Command::File { host_id, path } => {
            let f = c.get_file(v1::GetFileRequest { host_id, path }).await.map_err(status_err)?.into_inner();
            match out {
                Output::Json => println!("{}", to_json(&f, "File")?),
                Output::Table => print!("{}", file_detail(&f)),
            }
        }
        Command::Diff { host_id, path, other_host_id, other_path, baseline } => {
            let d = c
                .diff(v1::DiffRequest {
                    host_id,
                    path,
                    other_host_id: other_host_id.unwrap_or_default(),
                    other_path: other_path.unwrap_or_default(),
                    against_baseline: baseline,
                })
                .await
                .map_err(status_err)?
                .into_inner();
            match out {
                Output::Json => println!("{}", to_json(&d, "DiffResponse")?),
                Output::Table => print!("{}", diff_table(&d)),
            }
            return Ok(diff_outcome(&d));
        }
        Command::Baseline(b) => return baseline::run(ch, out, b).await,
    }
    Ok(Outcome::Clean)
}

/// `diff` and `baseline diff`: differences are findings (exit status 1), as diff(1).
pub(crate) fn diff_outcome(d: &v1::DiffResponse) -> Outcome {
    Outcome::clean_if(d.added == 0 && d.removed == 0 && d.changed == 0)
}

/// `rules: 24 from DIR, last reload ok` and every problem of a failed reload.
fn reload_status(s: &v1::ReloadStatus) -> String {
    let mut out = format!(
        "\n{} rules from {}; last reload {} ({})\n",
        s.rules,
        if s.dir.is_empty() { "-" } else { &s.dir },
        if s.ok { "ok" } else { "FAILED: the previous rules keep running" },
        ts(&s.last_attempt)
    );
    for p in &s.problems {
        out.push_str(&format!("{}:{}:{}: {}\n", p.file, p.line, p.column, p.message));
    }
    out
}

pub(crate) fn error_text(e: &Option<v1::FileError>) -> String {
    match e {
        None => String::new(),
        Some(e) if e.line > 0 => format!("{}:{}: {}", e.line, e.column, e.message),
        Some(e) => e.message.clone(),
    }
}

fn file_detail(f: &v1::File) -> String {
    let s = f.state.clone().unwrap_or_default();
    let mut out = format!(
        "host:    {}\npath:    {}\nformat:  {}\nstatus:  {}\nsize:    {}  mode {:o}  dir mode {:o}  uid {}  gid {}\nhash:    {}\nchanged: {} (seq {})\n",
        f.host_id,
        s.path,
        driftwatch_proto::format_name(s.format),
        driftwatch_proto::file_status_name(s.status),
        bytes(s.size),
        s.mode & 0o7777,
        s.dir_mode & 0o7777,
        s.uid,
        s.gid,
        s.content_hash.get(..16).unwrap_or(&s.content_hash),
        ts(&f.updated_at),
        f.seq
    );
    if let Some(e) = &s.error {
        out.push_str(&format!("error:   {}\n", error_text(&Some(e.clone()))));
    }
    out.push('\n');
    out.push_str(&keys_table(&s.keys, "VALUE"));
    out
}

/// Keys with their type and value (masked values as `masked:<prefix>`).
pub(crate) fn keys_table(keys: &[v1::KeyValue], value_header: &str) -> String {
    let rows: Vec<Vec<String>> = keys
        .iter()
        .map(|kv| {
            let v = kv.value.clone().unwrap_or_default();
            vec![kv.key.clone(), v.type_name().into(), v.display()]
        })
        .collect();
    table(&["KEY", "TYPE", value_header], &rows)
}

pub(crate) fn diff_table(d: &v1::DiffResponse) -> String {
    let show = |v: &Option<v1::Value>| v.as_ref().map(|v| v.display()).unwrap_or_else(|| "-".into());
    let rows: Vec<Vec<String>> = d
        .differences
        .iter()
        .map(|k| {
            let kind = match v1::DiffKind::try_from(k.kind) {
                Ok(v1::DiffKind::Added) => "added",
                Ok(v1::DiffKind::Removed) => "removed",
                Ok(v1::DiffKind::Changed) => "changed",
                _ => "?",
            };
            vec![kind.into(), k.key.clone(), show(&k.left), show(&k.right)]
        })
        .collect();
    let mut out = table(&["CHANGE", "KEY", "LEFT", "RIGHT"], &rows);
    out.push_str(&format!(
        "\n{} added, {} removed, {} changed, {} unchanged\n",
        d.added, d.removed, d.changed, d.unchanged
    ));
    if !d.baseline_name.is_empty() {
        out.push_str(&format!("left: baseline {} version {}\n", d.baseline_name, d.baseline_version));
    }
    out
}
