use std::path::Path;

use driftwatch_agent::apply::Applier;
use tokio::sync::mpsc;

use super::*;
use crate::agent::agent_config_url;
use crate::files::TEST_FLEET_KEY;

/// A change built from the model's state before it (for its expected hash).
type Step = Box<dyn Fn(&State) -> v1::ApplyChange>;

const APP: &str = "# app settings\nPOOL_SIZE=10\nDEBUG=false\n\n# going away\nOLD=1\n";

fn masker() -> Arc<Masker> {
    Arc::new(Masker::new(TEST_FLEET_KEY.as_bytes()))
}

fn change(id: &str, path: &Path, expected: &str) -> v1::ApplyChange {
    v1::ApplyChange {
        change_id: id.into(),
        path: path.display().to_string(),
        expected_hash: expected.into(),
        ..Default::default()
    }
}

fn text(pairs: &[(&str, &str)]) -> std::collections::BTreeMap<String, String> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

/// The model and the real agent's apply pipeline (on a temp dir, the file writable, no
/// commands) answer a sequence of changes alike, result for result and byte for byte.
#[test]
fn the_model_answers_every_change_as_the_real_agent_does() {
    let dir = tempfile::tempdir().unwrap();
    let etc = dir.path().join("etc");
    std::fs::create_dir_all(&etc).unwrap();
    let path = etc.join("app.env");
    std::fs::write(&path, APP).unwrap();
    let mut cfg =
        agent_config_url("http://127.0.0.1:1", "h1", &dir.path().join("state"), &[path.display().to_string()]);
    cfg.writable = vec![etc.display().to_string()];
    let masker = masker();
    let mut real = Applier::open(&cfg, masker.clone()).unwrap();
    let (tx, _rx) = mpsc::unbounded_channel();
    let mut model = State::new(masker.clone(), &path.display().to_string(), APP.as_bytes().to_vec(), tx);
    let original = masker.content_hash(APP.as_bytes());

    let hash = |m: &State| m.masker.content_hash(&m.content);
    let mut steps: Vec<Step> = Vec::new();
    let p = path.clone();
    steps.push(Box::new(move |_| v1::ApplyChange {
        dry_run: true,
        set_text: text(&[("POOL_SIZE", "12")]),
        ..change("dry", &p, "")
    }));
    let p = path.clone();
    steps.push(Box::new(move |m| v1::ApplyChange {
        set_text: text(&[("POOL_SIZE", "12"), ("LABEL", "blue")]),
        set_keys: vec![v1::KeyValue { key: "MODE".into(), value: Some(v1::Value::string("30")) }],
        remove_keys: vec!["OLD".into()],
        ..change("edit", &p, &hash(m))
    }));
    let p = path.clone();
    steps.push(Box::new(move |m| v1::ApplyChange {
        set_text: text(&[("DB_PASSWORD", "hunter2hunter2")]),
        ..change("secret", &p, &hash(m))
    }));
    let p = path.clone();
    steps.push(Box::new(move |_| v1::ApplyChange {
        set_text: text(&[("POOL_SIZE", "14")]),
        ..change("stale", &p, &"0".repeat(64))
    }));
    let p = path.clone();
    steps.push(Box::new(move |m| v1::ApplyChange {
        remove_keys: vec!["NOPE".into()],
        ..change("unknown", &p, &hash(m))
    }));
    let p = path.clone();
    steps.push(Box::new(move |m| v1::ApplyChange {
        set_text: text(&[("POOL_SIZE", "12")]),
        ..change("same", &p, &hash(m))
    }));
    let p = path.clone();
    steps.push(Box::new(move |m| v1::ApplyChange {
        set_keys: vec![v1::KeyValue { key: "POOL_SIZE".into(), value: Some(v1::Value::masked("ab", "key name")) }],
        ..change("masked", &p, &hash(m))
    }));
    let p = path.clone();
    steps.push(Box::new(move |m| v1::ApplyChange {
        set_keys: vec![v1::KeyValue { key: "X".into(), value: None }],
        ..change("no-value", &p, &hash(m))
    }));
    let p = path.clone();
    steps.push(Box::new(move |m| v1::ApplyChange {
        set_text: text(&[("A", "1")]),
        restore_hash: original.clone(),
        ..change("both", &p, &hash(m))
    }));
    let p = path.clone();
    steps.push(Box::new(move |m| change("empty", &p, &hash(m))));
    let p = path.clone();
    steps.push(Box::new(move |m| v1::ApplyChange { set_text: text(&[("A", "1")]), ..change("", &p, &hash(m)) }));
    let p = path.clone();
    steps.push(Box::new(move |_| v1::ApplyChange { set_text: text(&[("A", "1")]), ..change("no-hash", &p, "") }));
    let p = path.clone();
    steps
        .push(Box::new(move |m| v1::ApplyChange { restore_hash: "0".repeat(64), ..change("no-backup", &p, &hash(m)) }));
    let p = path.clone();
    let first = masker.content_hash(APP.as_bytes());
    steps.push(Box::new(move |m| v1::ApplyChange { restore_hash: first.clone(), ..change("restore", &p, &hash(m)) }));
    let p = path.clone();
    steps.push(Box::new(move |m| v1::ApplyChange {
        set_keys: vec![v1::KeyValue { key: "DEBUG".into(), value: Some(v1::Value::bool(true)) }],
        ..change("typed", &p, &hash(m))
    }));

    for step in &steps {
        let c = step(&model);
        let want = real.apply(&c);
        model.handle(&c);
        let got = model.results.last().unwrap();
        assert_eq!(got, &want, "change {:?}", c.change_id);
        assert_eq!(
            String::from_utf8_lossy(&model.content),
            std::fs::read_to_string(&path).unwrap(),
            "after change {:?}",
            c.change_id
        );
    }
    let outcomes: Vec<&str> = model.results.iter().map(|r| driftwatch_proto::change_outcome_name(r.outcome)).collect();
    assert_eq!(
        outcomes,
        [
            "dry_run",
            "applied",
            "refused",
            "conflict",
            "rejected",
            "unchanged",
            "rejected",
            "rejected",
            "rejected",
            "rejected",
            "rejected",
            "rejected",
            "rejected",
            "applied",
            "applied"
        ]
    );
    let edit = &model.results[1];
    assert!(edit.diff.contains("+POOL_SIZE=12") && edit.diff.contains("+LABEL=blue"), "{}", edit.diff);
    assert!(model.results[2].message.contains("looks like a secret"), "{}", model.results[2].message);
    assert_eq!(model.applied, 3);
    // Outside its own file, the model refuses, as a real agent refuses a path outside `writable`.
    let other = Path::new("/elsewhere/app.env");
    let d = decide(
        &masker,
        Held { path: &model.path, format: model.format, content: &model.content, backups: &model.backups },
        &v1::ApplyChange { set_text: text(&[("A", "1")]), ..change("other", other, "") },
    );
    assert_eq!(d.result.outcome, v1::ChangeOutcome::Refused as i32);
    assert!(d.written.is_none());
}

#[test]
fn an_applied_change_sends_its_result_then_the_new_file() {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let masker = masker();
    let mut s = State::new(masker.clone(), "/etc/app.env", APP.as_bytes().to_vec(), tx);
    let Some(agent_message::Kind::Snapshot(first)) = rx.try_recv().unwrap().kind else { panic!("snapshot") };
    assert_eq!((first.seq, first.full, first.full_last, first.files.len()), (1, true, true, 1));
    let f = &first.files[0];
    assert_eq!(f.content_hash, masker.content_hash(APP.as_bytes()), "keyed with the fleet key");
    assert_eq!((f.format, f.status), (v1::Format::Env as i32, v1::FileStatus::Ok as i32));
    assert_eq!(crate::key(f, "POOL_SIZE"), Some(&v1::Value::int(10)));
    let h0 = f.content_hash.clone();

    // A secret is never set by a key edit: refused, nothing written, no snapshot.
    let mut secret = change("c0", Path::new("/etc/app.env"), &h0);
    secret.set_text = text(&[("API_TOKEN", "ghp_0123456789abcdefghijklmnopqrstuvwxyzAB")]);
    s.handle(&secret);
    let Some(agent_message::Kind::ChangeResult(r)) = rx.try_recv().unwrap().kind else { panic!("result") };
    assert_eq!(r.outcome, v1::ChangeOutcome::Refused as i32);
    let mut c = change("c1", Path::new("/etc/app.env"), &h0);
    c.set_text = text(&[("POOL_SIZE", "12")]);
    s.handle(&c);
    let Some(agent_message::Kind::ChangeResult(r)) = rx.try_recv().unwrap().kind else { panic!("result") };
    assert_eq!(r.outcome, v1::ChangeOutcome::Applied as i32);
    let Some(agent_message::Kind::Snapshot(next)) = rx.try_recv().unwrap().kind else { panic!("snapshot") };
    assert_eq!((next.seq, next.full), (2, false));
    let f = &next.files[0];
    assert_eq!(f.content_hash, r.after_hash);
    assert_eq!(crate::key(f, "POOL_SIZE"), Some(&v1::Value::int(12)));
    assert!(String::from_utf8_lossy(&s.content).starts_with("# app settings\n"), "comments kept");

    // The old version is a backup: restoring it puts the same bytes back.
    let mut back = change("c2", Path::new("/etc/app.env"), &r.after_hash);
    back.restore_hash = h0.clone();
    s.handle(&back);
    let Some(agent_message::Kind::ChangeResult(r)) = rx.try_recv().unwrap().kind else { panic!("result") };
    assert_eq!((r.outcome, r.after_hash.as_str()), (v1::ChangeOutcome::Applied as i32, h0.as_str()));
    assert_eq!(s.content, APP.as_bytes());
    assert_eq!((s.applied, s.backups.len()), (2, 2));
}
