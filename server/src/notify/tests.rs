use super::*;
use crate::engine::EventRouter;

fn configs(toml_text: &str) -> Vec<NotifierConfig> {
    #[derive(serde::Deserialize)]
    struct F {
        notifiers: Vec<NotifierFile>,
    }
    let files = toml::from_str::<F>(toml_text).unwrap().notifiers;
    let (c, errs) = config::resolve(&files);
    assert!(errs.is_empty(), "{errs:?}");
    c
}

fn alert(fp: &str, sev: v1::Severity, state: v1::AlertState, labels: &[(&str, &str)]) -> v1::Alert {
    v1::Alert {
        fingerprint: fp.into(),
        severity: sev as i32,
        state: state as i32,
        labels: labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        ..Default::default()
    }
}

fn event(id: u64, kind: v1::AlertEventKind, a: &v1::Alert) -> v1::AlertEvent {
    v1::AlertEvent {
        id,
        at: Some(driftwatch_proto::timestamp_from_millis(1_000)),
        kind: kind as i32,
        alert: Some(a.clone()),
    }
}

fn rows(ops: &[Op]) -> Vec<(String, u64, String)> {
    ops.iter()
        .map(|op| match op {
            Op::OutboxAdd(r) => (r.notifier.clone(), r.event_id, r.kind.clone()),
            other => panic!("unexpected op {other:?}"),
        })
        .collect()
}

const TWO: &str = r#"
    [[notifiers]]
    name = "prod-high"
    kind = "webhook"
    url = "http://127.0.0.1:1/hook"
    min_severity = "high"
    selector = "env=production"

    [[notifiers]]
    name = "am"
    kind = "alertmanager"
    urls = ["http://127.0.0.1:2", "http://127.0.0.1:3"]
    matchers = ["alertname!=noisy"]
"#;

#[test]
fn router_queues_one_row_per_routed_target() {
    let n = Notifiers::new(configs(TWO), Default::default(), Metrics::new()).unwrap();
    let route = |ev: &v1::AlertEvent| EventRouter::route(&*n, ev);
    let prod = [("env", "production"), ("alertname", "workers-above-12")];
    let a = alert("f1", v1::Severity::High, v1::AlertState::Firing, &prod);
    let ops = route(&event(7, v1::AlertEventKind::Fired, &a));
    assert_eq!(
        rows(&ops),
        vec![
            ("prod-high".into(), 7, "fired".into()),
            ("am@http://127.0.0.1:2".into(), 7, "fired".into()),
            ("am@http://127.0.0.1:3".into(), 7, "fired".into()),
        ]
    );
    let Op::OutboxAdd(r) = &ops[0] else { panic!() };
    assert_eq!(r.fingerprint, "f1");
    assert_eq!(r.repeat, 0);
    assert_eq!(v1::AlertEvent::decode(r.payload.as_slice()).unwrap().id, 7, "the payload is the event");

    // Below the webhook's min_severity: Alertmanager only.
    let low = alert("f2", v1::Severity::Low, v1::AlertState::Firing, &prod);
    assert_eq!(rows(&route(&event(8, v1::AlertEventKind::Fired, &low))).len(), 2);
    // Not production: the selector keeps it from the webhook.
    let staging = alert("f3", v1::Severity::Critical, v1::AlertState::Firing, &[("env", "staging")]);
    assert_eq!(rows(&route(&event(9, v1::AlertEventKind::Fired, &staging))).len(), 2);
    // The matcher keeps it from Alertmanager; the webhook takes it.
    let noisy =
        alert("f4", v1::Severity::High, v1::AlertState::Firing, &[("env", "production"), ("alertname", "noisy")]);
    assert_eq!(
        rows(&route(&event(10, v1::AlertEventKind::Fired, &noisy))),
        vec![("prod-high".into(), 10, "fired".into())]
    );
    // Kinds not asked for (default: fired and resolved) go nowhere.
    for k in [v1::AlertEventKind::Pending, v1::AlertEventKind::Acknowledged, v1::AlertEventKind::Cleared] {
        assert!(route(&event(11, k, &a)).is_empty(), "{k:?}");
    }
    assert_eq!(rows(&route(&event(12, v1::AlertEventKind::Resolved, &a))).len(), 3);
    // Targets are woken only once the rows are committed, up to what committed.
    assert_eq!(n.targets[0].routed.load(Ordering::Relaxed), 12);
    assert_eq!(n.targets[0].woken.load(Ordering::Relaxed), 0, "not before the commit");
    n.committed(10);
    assert_eq!(n.targets[0].woken.load(Ordering::Relaxed), 10, "rows up to 10 are readable");
    n.committed(12);
    assert_eq!(n.targets[0].woken.load(Ordering::Relaxed), 12);
}

#[test]
fn silenced_alerts_are_not_notified_while_silenced() {
    let c = configs(
        r#"
        [[notifiers]]
        name = "hook"
        kind = "webhook"
        url = "http://127.0.0.1:1/"

        [[notifiers]]
        name = "audit"
        kind = "webhook"
        url = "http://127.0.0.1:1/audit"
        events = ["silenced", "unsilenced", "acknowledged"]
        "#,
    );
    let (hook, audit) = (&c[0].filter, &c[1].filter);
    let mut a = alert("f", v1::Severity::High, v1::AlertState::Firing, &[]);
    a.silenced_by = vec!["s1".into()];
    assert!(!routes(hook, v1::AlertEventKind::Fired, &a));
    a.state = v1::AlertState::Resolved as i32;
    assert!(!routes(hook, v1::AlertEventKind::Resolved, &a), "a silenced resolution neither");
    assert!(routes(audit, v1::AlertEventKind::Silenced, &a), "asked-for silence events go out");
    // The silence ends over a firing alert: its held-back firing is notified.
    a.silenced_by.clear();
    a.state = v1::AlertState::Firing as i32;
    assert!(routes(hook, v1::AlertEventKind::Unsilenced, &a));
    assert!(routes(audit, v1::AlertEventKind::Unsilenced, &a));
    a.state = v1::AlertState::Pending as i32;
    assert!(!routes(hook, v1::AlertEventKind::Unsilenced, &a), "not firing: nothing held back");
    assert!(routes(audit, v1::AlertEventKind::Acknowledged, &a));
    assert!(!routes(hook, v1::AlertEventKind::Acknowledged, &a));
}

#[test]
fn fired_events_start_repeat_bookkeeping_and_resolutions_end_it() {
    let n = Notifiers::new(
        configs(
            r#"
            [[notifiers]]
            name = "hook"
            kind = "webhook"
            url = "http://127.0.0.1:1/"
            repeat_interval = "1h"

            [[notifiers]]
            name = "no-repeat"
            kind = "webhook"
            url = "http://127.0.0.1:1/"
            repeat_interval = "0"
            "#,
        ),
        Default::default(),
        Metrics::new(),
    )
    .unwrap();
    let a = alert("f", v1::Severity::High, v1::AlertState::Firing, &[]);
    n.route(&event(5, v1::AlertEventKind::Fired, &a), 42);
    assert_eq!(n.targets[0].repeats.lock().get("f"), Some(&LastSent { event_id: 5, repeat: 0, at_ms: 42 }));
    assert!(n.targets[1].repeats.lock().is_empty(), "repeat_interval 0: no repeats");
    n.route(&event(6, v1::AlertEventKind::Resolved, &a), 43);
    assert!(n.targets[0].repeats.lock().is_empty());
}

#[test]
fn status_lists_every_target_with_a_closed_circuit_at_start() {
    let n = Notifiers::new(configs(TWO), Default::default(), Metrics::new()).unwrap();
    let s = n.status();
    assert_eq!(s.len(), 3);
    assert_eq!(
        (s[0].name.as_str(), s[0].kind.as_str(), s[0].url.as_str()),
        ("prod-high", "webhook", "http://127.0.0.1:1/hook")
    );
    assert_eq!(
        (s[2].name.as_str(), s[2].kind.as_str(), s[2].url.as_str()),
        ("am", "alertmanager", "http://127.0.0.1:3")
    );
    assert!(s.iter().all(|s| s.circuit == "closed" && s.delivered == 0 && s.pending == 0 && s.last_error.is_empty()));
    assert!(
        EventRouter::route(
            &*Notifiers::new(Vec::new(), Default::default(), Metrics::new()).unwrap(),
            &event(1, v1::AlertEventKind::Fired, &alert("f", v1::Severity::High, v1::AlertState::Firing, &[]))
        )
        .is_empty()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_past_max_age_are_dropped_and_counted_the_rest_kept() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("d.db");
    let store = Store::open(&path).unwrap();
    let reader = Arc::new(Mutex::new(Store::open(&path).unwrap()));
    let metrics = Metrics::new();
    let (writer, writer_thread) = crate::writer::spawn(store, crate::state::FleetState::new(), metrics.clone(), 16);
    let n = Notifiers::new(
        configs(
            r#"
            [[notifiers]]
            name = "hook"
            kind = "webhook"
            url = "http://127.0.0.1:1/"
            max_age = "1h"
            "#,
        ),
        Default::default(),
        metrics.clone(),
    )
    .unwrap();
    let now = driftwatch_proto::now_millis();
    let row = |event_id: u64, created_ms: i64| {
        Op::OutboxAdd(OutboxRecord {
            notifier: "hook".into(),
            event_id,
            fingerprint: format!("f{event_id}"),
            kind: "fired".into(),
            // Not due: only the age limit acts on them.
            next_attempt_ms: now + 3_600_000,
            created_ms,
            ..Default::default()
        })
    };
    let (tx, rx) = tokio::sync::oneshot::channel();
    let item = crate::writer::WriteItem {
        ops: vec![row(1, now - 2 * 3_600_000), row(2, now - 60_000)],
        done: Some(tx),
        ..Default::default()
    };
    writer.send(item).await.unwrap();
    rx.await.unwrap();

    let token = CancellationToken::new();
    let tasks = n.start(writer.clone(), reader.clone(), Arc::default(), token.clone());
    // A generous deadline: it bounds a hang, it does not time the pass.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let rows = reader.lock().outbox_rows("hook").unwrap();
        if rows.len() == 1 {
            assert_eq!(rows[0].event_id, 2, "the fresh row stays");
            break;
        }
        assert!(Instant::now() < deadline, "the old row was not dropped: {rows:#?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let text = metrics.render();
    assert!(text.contains("driftwatch_notifications_expired_total{notifier=\"hook\",target=\"0\"} 1"), "{text}");
    token.cancel();
    tasks.join(Duration::from_secs(5)).await;
    drop(writer);
    tokio::task::spawn_blocking(move || writer_thread.join().unwrap()).await.unwrap();
}

/// Poll `f` until it returns Some; the deadline bounds a hang, it does not time anything.
async fn eventually<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_url_file_url_and_the_authorization_never_show_in_status_metrics_or_errors() {
    const PATH_SECRET: &str = "PaThSeCrEt";
    const QUERY_SECRET: &str = "QuErYsEcReT";
    const AUTH_SECRET: &str = "AuThSeCrEt-123";
    // A receiver that quotes what it got (path, query, Authorization) in its error
    // response, and an address nothing listens on (reqwest's errors name the URL).
    let echo = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let echo_addr = echo.local_addr().unwrap();
    let app = axum::Router::new().fallback(|uri: axum::http::Uri, headers: axum::http::HeaderMap| async move {
        let auth = headers.get("authorization").and_then(|v| v.to_str().ok()).unwrap_or("none").to_string();
        (axum::http::StatusCode::UNAUTHORIZED, format!("denied {uri} for {auth}"))
    });
    let echo_task = tokio::spawn(async move { axum::serve(echo, app).await.unwrap() });
    let refused_addr = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();

    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, content: String| {
        let p = dir.path().join(name);
        std::fs::write(&p, content).unwrap();
        p.display().to_string()
    };
    let echo_url = write("echo.url", format!("http://{echo_addr}/services/T0/{PATH_SECRET}?token={QUERY_SECRET}\n"));
    let refused_url = write("refused.url", format!("http://{refused_addr}/services/T1/{PATH_SECRET}\n"));
    let auth = write("auth", format!("{AUTH_SECRET}\n"));
    let notifier = |name: &str, url_file: &str| {
        format!(
            "[[notifiers]]\nname = \"{name}\"\nkind = \"webhook\"\nurl_file = \"{url_file}\"\n\
             authorization_file = \"{auth}\"\nbackoff = \"10ms\"\nmax_backoff = \"50ms\"\n"
        )
    };
    let db = dir.path().join("d.db");
    let store = Store::open(&db).unwrap();
    let reader = Arc::new(Mutex::new(Store::open(&db).unwrap()));
    let metrics = Metrics::new();
    let (writer, writer_thread) = crate::writer::spawn(store, crate::state::FleetState::new(), metrics.clone(), 16);
    let n = Notifiers::new(
        configs(&format!("{}\n{}", notifier("echo", &echo_url), notifier("refused", &refused_url))),
        Default::default(),
        metrics.clone(),
    )
    .unwrap();
    let a = alert("f", v1::Severity::High, v1::AlertState::Firing, &[]);
    let ops = EventRouter::route(&*n, &event(1, v1::AlertEventKind::Fired, &a));
    assert_eq!(ops.len(), 2);
    let (tx, rx) = tokio::sync::oneshot::channel();
    writer.send(crate::writer::WriteItem { ops, done: Some(tx), ..Default::default() }).await.unwrap();
    rx.await.unwrap();
    let token = CancellationToken::new();
    let tasks = n.start(writer.clone(), reader.clone(), Arc::default(), token.clone());
    n.committed(1);

    let status = eventually("a failed attempt at both endpoints", || {
        let s = n.status();
        s.iter().all(|s| s.failed_attempts >= 1 && !s.last_error.is_empty()).then_some(s)
    })
    .await;
    token.cancel();
    tasks.join(Duration::from_secs(5)).await;

    let shown = |addr: std::net::SocketAddr| format!("http://{addr}/…");
    assert_eq!(status[0].url, shown(echo_addr), "scheme and host only");
    assert_eq!(status[1].url, shown(refused_addr));
    // The receiver got the header (and quoted it back): both quotes are scrubbed.
    assert_eq!(status[0].last_error, "HTTP 401 Unauthorized: denied … for …", "{status:#?}");
    assert!(status[1].last_error.contains("error sending request"), "{status:#?}");
    let rows: Vec<String> = ["echo", "refused"]
        .iter()
        .flat_map(|k| reader.lock().outbox_rows(k).unwrap())
        .map(|r| format!("{r:?}"))
        .collect();
    assert_eq!(rows.len(), 2);
    let texts = [
        ("status", format!("{status:?}")),
        ("metrics", metrics.render()),
        ("outbox rows", rows.join("\n")),
        ("notifiers", format!("{n:?} {:?}", n.configs)),
    ];
    for (what, text) in &texts {
        for secret in [PATH_SECRET, QUERY_SECRET, AUTH_SECRET, "/services/"] {
            assert!(!text.contains(secret), "{secret} shows in the {what}: {text}");
        }
    }
    assert!(!texts[1].1.contains("127.0.0.1"), "no notifier URL in the metrics: {}", texts[1].1);
    assert!(texts[1].1.contains("notifier=\"echo\",target=\"0\""), "{}", texts[1].1);
    echo_task.abort();
    drop(writer);
    tokio::task::spawn_blocking(move || writer_thread.join().unwrap()).await.unwrap();
}
