//! Notifiers end to end: a real agent watches a copy of the web2img fixture, the
//! test edits `BROWSER_POOL_MAX_SIZE` past the example rule's limit (20) and back,
//! and a webhook receiver (an HTTP server in the test) or a real Alertmanager sees
//! the alert fire and resolve. Also: a receiver failing its first calls (backoff,
//! exactly one successful delivery per event), undelivered notifications
//! surviving a server restart, and webhooks over TLS (a receiver with its own CA,
//! a client certificate, an `Authorization` header, a URL that is a secret).
//! Receivers that come back: a real Alertmanager SIGKILLed and restarted blank in
//! the middle of an incident, and a webhook receiver away for minutes.
//!
//! The long outage's full form (2 minutes away; CI runs 15 s):
//! `DRIFTWATCH_RECEIVER_DOWN_SECS=120 cargo test -p driftwatch-tests --test notify -- --nocapture a_webhook_receiver_away`

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use driftwatch_proto::v1::{self, alerts_client::AlertsClient};
use driftwatch_server::{RunningServer, ServerConfig};
use driftwatch_tests::test_ca::TestCa;
use driftwatch_tests::webhook::{Hit, Receiver};
use driftwatch_tests::*;
use hmac::{Hmac, Mac};
use serde_json::Value as Json;
use sha2::Sha256;

const RULE: &str = "browser-pool-max-size-above-20";
/// A second rule of the example set, on another key of the same file.
const WORKERS_RULE: &str = "workers-above-12";
const WEB: &[(&str, &str)] = &[("env", "production"), ("service", "web2img")];
const WAIT: Duration = Duration::from_secs(20);
const SECRET: &str = "webhook-test-secret";

struct Env {
    dir: tempfile::TempDir,
    cfg: ServerConfig,
    server: RunningServer,
    agent: Option<driftwatch_agent::RunningAgent>,
    file: PathBuf,
    original: Vec<u8>,
}

/// `[[notifiers]]` tables through the server's own config loading and validation.
fn notifiers(toml_text: &str) -> Vec<driftwatch_server::notify::NotifierConfig> {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("server.toml");
    std::fs::write(&p, format!("insecure = true\n{toml_text}")).unwrap();
    let file = ServerConfig::load_file(&p).unwrap();
    ServerConfig::resolve(file, "server.toml").unwrap().notifiers
}

/// A server with the example rules and `notifiers`, on a fixed port, and a real
/// agent (labels env=production, service=web2img) watching the web2img fixture.
async fn setup(notifier_toml: impl FnOnce(&Path) -> String) -> Env {
    setup_linked(notifier_toml, None).await
}

/// [`setup`] with `external_url` set: notifications link to the dashboard under it.
async fn setup_linked(notifier_toml: impl FnOnce(&Path) -> String, external_url: Option<&str>) -> Env {
    let dir = tempfile::tempdir().unwrap();
    let configs = dir.path().join("configs");
    copy_fixtures(&configs);
    let file = configs.join("web2img/.env.production");
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let original = std::fs::read(&file).unwrap();
    let mut cfg = ServerConfig::for_tests(dir.path().join("server"));
    cfg.rules = Some(example_configs().join("../rules"));
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    cfg.listen = format!("127.0.0.1:{port}").parse().unwrap();
    cfg.notifiers = notifiers(&notifier_toml(dir.path()));
    cfg.external_url = external_url.map(|u| driftwatch_server::notify::links::check_external_url(u).unwrap());
    let server = start_server_with(cfg.clone()).await;
    let mut acfg = agent_config(&server, "web-1", &dir.path().join("agent"), &[file.display().to_string()]);
    acfg.labels = WEB.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    let agent = start_agent(acfg).await;
    let mut fleet = fleet_client(&server).await;
    wait_file(&mut fleet, "web-1", &file, "parsed", |s| !s.keys.is_empty()).await;
    server.engine.flush().await.unwrap();
    Env { dir, cfg, server, agent: Some(agent), file, original }
}

/// Replace the file the way editors do, mode 0600 throughout.
fn write_0600(p: &Path, content: &[u8]) {
    let tmp = p.with_extension("dwtmp");
    std::fs::write(&tmp, content).unwrap();
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::rename(&tmp, p).unwrap();
}

impl Env {
    /// The fixture with each (key, value) of `edits` set; `&[]` is the original.
    fn set(&self, edits: &[(&str, &str)]) {
        let mut text = String::from_utf8(self.original.clone()).unwrap();
        for (key, value) in edits {
            let prefix = format!("{key}=");
            let line =
                text.lines().find(|l| l.starts_with(&prefix)).unwrap_or_else(|| panic!("no {key} in the fixture"));
            text = text.replacen(&line.to_string(), &format!("{prefix}{value}"), 1);
        }
        write_0600(&self.file, text.as_bytes());
    }

    /// BROWSER_POOL_MAX_SIZE 12 → 30: `RULE` fires.
    fn break_it(&self) {
        assert!(String::from_utf8_lossy(&self.original).contains("BROWSER_POOL_MAX_SIZE=12\n"), "fixture changed?");
        self.set(&[("BROWSER_POOL_MAX_SIZE", "30")]);
    }

    fn restore(&self) {
        self.set(&[]);
    }

    /// The first event of `rule` and `kind` after event `after`, waiting for it.
    async fn wait_event(&self, rule: &str, kind: v1::AlertEventKind, after: u64) -> v1::AlertEvent {
        let c = self.alerts().await;
        wait_for(&format!("a {kind:?} event of {rule}"), WAIT, || {
            let mut c = c.clone();
            async move {
                let events =
                    c.list_events(v1::ListEventsRequest { after_id: after, limit: 0 }).await.ok()?.into_inner().events;
                events.into_iter().find(|e| e.kind == kind as i32 && e.alert.as_ref().is_some_and(|a| a.rule == rule))
            }
        })
        .await
    }

    /// Every fired and resolved event of `rules` after event `after`, in id order.
    async fn events_of(&self, rules: &[&str], after: u64) -> Vec<v1::AlertEvent> {
        let req = v1::ListEventsRequest { after_id: after, limit: 0 };
        let events = self.alerts().await.list_events(req).await.unwrap().into_inner().events;
        let kinds = [v1::AlertEventKind::Fired as i32, v1::AlertEventKind::Resolved as i32];
        events
            .into_iter()
            .filter(|e| kinds.contains(&e.kind) && e.alert.as_ref().is_some_and(|a| rules.contains(&a.rule.as_str())))
            .collect()
    }

    async fn alerts(&self) -> AlertsClient<tonic::transport::Channel> {
        let ch = tonic::transport::Endpoint::from_shared(format!("http://{}", self.server.grpc_addr))
            .unwrap()
            .connect()
            .await
            .unwrap();
        AlertsClient::new(ch)
    }

    async fn firing_alert(&self) -> v1::Alert {
        let mut c = self.alerts().await;
        wait_for("the alert to fire", WAIT, || {
            let mut c = c.clone();
            async move {
                let list = c
                    .list_alerts(v1::ListAlertsRequest {
                        states: vec![v1::AlertState::Firing as i32],
                        rule: RULE.into(),
                        ..Default::default()
                    })
                    .await
                    .ok()?
                    .into_inner()
                    .alerts;
                list.into_iter().next()
            }
        })
        .await;
        c.list_alerts(v1::ListAlertsRequest { rule: RULE.into(), ..Default::default() })
            .await
            .unwrap()
            .into_inner()
            .alerts
            .remove(0)
    }

    async fn stop(mut self) {
        if let Some(a) = self.agent.take() {
            a.stop().await.unwrap();
        }
        self.server.stop().await.unwrap();
    }
}

fn webhook_toml(url: &str, dir: &Path, extra: &str) -> String {
    webhook_toml_with(&format!("url = \"{url}\""), dir, extra)
}

/// The webhook with `url_line` (`url = ...` or `url_file = ...`), for `RULE`'s alerts.
fn webhook_toml_with(url_line: &str, dir: &Path, extra: &str) -> String {
    webhook_toml_matching(url_line, &format!("alertname={RULE}"), dir, extra)
}

/// The webhook with `url_line`, for the alerts `matcher` takes.
fn webhook_toml_matching(url_line: &str, matcher: &str, dir: &Path, extra: &str) -> String {
    let secret = dir.join("hook.key");
    std::fs::write(&secret, format!("{SECRET}\n")).unwrap();
    format!(
        "[[notifiers]]\nname = \"hook\"\nkind = \"webhook\"\n{url_line}\nsecret_file = \"{}\"\n\
         matchers = [\"{matcher}\"]\nselector = \"env=production\"\nmin_severity = \"high\"\n{extra}",
        secret.display()
    )
}

fn check_signature(h: &Hit) {
    let mut mac = Hmac::<Sha256>::new_from_slice(SECRET.as_bytes()).unwrap();
    mac.update(&h.body);
    let want = format!("sha256={}", hex::encode(mac.finalize().into_bytes()));
    assert_eq!(h.signature, want, "signature over the raw body with the configured secret");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_sees_the_alert_fire_and_resolve_signed() {
    let rx = Receiver::start(0).await;
    let env = setup(|dir| webhook_toml(&rx.url, dir, "")).await;
    env.break_it();
    let fired = rx.wait_delivered("fired").await;
    let alert = env.firing_alert().await;
    // How fast it arrives is measured by `driftwatch-sim notify`, not asserted here.
    check_signature(&fired);
    let j = &fired.json;
    assert_eq!(j["version"], "1");
    assert_eq!(j["notifier"], "hook");
    assert_eq!(j["repeat"], 0);
    assert_eq!(j["attempt"], 1);
    assert_eq!(fired.event_id, j["event_id"].as_u64().unwrap().to_string());
    assert_eq!(fired.idempotency_key, fired.event_id);
    let a = &j["alert"];
    assert_eq!(a["rule"], RULE);
    assert_eq!(a["fingerprint"], alert.fingerprint.as_str());
    assert_eq!(a["host"], "web-1");
    assert_eq!(a["key"], "BROWSER_POOL_MAX_SIZE");
    assert_eq!(a["path"], env.file.display().to_string());
    assert_eq!(a["severity"], "high");
    assert_eq!(a["state"], "firing");
    assert_eq!(a["value"], 30);
    assert_eq!(a["labels"]["env"], "production");
    assert_eq!(a["labels"]["service"], "web2img");
    assert_eq!(a["labels"]["alertname"], RULE);
    assert!(a["annotations"]["summary"].as_str().unwrap().contains("30"), "{a}");
    assert!(a["fired_at"].is_string() && a["resolved_at"].is_null());

    env.restore();
    let resolved = rx.wait_delivered("resolved").await;
    check_signature(&resolved);
    assert!(resolved.json["event_id"].as_u64() > fired.json["event_id"].as_u64());
    assert_eq!(resolved.json["alert"]["state"], "resolved");
    assert!(resolved.json["alert"]["resolved_at"].is_string());
    assert_eq!(rx.hits().len(), 2, "one request per event: {:#?}", rx.hits());

    // Recorded right after the receiver answered.
    let status = wait_for("both deliveries recorded", WAIT, || async {
        let st = env.server.notifiers.status();
        (st[0].delivered == 2).then_some(st)
    })
    .await;
    assert_eq!(status.len(), 1);
    let s = &status[0];
    assert_eq!((s.name.as_str(), s.kind.as_str(), s.url.as_str()), ("hook", "webhook", rx.url.as_str()));
    assert_eq!((s.delivered, s.failed_attempts, s.circuit.as_str()), (2, 0, "closed"));
    assert!(s.last_success.is_some() && s.last_failure.is_none());
    // The same through the API.
    let listed = env.alerts().await.list_notifiers(v1::ListNotifiersRequest {}).await.unwrap().into_inner().notifiers;
    assert_eq!(listed.len(), 1);
    assert_eq!((listed[0].name.as_str(), listed[0].delivered), ("hook", 2));
    let metrics = env.server.metrics.render();
    assert!(metrics.contains("driftwatch_notifications_delivered_total{notifier=\"hook\""), "{metrics}");
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_receiver_gets_retries_with_growing_gaps_and_one_success_per_event() {
    const FAILS: usize = 3;
    let rx = Receiver::start(FAILS).await;
    let env = setup(|dir| webhook_toml(&rx.url, dir, "backoff = \"300ms\"\nmax_backoff = \"10s\"\n")).await;
    env.break_it();
    let fired = rx.wait_delivered("fired").await;
    let tries: Vec<Hit> = rx.hits().into_iter().filter(|h| h.event_id == fired.event_id).collect();
    assert_eq!(tries.len(), FAILS + 1, "{tries:#?}");
    assert!(tries[..FAILS].iter().all(|h| h.status == 503) && tries[FAILS].status == 200);
    for (i, h) in tries.iter().enumerate() {
        assert_eq!(h.json["attempt"], i + 1, "attempt numbers count up");
        assert_eq!(h.idempotency_key, fired.idempotency_key, "one key for every attempt");
        check_signature(h);
    }
    let gaps: Vec<Duration> = tries.windows(2).map(|w| w[1].at - w[0].at).collect();
    println!("gaps between attempts: {gaps:?}");
    // Retry n waits at least half of 300ms · 2^(n-1) (jittered into the step's upper half):
    // the floor doubles with every retry, so the backoff grows. (Upper bounds on the gaps
    // are not asserted: a loaded machine may deliver any attempt late.)
    for (i, g) in gaps.iter().enumerate() {
        let step = Duration::from_millis(300) * 2u32.pow(i as u32);
        assert!(*g >= step / 2, "gap {i}: {g:?} below {:?}", step / 2);
    }

    env.restore();
    rx.wait_delivered("resolved").await;
    // Nothing is left to send (no retry pending): exactly one success per event.
    wait_for("the outbox to drain", WAIT, || async {
        env.server.notifiers.status().iter().all(|s| s.pending == 0).then_some(())
    })
    .await;
    let mut per_event = std::collections::BTreeMap::<String, usize>::new();
    for h in rx.hits().iter().filter(|h| h.status == 200) {
        *per_event.entry(h.event_id.clone()).or_default() += 1;
    }
    assert_eq!(per_event.len(), 2, "{per_event:?}");
    assert!(per_event.values().all(|n| *n == 1), "exactly one successful delivery per event: {per_event:?}");
    let s = &env.server.notifiers.status()[0];
    assert_eq!((s.delivered, s.failed_attempts, s.pending), (2, FAILS as u64, 0));
    assert!(s.last_error.contains("503"), "{s:?}");
    assert!(s.last_failure.is_some() && s.last_success.is_some());
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn undelivered_notifications_survive_a_restart_and_go_out_once() {
    let rx = Receiver::start(0).await;
    rx.state.down.store(true, Ordering::SeqCst);
    let mut env = setup(|dir| webhook_toml(&rx.url, dir, "backoff = \"200ms\"\nmax_backoff = \"2s\"\n")).await;
    env.break_it();
    let failed = wait_for("a failed attempt", WAIT, || async { rx.hits().into_iter().next() }).await;
    assert_eq!(failed.status, 503);
    assert_eq!(failed.json["kind"], "fired");

    // Stop everything while the receiver is down: the notification waits in the store.
    if let Some(a) = env.agent.take() {
        a.stop().await.unwrap();
    }
    let cfg = env.cfg.clone();
    let Env { server, dir, .. } = env;
    server.stop().await.unwrap();
    let db = cfg.sqlite_path();
    let rows = driftwatch_store::Store::open(&db).unwrap().outbox_rows("hook").unwrap();
    assert_eq!(rows.len(), 1, "{rows:#?}");
    assert!(rows[0].delivered_ms.is_none() && rows[0].attempts >= 1, "{rows:#?}");
    assert!(rows[0].last_error.contains("503"), "{rows:#?}");

    rx.state.down.store(false, Ordering::SeqCst);
    let failures_before = rx.hits().len();
    let server = start_server_with(cfg.clone()).await;
    let delivered = rx.wait_delivered("fired").await;
    assert_eq!(delivered.event_id, failed.event_id);
    assert!(delivered.json["attempt"].as_u64().unwrap() > 1, "attempts continue across the restart");
    wait_for("the outbox to drain", WAIT, || async {
        server.notifiers.status().iter().all(|s| s.pending == 0).then_some(())
    })
    .await;
    let after: Vec<Hit> = rx.hits()[failures_before..].to_vec();
    assert_eq!(after.len(), 1, "delivered exactly once after the restart: {after:#?}");
    let rows = driftwatch_store::Store::open(&db).unwrap().outbox_rows("hook").unwrap();
    assert!(rows[0].delivered_ms.is_some(), "{rows:#?}");
    assert_eq!(server.notifiers.status()[0].pending, 0);
    server.stop().await.unwrap();
    drop(dir);
}

/// A real Alertmanager on loopback ports, killed on drop.
struct Alertmanager {
    child: std::process::Child,
    url: String,
    port: u16,
    dir: tempfile::TempDir,
    /// Starts so far; each start has its own storage dir.
    starts: u32,
}

impl Drop for Alertmanager {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

const AM_BIN: &str = "/usr/bin/prometheus-alertmanager";

impl Alertmanager {
    async fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("alertmanager.yml"),
            "route:\n  receiver: blackhole\n  group_wait: 1s\nreceivers:\n  - name: blackhole\n",
        )
        .unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let child = Self::spawn(dir.path(), port, 1);
        let mut am = Alertmanager { child, url: format!("http://127.0.0.1:{port}"), port, dir, starts: 1 };
        am.wait_ready().await;
        am
    }

    /// Start number `n` on `port`, storage in `data-<n>`, output appended to `alertmanager.log`.
    fn spawn(dir: &Path, port: u16, n: u32) -> std::process::Child {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(dir.join("alertmanager.log")).unwrap();
        std::process::Command::new(AM_BIN)
            .arg(format!("--config.file={}", dir.join("alertmanager.yml").display()))
            .arg(format!("--storage.path={}", dir.join(format!("data-{n}")).display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            // Empty: no cluster (no gossip port, no peers).
            .arg("--cluster.listen-address=")
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start prometheus-alertmanager")
    }

    async fn wait_ready(&mut self) {
        let client = reqwest::Client::new();
        let ready = format!("{}/-/ready", self.url);
        let log = self.dir.path().join("alertmanager.log");
        wait_for("alertmanager to be ready", WAIT, || {
            if let Ok(Some(exit)) = self.child.try_wait() {
                panic!("alertmanager exited ({exit}):\n{}", std::fs::read_to_string(&log).unwrap_or_default());
            }
            let (client, ready) = (client.clone(), ready.clone());
            async move { client.get(&ready).send().await.ok().filter(|r| r.status().is_success()).map(|_| ()) }
        })
        .await;
    }

    /// SIGKILL (no shutdown: nothing saved, every alert it held is gone), then start
    /// again on the same port with an empty storage dir: a blank instance, as after a
    /// crash that lost its volume. (Alertmanager keeps alerts in memory only; the fresh
    /// dir makes the loss certain whatever a version persists.)
    async fn kill_and_restart(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
        self.starts += 1;
        self.child = Self::spawn(self.dir.path(), self.port, self.starts);
        self.wait_ready().await;
    }
}

/// The alerts Alertmanager lists (active ones: resolved alerts are not listed).
async fn am_alerts(url: &str) -> Vec<Json> {
    let resp = reqwest::Client::new().get(format!("{url}/api/v2/alerts")).send().await.unwrap();
    let body = resp.bytes().await.unwrap();
    serde_json::from_slice::<Vec<Json>>(&body).unwrap()
}

/// `RULE`'s alert as Alertmanager lists it, if it does.
async fn am_rule_alert(url: &str) -> Option<Json> {
    am_alerts(url).await.into_iter().find(|a| a["labels"]["alertname"] == RULE)
}

/// An Alertmanager notifier for `RULE`'s alerts.
fn alertmanager_toml(url: &str, resend_interval: &str) -> String {
    format!(
        "[[notifiers]]\nname = \"am\"\nkind = \"alertmanager\"\nurls = [\"{url}\"]\nmatchers = [\"alertname={RULE}\"]\n\
         resend_interval = \"{resend_interval}\"\n"
    )
}

fn alertmanager_installed() -> bool {
    driftwatch_tests::outside_program(
        "prometheus-alertmanager",
        Path::new(AM_BIN).exists(),
        "apt-get install -y prometheus-alertmanager",
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_alertmanager_gets_the_alert_and_its_resolution() {
    if !alertmanager_installed() {
        return;
    }
    let am = Alertmanager::start().await;
    // Every channel at once, as the issue's first test asks: a subscriber, a webhook and
    // a real Alertmanager all see the alert fire, then resolve.
    let rx = Receiver::start(0).await;
    // resend_interval 1m: endsAt is 4 minutes ahead, so the alert leaving the active
    // list within seconds can only be our resolution.
    let env = setup_linked(
        |dir| format!("{}{}", alertmanager_toml(&am.url, "1m"), webhook_toml(&rx.url, dir, "")),
        Some("https://grafana.example.com/ops/"),
    )
    .await;
    let mut sub = env
        .alerts()
        .await
        .subscribe(v1::SubscribeRequest {
            rules: vec![RULE.into()],
            heartbeat_interval: Some(driftwatch_proto::duration::seconds(1)),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    env.break_it();
    let alert = env.firing_alert().await;
    let active = wait_for("Alertmanager to list the alert", WAIT, || am_rule_alert(&am.url)).await;
    assert_eq!(active["status"]["state"], "active", "{active:#}");
    let labels = &active["labels"];
    assert_eq!(labels["severity"], "high");
    assert_eq!(labels["env"], "production");
    assert_eq!(labels["service"], "web2img");
    assert_eq!(labels["host"], "web-1");
    assert_eq!(labels["key"], "BROWSER_POOL_MAX_SIZE");
    assert!(active["annotations"]["summary"].as_str().unwrap().contains("30"), "{active:#}");
    // external_url: the alert's host on the dashboard, Alertmanager's "Source" link.
    let link = "https://grafana.example.com/ops/d/driftwatch/driftwatch?var-host=web-1";
    assert_eq!(active["generatorURL"], link, "{active:#}");
    assert_eq!(alert.host_id, "web-1");

    env.restore();
    wait_for("Alertmanager to see the resolution", WAIT, || async {
        am_rule_alert(&am.url).await.is_none().then_some(())
    })
    .await;
    let s = wait_for("fired and resolved delivered through the outbox", WAIT, || async {
        env.server.notifiers.status().into_iter().find(|s| s.delivered >= 2 && s.pending == 0)
    })
    .await;
    assert_eq!((s.kind.as_str(), s.url.as_str()), ("alertmanager", am.url.as_str()));
    // The webhook and the subscriber saw the same two events.
    let fired = rx.wait_delivered("fired").await;
    let resolved = rx.wait_delivered("resolved").await;
    assert_eq!(fired.json["link"], link, "the webhook body links to the same place");
    let mut kinds = Vec::new();
    while kinds.len() < 2 {
        let m = tokio::time::timeout(WAIT, tokio_stream::StreamExt::next(&mut sub)).await.unwrap().unwrap().unwrap();
        if let Some(v1::subscribe_response::Kind::Event(e)) = m.kind {
            kinds.push((e.id, e.kind));
        }
    }
    assert_eq!(
        kinds,
        vec![
            (fired.json["event_id"].as_u64().unwrap(), v1::AlertEventKind::Fired as i32),
            (resolved.json["event_id"].as_u64().unwrap(), v1::AlertEventKind::Resolved as i32),
        ]
    );
    env.stop().await;
}

/// How often the restart test's notifier re-sends firing alerts: the bound on how
/// long a blank Alertmanager goes without an alert that is still firing.
const AM_RESEND: Duration = Duration::from_secs(5);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_alertmanager_restarted_blank_mid_incident_gets_the_firing_alert_again_then_its_resolution() {
    if !alertmanager_installed() {
        return;
    }
    let mut am = Alertmanager::start().await;
    let env = setup(|_| alertmanager_toml(&am.url, &format!("{}s", AM_RESEND.as_secs()))).await;
    env.break_it();
    let alert = env.firing_alert().await;
    let fired = env.wait_event(RULE, v1::AlertEventKind::Fired, 0).await;
    let before = wait_for("Alertmanager to list the alert", WAIT, || am_rule_alert(&am.url)).await;
    wait_for("the fired notification delivered", WAIT, || async {
        env.server.notifiers.status().into_iter().find(|s| s.delivered >= 1 && s.pending == 0)
    })
    .await;

    let killed = Instant::now();
    am.kill_and_restart().await;
    let ready_after = killed.elapsed();
    // Usually still empty here: the alert comes back with the next resend pass.
    let listed_at_ready = am_rule_alert(&am.url).await.is_some();
    // Nothing new happens to the alert: only the server's resends can bring it back.
    let again =
        wait_for("the firing alert in the restarted Alertmanager", AM_RESEND * 4 + WAIT, || am_rule_alert(&am.url))
            .await;
    let back_after = killed.elapsed();
    println!(
        "alertmanager SIGKILLed and restarted blank: ready after {ready_after:?}, alert listed at ready: \
         {listed_at_ready}, alert back after {back_after:?} (resend_interval {AM_RESEND:?})"
    );
    assert_eq!(again["status"]["state"], "active", "{again:#}");
    assert_eq!(again["labels"], before["labels"], "the same alert");
    assert_eq!(again["startsAt"], before["startsAt"], "the same firing episode, not a new one");
    // No external_url: no link to give (generatorURL is optional in Alertmanager's API).
    assert!(again.get("generatorURL").is_none_or(|g| g == ""), "{again:#}");
    assert!(!alert.fingerprint.is_empty());
    let ends_at = |a: &Json| a["endsAt"].as_str().unwrap().to_string();
    assert!(ends_at(&again) > ends_at(&before), "a later resend: {} then {}", ends_at(&before), ends_at(&again));

    // Resolved after the restart: the restarted instance hears it, through the outbox.
    env.restore();
    let resolved = env.wait_event(RULE, v1::AlertEventKind::Resolved, 0).await;
    wait_for("Alertmanager to see the resolution", WAIT, || async {
        am_rule_alert(&am.url).await.is_none().then_some(())
    })
    .await;
    let key = format!("am@{}", am.url);
    let rows = wait_for("the resolved notification delivered", WAIT, || async {
        let rows = driftwatch_store::Store::open(&env.cfg.sqlite_path()).unwrap().outbox_rows(&key).unwrap();
        rows.iter().all(|r| r.delivered_ms.is_some()).then_some(rows)
    })
    .await;
    let kinds: Vec<(&str, u64)> = rows.iter().map(|r| (r.kind.as_str(), r.event_id)).collect();
    assert_eq!(kinds, vec![("fired", fired.id), ("resolved", resolved.id)], "{rows:#?}");
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_delays_but_keeps_every_event_in_order() {
    let rx = Receiver::start(0).await;
    rx.state.down.store(true, Ordering::SeqCst);
    let extra = "backoff = \"100ms\"\nmax_backoff = \"400ms\"\nbreaker_failures = 2\nbreaker_cooldown = \"500ms\"\n";
    let env = setup(|dir| webhook_toml(&rx.url, dir, extra)).await;
    env.break_it();
    wait_for("failed attempts", WAIT, || async { (rx.hits().len() >= 2).then_some(()) }).await;
    // Resolved while the receiver is down: queued behind the fired notification.
    env.restore();
    wait_for("the circuit to open", WAIT, || async {
        let s = env.server.notifiers.status().remove(0);
        (s.circuit == "open" && s.pending == 2).then_some(())
    })
    .await;
    assert!(rx.hits().iter().all(|h| h.json["kind"] == "fired"), "nothing about the alert jumps the queue");
    rx.state.down.store(false, Ordering::SeqCst);
    rx.wait_delivered("resolved").await;
    let ok: Vec<Hit> = rx.hits().into_iter().filter(|h| h.status == 200).collect();
    let kinds: Vec<&str> = ok.iter().map(|h| h.json["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds, vec!["fired", "resolved"], "in event order, once each");
    // The outcome is recorded (and counted) right after the receiver answered.
    let s = wait_for("the outbox to empty", WAIT, || async {
        env.server.notifiers.status().into_iter().find(|s| s.pending == 0 && s.delivered == 2)
    })
    .await;
    assert_eq!(s.circuit, "closed");
    env.stop().await;
}

/// How long the receiver of the long-outage test is away: `DRIFTWATCH_RECEIVER_DOWN_SECS`,
/// 15 s by default (CI); the full form is 120.
fn receiver_away() -> Duration {
    let secs = std::env::var("DRIFTWATCH_RECEIVER_DOWN_SECS").ok().map(|v| {
        v.parse::<u64>().unwrap_or_else(|_| panic!("DRIFTWATCH_RECEIVER_DOWN_SECS={v:?}: a number of seconds"))
    });
    Duration::from_secs(secs.unwrap_or(15))
}

/// Longest the notifier may take, with the default retry settings (backoff doubling
/// to 1 m, circuit open for 30 s after 5 failures), to try again once the receiver answers.
const DEFAULT_RETRY_GAP: Duration = Duration::from_secs(60 + 30);

/// The receiver's listener is closed (connections refused) for the first three
/// quarters of the outage, then it answers 503 until a retry has come in. Events
/// of two alerts happen meanwhile. The notifier runs with the default retry
/// settings: it retries until `max_age` (24 h), so an outage of minutes delays but
/// drops nothing, and no operator setting is needed for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_receiver_away_for_minutes_gets_every_event_in_order_with_its_idempotency_key() {
    let away = receiver_away();
    let rx = Receiver::start(0).await;
    let matcher = format!("alertname=~{RULE}|{WORKERS_RULE}");
    let env = setup(|dir| webhook_toml_matching(&format!("url = \"{}\"", rx.url), &matcher, dir, "")).await;
    let start = env.events_of(&[RULE, WORKERS_RULE], 0).await.last().map_or(0, |e| e.id);

    rx.close().await;
    let closed = Instant::now();
    use v1::AlertEventKind::{Fired, Resolved};
    let pool = ("BROWSER_POOL_MAX_SIZE", "30");
    let workers = ("WORKERS", "16");
    // While refused: the pool alert fires and resolves, the workers alert fires, the pool alert fires again.
    env.set(&[pool]);
    let e = env.wait_event(RULE, Fired, start).await;
    env.restore();
    let e = env.wait_event(RULE, Resolved, e.id).await;
    env.set(&[workers]);
    let workers_fired = env.wait_event(WORKERS_RULE, Fired, e.id).await;
    env.set(&[workers, pool]);
    let pool_again = env.wait_event(RULE, Fired, workers_fired.id).await;
    wait_for("a refused attempt", WAIT, || async {
        env.server.notifiers.status().into_iter().find(|s| s.failed_attempts >= 1)
    })
    .await;
    // The outage itself: a duration, not a condition.
    tokio::time::sleep_until((closed + away * 3 / 4).into()).await;
    let refused_attempts = env.server.notifiers.status()[0].failed_attempts;

    rx.state.down.store(true, Ordering::SeqCst);
    rx.open().await;
    let answering_503 = Instant::now();
    // While answering 503: both alerts resolve.
    env.restore();
    env.wait_event(RULE, Resolved, pool_again.id).await;
    env.wait_event(WORKERS_RULE, Resolved, workers_fired.id).await;
    tokio::time::sleep_until((closed + away).into()).await;
    // At least one retry seen by the receiver, so a key is compared across attempts.
    wait_for("a retry answered 503", DEFAULT_RETRY_GAP + WAIT, || async {
        rx.hits().into_iter().find(|h| h.status == 503)
    })
    .await;
    let back = Instant::now();
    rx.state.down.store(false, Ordering::SeqCst);

    let expected = env.events_of(&[RULE, WORKERS_RULE], start).await;
    assert_eq!(expected.len(), 6, "fired, resolved, fired, fired, resolved, resolved: {expected:#?}");
    let ok = wait_for("every event delivered", DEFAULT_RETRY_GAP + WAIT, || async {
        let ok: Vec<Hit> = rx.hits().into_iter().filter(|h| h.status == 200).collect();
        (ok.len() >= expected.len()).then_some(ok)
    })
    .await;
    let s = wait_for("the outbox to drain", WAIT, || async {
        env.server.notifiers.status().into_iter().find(|s| s.pending == 0 && s.delivered == expected.len() as u64)
    })
    .await;
    let hits = rx.hits();
    let event_id = |h: &Hit| h.json["event_id"].as_u64().unwrap();

    // Every event exactly once, in order per alert, with its own key.
    let mut delivered: Vec<u64> = ok.iter().map(event_id).collect();
    delivered.sort_unstable();
    assert_eq!(delivered, expected.iter().map(|e| e.id).collect::<Vec<_>>(), "each event once: {ok:#?}");
    for e in &expected {
        let fp = &e.alert.as_ref().unwrap().fingerprint;
        let mine: Vec<u64> =
            ok.iter().filter(|h| h.json["alert"]["fingerprint"] == fp.as_str()).map(event_id).collect();
        assert!(mine.windows(2).all(|w| w[0] < w[1]), "alert {fp}: delivered out of order: {mine:?}");
    }
    let mut keys = std::collections::BTreeSet::new();
    for h in &ok {
        assert_eq!(h.idempotency_key, event_id(h).to_string(), "{h:#?}");
        assert_eq!(h.event_id, h.idempotency_key);
        assert!(keys.insert(h.idempotency_key.clone()), "one key per event");
        check_signature(h);
    }
    // Every attempt the receiver saw carries its event's one key.
    let retried: Vec<&Hit> = hits.iter().filter(|h| h.status == 503).collect();
    for h in &retried {
        let done = ok.iter().find(|o| event_id(o) == event_id(h)).expect("a retried event is delivered");
        assert_eq!(h.idempotency_key, done.idempotency_key, "stable across attempts");
        assert!(h.json["attempt"].as_u64() < done.json["attempt"].as_u64());
    }
    assert_eq!((s.delivered, s.pending, s.circuit.as_str()), (6, 0, "closed"), "{s:?}");
    let rows = driftwatch_store::Store::open(&env.cfg.sqlite_path()).unwrap().outbox_rows("hook").unwrap();
    assert!(rows.len() == 6 && rows.iter().all(|r| r.delivered_ms.is_some()), "nothing expired or left: {rows:#?}");

    let first_ok = ok.iter().map(|h| h.at).min().unwrap();
    let last_ok = ok.iter().map(|h| h.at).max().unwrap();
    let attempts: Vec<(u64, &str, u64)> = ok
        .iter()
        .map(|h| (event_id(h), h.json["kind"].as_str().unwrap(), h.json["attempt"].as_u64().unwrap()))
        .collect();
    println!(
        "webhook receiver away {away:?} (refused {:?}, then 503 for {:?}): {} failed attempts ({refused_attempts} while \
         refused, {} answered 503); after it answered 200 again: first delivery {:?}, all {} delivered {:?}; \
         (event, kind, attempt) in delivery order: {attempts:?}",
        answering_503 - closed,
        back - answering_503,
        s.failed_attempts,
        retried.len(),
        first_ok - back,
        ok.len(),
        last_ok - back,
    );
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_alert_still_firing_is_repeated_until_it_resolves() {
    let rx = Receiver::start(0).await;
    let env = setup(|dir| webhook_toml(&rx.url, dir, "repeat_interval = \"400ms\"\n")).await;
    env.break_it();
    let fired = rx.wait_delivered("fired").await;
    wait_for("two repeats", WAIT, || async { (rx.delivered("repeat").len() >= 2).then_some(()) }).await;
    let repeats = rx.delivered("repeat");
    assert_eq!(repeats[0].json["repeat"], 1);
    assert_eq!(repeats[1].json["repeat"], 2);
    assert_eq!(repeats[0].event_id, fired.event_id, "a repeat carries the id of the event that fired it");
    assert_eq!(repeats[0].idempotency_key, format!("{}-repeat-1", fired.event_id));
    assert_eq!(repeats[0].json["alert"]["state"], "firing");
    assert!(repeats[1].at - repeats[0].at >= Duration::from_millis(300), "about one repeat_interval apart");
    env.restore();
    let resolved = rx.wait_delivered("resolved").await;
    // Two full repeat scans after the resolution, and nothing left to send.
    let passes = env.server.notifiers.repeat_passes();
    wait_for("two repeat scans and a drained outbox", WAIT, || async {
        let n = &env.server.notifiers;
        (n.repeat_passes() >= passes + 2 && n.status().iter().all(|s| s.pending == 0)).then_some(())
    })
    .await;
    let late: Vec<Hit> = rx.delivered("repeat").into_iter().filter(|h| h.at > resolved.at).collect();
    assert!(late.is_empty(), "no repeat after the resolution: {late:#?}");
    env.stop().await;
}

/// The bearer token of the TLS tests, and the secret part of the webhook URL.
const TOKEN: &str = "tls-test-token-4f1d";
const URL_SECRET: &str = "T0PsEcReTpAtH";

/// `url_file` holding the receiver's URL with a secret query string (the receiver
/// serves `/hook` only), and `authorization_file` holding a bare token.
fn secret_url_and_token(rx: &Receiver, dir: &Path) -> String {
    let url_file = dir.join("hook.url");
    std::fs::write(&url_file, format!("{}?key={URL_SECRET}\n", rx.url)).unwrap();
    let token = dir.join("hook.token");
    std::fs::write(&token, format!("{TOKEN}\n")).unwrap();
    format!("url_file = \"{}\"\nauthorization_file = \"{}\"", url_file.display(), token.display())
}

/// What status, metrics and logs may show of the receiver's URL.
fn shown(rx: &Receiver) -> String {
    let host_port = rx.url.trim_start_matches("https://").trim_end_matches("/hook");
    format!("https://{host_port}/…")
}

fn assert_no_secret(what: &str, text: &str) {
    for secret in [TOKEN, URL_SECRET, "/hook"] {
        assert!(!text.contains(secret), "{secret} shows in the {what}: {text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_over_https_trusts_its_ca_file_and_sends_its_client_certificate_and_authorization() {
    let ca = TestCa::default();
    // The receiver requires a client certificate from the same CA (mutual TLS).
    let rx = Receiver::start_tls(0, ca.server_config(&ca.issue(&["127.0.0.1", "localhost"]), true)).await;
    let env = setup(|dir| {
        let ca_file = ca.write(dir, "ca.pem");
        let (cert, key) = ca.issue(&["driftwatch-server"]).write(dir, "client");
        let extra = format!(
            "ca_file = \"{}\"\nclient_cert = \"{}\"\nclient_key = \"{}\"\n",
            ca_file.display(),
            cert.display(),
            key.display()
        );
        webhook_toml_with(&secret_url_and_token(&rx, dir), dir, &extra)
    })
    .await;
    env.break_it();
    let fired = rx.wait_delivered("fired").await;
    check_signature(&fired);
    assert_eq!(fired.authorization, format!("Bearer {TOKEN}"), "a bare token is sent as a bearer token");
    assert_eq!(fired.json["alert"]["rule"], RULE);
    env.restore();
    let resolved = rx.wait_delivered("resolved").await;
    check_signature(&resolved);
    assert_eq!(resolved.authorization, format!("Bearer {TOKEN}"));
    let s = wait_for("both deliveries recorded", WAIT, || async {
        env.server.notifiers.status().into_iter().find(|s| s.delivered == 2)
    })
    .await;
    assert_eq!((s.failed_attempts, s.circuit.as_str()), (0, "closed"), "{s:?}");
    assert_eq!(s.url, shown(&rx), "a URL from url_file is shown as scheme and host only");
    assert_eq!(rx.handshake_failures(), 0);
    let listed = env.alerts().await.list_notifiers(v1::ListNotifiersRequest {}).await.unwrap().into_inner().notifiers;
    assert_no_secret("ListNotifiers answer", &format!("{listed:?}"));
    assert_no_secret("metrics", &env.server.metrics.render());
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_ca_file_a_receiver_with_its_own_ca_is_refused_with_a_tls_error_and_no_secret_shown() {
    let ca = TestCa::default();
    let rx = Receiver::start_tls(0, ca.server_config(&ca.issue(&["127.0.0.1", "localhost"]), false)).await;
    // The system roots do not know the test CA.
    let env = setup(|dir| {
        webhook_toml_with(&secret_url_and_token(&rx, dir), dir, "backoff = \"100ms\"\nmax_backoff = \"500ms\"\n")
    })
    .await;
    env.break_it();
    let s = wait_for("a failed delivery recorded", WAIT, || async {
        env.server.notifiers.status().into_iter().find(|s| s.failed_attempts >= 1)
    })
    .await;
    println!("last_error: {}", s.last_error);
    assert!(s.last_error.to_lowercase().contains("certificate"), "a TLS error: {s:?}");
    assert_eq!(s.delivered, 0);
    assert_eq!(s.url, shown(&rx));
    assert!(rx.hits().is_empty(), "no request got through: {:#?}", rx.hits());
    // The client gave up in the handshake (the receiver may notice a moment later).
    wait_for("the receiver to see a failed handshake", WAIT, || async { (rx.handshake_failures() >= 1).then_some(()) })
        .await;
    let listed = env.alerts().await.list_notifiers(v1::ListNotifiersRequest {}).await.unwrap().into_inner().notifiers;
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].last_error, s.last_error);
    assert_no_secret("status", &format!("{s:?}"));
    assert_no_secret("ListNotifiers answer", &format!("{listed:?}"));
    assert_no_secret("metrics", &env.server.metrics.render());
    let rows = driftwatch_store::Store::open(&env.cfg.sqlite_path()).unwrap().outbox_rows("hook").unwrap();
    assert!(rows.iter().all(|r| r.delivered_ms.is_none()), "{rows:#?}");
    assert_no_secret("outbox", &rows.iter().map(|r| r.last_error.clone()).collect::<Vec<_>>().join("\n"));
    env.stop().await;
}
