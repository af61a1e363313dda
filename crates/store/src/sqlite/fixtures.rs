//! Records and ops the store's unit tests build over and over, in one place.

use crate::{
    AuditFilter, AuditRecord, BaselineRecord, FileRecord, HostRecord, Op, OutboxRecord, RolloutRecord, SilenceRecord,
    Store,
};

pub(super) fn host(id: &str, seq: u64) -> HostRecord {
    HostRecord {
        host_id: id.into(),
        labels: [("env".to_string(), "production".to_string())].into(),
        agent_version: "0.1.0".into(),
        spool_id: "s1".into(),
        last_seq: seq,
        first_seen_ms: 1,
        last_seen_ms: 2 + seq as i64,
        dropped_snapshots: 0,
    }
}

pub(super) fn file(host: &str, path: &str, seq: u64, state: &[u8]) -> Op {
    Op::File(FileRecord { host_id: host.into(), path: path.into(), seq, updated_ms: seq as i64, state: state.into() })
}

pub(super) fn baseline(name: &str, version: u64, deleted: bool) -> Op {
    Op::Baseline(BaselineRecord {
        name: name.into(),
        version,
        host_id: "web-1".into(),
        content: format!("v{version}").into_bytes(),
        author: "ops".into(),
        reason: format!("change {version}"),
        created_ms: version as i64,
        deleted,
        ..Default::default()
    })
}

pub(super) fn silence(id: &str, ends_ms: i64, payload: &[u8]) -> SilenceRecord {
    SilenceRecord { id: id.into(), starts_ms: 1, ends_ms, updated_ms: 2, payload: payload.into() }
}

pub(super) fn outbox(notifier: &str, event_id: u64, repeat: u32, fp: &str, next_ms: i64) -> Op {
    Op::OutboxAdd(OutboxRecord {
        notifier: notifier.into(),
        event_id,
        repeat,
        fingerprint: fp.into(),
        kind: if repeat == 0 { "fired".into() } else { "repeat".into() },
        payload: format!("{event_id}/{repeat}").into_bytes(),
        next_attempt_ms: next_ms,
        created_ms: 100 + event_id as i64,
        ..Default::default()
    })
}

pub(super) fn rollout(id: &str, state: i32, created_ms: i64, body: &[u8]) -> RolloutRecord {
    RolloutRecord { id: id.into(), state, created_ms, updated_ms: created_ms, body: body.into() }
}

pub(super) fn audit(at_ms: i64, action: &str, host: &str, change: &str) -> Op {
    Op::Audit(AuditRecord {
        id: 999, // ignored: the store assigns ids
        at_ms,
        actor: "alice".into(),
        action: action.into(),
        target: format!("t-{at_ms}"),
        host_id: host.into(),
        path: "/etc/app.env".into(),
        before_hash: "b".into(),
        after_hash: "a".into(),
        detail: "d".into(),
        change_id: change.into(),
        prev_hash: "ignored".into(),
        hash: "ignored".into(),
    })
}

pub(super) fn audit_ids(s: &Store, f: AuditFilter) -> Vec<u64> {
    s.list_audit(&f).unwrap().into_iter().map(|a| a.id).collect()
}
