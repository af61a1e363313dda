//! `Rules` service and hot reload of the rules directory.
//!
//! The directory is polled (names, sizes, modification times, inodes of every file
//! under it) four times a second: cheap for a directory of rule files, and it sees
//! every way editors and config management replace files (rename over, truncate
//! and write, ConfigMap symlink swaps), which event APIs report inconsistently.
//! A change is loaded in full; a directory with any error keeps the previous rules
//! running and the error is kept for `CheckRules`/`ListRules`, logged, and
//! exported as `driftwatch_rules_last_reload_success 0`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::Mutex;
use std::time::Duration;

use driftwatch_proto::v1::{self, rules_server::Rules};
use driftwatch_rules::{RuleError, RuleSet, Target};
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

use crate::audit::{AuditEntry, AuditLog};
use crate::engine::{EngineHandle, EvalMsg};
use crate::error::ServerError;
use crate::metrics::Metrics;
use crate::state::FleetState;

const POLL: Duration = Duration::from_millis(250);
const MAX_INLINE_BYTES: usize = 1024 * 1024;

/// The running rules and the outcome of the last reload.
pub struct RulesState {
    pub dir: Option<PathBuf>,
    pub current: Option<Arc<RuleSet>>,
    pub status: v1::ReloadStatus,
    /// Hash of the rule files behind `current`, and of those of the last reload
    /// attempt (None until known): only a reload that changes them is audited.
    pub running_hash: Option<String>,
    pub attempted_hash: Option<String>,
}

#[derive(Clone)]
pub struct RulesHandle {
    inner: Arc<Mutex<RulesState>>,
    engine: EngineHandle,
    metrics: Arc<Metrics>,
    /// One reload at a time (the watcher and `ReloadRules`).
    reload_lock: Arc<tokio::sync::Mutex<()>>,
    audit: AuditLog,
}

fn problems(errors: &[RuleError], dir: Option<&Path>) -> Vec<v1::RuleProblem> {
    errors
        .iter()
        .map(|e| v1::RuleProblem {
            file: dir.and_then(|d| e.file.strip_prefix(d).ok()).unwrap_or(&e.file).display().to_string(),
            line: e.line as u32,
            column: e.column as u32,
            message: e.message.clone(),
        })
        .collect()
}

impl RulesHandle {
    pub fn new(
        dir: Option<PathBuf>,
        initial: Option<Arc<RuleSet>>,
        engine: EngineHandle,
        metrics: Arc<Metrics>,
        audit: AuditLog,
    ) -> Self {
        let now = Some(driftwatch_proto::timestamp(std::time::SystemTime::now()));
        let count = initial.as_ref().map(|r| r.len()).unwrap_or(0) as u32;
        let status = v1::ReloadStatus {
            dir: dir.as_ref().map(|d| d.display().to_string()).unwrap_or_default(),
            ok: true,
            last_attempt: now,
            last_success: now,
            problems: Vec::new(),
            rules: count,
        };
        metrics.rules_loaded.set(i64::from(count));
        metrics.rules_last_reload_success.set(1);
        Self {
            inner: Arc::new(Mutex::new(RulesState {
                dir,
                current: initial,
                status,
                running_hash: None,
                attempted_hash: None,
            })),
            engine,
            metrics,
            reload_lock: Arc::new(tokio::sync::Mutex::new(())),
            audit,
        }
    }

    pub fn current(&self) -> Option<Arc<RuleSet>> {
        self.inner.lock().current.clone()
    }

    pub fn status(&self) -> v1::ReloadStatus {
        self.inner.lock().status.clone()
    }

    /// Load the directory; on success swap the rules in, else keep the old ones.
    /// The server's own reload (the directory poll), audited as [`crate::audit::SERVER_ACTOR`].
    pub async fn reload(&self, reason: &str) -> v1::ReloadStatus {
        self.reload_by(reason, crate::audit::SERVER_ACTOR).await
    }

    /// [`RulesHandle::reload`] on someone's behalf. A reload whose files differ from
    /// the running rules (or, when it fails, from the last attempt) is audited as
    /// `rules.reloaded` / `rules.reload_failed`; one that finds nothing new is not.
    pub async fn reload_by(&self, reason: &str, actor: &str) -> v1::ReloadStatus {
        let _one = self.reload_lock.lock().await;
        let Some(dir) = self.inner.lock().dir.clone() else { return self.status() };
        self.metrics.rules_reloads.inc();
        let d = dir.clone();
        let (loaded, hash) = tokio::task::spawn_blocking(move || {
            // Hashed first: a file replaced in between makes the poll reload again.
            let hash = rules_hash(&d);
            (RuleSet::load_dir(&d), hash)
        })
        .await
        .unwrap_or_else(|e| {
            let err = RuleError { file: dir.clone(), line: 0, column: 0, message: format!("load task: {e}") };
            (Err(vec![err]), String::new())
        });
        let (status, audit, loaded) = self.apply(&dir, loaded, hash, reason, actor);
        if let Some(set) = loaded {
            // Pushed, not sent: a full engine queue must not lose a reload.
            if let Err(e) = self.engine.push(EvalMsg::Rules(Some(set))).await {
                tracing::error!(error = %e, "new rules not handed to the rule engine");
            }
        }
        if let Some(entry) = audit {
            self.audit.record(entry).await;
        }
        status
    }

    /// Swap a loaded set in (or keep the old one and the problems); the audit event to
    /// record, if anything changed, and the set for the engine, if one loaded.
    fn apply(
        &self,
        dir: &Path,
        loaded: Result<RuleSet, Vec<RuleError>>,
        hash: String,
        reason: &str,
        actor: &str,
    ) -> (v1::ReloadStatus, Option<AuditEntry>, Option<Arc<RuleSet>>) {
        let now = Some(driftwatch_proto::timestamp(std::time::SystemTime::now()));
        let mut new_set = None;
        let mut st = self.inner.lock();
        st.status.last_attempt = now;
        let before = st.running_hash.clone();
        let entry = |action: &str, detail: String| AuditEntry {
            actor: actor.to_string(),
            action: action.to_string(),
            target: dir.display().to_string(),
            before_hash: before.clone().unwrap_or_default(),
            after_hash: hash.clone(),
            detail,
            ..Default::default()
        };
        let mut audit = None;
        match loaded {
            Ok(set) => {
                let set = Arc::new(set);
                if before.as_deref() != Some(hash.as_str()) {
                    let files: std::collections::BTreeSet<String> = set
                        .rules()
                        .iter()
                        .map(|r| r.source.strip_prefix(dir).unwrap_or(&r.source).display().to_string())
                        .collect();
                    let files = files.into_iter().collect::<Vec<_>>().join(", ");
                    audit = Some(entry("rules.reloaded", format!("{} rules from [{files}]; {reason}", set.len())));
                }
                st.running_hash = Some(hash.clone());
                st.attempted_hash = Some(hash.clone());
                st.status.ok = true;
                st.status.last_success = now;
                st.status.problems.clear();
                st.status.rules = set.len() as u32;
                st.current = Some(set.clone());
                self.metrics.rules_loaded.set(set.len() as i64);
                self.metrics.rules_last_reload_success.set(1);
                tracing::info!(dir = %dir.display(), rules = set.len(), reason, "rules reloaded");
                new_set = Some(set);
            }
            Err(errors) => {
                st.status.ok = false;
                st.status.problems = problems(&errors, Some(dir));
                self.metrics.rules_reload_failures.inc();
                self.metrics.rules_last_reload_success.set(0);
                for e in &errors {
                    tracing::error!(problem = %e, "rules reload refused; the previous rules keep running");
                }
                if st.attempted_hash.as_deref() != Some(hash.as_str()) {
                    let first = st
                        .status
                        .problems
                        .first()
                        .map(|p| format!("{}:{}:{}: {}", p.file, p.line, p.column, p.message));
                    audit = Some(entry(
                        "rules.reload_failed",
                        format!(
                            "{} problems, the previous rules keep running; {reason}; {}",
                            errors.len(),
                            first.unwrap_or_default()
                        ),
                    ));
                }
                st.attempted_hash = Some(hash.clone());
            }
        }
        (st.status.clone(), audit, new_set)
    }

    /// Poll the directory until `shutdown`; reload on any change.
    pub fn watch(&self, shutdown: CancellationToken) -> Option<tokio::task::JoinHandle<()>> {
        let dir = self.inner.lock().dir.clone()?;
        let this = self.clone();
        Some(tokio::spawn(async move {
            let d = dir.clone();
            let (mut last, hash) =
                tokio::task::spawn_blocking(move || (dir_signature(&d), rules_hash(&d))).await.unwrap_or_default();
            {
                // What the running rules were loaded from, as far as the poll can tell.
                let mut st = this.inner.lock();
                st.running_hash.get_or_insert_with(|| hash.clone());
                st.attempted_hash.get_or_insert(hash);
            }
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tokio::time::sleep(POLL) => {}
                }
                let d = dir.clone();
                let sig = tokio::task::spawn_blocking(move || dir_signature(&d)).await.unwrap_or_default();
                if sig != last {
                    last = sig;
                    this.reload("rules directory changed").await;
                }
            }
        }))
    }
}

/// (relative path → (len, mtime ns, inode)) of every file under `dir`, following
/// symlinks (ConfigMaps swap a `..data` link).
fn dir_signature(dir: &Path) -> BTreeMap<PathBuf, (u64, i128, u64)> {
    use std::os::unix::fs::MetadataExt;
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else { continue };
        for e in rd.flatten() {
            let p = e.path();
            let Ok(md) = std::fs::metadata(&p) else { continue };
            if md.is_dir() {
                if out.len() < 10_000 && stack.len() < 1_000 {
                    stack.push(p);
                }
            } else {
                let mtime = i128::from(md.mtime()) * 1_000_000_000 + i128::from(md.mtime_nsec());
                out.insert(p, (md.len(), mtime, md.ino()));
            }
        }
    }
    out
}

/// SHA-256 (hex) over the names and contents of the rule files `RuleSet::load_dir`
/// reads (`*.yaml`/`*.yml` directly in `dir`, symlinks followed); empty when the
/// directory cannot be read. Schemas the rules name are not part of it.
fn rules_hash(dir: &Path) -> String {
    use sha2::{Digest, Sha256};
    let Ok(rd) = std::fs::read_dir(dir) else { return String::new() };
    let mut files: Vec<PathBuf> = rd
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_file() && matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml")))
        .collect();
    files.sort();
    let mut h = Sha256::new();
    for f in files {
        let name = f.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let content = std::fs::read(&f).unwrap_or_default();
        // Lengths first: no two different sets of files hash the same stream.
        h.update((name.len() as u64).to_le_bytes());
        h.update(name.as_bytes());
        h.update((content.len() as u64).to_le_bytes());
        h.update(&content);
    }
    hex::encode(h.finalize())
}

/// Rules whose selector matches none of `hosts`, placed at the rule's `name:` line.
fn unmatched_selectors(
    set: &RuleSet,
    hosts: &[BTreeMap<String, String>],
    inline: &BTreeMap<String, String>,
) -> Vec<RuleError> {
    let mut out = Vec::new();
    let mut texts: BTreeMap<PathBuf, String> = BTreeMap::new();
    for r in set.rules() {
        if r.selector.is_empty() || hosts.iter().any(|l| r.selects(l)) {
            continue;
        }
        let text = texts.entry(r.source.clone()).or_insert_with(|| {
            inline
                .get(&r.source.display().to_string())
                .cloned()
                .unwrap_or_else(|| std::fs::read_to_string(&r.source).unwrap_or_default())
        });
        let (line, column) = name_position(text, &r.name);
        let selector = r.selector.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(",");
        out.push(RuleError {
            file: r.source.clone(),
            line,
            column,
            message: format!("rule {:?}: selector {selector} matches none of the {} known hosts", r.name, hosts.len()),
        });
    }
    out
}

/// 1-based line and column of `name: <name>` in a rule file (0, 0 when not found).
fn name_position(text: &str, name: &str) -> (usize, usize) {
    for (i, line) in text.lines().enumerate() {
        let t = line.trim_start().trim_start_matches("- ").trim_start();
        if let Some(rest) = t.strip_prefix("name:")
            && rest.trim().trim_matches(|c| c == '"' || c == '\'') == name
        {
            return (i + 1, line.len() - t.len() + 1);
        }
    }
    (0, 0)
}

pub struct RulesService {
    pub rules: RulesHandle,
    pub state: Arc<FleetState>,
}

fn target_text(t: &Target) -> String {
    match t {
        Target::File { file, key: Some(k) } => format!("file {} key {}", file.as_str(), k.as_str()),
        Target::File { file, key: None } => format!("file {}", file.as_str()),
        Target::Resource { metric } => format!("resource {metric}"),
        Target::AgentOffline => "agent offline".to_string(),
    }
}

#[tonic::async_trait]
impl Rules for RulesService {
    async fn list_rules(&self, _: Request<v1::ListRulesRequest>) -> Result<Response<v1::ListRulesResponse>, Status> {
        let set = self.rules.current();
        let status = self.rules.status();
        let dir = (!status.dir.is_empty()).then(|| PathBuf::from(&status.dir));
        let rules = set
            .iter()
            .flat_map(|s| s.rules().iter())
            .map(|r| v1::RuleInfo {
                group: r.group.clone(),
                name: r.name.clone(),
                selector: r.selector.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(","),
                target: target_text(&r.target),
                expr: r.expr.clone(),
                r#for: Some(driftwatch_proto::duration::to_proto_ms(r.timing.for_ms)),
                keep_firing_for: Some(driftwatch_proto::duration::to_proto_ms(r.timing.keep_firing_for_ms)),
                severity: r.severity.to_string(),
                labels: r.labels.clone(),
                annotations: r.annotations.clone(),
                source: dir
                    .as_ref()
                    .and_then(|d| r.source.strip_prefix(d).ok())
                    .unwrap_or(&r.source)
                    .display()
                    .to_string(),
            })
            .collect();
        Ok(Response::new(v1::ListRulesResponse { rules, status: Some(status) }))
    }

    async fn check_rules(
        &self,
        request: Request<v1::CheckRulesRequest>,
    ) -> Result<Response<v1::CheckRulesResponse>, Status> {
        let files = request.into_inner().files;
        let status = self.rules.status();
        let total: usize = files.iter().map(|f| f.content.len()).sum();
        if total > MAX_INLINE_BYTES {
            return Err(
                ServerError::InvalidArgument(format!("rule files total more than {MAX_INLINE_BYTES} bytes")).into()
            );
        }
        let dir = (!status.dir.is_empty()).then(|| PathBuf::from(&status.dir));
        let hosts: Vec<BTreeMap<String, String>> = self.state.hosts.iter().map(|h| h.labels.clone()).collect();
        let checked = tokio::task::spawn_blocking(move || {
            let inline: BTreeMap<String, String> = files.iter().map(|f| (f.name.clone(), f.content.clone())).collect();
            let warn = |set: &RuleSet| unmatched_selectors(set, &hosts, &inline);
            if files.is_empty() {
                match &dir {
                    Some(d) => RuleSet::load_dir(d).map(|s| (s.len(), warn(&s))),
                    None => Err(vec![RuleError {
                        file: PathBuf::from("--rules"),
                        line: 0,
                        column: 0,
                        message: "the server runs without a rules directory; send files to check".into(),
                    }]),
                }
            } else {
                let mut errors = Vec::new();
                let mut count = 0;
                let mut warnings = Vec::new();
                for f in &files {
                    match RuleSet::from_text(Path::new(&f.name), &f.content) {
                        Ok(s) => {
                            count += s.len();
                            warnings.extend(warn(&s));
                        }
                        Err(e) => errors.extend(e),
                    }
                }
                if errors.is_empty() { Ok((count, warnings)) } else { Err(errors) }
            }
        })
        .await
        .map_err(|e| ServerError::Unavailable(format!("check task: {e}")))?;
        let dir = (!status.dir.is_empty()).then(|| PathBuf::from(&status.dir));
        let resp = match checked {
            Ok((n, warnings)) => v1::CheckRulesResponse {
                ok: true,
                problems: Vec::new(),
                rules: n as u32,
                status: Some(status),
                warnings: problems(&warnings, dir.as_deref()),
            },
            Err(errors) => v1::CheckRulesResponse {
                ok: false,
                problems: problems(&errors, dir.as_deref()),
                rules: 0,
                status: Some(status),
                warnings: Vec::new(),
            },
        };
        Ok(Response::new(resp))
    }

    async fn reload_rules(
        &self,
        request: Request<v1::ReloadRulesRequest>,
    ) -> Result<Response<v1::ReloadRulesResponse>, Status> {
        if self.rules.status().dir.is_empty() {
            return Err(
                ServerError::FailedPrecondition("the server runs without a rules directory (--rules)".into()).into()
            );
        }
        let actor = crate::principal::Principal::of(&request).to_string();
        let status = self.rules.reload_by("requested", &actor).await;
        Ok(Response::new(v1::ReloadRulesResponse { status: Some(status) }))
    }
}
