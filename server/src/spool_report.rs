//! What the server makes of an agent's spool: whether a full listing arrived whole
//! (only a whole one prunes), and the drops the agent reports (counted in
//! `driftwatch_agent_spool_dropped_total`, and the built-in alert
//! `driftwatch/agent_spool_dropped`, which fires when a host's count rises and resolves
//! when a whole listing that began after the drops has healed the server's view).
//! Pure: the gateway applies the decisions.

use driftwatch_rules::Severity;

use crate::engine::{Command, EvalMsg, SystemAlert};

/// Name of the built-in alert about dropped snapshots (group `driftwatch`).
pub const DROPPED_RULE: &str = "agent_spool_dropped";

/// A full listing being received.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Listing {
    /// Seq of its first part.
    pub first: u64,
    /// The seq its next part must have.
    next: u64,
    /// Every part from `first` on arrived, in order, none missing.
    pub whole: bool,
}

impl Listing {
    /// The listing after part `seq` is applied; `first_seq` is the part's
    /// `full_first_seq` (0 on a listing's first part). An agent numbers a listing's
    /// parts consecutively, so a gap means a part never arrived (dropped by a full
    /// spool), and no state (a server restart in the middle) means the parts before
    /// cannot be vouched for: either way the listing is not whole.
    pub fn step(current: Option<Listing>, seq: u64, first_seq: u64) -> Listing {
        if first_seq == 0 || first_seq == seq {
            return Listing { first: seq, next: seq + 1, whole: true };
        }
        match current {
            Some(l) if l.first == first_seq && l.next == seq => Listing { next: seq + 1, ..l },
            _ => Listing { first: first_seq, next: seq + 1, whole: false },
        }
    }
}

/// The drops a host's agent reported, and how many of them a whole listing healed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Drops {
    reported: u64,
    healed: u64,
    /// What the alert was last set to by this process (`None`: nothing yet).
    alert: Option<bool>,
}

/// A change of the drop alert to hand to the engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AlertChange {
    Fire,
    Resolve,
}

impl Drops {
    /// From the store: whether a listing healed the stored count is not known; it is
    /// taken as healed (an alert firing from before stays until a whole listing).
    pub fn loaded(reported: u64) -> Self {
        Self { reported, healed: reported, alert: None }
    }

    /// A new spool numbers its drops from 0 again.
    pub fn rebase(&mut self) {
        self.reported = 0;
        self.healed = 0;
    }

    /// The agent reports `count` dropped (Hello, Heartbeat): how many are new, and the
    /// alert change (fire when the count rose past what a listing healed).
    pub fn report(&mut self, count: u64) -> (u64, Option<AlertChange>) {
        if count <= self.reported {
            return (0, None);
        }
        let new = count - self.reported;
        self.reported = count;
        (new, self.set(self.reported > self.healed))
    }

    /// A whole listing arrived that began when the agent had dropped `count`: how many
    /// drops only the listing told of, and the alert change (resolve when nothing
    /// reported is left unhealed).
    pub fn healed(&mut self, count: u64) -> (u64, Option<AlertChange>) {
        let new = count.saturating_sub(self.reported);
        self.reported = self.reported.max(count);
        self.healed = self.healed.max(count);
        (new, self.set(self.reported > self.healed))
    }

    fn set(&mut self, firing: bool) -> Option<AlertChange> {
        if self.alert == Some(firing) {
            return None;
        }
        self.alert = Some(firing);
        Some(if firing { AlertChange::Fire } else { AlertChange::Resolve })
    }
}

/// The engine message raising or resolving the drop alert of `host`.
pub fn alert_message(host: &str, change: AlertChange, dropped: u64, degraded: &str) -> EvalMsg {
    let why = if degraded.is_empty() { String::new() } else { format!(" ({degraded})") };
    let summary = match change {
        AlertChange::Fire => format!(
            "the agent on {host} dropped snapshots its spool could not hold{why}: {dropped} in all; \
             the changes in between are missing from history until its next whole full listing heals the view"
        ),
        AlertChange::Resolve => {
            format!("a whole full listing from {host} healed the view after {dropped} dropped snapshots")
        }
    };
    EvalMsg::Command(Command::SystemAlert(SystemAlert {
        name: DROPPED_RULE.into(),
        host: host.to_string(),
        path: String::new(),
        key: String::new(),
        severity: Severity::Medium,
        summary,
        firing: change == AlertChange::Fire,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_listing_is_whole_only_with_every_part_in_order() {
        let l = Listing::step(None, 10, 0);
        assert_eq!((l.first, l.whole), (10, true));
        let l = Listing::step(Some(l), 11, 10);
        let l = Listing::step(Some(l), 12, 10);
        assert!(l.whole);
        // Part 13 was dropped by the agent's spool: 14 arrives next.
        let broken = Listing::step(Some(l), 14, 10);
        assert!(!broken.whole);
        assert!(!Listing::step(Some(broken), 15, 10).whole, "a broken listing stays broken");
        // A server restart in the middle: the earlier parts cannot be vouched for.
        assert!(!Listing::step(None, 12, 10).whole);
        // A part of another listing.
        assert!(!Listing::step(Some(l), 13, 9).whole);
        // A new listing starts over, whole.
        assert!(Listing::step(Some(broken), 20, 0).whole);
        assert!(Listing::step(Some(broken), 20, 20).whole);
    }

    #[test]
    fn the_alert_fires_on_new_drops_and_resolves_with_a_whole_listing() {
        let mut d = Drops::default();
        assert_eq!(d.report(0), (0, None));
        assert_eq!(d.report(5), (5, Some(AlertChange::Fire)));
        assert_eq!(d.report(5), (0, None), "the same count again is no news");
        assert_eq!(d.report(7), (2, None), "already firing");
        // A listing that began before the last drops heals only what came before it.
        assert_eq!(d.healed(5), (0, None));
        assert_eq!(d.healed(7), (0, Some(AlertChange::Resolve)));
        assert_eq!(d.healed(7), (0, None));
        // Drops only the listing tells of: counted, and healed at once.
        assert_eq!(d.healed(9), (2, None));
        assert_eq!(d.report(10), (1, Some(AlertChange::Fire)));
    }

    #[test]
    fn after_a_restart_or_a_new_spool() {
        let mut d = Drops::loaded(4);
        assert_eq!(d.report(4), (0, None), "the stored count is not news");
        // Whatever fired before the restart resolves with the next whole listing.
        assert_eq!(d.healed(4), (0, Some(AlertChange::Resolve)));
        let mut d = Drops::loaded(4);
        d.rebase();
        assert_eq!(d.report(1), (1, Some(AlertChange::Fire)), "a new spool counts from 0");
    }
}
