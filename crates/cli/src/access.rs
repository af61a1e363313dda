//! `driftwatch token create|list|revoke`, `driftwatch operator-cert create` and
//! `driftwatch whoami`: operator credentials, each with one role (viewer, responder,
//! operator, admin).
//!
//! `token create` prints the token alone on stdout (`> alice.token` writes exactly the
//! file `--token-file` reads); what it allows goes to stderr. `operator-cert create`
//! makes the key here (it never leaves this machine) and writes it with the signed
//! certificate and the fleet CA into `--out`.

use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::{Args, Subcommand};
use driftwatch_proto::v1::{self, access_client::AccessClient};

use crate::connect::Conn;
use crate::output::{Output, duration_arg, table, to_json, ts, until};
use crate::status_err;

#[derive(Debug, Subcommand)]
pub enum TokenCmd {
    /// Create a bearer token. It is shown only now: alone on stdout (`> NAME.token`),
    /// with what it allows on stderr.
    Create(CreateArgs),
    /// List tokens and operator certificates that authenticate (--all: also revoked and expired).
    List {
        #[arg(long)]
        all: bool,
    },
    /// Revoke a token or an operator certificate: the next call made with it is refused.
    Revoke {
        /// A token's id (`driftwatch token list`), or an operator certificate's serial.
        id: String,
        /// Why (recorded in the audit log).
        #[arg(long, default_value = "")]
        reason: String,
    },
}

#[derive(Debug, Args)]
pub struct CreateArgs {
    /// viewer (reads, Subscribe), responder (+ acknowledge, silences), operator
    /// (+ baselines, rule reloads, corrections, rollouts) or admin (+ tokens, enrollment,
    /// revocation).
    #[arg(long)]
    role: String,
    /// Who the token is for: the audit log's actor for every call made with it.
    #[arg(long)]
    name: String,
    /// How long it works: 8h, 30d [default: until revoked; for certificates 30d, at most 365d].
    #[arg(long, value_name = "DURATION")]
    ttl: Option<String>,
    /// Why (recorded with the credential and in the audit log).
    #[arg(long, default_value = "")]
    reason: String,
}

#[derive(Debug, Subcommand)]
pub enum OperatorCertCmd {
    /// Make a key here, have the server's fleet CA sign a certificate for it with
    /// SAN spiffe://driftwatch/operator/NAME, and write NAME.key, NAME.pem and ca.pem
    /// into --out. Use them with --cert-file/--key-file/--ca-file.
    Create {
        #[command(flatten)]
        args: CreateArgs,
        /// Directory to write the key (mode 0600), certificate and CA into.
        #[arg(long, value_name = "DIR", default_value = ".")]
        out: PathBuf,
    },
}

fn role_arg(role: &str) -> anyhow::Result<v1::Role> {
    driftwatch_proto::parse_role(role)
        .with_context(|| format!("--role {role:?}: expected viewer, responder, operator or admin"))
}

/// The token request `token create` sends (flags checked here, before anything is sent).
pub fn token_request(a: &CreateArgs) -> anyhow::Result<v1::CreateTokenRequest> {
    Ok(v1::CreateTokenRequest {
        name: a.name.trim().to_string(),
        role: role_arg(&a.role)? as i32,
        ttl: a.ttl.as_deref().map(|t| duration_arg(t, "ttl")).transpose()?,
        reason: a.reason.clone(),
    })
}

pub async fn token(ch: Conn, out: Output, cmd: TokenCmd) -> anyhow::Result<()> {
    let mut c = AccessClient::new(ch);
    match cmd {
        TokenCmd::Create(a) => {
            let r = c.create_token(token_request(&a)?).await.map_err(status_err)?.into_inner();
            match out {
                Output::Json => println!("{}", to_json(&r, "CreateTokenResponse")?),
                Output::Table => {
                    println!("{}", r.token);
                    let cred = r.credential.unwrap_or_default();
                    eprintln!(
                        "token {} for '{}': role {}, expires {}\nThe token (stdout) is shown only now. Use it with\n  \
                         driftwatch --token-file FILE ...   or   grpcurl -H \"authorization: Bearer $(cat FILE)\" ...",
                        cred.id,
                        cred.name,
                        driftwatch_proto::role_name(cred.role),
                        cred.expires_at.as_ref().map(until).unwrap_or_else(|| "never".into())
                    );
                }
            }
        }
        TokenCmd::List { all } => {
            let r = c.list_tokens(v1::ListTokensRequest { all }).await.map_err(status_err)?.into_inner();
            match out {
                Output::Json => println!("{}", to_json(&r, "ListTokensResponse")?),
                Output::Table => print!("{}", credentials_table(&r.credentials, driftwatch_proto::now_millis())),
            }
        }
        TokenCmd::Revoke { id, reason } => {
            let cred = c.revoke_token(v1::RevokeTokenRequest { id, reason }).await.map_err(status_err)?.into_inner();
            match out {
                Output::Json => println!("{}", to_json(&cred, "Credential")?),
                Output::Table => println!("revoked {} {} ('{}')", kind_name(cred.kind), cred.id, cred.name),
            }
        }
    }
    Ok(())
}

pub async fn operator_cert(ch: Conn, out: Output, cmd: OperatorCertCmd) -> anyhow::Result<()> {
    let OperatorCertCmd::Create { args, out: dir } = cmd;
    let req = token_request(&args)?;
    let key = driftwatch_pki::AgentKey::generate();
    let csr = driftwatch_pki::certificate_request(&key, &req.name).map_err(|e| anyhow::anyhow!("{e}"))?;
    let r = AccessClient::new(ch)
        .create_operator_cert(v1::CreateOperatorCertRequest {
            name: req.name.clone(),
            role: req.role,
            csr_pem: csr,
            ttl: req.ttl,
            reason: req.reason,
        })
        .await
        .map_err(status_err)?
        .into_inner();
    std::fs::create_dir_all(&dir).with_context(|| format!("--out {}", dir.display()))?;
    let key_path = dir.join(format!("{}.key", req.name));
    let cert_path = dir.join(format!("{}.pem", req.name));
    let ca_path = dir.join("ca.pem");
    write_file(&key_path, &key.to_pem(), 0o600)?;
    write_file(&cert_path, &r.certificate_pem, 0o644)?;
    write_file(&ca_path, &r.ca_pem, 0o644)?;
    match out {
        Output::Json => println!("{}", to_json(&r, "CreateOperatorCertResponse")?),
        Output::Table => {
            let cred = r.credential.unwrap_or_default();
            println!(
                "operator certificate {} for '{}': role {}, expires {}\nwrote {}, {}, {}\nUse them with\n  \
                 driftwatch --server https://SERVER:PORT --ca-file {} --cert-file {} --key-file {} ...",
                cred.id,
                cred.name,
                driftwatch_proto::role_name(cred.role),
                cred.expires_at.as_ref().map(until).unwrap_or_else(|| "never".into()),
                key_path.display(),
                cert_path.display(),
                ca_path.display(),
                ca_path.display(),
                cert_path.display(),
                key_path.display()
            );
        }
    }
    Ok(())
}

pub async fn whoami(ch: Conn, out: Output) -> anyhow::Result<()> {
    let r = AccessClient::new(ch).who_am_i(v1::WhoAmIRequest {}).await.map_err(status_err)?.into_inner();
    match out {
        Output::Json => println!("{}", to_json(&r, "WhoAmIResponse")?),
        Output::Table => println!("{} (role {}, by {})", r.principal, driftwatch_proto::role_name(r.role), r.method),
    }
    Ok(())
}

/// Write `text` to a new file with `mode` (an existing file is not overwritten: it may
/// be another operator's key).
fn write_file(path: &Path, text: &str, mode: u32) -> anyhow::Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .with_context(|| format!("{}: cannot create (it is not overwritten if it exists)", path.display()))?;
    std::io::Write::write_all(&mut f, text.as_bytes()).with_context(|| format!("{}: write", path.display()))
}

fn kind_name(kind: i32) -> &'static str {
    match v1::CredentialKind::try_from(kind) {
        Ok(v1::CredentialKind::Certificate) => "certificate",
        _ => "token",
    }
}

/// `active`, `revoked` or `expired`, at `now_ms`.
pub fn credential_state(c: &v1::Credential, now_ms: i64) -> &'static str {
    if c.revoked_at.is_some() {
        "revoked"
    } else if c.expires_at.as_ref().is_some_and(|e| driftwatch_proto::timestamp_millis(e) <= now_ms) {
        "expired"
    } else {
        "active"
    }
}

pub fn credentials_table(creds: &[v1::Credential], now_ms: i64) -> String {
    if creds.is_empty() {
        return "no tokens or operator certificates\n".into();
    }
    let dash = |s: &str| if s.is_empty() { "-".to_string() } else { s.to_string() };
    let rows: Vec<Vec<String>> = creds
        .iter()
        .map(|c| {
            vec![
                c.id.clone(),
                kind_name(c.kind).into(),
                c.name.clone(),
                driftwatch_proto::role_name(c.role).into(),
                credential_state(c, now_ms).into(),
                c.expires_at.as_ref().map(until).unwrap_or_else(|| "never".into()),
                ts(&c.created_at),
                dash(&c.actor),
                dash(&c.reason),
            ]
        })
        .collect();
    table(&["ID", "KIND", "NAME", "ROLE", "STATE", "EXPIRES", "CREATED", "BY", "REASON"], &rows)
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Debug, Parser)]
    struct T {
        #[command(subcommand)]
        cmd: TokenCmd,
    }

    fn create(args: &[&str]) -> anyhow::Result<v1::CreateTokenRequest> {
        let t = T::try_parse_from(["token", "create"].iter().chain(args.iter()))?;
        let TokenCmd::Create(a) = t.cmd else { panic!() };
        token_request(&a)
    }

    #[test]
    fn create_checks_the_role_and_ttl_before_sending() {
        let r = create(&["--role", "Responder", "--name", "alice", "--ttl", "8h", "--reason", "on call"]).unwrap();
        assert_eq!((r.name.as_str(), r.role, r.reason.as_str()), ("alice", v1::Role::Responder as i32, "on call"));
        assert_eq!(r.ttl, Some(prost_types::Duration { seconds: 8 * 3600, nanos: 0 }));
        assert_eq!(create(&["--role", "admin", "--name", "ci"]).unwrap().ttl, None);
        let e = create(&["--role", "root", "--name", "x"]).unwrap_err().to_string();
        assert!(e.contains("--role \"root\"") && e.contains("viewer, responder, operator or admin"), "{e}");
        assert!(create(&["--role", "viewer", "--name", "x", "--ttl", "5"]).unwrap_err().to_string().contains("--ttl"));
        assert!(create(&["--role", "viewer"]).is_err(), "--name is required");
    }

    #[test]
    fn the_table_shows_kind_role_and_state() {
        let now = 1_700_000_000_000;
        let at = |ms: i64| Some(driftwatch_proto::timestamp_from_millis(ms));
        let c = v1::Credential {
            id: "00aa".into(),
            kind: v1::CredentialKind::Token as i32,
            name: "alice".into(),
            role: v1::Role::Viewer as i32,
            ..Default::default()
        };
        assert_eq!(credential_state(&c, now), "active");
        assert_eq!(credential_state(&v1::Credential { expires_at: at(now), ..c.clone() }, now), "expired");
        assert_eq!(credential_state(&v1::Credential { revoked_at: at(now - 1), ..c.clone() }, now), "revoked");
        let cert = v1::Credential { kind: v1::CredentialKind::Certificate as i32, ..c.clone() };
        let text = credentials_table(&[c, cert], now);
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[1].contains("token") && lines[1].contains("alice") && lines[1].contains("viewer"), "{text}");
        assert!(lines[2].contains("certificate") && lines[2].contains("never"), "{text}");
        assert_eq!(credentials_table(&[], now), "no tokens or operator certificates\n");
    }

    #[test]
    fn keys_are_written_private_and_never_over_an_existing_file() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("alice.key");
        write_file(&p, "KEY", 0o600).unwrap();
        assert_eq!(std::fs::metadata(&p).unwrap().permissions().mode() & 0o777, 0o600);
        let e = write_file(&p, "OTHER", 0o600).unwrap_err();
        assert!(format!("{e:#}").contains("not overwritten"), "{e:#}");
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "KEY");
    }
}
