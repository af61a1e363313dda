//! Alertmanager notifications: `POST <url>/api/v2/alerts` with a JSON array of
//! `{labels, annotations, startsAt, endsAt, generatorURL}`, to every configured
//! instance directly (Alertmanager clusters deduplicate among themselves; a load
//! balancer in front would hide an instance that missed an alert).
//!
//! Alertmanager forgets an alert at its `endsAt`, so firing alerts are re-sent
//! every `resend_interval` with `endsAt = now + 4 × resend_interval` (as Prometheus
//! does): a few lost POSTs never resolve an alert by accident. A resolved alert
//! is sent with `endsAt = resolved_at`: once through the outbox (durable, retried
//! until an instance has taken it, also across restarts), and again by every
//! resend pass for 5 minutes after the resolution. So after an outage of an
//! instance (10 minutes or more), the outbox's retries bring it every fired and
//! resolved event it missed, in order per alert, and the next resend pass the
//! current state of every firing alert: nothing is lost.
//!
//! `generatorURL` is the alert's link under `external_url` ([`super::links`]),
//! left out without one.

use std::collections::BTreeMap;
use std::time::Duration;

use driftwatch_proto::v1;
use serde_json::{Value as Json, json};

use super::links::Links;
use super::webhook::rfc3339;

/// Resolved alerts are re-sent this long after their resolution.
pub const RESOLVED_RESEND_WINDOW: Duration = Duration::from_secs(5 * 60);
/// Firing alerts' `endsAt` is this many resend intervals ahead.
pub const ENDS_AT_INTERVALS: u32 = 4;
pub const ALERTS_PATH: &str = "/api/v2/alerts";

/// A label (or annotation) name as Alertmanager accepts it: `[a-zA-Z_][a-zA-Z0-9_]*`;
/// every other character becomes `_`.
pub fn sanitize_name(name: &str) -> String {
    let mut out: String = name.chars().map(|c| if c.is_ascii_alphanumeric() || c == '_' { c } else { '_' }).collect();
    if out.is_empty() || out.starts_with(|c: char| c.is_ascii_digit()) {
        out.insert(0, '_');
    }
    out
}

/// Sanitized names; empty values dropped (Alertmanager treats them as absent). When
/// two names sanitize alike, the one that was already valid wins, else the first.
fn label_set(map: &BTreeMap<String, String>) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for exact in [true, false] {
        for (k, v) in map {
            let s = sanitize_name(k);
            if (s == *k) == exact && !v.is_empty() {
                out.entry(s).or_insert_with(|| v.clone());
            }
        }
    }
    out
}

/// One alert as Alertmanager takes it; None for alerts that are neither firing nor resolved.
pub fn am_alert(a: &v1::Alert, now_ms: i64, resend: Duration, links: &Links) -> Option<Json> {
    let ms = |t: &Option<prost_types::Timestamp>| t.as_ref().map(driftwatch_proto::timestamp_millis);
    let starts = ms(&a.fired_at).or(ms(&a.active_since)).unwrap_or(now_ms);
    let ends = match v1::AlertState::try_from(a.state) {
        Ok(v1::AlertState::Firing) => now_ms + (resend * ENDS_AT_INTERVALS).as_millis() as i64,
        Ok(v1::AlertState::Resolved) => ms(&a.resolved_at).unwrap_or(now_ms).max(starts),
        _ => return None,
    };
    let labels: BTreeMap<String, String> = a.labels.clone().into_iter().collect();
    let annotations: BTreeMap<String, String> = a.annotations.clone().into_iter().collect();
    let mut doc = json!({
        "labels": label_set(&labels),
        "annotations": label_set(&annotations),
        "startsAt": rfc3339(starts),
        "endsAt": rfc3339(ends),
    });
    if let (Some(link), Some(o)) = (links.alert(a), doc.as_object_mut()) {
        o.insert("generatorURL".into(), Json::String(link));
    }
    Some(doc)
}

/// Firing alerts, and alerts resolved within the last 5 minutes, as one resend body.
pub fn resend_set<'a>(
    alerts: impl Iterator<Item = &'a v1::Alert>,
    now_ms: i64,
    resend: Duration,
    links: &Links,
) -> Vec<Json> {
    let window = RESOLVED_RESEND_WINDOW.as_millis() as i64;
    alerts
        .filter(|a| match v1::AlertState::try_from(a.state) {
            Ok(v1::AlertState::Firing) => true,
            Ok(v1::AlertState::Resolved) => {
                a.resolved_at.as_ref().is_some_and(|r| now_ms - driftwatch_proto::timestamp_millis(r) <= window)
            }
            _ => false,
        })
        .filter_map(|a| am_alert(a, now_ms, resend, links))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alert(state: v1::AlertState) -> v1::Alert {
        v1::Alert {
            fingerprint: "fp".into(),
            host_id: "web-1".into(),
            state: state as i32,
            labels: [
                ("alertname", "workers-above-12"),
                ("severity", "high"),
                ("app.kubernetes.io/name", "web2img"),
                ("app_kubernetes_io_name", "exact wins"),
                ("9lives", "x"),
                ("empty", ""),
            ]
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
            annotations: [("summary".to_string(), "WORKERS 16 above 12".to_string())].into(),
            fired_at: Some(driftwatch_proto::timestamp_from_millis(10_000)),
            resolved_at: (state == v1::AlertState::Resolved).then(|| driftwatch_proto::timestamp_from_millis(70_000)),
            ..Default::default()
        }
    }

    #[test]
    fn names_are_sanitized() {
        assert_eq!(sanitize_name("alertname"), "alertname");
        assert_eq!(sanitize_name("app.kubernetes.io/name"), "app_kubernetes_io_name");
        assert_eq!(sanitize_name("9lives"), "_9lives");
        assert_eq!(sanitize_name(""), "_");
        assert_eq!(sanitize_name("naïve-x"), "na_ve_x");
    }

    #[test]
    fn firing_alert_maps_labels_annotations_and_a_future_ends_at() {
        let resend = Duration::from_secs(60);
        let links = Links::new(Some(super::super::links::check_external_url("https://grafana.example.com").unwrap()));
        let j = am_alert(&alert(v1::AlertState::Firing), 100_000, resend, &links).unwrap();
        assert_eq!(j["labels"]["alertname"], "workers-above-12");
        assert_eq!(j["labels"]["severity"], "high");
        assert_eq!(j["labels"]["app_kubernetes_io_name"], "exact wins");
        assert_eq!(j["labels"]["_9lives"], "x");
        assert!(j["labels"].get("empty").is_none(), "empty values are dropped");
        assert!(j["labels"].as_object().unwrap().values().all(Json::is_string));
        assert_eq!(j["annotations"]["summary"], "WORKERS 16 above 12");
        assert_eq!(j["startsAt"], rfc3339(10_000));
        assert_eq!(j["endsAt"], rfc3339(100_000 + 4 * 60_000));
        assert_eq!(j["generatorURL"], "https://grafana.example.com/d/driftwatch/driftwatch?var-host=web-1");
        // Without external_url there is no link to give: the optional field is left out.
        let j = am_alert(&alert(v1::AlertState::Firing), 100_000, resend, &Links::default()).unwrap();
        assert!(j.get("generatorURL").is_none(), "{j}");
    }

    #[test]
    fn resolved_alert_ends_at_its_resolution_and_is_resent_for_five_minutes() {
        let resend = Duration::from_secs(60);
        let r = alert(v1::AlertState::Resolved);
        let none = &Links::default();
        assert_eq!(am_alert(&r, 100_000, resend, none).unwrap()["endsAt"], rfc3339(70_000));
        assert!(am_alert(&alert(v1::AlertState::Pending), 100_000, resend, none).is_none());
        let all = [alert(v1::AlertState::Firing), r.clone(), alert(v1::AlertState::Pending)];
        assert_eq!(resend_set(all.iter(), 100_000, resend, none).len(), 2);
        assert_eq!(resend_set(all.iter(), 70_000 + 300_000, resend, none).len(), 2, "5 minutes: still sent");
        assert_eq!(resend_set(all.iter(), 70_000 + 300_001, resend, none).len(), 1, "then only the firing one");
    }
}
