//! A planted canary secret must appear nowhere on the server side: not in any
//! query response, not in the database files, not in any log line (trace level),
//! and not in the agent's spool either.

use std::io::Write;
use std::path::Path;
use std::sync::Arc;

use parking_lot::Mutex;

use driftwatch_proto::v1::{self, value::Kind};
use driftwatch_tests::*;

#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

const CANARIES: [&str; 7] = [
    "CanaryPw-7f3a9b2c1d-env",
    "CanaryPw-0a1b2c3d4e-yaml",
    "CanaryPw-5f6e7d8c9b-ini",
    "CanaryPw-1234abcd99-json",
    "CanaryPw-feedbeef42-toml",
    "hf_CanaryTokenZyXwVuTsRqPoNmLkJiHgFeDcBa",
    "CanaryPw-deadc0de77-broken",
];

fn scan(what: &str, haystack: &[u8]) {
    for c in CANARIES {
        assert!(!haystack.windows(c.len()).any(|w| w == c.as_bytes()), "canary {c} leaked into {what}");
    }
}

fn scan_dir(dir: &Path) -> usize {
    let mut n = 0;
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            n += scan_dir(&p);
        } else if !p.ends_with("fleet.key") {
            scan(&p.display().to_string(), &std::fs::read(&p).unwrap());
            n += 1;
        }
    }
    n
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn canary_secrets_never_leave_the_parser() {
    let logs = Capture::default();
    let sink = logs.clone();
    tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(move || sink.clone())
        .with_ansi(false)
        .init();

    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("etc");
    std::fs::create_dir_all(&cfg).unwrap();
    let [env, yaml, ini, json, toml, token, broken] = CANARIES;
    std::fs::write(cfg.join(".env"), format!("DB_PASSWORD={env}\nPORT=8080\n")).unwrap();
    std::fs::write(
        cfg.join("app.yaml"),
        format!("db:\n  url: postgresql://app:{yaml}@db.internal:5432/app\n  pool: 5\nhf: {token}\n"),
    )
    .unwrap();
    std::fs::write(cfg.join("legacy.ini"), format!("[database]\nhost = db\npassword = {ini}\n")).unwrap();
    std::fs::write(cfg.join("svc.json"), format!("{{\"service\": {{\"api_key\": \"{json}\", \"port\": 1}}}}")).unwrap();
    std::fs::write(cfg.join("m.toml"), format!("[auth]\ntoken = \"{toml}\"\n")).unwrap();
    // The secret sits on the line that fails to parse: the error message must not echo it.
    std::fs::write(cfg.join("broken.yaml"), format!("ok: 1\npassword: \"{broken}\n  - : [\n")).unwrap();

    let server = start_server(&dir.path().join("server")).await;
    let agent =
        start_agent(agent_config(&server, "canary-host", &dir.path().join("agent"), &[format!("{}/*", cfg.display())]))
            .await;
    let mut c = fleet_client(&server).await;

    let f = wait_file(&mut c, "canary-host", &cfg.join(".env"), ".env", |s| !s.keys.is_empty()).await;
    let before = match key(f.state.as_ref().unwrap(), "DB_PASSWORD").and_then(|v| v.kind.clone()) {
        Some(Kind::Masked(m)) => m.fingerprint,
        other => panic!("DB_PASSWORD not masked: {other:?}"),
    };
    for (name, k) in [
        ("app.yaml", "db.url"),
        ("app.yaml", "hf"),
        ("legacy.ini", "database.password"),
        ("svc.json", "service.api_key"),
        ("m.toml", "auth.token"),
    ] {
        let f = wait_file(&mut c, "canary-host", &cfg.join(name), name, |s| !s.keys.is_empty()).await;
        assert!(
            matches!(key(f.state.as_ref().unwrap(), k).and_then(|v| v.kind.as_ref()), Some(Kind::Masked(_))),
            "{name} {k} not masked"
        );
    }
    let b = wait_file(&mut c, "canary-host", &cfg.join("broken.yaml"), "broken", |s| s.error.is_some()).await;
    assert_eq!(b.state.as_ref().unwrap().status, v1::FileStatus::ParseError as i32);

    // A changed secret is still detected as a change (different fingerprint).
    std::fs::write(cfg.join(".env"), format!("DB_PASSWORD={env}-rotated\nPORT=8080\n")).unwrap();
    let f = wait_file(&mut c, "canary-host", &cfg.join(".env"), "rotated", |s| {
        matches!(key(s, "DB_PASSWORD").and_then(|v| v.kind.as_ref()), Some(Kind::Masked(m)) if m.fingerprint != before)
    })
    .await;
    drop(f);

    // Every query response.
    let hosts = c.list_hosts(v1::ListHostsRequest::default()).await.unwrap().into_inner();
    scan("ListHosts", format!("{hosts:?}").as_bytes());
    let host = c.get_host(v1::GetHostRequest { host_id: "canary-host".into() }).await.unwrap().into_inner();
    scan("GetHost", format!("{host:?}").as_bytes());
    for f in &host.files {
        let r = c
            .get_file(v1::GetFileRequest { host_id: "canary-host".into(), path: f.path.clone() })
            .await
            .unwrap()
            .into_inner();
        scan(&format!("GetFile {}", f.path), format!("{r:?}").as_bytes());
    }

    agent.stop().await.unwrap();
    server.stop().await.unwrap();
    // The database (with its WAL), the agent's spool, and every log line.
    let n = scan_dir(&dir.path().join("server"));
    assert!(n >= 1, "database files scanned");
    scan_dir(&dir.path().join("agent"));
    let captured = logs.0.lock().clone();
    assert!(captured.len() > 1000, "trace logging captured ({} bytes)", captured.len());
    scan("logs", &captured);
}
