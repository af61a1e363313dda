//! The agent's spool scanner, through its public API only: the fuzzer's bytes become a
//! spool directory (`meta` and segment files, records well formed or not), which is
//! opened, read back and appended to.

use std::path::Path;

use driftwatch_agent::spool::Spool;
use driftwatch_proto::v1::{FileState, Snapshot};
use prost::Message;

use crate::Input;

/// A record as written: `[len u32][crc32 u32][seq u64][payload]`, the CRC over seq and payload.
fn record(seq: u64, payload: &[u8]) -> Vec<u8> {
    let mut h = crc32fast::Hasher::new();
    h.update(&seq.to_le_bytes());
    h.update(payload);
    let mut rec = Vec::with_capacity(16 + payload.len());
    rec.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    rec.extend_from_slice(&h.finalize().to_le_bytes());
    rec.extend_from_slice(&seq.to_le_bytes());
    rec.extend_from_slice(payload);
    rec
}

fn snapshot(seq: u64, input: &mut Input<'_>) -> Snapshot {
    let files = (0..input.byte() % 3)
        .map(|_| FileState { path: format!("/etc/{}", input.string()), size: input.u64(), ..Default::default() })
        .collect();
    Snapshot { seq, full: input.bool(), files, ..Default::default() }
}

/// The bounds the spool is opened with.
const MAX_BYTES: [u64; 4] = [1 << 20, 64 * 1024, 4096, 200];

/// Input: a flags byte, then the meta, the spool bound and the segments.
///
/// - flags & 1: a healthy spool (every record intact and in order), else anything;
/// - flags & 6: no meta, a well-formed meta, or raw meta bytes.
pub fn scan(data: &[u8]) {
    let mut input = Input::new(data);
    let flags = input.byte();
    let healthy = flags & 1 == 1;
    // On tmpfs when there is one: the spool fsyncs, and the fuzzer wants executions.
    let dir = tempfile::tempdir_in("/dev/shm").or_else(|_| tempfile::tempdir()).expect("a temp dir");
    let spool_dir = dir.path().join("spool");
    std::fs::create_dir(&spool_dir).expect("the spool dir");

    let mut meta_acked = 0;
    match (flags >> 1) & 3 {
        0 => {}
        // A healthy spool's meta is one the agent wrote.
        1..=3 if healthy => {
            meta_acked = u64::from(input.byte());
            write(&spool_dir.join("meta"), format!("spool_id=fuzz\nacked={meta_acked}\ndropped=0\n").as_bytes());
        }
        1 | 2 => {
            let id = input.string();
            meta_acked = if flags & 8 == 0 { u64::from(input.byte()) } else { input.u64() };
            let dropped = input.u64();
            write(
                &spool_dir.join("meta"),
                format!("spool_id={id}\nacked={meta_acked}\ndropped={dropped}\n").as_bytes(),
            );
        }
        _ => write(&spool_dir.join("meta"), input.chunk()),
    }
    let max_bytes = MAX_BYTES[usize::from(input.byte() % 4)];

    // Intact records by seq, as the spool must give them back.
    let mut intact: Vec<(u64, Vec<u8>)> = Vec::new();
    let mut seq = u64::from(input.byte());
    // Whether every segment is named by the seq of its first record, as the agent names them.
    let mut named_by_first = true;
    for _ in 0..1 + input.byte() % 3 {
        let mut bytes = Vec::new();
        let mut first = seq.wrapping_add(1);
        if !healthy && input.bool() {
            first = input.u64();
            named_by_first = false;
        }
        for _ in 0..input.byte() % 6 {
            let kind = if healthy { 0 } else { input.byte() };
            seq = if kind & 1 == 0 { seq.wrapping_add(1) } else { input.u64() };
            if kind & 2 == 0 {
                let payload = snapshot(seq, &mut input).encode_to_vec();
                bytes.extend(record(seq, &payload));
                intact.push((seq, payload));
            } else {
                // A torn or corrupt record: a bad CRC, a wrong length, or cut short.
                let payload = input.chunk().to_vec();
                let mut rec = record(seq, &payload);
                let at = usize::from(input.byte()) % rec.len();
                rec[at] ^= input.byte() | 1;
                let cut = usize::from(kind & 4) * at / 4;
                rec.truncate(rec.len() - cut);
                // Only its length field damaged: the spool may find the record again
                // (it tries the length with a bit flipped back, or up to the next record).
                if at < 4 && cut == 0 {
                    intact.push((seq, payload));
                }
                bytes.extend(rec);
            }
        }
        if !healthy && flags & 16 != 0 {
            bytes.extend_from_slice(input.chunk());
        }
        write(&spool_dir.join(format!("{first:020}.seg")), &bytes);
    }

    let spool = match Spool::open(&spool_dir, max_bytes) {
        Ok(s) => s,
        // Only a healthy spool must open; see the crate docs of the spool for the rest.
        Err(_) if !healthy => return,
        Err(e) => panic!("a healthy spool does not open: {e}"),
    };
    check_opened(spool, healthy, named_by_first, meta_acked, &intact);
}

fn check_opened(mut spool: Spool, healthy: bool, named_by_first: bool, meta_acked: u64, intact: &[(u64, Vec<u8>)]) {
    let acked = spool.acked();
    let all = spool.read_after(0, usize::MAX).expect("what the spool indexed reads back");
    assert_eq!(all.len() as u64, spool.pending());
    let mut last = acked;
    for s in &all {
        assert!(s.seq > last, "seqs out of order or at or below the acked seq {acked}: {} after {last}", s.seq);
        last = s.seq;
        let bytes = s.encode_to_vec();
        assert!(
            intact.iter().any(|(seq, payload)| *seq == s.seq && *payload == bytes),
            "seq {} was not written intact",
            s.seq
        );
    }
    assert!(spool.last_seq() >= last);
    if healthy {
        // Nothing damaged: every record above the acked seq is there, in order.
        let want: Vec<u64> = intact.iter().map(|(s, _)| *s).filter(|s| *s > meta_acked).collect();
        let got: Vec<u64> = all.iter().map(|s| s.seq).collect();
        assert_eq!(got, want, "a healthy spool lost or reordered records");
    }
    // Reading from any point gives the same records.
    if let Some(mid) = all.get(all.len() / 2) {
        let tail = spool.read_after(mid.seq, 2).expect("reads back");
        let want: Vec<u64> = all.iter().map(|s| s.seq).filter(|s| *s > mid.seq).take(2).collect();
        assert_eq!(tail.iter().map(|s| s.seq).collect::<Vec<_>>(), want);
    }
    // A new snapshot never reuses a seq. (Only where segments are named as the agent
    // names them: a new segment is created by name, and a stray file of that name would
    // be replaced.)
    if !named_by_first {
        return;
    }
    let mut next = Snapshot::default();
    if let Ok(seq) = spool.append(&mut next) {
        assert!(seq > last && seq > acked, "append reused seq {seq} (last {last}, acked {acked})");
        let back = spool.read_after(last, usize::MAX).expect("reads back");
        assert_eq!(back.last().map(|s| s.seq), Some(seq));
    }
}

fn write(path: &Path, bytes: &[u8]) {
    std::fs::write(path, bytes).expect("write into the temp dir");
}
