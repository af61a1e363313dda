//! Silences: label matchers (`=`, `!=`, `=~`, `!~`, regexes anchored as in
//! Alertmanager) and the pending → active → expired lifecycle. Pure functions.

use std::collections::BTreeMap;

use driftwatch_proto::v1::{self, matcher::Op};

use crate::error::ServerError;

const MAX_MATCHERS: usize = 32;
const MAX_COMMENT: usize = 1024;

/// A matcher with its regex compiled.
#[derive(Debug, Clone)]
pub struct CompiledMatcher {
    name: String,
    op: Op,
    value: String,
    regex: Option<regex::Regex>,
}

impl CompiledMatcher {
    pub fn new(m: &v1::Matcher) -> Result<Self, String> {
        if m.name.is_empty() {
            return Err("matcher name is empty".into());
        }
        let op = Op::try_from(m.op).map_err(|_| format!("matcher {:?}: unknown op {}", m.name, m.op))?;
        let regex = match op {
            Op::Regex | Op::NotRegex => Some(
                regex::Regex::new(&format!("^(?:{})$", m.value))
                    .map_err(|e| format!("matcher {:?}: invalid regex {:?}: {e}", m.name, m.value))?,
            ),
            Op::Equal | Op::NotEqual => None,
        };
        Ok(Self { name: m.name.clone(), op, value: m.value.clone(), regex })
    }

    /// A missing label matches as the empty string, as in Alertmanager.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        let v = labels.get(&self.name).map(String::as_str).unwrap_or("");
        match self.op {
            Op::Equal => v == self.value,
            Op::NotEqual => v != self.value,
            Op::Regex => self.regex.as_ref().is_some_and(|r| r.is_match(v)),
            Op::NotRegex => !self.regex.as_ref().is_some_and(|r| r.is_match(v)),
        }
    }
}

/// The matcher grammar is shared with the CLI.
pub use driftwatch_proto::matcher::{matcher_text, parse_matcher};

/// A silence and its compiled matchers.
#[derive(Debug, Clone)]
pub struct ActiveSilence {
    pub silence: v1::Silence,
    matchers: Vec<CompiledMatcher>,
    pub starts_ms: i64,
    pub ends_ms: i64,
}

impl ActiveSilence {
    pub fn new(silence: v1::Silence) -> Result<Self, String> {
        let matchers = silence.matchers.iter().map(CompiledMatcher::new).collect::<Result<Vec<_>, _>>()?;
        let starts_ms = silence.starts_at.as_ref().map(driftwatch_proto::timestamp_millis).unwrap_or(0);
        let ends_ms = silence.ends_at.as_ref().map(driftwatch_proto::timestamp_millis).unwrap_or(0);
        Ok(Self { silence, matchers, starts_ms, ends_ms })
    }

    pub fn state_at(&self, now_ms: i64) -> v1::SilenceState {
        if now_ms >= self.ends_ms {
            v1::SilenceState::Expired
        } else if now_ms < self.starts_ms {
            v1::SilenceState::Pending
        } else {
            v1::SilenceState::Active
        }
    }

    /// Active at `now_ms` and every matcher matches.
    pub fn silences(&self, labels: &BTreeMap<String, String>, now_ms: i64) -> bool {
        self.state_at(now_ms) == v1::SilenceState::Active && self.matchers.iter().all(|m| m.matches(labels))
    }

    /// The silence as the API shows it at `now_ms`.
    pub fn view(&self, now_ms: i64) -> v1::Silence {
        v1::Silence { state: self.state_at(now_ms) as i32, ..self.silence.clone() }
    }
}

/// Validate a create request into a silence (without id), every problem at once.
pub fn validate_create(req: &v1::CreateSilenceRequest, actor: &str, now_ms: i64) -> Result<v1::Silence, ServerError> {
    let mut problems = Vec::new();
    if req.matchers.is_empty() {
        problems.push("at least one matcher is required".to_string());
    }
    if req.matchers.len() > MAX_MATCHERS {
        problems.push(format!("at most {MAX_MATCHERS} matchers"));
    }
    for m in &req.matchers {
        if let Err(e) = CompiledMatcher::new(m) {
            problems.push(e);
        }
    }
    // A silence matching everything (every matcher matches the empty string) would hide the fleet.
    if !req.matchers.is_empty()
        && req.matchers.iter().filter_map(|m| CompiledMatcher::new(m).ok()).all(|m| m.matches(&BTreeMap::new()))
    {
        problems.push("matchers match every alert; add a matcher that requires a label value".to_string());
    }
    for (field, t) in [("starts_at", &req.starts_at), ("ends_at", &req.ends_at)] {
        if t.as_ref().is_some_and(|t| !driftwatch_proto::timestamp_in_range(t)) {
            problems.push(format!("{field} is not a valid time (years 1 to 9999)"));
        }
    }
    let starts_ms = req.starts_at.as_ref().map(driftwatch_proto::timestamp_millis).unwrap_or(now_ms);
    let ends_ms = match (&req.ends_at, &req.duration) {
        (Some(t), None) => Some(driftwatch_proto::timestamp_millis(t)),
        (None, Some(d)) => match driftwatch_proto::duration::from_proto("duration", d) {
            Ok(d) if !d.is_zero() => Some(starts_ms.max(now_ms).saturating_add(d.as_millis() as i64)),
            Ok(_) => {
                problems.push("duration must be positive".into());
                None
            }
            Err(e) => {
                problems.push(e);
                None
            }
        },
        (Some(_), Some(_)) => {
            problems.push("set ends_at or duration, not both".into());
            None
        }
        (None, _) => {
            problems.push("ends_at or duration is required".into());
            None
        }
    };
    if let Some(end) = ends_ms {
        if end <= starts_ms {
            problems.push("ends_at must be after starts_at".into());
        }
        if end <= now_ms {
            problems.push("ends_at is in the past".into());
        }
    }
    if req.comment.len() > MAX_COMMENT {
        problems.push(format!("comment is longer than {MAX_COMMENT} bytes"));
    }
    if !problems.is_empty() {
        return Err(ServerError::InvalidArgument(problems.join("; ")));
    }
    Ok(v1::Silence {
        id: String::new(),
        matchers: req.matchers.clone(),
        starts_at: Some(driftwatch_proto::timestamp_from_millis(starts_ms)),
        ends_at: ends_ms.map(driftwatch_proto::timestamp_from_millis),
        actor: actor.to_string(),
        comment: req.comment.clone(),
        state: 0,
        updated_at: Some(driftwatch_proto::timestamp_from_millis(now_ms)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn matcher_ops() {
        let l = labels(&[("host", "web-1"), ("severity", "high")]);
        let cases = [
            ("host=web-1", true),
            ("host=web-2", false),
            ("host!=web-2", true),
            ("host=~web-.*", true),
            ("host=~web", false), // anchored
            ("host!~db-.*", true),
            ("host!~web-\\d", false),
            ("missing=", true),
            ("missing!=", false),
            ("missing=~.*", true),
        ];
        for (s, want) in cases {
            let m = CompiledMatcher::new(&parse_matcher(s).unwrap()).unwrap();
            assert_eq!(m.matches(&l), want, "{s}");
            assert_eq!(matcher_text(&parse_matcher(s).unwrap()), s, "round trip");
        }
    }

    #[test]
    fn bad_matchers() {
        assert!(parse_matcher("=x").is_err());
        assert!(parse_matcher("novalue").is_err());
        let m = parse_matcher("host=~(").unwrap();
        assert!(CompiledMatcher::new(&m).unwrap_err().contains("invalid regex"));
        let m = v1::Matcher { name: "a".into(), value: "b".into(), op: 9 };
        assert!(CompiledMatcher::new(&m).unwrap_err().contains("unknown op"));
    }

    #[test]
    fn lifecycle() {
        let req = v1::CreateSilenceRequest {
            matchers: vec![parse_matcher("host=web-1").unwrap()],
            starts_at: Some(driftwatch_proto::timestamp_from_millis(2_000)),
            duration: Some(driftwatch_proto::duration::to_proto(std::time::Duration::from_secs(1))),
            ..Default::default()
        };
        let created = validate_create(&req, "ops", 1_000).unwrap();
        assert_eq!(created.actor, "ops");
        let s = ActiveSilence::new(created).unwrap();
        assert_eq!(s.state_at(1_500), v1::SilenceState::Pending);
        assert_eq!(s.state_at(2_000), v1::SilenceState::Active);
        assert_eq!(s.state_at(3_000), v1::SilenceState::Expired);
        let l = labels(&[("host", "web-1")]);
        assert!(!s.silences(&l, 1_500));
        assert!(s.silences(&l, 2_500));
        assert!(!s.silences(&labels(&[("host", "web-2")]), 2_500));
    }

    /// Found by fuzzing (`silence_matchers`): a start or end far outside protobuf's
    /// timestamp range overflowed the conversion to milliseconds (a panic in the request).
    #[test]
    fn extreme_times_are_refused_not_overflowed() {
        let ts = |seconds| prost_types::Timestamp { seconds, nanos: 999_999_999 };
        let req = |starts_at, ends_at, duration| v1::CreateSilenceRequest {
            matchers: vec![parse_matcher("host=web-1").unwrap()],
            starts_at,
            ends_at,
            duration,
            comment: String::new(),
        };
        let now = 1_700_000_000_000;
        assert!(validate_create(&req(Some(ts(i64::MAX)), Some(ts(i64::MIN)), None), "a", now).is_err());
        assert!(validate_create(&req(Some(ts(i64::MIN)), Some(ts(i64::MAX)), None), "a", now).is_err());
        let long = prost_types::Duration { seconds: 3_000_000_000, nanos: 0 };
        assert!(validate_create(&req(Some(ts(i64::MAX / 1000)), None, Some(long)), "a", now).is_err());
    }

    #[test]
    fn create_reports_every_problem() {
        let req = v1::CreateSilenceRequest {
            matchers: vec![parse_matcher("host=~(").unwrap()],
            ends_at: Some(driftwatch_proto::timestamp_from_millis(500)),
            ..Default::default()
        };
        let e = validate_create(&req, "ops", 1_000).unwrap_err().to_string();
        for want in ["invalid regex", "ends_at is in the past"] {
            assert!(e.contains(want), "{e}");
        }
        let all = v1::CreateSilenceRequest {
            matchers: vec![parse_matcher("host=~.*").unwrap()],
            duration: Some(driftwatch_proto::duration::to_proto(std::time::Duration::from_secs(3600))),
            ..Default::default()
        };
        assert!(validate_create(&all, "ops", 0).unwrap_err().to_string().contains("match every alert"));
        let negative = v1::CreateSilenceRequest {
            matchers: vec![parse_matcher("host=web-1").unwrap()],
            duration: Some(prost_types::Duration { seconds: -60, nanos: 0 }),
            ..Default::default()
        };
        assert!(
            validate_create(&negative, "ops", 0).unwrap_err().to_string().contains("duration: must be a non-negative")
        );
    }
}
