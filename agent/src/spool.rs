//! The agent's on-disk spool: every snapshot is written here (and fsynced) before
//! it is sent, and deleted only when the server has acknowledged it as durably
//! stored. After a reconnect or restart the agent resends what is unacknowledged.
//!
//! Layout in `<state_dir>/spool/`:
//! - `meta`: `spool_id`, highest acked seq and the dropped count, replaced atomically.
//! - `<first seq, 20 digits>.seg`: segments of records
//!   `[len u32 LE][crc32 u32 LE][seq u64 LE][payload: prost-encoded Snapshot]`,
//!   the CRC covering seq and payload. A torn or corrupt tail (crash mid-write) is
//!   cut off at the last good record on open.
//!
//! Bounded by `max_bytes`: past it the oldest segments are dropped, the drop is
//! counted (and reported to the server), and the next snapshot is a full one so
//! the server's view heals.

use std::collections::{BTreeMap, VecDeque};
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use driftwatch_proto::v1::Snapshot;
use prost::Message;

use crate::error::{AgentError, Result};

const HEADER: usize = 16;
/// A single record larger than this is refused (the server's message limit is lower).
const MAX_RECORD: usize = 64 * 1024 * 1024;

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
    entries: VecDeque<Entry>,
    segments: BTreeMap<u64, Segment>,
    active: Option<(u64, File)>,
    total_bytes: u64,
    max_bytes: u64,
    segment_bytes: u64,
}

impl Spool {
    /// Open (or create) the spool in `dir`.
    pub fn open(dir: &Path, max_bytes: u64) -> Result<Self> {
        std::fs::create_dir_all(dir).map_err(|e| AgentError::io(dir, e))?;
        let meta = read_meta(dir)?;
        let (spool_id, acked, dropped) = match meta {
            Some(m) => m,
            None => (new_spool_id(), 0, 0),
        };
        let mut spool = Spool {
            dir: dir.to_path_buf(),
            spool_id,
            acked,
            next_seq: acked + 1,
            dropped,
            need_full: false,
            entries: VecDeque::new(),
            segments: BTreeMap::new(),
            active: None,
            total_bytes: 0,
            max_bytes,
            segment_bytes: (max_bytes / 8).clamp(64 * 1024, 4 * 1024 * 1024),
        };
        spool.write_meta()?;
        spool.scan()?;
        Ok(spool)
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
        self.next_seq = seq + 1;
        seq
    }

    /// Never number a snapshot at or below `seq` (what the server has applied of this
    /// spool, which may include snapshots sent from memory that this spool never held).
    pub fn number_above(&mut self, seq: u64) {
        self.next_seq = self.next_seq.max(seq.saturating_add(1));
    }

    /// Drop the oldest segment to make room on a full disk: its unacknowledged
    /// snapshots are counted as dropped and the next snapshot is a full one. Returns
    /// how many were dropped, `None` when the spool holds no segment.
    pub fn drop_oldest(&mut self) -> Result<Option<u64>> {
        let Some(&oldest) = self.segments.keys().next() else { return Ok(None) };
        let before = self.entries.len();
        self.entries.retain(|e| e.segment != oldest);
        let lost = (before - self.entries.len()) as u64;
        self.remove_segment(oldest)?;
        self.count_dropped(lost);
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
        if let Err(e) = self.write_meta() {
            tracing::debug!(error = %e, "spool meta not written; the dropped count goes with the next write");
        }
    }

    /// Assign the next seq to `snapshot`, write it durably, return the seq.
    pub fn append(&mut self, snapshot: &mut Snapshot) -> Result<u64> {
        let seq = self.next_seq;
        snapshot.seq = seq;
        let payload = snapshot.encode_to_vec();
        if payload.len() > MAX_RECORD {
            return Err(self.err(format!("snapshot of {} bytes exceeds the record limit", payload.len())));
        }
        let need_rotate = match &self.active {
            None => true,
            Some((first, _)) => self.segments.get(first).is_none_or(|s| s.bytes >= self.segment_bytes),
        };
        if need_rotate {
            self.rotate(seq)?;
        }
        let (first, file) = self.active.as_mut().expect("rotated");
        let first = *first;
        let offset = file.seek(SeekFrom::End(0)).map_err(|e| AgentError::io(&self.dir, e))?;
        let mut rec = Vec::with_capacity(HEADER + payload.len());
        rec.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        let mut h = crc32fast::Hasher::new();
        h.update(&seq.to_le_bytes());
        h.update(&payload);
        rec.extend_from_slice(&h.finalize().to_le_bytes());
        rec.extend_from_slice(&seq.to_le_bytes());
        rec.extend_from_slice(&payload);
        file.write_all(&rec).map_err(|e| AgentError::io(&self.dir, e))?;
        file.sync_data().map_err(|e| AgentError::io(&self.dir, e))?;
        let seg = self.segments.get_mut(&first).expect("active segment registered");
        seg.bytes += rec.len() as u64;
        self.total_bytes += rec.len() as u64;
        self.entries.push_back(Entry { seq, segment: first, offset, len: payload.len() as u32 });
        self.next_seq = seq + 1;
        self.enforce_bound()?;
        Ok(seq)
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
            return Ok(());
        }
        self.acked = seq;
        if seq >= self.next_seq {
            // Spool state older than the server's (restored backup): never reuse seqs.
            self.next_seq = seq + 1;
        }
        while self.entries.front().is_some_and(|e| e.seq <= seq) {
            self.entries.pop_front();
        }
        // Delete segments with no pending entries left (never the active one).
        let first_live = self.entries.front().map(|e| e.segment);
        let active = self.active.as_ref().map(|(f, _)| *f);
        let dead: Vec<u64> =
            self.segments.keys().copied().filter(|s| Some(*s) != active && first_live.is_none_or(|l| *s < l)).collect();
        for s in dead {
            self.remove_segment(s)?;
        }
        // An active segment fully acked is truncated by rotation on next append.
        if self.entries.is_empty()
            && let Some((first, _)) = self.active.take()
        {
            self.remove_segment(first)?;
        }
        self.write_meta()
    }

    /// Up to `max` unacknowledged snapshots with seq > `after`, in order.
    pub fn read_after(&self, after: u64, max: usize) -> Result<Vec<Snapshot>> {
        let mut out = Vec::new();
        let start = self.entries.partition_point(|e| e.seq <= after);
        let mut open: Option<(u64, File)> = None;
        for e in self.entries.iter().skip(start).take(max) {
            if open.as_ref().is_none_or(|(s, _)| *s != e.segment) {
                let path = &self.segments[&e.segment].path;
                open = Some((e.segment, File::open(path).map_err(|x| AgentError::io(path, x))?));
            }
            let (_, f) = open.as_mut().expect("opened");
            f.seek(SeekFrom::Start(e.offset + HEADER as u64)).map_err(|x| AgentError::io(&self.dir, x))?;
            let mut buf = vec![0u8; e.len as usize];
            f.read_exact(&mut buf).map_err(|x| AgentError::io(&self.dir, x))?;
            let snap = Snapshot::decode(buf.as_slice()).map_err(|x| self.err(format!("seq {}: {x}", e.seq)))?;
            out.push(snap);
        }
        Ok(out)
    }

    fn err(&self, message: String) -> AgentError {
        AgentError::Spool { path: self.dir.clone(), message }
    }

    fn rotate(&mut self, first_seq: u64) -> Result<()> {
        let path = self.dir.join(format!("{first_seq:020}.seg"));
        let file = OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .read(true)
            .open(&path)
            .map_err(|e| AgentError::io(&path, e))?;
        sync_dir(&self.dir)?;
        self.segments.insert(first_seq, Segment { path, bytes: 0 });
        self.active = Some((first_seq, file));
        Ok(())
    }

    fn remove_segment(&mut self, first: u64) -> Result<()> {
        if let Some(seg) = self.segments.remove(&first) {
            self.total_bytes -= seg.bytes;
            match std::fs::remove_file(&seg.path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(AgentError::io(&seg.path, e)),
            }
        }
        if self.active.as_ref().is_some_and(|(f, _)| *f == first) {
            self.active = None;
        }
        Ok(())
    }

    fn enforce_bound(&mut self) -> Result<()> {
        while self.total_bytes > self.max_bytes && self.segments.len() > 1 {
            let oldest = *self.segments.keys().next().expect("non-empty");
            let before = self.entries.len();
            self.entries.retain(|e| e.segment != oldest);
            let lost = (before - self.entries.len()) as u64;
            self.dropped += lost;
            self.need_full = true;
            tracing::warn!(
                dropped = lost,
                total_dropped = self.dropped,
                "spool full: dropped the oldest unacknowledged snapshots"
            );
            self.remove_segment(oldest)?;
            self.write_meta()?;
        }
        Ok(())
    }

    /// Rebuild the index from the segment files, cutting any torn tail.
    fn scan(&mut self) -> Result<()> {
        let mut segs: Vec<(u64, PathBuf)> = Vec::new();
        for ent in std::fs::read_dir(&self.dir).map_err(|e| AgentError::io(&self.dir, e))? {
            let ent = ent.map_err(|e| AgentError::io(&self.dir, e))?;
            let name = ent.file_name();
            let name = name.to_string_lossy();
            if let Some(n) = name.strip_suffix(".seg").and_then(|n| n.parse::<u64>().ok()) {
                segs.push((n, ent.path()));
            }
        }
        segs.sort();
        let mut last_seq = self.acked;
        for (first, path) in segs {
            let mut data = Vec::new();
            File::open(&path).and_then(|mut f| f.read_to_end(&mut data)).map_err(|e| AgentError::io(&path, e))?;
            let mut off = 0usize;
            let mut live = 0;
            while off + HEADER <= data.len() {
                let len = u32::from_le_bytes(data[off..off + 4].try_into().expect("4 bytes")) as usize;
                let crc = u32::from_le_bytes(data[off + 4..off + 8].try_into().expect("4 bytes"));
                let seq = u64::from_le_bytes(data[off + 8..off + 16].try_into().expect("8 bytes"));
                if len > MAX_RECORD || off + HEADER + len > data.len() {
                    break;
                }
                let mut h = crc32fast::Hasher::new();
                h.update(&seq.to_le_bytes());
                h.update(&data[off + HEADER..off + HEADER + len]);
                if h.finalize() != crc || seq <= last_seq && seq > self.acked {
                    break;
                }
                if seq > self.acked {
                    self.entries.push_back(Entry { seq, segment: first, offset: off as u64, len: len as u32 });
                    live += 1;
                }
                last_seq = last_seq.max(seq);
                off += HEADER + len;
            }
            if off < data.len() {
                tracing::warn!(segment = %path.display(), good_bytes = off, total = data.len(), "spool segment has a torn or corrupt tail; cut");
                let f = OpenOptions::new().write(true).open(&path).map_err(|e| AgentError::io(&path, e))?;
                f.set_len(off as u64).map_err(|e| AgentError::io(&path, e))?;
                f.sync_all().map_err(|e| AgentError::io(&path, e))?;
            }
            if live == 0 {
                std::fs::remove_file(&path).map_err(|e| AgentError::io(&path, e))?;
                continue;
            }
            self.total_bytes += off as u64;
            self.segments.insert(first, Segment { path, bytes: off as u64 });
        }
        self.next_seq = last_seq + 1;
        Ok(())
    }

    fn write_meta(&self) -> Result<()> {
        let text = format!("spool_id={}\nacked={}\ndropped={}\n", self.spool_id, self.acked, self.dropped);
        let tmp = self.dir.join("meta.tmp");
        let dst = self.dir.join("meta");
        let mut f = File::create(&tmp).map_err(|e| AgentError::io(&tmp, e))?;
        f.write_all(text.as_bytes()).map_err(|e| AgentError::io(&tmp, e))?;
        f.sync_all().map_err(|e| AgentError::io(&tmp, e))?;
        std::fs::rename(&tmp, &dst).map_err(|e| AgentError::io(&dst, e))?;
        Ok(())
    }
}

fn read_meta(dir: &Path) -> Result<Option<(String, u64, u64)>> {
    let path = dir.join("meta");
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(AgentError::io(&path, e)),
    };
    let mut id = None;
    let (mut acked, mut dropped) = (0, 0);
    for line in text.lines() {
        match line.split_once('=') {
            Some(("spool_id", v)) if !v.is_empty() && v.len() <= 64 => id = Some(v.to_string()),
            Some(("acked", v)) => acked = v.parse().unwrap_or(0),
            Some(("dropped", v)) => dropped = v.parse().unwrap_or(0),
            _ => {}
        }
    }
    match id {
        Some(id) => Ok(Some((id, acked, dropped))),
        None => {
            // Unreadable meta: start a new spool; the server then restarts our seqs.
            tracing::warn!(path = %path.display(), "spool meta unreadable; starting a new spool");
            Ok(None)
        }
    }
}

fn new_spool_id() -> String {
    hex::encode(rand::random::<[u8; 16]>())
}

fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(|e| AgentError::io(dir, e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn snap(tag: u32) -> Snapshot {
        Snapshot {
            files: vec![driftwatch_proto::v1::FileState {
                path: format!("/etc/f{tag}"),
                size: u64::from(tag),
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    fn segment_file(dir: &Path) -> PathBuf {
        std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| p.extension().is_some_and(|e| e == "seg"))
            .expect("a segment file")
    }

    fn tags(s: &Spool) -> Vec<u64> {
        s.read_after(0, usize::MAX).unwrap().iter().map(|x| x.files[0].size).collect()
    }

    #[test]
    fn append_ack_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let id;
        {
            let mut s = Spool::open(dir.path(), 1 << 20).unwrap();
            id = s.spool_id().to_string();
            for i in 1..=5 {
                assert_eq!(s.append(&mut snap(i)).unwrap(), u64::from(i));
            }
            s.ack(2).unwrap();
            assert_eq!(s.pending(), 3);
        }
        let mut s = Spool::open(dir.path(), 1 << 20).unwrap();
        assert_eq!(s.spool_id(), id);
        assert_eq!(s.acked(), 2);
        assert_eq!(tags(&s), vec![3, 4, 5]);
        assert_eq!(s.read_after(4, 10).unwrap().len(), 1);
        assert_eq!(s.append(&mut snap(6)).unwrap(), 6);
        s.ack(6).unwrap();
        assert_eq!(s.pending(), 0);
        assert_eq!(s.bytes(), 0);
        let segs = std::fs::read_dir(dir.path())
            .unwrap()
            .filter(|e| e.as_ref().unwrap().file_name().to_string_lossy().ends_with(".seg"));
        assert_eq!(segs.count(), 0, "fully acked segments are deleted");
    }

    #[test]
    fn torn_tail_is_cut_and_appends_continue() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut s = Spool::open(dir.path(), 1 << 20).unwrap();
            for i in 1..=3 {
                s.append(&mut snap(i)).unwrap();
            }
        }
        let seg = segment_file(dir.path());
        let len = std::fs::metadata(&seg).unwrap().len();
        // Simulate a crash mid-write: half of the last record.
        OpenOptions::new().write(true).open(&seg).unwrap().set_len(len - 5).unwrap();
        let mut s = Spool::open(dir.path(), 1 << 20).unwrap();
        assert_eq!(tags(&s), vec![1, 2]);
        assert_eq!(s.append(&mut snap(9)).unwrap(), 3);
        assert_eq!(tags(&s), vec![1, 2, 9]);
    }

    #[test]
    fn corrupt_byte_stops_at_last_good_record() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut s = Spool::open(dir.path(), 1 << 20).unwrap();
            for i in 1..=3 {
                s.append(&mut snap(i)).unwrap();
            }
        }
        let seg = segment_file(dir.path());
        let mut data = std::fs::read(&seg).unwrap();
        let n = data.len();
        data[n - 2] ^= 0xff;
        std::fs::write(&seg, data).unwrap();
        let s = Spool::open(dir.path(), 1 << 20).unwrap();
        assert_eq!(tags(&s), vec![1, 2]);
    }

    #[test]
    fn bound_drops_oldest_counts_and_requests_full() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Spool::open(dir.path(), 64 * 1024).unwrap();
        let mut big = snap(0);
        big.files[0].content_hash = "x".repeat(4000);
        for i in 0..100 {
            big.files[0].size = i;
            s.append(&mut big).unwrap();
        }
        assert!(s.bytes() <= 64 * 1024 + 8 * 1024, "{}", s.bytes());
        assert!(s.dropped() > 0);
        assert_eq!(s.dropped() + s.pending(), 100);
        assert!(s.take_need_full());
        assert!(!s.take_need_full());
        // The survivors are the newest, in order.
        let t = tags(&s);
        assert_eq!(*t.last().unwrap(), 99);
        assert!(t.windows(2).all(|w| w[1] == w[0] + 1));
        drop(s);
        let s = Spool::open(dir.path(), 64 * 1024).unwrap();
        assert!(s.dropped() > 0, "dropped count survives a restart");
    }

    #[test]
    fn server_ahead_or_behind() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Spool::open(dir.path(), 1 << 20).unwrap();
        s.append(&mut snap(1)).unwrap();
        // Server says it has 10 (our state dir was restored from an old backup).
        s.ack(10).unwrap();
        assert_eq!(s.append(&mut snap(2)).unwrap(), 11);
        // Server says less than before: it lost data; we must send a full snapshot.
        s.ack(3).unwrap();
        assert!(s.take_need_full());
    }

    #[derive(Debug, Clone)]
    enum Op {
        Append,
        Ack(u8),
        Reopen,
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        /// Whatever the interleaving of appends, acks and restarts, the pending
        /// entries are exactly the appended ones above the highest ack, in order.
        #[test]
        fn model_matches(ops in prop::collection::vec(prop_oneof![
            4 => Just(Op::Append), 2 => (0u8..6).prop_map(Op::Ack), 1 => Just(Op::Reopen)
        ], 1..60)) {
            let dir = tempfile::tempdir().unwrap();
            let mut s = Spool::open(dir.path(), 1 << 22).unwrap();
            let mut model: Vec<u64> = Vec::new();
            let mut acked = 0u64;
            let mut next = 1u64;
            for op in ops {
                match op {
                    Op::Append => {
                        let seq = s.append(&mut snap(next as u32)).unwrap();
                        prop_assert_eq!(seq, next);
                        model.push(next);
                        next += 1;
                    }
                    Op::Ack(back) => {
                        let target = (next - 1).saturating_sub(u64::from(back)).max(acked);
                        s.ack(target).unwrap();
                        acked = target;
                        model.retain(|x| *x > acked);
                    }
                    Op::Reopen => {
                        drop(s);
                        s = Spool::open(dir.path(), 1 << 22).unwrap();
                    }
                }
                prop_assert_eq!(tags(&s), model.clone());
                prop_assert_eq!(s.acked(), acked);
            }
        }
    }
}
