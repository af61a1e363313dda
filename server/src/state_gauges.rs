//! Gauges of what the server holds, counted when scraped (a pass over in-memory
//! maps, on the blocking pool like every render):
//!
//! - `driftwatch_alerts{state}`: alerts in the alert book (pending, firing,
//!   resolved; resolved ones stay until `[retention] alerts`);
//! - `driftwatch_hosts{state}`: known hosts, online (a stream connected) or offline;
//! - `driftwatch_rollouts{state}`: rollouts under way (pending, running, paused);
//!   finished ones are in the store (`ListRollouts`);
//! - `driftwatch_host_connected{host}` (1 while its stream is up) and
//!   `driftwatch_host_last_seen_timestamp_seconds{host}` (the last message from its
//!   agent): one series per known host, so an alert can name the host that went
//!   away. As many as the fleet (bounded by `[limits] max_agents`); a host removed by
//!   `[retention] offline_hosts` leaves with its series.
//!
//! Until the server has wired its state in ([`StateGauges::watch`]), and once it is
//! gone, every series is 0.

use std::sync::{Arc, OnceLock, Weak};

use driftwatch_proto::v1;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::gauge::ConstGauge;

use crate::alert_book::AlertBook;
use crate::changes::ChangesCore;
use crate::state::FleetState;

pub const ALERT_STATES: [(v1::AlertState, &str); 3] =
    [(v1::AlertState::Pending, "pending"), (v1::AlertState::Firing, "firing"), (v1::AlertState::Resolved, "resolved")];
pub const ROLLOUT_STATES: [(v1::RolloutState, &str); 3] = [
    (v1::RolloutState::Pending, "pending"),
    (v1::RolloutState::Running, "running"),
    (v1::RolloutState::Paused, "paused"),
];

/// How many of `states` fall in each of `wanted` (by position); others are not counted.
pub fn count_states<const N: usize>(states: impl Iterator<Item = i32>, wanted: [i32; N]) -> [u64; N] {
    let mut out = [0u64; N];
    for s in states {
        if let Some(i) = wanted.iter().position(|w| *w == s) {
            out[i] += 1;
        }
    }
    out
}

/// Weak: the metrics outlive the server's parts, and `ChangesCore` holds the writer's
/// and the engine's senders, which must go for them to drain at shutdown.
struct Sources {
    state: Weak<FleetState>,
    book: Weak<AlertBook>,
    changes: Weak<ChangesCore>,
    /// `metrics_per_host`: whether the per-host families are written.
    per_host: bool,
}

/// See the module documentation.
#[derive(Default)]
pub struct StateGauges {
    sources: OnceLock<Sources>,
}

impl std::fmt::Debug for StateGauges {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StateGauges").field("wired", &self.sources.get().is_some()).finish()
    }
}

impl StateGauges {
    /// Count from these from now on (once; a second call is ignored).
    pub fn watch(&self, state: &Arc<FleetState>, book: &Arc<AlertBook>, changes: &Arc<ChangesCore>, per_host: bool) {
        let sources = Sources {
            state: Arc::downgrade(state),
            book: Arc::downgrade(book),
            changes: Arc::downgrade(changes),
            per_host,
        };
        let _ = self.sources.set(sources);
    }

    /// Every known host: (host id, connected, last seen in Unix seconds), sorted.
    fn per_host(&self) -> Vec<(String, bool, f64)> {
        let Some(st) = self.sources.get().filter(|s| s.per_host).and_then(|s| s.state.upgrade()) else {
            return Vec::new();
        };
        let mut hosts: Vec<_> = st
            .hosts
            .iter()
            .map(|h| (h.key().clone(), h.connection.is_some(), h.last_seen_ms as f64 / 1000.0))
            .collect();
        hosts.sort_by(|a, b| a.0.cmp(&b.0));
        hosts
    }

    fn read(&self) -> ([u64; 3], [u64; 2], [u64; 3]) {
        let Some(s) = self.sources.get() else { return Default::default() };
        let alerts = s
            .book
            .upgrade()
            .map_or([0; 3], |b| b.scan(|it| count_states(it.map(|a| a.state), ALERT_STATES.map(|(st, _)| st as i32))));
        let hosts = s.state.upgrade().map_or([0; 2], |st| {
            let online = st.connected_count() as u64;
            [online, (st.hosts.len() as u64).saturating_sub(online)]
        });
        let rollouts = s
            .changes
            .upgrade()
            .map_or([0; 3], |c| count_states(c.rollouts.states().into_iter(), ROLLOUT_STATES.map(|(st, _)| st as i32)));
        (alerts, hosts, rollouts)
    }
}

fn encode_family(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    series: impl IntoIterator<Item = (&'static str, u64)>,
) -> Result<(), std::fmt::Error> {
    let mut family = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
    for (state, n) in series {
        ConstGauge::new(n).encode(family.encode_family(&[("state", state)])?)?;
    }
    Ok(())
}

impl Collector for StateGauges {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let (alerts, hosts, rollouts) = self.read();
        encode_family(
            &mut encoder,
            "alerts",
            "Alerts in the alert book by state (resolved ones until retention removes them)",
            ALERT_STATES.iter().map(|(_, n)| *n).zip(alerts),
        )?;
        encode_family(
            &mut encoder,
            "hosts",
            "Known hosts by state: online (stream connected) or offline",
            ["online", "offline"].into_iter().zip(hosts),
        )?;
        encode_family(
            &mut encoder,
            "rollouts",
            "Rollouts under way by state (finished ones: ListRollouts)",
            ROLLOUT_STATES.iter().map(|(_, n)| *n).zip(rollouts),
        )?;
        let hosts = self.per_host();
        let help = "1 while the host's agent stream is connected, 0 while it is offline (one series per known host)";
        let mut family = encoder.encode_descriptor("host_connected", help, None, MetricType::Gauge)?;
        for (host, connected, _) in &hosts {
            ConstGauge::new(u64::from(*connected)).encode(family.encode_family(&[("host", host.as_str())])?)?;
        }
        let help = "When the server last heard from the host's agent, in Unix seconds";
        let mut family =
            encoder.encode_descriptor("host_last_seen_timestamp_seconds", help, None, MetricType::Gauge)?;
        for (host, _, seen) in &hosts {
            ConstGauge::new(*seen).encode(family.encode_family(&[("host", host.as_str())])?)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_are_counted_by_position_and_others_ignored() {
        let wanted = ALERT_STATES.map(|(s, _)| s as i32);
        let states = [2, 2, 1, 3, 0, 9].into_iter();
        assert_eq!(count_states(states, wanted), [1, 2, 1]);
        assert_eq!(count_states(std::iter::empty(), wanted), [0, 0, 0]);
    }

    #[test]
    fn unwired_gauges_render_zeros() {
        let mut r = prometheus_client::registry::Registry::with_prefix("driftwatch");
        r.register_collector(Box::new(Arc::new(StateGauges::default())));
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &r).unwrap();
        assert!(out.contains("driftwatch_alerts{state=\"firing\"} 0"), "{out}");
        assert!(out.contains("driftwatch_hosts{state=\"offline\"} 0"), "{out}");
        assert!(out.contains("driftwatch_rollouts{state=\"paused\"} 0"), "{out}");
    }

    #[test]
    fn per_host_series_follow_the_setting() {
        let state = FleetState::new();
        state.hosts.insert("web-1".into(), crate::state::HostEntry::new(5_000));
        let render = |per_host: bool| {
            let gauges = Arc::new(StateGauges::default());
            let sources = Sources { state: Arc::downgrade(&state), book: Weak::new(), changes: Weak::new(), per_host };
            let _ = gauges.sources.set(sources);
            let mut r = prometheus_client::registry::Registry::with_prefix("driftwatch");
            r.register_collector(Box::new(gauges));
            let mut out = String::new();
            prometheus_client::encoding::text::encode(&mut out, &r).unwrap();
            out
        };
        let on = render(true);
        assert!(on.contains("driftwatch_host_connected{host=\"web-1\"} 0"), "{on}");
        assert!(on.contains("driftwatch_host_last_seen_timestamp_seconds{host=\"web-1\"} 5"), "{on}");
        let off = render(false);
        assert!(!off.contains("host=\"web-1\""), "{off}");
        assert!(off.contains("driftwatch_hosts{state=\"offline\"} 1"), "the totals stay: {off}");
    }
}
