//! Recovery: rebuilding the index at open, and records found damaged on reading back.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;

use driftwatch_proto::v1::Snapshot;
use prost::Message;

use super::meta::{Lost, Meta};
use super::{Entry, HEADER, Segment, Spool, segment};
use crate::error::{AgentError, Result};

impl Spool {
    pub(super) fn count_bad(&mut self, bad: &[(u64, String)]) {
        let mut counted = 0;
        for (seq, why) in bad {
            let path = self.entries.iter().find(|e| e.seq == *seq).map(|e| self.segment_path(e.segment));
            tracing::error!(seq, segment = ?path, problem = %why, "spooled record is damaged; skipped and counted as dropped");
            counted += self.lost.add(*seq, *seq);
        }
        self.entries.retain(|e| !bad.iter().any(|(s, _)| *s == e.seq));
        self.dropped += counted;
        self.need_full = true;
        self.save_meta("damaged record");
    }

    /// Rebuild the index from the segment files (see the module docs for the rules).
    pub(super) fn scan(&mut self) -> Result<()> {
        let mut segs: Vec<(u64, PathBuf)> = Vec::new();
        for ent in std::fs::read_dir(&self.dir).map_err(|e| AgentError::io(&self.dir, e))? {
            let ent = ent.map_err(|e| AgentError::io(&self.dir, e))?;
            let name = ent.file_name();
            let name = name.to_string_lossy();
            // A name past the seq ceiling is not one the spool wrote: left alone, unread.
            if let Some(n) =
                name.strip_suffix(".seg").and_then(|n| n.parse::<u64>().ok()).filter(|n| *n <= super::segment::MAX_SEQ)
            {
                segs.push((n, ent.path()));
            }
        }
        segs.sort();
        let mut last = self.next_seq - 1;
        // The highest seq the segments before this one held.
        let mut disk_last = 0;
        let mut unreadable = false;
        for i in 0..segs.len() {
            let (first, path) = segs[i].clone();
            let next = segs.get(i + 1).map(|s| s.0);
            last = last.max(first.saturating_sub(1));
            let data = match std::fs::read(&path) {
                Ok(d) => d,
                Err(e) => {
                    // Kept for inspection. Which seqs it held cannot be told, so the old
                    // numbering cannot safely go on: a new spool id, and a full snapshot
                    // in place of whatever it held.
                    tracing::error!(segment = %path.display(), error = %e, "cannot read a spool segment; skipped");
                    last = last.max(first);
                    unreadable = true;
                    continue;
                }
            };
            let found = segment::scan(first, disk_last, &data, next);
            disk_last = found.last_seq;
            last = last.max(found.last_seq);
            let mut size = data.len() as u64;
            for d in &found.damage {
                let counted = d.lost.map_or(0, |(lo, hi)| self.lost.add(lo.max(self.acked + 1), hi));
                if counted > 0 {
                    self.dropped += counted;
                    self.need_full = true;
                    self.meta_dirty = true;
                }
                tracing::warn!(
                    segment = %path.display(),
                    offset = d.offset,
                    bytes = d.bytes,
                    lost_seqs = ?d.lost,
                    newly_counted = counted,
                    torn = d.torn,
                    "spool segment has damaged bytes; skipped to the next valid record"
                );
            }
            if let Some(cut) = found.torn_from {
                match OpenOptions::new()
                    .write(true)
                    .open(&path)
                    .and_then(|f| f.set_len(cut).and_then(|()| f.sync_all()))
                {
                    Ok(()) => size = cut,
                    Err(e) => tracing::warn!(segment = %path.display(), error = %e, "cannot cut a torn tail"),
                }
            }
            for r in found.records.iter().filter(|r| r.seq > self.acked) {
                self.entries.push_back(Entry { seq: r.seq, segment: first, offset: r.offset, len: r.len });
            }
            self.total_bytes += size;
            self.segments.insert(first, Segment { path, bytes: size });
        }
        self.next_seq = last + 1;
        if unreadable {
            let m = fresh_meta();
            tracing::warn!(old = %self.spool_id, new = %m.spool_id, "spool id renewed: the seqs of an unreadable segment are unknown");
            (self.spool_id, self.acked) = (m.spool_id, 0);
            self.need_full = true;
            self.meta_dirty = true;
        }
        Ok(())
    }
}

/// Why a record could not be read back.
pub(super) enum Bad {
    Io(io::Error),
    Record(String),
}

/// Read one record back and check it: header CRC and seq, then the payload decodes to
/// a snapshot of that seq. The length is the index's (one flipped bit in the length
/// field of an intact record is no reason to lose it: the scan recovers it too).
pub(super) fn read_record(f: &File, e: &Entry) -> Result<Snapshot, Bad> {
    let mut buf = vec![0u8; HEADER + e.len as usize];
    match f.read_exact_at(&mut buf, e.offset) {
        Ok(()) => {}
        Err(x) if x.kind() == io::ErrorKind::UnexpectedEof => return Err(Bad::Record("cut short".into())),
        Err(x) => return Err(Bad::Io(x)),
    }
    let Some((len, crc, seq)) = segment::header(&buf) else { return Err(Bad::Record("no header".into())) };
    // One flipped bit in the length field is found again by the scan at the next open;
    // more could hide the record from it (at a segment's end): damaged now, and counted
    // now, rather than lost uncounted at the next start.
    if (len as u64 ^ u64::from(e.len)).count_ones() > 1 {
        return Err(Bad::Record("length field damaged".into()));
    }
    let payload = &buf[HEADER..];
    if seq != e.seq || segment::crc(seq, payload) != crc {
        return Err(Bad::Record("CRC or seq mismatch".into()));
    }
    match Snapshot::decode(payload) {
        Ok(s) if s.seq == e.seq => Ok(s),
        Ok(_) => Err(Bad::Record("payload of another seq".into())),
        Err(x) => Err(Bad::Record(format!("does not decode: {x}"))),
    }
}

pub(super) fn fresh_meta() -> Meta {
    Meta { spool_id: hex::encode(rand::random::<[u8; 16]>()), acked: 0, dropped: 0, last_seq: 0, lost: Lost::default() }
}
