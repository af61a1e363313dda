//! One segment file: the record format and the scanner that finds every valid
//! record in it, resynchronising past damage instead of stopping at it.
//!
//! A record is `[len u32 LE][crc32 u32 LE][seq u64 LE][payload]`, the CRC covering
//! seq and payload. Seqs in a segment strictly increase from the segment's first seq
//! (its file name); each record holds the next one, except that an append whose
//! write may have reached the disk but could not be rolled back burns its seq.
//!
//! Pure: bytes in, records and damage out (the spool decides what to count).

/// Bytes before a record's payload.
pub const HEADER: usize = 16;
/// A single record larger than this is refused (the server's message limit is lower).
pub const MAX_RECORD: usize = 64 * 1024 * 1024;

/// Resynchronising may CRC at most this many times the segment's size (plus 1 MiB):
/// crafted bytes full of plausible headers cannot make a scan quadratic.
const RESYNC_WORK: usize = 32;

/// No seq above this is believed, from a record, a segment's name or `meta`: far more
/// than an agent hands out in its life, and far enough from `u64::MAX` that seq
/// arithmetic (`+ 1`, spans) never overflows on what a damaged disk says.
pub const MAX_SEQ: u64 = 1 << 62;

/// The CRC of a record: seq, then payload.
pub fn crc(seq: u64, payload: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&seq.to_le_bytes());
    h.update(payload);
    h.finalize()
}

/// The bytes of one record.
pub fn encode(seq: u64, payload: &[u8]) -> Vec<u8> {
    let mut rec = Vec::with_capacity(HEADER + payload.len());
    rec.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    rec.extend_from_slice(&crc(seq, payload).to_le_bytes());
    rec.extend_from_slice(&seq.to_le_bytes());
    rec.extend_from_slice(payload);
    rec
}

/// The header fields at the start of `bytes` (at least `HEADER` long): len, crc, seq.
pub fn header(bytes: &[u8]) -> Option<(usize, u32, u64)> {
    let h = bytes.get(..HEADER)?;
    let len = u32::from_le_bytes([h[0], h[1], h[2], h[3]]) as usize;
    let crc = u32::from_le_bytes([h[4], h[5], h[6], h[7]]);
    let seq = u64::from_le_bytes([h[8], h[9], h[10], h[11], h[12], h[13], h[14], h[15]]);
    Some((len, crc, seq))
}

/// A valid record in a segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Found {
    pub seq: u64,
    pub offset: u64,
    pub len: u32,
}

/// Bytes of a segment that hold no valid record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Damage {
    pub offset: u64,
    pub bytes: u64,
    /// The seqs these bytes held (inclusive), as far as the records around them tell;
    /// `None` when they held none (a torn append that never completed, a stale copy).
    pub lost: Option<(u64, u64)>,
    /// The segment's tail is an append cut short (a prefix of a record, or zeros).
    pub torn: bool,
}

/// What a scan of one segment found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Scan {
    /// Valid records, in file order; their seqs strictly increase.
    pub records: Vec<Found>,
    pub damage: Vec<Damage>,
    /// The highest seq the segment held or lost (its first seq - 1 when it held none).
    pub last_seq: u64,
    /// Where a torn tail starts (the segment can be cut there), if it has one.
    pub torn_from: Option<u64>,
}

/// Scan a segment whose first seq is `first` (its name), after segments whose records
/// went up to `after`. `next` is the first seq of the segment after it, `None` for
/// the newest: it tells how many records damage at the very end of this one held.
///
/// A record counts when its length fits, its CRC matches and its seq is above the one
/// before it. Past a bad record the scanner looks, byte by byte, for the next record
/// that validates with a seq no higher than the damaged bytes could have held, so one
/// bad record costs only itself. Damage that turns out to be exactly one record with a
/// wrong length field is that record, recovered.
pub fn scan(first: u64, after: u64, data: &[u8], next: Option<u64>) -> Scan {
    let mut out = Scan::default();
    let mut prev = first.saturating_sub(1).max(after);
    let mut off = 0usize;
    let mut budget = data.len().saturating_mul(RESYNC_WORK).saturating_add(1 << 20);
    while off < data.len() {
        if let Some(r) = record_at(data, off, prev, u64::MAX, &mut budget) {
            prev = r.seq;
            off += HEADER + r.len as usize;
            out.records.push(r);
            continue;
        }
        // Damage from `off`: where does the next valid record start?
        let start = off;
        let mut at = None;
        let mut p = start + 1;
        while p + HEADER <= data.len() && budget > 0 {
            // The damaged bytes held at most one record per HEADER bytes.
            let most = prev.saturating_add(1 + ((p - start) / HEADER) as u64);
            if let Some(r) = record_at(data, p, prev, most, &mut budget) {
                at = Some(r);
                break;
            }
            p += 1;
        }
        let end = at.map_or(data.len(), |r| r.offset as usize);
        if let Some(r) = with_length_repaired(&data[start..end], start, prev) {
            prev = r.seq;
            out.records.push(r);
            off = end;
            continue;
        }
        let bytes = &data[start..end];
        let (lost, torn) = match (at, next) {
            (Some(r), _) => (span(prev, r.seq), false),
            (None, Some(n)) => (span(prev, n), is_torn(bytes)),
            (None, None) if is_torn(bytes) => (None, true),
            // The newest segment's tail held at least the next record; how many more
            // it held cannot be told.
            (None, None) => (Some((prev + 1, prev + 1)), false),
        };
        if at.is_none() && torn {
            out.torn_from = Some(start as u64);
        }
        if let Some((_, hi)) = lost {
            prev = prev.max(hi);
        }
        out.damage.push(Damage { offset: start as u64, bytes: bytes.len() as u64, lost, torn });
        off = end;
    }
    out.last_seq = prev;
    out
}

/// The seqs strictly between `prev` and `next`.
fn span(prev: u64, next: u64) -> Option<(u64, u64)> {
    (next > prev.saturating_add(1)).then(|| (prev + 1, next - 1))
}

/// A valid record at `off` with a seq in `(above, most]`: its length as written, or
/// with one bit of the length field flipped back.
fn record_at(data: &[u8], off: usize, above: u64, most: u64, budget: &mut usize) -> Option<Found> {
    let (len, crc_field, seq) = header(data.get(off..)?)?;
    if seq <= above || seq > most || seq > MAX_SEQ {
        return None;
    }
    // The length as written costs nothing extra in order (each byte is checked once);
    // every other try is paid from the budget.
    let in_order = most == u64::MAX;
    std::iter::once(len).chain((0..32).map(|bit| len ^ (1 << bit))).enumerate().find_map(|(i, len)| {
        if len > MAX_RECORD || off + HEADER + len > data.len() || (*budget == 0 && !(in_order && i == 0)) {
            return None;
        }
        if !(in_order && i == 0) {
            *budget = budget.saturating_sub(len.max(1));
        }
        let payload = &data[off + HEADER..off + HEADER + len];
        (crc(seq, payload) == crc_field).then_some(Found { seq, offset: off as u64, len: len as u32 })
    })
}

/// `bytes` (at `offset`) as one record whose length field is wrong: the CRC over all
/// of them after the header matches.
fn with_length_repaired(bytes: &[u8], offset: usize, above: u64) -> Option<Found> {
    let (_, crc_field, seq) = header(bytes)?;
    let payload = &bytes[HEADER..];
    (seq > above && seq <= MAX_SEQ && payload.len() <= MAX_RECORD && crc(seq, payload) == crc_field).then_some(Found {
        seq,
        offset: offset as u64,
        len: payload.len() as u32,
    })
}

/// Bytes at a segment's end that are an append cut short: shorter than a header,
/// zeros (a size extended before its data reached the disk), or a header whose record
/// runs past the end of the file.
fn is_torn(bytes: &[u8]) -> bool {
    match header(bytes) {
        None => true,
        Some(_) if bytes.iter().all(|b| *b == 0) => true,
        Some((len, _, _)) => len <= MAX_RECORD && HEADER + len > bytes.len(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn segment(first: u64, payloads: &[&[u8]]) -> (Vec<u8>, Vec<u64>) {
        let mut data = Vec::new();
        let mut offsets = Vec::new();
        for (i, p) in payloads.iter().enumerate() {
            offsets.push(data.len() as u64);
            data.extend(encode(first + i as u64, p));
        }
        (data, offsets)
    }

    fn seqs(s: &Scan) -> Vec<u64> {
        s.records.iter().map(|r| r.seq).collect()
    }

    #[test]
    fn clean_segment() {
        let (data, _) = segment(5, &[b"a", b"bb", b"ccc"]);
        let s = scan(5, 0, &data, None);
        assert_eq!(seqs(&s), vec![5, 6, 7]);
        assert!(s.damage.is_empty());
        assert_eq!((s.last_seq, s.torn_from), (7, None));
        assert_eq!(scan(9, 0, &[], None).last_seq, 8, "an empty segment holds nothing below its name");
    }

    #[test]
    fn damage_in_the_middle_costs_only_that_record() {
        let (mut data, off) = segment(1, &[b"one", b"two", b"three", b"four"]);
        data[off[1] as usize + HEADER + 1] ^= 0x40;
        let s = scan(1, 0, &data, None);
        assert_eq!(seqs(&s), vec![1, 3, 4]);
        assert_eq!(s.damage.len(), 1);
        assert_eq!(s.damage[0].lost, Some((2, 2)));
        assert_eq!(s.damage[0].offset, off[1]);
        assert_eq!(s.damage[0].bytes, off[2] - off[1]);
        // The seq field itself, and the first record of a segment.
        let (mut data, off) = segment(10, &[b"one", b"two", b"three"]);
        data[8] ^= 1;
        data[off[2] as usize + 9] ^= 0x80;
        let s = scan(10, 0, &data, None);
        assert_eq!(seqs(&s), vec![11]);
        let lost: Vec<_> = s.damage.iter().map(|d| d.lost).collect();
        assert_eq!(lost, vec![Some((10, 10)), Some((12, 12))]);
    }

    #[test]
    fn a_wrong_length_field_is_repaired() {
        for (which, bit) in [(1usize, 0u8), (1, 20), (2, 3), (2, 31)] {
            let (mut data, off) = segment(1, &[b"one", b"two", b"three"]);
            let at = off[which] as usize + usize::from(bit / 8);
            data[at] ^= 1 << (bit % 8);
            let s = scan(1, 0, &data, None);
            assert_eq!(seqs(&s), vec![1, 2, 3], "record {which}, bit {bit}");
            assert!(s.damage.is_empty());
            assert_eq!(s.records[which].len as usize, [3, 3, 5][which]);
        }
    }

    #[test]
    fn a_wrong_length_field_before_a_torn_tail_is_repaired() {
        let (mut data, off) = segment(1, &[b"one", b"two"]);
        data.extend([9u8; 5]);
        data[off[1] as usize] ^= 0x10;
        let s = scan(1, 0, &data, None);
        assert_eq!(seqs(&s), vec![1, 2]);
        assert_eq!(s.torn_from, Some(off[1] + HEADER as u64 + 3));
    }

    #[test]
    fn a_wrong_length_field_inside_damage_is_repaired() {
        let (mut data, off) = segment(1, &[b"one", b"two", b"three", b"four"]);
        data[4] ^= 1;
        data[off[1] as usize] ^= 4;
        let s = scan(1, 0, &data, None);
        assert_eq!(seqs(&s), vec![2, 3, 4]);
        assert_eq!(s.damage[0].lost, Some((1, 1)));
    }

    #[test]
    fn torn_tail_is_no_loss_but_a_damaged_last_record_is() {
        let (data, off) = segment(1, &[b"one", b"two", b"three"]);
        for cut in [1, HEADER - 1, HEADER + 2] {
            let s = scan(1, 0, &data[..off[2] as usize + cut], None);
            assert_eq!(seqs(&s), vec![1, 2]);
            assert_eq!(s.damage[0].lost, None);
            assert_eq!(s.torn_from, Some(off[2]));
        }
        let mut zeros = data[..off[2] as usize].to_vec();
        zeros.extend([0u8; 40]);
        assert_eq!(scan(1, 0, &zeros, None).torn_from, Some(off[2]));
        let mut bad = data.clone();
        *bad.last_mut().unwrap() ^= 1;
        let s = scan(1, 0, &bad, None);
        assert_eq!(s.damage[0].lost, Some((3, 3)));
        assert_eq!((s.torn_from, s.last_seq), (None, 3));
        // Not the newest segment: the next one's name tells how many it held.
        let s = scan(1, 0, &bad, Some(4));
        assert_eq!(s.damage[0].lost, Some((3, 3)));
        let s = scan(1, 0, &data[..off[2] as usize + 3], Some(3));
        assert_eq!(s.damage[0].lost, None, "a torn append whose seq the next segment reused");
    }

    #[test]
    fn garbage_between_records_and_stale_duplicates_lose_nothing() {
        let (a, _) = segment(1, &[b"one"]);
        let (b, _) = segment(2, &[b"two", b"three"]);
        let mut data = a.clone();
        data.extend([7u8; 11]);
        data.extend(&b);
        let s = scan(1, 0, &data, None);
        assert_eq!(seqs(&s), vec![1, 2, 3]);
        assert_eq!(s.damage[0].lost, None);
        // A stale copy of seq 1 (an old spool's failed sync): skipped, nothing lost.
        let mut data = a.clone();
        data.extend(encode(1, b"stale"));
        data.extend(&b);
        assert_eq!(seqs(&scan(1, 0, &data, None)), vec![1, 2, 3]);
    }

    #[test]
    fn burned_seq_at_a_retired_tail() {
        let (data, _) = segment(1, &[b"one", b"two"]);
        let s = scan(1, 0, &data, Some(4));
        assert!(s.damage.is_empty(), "a gap without damage is no loss");
        assert_eq!(s.last_seq, 2);
    }

    #[test]
    fn crafted_headers_cannot_make_a_scan_slow() {
        // Plausible headers everywhere, each claiming the rest of the file.
        let mut data = vec![0u8; 256 * 1024];
        for i in (0..data.len() - HEADER).step_by(HEADER) {
            let rest = (data.len() - i - HEADER) as u32;
            data[i..i + 4].copy_from_slice(&rest.to_le_bytes());
            data[i + 8] = 1;
        }
        let t = std::time::Instant::now();
        let s = scan(1, 0, &data, None);
        println!("scanned {} KiB of crafted headers in {:?}", data.len() / 1024, t.elapsed());
        assert!(s.records.is_empty());
    }

    proptest::proptest! {
        #[test]
        fn never_panics_and_records_validate(data in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..2048), first in 0u64..4, next in proptest::option::of(0u64..8)) {
            let s = scan(first, 0, &data, next);
            let mut prev = first.saturating_sub(1);
            for r in &s.records {
                proptest::prop_assert!(r.seq > prev);
                prev = r.seq;
                let at = r.offset as usize + HEADER;
                proptest::prop_assert!(at + r.len as usize <= data.len());
            }
        }
    }
}
