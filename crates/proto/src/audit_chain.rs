//! The audit log's hash chain: the one definition of a record's hash, computed by the
//! store when it appends a record (on the writer thread, in id order) and recomputed by
//! `driftwatch audit verify` from what the server returns, and the walk that checks a
//! chain from its oldest record.
//!
//! `hash = SHA-256(domain, prev_hash, id, at_ms, actor, action, target, host_id, path,
//! before_hash, after_hash, detail, change_id)`, lower-case hex. Integers are 8 bytes big
//! endian; every string is its byte length (8 bytes big endian) then its bytes, so no two
//! different records encode alike. `prev_hash` is the hash of the record appended before
//! (empty for the first record ever). Retention removes the oldest records only, and
//! appends an [`PRUNED_ACTION`] record whose `before_hash` is the hash of the last record
//! it removed: the anchor the oldest remaining record links to.
//!
//! A chain shows a record removed from the middle or the start, or one altered, unless
//! whoever changed it also rewrote every later hash; keep the head a verification
//! prints somewhere else to catch that, and a cut-off end.

use std::collections::HashSet;
use std::fmt;

use sha2::{Digest, Sha256};

/// Domain separation: a record's hash is never the hash of anything else.
const DOMAIN: &[u8] = b"driftwatch.audit.v1\0";

/// The record retention appends after removing the oldest records; its `before_hash` is
/// the hash of the last record removed.
pub const PRUNED_ACTION: &str = "audit.pruned";

/// The fields of one audit record that its hash covers (every field but the hashes).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AuditFields<'a> {
    pub id: u64,
    pub at_ms: i64,
    pub actor: &'a str,
    pub action: &'a str,
    pub target: &'a str,
    pub host_id: &'a str,
    pub path: &'a str,
    pub before_hash: &'a str,
    pub after_hash: &'a str,
    pub detail: &'a str,
    pub change_id: &'a str,
}

/// The hash of a record whose predecessor's hash is `prev_hash` ("" for the first).
pub fn record_hash(prev_hash: &str, f: &AuditFields<'_>) -> String {
    let mut h = Sha256::new();
    h.update(DOMAIN);
    put(&mut h, prev_hash);
    h.update(f.id.to_be_bytes());
    h.update(f.at_ms.to_be_bytes());
    for s in [f.actor, f.action, f.target, f.host_id, f.path, f.before_hash, f.after_hash, f.detail, f.change_id] {
        put(&mut h, s);
    }
    hex::encode(h.finalize())
}

fn put(h: &mut Sha256, s: &str) {
    h.update((s.len() as u64).to_be_bytes());
    h.update(s.as_bytes());
}

/// One record as stored: its fields and the hashes the store gave it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChainRecord<'a> {
    pub fields: AuditFields<'a>,
    pub prev_hash: &'a str,
    pub hash: &'a str,
}

impl<'a> ChainRecord<'a> {
    /// A record as `Audit.ListAuditEvents` returns it (what a client verifies).
    pub fn of_event(e: &'a crate::v1::AuditEvent) -> Self {
        ChainRecord {
            fields: AuditFields {
                id: e.id,
                at_ms: e.at.as_ref().map(crate::timestamp_millis).unwrap_or_default(),
                actor: &e.actor,
                action: &e.action,
                target: &e.target,
                host_id: &e.host_id,
                path: &e.path,
                before_hash: &e.before_hash,
                after_hash: &e.after_hash,
                detail: &e.detail,
                change_id: &e.change_id,
            },
            prev_hash: &e.prev_hash,
            hash: &e.hash,
        }
    }
}

/// The first thing wrong with a chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChainBreak {
    /// Records `first..=last` (by id) are gone from between two that remain.
    Removed { first: u64, last: u64, next: u64 },
    /// Records below `next` are gone, and no retention record anchors where it starts.
    RemovedBefore { next: u64 },
    /// The record does not match its hash, or does not link to the one before it
    /// although no id is missing in between.
    Altered { id: u64, why: &'static str },
    /// Ids do not increase (the listing is not the log in order).
    OutOfOrder { id: u64, after: u64 },
}

impl ChainBreak {
    /// The id of the first record removed or altered (for `RemovedBefore`: the record
    /// that lost its predecessors).
    pub fn id(&self) -> u64 {
        match self {
            ChainBreak::Removed { first, .. } => *first,
            ChainBreak::RemovedBefore { next } => *next,
            ChainBreak::Altered { id, .. } | ChainBreak::OutOfOrder { id, .. } => *id,
        }
    }
}

impl fmt::Display for ChainBreak {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ChainBreak::Removed { first, last, next } if first == last => write!(
                f,
                "record {first} was removed (record {next} does not link to the record before it, {})",
                first - 1
            ),
            ChainBreak::Removed { first, last, next } => write!(
                f,
                "records {first} to {last} were removed (record {next} does not link to the record before them, {})",
                first - 1
            ),
            ChainBreak::RemovedBefore { next } => write!(
                f,
                "records before {next} were removed: its prev_hash is neither the start of the log nor a \
                 retention anchor ({PRUNED_ACTION})"
            ),
            ChainBreak::Altered { id, why } => write!(f, "record {id} was altered: {why}"),
            ChainBreak::OutOfOrder { id, after } => write!(f, "record {id} came after record {after}: not in id order"),
        }
    }
}

impl std::error::Error for ChainBreak {}

/// What a chain that holds looks like.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ChainSummary {
    pub records: u64,
    pub first_id: u64,
    /// The newest record's id and hash: keep them elsewhere to notice a rewrite later.
    pub head: Option<(u64, String)>,
    /// The oldest record links to a retention anchor, not to the start of the log.
    pub anchored: bool,
}

/// Checks records pushed in id order, oldest first; [`ChainVerifier::finish`] once all
/// are in.
#[derive(Debug, Default)]
pub struct ChainVerifier {
    last: Option<(u64, String)>,
    /// The oldest record's id and prev_hash, when it does not start the log.
    start: Option<(u64, String)>,
    first_id: u64,
    anchors: HashSet<String>,
    records: u64,
}

impl ChainVerifier {
    pub fn new() -> Self {
        Self::default()
    }

    /// The next record, in id order.
    pub fn push(&mut self, r: &ChainRecord<'_>) -> Result<(), ChainBreak> {
        let id = r.fields.id;
        match &self.last {
            None => {
                self.first_id = id;
                if !r.prev_hash.is_empty() {
                    self.start = Some((id, r.prev_hash.to_string()));
                }
            }
            Some((last, _)) if id <= *last => return Err(ChainBreak::OutOfOrder { id, after: *last }),
            Some((last, hash)) if r.prev_hash != hash => {
                return Err(if id > last + 1 {
                    ChainBreak::Removed { first: last + 1, last: id - 1, next: id }
                } else {
                    ChainBreak::Altered { id, why: "its prev_hash is not the hash of the record before it" }
                });
            }
            Some(_) => {}
        }
        if record_hash(r.prev_hash, &r.fields) != r.hash {
            return Err(ChainBreak::Altered { id, why: "its content does not match its hash" });
        }
        if r.fields.action == PRUNED_ACTION {
            self.anchors.insert(r.fields.before_hash.to_string());
        }
        self.last = Some((id, r.hash.to_string()));
        self.records += 1;
        Ok(())
    }

    /// Every record is in: does the oldest one start the log or a retention anchor?
    pub fn finish(self) -> Result<ChainSummary, ChainBreak> {
        let anchored = match &self.start {
            None => false,
            Some((next, prev)) if !self.anchors.contains(prev) => {
                return Err(ChainBreak::RemovedBefore { next: *next });
            }
            Some(_) => true,
        };
        Ok(ChainSummary { records: self.records, first_id: self.first_id, head: self.last, anchored })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Owned {
        id: u64,
        action: String,
        detail: String,
        before_hash: String,
        prev_hash: String,
        hash: String,
    }

    impl Owned {
        fn fields(&self) -> AuditFields<'_> {
            AuditFields {
                id: self.id,
                at_ms: 1_000 + self.id as i64,
                actor: "alice",
                action: &self.action,
                detail: &self.detail,
                before_hash: &self.before_hash,
                ..Default::default()
            }
        }
        fn record(&self) -> ChainRecord<'_> {
            ChainRecord { fields: self.fields(), prev_hash: &self.prev_hash, hash: &self.hash }
        }
    }

    /// A chain of `n` records, ids from 1, as the store would write it.
    fn chain(n: u64) -> Vec<Owned> {
        let mut out: Vec<Owned> = Vec::new();
        for id in 1..=n {
            let prev = out.last().map(|r| r.hash.clone()).unwrap_or_default();
            let mut r = Owned {
                id,
                action: "baseline.pinned".into(),
                detail: format!("version {id}"),
                before_hash: String::new(),
                prev_hash: prev,
                hash: String::new(),
            };
            r.hash = record_hash(&r.prev_hash, &r.fields());
            out.push(r);
        }
        out
    }

    fn verify(records: &[Owned]) -> Result<ChainSummary, ChainBreak> {
        let mut v = ChainVerifier::new();
        for r in records {
            v.push(&r.record())?;
        }
        v.finish()
    }

    #[test]
    fn the_encoding_is_unambiguous_and_covers_every_field() {
        let base = AuditFields { id: 1, at_ms: 2, actor: "ab", action: "c", ..Default::default() };
        let h = record_hash("", &base);
        assert_eq!(h.len(), 64);
        assert_eq!(h, record_hash("", &base), "deterministic");
        // Moving a character from one field to the next changes the hash.
        assert_ne!(h, record_hash("", &AuditFields { actor: "a", action: "bc", ..base }));
        assert_ne!(h, record_hash("x", &base));
        let variants = [
            AuditFields { id: 9, ..base },
            AuditFields { at_ms: 9, ..base },
            AuditFields { target: "t", ..base },
            AuditFields { host_id: "h", ..base },
            AuditFields { path: "p", ..base },
            AuditFields { before_hash: "b", ..base },
            AuditFields { after_hash: "a", ..base },
            AuditFields { detail: "d", ..base },
            AuditFields { change_id: "c", ..base },
        ];
        for v in variants {
            assert_ne!(h, record_hash("", &v), "{v:?}");
        }
    }

    #[test]
    fn an_intact_chain_verifies_and_names_its_head() {
        let c = chain(5);
        let s = verify(&c).unwrap();
        assert_eq!((s.records, s.first_id, s.anchored), (5, 1, false));
        assert_eq!(s.head, Some((5, c[4].hash.clone())));
        assert_eq!(verify(&[]).unwrap().records, 0);
    }

    #[test]
    fn a_removed_record_is_named() {
        let mut c = chain(6);
        c.remove(2);
        let e = verify(&c).unwrap_err();
        assert_eq!(e, ChainBreak::Removed { first: 3, last: 3, next: 4 });
        assert!(e.to_string().starts_with("record 3 was removed"), "{e}");
        let mut c = chain(6);
        c.drain(1..4);
        assert_eq!(verify(&c).unwrap_err().id(), 2);
        // The oldest records gone without a retention anchor.
        let mut c = chain(4);
        c.remove(0);
        let e = verify(&c).unwrap_err();
        assert_eq!(e, ChainBreak::RemovedBefore { next: 2 });
    }

    #[test]
    fn an_altered_record_is_named() {
        let mut c = chain(4);
        c[1].detail.push('!');
        let e = verify(&c).unwrap_err();
        assert_eq!(e, ChainBreak::Altered { id: 2, why: "its content does not match its hash" });
        // Its hash rewritten to match: the next record's link gives it away.
        c[1].hash = record_hash(&c[1].prev_hash, &c[1].fields());
        assert_eq!(verify(&c).unwrap_err().id(), 3);
        // A record listed twice (or out of order).
        let mut c = chain(3);
        c.extend(chain(2).pop());
        assert!(matches!(verify(&c).unwrap_err(), ChainBreak::OutOfOrder { id: 2, after: 3 }));
    }

    #[test]
    fn retention_anchors_the_oldest_remaining_record() {
        // Records 1-3 pruned; record 6 says so, naming record 3's hash.
        let mut c = chain(5);
        let anchor = c[2].hash.clone();
        let prev = c[4].hash.clone();
        let mut pruned = Owned {
            id: 6,
            action: PRUNED_ACTION.into(),
            detail: "retention".into(),
            before_hash: anchor,
            prev_hash: prev,
            hash: String::new(),
        };
        pruned.hash = record_hash(&pruned.prev_hash, &pruned.fields());
        c.push(pruned);
        c.drain(..3);
        let s = verify(&c).unwrap();
        assert_eq!((s.records, s.first_id, s.anchored), (3, 4, true));
        // One more removed past the anchor is caught.
        c.remove(0);
        assert_eq!(verify(&c).unwrap_err(), ChainBreak::RemovedBefore { next: 5 });
    }
}
