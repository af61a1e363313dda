//! Keep every message small: split a list of file states into snapshot parts
//! of bounded encoded size, and cap a single file state that could never fit.
//!
//! The server refuses messages above its limit (4 MiB by default), and a spooled
//! snapshot it refuses would be resent forever. A full listing of 10,000 files
//! is far above that, so listings and large change batches travel in parts.

use driftwatch_proto::v1::{FileError, FileState, FileStatus};
use prost::Message;

/// Encoded bytes of file states per snapshot part.
pub const PART_BYTES: usize = 256 * 1024;
/// A single file state larger than this is sent without its keys.
pub const MAX_FILE_STATE_BYTES: usize = 1024 * 1024;
/// The smallest part size a small spool gets.
pub const MIN_PART_BYTES: usize = 16 * 1024;

/// Part size for a spool of `spool_max_bytes`: a quarter of it, so that several parts
/// fit and flow while earlier ones are acknowledged, within
/// [`MIN_PART_BYTES`]..=[`PART_BYTES`].
pub fn part_bytes(spool_max_bytes: u64) -> usize {
    usize::try_from(spool_max_bytes / 4).unwrap_or(usize::MAX).clamp(MIN_PART_BYTES, PART_BYTES)
}

/// Drop the keys of a file state too large to send, saying why; the hash and
/// metadata still travel, so a change is still seen.
pub fn cap_file_state(f: &mut FileState) {
    let len = f.encoded_len();
    if len > MAX_FILE_STATE_BYTES {
        let keys = f.keys.len();
        f.keys = Vec::new();
        f.status = FileStatus::TooLarge as i32;
        f.error = Some(FileError {
            message: format!("{keys} keys ({len} bytes encoded) exceed the {MAX_FILE_STATE_BYTES}-byte limit per file"),
            line: 0,
            column: 0,
        });
    }
}

/// Split `files` in order into parts of at most `max_bytes` encoded (a part
/// holds at least one file). Always at least one part, possibly empty.
pub fn split(files: Vec<FileState>, max_bytes: usize) -> Vec<Vec<FileState>> {
    let mut parts = vec![Vec::new()];
    let mut size = 0;
    for mut f in files {
        cap_file_state(&mut f);
        // Field tag + length prefix + the message itself.
        let len = f.encoded_len() + 8;
        let current = parts.last_mut().expect("non-empty");
        if !current.is_empty() && size + len > max_bytes {
            parts.push(Vec::new());
            size = 0;
        }
        size += len;
        parts.last_mut().expect("non-empty").push(f);
    }
    parts
}

#[cfg(test)]
mod tests {
    use super::*;
    use driftwatch_proto::v1::{KeyValue, Value};
    use proptest::prelude::*;

    fn file(i: usize, keys: usize) -> FileState {
        FileState {
            path: format!("/etc/f{i}"),
            status: FileStatus::Ok as i32,
            keys: (0..keys).map(|k| KeyValue { key: format!("KEY_{k}"), value: Some(Value::int(k as i64)) }).collect(),
            ..Default::default()
        }
    }

    #[test]
    fn empty_input_is_one_empty_part() {
        assert_eq!(split(Vec::new(), PART_BYTES), vec![Vec::<FileState>::new()]);
    }

    #[test]
    fn parts_are_a_quarter_of_a_small_spool() {
        assert_eq!(part_bytes(64 * 1024), 16 * 1024);
        assert_eq!(part_bytes(512 * 1024), 128 * 1024);
        assert_eq!(part_bytes(64 * 1024 * 1024), PART_BYTES);
        assert_eq!(part_bytes(0), MIN_PART_BYTES);
    }

    #[test]
    fn a_huge_file_state_loses_its_keys_and_says_why() {
        let mut f = file(1, 120_000);
        assert!(f.encoded_len() > MAX_FILE_STATE_BYTES);
        cap_file_state(&mut f);
        assert!(f.keys.is_empty());
        assert_eq!(f.status, FileStatus::TooLarge as i32);
        assert!(f.error.unwrap().message.contains("120000 keys"));
        let mut small = file(2, 10);
        let before = small.clone();
        cap_file_state(&mut small);
        assert_eq!(small, before);
    }

    proptest! {
        /// Order and content are kept, and every part but a single-file one fits.
        #[test]
        fn parts_keep_order_and_fit(sizes in prop::collection::vec(0usize..400, 0..80), max in 200usize..20_000) {
            let files: Vec<FileState> = sizes.iter().enumerate().map(|(i, k)| file(i, *k)).collect();
            let parts = split(files.clone(), max);
            prop_assert!(!parts.is_empty());
            let flat: Vec<FileState> = parts.iter().flatten().cloned().collect();
            prop_assert_eq!(flat, files);
            for p in &parts {
                let bytes: usize = p.iter().map(|f| f.encoded_len() + 8).sum();
                prop_assert!(p.len() <= 1 || bytes <= max, "part of {} files is {} bytes", p.len(), bytes);
            }
        }
    }
}
