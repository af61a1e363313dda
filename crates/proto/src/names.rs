//! Names of wire enum values as operators read and type them (CLI tables, rule
//! fields, log fields, audit details): one place, so the CLI, the server and the
//! rules never disagree.

use crate::v1;

/// A `Format` value's short name, as rules (`meta.format`) and the CLI show it: env, ini,
/// yaml, json, toml, keyword, sysctl, nginx, systemd, text (unknown values are tracked as
/// text).
pub fn format_name(f: i32) -> &'static str {
    match v1::Format::try_from(f) {
        Ok(v1::Format::Env) => "env",
        Ok(v1::Format::Ini) => "ini",
        Ok(v1::Format::Yaml) => "yaml",
        Ok(v1::Format::Json) => "json",
        Ok(v1::Format::Toml) => "toml",
        Ok(v1::Format::Keyword) => "keyword",
        Ok(v1::Format::Sysctl) => "sysctl",
        Ok(v1::Format::Nginx) => "nginx",
        Ok(v1::Format::Systemd) => "systemd",
        _ => "text",
    }
}

/// A `Severity` value as operators write it: info, low, medium, high, critical.
pub fn severity_name(s: i32) -> &'static str {
    match v1::Severity::try_from(s) {
        Ok(v1::Severity::Info) => "info",
        Ok(v1::Severity::Low) => "low",
        Ok(v1::Severity::Medium) => "medium",
        Ok(v1::Severity::High) => "high",
        Ok(v1::Severity::Critical) => "critical",
        _ => "unspecified",
    }
}

/// An `AlertState` value: pending, firing, resolved (anything else: inactive).
pub fn alert_state_name(s: i32) -> &'static str {
    match v1::AlertState::try_from(s) {
        Ok(v1::AlertState::Pending) => "pending",
        Ok(v1::AlertState::Firing) => "firing",
        Ok(v1::AlertState::Resolved) => "resolved",
        _ => "inactive",
    }
}

/// An `AlertEventKind` value: pending, fired, resolved, cleared, acknowledged,
/// silenced, unsilenced.
pub fn alert_event_kind_name(k: v1::AlertEventKind) -> &'static str {
    match k {
        v1::AlertEventKind::Pending => "pending",
        v1::AlertEventKind::Fired => "fired",
        v1::AlertEventKind::Resolved => "resolved",
        v1::AlertEventKind::Cleared => "cleared",
        v1::AlertEventKind::Acknowledged => "acknowledged",
        v1::AlertEventKind::Silenced => "silenced",
        v1::AlertEventKind::Unsilenced => "unsilenced",
        v1::AlertEventKind::Unspecified => "unspecified",
    }
}

/// A `ChangeOutcome` value: applied, dry_run, refused, conflict, failed, rolled_back,
/// rejected, unchanged.
pub fn change_outcome_name(outcome: i32) -> &'static str {
    match v1::ChangeOutcome::try_from(outcome).unwrap_or(v1::ChangeOutcome::Unspecified) {
        v1::ChangeOutcome::Unspecified => "unspecified",
        v1::ChangeOutcome::Applied => "applied",
        v1::ChangeOutcome::DryRun => "dry_run",
        v1::ChangeOutcome::Refused => "refused",
        v1::ChangeOutcome::Conflict => "conflict",
        v1::ChangeOutcome::Failed => "failed",
        v1::ChangeOutcome::RolledBack => "rolled_back",
        v1::ChangeOutcome::Rejected => "rejected",
        v1::ChangeOutcome::Unchanged => "unchanged",
    }
}

/// A `RolloutState` value: pending, running, paused, succeeded, failed, rolled_back, aborted.
pub fn rollout_state_name(s: i32) -> &'static str {
    use v1::RolloutState as RS;
    match RS::try_from(s).unwrap_or(RS::Unspecified) {
        RS::Unspecified => "unspecified",
        RS::Pending => "pending",
        RS::Running => "running",
        RS::Paused => "paused",
        RS::Succeeded => "succeeded",
        RS::Failed => "failed",
        RS::RolledBack => "rolled_back",
        RS::Aborted => "aborted",
    }
}

/// A `RolloutHostState` value: waiting, applying, applied, failed, skipped, rolled_back,
/// rollback_failed.
pub fn rollout_host_state_name(s: i32) -> &'static str {
    use v1::RolloutHostState as HS;
    match HS::try_from(s).unwrap_or(HS::Unspecified) {
        HS::Unspecified => "unspecified",
        HS::Waiting => "waiting",
        HS::Applying => "applying",
        HS::Applied => "applied",
        HS::Failed => "failed",
        HS::Skipped => "skipped",
        HS::RolledBack => "rolled_back",
        HS::RollbackFailed => "rollback_failed",
    }
}

/// A rollout in this state has ended: succeeded, failed, rolled back or aborted.
pub fn rollout_is_terminal(state: i32) -> bool {
    use v1::RolloutState as RS;
    matches!(RS::try_from(state), Ok(RS::Succeeded | RS::Failed | RS::RolledBack | RS::Aborted))
}

/// A `ConnectionState` value: online, offline.
pub fn connection_state_name(s: i32) -> &'static str {
    match v1::ConnectionState::try_from(s) {
        Ok(v1::ConnectionState::Online) => "online",
        Ok(v1::ConnectionState::Offline) => "offline",
        _ => "unknown",
    }
}

/// A `SilenceState` value: pending, active, expired.
pub fn silence_state_name(s: i32) -> &'static str {
    match v1::SilenceState::try_from(s) {
        Ok(v1::SilenceState::Pending) => "pending",
        Ok(v1::SilenceState::Active) => "active",
        Ok(v1::SilenceState::Expired) => "expired",
        _ => "-",
    }
}

/// A `FileStatus` value as operators read it: ok, parse error, too large, binary,
/// hash only, missing, unreadable.
pub fn file_status_name(s: i32) -> &'static str {
    match v1::FileStatus::try_from(s) {
        Ok(v1::FileStatus::Ok) => "ok",
        Ok(v1::FileStatus::ParseError) => "parse error",
        Ok(v1::FileStatus::TooLarge) => "too large",
        Ok(v1::FileStatus::Binary) => "binary",
        Ok(v1::FileStatus::HashOnly) => "hash only",
        Ok(v1::FileStatus::Missing) => "missing",
        Ok(v1::FileStatus::Unreadable) => "unreadable",
        _ => "unknown",
    }
}

/// A `Role` value as operators type it: viewer, responder, operator, admin.
pub fn role_name(r: i32) -> &'static str {
    match v1::Role::try_from(r) {
        Ok(v1::Role::Viewer) => "viewer",
        Ok(v1::Role::Responder) => "responder",
        Ok(v1::Role::Operator) => "operator",
        Ok(v1::Role::Admin) => "admin",
        _ => "unspecified",
    }
}

/// The role named `name` (as [`role_name`] writes it, any case).
pub fn parse_role(name: &str) -> Option<v1::Role> {
    let name = name.trim();
    [v1::Role::Viewer, v1::Role::Responder, v1::Role::Operator, v1::Role::Admin]
        .into_iter()
        .find(|r| role_name(*r as i32).eq_ignore_ascii_case(name))
}
