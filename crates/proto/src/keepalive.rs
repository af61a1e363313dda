//! HTTP/2 keepalive, as the agent's and the server's config files set it: pings every
//! `interval`; a peer that answers nothing (dead host, half-open connection, stopped
//! process) is given up within `interval + timeout` of its last frame.

use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Keepalive {
    pub interval: Duration,
    pub timeout: Duration,
}

impl Default for Keepalive {
    fn default() -> Self {
        Self { interval: Duration::from_secs(30), timeout: Duration::from_secs(10) }
    }
}

const MAX_INTERVAL: Duration = Duration::from_secs(3600);
const MAX_TIMEOUT: Duration = Duration::from_secs(600);

impl Keepalive {
    /// The settings from the two optional fields `keepalive_interval` and
    /// `keepalive_timeout`, and every problem as (field, message); a field with a
    /// problem keeps its default.
    pub fn resolve(interval: Option<&str>, timeout: Option<&str>) -> (Self, Vec<(&'static str, String)>) {
        let mut k = Self::default();
        let mut problems = Vec::new();
        for (field, value, slot, max) in [
            ("keepalive_interval", interval, &mut k.interval, MAX_INTERVAL),
            ("keepalive_timeout", timeout, &mut k.timeout, MAX_TIMEOUT),
        ] {
            let Some(v) = value else { continue };
            match crate::duration::parse(v) {
                Ok(d) if (Duration::from_secs(1)..=max).contains(&d) => *slot = d,
                Ok(_) => problems.push((field, format!("must be between 1s and {}", crate::duration::format(max)))),
                Err(e) => problems.push((field, e)),
            }
        }
        (k, problems)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_values_and_bounds() {
        assert_eq!(Keepalive::resolve(None, None), (Keepalive::default(), vec![]));
        let (k, p) = Keepalive::resolve(Some("2s"), Some("1500ms"));
        assert_eq!((k.interval, k.timeout, p.len()), (Duration::from_secs(2), Duration::from_millis(1500), 0));
        let (k, p) = Keepalive::resolve(Some("100ms"), Some("1h"));
        assert_eq!(k, Keepalive::default(), "a field with a problem keeps its default");
        assert_eq!(
            p,
            vec![
                ("keepalive_interval", "must be between 1s and 1h".to_string()),
                ("keepalive_timeout", "must be between 1s and 10m".to_string())
            ]
        );
        let (_, p) = Keepalive::resolve(Some("ten"), None);
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].0, "keepalive_interval");
    }
}
