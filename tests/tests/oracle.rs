//! No secret oracle on the server: a host's `.env` holds `DATABASE_URL` with a password,
//! which its agent masks. An operator who guesses the password can neither store the
//! guess in a baseline, nor learn from a baseline restore's dry run whether it was right,
//! nor have it written to the host. Every attempt is refused the same way for a right and
//! a wrong guess, nothing is stored or sent, the audit log claims no change, and the file
//! stays byte-identical.

use std::path::Path;

use driftwatch_proto::v1::{
    self, audit_client::AuditClient, baselines_client::BaselinesClient, changes_client::ChangesClient,
    correct_request::Action,
};
use driftwatch_tests::*;

const RIGHT: &str = "postgres://u:hunter2@db/x";
const WRONG: &str = "postgres://u:letmein@db/x";
const CONTENT: &str = "DATABASE_URL=postgres://u:hunter2@db/x\nPOOL=5\nNAME=web\n";

fn set_baseline(path: &str, value: &str) -> v1::SetBaselineKeysRequest {
    v1::SetBaselineKeysRequest {
        name: "app".into(),
        path: path.into(),
        set: vec![v1::KeyValue { key: "DATABASE_URL".into(), value: Some(v1::Value::string(value)) }],
        ..Default::default()
    }
}

fn restore_dry_run(path: &str) -> v1::CorrectRequest {
    v1::CorrectRequest {
        host_id: "h1".into(),
        path: path.into(),
        action: Some(Action::RestoreBaseline(v1::RestoreBaseline { keys: vec!["DATABASE_URL".into()] })),
        dry_run: true,
        ..Default::default()
    }
}

fn set_keys(path: &str, pairs: &[(&str, &str)], dry_run: bool) -> v1::CorrectRequest {
    v1::CorrectRequest {
        host_id: "h1".into(),
        path: path.into(),
        action: Some(Action::SetKeys(v1::SetKeys {
            values: pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            ..Default::default()
        })),
        dry_run,
        ..Default::default()
    }
}

/// A refusal as a caller sees it: the code and the message.
fn refusal<T: std::fmt::Debug>(r: Result<T, tonic::Status>) -> (tonic::Code, String) {
    let e = r.expect_err("refused");
    assert!(e.message().contains("DATABASE_URL"), "the refusal names the key: {}", e.message());
    assert!(!e.message().contains("hunter2") && !e.message().contains("letmein"), "{}", e.message());
    (e.code(), e.message().to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guessed_secret_is_refused_alike_whether_right_or_wrong_and_nothing_changes() {
    let dir = tempfile::tempdir().unwrap();
    let server = start_server(&dir.path().join("server")).await;
    let etc = dir.path().join("etc");
    std::fs::create_dir_all(&etc).unwrap();
    let file = etc.join("app.env");
    std::fs::write(&file, CONTENT).unwrap();
    // The agent would write the file if asked: every refusal below is the server's.
    let mut agent_file =
        agent_file(&server_url(&server), "h1", &dir.path().join("agent"), &[file.display().to_string()]);
    assert!(fleet_key(dir.path()).exists());
    agent_file.writable = vec![etc.display().to_string()];
    let agent = start_agent(driftwatch_agent::AgentConfig::resolve(agent_file, "test").unwrap()).await;
    let mut fleet = fleet_client(&server).await;
    wait_file(&mut fleet, "h1", &file, "DATABASE_URL masked", |s| {
        matches!(key(s, "DATABASE_URL").and_then(|v| v.kind.as_ref()), Some(v1::value::Kind::Masked(_)))
    })
    .await;
    let path = file.display().to_string();
    let ch = connect(&server_url(&server)).await;
    let mut baselines = BaselinesClient::new(ch.clone());
    let mut changes = ChangesClient::new(ch.clone());
    let mut audit = AuditClient::new(ch.clone());
    let pinned = baselines
        .pin_baseline(v1::PinBaselineRequest { name: "app".into(), host_id: "h1".into(), ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    let reader = baselines.clone();
    let get = || {
        let mut b = reader.clone();
        async move { b.get_baseline(v1::GetBaselineRequest { name: "app".into(), version: 0 }).await.unwrap().into_inner() }
    };
    assert_eq!(get().await, pinned);
    let audit_before = audit.list_audit_events(v1::ListAuditEventsRequest::default()).await.unwrap().into_inner();

    // 1. A baseline edit with the password in clear: refused, right or wrong.
    let right = refusal(baselines.set_baseline_keys(set_baseline(&path, RIGHT)).await);
    let wrong = refusal(baselines.set_baseline_keys(set_baseline(&path, WRONG)).await);
    assert_eq!(right, wrong, "the answer does not depend on the guess");
    assert_eq!(right.0, tonic::Code::InvalidArgument);
    assert!(right.1.contains("masked on host 'h1'"), "{}", right.1);
    // A harmless-looking value for the masked key is no way around it.
    assert_eq!(refusal(baselines.set_baseline_keys(set_baseline(&path, "plain")).await), right);

    // 2. A dry-run restore of the key after each attempt: refused, and alike.
    let after_right = {
        let _ = baselines.set_baseline_keys(set_baseline(&path, RIGHT)).await;
        refusal(changes.correct(restore_dry_run(&path)).await)
    };
    let after_wrong = {
        let _ = baselines.set_baseline_keys(set_baseline(&path, WRONG)).await;
        refusal(changes.correct(restore_dry_run(&path)).await)
    };
    assert_eq!(after_right, after_wrong, "no oracle: a dry run never compares a secret");
    assert_eq!(after_right.0, tonic::Code::FailedPrecondition);
    assert!(after_right.1.contains("content hash"), "{}", after_right.1);

    // 3. The guess written for real (and as a dry run): refused, and alike.
    let real_right = refusal(changes.correct(set_keys(&path, &[("DATABASE_URL", RIGHT)], false)).await);
    let real_wrong = refusal(changes.correct(set_keys(&path, &[("DATABASE_URL", WRONG)], false)).await);
    assert_eq!(real_right, real_wrong);
    assert_eq!(real_right.0, tonic::Code::InvalidArgument);
    assert_eq!(refusal(changes.correct(set_keys(&path, &[("DATABASE_URL", RIGHT)], true)).await), real_right);
    // Nor through a rollout, dry run or not.
    let rollout = |dry_run| v1::StartRolloutRequest {
        selector: "env=test".into(),
        path: path.clone(),
        set_keys: [("DATABASE_URL".to_string(), RIGHT.to_string())].into(),
        dry_run,
        ..Default::default()
    };
    for dry_run in [true, false] {
        let (code, _) = refusal(changes.start_rollout(rollout(dry_run)).await);
        assert_eq!(code, tonic::Code::InvalidArgument);
    }

    // Nothing stored, nothing claimed, nothing written.
    assert_eq!(get().await, pinned, "the baseline is unchanged");
    let audit_after = audit.list_audit_events(v1::ListAuditEventsRequest::default()).await.unwrap().into_inner();
    assert_eq!(audit_after, audit_before, "no audit record of a change (refusals are not recorded)");
    let rollouts = changes.list_rollouts(v1::ListRolloutsRequest::default()).await.unwrap().into_inner().rollouts;
    assert!(rollouts.is_empty(), "{rollouts:#?}");
    assert_eq!(std::fs::read_to_string(&file).unwrap(), CONTENT, "the host's file is byte-identical");

    // A change to another key is fine, and its dry-run diff shows the secret only masked.
    let r = changes.correct(set_keys(&path, &[("POOL", "6")], true)).await.unwrap().into_inner();
    let diff = r.result.unwrap().diff;
    assert!(diff.contains("+POOL=6") && diff.contains("DATABASE_URL=<masked:"), "{diff}");
    assert!(!diff.contains("hunter2"), "{diff}");
    assert_eq!(std::fs::read_to_string(&file).unwrap(), CONTENT);
    no_backups(&dir.path().join("agent"));

    agent.stop().await.unwrap();
    server.stop().await.unwrap();
}

/// The agent's backup store is empty: nothing was ever written over.
fn no_backups(state_dir: &Path) {
    let backups = state_dir.join("backups").join("blobs");
    let n = std::fs::read_dir(&backups).map(|d| d.count()).unwrap_or(0);
    assert_eq!(n, 0, "{}", backups.display());
}
