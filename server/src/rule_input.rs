//! What rules see of a file: its keys as a map and its metadata. Shared by the
//! engine (evaluation) and changes (pre-flight of a change's candidate keys).

use std::collections::BTreeMap;

use driftwatch_proto::v1;
use driftwatch_rules::FileMeta;

/// A file's metadata as rules see it.
pub fn file_meta(state: &v1::FileState) -> FileMeta {
    FileMeta {
        mode: state.mode,
        dir_mode: state.dir_mode,
        uid: state.uid,
        gid: state.gid,
        size: state.size,
        format: driftwatch_proto::format_name(state.format).to_string(),
        exists: state.exists,
        parse_error: state
            .error
            .as_ref()
            .filter(|_| state.status == v1::FileStatus::ParseError as i32)
            .map(|e| if e.line > 0 { format!("{}:{}: {}", e.line, e.column, e.message) } else { e.message.clone() }),
    }
}

pub fn key_map(keys: &[v1::KeyValue]) -> BTreeMap<String, v1::Value> {
    keys.iter().map(|kv| (kv.key.clone(), kv.value.clone().unwrap_or_else(v1::Value::null))).collect()
}
