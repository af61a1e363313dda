//! `[[notifiers]]` in the server config: the file shape and its validation.

use std::path::PathBuf;
use std::time::Duration;

use driftwatch_proto::v1;
use serde::Deserialize;

use super::transport::{self, Transport};
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
    /// Webhook: the URL to POST to (`http://` or `https://`).
    pub url: Option<String>,
    /// Webhook: a file holding the URL instead (for URLs that are themselves
    /// credentials, like Slack's): shown only as scheme and host. Exactly one of
    /// `url` and `url_file`.
    pub url_file: Option<PathBuf>,
    /// Alertmanager: every instance's base URL (e.g. `http://am1:9093`), each posted
    /// to directly: never a load balancer in front of a cluster.
    pub urls: Option<Vec<String>>,
    /// Webhook: a file holding the HMAC-SHA256 key for `X-Driftwatch-Signature`.
    pub secret_file: Option<PathBuf>,
    /// PEM CA certificates trusted for https:// endpoints instead of the system roots.
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate (chain) for mutual TLS; needs `client_key`.
    pub client_cert: Option<PathBuf>,
    /// PEM private key of `client_cert` (PKCS#8, PKCS#1 or SEC1).
    pub client_key: Option<PathBuf>,
    /// A file whose content (trimmed) is the `Authorization` header value, e.g.
    /// `Bearer abc` or `Basic ...`; a single word is sent as `Bearer <word>`.
    pub authorization_file: Option<PathBuf>,
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

/// An endpoint URL, and how it is shown in status, metrics labels and logs: as
/// written, or scheme and host only when it came from `url_file`.
#[derive(Clone, PartialEq, Eq)]
pub struct NotifierUrl {
    url: reqwest::Url,
    from_file: bool,
}

impl NotifierUrl {
    pub fn new(url: reqwest::Url, from_file: bool) -> Self {
        Self { url, from_file }
    }

    /// The URL to send to; never shown when it came from a file.
    pub fn as_str(&self) -> &str {
        self.url.as_str()
    }

    /// What status, metrics and logs show.
    pub fn shown(&self) -> String {
        if self.from_file { super::transport::redacted(&self.url) } else { self.url.to_string() }
    }

    /// The URL when it is a secret (read from `url_file`).
    pub fn secret(&self) -> Option<&reqwest::Url> {
        self.from_file.then_some(&self.url)
    }

    pub fn is_https(&self) -> bool {
        self.url.scheme() == "https"
    }
}

impl std::fmt::Debug for NotifierUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", self.shown())
    }
}

#[derive(Debug, Clone)]
pub enum NotifierKind {
    Webhook {
        url: NotifierUrl,
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
    /// TLS trust, client certificate and `Authorization` header.
    pub transport: Transport,
}

impl NotifierConfig {
    pub fn kind_name(&self) -> &'static str {
        match self.kind {
            NotifierKind::Webhook { .. } => "webhook",
            NotifierKind::Alertmanager { .. } => "alertmanager",
        }
    }

    /// Some endpoint is https:// (TLS settings matter).
    pub fn any_https(&self) -> bool {
        match &self.kind {
            NotifierKind::Webhook { url, .. } => url.is_https(),
            NotifierKind::Alertmanager { urls, .. } => urls.iter().any(|u| u.starts_with("https://")),
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

/// An http:// or https:// URL with a host and no credentials; messages quote it
/// (without its credentials).
pub fn check_url(url: &str) -> Result<reqwest::Url, String> {
    let name = match reqwest::Url::parse(url.trim()) {
        Ok(mut u) if !u.username().is_empty() || u.password().is_some() => {
            let _ = u.set_password(None);
            let _ = u.set_username("");
            format!("{:?}", u.as_str())
        }
        _ => format!("{url:?}"),
    };
    check_url_named(url, &name)
}

/// The same, with messages naming the URL as `name` (a URL from a file is never quoted).
fn check_url_named(url: &str, name: &str) -> Result<reqwest::Url, String> {
    // The parser's message names the problem, never the input.
    let parsed = reqwest::Url::parse(url.trim()).map_err(|e| format!("{name} is not a URL: {e}"))?;
    match parsed.scheme() {
        "http" | "https" => {}
        other => return Err(format!("{name}: unsupported scheme {other:?}; use http:// or https://")),
    }
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err(format!("{name} has no host"));
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err(format!(
            "{name}: credentials in the URL are refused (they would be shown in status and logs, and over http:// \
             sent in clear); put the Authorization header value in authorization_file"
        ));
    }
    Ok(parsed)
}

/// The webhook's URL: from `url`, or read from `url_file` (never quoted in a message).
fn webhook_url(f: &NotifierFile, err: &mut impl FnMut(&str, String)) -> Option<NotifierUrl> {
    match (&f.url, &f.url_file) {
        (Some(_), Some(_)) => {
            err("url_file", "give either url or url_file, not both".into());
            None
        }
        (None, None) => {
            err("url", "required for a webhook (or url_file: a file holding the URL)".into());
            None
        }
        (Some(u), None) => check_url(u).map(|u| NotifierUrl::new(u, false)).map_err(|e| err("url", e)).ok(),
        (None, Some(p)) => {
            let text = match std::fs::read(p) {
                Ok(bytes) => String::from_utf8(bytes)
                    .map_err(|_| format!("{} is not UTF-8 text", p.display()))
                    .map(|t| t.trim().to_string()),
                Err(e) => Err(format!("{}: {e}", p.display())),
            };
            let checked = text.and_then(|t| match t.as_str() {
                "" => Err(format!("{} is empty", p.display())),
                t => check_url_named(t, &format!("the URL in {}", p.display())),
            });
            checked.map(|u| NotifierUrl::new(u, true)).map_err(|e| err("url_file", e)).ok()
        }
    }
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
                let url = webhook_url(f, &mut err);
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
                    ("url_file", f.url_file.is_some()),
                    ("secret_file", f.secret_file.is_some()),
                    ("repeat_interval", f.repeat_interval.is_some()),
                ] {
                    if set {
                        let why = match field {
                            "url" | "url_file" => "use urls = [...] with every Alertmanager instance",
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
        let transport = transport::load(f, &mut err);
        if let (Some(name), Some(kind), Some(min_severity), Some(selector), Some(transport)) =
            (name, kind, min_severity, selector, transport)
        {
            let c = NotifierConfig {
                name,
                kind,
                filter: Filter { min_severity, selector, matchers, events },
                delivery: Delivery { timeout, max_age, backoff, max_backoff, breaker_failures, breaker_cooldown },
                transport,
            };
            // TLS settings for plain-HTTP endpoints only: a mistake, not a choice.
            let mut useless = false;
            if !c.any_https() {
                for (field, set) in [("ca_file", f.ca_file.is_some()), ("client_cert", f.client_cert.is_some())] {
                    if set {
                        err(field, "only used over https://, and every URL of this notifier is http://".into());
                        useless = true;
                    }
                }
            }
            if !useless {
                out.push(c);
            }
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
        assert_eq!(url.as_str(), "http://127.0.0.1:8080/hook");
        assert_eq!(url.shown(), "http://127.0.0.1:8080/hook", "a url written in the config is shown as is");
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
            url = "https://user:pw@hooks.example/x"
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
        let creds = &errs.iter().find(|(f, _)| f == "notifiers[0].url").unwrap().1;
        assert!(creds.contains("credentials") && creds.contains("authorization_file"), "{creds}");
    }

    #[test]
    fn the_commented_examples_in_the_example_config_are_valid() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/examples/server.toml");
        let text = std::fs::read_to_string(path).unwrap();
        let start = text.find("# [[notifiers]]").expect("notifier examples");
        let uncommented: String = text[start..]
            .lines()
            .filter_map(|l| l.strip_prefix("# ").or_else(|| (l == "#").then_some("")))
            // The key, CA, certificate and token files do not exist here.
            .filter(|l| {
                !["secret_file", "ca_file", "client_cert", "client_key", "authorization_file"]
                    .iter()
                    .any(|f| l.starts_with(f))
            })
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
        assert!(check_url("https://am.example:9093").is_ok(), "https is accepted");
        assert!(check_url("ftp://x").unwrap_err().contains("unsupported scheme"));
        for creds in ["http://user:pw@x/", "https://user:pw@x/", "https://token@x/"] {
            let e = check_url(creds).unwrap_err();
            assert!(e.contains("credentials") && e.contains("authorization_file"), "{e}");
            assert!(e.contains("\"https://x/\"") || e.contains("\"http://x/\""), "quoted without them: {e}");
            assert!(!e.contains("pw") && !e.contains("token"), "{e}");
        }
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

    /// A CA, a client certificate it signed and that certificate's key, and a key of
    /// nothing, as PEM files in `dir`.
    struct Pki {
        ca: PathBuf,
        cert: PathBuf,
        key: PathBuf,
        other_key: PathBuf,
    }

    fn pki(dir: &std::path::Path) -> Pki {
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key).unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["driftwatch-server".to_string()])
            .unwrap()
            .signed_by(&key, &*ca)
            .unwrap();
        let p = Pki {
            ca: dir.join("ca.pem"),
            cert: dir.join("client.pem"),
            key: dir.join("client.key"),
            other_key: dir.join("other.key"),
        };
        std::fs::write(&p.ca, ca.pem()).unwrap();
        std::fs::write(&p.cert, cert.pem()).unwrap();
        std::fs::write(&p.key, key.serialize_pem()).unwrap();
        std::fs::write(&p.other_key, rcgen::KeyPair::generate().unwrap().serialize_pem()).unwrap();
        p
    }

    fn write(dir: &std::path::Path, name: &str, content: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, content).unwrap();
        p
    }

    fn webhook(extra: &str) -> String {
        format!("[[notifiers]]\nname = \"hook\"\nkind = \"webhook\"\n{extra}\n")
    }

    /// The message of `field`'s error, failing when there is none.
    fn error_of(errs: &[(String, String)], field: &str) -> String {
        errs.iter().find(|(f, _)| f == field).unwrap_or_else(|| panic!("no {field} error in {errs:#?}")).1.clone()
    }

    #[test]
    fn https_with_a_ca_file_a_client_certificate_and_an_authorization_file_resolves() {
        let dir = tempfile::tempdir().unwrap();
        let pki = pki(dir.path());
        let token = write(dir.path(), "token", "  s3cr3t-token-value\n");
        let basic = write(dir.path(), "basic", "Basic dXNlcjpwYXNz\n");
        let files = parse(&format!(
            "{}\n[[notifiers]]\nname = \"am\"\nkind = \"alertmanager\"\nurls = [\"https://am1:9093\", \
             \"http://am2:9093\"]\nauthorization_file = \"{}\"\n",
            webhook(&format!(
                "url = \"https://hooks.example/x\"\nca_file = \"{}\"\nclient_cert = \"{}\"\nclient_key = \"{}\"\n\
                 authorization_file = \"{}\"",
                pki.ca.display(),
                pki.cert.display(),
                pki.key.display(),
                token.display()
            )),
            basic.display()
        ));
        let (c, errs) = resolve(&files);
        assert!(errs.is_empty(), "{errs:#?}");
        let t = &c[0].transport;
        assert_eq!(t.ca.as_ref().map(Vec::len), Some(1));
        assert!(t.identity.is_some() && !t.is_plain());
        let auth = t.authorization.as_ref().unwrap();
        assert_eq!(auth.as_bytes(), b"Bearer s3cr3t-token-value", "a bare token is a bearer token, trimmed");
        assert!(auth.is_sensitive());
        let NotifierKind::Webhook { url, .. } = &c[0].kind else { panic!() };
        assert!(url.is_https() && url.secret().is_none());
        assert_eq!(c[1].transport.authorization.as_ref().unwrap().as_bytes(), b"Basic dXNlcjpwYXNz", "kept as is");
        assert!(c[1].transport.is_plain() && c[1].any_https());
        let debug = format!("{c:?}");
        assert!(!debug.contains("s3cr3t") && !debug.contains("dXNlcjpwYXNz"), "{debug}");
        assert!(!debug.contains("PRIVATE KEY"), "{debug}");
        // And a client can be built from it.
        t.client(false).unwrap();
    }

    #[test]
    fn a_client_certificate_needs_its_key_and_the_key_must_match() {
        let dir = tempfile::tempdir().unwrap();
        let pki = pki(dir.path());
        let https = "url = \"https://hooks.example/x\"";
        let resolve_one = |extra: String| resolve(&parse(&webhook(&format!("{https}\n{extra}"))));

        let (c, errs) = resolve_one(format!("client_cert = \"{}\"", pki.cert.display()));
        assert!(c.is_empty());
        assert!(error_of(&errs, "notifiers[0].client_key").contains("client_cert needs client_key"));
        let (_, errs) = resolve_one(format!("client_key = \"{}\"", pki.key.display()));
        assert!(error_of(&errs, "notifiers[0].client_cert").contains("client_key needs client_cert"));

        let (_, errs) = resolve_one(format!(
            "client_cert = \"{}\"\nclient_key = \"{}\"",
            pki.cert.display(),
            pki.other_key.display()
        ));
        assert!(error_of(&errs, "notifiers[0].client_key").contains("is not the private key of the certificate"));

        // A key file that is not PEM: the message never quotes it.
        let junk = write(dir.path(), "junk.key", "hunter2-not-a-key\n");
        let (_, errs) =
            resolve_one(format!("client_cert = \"{}\"\nclient_key = \"{}\"", pki.cert.display(), junk.display()));
        let e = error_of(&errs, "notifiers[0].client_key");
        assert!(e.contains("no PEM private key") && !e.contains("hunter2"), "{e}");
        // The key where the certificate should be.
        let (_, errs) =
            resolve_one(format!("client_cert = \"{}\"\nclient_key = \"{}\"", pki.key.display(), pki.key.display()));
        assert!(error_of(&errs, "notifiers[0].client_cert").contains("no PEM certificate"));
        let (_, errs) = resolve_one(format!(
            "client_cert = \"{}\"\nclient_key = \"{}\"",
            dir.path().join("missing.pem").display(),
            pki.key.display()
        ));
        assert!(error_of(&errs, "notifiers[0].client_cert").contains("missing.pem"));
    }

    #[test]
    fn an_unreadable_or_bad_ca_file_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let pki = pki(dir.path());
        let https = "url = \"https://hooks.example/x\"";
        let ca_error = |path: &std::path::Path| {
            let (c, errs) = resolve(&parse(&webhook(&format!("{https}\nca_file = \"{}\"", path.display()))));
            assert!(c.is_empty());
            error_of(&errs, "notifiers[0].ca_file")
        };
        let e = ca_error(&dir.path().join("nope.pem"));
        assert!(e.contains("nope.pem") && e.contains("No such file"), "{e}");
        let e = ca_error(&write(dir.path(), "empty.pem", "just text\n"));
        assert!(e.contains("no PEM certificate"), "{e}");
        let e = ca_error(&write(
            dir.path(),
            "broken.pem",
            "-----BEGIN CERTIFICATE-----\n!!!not base64!!!\n-----END CERTIFICATE-----\n",
        ));
        assert!(e.contains("not a PEM certificate bundle"), "{e}");
        let e = ca_error(&write(
            dir.path(),
            "garbage.pem",
            "-----BEGIN CERTIFICATE-----\naGVsbG8gd29ybGQ=\n-----END CERTIFICATE-----\n",
        ));
        assert!(e.contains("not usable as a CA"), "{e}");
        // The client key is no CA.
        assert!(ca_error(&pki.key).contains("no PEM certificate"));
        // TLS settings on a plain-HTTP notifier are a mistake.
        let (c, errs) = resolve(&parse(&webhook(&format!("url = \"http://x/\"\nca_file = \"{}\"", pki.ca.display()))));
        assert!(c.is_empty());
        assert!(error_of(&errs, "notifiers[0].ca_file").contains("every URL of this notifier is http://"));
    }

    #[test]
    fn a_webhook_takes_exactly_one_of_url_and_url_file() {
        let dir = tempfile::tempdir().unwrap();
        let secret_url = "https://hooks.example:8443/services/T0/B0/XoXoSeCrEt?token=QuErYsEcReT";
        let file = write(dir.path(), "hook.url", &format!("{secret_url}\n"));
        let (c, errs) = resolve(&parse(&webhook(&format!("url_file = \"{}\"", file.display()))));
        assert!(errs.is_empty(), "{errs:#?}");
        let NotifierKind::Webhook { url, .. } = &c[0].kind else { panic!() };
        assert_eq!(url.as_str(), secret_url);
        assert_eq!(url.shown(), "https://hooks.example:8443/…");
        assert!(url.secret().is_some());
        let debug = format!("{c:?}");
        assert!(!debug.contains("XoXoSeCrEt") && !debug.contains("QuErYsEcReT"), "{debug}");

        let (_, errs) = resolve(&parse(&webhook(&format!("url = \"http://x/\"\nurl_file = \"{}\"", file.display()))));
        assert!(error_of(&errs, "notifiers[0].url_file").contains("either url or url_file"));
        let (_, errs) = resolve(&parse(&webhook("")));
        assert!(error_of(&errs, "notifiers[0].url").contains("required"));
        let (_, errs) = resolve(&parse(&webhook(&format!("url_file = \"{}\"", dir.path().join("none").display()))));
        assert!(error_of(&errs, "notifiers[0].url_file").contains("No such file"));
        // A bad URL in the file: named by its file, never quoted.
        for (name, content, want) in [
            ("empty.url", "\n", "is empty"),
            ("creds.url", "https://user:XoXoSeCrEt@hooks.example/x", "credentials"),
            ("bad.url", "XoXoSeCrEt", "is not a URL"),
            ("ftp.url", "ftp://hooks.example/XoXoSeCrEt", "unsupported scheme"),
        ] {
            let p = write(dir.path(), name, content);
            let (_, errs) = resolve(&parse(&webhook(&format!("url_file = \"{}\"", p.display()))));
            let e = error_of(&errs, "notifiers[0].url_file");
            assert!(e.contains(want) && e.contains(name) && !e.contains("XoXoSeCrEt"), "{e}");
        }
        // Alertmanager lists its instances in urls.
        let (_, errs) = resolve(&parse(&format!(
            "[[notifiers]]\nname = \"am\"\nkind = \"alertmanager\"\nurls = [\"http://am:9093\"]\nurl_file = \"{}\"\n",
            file.display()
        )));
        assert!(error_of(&errs, "notifiers[0].url_file").contains("not for alertmanager"));
    }

    #[test]
    fn an_authorization_file_must_hold_a_header_value() {
        let dir = tempfile::tempdir().unwrap();
        let auth_error = |content: &str| {
            let p = write(dir.path(), "auth", content);
            let (c, errs) = resolve(&parse(&webhook(&format!(
                "url = \"https://hooks.example/x\"\nauthorization_file = \"{}\"",
                p.display()
            ))));
            assert!(c.is_empty());
            error_of(&errs, "notifiers[0].authorization_file")
        };
        assert!(auth_error(" \n").contains("is empty"));
        let e = auth_error("Bearer hunter2\nsecond line");
        assert!(e.contains("cannot carry") && !e.contains("hunter2"), "{e}");
        let (_, errs) = resolve(&parse(&webhook(&format!(
            "url = \"https://hooks.example/x\"\nauthorization_file = \"{}\"",
            dir.path().join("missing").display()
        ))));
        assert!(error_of(&errs, "notifiers[0].authorization_file").contains("No such file"));
    }
}
