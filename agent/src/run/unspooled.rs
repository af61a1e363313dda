//! Snapshots the spool could not take (its disk is full, a write failed), held in
//! memory in seq order until the server acknowledges them, and sent like spooled ones.
//! Not durable: an agent that stops loses them (the next start lists every file again).
//! Bounded in bytes: past the bound the oldest are dropped, and the caller counts them.

use std::collections::VecDeque;

use driftwatch_proto::v1::Snapshot;
use prost::Message;

/// Bytes of snapshots held in memory at most.
pub const MAX_BYTES: usize = 8 * 1024 * 1024;

#[derive(Debug)]
pub(crate) struct Unspooled {
    entries: VecDeque<(Snapshot, usize)>,
    bytes: usize,
    max_bytes: usize,
}

impl Default for Unspooled {
    fn default() -> Self {
        Self::new(MAX_BYTES)
    }
}

impl Unspooled {
    pub fn new(max_bytes: usize) -> Self {
        Self { entries: VecDeque::new(), bytes: 0, max_bytes }
    }

    /// Hold `snapshot` (its seq above every held one); returns how many older ones were
    /// dropped to stay within the bound (the newest is always kept).
    pub fn push(&mut self, snapshot: Snapshot) -> u64 {
        debug_assert!(self.entries.back().is_none_or(|(s, _)| s.seq < snapshot.seq), "seqs increase");
        let len = snapshot.encoded_len();
        self.entries.push_back((snapshot, len));
        self.bytes += len;
        let mut dropped = 0;
        while self.bytes > self.max_bytes && self.entries.len() > 1 {
            if let Some((_, n)) = self.entries.pop_front() {
                self.bytes -= n;
                dropped += 1;
            }
        }
        dropped
    }

    /// The server stored everything up to `seq`.
    pub fn ack(&mut self, seq: u64) {
        while let Some((s, n)) = self.entries.front() {
            if s.seq > seq {
                break;
            }
            self.bytes -= *n;
            self.entries.pop_front();
        }
    }

    /// The first held snapshot with a seq above `after`.
    pub fn first_after(&self, after: u64) -> Option<&Snapshot> {
        self.entries.iter().map(|(s, _)| s).find(|s| s.seq > after)
    }

    /// The held snapshot with this seq.
    pub fn get(&self, seq: u64) -> Option<&Snapshot> {
        self.entries.iter().map(|(s, _)| s).find(|s| s.seq == seq)
    }

    /// Whether `len` more bytes fit without dropping anything.
    pub fn has_room(&self, len: usize) -> bool {
        self.entries.is_empty() || self.bytes + len <= self.max_bytes
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use driftwatch_proto::v1::FileState;

    fn snap(seq: u64, pad: usize) -> Snapshot {
        Snapshot {
            seq,
            files: vec![FileState { path: "/etc/a".into(), content_hash: "x".repeat(pad), ..Default::default() }],
            ..Default::default()
        }
    }

    #[test]
    fn held_until_acked_in_order() {
        let mut u = Unspooled::new(1 << 20);
        for seq in [3, 5, 6] {
            assert_eq!(u.push(snap(seq, 10)), 0);
        }
        assert_eq!(u.first_after(0).map(|s| s.seq), Some(3));
        assert_eq!(u.first_after(3).map(|s| s.seq), Some(5));
        assert_eq!(u.first_after(6), None);
        assert_eq!(u.get(5).map(|s| s.seq), Some(5));
        assert!(u.get(4).is_none());
        u.ack(5);
        assert_eq!(u.len(), 1);
        assert_eq!(u.first_after(0).map(|s| s.seq), Some(6));
        u.ack(9);
        assert_eq!(u.len(), 0);
        assert!(u.has_room(usize::MAX / 2), "an empty queue takes anything");
    }

    #[test]
    fn past_the_bound_the_oldest_go_and_are_counted() {
        let one = snap(1, 1000).encoded_len();
        let mut u = Unspooled::new(one * 3);
        assert!(u.has_room(one));
        let dropped: u64 = (1..=5).map(|seq| u.push(snap(seq, 1000))).sum();
        assert_eq!(dropped, 2);
        assert_eq!(u.first_after(0).map(|s| s.seq), Some(3));
        assert!(!u.has_room(one));
        // A single snapshot above the bound is still kept (it is the newest).
        assert_eq!(u.push(snap(6, 10_000)), 3);
        assert_eq!(u.len(), 1);
    }
}
