//! `path_prefix`: an agent that sees its node's file system below a directory (a
//! container's `/host`) reports and accepts node paths only. A fake node root in a
//! temp dir, a real server and an agent in this process:
//!
//! - the server holds `/etc/web2img/.env`, never a path below the root, and an edit
//!   below the root reaches it under the node path; a deletion too;
//! - an absolute symlink in the node root resolves below the root (the node's file),
//!   not at the same path outside it;
//! - a correction of `/etc/web2img/.env` is written below the root; one of a node path
//!   outside the `writable` list is refused, and nothing is written.

use std::path::Path;

use driftwatch_agent::AgentFile;
use driftwatch_proto::v1::{self, changes_client::ChangesClient};
use driftwatch_tests::*;

const ENV: &str = "/etc/web2img/.env";
const OTHER: &str = "/etc/other/app.env";
const LINKED: &str = "/etc/web2img/linked.env";

fn key(s: &v1::FileState, k: &str) -> bool {
    s.keys.iter().any(|kv| kv.key == k)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_below_a_path_prefix_speaks_node_paths() {
    let dir = tempfile::tempdir().unwrap();
    let server = start_server(&dir.path().join("server")).await;
    let root = dir.path().join("host");
    for d in ["etc/web2img", "etc/other", "srv/web2img"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    let local = |node: &str| root.join(node.trim_start_matches('/'));
    std::fs::write(local(ENV), "# web2img\nWORKERS=4\n").unwrap();
    std::fs::write(local(OTHER), "WORKERS=4\n").unwrap();
    // A node symlink with an absolute target: the node's /srv, i.e. below the root.
    std::fs::write(local("/srv/web2img/real.env"), "NODE_ONLY=1\n").unwrap();
    std::os::unix::fs::symlink("/srv/web2img/real.env", local(LINKED)).unwrap();

    let watch: Vec<String> = [ENV, OTHER, LINKED].iter().map(|s| s.to_string()).collect();
    let file = AgentFile {
        writable: vec!["/etc/web2img".into()],
        path_prefix: Some(root.clone()),
        ..agent_file(&server_url(&server), "node-1", &dir.path().join("state"), &watch)
    };
    let config = driftwatch_agent::AgentConfig::resolve(file, "test").expect("valid agent config");
    let agent = start_agent(config).await;

    let env = server_file(&server, "node-1", Path::new(ENV)).await;
    assert!(key(&env, "WORKERS"), "{env:?}");
    let linked = server_file(&server, "node-1", Path::new(LINKED)).await;
    assert!(key(&linked, "NODE_ONLY"), "the link resolved below the root: {linked:?}");
    server_file(&server, "node-1", Path::new(OTHER)).await;
    let paths: Vec<String> = server.state.hosts.get("node-1").unwrap().files.keys().cloned().collect();
    let root_text = root.display().to_string();
    assert!(paths.iter().all(|p| !p.contains(&root_text)), "node paths only: {paths:?}");
    assert_eq!(paths, [OTHER, ENV, LINKED], "sorted node paths");

    // An edit below the root arrives under the node path.
    replace_file(&local(ENV), "# web2img\nWORKERS=6\nTIMEOUT=30\n");
    let mut fleet = fleet_client(&server).await;
    wait_file(&mut fleet, "node-1", Path::new(ENV), "the edit", |s| key(s, "TIMEOUT")).await;

    // A correction names the node path and lands below the root.
    let mut changes = ChangesClient::new(connect(&server_url(&server)).await);
    let r = correct(
        &mut changes,
        v1::CorrectRequest {
            host_id: "node-1".into(),
            path: ENV.into(),
            action: set_keys(&[("WORKERS", "8")]),
            timeout: Some(prost_types::Duration { seconds: 20, nanos: 0 }),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(r.outcome, v1::ChangeOutcome::Applied as i32, "{r:?}");
    assert_eq!(r.path, ENV);
    assert!(!r.message.contains(&root_text), "{}", r.message);
    assert!(r.diff.contains("+WORKERS=8") && !r.diff.contains(&root_text), "{}", r.diff);
    let text = std::fs::read_to_string(local(ENV)).unwrap();
    assert!(text.contains("WORKERS=8") && text.contains("# web2img"), "{text}");
    wait_file(&mut fleet, "node-1", Path::new(ENV), "the corrected file", |s| s.content_hash == r.after_hash).await;

    // A node path outside `writable` is refused; nothing written.
    let before = std::fs::read(local(OTHER)).unwrap();
    let r = correct(
        &mut changes,
        v1::CorrectRequest {
            host_id: "node-1".into(),
            path: OTHER.into(),
            action: set_keys(&[("WORKERS", "9")]),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(r.outcome, v1::ChangeOutcome::Refused as i32, "{r:?}");
    assert!(r.message.contains(OTHER) && !r.message.contains(&root_text), "{}", r.message);
    assert_eq!(std::fs::read(local(OTHER)).unwrap(), before);

    // A deletion below the root is reported under the node path.
    std::fs::remove_file(local(OTHER)).unwrap();
    wait_file(&mut fleet, "node-1", Path::new(OTHER), "the deletion", |s| !s.exists).await;

    agent.stop().await.unwrap();
    server.stop().await.unwrap();
}
