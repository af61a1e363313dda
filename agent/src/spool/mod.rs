//! The agent's on-disk spool: every snapshot is written here (and fsynced) before
//! it is sent, and deleted only when the server has acknowledged it as durably
//! stored. After a reconnect or restart the agent resends what is unacknowledged.
//!
//! Layout in `<state_dir>/spool/`:
//! - `meta` (`meta.rs`): `spool_id`, highest acked seq, dropped count, highest seq
//!   handed out, seqs whose loss is already counted; versioned and CRC'd, replaced by
//!   write-temp, fsync, rename, fsync of the directory.
//! - `<first seq, 20 digits>.seg` (`segment.rs`): records
//!   `[len u32 LE][crc32 u32 LE][seq u64 LE][payload: prost-encoded Snapshot]`.
//!
//! Recovery rules:
//! - A failed append leaves nothing behind: a write that fails part-way, or whose
//!   `sync_data` fails, is truncated away (and the truncation synced) before the error
//!   is returned. If that rollback fails too, the segment takes no more appends, and
//!   after a failed sync the seq is never handed out again (the record may be whole
//!   on disk; it is then delivered after the next open, the only record with its seq).
//! - Open resynchronises past damage: after a bad record the scanner finds the next
//!   one whose header and CRC validate with a plausible seq, keeps every later valid
//!   unacknowledged record, and counts the seqs the damage held as dropped (once: they
//!   are remembered in `meta`). The records around the damage (or the next segment's
//!   name) tell how many it held; damage at the very end of the newest segment counts
//!   as one. A torn tail (an append cut short by a crash, never reported as stored) is
//!   cut and is no loss; a record whose length field alone is wrong is recovered.
//! - `read_after` checks each record's CRC and seq: a bad one is skipped, counted as
//!   dropped, and a full snapshot is requested.
//! - A `meta` that is missing, torn or corrupt starts a new spool id (the server then
//!   resets its dedup for the host, so no seq of ours can be taken for one it already
//!   has), keeps every valid record on disk to be resent, and asks for a full snapshot.
//!   Continuing the old id is not safe: without the acked seq and the highest seq
//!   handed out, a new record could get a seq the server already holds and be dropped
//!   as a duplicate. A segment that cannot be read does the same.
//! - Within a spool id no two records that could reach the server share a seq: the
//!   newest segment, whose records bound the next seq, is deleted only after `meta`
//!   (holding that bound) is durable, and segments are deleted only below the oldest
//!   unacknowledged record (so seqs between segments are never mistaken for losses).
//! - `meta` is written when it changes (acks, drops, losses), never before the spool
//!   can be used: opening on a full disk works, and a `meta` that cannot be written is
//!   retried on later appends and acks.
//! - Full disk (`ENOSPC`, `EDQUOT`): an append starts a new segment, drops the oldest
//!   segments to make room (counted, a full snapshot requested), and retries once;
//!   `EFBIG` (a file size limit) retries once in a new segment. Still failing, it
//!   returns [`AgentError::SpoolWrite`] (`is_storage_full`).
//!
//! Bounded by `max_bytes`: past it the oldest segments are dropped, the drop is
//! counted (and reported to the server), and the next snapshot is a full one so
//! the server's view heals.

mod fault;
mod meta;
mod recover;
mod room;
pub mod segment;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, VecDeque};
use std::fs::{File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};

use driftwatch_proto::v1::Snapshot;
use prost::Message;

use crate::error::{AgentError, Result};
use meta::{Lost, Meta};
use recover::{Bad, fresh_meta, read_record};
use segment::{HEADER, MAX_RECORD};

/// Room to make beyond the record itself on a full disk (a new `meta`).
const ROOM_SLACK: u64 = 8 * 1024;

#[derive(Debug, Clone, Copy)]
struct Entry {
    seq: u64,
    segment: u64,
    offset: u64,
    len: u32,
}

#[derive(Debug)]
struct Segment {
    path: PathBuf,
    bytes: u64,
}

#[derive(Debug)]
pub struct Spool {
    dir: PathBuf,
    spool_id: String,
    acked: u64,
    next_seq: u64,
    dropped: u64,
    need_full: bool,
    /// Seqs above `acked` whose loss is counted in `dropped`.
    lost: Lost,
    /// `meta` on disk is behind the state in memory.
    meta_dirty: bool,
    entries: VecDeque<Entry>,
    segments: BTreeMap<u64, Segment>,
    active: Option<(u64, File)>,
    total_bytes: u64,
    max_bytes: u64,
    segment_bytes: u64,
    /// On a full disk, drop the oldest segments to make room (see [`Spool::keep_on_full_disk`]).
    drop_on_full: bool,
}

/// Why an append attempt failed.
enum Failed {
    /// Writing, syncing or starting a segment failed; nothing of the record is kept.
    Write(PathBuf, io::Error),
    Other(AgentError),
}

impl From<Failed> for AgentError {
    fn from(f: Failed) -> Self {
        match f {
            Failed::Write(path, source) => AgentError::SpoolWrite { path, source },
            Failed::Other(e) => e,
        }
    }
}

impl Spool {
    /// Open (or create) the spool in `dir`. Writes nothing before the spool is usable
    /// (a new `meta` is attempted and, on a full disk, left for later).
    pub fn open(dir: &Path, max_bytes: u64) -> Result<Self> {
        std::fs::create_dir_all(dir).map_err(|e| AgentError::io(dir, e))?;
        let _ = std::fs::remove_file(dir.join(meta::TMP));
        // (meta, whether it is new, whether the old one was corrupt)
        let (m, fresh, corrupt) = match meta::read(dir) {
            meta::Read::Found(m) => (m, false, false),
            meta::Read::Missing => (fresh_meta(), true, false),
            meta::Read::Corrupt(why) => {
                let m = fresh_meta();
                tracing::warn!(
                    path = %dir.join(meta::NAME).display(),
                    problem = %why,
                    new_spool_id = %m.spool_id,
                    "spool meta is corrupt; starting a new spool id, resending every record on disk and a full snapshot"
                );
                (m, true, true)
            }
        };
        let durable_bound = m.acked.max(m.last_seq).max(m.lost.max());
        let mut spool = Spool {
            dir: dir.to_path_buf(),
            spool_id: m.spool_id,
            acked: m.acked,
            next_seq: durable_bound + 1,
            dropped: m.dropped,
            need_full: corrupt,
            lost: m.lost,
            meta_dirty: fresh,
            entries: VecDeque::new(),
            segments: BTreeMap::new(),
            active: None,
            total_bytes: 0,
            max_bytes,
            segment_bytes: (max_bytes / 8).clamp(64 * 1024, 4 * 1024 * 1024),
            drop_on_full: true,
        };
        spool.scan()?;
        // Deleting a dead newest segment needs `meta` to bound the seqs it held.
        let newest_dead =
            spool.segments.keys().next_back().is_some_and(|s| !spool.entries.iter().any(|e| e.segment == *s));
        if newest_dead && spool.next_seq - 1 > durable_bound {
            spool.meta_dirty = true;
        }
        let saved = !spool.meta_dirty || spool.save_meta("open");
        spool.remove_dead(saved);
        Ok(spool)
    }

    /// On a full disk, fail the append instead of dropping the oldest segments to make
    /// room: for a caller with its own policy (the agent keeps a connected stream's
    /// snapshots in memory and drops, with [`Spool::drop_oldest`], only while
    /// disconnected; a drop here would cost a full listing each time).
    pub fn keep_on_full_disk(&mut self) {
        self.drop_on_full = false;
    }

    pub fn spool_id(&self) -> &str {
        &self.spool_id
    }
    pub fn acked(&self) -> u64 {
        self.acked
    }
    pub fn pending(&self) -> u64 {
        self.entries.len() as u64
    }
    pub fn dropped(&self) -> u64 {
        self.dropped
    }
    pub fn bytes(&self) -> u64 {
        self.total_bytes
    }
    pub fn last_seq(&self) -> u64 {
        self.next_seq - 1
    }
    /// True once after entries were dropped (or the server lost data): send a full snapshot.
    pub fn take_need_full(&mut self) -> bool {
        std::mem::take(&mut self.need_full)
    }
    pub fn request_full(&mut self) {
        self.need_full = true;
    }

    /// Take the next seq for a snapshot that is not written here (the spool could not
    /// take it; it is sent from memory): no later snapshot gets the same seq.
    pub fn take_seq(&mut self, snapshot: &mut Snapshot) -> u64 {
        let seq = self.next_seq;
        snapshot.seq = seq;
        self.skip_to(seq + 1);
        seq
    }

    /// Never number a snapshot at or below `seq` (what the server has applied of this
    /// spool, which may include snapshots sent from memory that this spool never held).
    pub fn number_above(&mut self, seq: u64) {
        if seq >= self.next_seq {
            self.skip_to(seq + 1);
        }
    }

    /// Seqs below `next` are handed out without records here. The next record starts a
    /// segment (a segment's seqs stay contiguous for the scanner), and `meta` must
    /// learn the new bound (now if it can, else with its next write).
    fn skip_to(&mut self, next: u64) {
        self.next_seq = next;
        self.active = None;
        self.save_meta("seq taken");
    }

    /// Drop the oldest segment to make room on a full disk: its unacknowledged
    /// snapshots are counted as dropped and the next snapshot is a full one. Returns
    /// how many were dropped; `None` when only the newest segment is left (it bounds
    /// the next seq until `meta` is durable, so it stays).
    pub fn drop_oldest(&mut self) -> Result<Option<u64>> {
        let newest = self.segments.keys().next_back().copied();
        let Some(oldest) = self.segments.keys().next().copied().filter(|s| Some(*s) != newest) else {
            return Ok(None);
        };
        let (lost, bytes) = self.forget_segment(oldest);
        self.count_dropped(lost);
        self.delete_file(oldest, bytes);
        Ok(Some(lost))
    }

    /// Count `n` snapshots lost outside the spool (held in memory when it could not
    /// take them, dropped there before the server had them) with the spool's own drops;
    /// the next snapshot is a full one. The count reaches `meta` with its next write
    /// when this one fails (a full disk).
    pub fn count_dropped(&mut self, n: u64) {
        if n == 0 {
            return;
        }
        self.dropped += n;
        self.need_full = true;
        self.save_meta("count dropped");
    }

    /// Assign the next seq to `snapshot`, write it durably, return the seq. On an error
    /// nothing of it is kept; [`AgentError::is_storage_full`] tells a disk that cannot
    /// take it (full, over a size limit, failing) from other errors.
    pub fn append(&mut self, snapshot: &mut Snapshot) -> Result<u64> {
        let seq = match self.try_append(snapshot) {
            Ok(seq) => seq,
            Err(Failed::Write(path, e)) => {
                if !self.make_room(snapshot.encoded_len() as u64, &e) {
                    return Err(AgentError::SpoolWrite { path, source: e });
                }
                tracing::info!(error = %e, "retrying the append once after making room");
                self.try_append(snapshot)?
            }
            Err(f) => return Err(f.into()),
        };
        self.enforce_bound();
        if self.meta_dirty {
            self.save_meta("append");
        }
        Ok(seq)
    }

    fn try_append(&mut self, snapshot: &mut Snapshot) -> Result<u64, Failed> {
        let seq = self.next_seq;
        snapshot.seq = seq;
        let payload = snapshot.encode_to_vec();
        if payload.len() > MAX_RECORD {
            let why = format!("snapshot of {} bytes exceeds the record limit", payload.len());
            return Err(Failed::Other(self.err(why)));
        }
        let rec = segment::encode(seq, &payload);
        let need_rotate = match &self.active {
            None => true,
            Some((first, _)) => self.segments.get(first).is_none_or(|s| s.bytes >= self.segment_bytes),
        };
        if need_rotate {
            self.rotate(seq)?;
        }
        let Some((first, file)) = self.active.as_ref() else {
            return Err(Failed::Other(self.err("no active segment after rotation".into())));
        };
        let first = *first;
        let Some(seg) = self.segments.get(&first) else {
            return Err(Failed::Other(self.err("active segment not registered".into())));
        };
        let (offset, path) = (seg.bytes, seg.path.clone());
        if let Err(e) = fault::write_at(file, &rec, offset) {
            self.roll_back(offset, seq, false);
            return Err(Failed::Write(path, e));
        }
        if let Err(e) = fault::sync_data(file) {
            self.roll_back(offset, seq, true);
            return Err(Failed::Write(path, e));
        }
        if let Some(seg) = self.segments.get_mut(&first) {
            seg.bytes += rec.len() as u64;
        }
        self.total_bytes += rec.len() as u64;
        self.entries.push_back(Entry { seq, segment: first, offset, len: payload.len() as u32 });
        self.next_seq = seq + 1;
        Ok(seq)
    }

    /// Undo a failed append: truncate the active segment back to `offset` and sync
    /// that, so the error leaves no bytes behind and the caller may retry.
    ///
    /// The seq is handed out again if this worked: the next record overwrites the same
    /// bytes, so no second record with that seq can surface, and a segment's seqs stay
    /// contiguous, which the scanner relies on to tell how many records damage held.
    /// If it did not work, the segment takes no more appends (its tail is unknown).
    /// After a failed sync the record may then be whole on disk, so its seq is burned
    /// (the gap falls between segments): whatever surfaces at the next open is the only
    /// record with that seq, delivered then. A write that failed part-way left a prefix
    /// that can never validate: its seq is reused either way.
    fn roll_back(&mut self, offset: u64, seq: u64, whole_maybe: bool) {
        let Some((first, file)) = self.active.as_ref() else { return };
        let first = *first;
        let Err(e) = fault::set_len(file, offset).and_then(|()| fault::sync_data(file)) else { return };
        tracing::error!(
            segment = %self.segment_path(first).display(),
            offset,
            seq,
            seq_burned = whole_maybe,
            error = %e,
            "cannot roll a failed spool append back; the segment takes no more appends"
        );
        if let Some(seg) = self.segments.get_mut(&first)
            && let Ok(m) = std::fs::metadata(&seg.path)
        {
            self.total_bytes = self.total_bytes - seg.bytes + m.len();
            seg.bytes = m.len();
        }
        self.active = None;
        if whole_maybe {
            self.next_seq = seq + 1;
        }
    }

    /// The server has stored everything up to `seq`: drop it.
    pub fn ack(&mut self, seq: u64) -> Result<()> {
        if seq < self.acked {
            // The server knows less than it once acknowledged (its data was lost or
            // restored): what we deleted cannot be resent, so heal with a full snapshot.
            tracing::warn!(
                server_acked = seq,
                agent_acked = self.acked,
                "server acknowledged less than before; next snapshot is full"
            );
            self.need_full = true;
            return Ok(());
        }
        if seq == self.acked {
            if self.meta_dirty {
                self.save_meta("ack");
            }
            return Ok(());
        }
        if seq >= self.next_seq {
            // The server holds seqs of this spool we never handed out (our state is older
            // than its, e.g. restored from a backup): what we hold at or below them was
            // dropped by its dedup. Never reuse them; count what was lost; heal.
            let lost = self.entries.len() as u64;
            self.dropped += lost;
            self.need_full = true;
            tracing::warn!(
                server_acked = seq,
                agent_last_seq = self.next_seq - 1,
                dropped = lost,
                "server acknowledged seqs this spool never handed out; next snapshot is full"
            );
            self.next_seq = seq + 1;
            // The next seqs do not follow the active segment's: start a new one.
            self.active = None;
        }
        self.acked = seq;
        while self.entries.front().is_some_and(|e| e.seq <= seq) {
            self.entries.pop_front();
        }
        self.lost.prune(seq);
        // Older segments first (frees room on a full disk), the newest only once `meta`
        // holds the bound on seqs that it held.
        self.remove_dead(false);
        let saved = self.save_meta("ack");
        self.remove_dead(saved);
        Ok(())
    }

    /// Up to `max` unacknowledged snapshots with seq > `after`, in order. A record that
    /// fails its CRC, or that the disk no longer gives back (a vanished segment, an
    /// I/O error), is skipped, counted as dropped, and a full snapshot is requested:
    /// one bad record never holds up the ones after it.
    pub fn read_after(&mut self, after: u64, max: usize) -> Result<Vec<Snapshot>> {
        let mut out = Vec::new();
        let mut bad: Vec<(u64, String)> = Vec::new();
        let start = self.entries.partition_point(|e| e.seq <= after);
        let mut open: Option<(u64, Result<File, String>)> = None;
        for e in self.entries.iter().skip(start) {
            if out.len() >= max {
                break;
            }
            if open.as_ref().is_none_or(|(s, _)| *s != e.segment) {
                let f = match self.segments.get(&e.segment) {
                    Some(seg) => File::open(&seg.path).map_err(|x| format!("segment cannot be opened: {x}")),
                    None => Err("segment is gone".to_string()),
                };
                open = Some((e.segment, f));
            }
            let Some((_, file)) = open.as_ref() else { continue };
            match file.as_ref().map_err(|why| Bad::Record(why.clone())).and_then(|f| read_record(f, e)) {
                Ok(snap) => out.push(snap),
                Err(Bad::Io(x)) => bad.push((e.seq, format!("cannot be read: {x}"))),
                Err(Bad::Record(why)) => bad.push((e.seq, why)),
            }
        }
        if !bad.is_empty() {
            self.count_bad(&bad);
        }
        Ok(out)
    }

    fn err(&self, message: String) -> AgentError {
        AgentError::Spool { path: self.dir.clone(), message }
    }

    fn segment_path(&self, first: u64) -> PathBuf {
        self.dir.join(format!("{first:020}.seg"))
    }

    fn rotate(&mut self, first_seq: u64) -> Result<(), Failed> {
        let path = self.segment_path(first_seq);
        let file = OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .read(true)
            .open(&path)
            .map_err(|e| Failed::Write(path.clone(), e))?;
        File::open(&self.dir).and_then(|d| d.sync_all()).map_err(|e| Failed::Write(self.dir.clone(), e))?;
        if let Some(old) = self.segments.insert(first_seq, Segment { path, bytes: 0 }) {
            self.total_bytes -= old.bytes;
        }
        self.active = Some((first_seq, file));
        Ok(())
    }

    /// Write `meta` now (best effort: on failure it stays dirty and is retried by the
    /// next append or ack). True when it is durable.
    fn save_meta(&mut self, why: &'static str) -> bool {
        let m = Meta {
            spool_id: self.spool_id.clone(),
            acked: self.acked,
            dropped: self.dropped,
            last_seq: self.next_seq - 1,
            lost: self.lost.clone(),
        };
        match meta::write(&self.dir, &m) {
            Ok(()) => {
                self.meta_dirty = false;
                true
            }
            Err(e) => {
                if !self.meta_dirty {
                    tracing::warn!(path = %self.dir.join(meta::NAME).display(), on = why, error = %e, "cannot write the spool meta; keeping it in memory and retrying later");
                }
                self.meta_dirty = true;
                false
            }
        }
    }
}
