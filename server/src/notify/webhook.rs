//! Webhook notifications: a signed JSON POST per notification.
//!
//! Body (`Content-Type: application/json`), one object per notification:
//!
//! ```json
//! {
//!   "version": "1",
//!   "notifier": "ops-webhook",
//!   "event_id": 42,
//!   "kind": "fired",
//!   "repeat": 0,
//!   "at": "2026-11-24T10:00:00.123Z",
//!   "sent_at": "2026-11-24T10:00:00.180Z",
//!   "attempt": 1,
//!   "link": "https://grafana.example.com/d/driftwatch/driftwatch?var-host=web-1",
//!   "alert": {
//!     "fingerprint": "9c0e…", "group": "web2img-settings", "rule": "workers-above-12",
//!     "host": "web-1", "path": "/srv/web2img/.env.production", "key": "WORKERS", "metric": "",
//!     "severity": "high", "state": "firing",
//!     "value": 16, "baseline": 8, "previous": 8,
//!     "labels": {"alertname": "workers-above-12", "env": "production", "…": "…"},
//!     "annotations": {"summary": "WORKERS 16 above 12 (baseline 8)"},
//!     "active_since": "…", "fired_at": "…", "resolved_at": null,
//!     "acknowledged": null, "silenced_by": [], "evaluation_error": ""
//!   }
//! }
//! ```
//!
//! `kind` is the event (`fired`, `resolved`, or what `events` adds: `pending`,
//! `cleared`, `acknowledged`, `silenced`, `unsilenced`) or `repeat` for the n-th
//! (`repeat` = n) re-notification of an alert still firing after `repeat_interval`;
//! a repeat carries the `event_id` of the event that fired it. `at` is when the
//! event happened (for a repeat: when it was queued); `sent_at` and `attempt`
//! describe this delivery attempt. `link` is the alert's dashboard under
//! `external_url` (see [`super::links`]), null without one. Values keep their type (string, number, bool,
//! null); a secret stays masked: `{"masked": "<first 16 hex of its keyed
//! fingerprint>", "reason": "key name"}`. Timestamps are RFC 3339 UTC, null when unset.
//!
//! Headers: `X-Driftwatch-Signature: sha256=<hex HMAC-SHA256(secret, body)>` (when
//! `secret_file` is set; verify it over the raw body bytes), `X-Driftwatch-Event-Id`
//! (the event id), `Idempotency-Key` (`<event_id>` or `<event_id>-repeat-<n>`: the
//! same for every attempt of one notification, so a receiver can drop the rare
//! duplicate left by a crash between its 2xx and our commit), and `Authorization`
//! when `authorization_file` is set (see [`super::transport`]). Any 2xx is success;
//! anything else, a timeout or a connection error is retried.

use driftwatch_proto::v1;
use hmac::{Hmac, Mac};
use serde_json::{Value as Json, json};
use sha2::Sha256;

pub const SIGNATURE_HEADER: &str = "X-Driftwatch-Signature";
pub const EVENT_ID_HEADER: &str = "X-Driftwatch-Event-Id";
pub const IDEMPOTENCY_HEADER: &str = "Idempotency-Key";

/// `sha256=<hex>` of HMAC-SHA256(secret, body).
pub fn signature(secret: &[u8], body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes any key length");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// The same for every attempt of one notification.
pub fn idempotency_key(event_id: u64, repeat: u32) -> String {
    if repeat == 0 { event_id.to_string() } else { format!("{event_id}-repeat-{repeat}") }
}

/// What one webhook notification says, besides the event.
pub struct Envelope<'a> {
    pub notifier: &'a str,
    pub kind: &'a str,
    pub repeat: u32,
    pub sent_at_ms: i64,
    pub attempt: u32,
    /// The alert's link (`external_url`), if any.
    pub link: Option<String>,
}

/// The JSON body (see the module docs).
pub fn body(ev: &v1::AlertEvent, env: &Envelope<'_>) -> Vec<u8> {
    let alert = ev.alert.clone().unwrap_or_default();
    let doc = json!({
        "version": "1",
        "notifier": env.notifier,
        "event_id": ev.id,
        "kind": env.kind,
        "repeat": env.repeat,
        "at": ts(&ev.at),
        "sent_at": rfc3339(env.sent_at_ms),
        "attempt": env.attempt,
        "link": env.link,
        "alert": alert_json(&alert),
    });
    serde_json::to_vec(&doc).expect("JSON values serialize")
}

pub fn alert_json(a: &v1::Alert) -> Json {
    json!({
        "fingerprint": a.fingerprint,
        "group": a.group,
        "rule": a.rule,
        "host": a.host_id,
        "path": a.path,
        "key": a.key,
        "metric": a.metric,
        "severity": driftwatch_proto::severity_name(a.severity),
        "state": driftwatch_proto::alert_state_name(a.state),
        "value": value_json(a.value.as_ref()),
        "baseline": value_json(a.baseline.as_ref()),
        "previous": value_json(a.previous.as_ref()),
        "labels": a.labels,
        "annotations": a.annotations,
        "active_since": ts(&a.active_since),
        "fired_at": ts(&a.fired_at),
        "resolved_at": ts(&a.resolved_at),
        "acknowledged": a.acknowledged.as_ref().map(|k| json!({"actor": k.actor, "comment": k.comment, "at": ts(&k.at)})),
        "silenced_by": a.silenced_by,
        "evaluation_error": a.evaluation_error,
    })
}

/// A value as JSON of its own type; a masked one as its short fingerprint only.
pub fn value_json(v: Option<&v1::Value>) -> Json {
    use v1::value::Kind;
    match v.and_then(|v| v.kind.as_ref()) {
        None | Some(Kind::NullValue(_)) => Json::Null,
        Some(Kind::BoolValue(b)) => json!(b),
        Some(Kind::IntValue(i)) => json!(i),
        // NaN and infinities are not JSON: as text.
        Some(Kind::FloatValue(f)) if f.is_finite() => json!(f),
        Some(Kind::FloatValue(f)) => json!(f.to_string()),
        Some(Kind::StringValue(s)) => json!(s),
        Some(Kind::Masked(m)) => {
            json!({"masked": driftwatch_proto::short_fingerprint(&m.fingerprint), "reason": m.reason})
        }
    }
}

fn ts(t: &Option<prost_types::Timestamp>) -> Json {
    t.as_ref().map(|t| json!(rfc3339(driftwatch_proto::timestamp_millis(t)))).unwrap_or(Json::Null)
}

/// RFC 3339 UTC with milliseconds.
pub fn rfc3339(ms: i64) -> String {
    let t = driftwatch_proto::timestamp_from_millis(ms);
    // prost's Display trims the fraction to what is set; keep it fixed at milliseconds.
    let s = prost_types::Timestamp { seconds: t.seconds, nanos: 0 }.to_string();
    let base = s.trim_end_matches('Z');
    format!("{base}.{:03}Z", ms.rem_euclid(1000))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_is_hmac_sha256_hex() {
        // RFC 4231 test case 2.
        let sig = signature(b"Jefe", b"what do ya want for nothing?");
        assert_eq!(sig, "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843");
    }

    #[test]
    fn timestamps_are_rfc3339_with_milliseconds() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(1_795_521_600_123), "2026-11-24T12:00:00.123Z");
    }

    #[test]
    fn body_has_the_documented_shape_and_keeps_secrets_masked() {
        let secret_fp = "a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f90";
        let alert = v1::Alert {
            fingerprint: "fp1".into(),
            group: "g".into(),
            rule: "workers-above-12".into(),
            host_id: "web-1".into(),
            path: "/srv/.env".into(),
            key: "WORKERS".into(),
            state: v1::AlertState::Firing as i32,
            severity: v1::Severity::High as i32,
            labels: [("alertname".to_string(), "workers-above-12".to_string())].into(),
            annotations: [("summary".to_string(), "WORKERS 16".to_string())].into(),
            value: Some(v1::Value::int(16)),
            baseline: Some(v1::Value::masked(secret_fp, "key name")),
            fired_at: Some(driftwatch_proto::timestamp_from_millis(1_000)),
            ..Default::default()
        };
        let ev = v1::AlertEvent {
            id: 42,
            at: Some(driftwatch_proto::timestamp_from_millis(1_000)),
            kind: v1::AlertEventKind::Fired as i32,
            alert: Some(alert),
        };
        let link = Some("https://grafana.example.com/d/driftwatch/driftwatch?var-host=web-1".to_string());
        let env = Envelope { notifier: "ops", kind: "fired", repeat: 0, sent_at_ms: 2_000, attempt: 3, link };
        let bytes = body(&ev, &env);
        let text = String::from_utf8(bytes.clone()).unwrap();
        assert!(!text.contains(secret_fp), "the full fingerprint never leaves: {text}");
        let v: Json = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(v["version"], "1");
        assert_eq!(v["event_id"], 42);
        assert_eq!(v["kind"], "fired");
        assert_eq!(v["attempt"], 3);
        assert_eq!(v["link"], "https://grafana.example.com/d/driftwatch/driftwatch?var-host=web-1");
        assert_eq!(v["at"], "1970-01-01T00:00:01.000Z");
        assert_eq!(v["sent_at"], "1970-01-01T00:00:02.000Z");
        let a = &v["alert"];
        assert_eq!(a["host"], "web-1");
        assert_eq!(a["severity"], "high");
        assert_eq!(a["state"], "firing");
        assert_eq!(a["value"], 16);
        assert_eq!(a["baseline"], json!({"masked": "a1b2c3d4e5f60718", "reason": "key name"}));
        assert_eq!(a["previous"], Json::Null);
        assert_eq!(a["labels"]["alertname"], "workers-above-12");
        assert_eq!(a["annotations"]["summary"], "WORKERS 16");
        assert_eq!(a["fired_at"], "1970-01-01T00:00:01.000Z");
        assert_eq!(a["resolved_at"], Json::Null);
        assert_eq!(idempotency_key(42, 0), "42");
        assert_eq!(idempotency_key(42, 2), "42-repeat-2");
    }

    #[test]
    fn values_keep_their_type() {
        assert_eq!(value_json(Some(&v1::Value::string("x"))), json!("x"));
        assert_eq!(value_json(Some(&v1::Value::bool(true))), json!(true));
        assert_eq!(value_json(Some(&v1::Value::float(1.5))), json!(1.5));
        assert_eq!(value_json(Some(&v1::Value::float(f64::NAN))), json!("NaN"));
        assert_eq!(value_json(Some(&v1::Value::null())), Json::Null);
        assert_eq!(value_json(None), Json::Null);
    }
}
