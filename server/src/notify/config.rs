//! `[[notifiers]]` in the server config: the file shape and its validation.

use std::path::PathBuf;
use std::time::Duration;

use driftwatch_proto::v1;
use serde::Deserialize;

use crate::selector::Selector;
use crate::silences::CompiledMatcher;

/// One `[[notifiers]]` table as written. Durations as "10s", "4h".
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NotifierFile {
    /// Unique name (letters, digits, `_`, `-`, `.`): shown in status and metrics.
    pub name: Option<String>,
    /// `webhook` or `alertmanager`.
    pub kind: Option<String>,
    /// Webhook: the URL to POST to (http:// only: TLS is not built in).
    pub url: Option<String>,
    /// Alertmanager: every instance's base URL (e.g. `http://am1:9093`), each posted
    /// to directly: never a load balancer in front of a cluster.
    pub urls: Option<Vec<String>>,
    /// Webhook: a file holding the HMAC-SHA256 key for `X-Driftwatch-Signature`.
    pub secret_file: Option<PathBuf>,
    /// Per request (default 10s).
    pub timeout: Option<String>,
    /// info, low, medium, high, critical (default: all).
    pub min_severity: Option<String>,
    /// Host label selector on the alert's labels: `env=production,service=web2img`.
    pub selector: Option<String>,
    /// Alert label matchers, all must match: `severity!=low`, `alertname=~disk-.*`.
    #[serde(default)]
    pub matchers: Vec<String>,
    /// Event kinds notified (default `["fired", "resolved"]`).
    pub events: Option<Vec<String>>,
    /// Webhook: re-notify a still-firing alert this often (default 4h; "0" disables).
    pub repeat_interval: Option<String>,
    /// Alertmanager: re-send firing alerts this often (default 1m).
    pub resend_interval: Option<String>,
    /// Undelivered notifications older than this are dropped, counted and logged (default 24h).
    pub max_age: Option<String>,
    /// First retry delay (default 1s); doubles per attempt up to `max_backoff` (default 1m).
    pub backoff: Option<String>,
    pub max_backoff: Option<String>,
    /// Consecutive failures that open the circuit (default 5).
    pub breaker_failures: Option<u32>,
    /// How long an open circuit waits before one probe (default 30s).
    pub breaker_cooldown: Option<String>,
}

/// A shared secret; never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub Vec<u8>);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}

#[derive(Debug, Clone)]
pub enum NotifierKind {
    Webhook {
        url: String,
        secret: Option<Secret>,
        /// None: no re-notification.
        repeat_interval: Option<Duration>,
    },
    Alertmanager {
        /// Base URLs, without a trailing slash.
        urls: Vec<String>,
        resend_interval: Duration,
    },
}

/// Which events a notifier is told about.
#[derive(Debug, Clone)]
pub struct Filter {
    pub min_severity: v1::Severity,
    pub selector: Selector,
    pub matchers: Vec<CompiledMatcher>,
    pub events: Vec<v1::AlertEventKind>,
}

impl Filter {
    /// The alert passes severity, selector and matchers (the event kind aside).
    pub fn selects(&self, alert: &v1::Alert) -> bool {
        alert.severity >= self.min_severity as i32
            && self.selector.matches(&alert.labels)
            && self.matchers.iter().all(|m| m.matches(&alert.labels))
    }

    pub fn wants(&self, kind: v1::AlertEventKind) -> bool {
        self.events.contains(&kind)
    }
}

/// Delivery tuning shared by both kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delivery {
    pub timeout: Duration,
    pub max_age: Duration,
    pub backoff: Duration,
    pub max_backoff: Duration,
    pub breaker_failures: u32,
    pub breaker_cooldown: Duration,
}

impl Default for Delivery {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(10),
            max_age: Duration::from_secs(24 * 3600),
            backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(60),
            breaker_failures: 5,
            breaker_cooldown: Duration::from_secs(30),
        }
    }
}

/// A validated notifier.
#[derive(Debug, Clone)]
pub struct NotifierConfig {
    pub name: String,
    pub kind: NotifierKind,
    pub filter: Filter,
    pub delivery: Delivery,
}

impl NotifierConfig {
    pub fn kind_name(&self) -> &'static str {
        match self.kind {
            NotifierKind::Webhook { .. } => "webhook",
            NotifierKind::Alertmanager { .. } => "alertmanager",
        }
    }
}

pub const DEFAULT_REPEAT_INTERVAL: Duration = Duration::from_secs(4 * 3600);
pub const DEFAULT_RESEND_INTERVAL: Duration = Duration::from_secs(60);

const EVENT_KINDS: [v1::AlertEventKind; 7] = [
    v1::AlertEventKind::Pending,
    v1::AlertEventKind::Fired,
    v1::AlertEventKind::Resolved,
    v1::AlertEventKind::Cleared,
    v1::AlertEventKind::Acknowledged,
    v1::AlertEventKind::Silenced,
    v1::AlertEventKind::Unsilenced,
];

fn parse_severity(s: &str) -> Result<v1::Severity, String> {
    Ok(match s.trim().to_ascii_lowercase().as_str() {
        "info" => v1::Severity::Info,
        "low" => v1::Severity::Low,
        "medium" => v1::Severity::Medium,
        "high" => v1::Severity::High,
        "critical" => v1::Severity::Critical,
        other => return Err(format!("unknown severity {other:?} (info, low, medium, high, critical)")),
    })
}

/// An http:// URL; https:// is refused because this build has no TLS client.
pub fn check_url(url: &str) -> Result<reqwest::Url, String> {
    let parsed = reqwest::Url::parse(url.trim()).map_err(|e| format!("{url:?} is not a URL: {e}"))?;
    match parsed.scheme() {
        "http" => {}
        "https" => {
            return Err(format!(
                "{url:?}: https is not supported: TLS is not built into this server; use http:// (for example \
                 through a local TLS-terminating proxy)"
            ));
        }
        other => return Err(format!("{url:?}: unsupported scheme {other:?}; use http://")),
    }
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err(format!("{url:?} has no host"));
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err(format!("{url:?}: credentials in the URL would be sent in clear; remove them"));
    }
    Ok(parsed)
}

/// Validate every notifier; problems come back as `(field, message)` with the field
/// as `notifiers[N].field`, all of them at once.
pub fn resolve(files: &[NotifierFile]) -> (Vec<NotifierConfig>, Vec<(String, String)>) {
    let mut errors = Vec::new();
    let mut out = Vec::new();
    let mut names = std::collections::HashSet::new();
    for (i, f) in files.iter().enumerate() {
        let mut err = |field: &str, msg: String| errors.push((format!("notifiers[{i}].{field}"), msg));
        let name = match f.name.as_deref().map(str::trim) {
            None | Some("") => {
                err("name", "required".into());
                None
            }
            Some(n) if !n.chars().all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c)) => {
                err("name", format!("{n:?}: use letters, digits, '_', '-' and '.'"));
                None
            }
            Some(n) if !names.insert(n.to_string()) => {
                err("name", format!("{n:?} is used by another notifier"));
                None
            }
            Some(n) => Some(n.to_string()),
        };
        let mut duration = |field: &str, v: &Option<String>, default: Duration, min: Duration| -> Duration {
            let Some(text) = v else { return default };
            match driftwatch_proto::duration::parse(text) {
                Ok(d) if d.is_zero() && field == "repeat_interval" => Duration::ZERO,
                Ok(d) if d >= min => d,
                Ok(_) => {
                    err(field, format!("must be at least {}", driftwatch_proto::duration::format(min)));
                    default
                }
                Err(e) => {
                    err(field, e);
                    default
                }
            }
        };
        let d = Delivery::default();
        let ms = Duration::from_millis;
        let timeout = duration("timeout", &f.timeout, d.timeout, ms(100));
        // At least an hour: an age limit shorter than an outage would defeat the outbox.
        let max_age = duration("max_age", &f.max_age, d.max_age, Duration::from_secs(3600));
        let backoff = duration("backoff", &f.backoff, d.backoff, ms(10));
        let max_backoff = duration("max_backoff", &f.max_backoff, d.max_backoff, ms(10));
        let breaker_cooldown = duration("breaker_cooldown", &f.breaker_cooldown, d.breaker_cooldown, ms(10));
        let repeat = duration("repeat_interval", &f.repeat_interval, DEFAULT_REPEAT_INTERVAL, ms(100));
        let resend = duration("resend_interval", &f.resend_interval, DEFAULT_RESEND_INTERVAL, ms(100));
        if max_backoff < backoff {
            err("max_backoff", "must be at least backoff".into());
        }
        let breaker_failures = f.breaker_failures.unwrap_or(d.breaker_failures);
        if breaker_failures == 0 {
            err("breaker_failures", "must be at least 1".into());
        }
        let min_severity = match &f.min_severity {
            None => Some(v1::Severity::Unspecified),
            Some(s) => parse_severity(s).map_err(|e| err("min_severity", e)).ok(),
        };
        let selector = Selector::parse(f.selector.as_deref().unwrap_or("")).map_err(|e| err("selector", e)).ok();
        let mut matchers = Vec::new();
        for (j, m) in f.matchers.iter().enumerate() {
            match crate::silences::parse_matcher(m).and_then(|m| CompiledMatcher::new(&m)) {
                Ok(c) => matchers.push(c),
                Err(e) => err(&format!("matchers[{j}]"), e),
            }
        }
        let mut events = Vec::new();
        match &f.events {
            None => events = vec![v1::AlertEventKind::Fired, v1::AlertEventKind::Resolved],
            Some(list) => {
                for e in list {
                    match EVENT_KINDS.iter().find(|k| driftwatch_proto::alert_event_kind_name(**k) == e.trim()) {
                        Some(k) if !events.contains(k) => events.push(*k),
                        Some(_) => {}
                        None => err(
                            "events",
                            format!(
                                "unknown event {e:?} (pending, fired, resolved, cleared, acknowledged, silenced, \
                                 unsilenced)"
                            ),
                        ),
                    }
                }
                if list.is_empty() {
                    err("events", "empty: the notifier would never send anything".into());
                }
            }
        }
        let kind = match f.kind.as_deref().map(str::trim) {
            Some("webhook") => {
                if f.urls.is_some() {
                    err("urls", "a webhook has one url (urls is for alertmanager)".into());
                }
                if f.resend_interval.is_some() {
                    err("resend_interval", "only for alertmanager (webhooks use repeat_interval)".into());
                }
                let url = match &f.url {
                    None => {
                        err("url", "required for a webhook".into());
                        None
                    }
                    Some(u) => check_url(u).map(|u| u.to_string()).map_err(|e| err("url", e)).ok(),
                };
                let secret = match &f.secret_file {
                    None => Some(None),
                    Some(p) => match std::fs::read(p) {
                        Ok(bytes) => {
                            let trimmed = bytes.trim_ascii_end().to_vec();
                            if trimmed.is_empty() {
                                err("secret_file", format!("{} is empty", p.display()));
                                None
                            } else {
                                Some(Some(Secret(trimmed)))
                            }
                        }
                        Err(e) => {
                            err("secret_file", format!("{}: {e}", p.display()));
                            None
                        }
                    },
                };
                match (url, secret) {
                    (Some(url), Some(secret)) => Some(NotifierKind::Webhook {
                        url,
                        secret,
                        repeat_interval: Some(repeat).filter(|d| !d.is_zero()),
                    }),
                    _ => None,
                }
            }
            Some("alertmanager") => {
                for (field, set) in [
                    ("url", f.url.is_some()),
                    ("secret_file", f.secret_file.is_some()),
                    ("repeat_interval", f.repeat_interval.is_some()),
                ] {
                    if set {
                        let why = match field {
                            "url" => "use urls = [...] with every Alertmanager instance",
                            "repeat_interval" => "Alertmanager repeats on its own (see resend_interval)",
                            _ => "only for webhooks",
                        };
                        err(field, format!("not for alertmanager: {why}"));
                    }
                }
                if let Some(bad) =
                    events.iter().find(|k| !matches!(k, v1::AlertEventKind::Fired | v1::AlertEventKind::Resolved))
                {
                    err(
                        "events",
                        format!(
                            "alertmanager takes fired and resolved only, not {}",
                            driftwatch_proto::alert_event_kind_name(*bad)
                        ),
                    );
                }
                let mut urls = Vec::new();
                match &f.urls {
                    None => err("urls", "required for alertmanager: every instance, e.g. [\"http://am1:9093\"]".into()),
                    Some(list) if list.is_empty() => err("urls", "empty".into()),
                    Some(list) => {
                        for (j, u) in list.iter().enumerate() {
                            match check_url(u) {
                                Ok(parsed) => {
                                    let base = parsed.as_str().trim_end_matches('/');
                                    let base = base.strip_suffix("/api/v2/alerts").unwrap_or(base).to_string();
                                    if urls.contains(&base) {
                                        err(&format!("urls[{j}]"), format!("{u:?} is listed twice"));
                                    } else {
                                        urls.push(base);
                                    }
                                }
                                Err(e) => err(&format!("urls[{j}]"), e),
                            }
                        }
                    }
                }
                Some(NotifierKind::Alertmanager { urls, resend_interval: resend })
            }
            None => {
                err("kind", "required: webhook or alertmanager".into());
                None
            }
            Some(other) => {
                err("kind", format!("unknown kind {other:?}: webhook or alertmanager"));
                None
            }
        };
        if let (Some(name), Some(kind), Some(min_severity), Some(selector)) = (name, kind, min_severity, selector) {
            out.push(NotifierConfig {
                name,
                kind,
                filter: Filter { min_severity, selector, matchers, events },
                delivery: Delivery { timeout, max_age, backoff, max_backoff, breaker_failures, breaker_cooldown },
            });
        }
    }
    (out, errors)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Vec<NotifierFile> {
        #[derive(Deserialize)]
        struct F {
            notifiers: Vec<NotifierFile>,
        }
        toml::from_str::<F>(text).unwrap().notifiers
    }

    #[test]
    fn a_webhook_and_an_alertmanager_resolve_with_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("hook.key");
        std::fs::write(&secret, "s3cret\n").unwrap();
        let files = parse(&format!(
            r#"
            [[notifiers]]
            name = "ops"
            kind = "webhook"
            url = "http://127.0.0.1:8080/hook"
            secret_file = "{}"
            min_severity = "high"
            selector = "env=production"
            matchers = ["severity!=low", "alertname=~browser-.*"]

            [[notifiers]]
            name = "am"
            kind = "alertmanager"
            urls = ["http://am1:9093/", "http://am2:9093/api/v2/alerts"]
            "#,
            secret.display()
        ));
        let (c, errs) = resolve(&files);
        assert!(errs.is_empty(), "{errs:?}");
        let NotifierKind::Webhook { url, secret, repeat_interval } = &c[0].kind else { panic!() };
        assert_eq!(url, "http://127.0.0.1:8080/hook");
        assert_eq!(secret.as_ref().unwrap().0, b"s3cret", "trailing newline trimmed");
        assert_eq!(*repeat_interval, Some(DEFAULT_REPEAT_INTERVAL));
        assert_eq!(c[0].filter.min_severity, v1::Severity::High);
        assert_eq!(c[0].filter.events, vec![v1::AlertEventKind::Fired, v1::AlertEventKind::Resolved]);
        assert_eq!(c[0].delivery, Delivery::default());
        assert!(!format!("{:?}", c[0]).contains("s3cret"), "secrets never printed");
        let NotifierKind::Alertmanager { urls, resend_interval } = &c[1].kind else { panic!() };
        assert_eq!(urls, &["http://am1:9093", "http://am2:9093"]);
        assert_eq!(*resend_interval, DEFAULT_RESEND_INTERVAL);
    }

    #[test]
    fn every_problem_is_reported_with_its_field() {
        let files = parse(
            r#"
            [[notifiers]]
            name = "dup"
            kind = "webhook"
            url = "https://hooks.example/x"
            timeout = "soon"
            min_severity = "urgent"
            matchers = ["nonsense", "a=~("]
            events = ["fired", "exploded"]
            secret_file = "/nonexistent/driftwatch.key"
            resend_interval = "1m"

            [[notifiers]]
            name = "dup"
            kind = "alertmanager"
            url = "http://am:9093"
            events = ["acknowledged"]

            [[notifiers]]
            kind = "pager"
            breaker_failures = 0
            backoff = "10s"
            max_backoff = "1s"
            "#,
        );
        let (c, errs) = resolve(&files);
        assert!(c.is_empty());
        let fields: Vec<&str> = errs.iter().map(|(f, _)| f.as_str()).collect();
        for want in [
            "notifiers[0].url",
            "notifiers[0].timeout",
            "notifiers[0].min_severity",
            "notifiers[0].matchers[0]",
            "notifiers[0].matchers[1]",
            "notifiers[0].events",
            "notifiers[0].secret_file",
            "notifiers[0].resend_interval",
            "notifiers[1].name",
            "notifiers[1].url",
            "notifiers[1].urls",
            "notifiers[1].events",
            "notifiers[2].name",
            "notifiers[2].kind",
            "notifiers[2].breaker_failures",
            "notifiers[2].max_backoff",
        ] {
            assert!(fields.contains(&want), "{want} missing from {errs:#?}");
        }
        let https = &errs.iter().find(|(f, _)| f == "notifiers[0].url").unwrap().1;
        assert!(https.contains("TLS is not built into this server"), "{https}");
    }

    #[test]
    fn the_commented_examples_in_the_example_config_are_valid() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/examples/server.toml");
        let text = std::fs::read_to_string(path).unwrap();
        let start = text.find("# [[notifiers]]").expect("notifier examples");
        let uncommented: String = text[start..]
            .lines()
            .filter_map(|l| l.strip_prefix("# ").or_else(|| (l == "#").then_some("")))
            // The key file does not exist here.
            .filter(|l| !l.starts_with("secret_file"))
            .map(|l| format!("{l}\n"))
            .collect();
        let files = parse(&uncommented);
        assert_eq!(files.len(), 2);
        let (c, errs) = resolve(&files);
        assert!(errs.is_empty(), "{errs:?}");
        assert_eq!(c.len(), 2);
    }

    #[test]
    fn urls_are_checked() {
        assert!(check_url("http://127.0.0.1:9093").is_ok());
        assert!(check_url("ftp://x").unwrap_err().contains("unsupported scheme"));
        assert!(check_url("http://user:pw@x/").unwrap_err().contains("credentials"));
        assert!(check_url("not a url").is_err());
    }

    #[test]
    fn filters_route_by_severity_selector_and_matchers() {
        let files = parse(
            r#"
            [[notifiers]]
            name = "f"
            kind = "webhook"
            url = "http://x/"
            min_severity = "medium"
            selector = "env=production,!canary"
            matchers = ["alertname!~debug-.*"]
            "#,
        );
        let (c, errs) = resolve(&files);
        assert!(errs.is_empty(), "{errs:?}");
        let f = &c[0].filter;
        let alert = |sev: v1::Severity, labels: &[(&str, &str)]| v1::Alert {
            severity: sev as i32,
            labels: labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            ..Default::default()
        };
        let prod = [("env", "production"), ("alertname", "workers-above-12")];
        assert!(f.selects(&alert(v1::Severity::High, &prod)));
        assert!(f.selects(&alert(v1::Severity::Medium, &prod)));
        assert!(!f.selects(&alert(v1::Severity::Low, &prod)), "below min_severity");
        assert!(!f.selects(&alert(v1::Severity::High, &[("env", "staging")])), "selector");
        assert!(!f.selects(&alert(v1::Severity::High, &[("env", "production"), ("canary", "1")])), "selector !label");
        assert!(!f.selects(&alert(v1::Severity::High, &[("env", "production"), ("alertname", "debug-mode-on")])));
        assert!(f.wants(v1::AlertEventKind::Fired) && !f.wants(v1::AlertEventKind::Acknowledged));
    }
}
