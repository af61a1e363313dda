//! Bad input on the agent side: each gives the file a clear state, and both
//! processes keep running.
//!
//! Runs as a plain `#[test]` so it can drop CAP_DAC_OVERRIDE/CAP_DAC_READ_SEARCH
//! before any thread exists: CI runs as root, and root otherwise reads a mode-000
//! file, so "permission denied" could never be exercised.

use driftwatch_proto::v1::{self, FileStatus};
use driftwatch_tests::privilege;
use driftwatch_tests::*;

fn status(f: &v1::File) -> FileStatus {
    FileStatus::try_from(f.state.as_ref().unwrap().status).unwrap()
}

#[test]
fn bad_files_become_states_and_nothing_stops() {
    // Before any thread exists: the runtime's threads inherit it.
    let can_test_permissions = privilege::require("the permission-denied check", privilege::drop_dac_capabilities());
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(scenarios(can_test_permissions));
}

async fn scenarios(can_test_permissions: bool) {
    let dir = tempfile::tempdir().unwrap();
    let etc = dir.path().join("etc");
    let later = dir.path().join("later");
    std::fs::create_dir_all(&etc).unwrap();
    let w = |name: &str, content: &[u8]| std::fs::write(etc.join(name), content).unwrap();
    w("bad.yaml", b"a: 1\nb: [1, 2\nc: 3\n");
    w("bad.json", b"{\n  \"a\": 1,\n  \"b\": }\n");
    w("bad.toml", b"[x]\ny = 1\nz = = 2\n");
    w("bad.ini", b"[ok]\na = 1\n[broken\nb = 2\n");
    w("bad.env", b"GOOD=1\nthis line has no equals sign\n");
    w("blob.json", b"\x00\x01\x02binary\xff\xfe");
    w("good.env", b"A=1\n");
    // 50 MiB: hashed, not parsed or held in memory.
    {
        let f = std::fs::File::create(etc.join("huge.json")).unwrap();
        f.set_len(50 * 1024 * 1024).unwrap();
    }
    w("secret.env", b"X=1\n");
    std::fs::set_permissions(etc.join("secret.env"), std::os::unix::fs::PermissionsExt::from_mode(0o000)).unwrap();
    std::os::unix::fs::symlink(etc.join("loop-b.yaml"), etc.join("loop-a.yaml")).unwrap();
    std::os::unix::fs::symlink(etc.join("loop-a.yaml"), etc.join("loop-b.yaml")).unwrap();

    let server = start_server(&dir.path().join("server")).await;
    let not_yet = later.join("app.toml");
    let agent = start_agent(agent_config(
        &server,
        "bad-1",
        &dir.path().join("agent"),
        &[format!("{}/*", etc.display()), not_yet.display().to_string()],
    ))
    .await;
    let mut c = fleet_client(&server).await;
    let get = |name: &str| etc.join(name);

    for (name, line) in [("bad.yaml", 3), ("bad.json", 3), ("bad.toml", 3), ("bad.ini", 3), ("bad.env", 2)] {
        let f = wait_file(&mut c, "bad-1", &get(name), "parse error", |s| s.error.is_some()).await;
        assert_eq!(status(&f), FileStatus::ParseError, "{name}");
        let e = f.state.as_ref().unwrap().error.clone().unwrap();
        assert_eq!(e.line, line, "{name}: {e:?}");
        assert!(e.column > 0, "{name}: {e:?}");
        assert!(!e.message.is_empty());
    }
    let f = wait_file(&mut c, "bad-1", &get("blob.json"), "binary", |s| s.status == FileStatus::Binary as i32).await;
    assert!(f.state.unwrap().keys.is_empty());
    let f =
        wait_file(&mut c, "bad-1", &get("huge.json"), "too large", |s| s.status == FileStatus::TooLarge as i32).await;
    let s = f.state.unwrap();
    assert_eq!(s.size, 50 * 1024 * 1024);
    assert_eq!(s.content_hash.len(), 64);
    let f =
        wait_file(&mut c, "bad-1", &get("loop-a.yaml"), "symlink loop", |s| s.status == FileStatus::Unreadable as i32)
            .await;
    assert!(f.state.unwrap().error.is_some());
    if can_test_permissions {
        let f = wait_file(&mut c, "bad-1", &get("secret.env"), "permission denied", |s| {
            s.status == FileStatus::Unreadable as i32
        })
        .await;
        let msg = f.state.unwrap().error.unwrap().message.to_lowercase();
        assert!(msg.contains("permission denied"), "{msg}");
    }

    // A path that does not exist yet (nor its directory), then appears.
    wait_file(&mut c, "bad-1", &not_yet, "missing", |s| s.status == FileStatus::Missing as i32 && !s.exists).await;
    std::fs::create_dir_all(&later).unwrap();
    std::fs::write(&not_yet, "[pool]\nsize = 3\n").unwrap();
    wait_file(&mut c, "bad-1", &not_yet, "appeared", |s| key(s, "pool.size") == Some(&v1::Value::int(3))).await;

    // The watched directory deleted and recreated.
    std::fs::remove_dir_all(&later).unwrap();
    wait_file(&mut c, "bad-1", &not_yet, "gone with its dir", |s| s.status == FileStatus::Missing as i32).await;
    std::fs::create_dir_all(&later).unwrap();
    std::fs::write(&not_yet, "[pool]\nsize = 4\n").unwrap();
    wait_file(&mut c, "bad-1", &not_yet, "recreated", |s| key(s, "pool.size") == Some(&v1::Value::int(4))).await;

    // A fixed file heals.
    std::fs::write(get("bad.yaml"), "a: 1\nb: [1, 2]\n").unwrap();
    wait_file(&mut c, "bad-1", &get("bad.yaml"), "fixed", |s| s.status == FileStatus::Ok as i32).await;

    // Both keep running and keep streaming.
    assert!(agent.status.connected.load(std::sync::atomic::Ordering::Relaxed));
    std::fs::write(get("good.env"), "A=2\n").unwrap();
    wait_file(&mut c, "bad-1", &get("good.env"), "still streaming", |s| key(s, "A") == Some(&v1::Value::int(2))).await;
    agent.stop().await.unwrap();
    server.stop().await.unwrap();
}
