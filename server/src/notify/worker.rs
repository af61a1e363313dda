//! The delivery tasks: one per target reading its outbox, the webhook repeat scan,
//! and the Alertmanager resend loops.

use std::collections::HashSet;
use std::sync::Arc;

use parking_lot::Mutex;
use std::time::{Duration, Instant};

use driftwatch_proto::v1;
use driftwatch_store::{Op, OutboxRecord, Store};
use prost::Message;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

use super::{LastSent, NotifierConfig, NotifierKind, Notifiers, REPEAT_KIND, Target, alertmanager, breaker, webhook};
use crate::alert_book::AlertBook;
use crate::writer::{WriteItem, WriteSender};

pub(super) struct Ctx {
    pub notifiers: Arc<Notifiers>,
    pub writer: WriteSender,
    pub reader: Arc<Mutex<Store>>,
    pub book: Arc<AlertBook>,
    pub shutdown: CancellationToken,
}

/// How often a target looks at its outbox when nothing wakes it. New rows wake it
/// once their transaction has committed, so this only bounds how late a missed
/// wake-up (there should be none) or a row written by another path is seen.
const POLL: Duration = Duration::from_secs(2);
/// Rows read per look (the oldest pending row of each alert).
const HEADS: usize = 256;
/// Age limit and pruning of delivered rows run this often.
const HOUSEKEEPING: Duration = Duration::from_secs(60);
/// Delivered rows are kept at least this long (repeat bookkeeping after a restart).
const KEEP_DELIVERED: Duration = Duration::from_secs(24 * 3600);
/// Most of an error response quoted in `last_error`.
const ERROR_BODY: usize = 256;
/// Alerts per Alertmanager resend POST.
const RESEND_CHUNK: usize = 500;

enum Outcome {
    Delivered,
    /// Nothing to send any more (a repeat of an alert that stopped firing); not an error.
    Skipped(&'static str),
    Failed(String),
}

async fn read<T: Send + 'static>(
    ctx: &Ctx,
    f: impl FnOnce(&Store) -> driftwatch_store::Result<T> + Send + 'static,
) -> Result<T, String> {
    let reader = ctx.reader.clone();
    tokio::task::spawn_blocking(move || f(&reader.lock()).map_err(|e| e.to_string()))
        .await
        .map_err(|e| format!("read task: {e}"))?
}

/// Write through the writer and wait until durable; false once the writer is gone.
async fn write(ctx: &Ctx, ops: Vec<Op>) -> bool {
    if ops.is_empty() {
        return true;
    }
    let (tx, rx) = oneshot::channel();
    let item = WriteItem { ops, done: Some(tx), ..Default::default() };
    if ctx.writer.send(item).await.is_err() {
        return false;
    }
    rx.await.is_ok()
}

fn now_ms() -> i64 {
    driftwatch_proto::now_millis()
}

fn millis(d: Duration) -> i64 {
    d.as_millis().min(i64::MAX as u128) as i64
}

impl Target {
    /// A JSON POST to this endpoint, with its `Authorization` header if configured.
    fn request(&self, timeout: Duration) -> reqwest::RequestBuilder {
        let req =
            self.client.post(&self.endpoint).timeout(timeout).header(reqwest::header::CONTENT_TYPE, "application/json");
        match &self.authorization {
            Some(v) => req.header(reqwest::header::AUTHORIZATION, v.clone()),
            None => req,
        }
    }

    fn allow(&self) -> bool {
        self.state.lock().breaker.allow(Instant::now())
    }

    fn cancel_attempt(&self) {
        self.state.lock().breaker.cancel();
    }

    /// Returns true when this success ended a failing streak.
    fn succeeded(&self, at_ms: i64, delivery: bool, n: &Notifiers) -> bool {
        let recovered = {
            let mut s = self.state.lock();
            if delivery {
                s.delivered += 1;
            }
            s.last_success_ms = Some(at_ms);
            s.breaker.success()
        };
        if recovered {
            n.metrics.notifier_circuit_open.get_or_create(&self.labels).set(0);
        }
        if delivery {
            n.metrics.notifications_delivered.get_or_create(&self.labels).inc();
        }
        if recovered {
            tracing::info!(notifier = %self.key, url = %self.url, "endpoint answers again; waiting notifications are due now");
        }
        recovered
    }

    /// Returns (this failure opened the circuit, consecutive failures).
    fn failed(&self, at_ms: i64, error: &str, n: &Notifiers) -> (bool, u32) {
        let mut s = self.state.lock();
        s.failed += 1;
        s.last_failure_ms = Some(at_ms);
        s.last_error = error.to_string();
        let opened = s.breaker.failure(Instant::now());
        n.metrics.notification_failures.get_or_create(&self.labels).inc();
        if opened {
            n.metrics.notifier_circuit_open.get_or_create(&self.labels).set(1);
        }
        (opened, s.breaker.consecutive_failures())
    }
}

/// One target's delivery loop.
pub(super) async fn deliver_loop(ctx: Arc<Ctx>, t: Arc<Target>) {
    let cfg = ctx.notifiers.configs[t.notifier].clone();
    let mut next_housekeeping = Instant::now();
    while !ctx.shutdown.is_cancelled() {
        if Instant::now() >= next_housekeeping {
            housekeeping(&ctx, &t, &cfg).await;
            next_housekeeping = Instant::now() + HOUSEKEEPING;
        }
        let key = t.key.clone();
        let mut wait = POLL;
        match read(&ctx, move |s| Ok((s.outbox_heads(&key, HEADS)?, s.outbox_summary(&key)?))).await {
            Err(e) => tracing::warn!(notifier = %t.key, error = %e, "cannot read the outbox; trying again"),
            Ok((heads, summary)) => {
                t.state.lock().pending = summary.pending;
                ctx.notifiers.metrics.notifications_pending.get_or_create(&t.labels).set(summary.pending as i64);
                let mut worked = false;
                let mut next_due = None;
                for row in heads {
                    let now = now_ms();
                    if row.next_attempt_ms > now {
                        // Sorted by due time: the rest are later.
                        next_due = Some(Duration::from_millis((row.next_attempt_ms - now) as u64));
                        break;
                    }
                    if !t.allow() {
                        break;
                    }
                    worked = true;
                    let outcome = tokio::select! {
                        o = attempt(&ctx, &t, &cfg, &row) => o,
                        _ = ctx.shutdown.cancelled() => {
                            // Abandoned, not failed: the row stays queued for the next start.
                            t.cancel_attempt();
                            return;
                        }
                    };
                    if !record(&ctx, &t, &cfg, &row, outcome).await {
                        return;
                    }
                }
                let now = Instant::now();
                let blocked = t.state.lock().breaker.blocked_until(now);
                wait = if worked {
                    // Delivered or rescheduled something: the queue changed, look again.
                    Duration::ZERO
                } else if let Some(until) = blocked {
                    until - now
                } else {
                    next_due.map_or(POLL, |d| d.min(POLL))
                };
            }
        }
        tokio::select! {
            // Rows for us just committed (see `Notifiers::committed`): read them now.
            _ = t.wake.notified() => {}
            _ = tokio::time::sleep(wait) => {}
            _ = ctx.shutdown.cancelled() => break,
        }
    }
}

/// Send one outbox row.
async fn attempt(ctx: &Ctx, t: &Target, cfg: &NotifierConfig, row: &OutboxRecord) -> Outcome {
    let ev = match v1::AlertEvent::decode(row.payload.as_slice()) {
        Ok(ev) => ev,
        Err(e) => {
            tracing::error!(notifier = %t.key, row = row.id, error = %e, "outbox payload does not decode; dropped");
            return Outcome::Skipped("payload does not decode");
        }
    };
    let now = now_ms();
    match &cfg.kind {
        NotifierKind::Webhook { secret, .. } => {
            if row.kind == REPEAT_KIND && !still_firing(ctx, &ev) {
                return Outcome::Skipped("repeat of an alert no longer firing (or silenced)");
            }
            let body = webhook::body(
                &ev,
                &webhook::Envelope {
                    notifier: &cfg.name,
                    kind: &row.kind,
                    repeat: row.repeat,
                    sent_at_ms: now,
                    attempt: row.attempts + 1,
                    link: ev.alert.as_ref().and_then(|a| ctx.notifiers.links.alert(a)),
                },
            );
            let mut req = t
                .request(cfg.delivery.timeout)
                .header(webhook::EVENT_ID_HEADER, ev.id.to_string())
                .header(webhook::IDEMPOTENCY_HEADER, webhook::idempotency_key(ev.id, row.repeat));
            if let Some(secret) = secret {
                req = req.header(webhook::SIGNATURE_HEADER, webhook::signature(&secret.0, &body));
            }
            post(t, req.body(body), cfg.delivery.timeout).await
        }
        NotifierKind::Alertmanager { resend_interval, .. } => {
            // The alert as it is now when the book still has it: a fired row delivered
            // late must not re-fire an alert that resolved meanwhile.
            let current = ev.alert.as_ref().and_then(|a| ctx.book.get(&a.fingerprint));
            let Some(alert) = current.or(ev.alert) else { return Outcome::Skipped("event without an alert") };
            if !alert.silenced_by.is_empty() {
                return Outcome::Skipped("alert silenced");
            }
            let Some(doc) = alertmanager::am_alert(&alert, now, *resend_interval, &ctx.notifiers.links) else {
                return Outcome::Skipped("alert neither firing nor resolved");
            };
            let body = serde_json::to_vec(&[doc]).expect("JSON values serialize");
            post(t, t.request(cfg.delivery.timeout).body(body), cfg.delivery.timeout).await
        }
    }
}

/// The alert of a repeat row is still in the same firing episode, unsilenced.
fn still_firing(ctx: &Ctx, ev: &v1::AlertEvent) -> bool {
    let Some(a) = &ev.alert else { return false };
    ctx.book.get(&a.fingerprint).is_some_and(|now| {
        now.state == v1::AlertState::Firing as i32 && now.silenced_by.is_empty() && now.fired_at == a.fired_at
    })
}

/// Send; a failure's text never holds the URL or the `Authorization` value
/// (reqwest's errors name the URL: dropped with `without_url`, and what is left,
/// the cause chain and any response body, is scrubbed of the target's secrets).
async fn post(t: &Target, req: reqwest::RequestBuilder, timeout: Duration) -> Outcome {
    match send(req, timeout).await {
        Outcome::Failed(msg) => Outcome::Failed(super::transport::scrub(&msg, &t.secrets)),
        other => other,
    }
}

async fn send(req: reqwest::RequestBuilder, timeout: Duration) -> Outcome {
    match req.send().await {
        Ok(resp) if resp.status().is_success() => Outcome::Delivered,
        Ok(mut resp) => {
            let status = resp.status();
            let mut text = Vec::new();
            while text.len() < ERROR_BODY {
                match resp.chunk().await {
                    Ok(Some(c)) => text.extend_from_slice(&c),
                    _ => break,
                }
            }
            text.truncate(ERROR_BODY);
            let text = String::from_utf8_lossy(&text);
            let text = text.trim();
            Outcome::Failed(if text.is_empty() { format!("HTTP {status}") } else { format!("HTTP {status}: {text}") })
        }
        Err(e) if e.is_timeout() => Outcome::Failed(format!("timed out after {}ms", timeout.as_millis())),
        Err(e) => {
            // reqwest's message is generic; the cause (connection refused, reset, a
            // certificate the server's CA did not sign) is in the chain.
            let e = e.without_url();
            let mut msg = e.to_string();
            let mut source = std::error::Error::source(&e);
            while let Some(s) = source {
                msg.push_str(": ");
                msg.push_str(&s.to_string());
                source = s.source();
            }
            Outcome::Failed(msg)
        }
    }
}

/// Record an attempt's outcome durably; false once the writer is gone.
async fn record(ctx: &Ctx, t: &Target, cfg: &NotifierConfig, row: &OutboxRecord, outcome: Outcome) -> bool {
    let n = &ctx.notifiers;
    let now = now_ms();
    let attempt = row.attempts + 1;
    let delivered_or_skipped = !matches!(outcome, Outcome::Failed(_));
    let ops = match outcome {
        Outcome::Delivered => {
            tracing::debug!(notifier = %t.key, event = row.event_id, repeat = row.repeat, kind = %row.kind, attempt, "notification delivered");
            let mut ops = vec![Op::OutboxDelivered { id: row.id, at_ms: now }];
            if t.succeeded(now, true, n) {
                ops.push(Op::OutboxRetryNow { notifier: t.key.clone(), at_ms: now });
            }
            ops
        }
        Outcome::Skipped(why) => {
            tracing::debug!(notifier = %t.key, event = row.event_id, repeat = row.repeat, kind = %row.kind, why, "notification not sent");
            vec![Op::OutboxDelivered { id: row.id, at_ms: now }]
        }
        Outcome::Failed(error) => {
            let d = &cfg.delivery;
            let delay = breaker::backoff(attempt, d.backoff, d.max_backoff, breaker::unit_random());
            let (opened, streak) = t.failed(now, &error, n);
            let retry_in_ms = delay.as_millis() as u64;
            // The first failure of a streak and circuit changes are worth a warning; the rest is noise.
            if streak == 1 || opened {
                tracing::warn!(notifier = %t.key, url = %t.url, event = row.event_id, kind = %row.kind, attempt, retry_in_ms, error = %error, "notification failed; retrying");
            } else {
                tracing::debug!(notifier = %t.key, event = row.event_id, attempt, retry_in_ms, error = %error, "notification failed; retrying");
            }
            if opened {
                tracing::warn!(notifier = %t.key, url = %t.url, consecutive_failures = streak, cooldown_ms = d.breaker_cooldown.as_millis() as u64, "circuit open: pausing deliveries, then one probe");
            }
            vec![Op::OutboxRetry { id: row.id, attempts: attempt, next_attempt_ms: now + millis(delay), error }]
        }
    };
    let written = write(ctx, ops).await;
    if delivered_or_skipped {
        // Status stays current between looks at the outbox.
        let mut s = t.state.lock();
        s.pending = s.pending.saturating_sub(1);
    }
    written
}

/// Rows past the age limit are dropped (counted, logged); delivered rows are pruned.
async fn housekeeping(ctx: &Ctx, t: &Target, cfg: &NotifierConfig) {
    let now = now_ms();
    let expire_before = now - millis(cfg.delivery.max_age);
    let keep = match cfg.kind {
        NotifierKind::Webhook { repeat_interval: Some(r), .. } => KEEP_DELIVERED.max(r * 2),
        _ => KEEP_DELIVERED,
    };
    let mut ops = vec![Op::OutboxPrune { notifier: t.key.clone(), delivered_before_ms: now - millis(keep) }];
    let key = t.key.clone();
    match read(ctx, move |s| s.outbox_count_expired(&key, expire_before)).await {
        Ok(0) => {}
        Ok(dropped) => {
            tracing::error!(notifier = %t.key, url = %t.url, dropped, max_age_s = cfg.delivery.max_age.as_secs(), "undelivered notifications older than max_age dropped");
            t.state.lock().expired += dropped;
            ctx.notifiers.metrics.notifications_expired.get_or_create(&t.labels).inc_by(dropped);
            ops.push(Op::OutboxExpire { notifier: t.key.clone(), created_before_ms: expire_before });
        }
        Err(e) => tracing::warn!(notifier = %t.key, error = %e, "cannot check the outbox age limit"),
    }
    write(ctx, ops).await;
}

fn fired_at_ms(a: &v1::Alert) -> i64 {
    a.fired_at.as_ref().map(driftwatch_proto::timestamp_millis).unwrap_or(0)
}

/// At start: say what is left of notifiers no longer configured, and read back the
/// repeat bookkeeping; then re-notify still-firing alerts every `repeat_interval`.
pub(super) async fn startup_and_repeats(ctx: Arc<Ctx>) {
    let n = ctx.notifiers.clone();
    let keys: HashSet<String> = n.targets.iter().map(|t| t.key.clone()).collect();
    match read(&ctx, |s| s.outbox_pending_counts()).await {
        Ok(counts) => {
            for (k, pending) in counts.into_iter().filter(|(k, _)| !keys.contains(k)) {
                tracing::warn!(notifier = %k, pending, "outbox holds notifications of a notifier no longer configured; kept until it is configured again");
            }
        }
        Err(e) => tracing::warn!(error = %e, "cannot read the outbox"),
    }
    let targets: Vec<(Arc<Target>, Duration)> = n
        .targets
        .iter()
        .filter_map(|t| match n.configs[t.notifier].kind {
            NotifierKind::Webhook { repeat_interval: Some(r), .. } => Some((t.clone(), r)),
            _ => None,
        })
        .collect();
    let Some(shortest) = targets.iter().map(|(_, r)| *r).min() else { return };
    for (t, _) in &targets {
        let key = t.key.clone();
        let rows = match read(&ctx, move |s| s.outbox_latest(&key)).await {
            Ok(rows) => rows,
            Err(e) => {
                tracing::warn!(notifier = %t.key, error = %e, "cannot read the outbox; repeats start over");
                continue;
            }
        };
        let mut reps = t.repeats.lock();
        for r in rows {
            if !matches!(r.kind.as_str(), "fired" | "unsilenced" | REPEAT_KIND) {
                continue;
            }
            // Only a row of the alert's current firing episode counts.
            let current = ctx
                .book
                .get(&r.fingerprint)
                .is_some_and(|a| a.state == v1::AlertState::Firing as i32 && fired_at_ms(&a) <= r.created_ms);
            if current {
                reps.entry(r.fingerprint).or_insert(LastSent {
                    event_id: r.event_id,
                    repeat: r.repeat,
                    at_ms: r.created_ms,
                });
            }
        }
    }
    let tick = (shortest / 4).clamp(Duration::from_millis(50), Duration::from_secs(10));
    loop {
        tokio::select! {
            _ = tokio::time::sleep(tick) => {}
            _ = ctx.shutdown.cancelled() => return,
        }
        if !repeat_pass(&ctx, &targets).await {
            return;
        }
        ctx.notifiers.repeat_passes.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
    }
}

/// Queue a repeat for every still-firing alert last notified `repeat_interval` ago.
async fn repeat_pass(ctx: &Ctx, targets: &[(Arc<Target>, Duration)]) -> bool {
    let now = now_ms();
    let (firing, firing_fps): (Vec<v1::Alert>, HashSet<String>) = {
        let all = ctx.book.firing();
        let fps = all.iter().map(|a| a.fingerprint.clone()).collect();
        (all.into_iter().filter(|a| a.silenced_by.is_empty()).collect(), fps)
    };
    let mut ops = Vec::new();
    let mut poke = Vec::new();
    for (t, every) in targets {
        let filter = &ctx.notifiers.configs[t.notifier].filter;
        let mut reps = t.repeats.lock();
        // Alerts that left the firing state without an event we saw (pruned) are forgotten.
        reps.retain(|fp, _| firing_fps.contains(fp));
        let before = ops.len();
        for a in firing.iter().filter(|a| filter.selects(a) && filter.wants(v1::AlertEventKind::Fired)) {
            let Some(last) = reps.get_mut(&a.fingerprint) else { continue };
            if now - last.at_ms < millis(*every) {
                continue;
            }
            last.repeat += 1;
            last.at_ms = now;
            let ev = v1::AlertEvent {
                id: last.event_id,
                at: Some(driftwatch_proto::timestamp_from_millis(now)),
                kind: v1::AlertEventKind::Fired as i32,
                alert: Some(a.clone()),
            };
            ops.push(Op::OutboxAdd(OutboxRecord {
                notifier: t.key.clone(),
                event_id: last.event_id,
                repeat: last.repeat,
                fingerprint: a.fingerprint.clone(),
                kind: REPEAT_KIND.to_string(),
                payload: ev.encode_to_vec(),
                next_attempt_ms: now,
                created_ms: now,
                ..Default::default()
            }));
        }
        if ops.len() > before {
            poke.push(t.clone());
        }
    }
    if ops.is_empty() {
        return true;
    }
    tracing::debug!(repeats = ops.len(), "re-notifying alerts still firing");
    if !write(ctx, ops).await {
        return false;
    }
    for t in poke {
        t.wake.notify_one();
    }
    true
}

/// Alertmanager: re-send every firing alert (and those resolved within 5 minutes)
/// every `every`, so Alertmanager keeps them active and learns the current state
/// after its own or our restart.
pub(super) async fn resend_loop(ctx: Arc<Ctx>, t: Arc<Target>, every: Duration) {
    let cfg = ctx.notifiers.configs[t.notifier].clone();
    // The first pass soon after start: an instance that lost state (or missed a
    // restart of ours) hears the current alerts within seconds.
    let mut wait = every.min(Duration::from_secs(5));
    loop {
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = ctx.shutdown.cancelled() => return,
        }
        wait = every;
        let now = now_ms();
        let docs = {
            let f = &cfg.filter;
            let selected = ctx.book.alerts_where(|a| {
                let wanted = if a.state == v1::AlertState::Resolved as i32 {
                    f.wants(v1::AlertEventKind::Resolved)
                } else {
                    f.wants(v1::AlertEventKind::Fired)
                };
                wanted && a.silenced_by.is_empty() && f.selects(a)
            });
            alertmanager::resend_set(selected.iter(), now, every, &ctx.notifiers.links)
        };
        if docs.is_empty() || !t.allow() {
            continue;
        }
        for chunk in docs.chunks(RESEND_CHUNK) {
            let body = serde_json::to_vec(chunk).expect("JSON values serialize");
            let req = t.request(cfg.delivery.timeout).body(body);
            let outcome = tokio::select! {
                o = post(&t, req, cfg.delivery.timeout) => o,
                _ = ctx.shutdown.cancelled() => {
                    t.cancel_attempt();
                    return;
                }
            };
            match outcome {
                Outcome::Delivered | Outcome::Skipped(_) => {
                    if t.succeeded(now_ms(), false, &ctx.notifiers) {
                        write(&ctx, vec![Op::OutboxRetryNow { notifier: t.key.clone(), at_ms: now_ms() }]).await;
                        t.wake.notify_one();
                    }
                }
                Outcome::Failed(error) => {
                    let (opened, _) = t.failed(now_ms(), &error, &ctx.notifiers);
                    tracing::warn!(notifier = %t.key, url = %t.url, alerts = chunk.len(), error = %error, circuit_opened = opened, "alertmanager resend failed; next pass retries");
                    break;
                }
            }
        }
    }
}
