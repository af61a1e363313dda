//! Making room: the spool's size bound, a full disk, and deleting what is acknowledged.

use std::io;

use super::{HEADER, ROOM_SLACK, Spool};

impl Spool {
    /// After a full disk (or a file size limit) stopped an append: start a new segment,
    /// and unless only the size limit was hit, drop the oldest segments (not the new
    /// one) until the record and a `meta` fit. True when a retry can help.
    pub(super) fn make_room(&mut self, record: u64, e: &io::Error) -> bool {
        let errno = e.raw_os_error();
        let full = matches!(errno, Some(libc::ENOSPC) | Some(libc::EDQUOT));
        if !full && errno != Some(libc::EFBIG) {
            return false;
        }
        let active_used = self.active.as_ref().is_some_and(|(f, _)| self.segments.get(f).is_some_and(|s| s.bytes > 0));
        let rotated = active_used && self.rotate(self.next_seq).is_ok();
        if !full || !self.drop_on_full {
            return rotated;
        }
        let keep = self.segments.keys().next_back().copied();
        let need = record + HEADER as u64 + ROOM_SLACK;
        let (mut freed, mut records, mut segments) = (0, 0, 0);
        while freed < need {
            let Some(oldest) = self.segments.keys().next().copied().filter(|s| Some(*s) != keep) else { break };
            let (n, bytes) = self.forget_segment(oldest);
            self.delete_file(oldest, bytes);
            freed += bytes;
            records += n;
            segments += 1;
        }
        if segments == 0 {
            tracing::warn!(error = %e, spool_bytes = self.total_bytes, "disk full and nothing in the spool to drop");
            return false;
        }
        self.dropped += records;
        self.need_full = true;
        tracing::warn!(
            error = %e,
            dropped = records,
            segments,
            freed_bytes = freed,
            total_dropped = self.dropped,
            "disk full: dropped the oldest unacknowledged snapshots to make room"
        );
        self.save_meta("make room");
        true
    }

    /// Take a segment and its entries out of the index: (unacknowledged records, bytes).
    pub(super) fn forget_segment(&mut self, first: u64) -> (u64, u64) {
        let before = self.entries.len();
        self.entries.retain(|e| e.segment != first);
        let records = (before - self.entries.len()) as u64;
        let bytes = self.segments.remove(&first).map_or(0, |s| s.bytes);
        self.total_bytes -= bytes;
        if self.active.as_ref().is_some_and(|(f, _)| *f == first) {
            self.active = None;
        }
        (records, bytes)
    }

    pub(super) fn delete_file(&self, first: u64, bytes: u64) {
        let path = self.segment_path(first);
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => tracing::warn!(segment = %path.display(), bytes, error = %e, "cannot delete a spool segment"),
        }
    }

    /// Delete segments older than any unacknowledged record; the newest one (it bounds the
    /// next seq) only when `newest_too` (`meta` holding that bound is durable).
    /// One that cannot be deleted stays in the index and is tried again.
    pub(super) fn remove_dead(&mut self, newest_too: bool) {
        let newest = self.segments.keys().next_back().copied();
        // Only below the oldest live one: a gap between segments would make damage at
        // the end of the one before it look like more lost records than it held.
        let first_live = self.entries.front().map(|e| e.segment);
        let dead: Vec<u64> = self
            .segments
            .keys()
            .copied()
            .filter(|s| first_live.is_none_or(|l| *s < l) && (newest_too || Some(*s) != newest))
            .collect();
        for s in dead {
            let path = self.segment_path(s);
            match std::fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => {
                    tracing::warn!(segment = %path.display(), error = %e, "cannot delete an acknowledged spool segment");
                    continue;
                }
            }
            self.forget_segment(s);
        }
    }

    pub(super) fn enforce_bound(&mut self) {
        let mut drop = Vec::new();
        let mut bytes = self.total_bytes;
        for (first, seg) in &self.segments {
            if bytes <= self.max_bytes || drop.len() + 1 >= self.segments.len() {
                break;
            }
            drop.push(*first);
            bytes -= seg.bytes;
        }
        if drop.is_empty() {
            return;
        }
        let lost = self.entries.iter().filter(|e| drop.contains(&e.segment)).count() as u64;
        self.dropped += lost;
        self.need_full = true;
        // The count is durable before the records go: a crash in between can count a
        // drop that did not happen, never miss one.
        self.save_meta("bound");
        tracing::warn!(
            dropped = lost,
            total_dropped = self.dropped,
            "spool full: dropped the oldest unacknowledged snapshots"
        );
        for s in drop {
            let (_, bytes) = self.forget_segment(s);
            self.delete_file(s, bytes);
        }
    }
}
