//! Operator commands the engine runs in queue order (acknowledge, silences, system
//! alerts, flush), so their events get ids from the same sequencer as evaluation's.

use driftwatch_proto::v1;
use driftwatch_store::{Op, SilenceRecord};
use prost::Message;

use super::{Command, Engine};
use crate::error::ServerError;
use crate::limits::{Breach, Limit, Limits};
use crate::silences::ActiveSilence;

impl Engine {
    pub(super) fn command(&mut self, c: Command) {
        let now = driftwatch_proto::now_millis();
        match c {
            Command::Acknowledge { fingerprint, by, comment, reply } => {
                let result = self.acknowledge(&fingerprint, by, comment, now);
                let result = result.map(|a| (a, self.flush_durable()));
                let _ = reply.send(result);
            }
            Command::CreateSilence { mut silence, max_active, reply } => {
                let live = self.book.live_silences(now);
                let result = if live >= max_active {
                    let what = format!("{live} silences are active or pending");
                    let limits = Limits { max_active_silences: max_active, ..Limits::default() };
                    Err(Breach::new(Limit::MaxActiveSilences, what).refuse(&limits, &self.metrics))
                } else {
                    silence.id = new_id();
                    self.save_silence(silence, now)
                };
                let _ = reply.send(result);
            }
            Command::ExpireSilence { id, reply } => {
                let existing = self.book.silence(&id);
                let result = match existing {
                    None => Err(ServerError::NotFound(format!("no silence {id:?}"))),
                    Some(s) if s.state_at(now) == v1::SilenceState::Expired => {
                        Err(ServerError::FailedPrecondition(format!("silence {id:?} has already expired")))
                    }
                    Some(s) => {
                        let mut silence = s.silence.clone();
                        silence.ends_at = Some(driftwatch_proto::timestamp_from_millis(now));
                        // A pending silence ends before it starts: it never silenced anything.
                        if s.starts_ms > now {
                            silence.starts_at = silence.ends_at;
                        }
                        silence.updated_at = Some(driftwatch_proto::timestamp_from_millis(now));
                        self.save_silence(silence, now)
                    }
                };
                let _ = reply.send(result);
            }
            Command::SystemAlert(a) => self.system_alert(a, now),
            Command::Flush { reply } => {
                let _ = reply.send(self.flush_durable());
            }
        }
    }

    pub(super) fn acknowledge(
        &mut self,
        fp: &str,
        by: String,
        comment: String,
        now: i64,
    ) -> Result<v1::Alert, ServerError> {
        let Some(mut t) = self.book.tracked(fp) else {
            return Err(ServerError::NotFound(format!("no alert with fingerprint {fp:?}")));
        };
        if !matches!(v1::AlertState::try_from(t.alert.state), Ok(v1::AlertState::Pending | v1::AlertState::Firing)) {
            return Err(ServerError::FailedPrecondition(format!(
                "alert {fp} is resolved; only pending or firing alerts can be acknowledged"
            )));
        }
        t.alert.acknowledged =
            Some(v1::Acknowledgement { actor: by, comment, at: Some(driftwatch_proto::timestamp_from_millis(now)) });
        self.persist(fp, &t.alert, now);
        self.event(v1::AlertEventKind::Acknowledged, &t.alert, now);
        let alert = t.alert.clone();
        self.book.put(t);
        Ok(alert)
    }

    /// Hold a new or changed silence, write it, and re-mark the alerts it covers.
    fn save_silence(&mut self, silence: v1::Silence, now: i64) -> Result<(v1::Silence, super::Durable), ServerError> {
        let active = ActiveSilence::new(silence).map_err(ServerError::InvalidArgument)?;
        let view = active.view(now);
        self.ops.push(Op::Silence(SilenceRecord {
            id: active.silence.id.clone(),
            starts_ms: active.starts_ms,
            ends_ms: active.ends_ms,
            updated_ms: now,
            payload: active.silence.encode_to_vec(),
        }));
        self.book.put_silence(active);
        self.silence_boundaries(now);
        Ok((view, self.flush_durable()))
    }
}

/// 16 random bytes, hex: silence ids.
fn new_id() -> String {
    let bytes: [u8; 16] = rand::random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
