//! The rule engine: one thread that evaluates rules on every change and owns the
//! alert lifecycle.
//!
//! Ingest never waits on it. Changed and removed files go into a map keyed by
//! (host, path) that the engine drains: a file changing faster than the engine
//! evaluates is evaluated once per drain with its newest version (and the version
//! before the burst as `previous`), so the work is bounded by the fleet's size, not
//! its change rate. Resource samples (every one counts for history) and commands
//! go through a bounded queue; when it is full the engine is told to re-evaluate
//! the whole fleet from the in-memory state once it catches up, so a burst costs
//! latency, not correctness. Commands (acknowledge, silence) come through the same
//! queue, so every event gets its id from one sequencer, in the order the writer
//! commits them: a reader of the event log never sees id N+1 before N.
//!
//! Rules and baselines are pushed to the engine as immutable snapshots
//! ([`EvalMsg::Rules`], [`EvalMsg::Baselines`]); nothing the engine reads during
//! evaluation is behind a lock another task holds across I/O.
//!
//! Clocks: file and agent rules run on the server's clock; resource rules run on
//! the host's sample clock (history windows, `for`), so a burst of delayed samples
//! is judged by when they were taken.
//!
//! Code map: this file holds the queue, the loop and the store writes;
//! `evaluate` turns changes into rule outcomes, `lifecycle` steps alerts and
//! emits events, `commands` runs operator commands, `history` keeps resource
//! series. The alerts themselves live in the [`AlertBook`](crate::alert_book).

mod commands;
mod evaluate;
mod history;
mod lifecycle;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::time::{Duration, Instant};

use driftwatch_proto::v1::{self, ResourceSample};
use driftwatch_rules::{RuleSet, Severity, Target};
use driftwatch_store::{Op, Store};
use parking_lot::Mutex;
use tokio::sync::oneshot;

use crate::alert_book::AlertBook;
use crate::baselines::BaselineSet;
use crate::error::ServerError;
use crate::metrics::Metrics;
use crate::retention::Retention;
use crate::state::FleetState;
use crate::writer::{Maintenance, WriteItem, WriteSender};

pub use lifecycle::severity_to_proto;

/// Queue between ingest and the engine.
pub const QUEUE: usize = 65_536;
/// Pending/keep-firing timers, agent-offline rules and silence boundaries are checked this often.
const TICK: Duration = Duration::from_millis(500);
/// Evaluation errors are logged at most once per rule per this interval (always counted).
const ERROR_LOG_INTERVAL: Duration = Duration::from_secs(60);

/// Work for the engine.
pub enum EvalMsg {
    /// Changed files are waiting in the dirty map.
    Wake,
    Resource {
        host: String,
        sample: Box<ResourceSample>,
    },
    /// Host labels changed: evaluate again (one host, or all).
    Reevaluate {
        host: Option<String>,
    },
    /// New rules (reload); `None` runs without rules.
    Rules(Option<Arc<RuleSet>>),
    /// A new baseline version is durable: evaluate against this snapshot from now on
    /// (again for one host, or every host when the baseline has a selector).
    Baselines {
        set: Arc<BaselineSet>,
        host: Option<String>,
    },
    Command(Command),
}

/// A write the caller waits for: resolves once durable.
pub type Durable = oneshot::Receiver<()>;

pub enum Command {
    Acknowledge {
        fingerprint: String,
        by: String,
        comment: String,
        reply: oneshot::Sender<Result<(v1::Alert, Durable), ServerError>>,
    },
    CreateSilence {
        silence: v1::Silence,
        /// `max_active_silences`, checked here: the one sequencer of silence changes.
        max_active: usize,
        reply: oneshot::Sender<Result<(v1::Silence, Durable), ServerError>>,
    },
    ExpireSilence {
        id: String,
        reply: oneshot::Sender<Result<(v1::Silence, Durable), ServerError>>,
    },
    /// An alert the server raises itself (group [`SYSTEM_GROUP`]), e.g. "remediation
    /// gave up" on a host's file: fires with `firing`, resolves without.
    SystemAlert(SystemAlert),
    /// Answered once everything queued before it is processed and durable (tests, shutdown).
    Flush {
        reply: oneshot::Sender<Durable>,
    },
}

/// Group of the alerts the server raises itself; rule evaluation never touches them.
pub const SYSTEM_GROUP: &str = "driftwatch";

pub struct SystemAlert {
    pub name: String,
    pub host: String,
    pub path: String,
    pub key: String,
    pub severity: Severity,
    pub summary: String,
    pub firing: bool,
}

/// A file's pending evaluation: the version before the first unevaluated change,
/// and the newest one (None: no longer watched, its alerts resolve).
struct Dirty {
    previous: Option<Arc<[u8]>>,
    current: Option<Arc<[u8]>>,
}

type DirtyMap = Arc<Mutex<HashMap<(String, String), Dirty>>>;

/// The ingest and API side of the engine. Cheap to clone.
#[derive(Clone)]
pub struct EngineHandle {
    tx: SyncSender<EvalMsg>,
    dirty: DirtyMap,
    overflow: Arc<AtomicBool>,
    metrics: Arc<Metrics>,
}

impl EngineHandle {
    /// Hand work to the engine without waiting. A full queue marks the fleet for
    /// re-evaluation instead of blocking ingest.
    pub fn send(&self, m: EvalMsg) {
        match self.tx.try_send(m) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                self.metrics.rule_queue_overflows.inc();
                self.overflow.store(true, Ordering::Relaxed);
            }
            Err(TrySendError::Disconnected(_)) => {}
        }
    }

    /// Hand the engine a message it must not lose (new rules, new baselines): waits
    /// for room in the queue, off the async workers.
    pub async fn push(&self, m: EvalMsg) -> Result<(), ServerError> {
        let sender = self.tx.clone();
        tokio::task::spawn_blocking(move || sender.send(m).map_err(|_| ()))
            .await
            .map_err(|e| ServerError::Unavailable(format!("rule engine: {e}")))?
            .map_err(|_| ServerError::Unavailable("rule engine stopped".into()))
    }

    /// A file's new version (and the one it replaced), or its removal (`current` None).
    pub fn file_changed(&self, host: &str, path: &str, previous: Option<Arc<[u8]>>, current: Option<Arc<[u8]>>) {
        let was_empty = {
            let mut d = self.dirty.lock();
            let was_empty = d.is_empty();
            d.entry((host.to_string(), path.to_string()))
                .and_modify(|e| e.current = current.clone())
                .or_insert(Dirty { previous, current });
            was_empty
        };
        if was_empty {
            // A full queue is fine: the engine drains the map on every turn anyway.
            let _ = self.tx.try_send(EvalMsg::Wake);
        }
    }

    /// Run a command and wait for its answer (not for durability).
    pub async fn command<T: Send + 'static>(
        &self,
        make: impl FnOnce(oneshot::Sender<T>) -> Command + Send + 'static,
    ) -> Result<T, ServerError> {
        let (tx, rx) = oneshot::channel();
        // A full queue must not fail an operator's call: wait for room.
        self.push(EvalMsg::Command(make(tx))).await?;
        rx.await.map_err(|_| ServerError::Unavailable("rule engine stopped".into()))
    }

    pub fn metrics(&self) -> Arc<Metrics> {
        self.metrics.clone()
    }

    /// Wait until everything sent before this call is evaluated and durable.
    pub async fn flush(&self) -> Result<(), ServerError> {
        let durable = self.command(|reply| Command::Flush { reply }).await?;
        durable.await.map_err(|_| ServerError::Unavailable("store writer stopped".into()))
    }
}

/// Where the engine's events go besides the store: the notifiers. `route` turns a
/// (durable-to-be) event into outbox rows written in the same transaction as the
/// event, so a delivery is never lost and never invented; `committed` is called
/// on the writer thread once that transaction is durable, so a notifier is woken
/// only when its rows can be read.
pub trait EventRouter: Send + Sync {
    fn route(&self, event: &v1::AlertEvent) -> Vec<Op>;
    fn committed(&self, last_event_id: u64);
}

/// What the engine starts from.
pub struct EngineInit {
    pub rules: Option<Arc<RuleSet>>,
    pub state: Arc<FleetState>,
    pub baselines: Arc<BaselineSet>,
    pub book: Arc<AlertBook>,
    pub writer: WriteSender,
    pub metrics: Arc<Metrics>,
    /// A read connection (resource history after a restart).
    pub reader: Option<Arc<Mutex<Store>>>,
    pub max_event_id: u64,
    pub retention: Retention,
    /// Live subscribers get events from here once they are durable.
    pub hub: Arc<crate::hub::EventHub>,
    /// Notifier routing (outbox rows per event), if notifiers are configured.
    pub router: Option<Arc<dyn EventRouter>>,
}

/// Start the engine thread. It stops when every handle is dropped.
pub fn spawn(init: EngineInit) -> (EngineHandle, std::thread::JoinHandle<()>) {
    let (tx, rx) = std::sync::mpsc::sync_channel(QUEUE);
    let overflow = Arc::new(AtomicBool::new(false));
    let dirty = DirtyMap::default();
    let handle = EngineHandle { tx, dirty: dirty.clone(), overflow: overflow.clone(), metrics: init.metrics.clone() };
    let mut engine = Engine::new(init, overflow, dirty);
    let thread = std::thread::Builder::new()
        .name("rule-engine".into())
        .spawn(move || engine.run(rx))
        .expect("spawn rule engine thread");
    (handle, thread)
}

/// What an alert is about, for finding the alerts of one subject.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Subject {
    File(String),
    Metric(String),
    Agent,
    /// Raised by the server itself: rule evaluation never resolves these.
    System,
}

impl Subject {
    fn of(alert: &v1::Alert) -> Self {
        if alert.group == SYSTEM_GROUP {
            Subject::System
        } else if !alert.path.is_empty() {
            Subject::File(alert.path.clone())
        } else if !alert.metric.is_empty() {
            Subject::Metric(alert.metric.clone())
        } else {
            Subject::Agent
        }
    }
}

struct Engine {
    rules: Option<Arc<RuleSet>>,
    /// (group, name) → index in `rules`.
    rule_index: HashMap<(String, String), usize>,
    /// Metrics resource rules look at, and the longest window they need.
    history_metrics: HashSet<String>,
    history_ms: i64,
    has_agent_rules: bool,
    state: Arc<FleetState>,
    baselines: Arc<BaselineSet>,
    writer: WriteSender,
    metrics: Arc<Metrics>,
    reader: Option<Arc<Mutex<Store>>>,
    book: Arc<AlertBook>,
    overflow: Arc<AtomicBool>,
    /// host → subject → fingerprints.
    subjects: HashMap<String, HashMap<Subject, HashSet<String>>>,
    history: HashMap<String, history::HostHistory>,
    next_event_id: u64,
    ops: Vec<Op>,
    error_logged: HashMap<(String, String), Instant>,
    retention: Retention,
    next_retention: Instant,
    dirty: DirtyMap,
    hub: Arc<crate::hub::EventHub>,
    router: Option<Arc<dyn EventRouter>>,
    /// Events in `ops`, published to the hub (and notifiers woken) once their write is durable.
    unpublished: Vec<Arc<v1::AlertEvent>>,
}

impl Engine {
    fn new(init: EngineInit, overflow: Arc<AtomicBool>, dirty: DirtyMap) -> Self {
        let mut e = Self {
            rules: None,
            rule_index: HashMap::new(),
            history_metrics: HashSet::new(),
            history_ms: RuleSet::MIN_HISTORY_MS,
            has_agent_rules: false,
            state: init.state,
            baselines: init.baselines,
            writer: init.writer,
            metrics: init.metrics,
            reader: init.reader,
            book: init.book,
            overflow,
            subjects: HashMap::new(),
            history: HashMap::new(),
            next_event_id: init.max_event_id + 1,
            ops: Vec::new(),
            error_logged: HashMap::new(),
            retention: init.retention,
            // First retention pass a minute after start: not in the start-up rush.
            next_retention: Instant::now() + Duration::from_secs(60).min(init.retention.interval),
            dirty,
            hub: init.hub,
            router: init.router,
            unpublished: Vec::new(),
        };
        for a in e.book.alerts_where(|_| true) {
            e.index(&a.host_id, Subject::of(&a), &a.fingerprint);
        }
        e.set_rules(init.rules);
        e
    }

    fn run(&mut self, rx: Receiver<EvalMsg>) {
        // Rules loaded at start see the state loaded from the store.
        if self.rules.is_some() {
            self.reevaluate(None);
            self.flush(None);
        }
        let mut next_tick = Instant::now() + TICK;
        loop {
            let wait = next_tick.saturating_duration_since(Instant::now());
            match rx.recv_timeout(wait) {
                Ok(m) => {
                    // Files changed before this message are evaluated before it (a Flush
                    // answers only after them).
                    self.drain_dirty();
                    self.handle(m);
                    // Drain what queued up meanwhile into one write.
                    for _ in 0..1024 {
                        match rx.try_recv() {
                            Ok(m) => {
                                self.drain_dirty();
                                self.handle(m)
                            }
                            Err(_) => break,
                        }
                    }
                    self.drain_dirty();
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break,
            }
            if self.overflow.swap(false, Ordering::Relaxed) {
                tracing::warn!("rule queue overflowed; re-evaluating the fleet from current state");
                self.reevaluate(None);
            }
            let now = Instant::now();
            if now >= next_tick {
                self.tick(driftwatch_proto::now_millis());
                next_tick = now + TICK;
            }
            if now >= self.next_retention {
                self.retention(driftwatch_proto::now_millis());
                self.next_retention = now + self.retention.interval;
            }
            self.flush(None);
        }
        self.flush(None);
        tracing::debug!("rule engine stopped");
    }

    /// Evaluate every file changed since the last drain, each once, newest version.
    fn drain_dirty(&mut self) {
        let batch = std::mem::take(&mut *self.dirty.lock());
        for ((host, path), d) in batch {
            let started = Instant::now();
            let now = driftwatch_proto::now_millis();
            match d.current {
                Some(current) => self.eval_file(&host, &path, d.previous.as_deref(), &current, now),
                None => self.apply(&host, &Subject::File(path), Vec::new(), now),
            }
            self.metrics.rule_eval_seconds.observe(started.elapsed().as_secs_f64());
        }
    }

    fn handle(&mut self, m: EvalMsg) {
        let started = Instant::now();
        match m {
            EvalMsg::Wake => return,
            EvalMsg::Resource { host, sample } => self.eval_resource(&host, &sample),
            EvalMsg::Reevaluate { host } => self.reevaluate(host.as_deref()),
            EvalMsg::Rules(rules) => {
                self.set_rules(rules);
                self.reevaluate(None);
            }
            EvalMsg::Baselines { set, host } => {
                self.baselines = set;
                self.reevaluate(host.as_deref());
            }
            EvalMsg::Command(c) => self.command(c),
        }
        self.metrics.rule_eval_seconds.observe(started.elapsed().as_secs_f64());
    }

    fn set_rules(&mut self, rules: Option<Arc<RuleSet>>) {
        self.rule_index.clear();
        self.history_metrics.clear();
        // The rules crate owns how much history a rule needs (`driftwatch rules test` uses the same).
        self.history_ms = rules.as_ref().map_or(RuleSet::MIN_HISTORY_MS, |s| s.history_window_ms());
        self.has_agent_rules = false;
        if let Some(set) = &rules {
            for (i, r) in set.rules().iter().enumerate() {
                self.rule_index.insert((r.group.clone(), r.name.clone()), i);
                match &r.target {
                    Target::Resource { metric } => {
                        self.history_metrics.insert(metric.clone());
                    }
                    Target::AgentOffline => self.has_agent_rules = true,
                    Target::File { .. } => {}
                }
            }
        }
        self.rules = rules;
        // Metrics no rule looks at any more need no history.
        for h in self.history.values_mut() {
            h.series.retain(|m, _| self.history_metrics.contains(m));
        }
    }

    /// Retention: resolved alerts (and events) past the retention, expired
    /// silences, raw resource samples rolled up. Firing and pending alerts are never
    /// pruned, acknowledged or not.
    fn retention(&mut self, now: i64) {
        let cutoff = now - self.retention.alerts.as_millis() as i64;
        let old = self.book.alerts_where(|a| crate::retention::alert_expired(a, cutoff));
        for a in &old {
            self.book.remove(&a.fingerprint);
            self.unindex(&a.host_id, &Subject::of(a), &a.fingerprint);
            self.ops.push(Op::RemoveAlert { fingerprint: a.fingerprint.clone() });
        }
        let expired = self.book.silences_ended_before(cutoff);
        for id in &expired {
            self.book.remove_silence(id);
            self.ops.push(Op::RemoveSilence { id: id.clone() });
        }
        if !old.is_empty() || !expired.is_empty() {
            tracing::info!(
                alerts = old.len(),
                silences = expired.len(),
                "retention: pruned resolved alerts and expired silences"
            );
        }
        let raw_before = now - self.retention.raw_resources.as_millis() as i64;
        let rollups_before = now - self.retention.rollups.as_millis() as i64;
        let metrics = self.metrics.clone();
        let history = self.retention.file_history_at(now);
        self.flush(Some(Maintenance::new(move |store: &mut Store| {
            crate::retention::maintain_store(store, cutoff, raw_before, rollups_before, history, &metrics);
            metrics.retention_passes.inc();
        })));
    }

    /// Hand the collected writes to the writer; returns when it has them queued.
    fn flush(&mut self, maintenance: Option<Maintenance>) {
        if self.ops.is_empty() && maintenance.is_none() {
            return;
        }
        let item = WriteItem {
            ops: std::mem::take(&mut self.ops),
            maintenance,
            on_durable: self.publish_when_durable(),
            ..Default::default()
        };
        if self.writer.blocking_send(item).is_err() {
            tracing::error!("store writer stopped; alert writes lost");
        }
    }

    /// What happens once the events about to be written are durable: subscribers
    /// get them through the hub, and notifiers whose rows they carry are woken.
    fn publish_when_durable(&mut self) -> Option<Maintenance> {
        let last = self.unpublished.last()?.id;
        let events = std::mem::take(&mut self.unpublished);
        let (hub, router) = (self.hub.clone(), self.router.clone());
        Some(Maintenance::new(move |_| {
            hub.publish(events);
            if let Some(r) = router {
                r.committed(last);
            }
        }))
    }

    /// Flush and get told when it is durable.
    fn flush_durable(&mut self) -> Durable {
        let (tx, rx) = oneshot::channel();
        let item = WriteItem {
            ops: std::mem::take(&mut self.ops),
            done: Some(tx),
            on_durable: self.publish_when_durable(),
            ..Default::default()
        };
        if self.writer.blocking_send(item).is_err() {
            tracing::error!("store writer stopped; alert writes lost");
        }
        rx
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subject_of_an_alert() {
        let file = v1::Alert { path: "/etc/a.env".into(), key: "K".into(), ..Default::default() };
        assert_eq!(Subject::of(&file), Subject::File("/etc/a.env".into()));
        let metric = v1::Alert { metric: "memory_used_bytes".into(), ..Default::default() };
        assert_eq!(Subject::of(&metric), Subject::Metric("memory_used_bytes".into()));
        assert_eq!(Subject::of(&v1::Alert::default()), Subject::Agent);
        let system = v1::Alert { group: SYSTEM_GROUP.into(), path: "/etc/a.env".into(), ..Default::default() };
        assert_eq!(Subject::of(&system), Subject::System);
    }
}
