//! SIGHUP: the config file read again (by `main.rs`, with the same flags, which still
//! win) and applied as far as it can be on the open stream. The decision is [`plan`],
//! pure; [`Reloader::apply`] carries it out.
//!
//! Live:
//! - `watch`: the watcher drops the old list and arms the new one, then a full listing
//!   follows (made once connected, like every listing). Added paths reach the server in
//!   it; a removed path stops being watched and leaves the server's view when that
//!   listing arrives whole (the server prunes what a whole listing does not name, the
//!   same as after a restart with the shorter list). It is not reported as deleted:
//!   the file is still there, only no longer watched.
//! - `writable` and `files` (per-file commands), and the watch list's format overrides
//!   the applier uses: handed to the applier thread, which takes them before the next
//!   change it applies.
//!
//! Everything else is bound to the connection or to start-up (server URL, TLS and
//! identity, host id, labels — the Hello carries them and the protocol has no update
//! on a live stream —, state dir, spool size, metrics listener, resource sampling and
//! process groups, limits, debounce, rescan, keepalive, backups, `path_prefix`) and is logged as
//! needing a restart, by field name; the running value stays.

use std::sync::Arc;

use parking_lot::Mutex;

use super::Shared;
use super::changes::Reconfigure;
use crate::config::AgentConfig;
use crate::error::{AgentError, Result};
use crate::watch::FileWatcher;

/// What a reload does with a new config.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ReloadPlan {
    /// The watch list changed: replace it and list again.
    pub watch: bool,
    /// The writable allowlist, the per-file commands or the format overrides changed.
    pub applier: bool,
    /// Fields whose new value waits for a restart (the running value stays).
    pub restart: Vec<&'static str>,
}

/// Compare the running config with the file's new one (pure).
pub fn plan(running: &AgentConfig, new: &AgentConfig) -> ReloadPlan {
    // Debug forms: not every field's type has `PartialEq`; the token's value is never logged.
    let differs = |a: &dyn std::fmt::Debug, b: &dyn std::fmt::Debug| format!("{a:?}") != format!("{b:?}");
    let mut restart = Vec::new();
    macro_rules! needs_restart {
        (live: [$($live:ident),*], restart: [$($field:ident),* $(,)?]) => {
            // Every field is named (no `..`): a new one must be sorted into one list.
            let AgentConfig { $($live: _,)* $($field: _,)* } = new;
            $(
                if differs(&running.$field, &new.$field) {
                    restart.push(stringify!($field));
                }
            )*
        };
    }
    needs_restart!(
        live: [watch, writable, files],
        restart: [
            server,
            server_host,
            tls,
            ca_file,
            enroll_token_file,
            host_id,
            labels,
            resource_interval,
            state_dir,
            insecure,
            fleet_key_file,
            limits,
            spool_max_bytes,
            debounce,
            rescan_interval,
            process_groups,
            backups,
            keepalive,
            metrics_listen,
            metrics_token,
            healthz_grace,
            host_root,
        ]
    );
    let watch = differs(&running.watch, &new.watch);
    let applier = watch || differs(&running.writable, &new.writable) || differs(&running.files, &new.files);
    ReloadPlan { watch, applier, restart }
}

/// What one reload did, for the log and the service manager's status.
#[derive(Debug)]
pub struct ReloadReport {
    pub plan: ReloadPlan,
}

impl ReloadReport {
    pub fn summary(&self) -> String {
        let mut applied = Vec::new();
        if self.plan.watch {
            applied.push("watch list");
        }
        if self.plan.applier {
            applied.push("writable paths and commands");
        }
        let applied = if applied.is_empty() { "nothing changed".to_string() } else { applied.join(", ") + " applied" };
        if self.plan.restart.is_empty() {
            format!("reloaded: {applied}")
        } else {
            format!("reloaded: {applied}; needs a restart: {}", self.plan.restart.join(", "))
        }
    }
}

/// Applies reloads to a running agent; one at a time.
pub struct Reloader {
    pub(super) running: tokio::sync::Mutex<AgentConfig>,
    pub(super) watcher: Arc<FileWatcher>,
    pub(super) shared: Arc<Shared>,
    pub(super) applier: Arc<Reconfigure>,
}

impl Reloader {
    /// Apply `new` (read, resolved and validated) as far as it can be on the open
    /// stream. A watch list the watcher refuses changes nothing at all.
    pub async fn apply(&self, new: AgentConfig) -> Result<ReloadReport> {
        let mut running = self.running.lock().await;
        let p = plan(&running, &new);
        if !p.restart.is_empty() {
            tracing::warn!(fields = %p.restart.join(", "), "config file changed settings that need a restart; the running values stay until then");
        }
        if p.watch {
            let (w, patterns) = (self.watcher.clone(), new.watch.clone());
            tokio::task::spawn_blocking(move || w.set_patterns(&patterns))
                .await
                .map_err(|e| AgentError::Watch(format!("reload task failed: {e}")))??;
            // The new list reaches the server as a full listing (once connected).
            self.shared.want_full.notify_one();
        }
        if p.applier {
            let mut next = running.clone();
            next.writable = new.writable.clone();
            next.files = new.files.clone();
            next.watch = new.watch.clone();
            *self.applier.lock() = Some(next);
        }
        // Only what was applied becomes the running config: a field that needs a
        // restart is reported again on every reload until then.
        running.watch = new.watch;
        running.writable = new.writable;
        running.files = new.files;
        Ok(ReloadReport { plan: p })
    }
}

/// The slot the applier thread reads before each change.
pub(super) fn reconfigure_slot() -> Arc<Reconfigure> {
    Arc::new(Mutex::new(None))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{AgentFile, WatchEntry};

    fn config(watch: &[&str], writable: &[&str], label: &str) -> AgentConfig {
        let f = AgentFile {
            watch: watch.iter().map(|w| WatchEntry::Plain(w.to_string())).collect(),
            writable: writable.iter().map(|w| w.to_string()).collect(),
            labels: [("env".to_string(), label.to_string())].into(),
            insecure: Some(true),
            state_dir: Some("/var/lib/dw".into()),
            host_id: Some("h".into()),
            ..Default::default()
        };
        AgentConfig::resolve(f, "test").unwrap()
    }

    #[test]
    fn the_same_config_changes_nothing() {
        let c = config(&["/etc/app/a.env"], &[], "prod");
        assert_eq!(plan(&c, &c), ReloadPlan::default());
    }

    #[test]
    fn the_watch_list_and_the_allowlist_apply_live() {
        let old = config(&["/etc/app/a.env"], &[], "prod");
        let new = config(&["/etc/app/a.env", "/etc/app/*.toml"], &[], "prod");
        assert_eq!(plan(&old, &new), ReloadPlan { watch: true, applier: true, restart: vec![] });
        let new = config(&["/etc/app/a.env"], &["/etc/app"], "prod");
        assert_eq!(plan(&old, &new), ReloadPlan { watch: false, applier: true, restart: vec![] });
    }

    #[test]
    fn labels_and_connection_settings_need_a_restart() {
        let old = config(&["/etc/app/a.env"], &[], "prod");
        let mut new = config(&["/etc/app/b.env"], &[], "staging");
        new.server = "http://127.0.0.1:6000".into();
        new.state_dir = "/elsewhere".into();
        new.metrics_token = Some("secret".into());
        new.host_root = crate::hostroot::HostRoot::new(std::path::Path::new("/tmp")).unwrap();
        let p = plan(&old, &new);
        assert!(p.watch);
        assert_eq!(p.restart, vec!["server", "labels", "state_dir", "metrics_token", "host_root"]);
        let report = ReloadReport { plan: p }.summary();
        assert!(report.contains("needs a restart: server, labels, state_dir, metrics_token"), "{report}");
        assert!(!report.contains("secret"), "values are never shown: {report}");
    }
}
