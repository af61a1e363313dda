//! `driftwatch audit` against a real server: a silence's life through the CLI, then the
//! audit log as a table, as JSON, filtered and paged; `driftwatch audit verify` passes
//! on an intact log and names the record altered or removed in the database file.

mod common;

use common::cli;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_lists_filters_and_pages_in_table_and_json() {
    let dir = tempfile::tempdir().unwrap();
    let server =
        driftwatch_server::start(driftwatch_server::ServerConfig::for_tests(dir.path().join("srv"))).await.unwrap();
    let u = format!("http://{}", server.grpc_addr);
    let results = tokio::task::spawn_blocking(move || {
        let empty = cli(&u, &["audit"]);
        let added = cli(&u, &["silence", "add", "alertname=workers-high", "-d", "1h", "-c", "deploy"]);
        let id = added.1.trim().to_string();
        let expired = cli(&u, &["silence", "expire", &id]);
        let second = cli(&u, &["silence", "add", "host=web-1"]);
        vec![
            empty,
            added,
            expired,
            second,
            cli(&u, &["audit"]),
            cli(&u, &["--output", "json", "audit", "--action", "silence.expired"]),
            cli(&u, &["audit", "--newest", "--limit", "1"]),
            cli(&u, &["audit", "--after", "1", "--limit", "1"]),
            cli(&u, &["audit", "--action", "baseline."]),
            cli(&u, &["audit", "--limit", "5000", "--host", "nope", "--change", "nope"]),
            cli(&u, &["audit", "--after", "x"]),
        ]
    })
    .await
    .unwrap();
    let (ok, out, err) = &results[0];
    assert!(*ok && out == "no audit events\n", "{out}{err}");
    for (ok, out, err) in &results[1..4] {
        assert!(*ok, "{out}{err}");
    }
    let silence = results[1].1.trim();

    let (ok, out, err) = &results[4];
    let lines: Vec<&str> = out.lines().collect();
    assert!(*ok && lines.len() == 4, "{out}{err}");
    assert!(lines[0].starts_with("ID") && lines[0].contains("ACTOR") && lines[0].contains("DETAIL"), "{out}");
    assert!(
        lines[1].starts_with("1 ") && lines[1].contains("insecure-local") && lines[1].contains("silence.created"),
        "{out}"
    );
    assert!(lines[1].contains(silence) && lines[1].contains("alertname=workers-high"), "{out}");
    assert!(lines[2].starts_with("2 ") && lines[2].contains("insecure-local") && lines[2].contains("silence.expired"));
    assert!(lines[3].starts_with("3 ") && lines[3].contains("insecure-local"), "{out}");
    assert!(lines[1].contains('T') && lines[1].contains('Z'), "absolute UTC times: {out}");

    let (ok, out, err) = &results[5];
    assert!(*ok, "{out}{err}");
    let j: serde_json::Value = serde_json::from_str(out).unwrap();
    let events = j["events"].as_array().unwrap();
    assert_eq!(events.len(), 1, "{out}");
    assert_eq!((events[0]["id"].as_str(), events[0]["action"].as_str()), (Some("2"), Some("silence.expired")));
    assert_eq!(events[0]["target"].as_str(), Some(silence));
    assert!(events[0]["detail"].as_str().unwrap().contains("created by insecure-local"), "{out}");

    let (ok, out, _) = &results[6];
    assert!(*ok && out.lines().count() == 2 && out.lines().nth(1).unwrap().starts_with("3 "), "{out}");
    let (ok, out, err) = &results[7];
    assert!(*ok && out.lines().count() == 2 && out.lines().nth(1).unwrap().starts_with("2 "), "{out}");
    assert!(err.contains("driftwatch audit --after 2"), "a full page says how to go on: {err}");
    let (ok, out, _) = &results[8];
    assert!(*ok && out == "no audit events\n", "{out}");
    let (ok, out, err) = &results[9];
    assert!(*ok && out == "no audit events\n", "a limit above 1000 is capped, not refused: {out}{err}");
    let (ok, _, err) = &results[10];
    assert!(!*ok && err.contains("--after"), "{err}");
    server.stop().await.unwrap();
}

/// Run `sql` on the server's database while the server is stopped, then start it again.
async fn tamper(
    server: driftwatch_server::RunningServer,
    data: &std::path::Path,
    sql: &str,
) -> driftwatch_server::RunningServer {
    server.stop().await.unwrap();
    let db = rusqlite::Connection::open(data.join("driftwatch.db")).unwrap();
    assert_eq!(db.execute(sql, []).unwrap(), 1, "{sql}");
    drop(db);
    driftwatch_server::start(driftwatch_server::ServerConfig::for_tests(data)).await.unwrap()
}

async fn verify(server: &driftwatch_server::RunningServer, json: bool) -> (bool, String, String) {
    let u = format!("http://{}", server.grpc_addr);
    let args: &[&str] = if json { &["--output", "json", "audit", "verify"] } else { &["audit", "verify"] };
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    tokio::task::spawn_blocking(move || cli(&u, &args.iter().map(String::as_str).collect::<Vec<_>>())).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_passes_then_names_the_altered_and_the_removed_record() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("srv");
    let server = driftwatch_server::start(driftwatch_server::ServerConfig::for_tests(&data)).await.unwrap();
    let u = format!("http://{}", server.grpc_addr);
    let (ok, out, err) = verify(&server, false).await;
    assert!(ok && out == "audit log verified: no records\n", "{out}{err}");
    // Five audited changes: three silences, two of them expired.
    tokio::task::spawn_blocking(move || {
        for matcher in ["host=web-1", "host=web-2", "host=web-3"] {
            let (ok, id, err) = cli(&u, &["silence", "add", matcher, "-d", "1h"]);
            assert!(ok, "{err}");
            if matcher != "host=web-3" {
                let (ok, _, err) = cli(&u, &["silence", "expire", id.trim()]);
                assert!(ok, "{err}");
            }
        }
    })
    .await
    .unwrap();

    // (a) Intact: every hash recomputed by the CLI matches.
    let (ok, out, err) = verify(&server, false).await;
    assert!(ok, "{out}{err}");
    assert!(out.starts_with("audit log verified: 5 records, ids 1 to 5, chained from the start of the log"), "{out}");
    let head = out.lines().nth(1).unwrap().to_string();
    assert!(head.starts_with("head: 5 ") && head.len() == "head: 5 ".len() + 64, "{out}");
    let (ok, out, _) = verify(&server, true).await;
    let j: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert!(ok && j["ok"] == true && j["records"] == 5 && j["headId"] == "5", "{out}");

    // (c) One record's detail altered in the database file: named.
    let original: String = {
        let db = rusqlite::Connection::open_with_flags(
            data.join("driftwatch.db"),
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
        )
        .unwrap();
        db.query_row("SELECT detail FROM audit_events WHERE id = 4", [], |r| r.get(0)).unwrap()
    };
    let server = tamper(server, &data, "UPDATE audit_events SET detail = 'nothing to see' WHERE id = 4").await;
    let (ok, out, err) = verify(&server, false).await;
    assert!(!ok && out.is_empty(), "{out}{err}");
    assert!(err.contains("audit log verification failed: record 4 was altered"), "{err}");

    // Put back as it was: intact again.
    let sql = format!("UPDATE audit_events SET detail = '{}' WHERE id = 4", original.replace('\'', "''"));
    let server = tamper(server, &data, &sql).await;
    let (ok, out, err) = verify(&server, false).await;
    assert!(ok, "{out}{err}");

    // (b) One record's row deleted: named.
    let server = tamper(server, &data, "DELETE FROM audit_events WHERE id = 3").await;
    let (ok, out, err) = verify(&server, false).await;
    assert!(!ok && out.is_empty(), "{out}{err}");
    assert!(err.contains("audit log verification failed: record 3 was removed"), "{err}");
    server.stop().await.unwrap();
}
