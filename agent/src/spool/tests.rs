use std::io::Write as _;

use proptest::prelude::*;

use super::fault::{Point, arm, disarm};
use super::*;

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

fn segment_files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .collect();
    v.sort();
    v
}

fn segment_file(dir: &Path) -> PathBuf {
    segment_files(dir).into_iter().next().expect("a segment file")
}

/// A spool in `dir` holding records 1..=n (tags equal to seqs), closed again.
fn written(dir: &Path, n: u32) {
    let mut s = Spool::open(dir, 1 << 20).unwrap();
    for i in 1..=n {
        s.append(&mut snap(i)).unwrap();
    }
}

fn tags(s: &mut Spool) -> Vec<u64> {
    s.read_after(0, usize::MAX).unwrap().iter().map(|x| x.files[0].size).collect()
}

/// Flip one bit of the record with `seq` on disk, `bit` counted from its first byte.
fn flip(s: &Spool, seq: u64, bit: usize) {
    let e = *s.entries.iter().find(|e| e.seq == seq).expect("a pending record");
    let path = &s.segments[&e.segment].path;
    let mut data = std::fs::read(path).unwrap();
    data[e.offset as usize + bit / 8] ^= 1 << (bit % 8);
    std::fs::write(path, data).unwrap();
}

/// A bit in the middle of a record's payload.
fn payload_bit(s: &Spool, seq: u64) -> usize {
    let e = s.entries.iter().find(|e| e.seq == seq).unwrap();
    (HEADER + e.len as usize / 2) * 8 + 3
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
    assert_eq!(tags(&mut s), vec![3, 4, 5]);
    assert_eq!(s.read_after(4, 10).unwrap().len(), 1);
    assert_eq!(s.append(&mut snap(6)).unwrap(), 6);
    s.ack(6).unwrap();
    assert_eq!(s.pending(), 0);
    assert_eq!(s.bytes(), 0);
    assert!(segment_files(dir.path()).is_empty(), "fully acked segments are deleted");
    assert!(!s.take_need_full());
    drop(s);
    let mut s = Spool::open(dir.path(), 1 << 20).unwrap();
    assert_eq!(s.append(&mut snap(7)).unwrap(), 7, "the acked seq bounds the next one");
    assert_eq!(s.dropped(), 0);
}

#[test]
fn torn_tail_is_cut_and_appends_continue() {
    let dir = tempfile::tempdir().unwrap();
    written(dir.path(), 3);
    let seg = segment_file(dir.path());
    let len = std::fs::metadata(&seg).unwrap().len();
    // A crash mid-write: half of the last record, which was never reported as stored.
    OpenOptions::new().write(true).open(&seg).unwrap().set_len(len - 5).unwrap();
    let mut s = Spool::open(dir.path(), 1 << 20).unwrap();
    assert_eq!(tags(&mut s), vec![1, 2]);
    assert_eq!(s.dropped(), 0, "a torn append is no loss");
    assert!(std::fs::metadata(&seg).unwrap().len() < len - 5, "the torn tail is cut");
    assert_eq!(s.append(&mut snap(9)).unwrap(), 3);
    assert_eq!(tags(&mut s), vec![1, 2, 9]);
}

#[test]
fn a_damaged_last_record_is_counted() {
    let dir = tempfile::tempdir().unwrap();
    written(dir.path(), 3);
    let seg = segment_file(dir.path());
    let mut data = std::fs::read(&seg).unwrap();
    let n = data.len();
    data[n - 2] ^= 0xff;
    std::fs::write(&seg, data).unwrap();
    let mut s = Spool::open(dir.path(), 1 << 20).unwrap();
    assert_eq!(tags(&mut s), vec![1, 2]);
    assert_eq!(s.dropped(), 1);
    assert!(s.take_need_full());
    assert_eq!(s.append(&mut snap(4)).unwrap(), 4, "the lost seq is never handed out again");
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
    let t = tags(&mut s);
    assert_eq!(*t.last().unwrap(), 99);
    assert!(t.windows(2).all(|w| w[1] == w[0] + 1));
    let dropped = s.dropped();
    drop(s);
    let s = Spool::open(dir.path(), 64 * 1024).unwrap();
    assert_eq!(s.dropped(), dropped, "dropped count survives a restart");
}

#[test]
fn server_ahead_or_behind() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = Spool::open(dir.path(), 1 << 20).unwrap();
    s.append(&mut snap(1)).unwrap();
    // Server says it has 10 (our state dir was restored from an old backup): our 1 was
    // taken for a duplicate, so it is counted as lost.
    s.ack(10).unwrap();
    assert_eq!(s.dropped(), 1);
    assert!(s.take_need_full());
    assert_eq!(s.append(&mut snap(2)).unwrap(), 11);
    // Server says less than before: it lost data; we must send a full snapshot.
    s.ack(3).unwrap();
    assert!(s.take_need_full());
}

#[test]
fn a_write_that_fails_part_way_is_rolled_back() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = Spool::open(dir.path(), 1 << 20).unwrap();
    s.append(&mut snap(1)).unwrap();
    let good = std::fs::metadata(segment_file(dir.path())).unwrap().len();
    arm(Point::Write, libc::EIO, 7, 1);
    let e = s.append(&mut snap(2)).unwrap_err();
    assert!(e.is_storage_full(), "{e}");
    assert_eq!(e.storage_errno(), Some(libc::EIO));
    assert_eq!(std::fs::metadata(segment_file(dir.path())).unwrap().len(), good, "no garbage left");
    assert_eq!(s.append(&mut snap(3)).unwrap(), 2, "never sent, so the seq is reused");
    assert_eq!(s.append(&mut snap(4)).unwrap(), 3);
    drop(s);
    let mut s = Spool::open(dir.path(), 1 << 20).unwrap();
    assert_eq!((tags(&mut s), s.dropped()), (vec![1, 3, 4], 0));
}

#[test]
fn a_torn_write_that_cannot_be_rolled_back_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = Spool::open(dir.path(), 1 << 20).unwrap();
    s.append(&mut snap(1)).unwrap();
    arm(Point::Write, libc::EIO, 20, 1);
    arm(Point::SetLen, libc::EIO, 0, 1);
    assert!(s.append(&mut snap(2)).unwrap_err().is_storage_full());
    // The segment with the torn bytes takes no more appends; the seq is reused.
    assert_eq!(s.append(&mut snap(3)).unwrap(), 2);
    assert_eq!(segment_files(dir.path()).len(), 2);
    drop(s);
    let mut s = Spool::open(dir.path(), 1 << 20).unwrap();
    assert_eq!((tags(&mut s), s.dropped()), (vec![1, 3], 0));
}

#[test]
fn a_failed_sync_is_rolled_back_and_the_retry_keeps_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = Spool::open(dir.path(), 1 << 20).unwrap();
    s.append(&mut snap(1)).unwrap();
    arm(Point::SyncData, libc::EIO, 0, 1);
    let e = s.append(&mut snap(99)).unwrap_err();
    assert!(e.is_storage_full());
    assert_eq!(s.append(&mut snap(2)).unwrap(), 2);
    assert_eq!(s.append(&mut snap(3)).unwrap(), 3);
    drop(s);
    let mut s = Spool::open(dir.path(), 1 << 20).unwrap();
    assert_eq!((tags(&mut s), s.dropped()), (vec![1, 2, 3], 0));
}

#[test]
fn a_failed_sync_that_cannot_be_rolled_back_burns_its_seq() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = Spool::open(dir.path(), 1 << 20).unwrap();
    s.append(&mut snap(1)).unwrap();
    arm(Point::SyncData, libc::EIO, 0, 1);
    arm(Point::SetLen, libc::EIO, 0, 1);
    assert!(s.append(&mut snap(99)).unwrap_err().is_storage_full());
    assert_eq!(s.append(&mut snap(3)).unwrap(), 3, "seq 2 may be whole on disk: never handed out again");
    assert_eq!(tags(&mut s), vec![1, 3]);
    drop(s);
    // It was whole: it surfaces as the only record with seq 2, nothing is lost.
    let mut s = Spool::open(dir.path(), 1 << 20).unwrap();
    let seqs: Vec<u64> = s.read_after(0, 10).unwrap().iter().map(|x| x.seq).collect();
    assert_eq!(seqs, vec![1, 2, 3]);
    assert_eq!((tags(&mut s), s.dropped()), (vec![1, 99, 3], 0));
}

#[test]
fn a_bit_flip_in_the_middle_costs_one_record_counted_once() {
    let dir = tempfile::tempdir().unwrap();
    {
        let mut s = Spool::open(dir.path(), 1 << 20).unwrap();
        for i in 1..=5 {
            s.append(&mut snap(i)).unwrap();
        }
        flip(&s, 2, payload_bit(&s, 2));
    }
    let mut s = Spool::open(dir.path(), 1 << 20).unwrap();
    assert_eq!((tags(&mut s), s.dropped()), (vec![1, 3, 4, 5], 1));
    assert!(s.take_need_full());
    assert_eq!(s.append(&mut snap(6)).unwrap(), 6);
    drop(s);
    let mut s = Spool::open(dir.path(), 1 << 20).unwrap();
    assert_eq!((tags(&mut s), s.dropped()), (vec![1, 3, 4, 5, 6], 1), "counted once");
    s.ack(6).unwrap();
    drop(s);
    let s = Spool::open(dir.path(), 1 << 20).unwrap();
    assert_eq!((s.pending(), s.dropped()), (0, 1));
}

#[test]
fn a_flipped_length_field_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    {
        let mut s = Spool::open(dir.path(), 1 << 20).unwrap();
        for i in 1..=4 {
            s.append(&mut snap(i)).unwrap();
        }
        flip(&s, 2, 9);
        flip(&s, 4, 30);
        assert_eq!(tags(&mut s), vec![1, 2, 3, 4], "read back by the index's length");
    }
    let mut s = Spool::open(dir.path(), 1 << 20).unwrap();
    assert_eq!((tags(&mut s), s.dropped()), (vec![1, 2, 3, 4], 0));
}

/// Two bits of the last record's length field: the scan at the next open could not
/// find the record again, so it is damaged (and counted) when read back, not lost
/// uncounted at the next start.
#[test]
fn a_length_field_damaged_beyond_one_bit_is_counted_when_read_back() {
    let dir = tempfile::tempdir().unwrap();
    written(dir.path(), 2);
    let mut s = Spool::open(dir.path(), 1 << 20).unwrap();
    flip(&s, 2, 0);
    flip(&s, 2, 5);
    assert_eq!((tags(&mut s), s.dropped()), (vec![1], 1));
    drop(s);
    let mut s = Spool::open(dir.path(), 1 << 20).unwrap();
    assert_eq!((tags(&mut s), s.dropped()), (vec![1], 1), "counted once");
}

#[test]
fn read_after_checks_the_crc() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = Spool::open(dir.path(), 1 << 20).unwrap();
    for i in 1..=3 {
        s.append(&mut snap(i)).unwrap();
    }
    flip(&s, 2, payload_bit(&s, 2));
    let got: Vec<u64> = s.read_after(0, 2).unwrap().iter().map(|x| x.seq).collect();
    assert_eq!(got, vec![1, 3], "skipped, and the burst still fills up");
    assert_eq!((s.dropped(), s.pending()), (1, 2));
    assert!(s.take_need_full());
    drop(s);
    let mut s = Spool::open(dir.path(), 1 << 20).unwrap();
    assert_eq!((tags(&mut s), s.dropped()), (vec![1, 3], 1), "not counted again at open");
}

/// Seqs near `u64::MAX`, from a damaged record or a stray file's name: never believed,
/// so nothing overflows and the records below them stay.
#[test]
fn seqs_past_the_ceiling_are_damage_not_an_overflow() {
    let dir = tempfile::tempdir().unwrap();
    written(dir.path(), 3);
    let seg = segment_file(dir.path());
    let mut data = std::fs::read(&seg).unwrap();
    data.extend(segment::encode(u64::MAX, &snap(9).encode_to_vec()));
    std::fs::write(&seg, data).unwrap();
    std::fs::write(dir.path().join(format!("{:020}.seg", u64::MAX)), segment::encode(u64::MAX, b"x")).unwrap();
    let mut s = Spool::open(dir.path(), 1 << 20).unwrap();
    assert_eq!(tags(&mut s), vec![1, 2, 3]);
    assert!(s.last_seq() < segment::MAX_SEQ);
    let next = s.append(&mut snap(4)).unwrap();
    assert!(next > 3 && next < segment::MAX_SEQ, "seq {next}");
}

#[test]
fn a_vanished_segment_is_counted() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = Spool::open(dir.path(), 1 << 20).unwrap();
    for i in 1..=3 {
        s.append(&mut snap(i)).unwrap();
    }
    std::fs::remove_file(segment_file(dir.path())).unwrap();
    assert!(s.read_after(0, 10).unwrap().is_empty());
    assert_eq!(s.dropped(), 3);
    assert_eq!(s.append(&mut snap(4)).unwrap(), 4);
}

#[test]
fn an_unreadable_segment_renews_the_spool_id() {
    let dir = tempfile::tempdir().unwrap();
    let id;
    {
        let mut s = Spool::open(dir.path(), 1 << 20).unwrap();
        id = s.spool_id().to_string();
        for i in 1..=3 {
            s.append(&mut snap(i)).unwrap();
        }
        s.ack(1).unwrap();
    }
    std::fs::create_dir(dir.path().join(format!("{:020}.seg", 10))).unwrap();
    let mut s = Spool::open(dir.path(), 1 << 20).unwrap();
    assert_ne!(s.spool_id(), id);
    assert_eq!((tags(&mut s), s.acked()), (vec![2, 3], 0));
    assert!(s.take_need_full());
    assert_eq!(s.append(&mut snap(4)).unwrap(), 11);
}

#[test]
fn a_corrupt_meta_starts_a_new_spool_id_and_resends_everything() {
    for damage in ["garbage", "truncated", "flipped", "empty"] {
        let dir = tempfile::tempdir().unwrap();
        let id;
        {
            let mut s = Spool::open(dir.path(), 1 << 20).unwrap();
            id = s.spool_id().to_string();
            for i in 1..=5 {
                s.append(&mut snap(i)).unwrap();
            }
            s.ack(2).unwrap();
        }
        let path = dir.path().join(meta::NAME);
        let mut text = std::fs::read(&path).unwrap();
        match damage {
            "garbage" => text = b"\x00\xffnot meta at all".to_vec(),
            "truncated" => text.truncate(text.len() - 3),
            "flipped" => {
                let at = text.len() - 4;
                text[at] ^= 0x02;
            }
            _ => text.clear(),
        }
        std::fs::write(&path, text).unwrap();
        let mut s = Spool::open(dir.path(), 1 << 20).unwrap();
        assert_ne!(s.spool_id(), id, "{damage}");
        assert_eq!(s.acked(), 0);
        // Under the new id the server takes everything; 1 and 2 are resent, harmlessly.
        assert_eq!(tags(&mut s), vec![1, 2, 3, 4, 5], "{damage}");
        assert_eq!(s.dropped(), 0);
        assert!(s.take_need_full());
        assert_eq!(s.append(&mut snap(6)).unwrap(), 6);
        assert!(matches!(meta::read(dir.path()), meta::Read::Found(m) if m.spool_id == s.spool_id()));
    }
}

#[test]
fn a_truncated_meta_never_reuses_a_seq_under_the_same_spool_id() {
    let dir = tempfile::tempdir().unwrap();
    let id;
    {
        let mut s = Spool::open(dir.path(), 1 << 20).unwrap();
        id = s.spool_id().to_string();
        for i in 1..=5 {
            s.append(&mut snap(i)).unwrap();
        }
        s.ack(5).unwrap();
    }
    assert!(segment_files(dir.path()).is_empty());
    let path = dir.path().join(meta::NAME);
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, &text[..text.find("acked=").unwrap() + 3]).unwrap();
    let mut s = Spool::open(dir.path(), 1 << 20).unwrap();
    let seq = s.append(&mut snap(6)).unwrap();
    assert!(s.spool_id() != id || seq > 5, "seq {seq} reused under spool {id}");
}

#[test]
fn the_first_meta_format_is_read() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join(meta::NAME), "spool_id=abc\nacked=7\ndropped=2\n").unwrap();
    let mut s = Spool::open(dir.path(), 1 << 20).unwrap();
    assert_eq!((s.spool_id(), s.acked(), s.dropped()), ("abc", 7, 2));
    assert_eq!(s.append(&mut snap(1)).unwrap(), 8);
}

#[test]
fn opens_and_appends_while_meta_cannot_be_written() {
    let dir = tempfile::tempdir().unwrap();
    // A full disk: the new spool's meta cannot be written at open.
    arm(Point::MetaWrite, libc::ENOSPC, 0, 1);
    let mut s = Spool::open(dir.path(), 1 << 20).unwrap();
    assert!(matches!(meta::read(dir.path()), meta::Read::Missing));
    assert!(!dir.path().join(meta::TMP).exists());
    // Room again: the next append writes it.
    assert_eq!(s.append(&mut snap(1)).unwrap(), 1);
    assert!(matches!(meta::read(dir.path()), meta::Read::Found(m) if m.spool_id == s.spool_id()));
}

#[test]
fn an_ack_whose_meta_fails_keeps_the_seq_bound() {
    let dir = tempfile::tempdir().unwrap();
    let id;
    {
        let mut s = Spool::open(dir.path(), 1 << 20).unwrap();
        id = s.spool_id().to_string();
        for i in 1..=3 {
            s.append(&mut snap(i)).unwrap();
        }
        arm(Point::Rename, libc::EIO, 0, 1);
        s.ack(3).unwrap();
        assert_eq!(s.pending(), 0);
        assert_eq!(segment_files(dir.path()).len(), 1, "the newest segment bounds the seqs");
    }
    let mut s = Spool::open(dir.path(), 1 << 20).unwrap();
    assert_eq!(s.spool_id(), id);
    // The stale meta makes the spool resend 1..3 (the server drops them as duplicates),
    // and the next seq is above them.
    assert_eq!(tags(&mut s), vec![1, 2, 3]);
    assert_eq!(s.append(&mut snap(4)).unwrap(), 4);
}

/// A spool whose segments hold a few records each.
fn small(dir: &Path) -> Spool {
    let mut s = Spool::open(dir, 1 << 22).unwrap();
    s.segment_bytes = 200;
    s
}

#[test]
fn a_full_disk_drops_the_oldest_segments_and_retries_once() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = small(dir.path());
    for i in 1..=30 {
        s.append(&mut snap(i)).unwrap();
    }
    let sizes: Vec<u64> = segment_files(dir.path()).iter().map(|p| std::fs::metadata(p).unwrap().len()).collect();
    assert!(sizes.len() > 3, "{sizes:?}");
    arm(Point::Write, libc::ENOSPC, 10, 1);
    assert_eq!(s.append(&mut snap(31)).unwrap(), 31);
    let t = tags(&mut s);
    assert!(s.dropped() > 0 && s.take_need_full());
    assert_eq!(s.dropped() + t.len() as u64, 31, "{t:?}");
    assert!(t.windows(2).all(|w| w[1] == w[0] + 1) && *t.last().unwrap() == 31, "the newest survive: {t:?}");
    let dropped = s.dropped();
    drop(s);
    let mut s = small(dir.path());
    assert_eq!(s.dropped(), dropped, "counted durably");
    assert_eq!(*tags(&mut s).last().unwrap(), 31);
    // Still full after making room: the error says so, what was dropped for it is
    // counted, and nothing of the record is left behind.
    arm(Point::Write, libc::ENOSPC, 10, 2);
    let e = s.append(&mut snap(32)).unwrap_err();
    assert_eq!((e.is_storage_full(), e.storage_errno()), (true, Some(libc::ENOSPC)));
    assert_eq!((s.dropped(), s.pending()), (31, 0));
    drop(s);
    let mut s = small(dir.path());
    assert_eq!((s.dropped(), s.pending()), (31, 0));
    assert_eq!(s.append(&mut snap(33)).unwrap(), 32);
    assert_eq!(tags(&mut s), vec![33]);
}

#[test]
fn a_file_size_limit_starts_a_new_segment() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = Spool::open(dir.path(), 1 << 20).unwrap();
    s.append(&mut snap(1)).unwrap();
    arm(Point::Write, libc::EFBIG, 5, 1);
    assert_eq!(s.append(&mut snap(2)).unwrap(), 2);
    assert_eq!((s.dropped(), segment_files(dir.path()).len()), (0, 2));
    drop(s);
    let mut s = Spool::open(dir.path(), 1 << 20).unwrap();
    assert_eq!((tags(&mut s), s.dropped()), (vec![1, 2], 0));
}

/// Where the file size limit child keeps its spool.
const RLIMIT_DIR_ENV: &str = "DRIFTWATCH_SPOOL_RLIMIT_DIR";
const RLIMIT: u64 = 8 * 1024;

fn sized(tag: u32, bytes: usize) -> Snapshot {
    let mut s = snap(tag);
    s.files[0].content_hash = "h".repeat(bytes);
    s
}

/// The child of `rlimit_fsize_partial_writes_are_rolled_back`, in a process whose file
/// size limit is `RLIMIT` (setrlimit applies to the whole process).
#[test]
#[ignore = "run by rlimit_fsize_partial_writes_are_rolled_back in a child process"]
fn rlimit_fsize_child() {
    let Some(dir) = std::env::var_os(RLIMIT_DIR_ENV) else { return };
    let mut s = Spool::open(Path::new(&dir), 1 << 20).unwrap();
    // Segments larger than the limit: the limit, not rotation, ends each one.
    s.segment_bytes = 1 << 20;
    let mut stored = Vec::new();
    for i in 1..=40 {
        stored.push(s.append(&mut sized(i, 1000)).unwrap());
    }
    // A record larger than the limit fits nowhere.
    let e = s.append(&mut sized(99, 2 * RLIMIT as usize)).unwrap_err();
    assert!(e.is_storage_full(), "{e}");
    assert_eq!(e.storage_errno(), Some(libc::EFBIG));
    assert_eq!(s.append(&mut sized(41, 1000)).unwrap(), 41);
    stored.push(41);
    println!("STORED {}", stored.iter().map(u64::to_string).collect::<Vec<_>>().join(","));
}

/// Real partial writes: the kernel cuts each write at `RLIMIT_FSIZE` (SIGXFSZ ignored,
/// so the write returns EFBIG instead of killing the process).
#[test]
fn rlimit_fsize_partial_writes_are_rolled_back() {
    use std::os::unix::process::CommandExt;
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = std::process::Command::new(std::env::current_exe().unwrap());
    cmd.args(["--exact", "spool::tests::rlimit_fsize_child", "--ignored", "--nocapture", "--test-threads=1"])
        .env(RLIMIT_DIR_ENV, dir.path());
    // SAFETY: between fork and exec only async-signal-safe calls, no allocation.
    unsafe {
        cmd.pre_exec(|| {
            libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
            let lim = libc::rlimit { rlim_cur: RLIMIT, rlim_max: RLIMIT };
            if libc::setrlimit(libc::RLIMIT_FSIZE, &lim) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let out = cmd.output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "child failed: {}\n{stdout}\n{}", out.status, String::from_utf8_lossy(&out.stderr));
    let stored: Vec<u64> = stdout
        .lines()
        .find_map(|l| l.split_once("STORED ").map(|(_, list)| list))
        .unwrap_or_else(|| panic!("no report from the child:\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr)))
        .split(',')
        .map(|n| n.parse().unwrap())
        .collect();
    assert_eq!(stored, (1..=41).collect::<Vec<u64>>());
    let segs = segment_files(dir.path());
    println!("{} segments under a {RLIMIT} byte file size limit", segs.len());
    assert!(segs.len() >= 5);
    for p in &segs {
        let data = std::fs::read(p).unwrap();
        assert!(data.len() as u64 <= RLIMIT);
        let first = p.file_stem().unwrap().to_str().unwrap().parse().unwrap();
        let found = segment::scan(first, 0, &data, None);
        assert!(found.damage.is_empty(), "{}: no bytes of a failed write left: {:?}", p.display(), found.damage);
    }
    let mut s = Spool::open(dir.path(), 1 << 20).unwrap();
    let seqs: Vec<u64> = s.read_after(0, usize::MAX).unwrap().iter().map(|x| x.seq).collect();
    assert_eq!((seqs, s.dropped()), (stored, 0));
}

#[test]
fn failpoints_stay_on_their_thread() {
    arm(Point::SyncData, libc::EIO, 0, 1);
    let other = std::thread::spawn(|| {
        let dir = tempfile::tempdir().unwrap();
        Spool::open(dir.path(), 1 << 20).unwrap().append(&mut snap(1)).is_ok()
    });
    assert!(other.join().unwrap());
    disarm();
    let dir = tempfile::tempdir().unwrap();
    let mut f = File::create(dir.path().join("x")).unwrap();
    f.write_all(b"x").unwrap();
    assert!(fault::sync_data(&f).is_ok());
}

#[derive(Debug, Clone)]
enum Op {
    Append,
    Ack(u8),
    Reopen,
    /// The write stops after some bytes; maybe its rollback fails too.
    TornAppend {
        after: u8,
        rollback_fails: bool,
    },
    FailedSync {
        rollback_fails: bool,
    },
    /// A bit of a pending record flips on disk.
    BitFlip {
        which: u16,
        bit: u16,
    },
    /// `meta` is damaged (garbage, cut, removed), then the spool reopens.
    CorruptMeta(u8),
    /// An ack whose `meta` cannot be written.
    AckMetaFails(u8),
    FullDisk {
        retry_fails: bool,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        8 => Just(Op::Append),
        3 => (0u8..6).prop_map(Op::Ack),
        2 => Just(Op::Reopen),
        1 => (any::<u8>(), any::<bool>()).prop_map(|(after, rollback_fails)| Op::TornAppend { after, rollback_fails }),
        1 => any::<bool>().prop_map(|rollback_fails| Op::FailedSync { rollback_fails }),
        1 => (any::<u16>(), any::<u16>()).prop_map(|(which, bit)| Op::BitFlip { which, bit }),
        1 => any::<u8>().prop_map(Op::CorruptMeta),
        1 => (0u8..3).prop_map(Op::AckMetaFails),
        1 => any::<bool>().prop_map(|retry_fails| Op::FullDisk { retry_fails }),
    ]
}

/// What the spool must hold: every record appended and not acknowledged, except those
/// the test damaged or a full disk dropped (each counted).
#[derive(Default)]
struct Model {
    /// (seq, tag) of every record the spool must still hold, in order.
    live: Vec<(u64, u64)>,
    acked: u64,
    /// The highest seq handed out.
    last: u64,
    next_tag: u32,
    /// Records whose sync failed and could not be rolled back: they may surface at
    /// the next open (never before: they are not in the index).
    may_surface: Vec<(u64, u64)>,
    /// Seqs damaged on disk: they may be lost (counted).
    may_lose: Vec<u64>,
    /// Losses so far, and what `dropped` was when counting started.
    lost: u64,
    base: u64,
}

impl Model {
    fn tag(&mut self) -> u32 {
        self.next_tag += 1;
        self.next_tag
    }

    /// Compare with what the spool holds now. `reopened`: records may surface (failed
    /// syncs; acked ones under a stale `meta`); `meta_reset`: the spool starts over with
    /// a new id (everything on disk is resent); `drop_prefix`: a full disk may have
    /// dropped the oldest records.
    fn check(
        &mut self,
        s: &mut Spool,
        reopened: bool,
        meta_reset: bool,
        drop_prefix: bool,
    ) -> Result<(), TestCaseError> {
        let present: Vec<(u64, u64)> =
            s.read_after(0, usize::MAX).unwrap().iter().map(|x| (x.seq, x.files[0].size)).collect();
        prop_assert!(present.windows(2).all(|w| w[0].0 < w[1].0), "seqs in order: {:?}", present);
        for p in &present {
            let known = self.live.contains(p) || (reopened && self.may_surface.contains(p));
            let resent_acked = reopened && p.0 <= self.acked;
            prop_assert!(known || resent_acked || meta_reset, "{:?} came from nowhere; model {:?}", p, self.live);
        }
        let first_present = present.first().map_or(u64::MAX, |p| p.0);
        let mut lost_now = 0;
        for m in self.live.iter().filter(|m| !present.contains(m)) {
            let may = self.may_lose.contains(&m.0) || (drop_prefix && m.0 < first_present);
            prop_assert!(may, "valid record {:?} lost; spool holds {:?}", m, present);
            lost_now += 1;
        }
        self.lost += lost_now;
        if meta_reset {
            self.base = s.dropped();
            self.lost = 0;
        }
        prop_assert_eq!(s.dropped(), self.base + self.lost, "every loss counted");
        self.live = present;
        self.may_lose.clear();
        if reopened {
            self.may_surface.clear();
            prop_assert!(s.acked() <= self.acked || meta_reset);
            self.acked = s.acked();
        }
        prop_assert_eq!(s.acked(), self.acked);
        prop_assert_eq!(s.pending(), self.live.len() as u64);
        // A new spool id numbers afresh (the server resets its dedup for it).
        self.last = if meta_reset { s.last_seq() } else { self.last.max(s.last_seq()) };
        Ok(())
    }
}

/// Cases per run of the model test: 64, or `SPOOL_MODEL_CASES` for a longer search.
fn model_cases() -> u32 {
    std::env::var("SPOOL_MODEL_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(64)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(model_cases()))]
    /// Whatever the interleaving of appends, acks, restarts and faults (torn appends,
    /// failed syncs and rollbacks, bit flips, a corrupt `meta`, a full disk), the spool
    /// holds every valid unacknowledged record, in order, and `dropped` counts every
    /// record it lost.
    #[test]
    fn model_matches(ops in prop::collection::vec(op(), 1..60)) {
        run_model(ops)?;
    }
}

fn run_model(ops: Vec<Op>) -> Result<(), TestCaseError> {
    disarm();
    let dir = tempfile::tempdir().unwrap();
    let mut s = small(dir.path());
    let mut m = Model::default();
    for op in ops {
        let (mut reopened, mut meta_reset, mut drop_prefix) = (false, false, false);
        match op {
            Op::Append => {
                let tag = m.tag();
                let seq = s.append(&mut snap(tag)).unwrap();
                prop_assert!(seq > m.last, "seq {} not above {}", seq, m.last);
                m.live.push((seq, u64::from(tag)));
                m.last = seq;
            }
            Op::Ack(back) | Op::AckMetaFails(back) => {
                if matches!(op, Op::AckMetaFails(_)) {
                    arm(Point::Rename, libc::EIO, 0, 1);
                }
                let target = m.last.saturating_sub(u64::from(back)).max(m.acked);
                s.ack(target).unwrap();
                disarm();
                m.acked = target;
                m.live.retain(|r| r.0 > target);
                m.may_surface.retain(|r| r.0 > target);
            }
            Op::Reopen => {
                drop(s);
                s = small(dir.path());
                reopened = true;
            }
            Op::TornAppend { after, rollback_fails } => {
                arm(Point::Write, libc::EIO, usize::from(after % 48), 1);
                if rollback_fails {
                    arm(Point::SetLen, libc::EIO, 0, 1);
                }
                let tag = m.tag();
                let e = s.append(&mut snap(tag)).unwrap_err();
                disarm();
                prop_assert!(e.is_storage_full());
            }
            Op::FailedSync { rollback_fails } => {
                arm(Point::SyncData, libc::EIO, 0, 1);
                if rollback_fails {
                    arm(Point::SetLen, libc::EIO, 0, 1);
                }
                let tag = m.tag();
                let seq = s.last_seq() + 1;
                let e = s.append(&mut snap(tag)).unwrap_err();
                disarm();
                prop_assert!(e.is_storage_full());
                if rollback_fails {
                    m.may_surface.push((seq, u64::from(tag)));
                }
            }
            Op::BitFlip { which, bit } => {
                if !s.entries.is_empty() {
                    let e = s.entries[usize::from(which) % s.entries.len()];
                    flip(&s, e.seq, usize::from(bit) % ((HEADER + e.len as usize) * 8));
                    m.may_lose.push(e.seq);
                }
            }
            Op::CorruptMeta(how) => {
                drop(s);
                let path = dir.path().join(meta::NAME);
                let text = std::fs::read(&path).unwrap();
                match how % 3 {
                    0 => std::fs::write(&path, [how; 40]).unwrap(),
                    1 => std::fs::write(&path, &text[..usize::from(how) % text.len()]).unwrap(),
                    _ => std::fs::remove_file(&path).unwrap(),
                }
                s = small(dir.path());
                reopened = true;
                meta_reset = true;
            }
            Op::FullDisk { retry_fails } => {
                arm(Point::Write, libc::ENOSPC, 3, if retry_fails { 2 } else { 1 });
                let tag = m.tag();
                let r = s.append(&mut snap(tag));
                disarm();
                match r {
                    Ok(seq) => {
                        prop_assert!(seq > m.last);
                        m.live.push((seq, u64::from(tag)));
                        m.last = seq;
                    }
                    Err(e) => prop_assert!(e.is_storage_full()),
                }
                drop_prefix = true;
            }
        }
        m.check(&mut s, reopened, meta_reset, drop_prefix)?;
    }
    Ok(())
}
