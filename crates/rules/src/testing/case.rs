//! A prepared test case: the document checked against the rules, hosts and alerts
//! resolved, contents read; what the simulation replays. And how a snapshot's content
//! becomes keys, as the agent would send them.

use std::collections::{BTreeMap, HashMap};

use driftwatch_formats::{FileStatus, Format, Limits, Masker, analyze};
use driftwatch_proto::v1::Value;

use crate::HostInfo;
use crate::alert::Severity;

/// Where a file snapshot's keys come from.
pub(super) enum Source {
    Content(Vec<u8>),
    Keys(serde_yaml_ng::Mapping),
    /// The previous snapshot of the same file, edited by `set` / `unset`.
    Previous,
    Missing,
}

pub(super) struct FileEvent {
    pub(super) at: i64,
    pub(super) host: usize,
    pub(super) path: String,
    pub(super) source: Source,
    pub(super) set: Option<serde_yaml_ng::Mapping>,
    pub(super) unset: Vec<String>,
    pub(super) format: Format,
    /// None: as the previous snapshot of the file (0644, 0755, 0, 0 for the first).
    pub(super) mode: Option<u32>,
    pub(super) dir_mode: Option<u32>,
    pub(super) uid: Option<u32>,
    pub(super) gid: Option<u32>,
}

pub(super) struct ExpAlert {
    pub(super) fp: String,
    pub(super) rule: usize,
    /// How to name the alert in a report.
    pub(super) label: String,
    pub(super) severity: Option<Severity>,
    pub(super) annotations: BTreeMap<String, String>,
}

pub(super) struct Expect {
    pub(super) at: i64,
    pub(super) firing: Vec<ExpAlert>,
    pub(super) pending: Vec<ExpAlert>,
    pub(super) resolved: Vec<ExpAlert>,
}

pub(super) struct Case {
    pub(super) name: String,
    pub(super) interval_ms: i64,
    pub(super) masker: Masker,
    pub(super) hosts: Vec<HostInfo>,
    pub(super) file_baselines: HashMap<(usize, String), BTreeMap<String, Value>>,
    pub(super) files: Vec<FileEvent>,
    /// (time, host, metric, value), in time order.
    pub(super) samples: Vec<(i64, usize, String, f64)>,
    /// Per host: (offline since, back online at).
    pub(super) offline: Vec<Vec<(i64, Option<i64>)>>,
    pub(super) expects: Vec<Expect>,
}

/// Keys of a source as the agent would send them (secrets masked), and the parse error.
pub(super) fn parse_source(src: &Source, format: Format, masker: &Masker) -> (BTreeMap<String, Value>, Option<String>) {
    match src {
        Source::Content(bytes) => {
            let a = analyze(bytes, format, masker, &Limits::default());
            let error = match (a.status, a.error) {
                (FileStatus::ParseError, Some(e)) if e.line > 0 => {
                    Some(format!("{}:{}: {}", e.line, e.column, e.message))
                }
                (FileStatus::ParseError, Some(e)) => Some(e.message),
                _ => None,
            };
            (a.keys.into_iter().map(|kv| (kv.key, kv.value.unwrap_or_else(Value::null))).collect(), error)
        }
        Source::Keys(map) => (keys_of(map, masker), None),
        Source::Previous | Source::Missing => (BTreeMap::new(), None),
    }
}

/// A `keys:`/`set:` map goes through the YAML parser so values get the agent's typing and
/// masking.
pub(super) fn keys_of(map: &serde_yaml_ng::Mapping, masker: &Masker) -> BTreeMap<String, Value> {
    let text = serde_yaml_ng::to_string(map).unwrap_or_default();
    let a = analyze(text.as_bytes(), Format::Yaml, masker, &Limits::default());
    a.keys.into_iter().map(|kv| (kv.key, kv.value.unwrap_or_else(Value::null))).collect()
}
