//! Changes the server asks for (`ServerMessage.apply_change`). The agent is the
//! authority on what may be written: the server can name a path and the content, never
//! whether the path is writable, and never a command.
//!
//! One change, in this order (a refusal writes nothing, not even a backup):
//!
//! 1. **Allowlist** ([`allow`]): the path must resolve inside `writable`, below the
//!    root's directory handle the agent opened at start ([`resolve`]): every directory on
//!    the way opened from the previous one without following symlinks, a symlink followed
//!    only while it stays inside the root (one that leads out is refused, naming it), and
//!    no directory on the way writable by anyone but root and the agent's user.
//! 2. **Read** the current file relative to its parent directory's handle (`O_NOFOLLOW`),
//!    keeping its device and inode.
//! 3. **Secrets** ([`plan`]): a key edit that sets, removes or reaches into a key whose
//!    current value the agent masks, or sets a value that looks secret itself, is
//!    REFUSED (dry runs too, before any comparison): a secret changes only by restoring
//!    a backup of the same file.
//! 4. **Expected hash**: the file's keyed content hash must be `expected_hash`, else
//!    CONFLICT. Only a dry run may leave it empty (and a restore of a file that does not
//!    exist: the server's view of a missing file has no hash).
//! 5. **New content**: key edits through `driftwatch_formats::edit`, or the content of
//!    `restore_hash` from the [`backup`] store, only if that version was backed up from
//!    this same resolved path (else REFUSED). It must parse (unless the format is text);
//!    equal to the current content → UNCHANGED.
//! 6. **Dry run** stops here with the diff.
//! 7. **Recheck**: the parent directory, opened again from the root handle with
//!    `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)`, must be the directory resolved in
//!    step 1, else CONFLICT.
//! 8. **Backups** of the current and of the new content, durable before the write.
//! 9. **Atomic write** ([`write`]) in that directory, keeping the current file's owner and
//!    mode (edits and restores alike); just before the rename the name must still hold
//!    the file read in step 2 (device and inode), else CONFLICT and nothing replaced
//!    (the backups of step 8 stay: they only ever serve this same path).
//! 10. **Commands** ([`commands`]) from the matching `[[files]]` entry: reload, then
//!     health; a failure puts the previous content back (atomically too, in the same
//!     directory), reloads again and reports ROLLED_BACK.
//!
//! [`Applier::apply`] is blocking and handles one change at a time; `run/changes.rs` feeds it
//! from a dedicated thread, in arrival order.

pub mod allow;
pub mod backup;
pub mod commands;
pub mod plan;
pub mod resolve;
pub mod write;

#[cfg(test)]
mod tests;

use std::collections::{BTreeSet, VecDeque};
use std::fs::{File, Metadata};
use std::io::Read as _;
use std::os::fd::AsFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use rustix::fs::{Mode, OFlags};
use rustix::io::Errno;

use driftwatch_formats::{Format, Limits, Masker};
use driftwatch_proto::v1::{ApplyChange, ChangeOutcome, ChangeResult};

use crate::config::{AgentConfig, FileCommands};
use crate::error::Result;
use crate::hostroot::HostRoot;
use crate::watch::WatchPattern;
use crate::watch::pattern::Compiled;
use allow::{Allowlist, Denied};
use backup::{BackupStore, Kind, short};
use resolve::{FileId, Target};
use write::{Fault, FileMeta, Replace, WriteError};

/// Tests only: see [`Applier::pause`].
#[cfg(test)]
pub(crate) type Pause = Arc<dyn Fn(&Path) + Send + Sync>;

/// Results of this many recent changes are kept, so a change the server sends again
/// (it did not get the result) is answered without being applied twice.
const RECENT: usize = 256;

pub struct Applier {
    allow: Allowlist,
    /// `None` when nothing is writable (then nothing is ever backed up either).
    backups: Option<BackupStore>,
    masker: Arc<Masker>,
    limits: Limits,
    /// Watch patterns with a format override.
    formats: Vec<Compiled>,
    files: Vec<FileCommands>,
    /// `path_prefix`: changes name node paths, applied below the prefix.
    host: HostRoot,
    fault: Option<Fault>,
    /// (dry run, result) of recent changes.
    recent: VecDeque<(bool, ChangeResult)>,
    /// Hashes backed up by the change in progress (never pruned by it).
    just_backed_up: Vec<String>,
    /// Tests only: called with the resolved path after the file was read and the change
    /// planned, before the recheck and the write (to move things around in that window).
    #[cfg(test)]
    pub(crate) pause: Option<Pause>,
}

impl std::fmt::Debug for Applier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Applier").field("allow", &self.allow).finish_non_exhaustive()
    }
}

/// How one change ended, before logging.
struct Done {
    result: ChangeResult,
    /// What to log instead of `result.message` when that may quote a value (edit errors).
    log_message: Option<String>,
}

fn end(mut r: ChangeResult, outcome: ChangeOutcome, message: impl Into<String>) -> Done {
    r.outcome = outcome as i32;
    r.message = message.into();
    if r.after_hash.is_empty() {
        r.after_hash = r.before_hash.clone();
    }
    Done { result: r, log_message: None }
}

/// A unified diff's `---`/`+++` header lines naming `node` instead of `local` (the
/// content lines are the file's own and stay as they are).
fn relabel_diff(diff: &str, local: &str, node: &str) -> String {
    diff.split_inclusive('\n')
        .enumerate()
        .map(|(i, line)| {
            if i < 2 && (line.starts_with("--- ") || line.starts_with("+++ ")) {
                line.replacen(local, node, 1)
            } else {
                line.to_string()
            }
        })
        .collect()
}

/// A file's content and metadata.
type Current = (Vec<u8>, Metadata);

/// The current file, or `None` when it does not exist, read relative to its directory's
/// handle. The error is the outcome to report.
fn read_current(t: &Target, max: u64) -> std::result::Result<Option<Current>, (ChangeOutcome, String)> {
    let path = &t.real;
    let how = OFlags::RDONLY | OFlags::NONBLOCK | OFlags::NOCTTY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let file = match rustix::fs::openat(&t.dir, t.name.as_os_str(), how, Mode::empty()) {
        Ok(fd) => File::from(fd),
        Err(Errno::NOENT) => return Ok(None),
        // Resolved already: a symlink here now means it was swapped since.
        Err(Errno::LOOP) => {
            return Err((ChangeOutcome::Conflict, format!("{} changed into a symlink; try again", path.display())));
        }
        Err(e) => return Err((ChangeOutcome::Failed, format!("cannot read {}: {e}", path.display()))),
    };
    let meta = file.metadata().map_err(|e| (ChangeOutcome::Failed, format!("cannot stat {}: {e}", path.display())))?;
    if meta.is_dir() {
        return Err((ChangeOutcome::Rejected, format!("{} is a directory", path.display())));
    }
    if !meta.is_file() {
        return Err((ChangeOutcome::Rejected, format!("{} is not a regular file", path.display())));
    }
    let too_large =
        || (ChangeOutcome::Rejected, format!("{} is larger than max_file_bytes ({max}); not edited", path.display()));
    if meta.len() > max {
        return Err(too_large());
    }
    let mut buf = Vec::with_capacity(meta.len() as usize);
    (&file)
        .take(max + 1)
        .read_to_end(&mut buf)
        .map_err(|e| (ChangeOutcome::Failed, format!("cannot read {}: {e}", path.display())))?;
    if buf.len() as u64 > max {
        return Err(too_large());
    }
    Ok(Some((buf, meta)))
}

/// The configured paths are node paths; below the applier everything is local
/// (`hostroot`): the writable list, the watch list (format overrides, stale temps) and
/// the per-file commands, mapped below the prefix.
struct Local {
    writable: Vec<String>,
    watch: Vec<WatchPattern>,
    files: Vec<FileCommands>,
}

impl Local {
    fn of(config: &AgentConfig, host: &HostRoot) -> Self {
        Self {
            writable: config.writable.iter().map(|w| host.local_text(w)).collect(),
            watch: config
                .watch
                .iter()
                .map(|p| WatchPattern { pattern: host.local_text(&p.pattern), format: p.format })
                .collect(),
            files: config.files.iter().map(|f| FileCommands { path: host.local_text(&f.path), ..f.clone() }).collect(),
        }
    }
}

impl Applier {
    /// Open the backup store (when anything is writable), read the fault injection
    /// setting, and remove temp files an interrupted write left next to writable and
    /// watched files. Blocking.
    pub fn open(config: &AgentConfig, masker: Arc<Masker>) -> Result<Self> {
        let host = &config.host_root;
        let Local { writable, watch, files } = Local::of(config, host);
        let allow = Allowlist::new(writable.clone(), host.clone());
        let backups = if allow.is_empty() {
            None
        } else {
            Some(BackupStore::open(&config.state_dir.join("backups"), config.backups.clone(), masker.clone())?)
        };
        let formats = watch.iter().filter(|p| p.format.is_some()).filter_map(|p| Compiled::new(p).ok()).collect();
        let applier = Self {
            allow,
            backups,
            masker,
            limits: config.limits.clone(),
            formats,
            files,
            host: host.clone(),
            fault: Fault::from_env(&config.state_dir),
            recent: VecDeque::new(),
            just_backed_up: Vec::new(),
            #[cfg(test)]
            pause: None,
        };
        applier.remove_stale_temps(&writable, &watch);
        if !applier.allow.is_empty() {
            tracing::info!(
                writable = ?config.writable,
                command_files = config.files.len(),
                "changes from the server are allowed for the writable paths"
            );
        }
        Ok(applier)
    }

    /// A reload: the writable allowlist, the per-file commands and the watch list's
    /// format overrides from `config`. Run on the applier thread between two changes,
    /// so no change sees half of it. The backup store opens when the first path becomes
    /// writable; a store that cannot open refuses the new allowlist.
    pub fn reconfigure(&mut self, config: &AgentConfig) -> Result<()> {
        // The prefix itself needs a restart (`run::reload`): the running one stays.
        let Local { writable, watch, files } = Local::of(config, &self.host);
        let allow = Allowlist::new(writable, self.host.clone());
        if self.backups.is_none() && !allow.is_empty() {
            self.backups = Some(BackupStore::open(
                &config.state_dir.join("backups"),
                config.backups.clone(),
                self.masker.clone(),
            )?);
        }
        self.allow = allow;
        self.formats = watch.iter().filter(|p| p.format.is_some()).filter_map(|p| Compiled::new(p).ok()).collect();
        self.files = files;
        tracing::info!(writable = ?config.writable, command_files = config.files.len(), "writable paths and commands reloaded");
        Ok(())
    }

    /// Remove our temp files (`.<name>.driftwatch-tmp-*`) from the directories a write
    /// could have left one in: those of writable and watched paths, and of every path
    /// in the backup index (each write is recorded there before it starts).
    fn remove_stale_temps(&self, writable: &[String], watch: &[WatchPattern]) {
        let mut dirs: BTreeSet<PathBuf> = BTreeSet::new();
        for w in writable {
            let p = Path::new(w);
            if allow::is_glob(w) {
                dirs.insert(allow::split_glob(w).0);
            } else {
                if p.is_dir() {
                    dirs.insert(p.to_path_buf());
                }
                if let Some(parent) = p.parent() {
                    dirs.insert(parent.to_path_buf());
                }
            }
        }
        for p in watch {
            if let Ok(c) = Compiled::new(p) {
                dirs.insert(c.root().to_path_buf());
            }
        }
        if let Some(b) = &self.backups {
            dirs.extend(b.paths().iter().filter_map(|p| p.parent().map(Path::to_path_buf)));
        }
        let removed: usize = dirs.iter().map(|d| write::remove_stale_temps(d)).sum();
        if removed > 0 {
            tracing::warn!(removed, "removed temp files of writes interrupted by a crash");
        }
    }

    /// Handle one change. Blocking (file I/O, fsync, commands). Logs the outcome.
    pub fn apply(&mut self, c: &ApplyChange) -> ChangeResult {
        if !c.change_id.is_empty()
            && let Some((_, r)) =
                self.recent.iter().find(|(dry, r)| r.change_id == c.change_id && r.path == c.path && *dry == c.dry_run)
        {
            tracing::info!(
                change_id = %c.change_id,
                outcome = driftwatch_proto::change_outcome_name(r.outcome),
                "change already handled; sending its result again"
            );
            return r.clone();
        }
        let started = Instant::now();
        self.just_backed_up.clear();
        let Done { result, log_message } = self.run(c);
        if !self.just_backed_up.is_empty()
            && let Some(b) = self.backups.as_mut()
        {
            let protect: Vec<&str> = self.just_backed_up.iter().map(String::as_str).collect();
            if let Err(e) = b.prune(SystemTime::now(), &protect) {
                tracing::warn!(error = %e, "cannot prune backups");
            }
        }
        let outcome = ChangeOutcome::try_from(result.outcome).unwrap_or(ChangeOutcome::Unspecified);
        let message = log_message.as_deref().unwrap_or(&result.message);
        let elapsed_ms = started.elapsed().as_millis() as u64;
        macro_rules! log {
            ($level:ident) => {
                tracing::$level!(
                    change_id = %result.change_id,
                    path = %result.path,
                    outcome = driftwatch_proto::change_outcome_name(result.outcome),
                    before = %short(&result.before_hash),
                    after = %short(&result.after_hash),
                    backup = %short(&result.backup_hash),
                    reason = %c.reason,
                    dry_run = c.dry_run,
                    elapsed_ms,
                    message,
                    "change handled"
                )
            };
        }
        match outcome {
            ChangeOutcome::Applied | ChangeOutcome::DryRun | ChangeOutcome::Unchanged => log!(info),
            _ => log!(warn),
        }
        if !result.change_id.is_empty() {
            if self.recent.len() >= RECENT {
                self.recent.pop_front();
            }
            self.recent.push_back((c.dry_run, result.clone()));
        }
        result
    }

    /// The format of a path: a watch pattern's override, else detected from the name.
    fn format_for(&self, requested: &Path, real: &Path) -> Format {
        let matches = |c: &Compiled, p: &Path| match c.glob() {
            Some(g) => g.is_match(p),
            None => c.explicit() == Some(p),
        };
        self.formats
            .iter()
            .find(|c| matches(c, requested) || matches(c, real))
            .and_then(|c| c.format)
            .unwrap_or_else(|| driftwatch_formats::detect_format(requested))
    }

    fn commands_for(&self, requested: &Path, real: &Path) -> Option<FileCommands> {
        self.files.iter().find(|f| allow::entry_matches(&f.path, requested, real)).cloned()
    }

    /// The edge of the apply worker: a change names a node path, applied to its local
    /// path (`path_prefix`); the result names the node path again.
    fn run(&mut self, c: &ApplyChange) -> Done {
        if self.host.prefix().is_none() {
            return self.run_local(c);
        }
        let local = match self.host.to_local(&c.path) {
            Ok(p) => ApplyChange { path: p.to_string_lossy().into_owned(), ..c.clone() },
            Err(m) => {
                let r = ChangeResult { change_id: c.change_id.clone(), path: c.path.clone(), ..Default::default() };
                return end(r, ChangeOutcome::Refused, m);
            }
        };
        let mut done = self.run_local(&local);
        done.result.path.clone_from(&c.path);
        done.result.diff = relabel_diff(&done.result.diff, &local.path, &c.path);
        done.result.message = self.host.node_message(&done.result.message);
        done.log_message = done.log_message.map(|m| self.host.node_message(&m));
        done
    }

    fn run_local(&mut self, c: &ApplyChange) -> Done {
        let r = ChangeResult { change_id: c.change_id.clone(), path: c.path.clone(), ..Default::default() };
        // 1. The allowlist, before anything is read.
        let target = match self.allow.check(&c.path) {
            Ok(t) => t,
            Err(Denied::Refused(m)) => return end(r, ChangeOutcome::Refused, m),
            Err(Denied::Rejected(m)) => return end(r, ChangeOutcome::Rejected, m),
        };
        let real = target.real.clone();
        let Some(backups) = self.backups.as_ref() else {
            return end(r, ChangeOutcome::Refused, allow::NOTHING_WRITABLE);
        };
        if let Err(m) = plan::validate(c) {
            return end(r, ChangeOutcome::Rejected, m);
        }
        // 2. The file as it is, and which file that is.
        let current = match read_current(&target, self.limits.max_file_bytes) {
            Ok(c) => c,
            Err((o, m)) => return end(r, o, m),
        };
        let read_id = current.as_ref().map(|(_, m)| FileId { dev: m.dev(), ino: m.ino() });

        // 3.–6. Secrets, expected hash, new content, parse check, diff; a dry run stops there.
        let requested = Path::new(&c.path);
        let format = self.format_for(requested, &real);
        let held = plan::Held {
            format,
            content: current.as_ref().map(|(b, _)| b.as_slice()),
            backup: &|hash: &str| backups.lookup(&real, hash),
        };
        let (mut r, new, after_hash) = match plan::plan(c, r, held, &self.masker, &self.limits) {
            plan::Planned::Ended { result, outcome, message, log_message } => {
                let mut d = end(result, outcome, message);
                d.log_message = log_message;
                return d;
            }
            plan::Planned::Write { result, new, after_hash } => (result, new, after_hash),
        };

        #[cfg(test)]
        if let Some(pause) = &self.pause {
            pause(&real);
        }
        // 7. The way to the file is still the one resolved (nothing swapped on the path).
        let dir = match target.recheck() {
            Ok(d) => d,
            Err(m) => return end(r, ChangeOutcome::Conflict, format!("{m}; nothing written")),
        };

        // 8. Backups of both contents, durable before the write. A restore keeps the
        // current file's owner and mode, like an edit; a recreated file gets those it had.
        let meta = match &current {
            Some((_, m)) => Some(FileMeta::of(m)),
            None => backups.meta_of(&real, &c.restore_hash),
        };
        let now = SystemTime::now();
        let backups = self.backups.as_mut().expect("checked above");
        if let Some((old, _)) = &current {
            match backups.put(&real, old, Kind::Before, &c.change_id, meta, now) {
                Ok(h) => {
                    r.backup_hash = h.clone();
                    self.just_backed_up.push(h);
                }
                Err(e) => {
                    return end(
                        r,
                        ChangeOutcome::Failed,
                        format!("cannot back up the current content: {e}; nothing written"),
                    );
                }
            }
        }
        match backups.put(&real, &new, Kind::After, &c.change_id, meta, now) {
            Ok(h) => self.just_backed_up.push(h),
            Err(e) => {
                return end(r, ChangeOutcome::Failed, format!("cannot back up the new content: {e}; nothing written"));
            }
        }

        // 9. The write, in the directory rechecked, over the file that was read.
        let replace = read_id.map_or(Replace::Absent, Replace::Same);
        let dir_path = real.parent().unwrap_or(Path::new("/"));
        let written =
            match write::atomic_write_at(dir.as_fd(), dir_path, &target.name, &new, meta, replace, self.fault.as_ref())
            {
                Ok(id) => id,
                Err(WriteError::Changed(m)) => {
                    return end(r, ChangeOutcome::Conflict, format!("{m}: {}; nothing written", real.display()));
                }
                Err(WriteError::Io(e)) => {
                    return end(
                        r,
                        ChangeOutcome::Failed,
                        format!("cannot write {}: {e}; the file is as it was", real.display()),
                    );
                }
            };

        // 10. Reload and health, from our own config.
        let Some(fc) = self.commands_for(requested, &real) else {
            r.after_hash = after_hash;
            return end(r, ChangeOutcome::Applied, "applied");
        };
        let mut failed: Option<String> = None;
        if let Some(argv) = &fc.reload {
            let run = commands::run(argv, fc.timeout, requested);
            r.reload_output = run.tail;
            if let Some(f) = run.failure {
                failed = Some(format!("reload command `{}` {f}", commands::display_argv(argv)));
            }
        }
        if failed.is_none()
            && let Some(argv) = &fc.health
        {
            let run = commands::run(argv, fc.timeout, requested);
            r.health_output = run.tail;
            if let Some(f) = run.failure {
                failed = Some(format!("health command `{}` {f}", commands::display_argv(argv)));
            }
        }
        let Some(why) = failed else {
            r.after_hash = after_hash;
            let ran = match (&fc.reload, &fc.health) {
                (Some(_), Some(_)) => "reload and health commands succeeded",
                (Some(_), None) => "reload command succeeded",
                _ => "health command succeeded",
            };
            return end(r, ChangeOutcome::Applied, format!("applied; {ran}"));
        };
        // Over the file this change wrote, and nothing else.
        let put_back = match &current {
            Some((old, _)) => {
                write::atomic_write_at(dir.as_fd(), dir_path, &target.name, old, meta, Replace::Same(written), None)
                    .map(|_| ())
            }
            None => write::remove_at(dir.as_fd(), &target.name, written),
        };
        if let Err(e) = put_back {
            r.after_hash = after_hash;
            return end(
                r,
                ChangeOutcome::Failed,
                format!("{why}; putting the previous content back failed: {e}; the file has the new content"),
            );
        }
        let mut message = format!("{why}; the previous content was put back");
        if let Some(argv) = &fc.reload {
            let again = commands::run(argv, fc.timeout, requested);
            r.reload_output.push_str("\n--- reload after the rollback ---\n");
            r.reload_output.push_str(&again.tail);
            match again.failure {
                None => message.push_str(" and reloaded"),
                Some(f) => message.push_str(&format!(" (the reload after the rollback {f})")),
            }
        }
        end(r, ChangeOutcome::RolledBack, message)
    }
}
