//! SIGHUP: the config file read again and what can change live applied, without
//! dropping a stream. The decision (what changed, what applies now, what waits for a
//! restart) is [`plan`], pure; [`Reloader`] carries it out; `main.rs` only reads the
//! signal and the file.
//!
//! Live: the rules directory's contents are reloaded at once (the directory poll would
//! see them within a moment anyway; SIGHUP makes it now, and an operator's `systemctl
//! reload` waits for it). Everything else is bound at start (listeners, storage, TLS,
//! the notifiers' delivery tasks, limits baked into the transport layers) and is
//! logged as needing a restart, by field name; the running value stays. Operator
//! credentials live in the store (the Access API), not in the config file, so there is
//! nothing of theirs to reload.
//!
//! A file that does not parse or validate changes nothing: every error is logged, the
//! `driftwatch_config_reload_failures` counter and `driftwatch_config_last_reload_success`
//! gauge say so, and the server keeps serving with what it runs.

use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use crate::config::ServerConfig;
use crate::metrics::Metrics;
use crate::rules_service::RulesHandle;

/// What a reload does with a new config.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ReloadPlan {
    /// Reload the rules directory's contents now.
    pub rules: bool,
    /// Fields whose new value waits for a restart (the running value stays).
    pub restart: Vec<&'static str>,
}

/// Compare the running config with the file's new one (pure).
pub fn plan(running: &ServerConfig, new: &ServerConfig) -> ReloadPlan {
    let mut restart = Vec::new();
    // Types without `PartialEq` (TLS clients, durations tables) compare by their Debug
    // form; secrets print as `Secret(..)`, so a changed notifier secret alone is not seen.
    macro_rules! differs {
        (live: [$($live:ident),*], restart: [$($field:ident),* $(,)?]) => {
            // Every field is named (no `..`): a new one must be sorted into one list.
            let ServerConfig { $($live: _,)* $($field: _,)* } = new;
            $(
                if format!("{:?}", running.$field) != format!("{:?}", new.$field) {
                    restart.push(stringify!($field));
                }
            )*
        };
    }
    differs!(
        live: [rules],
        restart: [
            listen,
            storage,
            metrics_listen,
            metrics_token,
            metrics_per_host,
            external_url,
            insecure,
            access,
            limits,
            heartbeat_interval,
            max_batch,
            retention,
            audit_retention,
            notifiers,
            subscriber_ring,
            subscriber_stall,
            remediation,
            tls,
            keepalive,
        ]
    );
    if running.rules != new.rules {
        restart.push("rules");
    }
    // A new directory is a restart; the same one is read again.
    let rules = running.rules.is_some() && running.rules == new.rules;
    ReloadPlan { rules, restart }
}

/// What one reload did, for the log line and the service manager's status.
#[derive(Debug)]
pub struct ReloadReport {
    pub restart: Vec<&'static str>,
    /// The rules reload's outcome (`None`: no rules directory, or a new one).
    pub rules: Option<Result<u32, String>>,
}

impl ReloadReport {
    /// One line for `STATUS=` and the log.
    pub fn summary(&self) -> String {
        let rules = match &self.rules {
            None => "rules unchanged".to_string(),
            Some(Ok(n)) => format!("{n} rules loaded"),
            Some(Err(_)) => "rules reload refused, previous rules running".to_string(),
        };
        if self.restart.is_empty() {
            format!("reloaded: {rules}")
        } else {
            format!("reloaded: {rules}; needs a restart: {}", self.restart.join(", "))
        }
    }
}

/// Applies reloads; one at a time.
pub struct Reloader {
    running: tokio::sync::Mutex<ServerConfig>,
    rules: RulesHandle,
    metrics: Arc<Metrics>,
}

impl Reloader {
    pub fn new(running: ServerConfig, rules: RulesHandle, metrics: Arc<Metrics>) -> Self {
        Self { running: tokio::sync::Mutex::new(running), rules, metrics }
    }

    /// Apply `new` (read and validated from the config file) as far as it can be live.
    pub async fn apply(&self, new: ServerConfig) -> ReloadReport {
        let running = self.running.lock().await;
        let p = plan(&running, &new);
        self.metrics.config_reloads.inc();
        self.metrics.config_last_reload_success.set(1);
        if !p.restart.is_empty() {
            tracing::warn!(fields = %p.restart.join(", "), "config file changed settings that need a restart; the running values stay until then");
        }
        let rules = if p.rules {
            let status = self.rules.reload("SIGHUP").await;
            Some(if status.ok { Ok(status.rules) } else { Err(format!("{} problems", status.problems.len())) })
        } else {
            None
        };
        // The running config stays what the process was started with: a field that
        // needs a restart is reported again on every reload until then.
        drop(running);
        ReloadReport { restart: p.restart, rules }
    }

    /// The file did not parse or validate: nothing changes.
    pub fn refused(&self, errors: &[String]) {
        self.metrics.config_reloads.inc();
        self.metrics.config_reload_failures.inc();
        self.metrics.config_last_reload_success.set(0);
        for e in errors {
            tracing::error!(problem = %e, "config reload refused; the running config stays");
        }
    }
}

/// How long the store writer may hold queued writes without finishing a commit
/// attempt (a success or a failure, which it retries) before the process counts as
/// stalled and stops feeding the service manager's watchdog. Generous: one commit of a
/// large batch, or a retention pass on the writer thread, can take a while.
pub const WRITER_STALL_LIMIT: Duration = Duration::from_secs(120);

/// Whether the store writer makes progress, from its queue depth and a counter of
/// finished commit attempts, sampled by the watchdog task.
#[derive(Debug, Default)]
pub struct WriterWatch {
    seen: u64,
    /// Since when the writer has had queued work and the counter has not moved.
    stuck_since: Option<Instant>,
}

impl WriterWatch {
    /// `Err` with the reason once the writer has sat on queued work for `limit` (pure:
    /// the caller passes the readings and the time). An idle writer is never stalled,
    /// and a failing store that keeps retrying is not either (a restart would not
    /// help a full disk; `/healthz` reports that).
    pub fn check(&mut self, queued: i64, attempts: u64, now: Instant, limit: Duration) -> Result<(), String> {
        if queued <= 0 || attempts != self.seen {
            self.seen = attempts;
            self.stuck_since = None;
            return Ok(());
        }
        let since = *self.stuck_since.get_or_insert(now);
        let stuck = now.saturating_duration_since(since);
        if stuck >= limit {
            Err(format!("store writer: {queued} writes queued and no commit finished for {} s", stuck.as_secs()))
        } else {
            Ok(())
        }
    }
}

/// The watchdog's check of a running server: the store writer is not stalled.
pub fn liveness(metrics: Arc<Metrics>) -> impl FnMut() -> Result<(), String> + Send + 'static {
    let watch = Mutex::new(WriterWatch::default());
    move || {
        let queued = metrics.writer_queue_depth.get();
        let attempts = metrics.writer_attempts.load(std::sync::atomic::Ordering::Relaxed);
        watch.lock().check(queued, attempts, Instant::now(), WRITER_STALL_LIMIT)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> ServerConfig {
        let mut c = ServerConfig::for_tests("/tmp/dw");
        c.rules = Some("/etc/driftwatch/rules".into());
        c
    }

    #[test]
    fn the_same_file_reloads_the_rules_and_needs_no_restart() {
        assert_eq!(plan(&base(), &base()), ReloadPlan { rules: true, restart: vec![] });
        let mut none = base();
        none.rules = None;
        assert_eq!(plan(&none, &none), ReloadPlan { rules: false, restart: vec![] }, "no rules directory");
    }

    #[test]
    fn settings_bound_at_start_are_named_for_a_restart() {
        let mut new = base();
        new.listen = "127.0.0.1:6000".parse().unwrap();
        new.metrics_listen = None;
        new.max_batch = 7;
        new.limits.max_message_bytes += 1;
        new.retention.alerts = Duration::from_secs(1);
        new.external_url = Some("https://grafana.example.com".parse().unwrap());
        new.metrics_per_host = false;
        let p = plan(&base(), &new);
        assert!(p.rules);
        assert_eq!(
            p.restart,
            vec!["listen", "metrics_listen", "metrics_per_host", "external_url", "limits", "max_batch", "retention"]
        );
    }

    #[test]
    fn a_new_rules_directory_waits_for_a_restart() {
        let mut new = base();
        new.rules = Some("/srv/rules".into());
        assert_eq!(plan(&base(), &new), ReloadPlan { rules: false, restart: vec!["rules"] });
    }

    #[test]
    fn the_writer_is_stalled_only_with_queued_work_and_no_progress() {
        let limit = Duration::from_secs(120);
        let t0 = Instant::now();
        let mut w = WriterWatch::default();
        assert!(w.check(0, 0, t0, limit).is_ok(), "idle");
        assert!(w.check(0, 0, t0 + Duration::from_secs(600), limit).is_ok(), "idle for long is fine");
        assert!(w.check(5, 0, t0 + Duration::from_secs(601), limit).is_ok(), "work queued: the clock starts");
        assert!(w.check(5, 0, t0 + Duration::from_secs(700), limit).is_ok());
        let err = w.check(5, 0, t0 + Duration::from_secs(721), limit).unwrap_err();
        assert!(err.contains("5 writes queued") && err.contains("120 s"), "{err}");
        assert!(w.check(5, 1, t0 + Duration::from_secs(722), limit).is_ok(), "an attempt finished");
        assert!(w.check(9, 1, t0 + Duration::from_secs(800), limit).is_ok(), "the clock restarted");
        assert!(w.check(9, 1, t0 + Duration::from_secs(923), limit).is_err());
        assert!(w.check(0, 1, t0 + Duration::from_secs(924), limit).is_ok(), "drained");
    }
}
