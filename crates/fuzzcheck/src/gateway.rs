//! The gateway's decoding and checking of an agent's message
//! (`driftwatch_server::inbound`), then what the gateway computes from an accepted
//! snapshot before it touches any state.

use driftwatch_proto::v1::{AgentMessage, agent_message};
use driftwatch_server::inbound::{self, Position, Refusal};
use driftwatch_server::limits::{Limit, Limits};
use driftwatch_server::state::FileEntry;
use prost::Message;

use crate::Input;

/// Small limits, so that the fuzzer reaches them with small inputs.
fn limits() -> Limits {
    Limits { max_message_bytes: 64 * 1024, max_labels: 4, max_keys_per_file: 16, ..Limits::default() }
}

/// Input: one byte choosing the message's place on the stream, then the message's bytes.
pub fn agent_message(data: &[u8]) {
    let mut input = Input::new(data);
    let position = if input.bool() { Position::First } else { Position::Later { host: "fuzz-host" } };
    let bytes = input.rest();
    let limits = limits();
    let result = inbound::decode_agent_message(bytes, position, &limits);

    if bytes.len() > limits.max_message_bytes {
        assert!(matches!(&result, Err(Refusal::Limit(b)) if b.limit == Limit::MaxMessageBytes), "{result:?}");
        return;
    }
    // The verdict is the check's on what prost decodes: the wire form (field order,
    // unknown fields, repeated scalars) changes nothing.
    let decoded = AgentMessage::decode(bytes);
    let decode_error = matches!(&result, Err(Refusal::Invalid(m)) if m.starts_with("agent message does not decode"));
    assert_eq!(decoded.is_err(), decode_error, "{result:?}");
    let Ok(decoded) = decoded else { return };
    let canonical = decoded.encode_to_vec();
    let again = inbound::decode_agent_message(&canonical, position, &limits);
    assert_eq!(result.is_ok(), again.is_ok(), "verdict changed on re-encoding: {result:?} / {again:?}");
    let Ok(m) = result else { return };
    // What is held and stored is re-encoded: encoding is stable.
    let reencoded = AgentMessage::decode(canonical.as_slice()).expect("own encoding decodes").encode_to_vec();
    assert_eq!(canonical, reencoded, "re-encoding is not stable");

    match (&m.kind, position) {
        (Some(agent_message::Kind::Hello(h)), Position::First) => {
            assert!(driftwatch_pki::check_host_id(h.host_id.trim()).is_ok(), "accepted host id {:?}", h.host_id);
            assert!(!h.spool_id.is_empty() && h.spool_id.len() <= inbound::MAX_SPOOL_ID_LEN);
            assert!(h.labels.len() <= limits.max_labels);
        }
        (Some(agent_message::Kind::Hello(_)), _) => panic!("a hello accepted after the first message"),
        (_, Position::First) => panic!("something other than a hello accepted first"),
        (Some(agent_message::Kind::Snapshot(s)), _) => snapshot_follow_up(s, &limits),
        (Some(_), _) => {}
        (None, _) => panic!("an empty message accepted"),
    }
}

/// What `ConnTask::snapshot` does with an accepted snapshot, minus the fleet state: held
/// file entries, the rule input of each file, the sample's time and metrics.
fn snapshot_follow_up(s: &driftwatch_proto::v1::Snapshot, limits: &Limits) {
    let now = 1_700_000_000_000;
    assert!(s.seq >= 1);
    let mut incoming = Vec::new();
    for f in &s.files {
        assert!(f.path.starts_with('/') && f.path.len() <= inbound::MAX_PATH_LEN);
        assert!(f.keys.len() <= limits.max_keys_per_file);
        let entry = FileEntry::new(f, s.seq, now);
        let back = FileEntry::from_encoded(entry.encoded().to_vec(), s.seq, now).expect("a held file state decodes");
        assert_eq!(back.state().encode_to_vec(), entry.encoded(), "a held file state re-encodes differently");
        assert_eq!(back.status, f.status);
        let _ = driftwatch_server::rule_input::file_meta(f);
        let keys = driftwatch_server::rule_input::key_map(&f.keys);
        assert!(keys.len() <= f.keys.len());
        incoming.push((f.path.as_str(), entry.encoded().len() as u64));
    }
    let listing_from = s.full.then_some(if s.full_first_seq == 0 { s.seq } else { s.full_first_seq });
    let usage = driftwatch_server::limits::usage_after(std::iter::empty(), &incoming, listing_from);
    assert!(usage.files <= s.files.len());
    if let Some(r) = &s.resources {
        // The gateway's and the engine's time of the sample.
        let _ = r.sampled_at.as_ref().map(driftwatch_proto::timestamp_millis).unwrap_or(now);
        for (metric, _) in driftwatch_rules::resource_metrics(r) {
            assert!(!metric.is_empty());
        }
    }
}
