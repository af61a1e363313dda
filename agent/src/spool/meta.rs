//! The spool's `meta` file: its id, the highest acknowledged seq, the dropped count,
//! the highest seq handed out (at the time of writing) and the seqs whose loss has
//! already been counted. Text, one `key=value` a line, under a first line carrying a
//! version and a CRC of the rest, so a torn or corrupt file is recognised instead of
//! being half believed. Replaced by write-temp, fsync, rename, fsync of the directory.

use std::fs::File;
use std::io;
use std::path::Path;

use super::fault;

pub const NAME: &str = "meta";
pub const TMP: &str = "meta.tmp";
const MAGIC: &str = "driftwatch-spool-meta 2";
/// Counted losses are kept as at most this many ranges; past it the lowest go (a loss
/// they held would then be counted again if it is still on disk at the next open).
const MAX_RANGES: usize = 64;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Meta {
    pub spool_id: String,
    pub acked: u64,
    pub dropped: u64,
    /// No seq at or below this was handed out when the file was written; together with
    /// `acked` it keeps seqs from being reused once the segments that held them are gone.
    pub last_seq: u64,
    /// Seqs above `acked` already counted in `dropped` (damaged records still on disk).
    pub lost: Lost,
}

/// What `read` found.
#[derive(Debug)]
pub enum Read {
    Missing,
    Found(Meta),
    /// Why it cannot be trusted.
    Corrupt(String),
}

pub fn read(dir: &Path) -> Read {
    let path = dir.join(NAME);
    match std::fs::read(&path) {
        Ok(bytes) => match String::from_utf8(bytes).map_err(|_| "not text".to_string()).and_then(|t| parse(&t)) {
            Ok(m) => Read::Found(m),
            Err(why) => Read::Corrupt(why),
        },
        Err(e) if e.kind() == io::ErrorKind::NotFound => Read::Missing,
        Err(e) => Read::Corrupt(format!("cannot be read: {e}")),
    }
}

/// Replace `meta` durably: temp file, fsync, rename, fsync of the directory. On an
/// error the previous `meta` is still in place (the rename is atomic).
pub fn write(dir: &Path, meta: &Meta) -> io::Result<()> {
    let tmp = dir.join(TMP);
    let r = (|| {
        let mut f = File::create(&tmp)?;
        fault::write_meta(&mut f, encode(meta).as_bytes())?;
        f.sync_all()?;
        fault::rename(&tmp, &dir.join(NAME))?;
        File::open(dir)?.sync_all()
    })();
    if r.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    r
}

pub fn encode(m: &Meta) -> String {
    let body = format!(
        "spool_id={}\nacked={}\ndropped={}\nlast_seq={}\nlost={}\n",
        m.spool_id,
        m.acked,
        m.dropped,
        m.last_seq,
        m.lost.encode()
    );
    format!("{MAGIC} {:08x}\n{body}", crc32fast::hash(body.as_bytes()))
}

/// A `meta` of this version (CRC checked, every field present), or of the first one
/// (three lines, written atomically without a CRC: each must be there and whole).
pub fn parse(text: &str) -> Result<Meta, String> {
    let (body, legacy) = match text.strip_prefix(MAGIC) {
        Some(rest) => {
            let (head, body) = rest.split_once('\n').ok_or("no line after the version")?;
            if head != format!(" {:08x}", crc32fast::hash(body.as_bytes())) {
                return Err("CRC mismatch".into());
            }
            (body, false)
        }
        None if text.starts_with("spool_id=") && text.ends_with('\n') => (text, true),
        None => return Err("not a spool meta file".into()),
    };
    let (mut id, mut acked, mut dropped, mut last_seq, mut lost) = (None, None, None, None, None);
    for line in body.lines() {
        let (k, v) = line.split_once('=').ok_or_else(|| format!("line without '=': {}", line.len()))?;
        let num = || match v.parse::<u64>() {
            Ok(n) if n <= super::segment::MAX_SEQ => Ok(n),
            Ok(_) => Err(format!("{k} is past the highest seq")),
            Err(_) => Err(format!("{k} is not a number")),
        };
        let slot_taken = match k {
            "spool_id" => id.replace(valid_id(v)?).is_some(),
            "acked" => acked.replace(num()?).is_some(),
            "dropped" => dropped.replace(num()?).is_some(),
            "last_seq" => last_seq.replace(num()?).is_some(),
            "lost" => lost.replace(Lost::parse(v)?).is_some(),
            _ => false,
        };
        if slot_taken {
            return Err(format!("{k} given twice"));
        }
    }
    let missing = |k: &str| format!("no {k}");
    let acked = acked.ok_or_else(|| missing("acked"))?;
    Ok(Meta {
        spool_id: id.ok_or_else(|| missing("spool_id"))?,
        acked,
        dropped: dropped.ok_or_else(|| missing("dropped"))?,
        last_seq: if legacy { acked } else { last_seq.ok_or_else(|| missing("last_seq"))? },
        lost: if legacy { Lost::default() } else { lost.ok_or_else(|| missing("lost"))? },
    })
}

fn valid_id(v: &str) -> Result<String, String> {
    let ok = !v.is_empty() && v.len() <= 64 && v.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if ok { Ok(v.to_string()) } else { Err("spool_id is not 1-64 letters, digits, '-' or '_'".into()) }
}

/// Seqs as sorted, disjoint, non-adjacent inclusive ranges.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Lost(Vec<(u64, u64)>);

impl Lost {
    /// Add `lo..=hi`; returns how many of its seqs were not in the set yet.
    pub fn add(&mut self, lo: u64, hi: u64) -> u64 {
        if lo > hi {
            return 0;
        }
        let overlap: u64 =
            self.0.iter().map(|&(a, b)| if a.max(lo) <= b.min(hi) { b.min(hi) - a.max(lo) + 1 } else { 0 }).sum();
        self.0.push((lo, hi));
        self.0.sort_unstable();
        let mut merged: Vec<(u64, u64)> = Vec::with_capacity(self.0.len());
        for &(a, b) in &self.0 {
            match merged.last_mut() {
                Some(last) if a <= last.1.saturating_add(1) => last.1 = last.1.max(b),
                _ => merged.push((a, b)),
            }
        }
        if merged.len() > MAX_RANGES {
            merged.drain(..merged.len() - MAX_RANGES);
        }
        self.0 = merged;
        (hi - lo + 1) - overlap
    }

    /// Forget seqs at or below `acked` (they are never scanned as losses again).
    pub fn prune(&mut self, acked: u64) {
        self.0.retain(|&(_, b)| b > acked);
        if let Some(first) = self.0.first_mut() {
            first.0 = first.0.max(acked + 1);
        }
    }

    pub fn max(&self) -> u64 {
        self.0.last().map_or(0, |r| r.1)
    }

    fn encode(&self) -> String {
        self.0.iter().map(|(a, b)| format!("{a}-{b}")).collect::<Vec<_>>().join(",")
    }

    fn parse(v: &str) -> Result<Lost, String> {
        let mut out = Vec::new();
        for r in v.split(',').filter(|r| !r.is_empty()) {
            let (a, b) = r.split_once('-').ok_or("lost: a range without '-'")?;
            let (a, b) = (a.parse::<u64>(), b.parse::<u64>());
            let (Ok(a), Ok(b)) = (a, b) else { return Err("lost: not a number".into()) };
            if b > super::segment::MAX_SEQ {
                return Err("lost: past the highest seq".into());
            }
            if a > b || out.last().is_some_and(|&(_, pb): &(u64, u64)| a <= pb) {
                return Err("lost: ranges out of order".into());
            }
            out.push((a, b));
        }
        Ok(Lost(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta() -> Meta {
        let mut lost = Lost::default();
        lost.add(7, 9);
        lost.add(12, 12);
        Meta { spool_id: "0123abcd".into(), acked: 5, dropped: 4, last_seq: 20, lost }
    }

    #[test]
    fn round_trip_and_every_truncation_or_bit_flip_is_caught() {
        let text = encode(&meta());
        assert_eq!(parse(&text).unwrap(), meta());
        for cut in 0..text.len() {
            assert!(parse(&text[..cut]).is_err(), "cut at {cut}: {:?}", &text[..cut]);
        }
        let bytes = text.as_bytes();
        for i in 0..bytes.len() * 8 {
            let mut b = bytes.to_vec();
            b[i / 8] ^= 1 << (i % 8);
            if let Ok(t) = String::from_utf8(b) {
                assert!(parse(&t).is_err(), "bit {i}: {t:?}");
            }
        }
    }

    #[test]
    fn the_first_format_still_reads() {
        let m = parse("spool_id=abc\nacked=12\ndropped=3\n").unwrap();
        assert_eq!((m.spool_id.as_str(), m.acked, m.dropped, m.last_seq), ("abc", 12, 3, 12));
        assert!(parse("spool_id=abc\nacked=12\ndropped=3").is_err(), "a last line cut short");
        assert!(parse("spool_id=abc\nacked=1x\ndropped=3\n").is_err());
        assert!(parse("spool_id=abc\ndropped=3\n").is_err());
        assert!(parse("spool_id=\nacked=1\ndropped=3\n").is_err());
    }

    #[test]
    fn seqs_past_the_ceiling_make_the_file_corrupt_not_an_overflow() {
        let max = super::super::segment::MAX_SEQ;
        assert!(parse(&format!("spool_id=abc\nacked={max}\ndropped=0\n")).is_ok());
        for acked in [max + 1, u64::MAX] {
            let why = parse(&format!("spool_id=abc\nacked={acked}\ndropped=0\n")).unwrap_err();
            assert!(why.contains("past the highest seq"), "{why}");
        }
        let mut m = meta();
        m.last_seq = u64::MAX;
        assert!(parse(&encode(&m)).is_err());
        m.last_seq = 20;
        m.lost.0 = vec![(7, u64::MAX)];
        assert!(parse(&encode(&m)).is_err());
    }

    #[test]
    fn lost_counts_each_seq_once() {
        let mut l = Lost::default();
        assert_eq!(l.add(5, 7), 3);
        assert_eq!(l.add(6, 9), 2);
        assert_eq!(l.add(1, 2), 2);
        assert_eq!(l.add(3, 4), 2, "adjacent ranges merge");
        assert_eq!(l.0, vec![(1, 9)]);
        assert_eq!(l.add(4, 4), 0);
        l.prune(6);
        assert_eq!((l.0.clone(), l.max()), (vec![(7, 9)], 9));
        l.prune(9);
        assert_eq!(l.max(), 0);
        for i in 0..100 {
            l.add(i * 10, i * 10);
        }
        assert_eq!(l.0.len(), MAX_RANGES);
        assert_eq!(l.max(), 990);
    }
}
