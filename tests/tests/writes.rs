//! Write safety end to end: a real server (plaintext loopback) and a real agent process
//! of the `driftwatch-agent` binary, corrections through `Changes.Correct`.
//!
//! - a key whose current value the agent masks is never edited (a dry run neither), and
//!   nothing is written;
//! - a version backed up from one file is never restored into another;
//! - a file's own earlier version is restored byte for byte, keeping its mode.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::time::Duration;

use driftwatch_agent::AgentFile;
use driftwatch_proto::v1::{self, audit_client::AuditClient, changes_client::ChangesClient};
use driftwatch_server::RunningServer;
use driftwatch_tests::*;
use tonic::transport::Channel;

const A: &str = "# app\nWORKERS=4\nDATABASE_URL=postgres://app:s3cretpass@db:5432/app\n";
const B: &str = "# other app\nWORKERS=2\n";

/// Everything a refused change must leave as it was.
#[derive(Debug, PartialEq)]
struct Look {
    bytes: Vec<u8>,
    mtime: (i64, i64),
    ino: u64,
    mode: u32,
}

fn look(p: &Path) -> Look {
    let m = std::fs::metadata(p).unwrap();
    Look { bytes: std::fs::read(p).unwrap(), mtime: (m.mtime(), m.mtime_nsec()), ino: m.ino(), mode: m.mode() & 0o7777 }
}

async fn correct(
    changes: &mut ChangesClient<Channel>,
    path: &Path,
    action: Option<v1::correct_request::Action>,
    dry_run: bool,
) -> v1::ChangeResult {
    changes
        .correct(v1::CorrectRequest {
            host_id: "h1".into(),
            path: path.display().to_string(),
            action,
            dry_run,
            timeout: Some(driftwatch_proto::duration::seconds(20)),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .result
        .unwrap()
}

/// Wait until the server's view of `path` has this content hash (the next correction's
/// expected hash).
async fn server_has(server: &RunningServer, path: &Path, hash: &str) {
    let mut fleet = fleet_client(server).await;
    wait_file(&mut fleet, "h1", path, "the new content", |s| s.content_hash == hash).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_stay_put_and_versions_stay_with_their_file() {
    let dir = tempfile::tempdir().unwrap();
    let server = start_server(&dir.path().join("server")).await;
    let root = dir.path().join("h1");
    let etc = root.join("etc");
    std::fs::create_dir_all(&etc).unwrap();
    let (a, b) = (etc.join("a.env"), etc.join("b.env"));
    std::fs::write(&a, A).unwrap();
    std::fs::write(&b, B).unwrap();
    std::fs::set_permissions(&a, std::fs::Permissions::from_mode(0o640)).unwrap();
    let watch = [a.display().to_string(), b.display().to_string()];
    let config = AgentFile {
        writable: vec![etc.display().to_string()],
        ..agent_file(&server_url(&server), "h1", &root.join("state"), &watch)
    };
    let _agent = AgentProcess::start(&root, &config);
    let a_state = server_file(&server, "h1", &a).await;
    assert!(
        matches!(key(&a_state, "DATABASE_URL").and_then(|v| v.kind.as_ref()), Some(v1::value::Kind::Masked(_))),
        "the agent masks it: {a_state:?}"
    );
    server_file(&server, "h1", &b).await;
    let mut changes = ChangesClient::new(connect(&server_url(&server)).await);
    let backups = root.join("state").join("backups");

    // (a) A key the agent masks: the server refuses it before anything is sent, for
    // real and as a dry run, naming the key and never echoing the value...
    let a_before = look(&a);
    let unmasked = set_keys(&[("DATABASE_URL", "postgres://db:5432/app")]);
    for dry_run in [false, true] {
        let req = v1::CorrectRequest {
            host_id: "h1".into(),
            path: a.display().to_string(),
            action: unmasked.clone(),
            dry_run,
            ..Default::default()
        };
        let err = changes.correct(req).await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument, "dry run {dry_run}: {err:?}");
        assert!(err.message().contains("DATABASE_URL") && !err.message().contains("postgres://db"), "{err:?}");
    }
    // ...and the agent refuses it on its own should such a change reach it (sent here
    // past the server's check, straight down the host's stream).
    for dry_run in [false, true] {
        let change = v1::ApplyChange {
            change_id: server.changes.dispatcher.new_id("t"),
            path: a.display().to_string(),
            expected_hash: a_state.content_hash.clone(),
            dry_run,
            set_text: [("DATABASE_URL".to_string(), "postgres://db:5432/app".to_string())].into(),
            ..Default::default()
        };
        let r = server.changes.dispatcher.apply("h1", change, Duration::from_secs(20)).await.unwrap();
        assert_eq!(r.outcome, v1::ChangeOutcome::Refused as i32, "dry run {dry_run}: {r:?}");
        assert!(r.message.contains("DATABASE_URL") && r.message.contains("RestoreVersion"), "{}", r.message);
        assert!(!r.message.contains("s3cretpass") && r.diff.is_empty(), "{r:?}");
    }
    assert_eq!(look(&a), a_before, "the file is untouched");
    assert!(!backups.exists(), "not even a backup");

    // Another key of the same file is corrected as usual (its versions are backed up).
    let applied = correct(&mut changes, &a, set_keys(&[("WORKERS", "6")]), false).await;
    assert_eq!(applied.outcome, v1::ChangeOutcome::Applied as i32, "{applied:?}");
    assert!(!applied.diff.contains("s3cretpass"), "{}", applied.diff);
    assert_eq!(std::fs::read_to_string(&a).unwrap(), A.replace("WORKERS=4", "WORKERS=6"));
    assert_eq!(look(&a).mode, 0o640);
    server_has(&server, &a, &applied.after_hash).await;

    // (b) A's earlier version applied to B: refused, B untouched.
    let b_before = look(&b);
    let r = correct(&mut changes, &b, restore_version(&applied.before_hash), false).await;
    assert_eq!(r.outcome, v1::ChangeOutcome::Refused as i32, "{r:?}");
    let why = format!("was backed up from {}, not {}", a.display(), b.display());
    assert!(r.message.contains(&why), "{}", r.message);
    assert_eq!(look(&b), b_before, "the other file is untouched");

    // (c) A's own earlier version: back byte for byte, with its mode.
    let r = correct(&mut changes, &a, restore_version(&applied.before_hash), false).await;
    assert_eq!(r.outcome, v1::ChangeOutcome::Applied as i32, "{r:?}");
    assert_eq!(r.after_hash, applied.before_hash);
    let restored = look(&a);
    assert_eq!(restored.bytes, A.as_bytes());
    assert_eq!(restored.mode, 0o640);
    server_has(&server, &a, &applied.before_hash).await;

    // Every refusal is audited as one, with the caller as the actor.
    server.engine.flush().await.unwrap();
    let refused = AuditClient::new(connect(&server_url(&server)).await)
        .list_audit_events(v1::ListAuditEventsRequest {
            action_prefix: "correction.refused".into(),
            limit: 100,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .events;
    assert_eq!(refused.len(), 1, "the cross-path restore (the server's own refusals send nothing): {refused:?}");
    assert!(refused.iter().all(|e| e.actor == "insecure-local" && !e.detail.contains("s3cretpass")), "{refused:?}");
    server.stop().await.unwrap();
}
