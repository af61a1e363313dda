//! Baselines end to end: pin a real agent's state, see drift in Diff, promote an
//! intended change, edit and delete with history kept, survive a server restart.

use driftwatch_proto::v1::{self, baselines_client::BaselinesClient};
use driftwatch_tests::*;
use tonic::Code;

async fn baselines(server: &driftwatch_server::RunningServer) -> BaselinesClient<tonic::transport::Channel> {
    let ch = tonic::transport::Endpoint::from_shared(format!("http://{}", server.grpc_addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    BaselinesClient::new(ch)
}

fn diff_req(host: &str, path: &std::path::Path) -> v1::DiffRequest {
    v1::DiffRequest {
        host_id: host.into(),
        path: path.display().to_string(),
        against_baseline: true,
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pin_drift_promote_edit_delete_and_restart() {
    let dir = tempfile::tempdir().unwrap();
    let configs = dir.path().join("configs");
    copy_fixtures(&configs);
    let env = configs.join("web2img/.env.production");
    let data = dir.path().join("server");
    let mut cfg = driftwatch_server::ServerConfig::for_tests(&data);
    let server = start_server_with(cfg.clone()).await;
    let agent =
        start_agent(agent_config(&server, "web-1", &dir.path().join("agent"), &[format!("{}/**", configs.display())]))
            .await;
    let mut fleet = fleet_client(&server).await;
    let mut b = baselines(&server).await;
    wait_file(&mut fleet, "web-1", &env, "parsed", |s| !s.keys.is_empty()).await;

    // No baseline yet: a clear NotFound.
    let e = fleet.diff(diff_req("web-1", &env)).await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e:?}");

    // Pin everything the host has (the one-liner from the docs: host_id and name only).
    let pinned = b
        .pin_baseline(v1::PinBaselineRequest { host_id: "web-1".into(), name: "tuned".into(), ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(pinned.version, 1);
    assert_eq!(pinned.actor, "insecure-local");
    assert!(pinned.files.iter().any(|f| f.path == env.display().to_string()));
    let d = fleet.diff(diff_req("web-1", &env)).await.unwrap().into_inner();
    assert_eq!((d.added, d.removed, d.changed), (0, 0, 0), "{d:#?}");
    assert_eq!((d.baseline_name.as_str(), d.baseline_version), ("tuned", 1));

    // Drift: a setting goes up and a key disappears.
    let text = std::fs::read_to_string(&env).unwrap();
    replace_file(&env, &text.replace("WORKERS=8", "WORKERS=16").replace("CACHE_MAX_ITEMS=300\n", ""));
    wait_file(&mut fleet, "web-1", &env, "edit", |s| key(s, "WORKERS") == Some(&v1::Value::int(16))).await;
    let d = fleet.diff(diff_req("web-1", &env)).await.unwrap().into_inner();
    assert_eq!((d.added, d.removed, d.changed), (0, 1, 1), "{d:#?}");
    let w = d.differences.iter().find(|k| k.key == "WORKERS").unwrap();
    assert_eq!((w.left.clone(), w.right.clone()), (Some(v1::Value::int(8)), Some(v1::Value::int(16))));

    // The WORKERS change was intended: promote it (one call, a new version with who and why).
    let v2 = b
        .set_baseline_keys(v1::SetBaselineKeysRequest {
            name: "tuned".into(),
            path: env.display().to_string(),
            promote_from_host_id: "web-1".into(),
            promote_keys: vec!["WORKERS".into()],
            remove: vec!["CACHE_MAX_ITEMS".into()],
            reason: "more workers for the launch".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((v2.version, v2.actor.as_str()), (2, "insecure-local"), "the caller, not a name in the request");
    let d = fleet.diff(diff_req("web-1", &env)).await.unwrap().into_inner();
    assert_eq!((d.added, d.removed, d.changed, d.baseline_version), (0, 0, 0, 2), "{d:#?}");
    // Masked values are pinned by fingerprint and shown short, as GetFile shows them.
    let db = v2.files.iter().flat_map(|f| &f.keys).find(|k| k.key == "DATABASE_URL").unwrap();
    match db.value.as_ref().and_then(|v| v.kind.as_ref()) {
        Some(v1::value::Kind::Masked(m)) => assert_eq!(m.fingerprint.len(), 16),
        other => panic!("DATABASE_URL not masked in the baseline: {other:?}"),
    }

    // Bad input: each a clear status, and the service keeps going.
    let bad = [
        b.pin_baseline(v1::PinBaselineRequest { host_id: "nope".into(), name: "x".into(), ..Default::default() })
            .await
            .unwrap_err(),
        b.pin_baseline(v1::PinBaselineRequest {
            host_id: "web-1".into(),
            name: "bad name".into(),
            ..Default::default()
        })
        .await
        .unwrap_err(),
        b.pin_baseline(v1::PinBaselineRequest {
            host_id: "web-1".into(),
            name: "x".into(),
            selector: "a=b=c".into(),
            ..Default::default()
        })
        .await
        .unwrap_err(),
        b.set_baseline_keys(v1::SetBaselineKeysRequest {
            name: "tuned".into(),
            path: env.display().to_string(),
            ..Default::default()
        })
        .await
        .unwrap_err(),
        b.get_baseline(v1::GetBaselineRequest { name: "tuned".into(), version: 9 }).await.unwrap_err(),
    ];
    let codes: Vec<Code> = bad.iter().map(|e| e.code()).collect();
    assert_eq!(
        codes,
        vec![Code::NotFound, Code::InvalidArgument, Code::InvalidArgument, Code::InvalidArgument, Code::NotFound],
        "{bad:#?}"
    );

    // A selector baseline for the fleet; the host's own baseline still wins for web-1.
    let fleetwide = b
        .pin_baseline(v1::PinBaselineRequest {
            host_id: "web-1".into(),
            name: "test-fleet".into(),
            path: env.display().to_string(),
            selector: "env=test".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(fleetwide.host_id.is_empty() && fleetwide.selector == "env=test");
    assert_eq!(fleet.diff(diff_req("web-1", &env)).await.unwrap().into_inner().baseline_name, "tuned");

    // Delete: the host falls back to the selector baseline; history stays readable.
    b.delete_baseline(v1::DeleteBaselineRequest { name: "tuned".into(), reason: "retired".into() }).await.unwrap();
    let e = b.get_baseline(v1::GetBaselineRequest { name: "tuned".into(), version: 0 }).await.unwrap_err();
    assert!(e.code() == Code::NotFound && e.message().contains("deleted in version 3"), "{e:?}");
    assert_eq!(fleet.diff(diff_req("web-1", &env)).await.unwrap().into_inner().baseline_name, "test-fleet");

    // Restart: every version is still there.
    agent.stop().await.unwrap();
    server.stop().await.unwrap();
    cfg.metrics_listen = None;
    let server = start_server_with(cfg).await;
    let mut b = baselines(&server).await;
    let v1b = b.get_baseline(v1::GetBaselineRequest { name: "tuned".into(), version: 1 }).await.unwrap().into_inner();
    assert_eq!(v1b.files, pinned.files);
    let v2b = b.get_baseline(v1::GetBaselineRequest { name: "tuned".into(), version: 2 }).await.unwrap().into_inner();
    assert_eq!(v2b.reason, "more workers for the launch");
    let listed = b.list_baselines(v1::ListBaselinesRequest { include_deleted: false }).await.unwrap().into_inner();
    assert_eq!(listed.baselines.iter().map(|b| b.name.as_str()).collect::<Vec<_>>(), vec!["test-fleet"]);
    let all = b.list_baselines(v1::ListBaselinesRequest { include_deleted: true }).await.unwrap().into_inner();
    assert_eq!(all.baselines.len(), 2);
    server.stop().await.unwrap();
}
