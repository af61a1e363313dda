//! What an agent may send on its stream, checked before anything is applied: the
//! stateless half of the gateway's validation, pure so that it can be fuzzed and
//! unit tested without a server.
//!
//! The gateway runs [`check_agent_message`] on every message tonic has decoded;
//! [`decode_agent_message`] is the same path from raw bytes (the size limit tonic's
//! decoder enforces, prost's decode, then the same check). What needs the fleet's
//! state (the caller's certificate, the host's held files, dedup by seq) stays in
//! the gateway.

use driftwatch_proto::v1::{AgentMessage, FileState, Hello, Snapshot, agent_message};
use prost::Message;

use crate::error::ServerError;
use crate::limits::{Breach, Limit, Limits};
use crate::metrics::Metrics;

/// Longest file path an agent may report, in bytes.
pub const MAX_PATH_LEN: usize = 4096;
/// Longest spool id, in bytes.
pub const MAX_SPOOL_ID_LEN: usize = 64;

/// Where a message stands on its stream: the first must be the Hello, no later one may
/// be; later ones come from the host the Hello named.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Position<'a> {
    First,
    Later { host: &'a str },
}

/// Why a message is refused: malformed, or past a limit (counted when it becomes a status).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    Invalid(String),
    Limit(Breach),
}

impl Refusal {
    /// The error the agent gets; a limit is counted in its metric.
    pub fn into_error(self, limits: &Limits, metrics: &Metrics) -> ServerError {
        match self {
            Refusal::Invalid(m) => ServerError::InvalidArgument(m),
            Refusal::Limit(b) => b.refuse(limits, metrics),
        }
    }
}

impl From<Breach> for Refusal {
    fn from(b: Breach) -> Self {
        Refusal::Limit(b)
    }
}

fn invalid(m: impl Into<String>) -> Refusal {
    Refusal::Invalid(m.into())
}

/// Decode one message as the gateway's codec does (bounded by `max_message_bytes`,
/// then prost) and check it as the gateway does.
pub fn decode_agent_message(bytes: &[u8], position: Position<'_>, limits: &Limits) -> Result<AgentMessage, Refusal> {
    if bytes.len() > limits.max_message_bytes {
        let what = format!("an agent message was larger than allowed ({} bytes)", bytes.len());
        return Err(Breach::new(Limit::MaxMessageBytes, what).into());
    }
    let m = AgentMessage::decode(bytes).map_err(|e| invalid(format!("agent message does not decode: {e}")))?;
    check_agent_message(&m, position, limits)?;
    Ok(m)
}

/// The gateway's checks of one decoded message that need nothing but the message.
pub fn check_agent_message(m: &AgentMessage, position: Position<'_>, limits: &Limits) -> Result<(), Refusal> {
    match (&m.kind, position) {
        (Some(agent_message::Kind::Hello(h)), Position::First) => check_hello(h, limits),
        (Some(_), Position::First) => Err(invalid("the first message must be hello")),
        (Some(agent_message::Kind::Hello(_)), Position::Later { .. }) => Err(invalid("hello sent twice")),
        (Some(agent_message::Kind::Snapshot(s)), Position::Later { host }) => check_snapshot(s, host, limits),
        (Some(_), Position::Later { .. }) => Ok(()),
        (None, _) => Err(invalid("empty agent message")),
    }
}

/// The Hello's host id (blanks around it ignored, as the gateway trims it), labels and spool id.
pub fn check_hello(hello: &Hello, limits: &Limits) -> Result<(), Refusal> {
    let id = hello.host_id.trim();
    driftwatch_pki::check_host_id(id).map_err(|e| invalid(format!("host_id {e}")))?;
    limits.check_labels(&hello.labels, &format!("the hello of host '{id}'"))?;
    if hello.spool_id.is_empty() || hello.spool_id.len() > MAX_SPOOL_ID_LEN {
        return Err(invalid(format!("spool_id must be 1-{MAX_SPOOL_ID_LEN} characters")));
    }
    Ok(())
}

/// A snapshot of `host`: its seq, file paths and keys per file.
pub fn check_snapshot(s: &Snapshot, host: &str, limits: &Limits) -> Result<(), Refusal> {
    if s.seq == 0 {
        return Err(invalid("snapshot seq must be at least 1"));
    }
    if let Some(r) = &s.resources {
        // The gateway stores and the engine judges resource rules by this time (a file's
        // `modified_at` is only shown, and a file's odd mtime must not refuse a snapshot).
        check_time("resources.sampled_at", r.sampled_at.as_ref())?;
    }
    for f in &s.files {
        check_file(f)?;
    }
    for f in &s.files {
        limits.check_keys(host, &f.path, f.keys.len())?;
    }
    Ok(())
}

fn check_time(field: &str, t: Option<&prost_types::Timestamp>) -> Result<(), Refusal> {
    match t {
        Some(t) if !driftwatch_proto::timestamp_in_range(t) => Err(invalid(format!(
            "snapshot {field} is not a valid time (seconds {}, nanos {}; years 1 to 9999)",
            t.seconds, t.nanos
        ))),
        _ => Ok(()),
    }
}

fn check_file(f: &FileState) -> Result<(), Refusal> {
    if f.path.is_empty() || f.path.len() > MAX_PATH_LEN || !f.path.starts_with('/') {
        return Err(invalid(format!(
            "file path must be absolute and at most {MAX_PATH_LEN} bytes (got {:?})",
            f.path.chars().take(80).collect::<String>()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use driftwatch_proto::v1::{Heartbeat, KeyValue};

    use super::*;

    const LATER: Position<'static> = Position::Later { host: "web-1" };

    fn hello(host_id: &str, spool_id: &str) -> AgentMessage {
        let h = Hello { host_id: host_id.into(), spool_id: spool_id.into(), ..Default::default() };
        AgentMessage { kind: Some(agent_message::Kind::Hello(h)) }
    }

    fn snapshot(seq: u64, paths: &[&str]) -> AgentMessage {
        let files = paths.iter().map(|p| FileState { path: p.to_string(), ..Default::default() }).collect();
        AgentMessage { kind: Some(agent_message::Kind::Snapshot(Snapshot { seq, files, ..Default::default() })) }
    }

    fn refused(r: Result<(), Refusal>) -> String {
        match r {
            Err(Refusal::Invalid(m)) => m,
            other => panic!("expected an invalid-argument refusal, got {other:?}"),
        }
    }

    #[test]
    fn the_hello_comes_first_and_once() {
        let l = Limits::default();
        assert_eq!(check_agent_message(&hello(" web-1 ", "s1"), Position::First, &l), Ok(()));
        assert!(refused(check_agent_message(&snapshot(1, &["/a"]), Position::First, &l)).contains("must be hello"));
        assert!(refused(check_agent_message(&hello("web-1", "s1"), LATER, &l)).contains("twice"));
        let empty = AgentMessage { kind: None };
        assert!(refused(check_agent_message(&empty, LATER, &l)).contains("empty"));
        let hb = AgentMessage { kind: Some(agent_message::Kind::Heartbeat(Heartbeat::default())) };
        assert_eq!(check_agent_message(&hb, LATER, &l), Ok(()));
    }

    #[test]
    fn hello_fields_are_checked() {
        let l = Limits::default();
        assert!(refused(check_agent_message(&hello("web 1", "s1"), Position::First, &l)).contains("host_id"));
        assert!(refused(check_agent_message(&hello("web-1", ""), Position::First, &l)).contains("spool_id"));
        let long = "s".repeat(MAX_SPOOL_ID_LEN + 1);
        assert!(refused(check_agent_message(&hello("web-1", &long), Position::First, &l)).contains("spool_id"));
        let mut m = hello("web-1", "s1");
        if let Some(agent_message::Kind::Hello(h)) = &mut m.kind {
            h.labels = (0..3).map(|i| (format!("k{i}"), "v".to_string())).collect();
        }
        let few = Limits { max_labels: 2, ..Limits::default() };
        assert!(
            matches!(check_agent_message(&m, Position::First, &few), Err(Refusal::Limit(b)) if b.limit == Limit::MaxLabels)
        );
    }

    #[test]
    fn snapshot_seq_paths_and_keys_are_checked() {
        let l = Limits { max_keys_per_file: 1, ..Limits::default() };
        assert_eq!(check_agent_message(&snapshot(1, &["/etc/a"]), LATER, &l), Ok(()));
        assert!(refused(check_agent_message(&snapshot(0, &["/etc/a"]), LATER, &l)).contains("seq"));
        for bad in ["", "etc/a", &format!("/{}", "a".repeat(MAX_PATH_LEN))] {
            assert!(refused(check_agent_message(&snapshot(1, &[bad]), LATER, &l)).contains("absolute"), "{bad:?}");
        }
        let mut m = snapshot(1, &["/etc/a"]);
        if let Some(agent_message::Kind::Snapshot(s)) = &mut m.kind {
            s.files[0].keys = vec![KeyValue::default(), KeyValue::default()];
        }
        match check_agent_message(&m, LATER, &l) {
            Err(Refusal::Limit(b)) => {
                assert_eq!(b.limit, Limit::MaxKeysPerFile);
                assert!(b.what.contains("web-1") && b.what.contains("/etc/a"), "{}", b.what);
            }
            other => panic!("{other:?}"),
        }
    }

    /// A sample time far outside protobuf's range overflowed its conversion to
    /// milliseconds in the gateway and the rule engine (the shared conversion, found by
    /// the silences' fuzzer); such a time is refused.
    #[test]
    fn times_outside_protobufs_range_are_refused() {
        let l = Limits::default();
        let far = prost_types::Timestamp { seconds: i64::MAX, nanos: 0 };
        let mut m = snapshot(1, &["/etc/a"]);
        if let Some(agent_message::Kind::Snapshot(s)) = &mut m.kind {
            s.resources = Some(driftwatch_proto::v1::ResourceSample { sampled_at: Some(far), ..Default::default() });
        }
        assert!(refused(check_agent_message(&m, LATER, &l)).contains("sampled_at"));
        if let Some(agent_message::Kind::Snapshot(s)) = &mut m.kind {
            s.resources = None;
            s.files[0].modified_at = Some(far);
        }
        assert_eq!(check_agent_message(&m, LATER, &l), Ok(()));
    }

    #[test]
    fn decoding_is_bounded_and_garbage_is_refused() {
        let l = Limits { max_message_bytes: 16, ..Limits::default() };
        let big = snapshot(1, &["/etc/a-rather-long-path"]).encode_to_vec();
        assert!(
            matches!(decode_agent_message(&big, LATER, &l), Err(Refusal::Limit(b)) if b.limit == Limit::MaxMessageBytes)
        );
        let l = Limits::default();
        assert!(refused(decode_agent_message(&[0xff, 0xff], LATER, &l).map(drop)).contains("does not decode"));
        let ok = snapshot(3, &["/etc/a"]);
        assert_eq!(decode_agent_message(&ok.encode_to_vec(), LATER, &l), Ok(ok));
    }
}
